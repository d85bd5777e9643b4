/* params.c — named tensors in contiguous blocks, re-laid out by name on growth. */
#include "nn/params.h"

#include <sys/mman.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "nn/ops.h"

void ml_params_init(ml_params *p, int trainable) {
    memset(p, 0, sizeof *p);
    p->trainable = trainable;
}

void ml_params_free(ml_params *p) {
    if (!p) return;
    free(p->t);
    free(p->data);
    free(p->grad);
    free(p->m);
    free(p->v);
    free(p->order);
    ml_params_init(p, p->trainable);
}

static size_t shape_numel(int ndim, const int *shape) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

int ml_params_find(const ml_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (!p->t[i].removed && strcmp(p->t[i].name, name) == 0) return i;
    return -1;
}

int ml_params_declare(ml_params *p, const char *name, int ndim, const int *shape,
                      ml_init init, float init_value, int fan_in) {
    if (strlen(name) >= ML_TENSOR_NAME_MAX)
        return ml_errorf("tensor name '%s' is longer than %d bytes", name, ML_TENSOR_NAME_MAX - 1);
    if (ml_params_find(p, name) >= 0) return ml_errorf("tensor '%s' declared twice", name);
    if (!*name) return ml_errorf("a tensor needs a name");
    if (ndim < 1 || ndim > ML_MAX_DIMS) return ml_errorf("tensor '%s': %d dimensions, expected 1..4", name, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1) return ml_errorf("tensor '%s': dimension %d is %d, expected >= 1", name, i, shape[i]);
    if (p->count == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        ml_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return ml_errorf("out of memory declaring tensor '%s'", name);
        p->t = t;
        p->cap = cap;
    }
    ml_tensor *t = &p->t[p->count];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int));
    t->n = shape_numel(ndim, shape);
    t->init = init;
    t->init_value = init_value;
    t->fan_in = fan_in;
    t->group = -1;
    t->seq = p->next_seq++;
    return p->count++;
}

int ml_params_remove(ml_params *p, int h) {
    if (h < 0 || h >= p->count || p->t[h].removed) return ml_errorf("remove: no tensor with handle %d", h);
    ml_tensor *t = &p->t[h];
    t->removed = 1;
    t->name[0] = 0;
    t->n = 0;
    t->committed = 0;
    t->frozen = 0;
    return ML_OK;
}

int ml_params_rename(ml_params *p, int h, const char *name) {
    if (h < 0 || h >= p->count || p->t[h].removed) return ml_errorf("rename: no tensor with handle %d", h);
    if (strlen(name) >= ML_TENSOR_NAME_MAX)
        return ml_errorf("tensor name '%s' is longer than %d bytes", name, ML_TENSOR_NAME_MAX - 1);
    int other = ml_params_find(p, name);
    if (other >= 0 && other != h) return ml_errorf("rename '%s' to '%s': that name is taken", p->t[h].name, name);
    snprintf(p->t[h].name, sizeof p->t[h].name, "%s", name);
    return ML_OK;
}

int ml_params_shrink_rows(ml_params *p, int h, const int *keep, int nkeep) {
    if (h < 0 || h >= p->count || p->t[h].removed) return ml_errorf("shrink: no tensor with handle %d", h);
    ml_tensor *t = &p->t[h];
    const int rows = t->shape[0];
    if (t->committed != t->n || !p->data)
        return ml_errorf("tensor '%s': rows can only be dropped from a committed tensor", t->name);
    if (nkeep < 1 || nkeep > rows) return ml_errorf("tensor '%s': keep %d of %d rows", t->name, nkeep, rows);
    for (int j = 0; j < nkeep; j++)
        if (keep[j] < 0 || keep[j] >= rows || (j > 0 && keep[j] <= keep[j - 1]))
            return ml_errorf("tensor '%s': rows to keep must be ascending within 0..%d", t->name, rows - 1);
    const size_t row = t->n / (size_t)rows;
    float *blk[4] = {p->data, p->grad, p->m, p->v};
    /* keep[j] >= j: moving rows forward in ascending order never overwrites a row still to come */
    for (int b = 0; b < 4; b++)
        if (blk[b])
            for (int j = 0; j < nkeep; j++)
                if (keep[j] != j)
                    memmove(blk[b] + t->off + (size_t)j * row, blk[b] + t->off + (size_t)keep[j] * row, row * sizeof(float));
    t->shape[0] = nkeep;
    t->n = row * (size_t)nkeep;
    t->committed = t->n;
    return ML_OK;
}

int ml_params_reorder(ml_params *p, const int *handles, int n) {
    int64_t *seq = ml_calloc((size_t)p->count + 1, sizeof *seq);
    if (!seq) return ML_ERR;
    for (int i = 0; i < p->count; i++) seq[i] = -1;
    for (int k = 0; k < n; k++) {
        int h = handles[k];
        if (h < 0 || h >= p->count || p->t[h].removed || seq[h] >= 0) {
            free(seq);
            return ml_errorf("reorder: handle %d is not a live tensor, or is given twice", h);
        }
        seq[h] = k;
    }
    /* the others after them, in their current order */
    int64_t next = n;
    for (int k = 0; k < p->n_live; k++)
        if (seq[p->order[k]] < 0) seq[p->order[k]] = next++;
    for (int i = 0; i < p->count; i++)
        if (!p->t[i].removed && seq[i] < 0) seq[i] = next + p->t[i].seq; /* declared since the last commit */
    for (int i = 0; i < p->count; i++)
        if (!p->t[i].removed) p->t[i].seq = seq[i];
    free(seq);
    return ML_OK;
}

int ml_params_grow(ml_params *p, int h, int dim0) {
    ml_tensor *t = &p->t[h];
    if (dim0 < t->shape[0])
        return ml_errorf("tensor '%s': cannot shrink dimension 0 from %d to %d", t->name, t->shape[0], dim0);
    t->shape[0] = dim0;
    t->n = shape_numel(t->ndim, t->shape);
    return ML_OK;
}

void ml_init_fill(float *x, size_t n, ml_init init, float value, int fan_in, ml_rng *rng) {
    switch (init) {
    case ML_INIT_ZEROS: memset(x, 0, n * sizeof *x); break;
    case ML_INIT_CONST:
        for (size_t i = 0; i < n; i++) x[i] = value;
        break;
    case ML_INIT_NORMAL:
        for (size_t i = 0; i < n; i++) x[i] = (float)(value * ml_rng_normal(rng));
        break;
    case ML_INIT_UNIFORM_FANIN: {
        /* PyTorch's nn.Linear / nn.Conv2d default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
        double bound = 1.0 / sqrt(fan_in > 0 ? fan_in : 1);
        for (size_t i = 0; i < n; i++) x[i] = (float)((2 * ml_rng_uniform(rng) - 1) * bound);
        break;
    }
    }
}

/*
 * A block of `total` floats, zeroed. Blocks of 2 MB and more are 2 MB aligned and asked for
 * transparent huge pages (the kernel's madvise mode; a no-op where THP is off): the optimizer
 * and the experts' GEMMs walk the four blocks in the spans of the experts a step used, spread
 * over megabytes, where 4 KB pages cost a TLB miss every 4 KB of each block.
 */
static float *realloc_block(size_t total) {
    const size_t huge = (size_t)2 << 20;
    size_t bytes = total * sizeof(float);
    if (bytes < huge) return ml_alloc_floats(total);
    bytes = (bytes + huge - 1) & ~(huge - 1);
    float *p = aligned_alloc(huge, bytes);
    if (!p) {
        ml_errorf("out of memory allocating %zu floats", total);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    memset(p, 0, bytes);
    return p;
}

static const ml_params *g_sort_p; /* for the comparison below; commits run on one thread */

static int by_seq(const void *a, const void *b) {
    int64_t x = g_sort_p->t[*(const int *)a].seq, y = g_sort_p->t[*(const int *)b].seq;
    return x < y ? -1 : x > y;
}

int ml_params_commit(ml_params *p, ml_rng *rng) {
    size_t total = 0;
    size_t *off = ml_calloc((size_t)p->count + 1, sizeof *off);
    int *order = ml_calloc((size_t)p->count + 1, sizeof *order);
    if (!off || !order) {
        free(off);
        free(order);
        return ML_ERR;
    }
    int live = 0;
    for (int i = 0; i < p->count; i++)
        if (!p->t[i].removed) order[live++] = i;
    g_sort_p = p;
    qsort(order, (size_t)live, sizeof *order, by_seq);
    for (int k = 0; k < live; k++) {
        int i = order[k];
        off[i] = total;
        total += (p->t[i].n + 15) & ~(size_t)15;
    }
    float *blk[4] = {0};
    int nblk = p->trainable ? 4 : 1;
    for (int b = 0; b < nblk; b++) {
        blk[b] = realloc_block(total);
        if (!blk[b]) {
            for (int j = 0; j < b; j++) free(blk[j]);
            free(off);
            free(order);
            return ML_ERR;
        }
    }
    float *old[4] = {p->data, p->grad, p->m, p->v};
    for (int i = 0; i < p->count; i++) {
        ml_tensor *t = &p->t[i];
        if (t->removed) {
            t->off = 0;
            continue;
        }
        size_t keep = t->committed < t->n ? t->committed : t->n;
        for (int b = 0; b < nblk; b++)
            if (old[b] && keep) memcpy(blk[b] + off[i], old[b] + t->off, keep * sizeof(float));
        if (keep < t->n)
            ml_init_fill(blk[0] + off[i] + keep, t->n - keep, t->init, t->init_value, t->fan_in, rng);
        t->off = off[i];
        t->committed = t->n;
    }
    for (int b = 0; b < 4; b++) free(old[b]);
    p->data = blk[0];
    p->grad = blk[1];
    p->m = blk[2];
    p->v = blk[3];
    p->total = total;
    free(off);
    free(p->order);
    p->order = order;
    p->n_live = live;
    return ML_OK;
}

void ml_params_zero_grad(ml_params *p) {
    if (!p->grad) return;
    ml_zero(p->grad, p->total);
    for (int h = 0; h < p->count; h++) p->t[h].grad_stale = 0;
}

/* The end of tensor h's slot in the block: its elements and the padding after them. */
static size_t slot_end(const ml_params *p, int h) { return p->t[h].off + ((p->t[h].n + 15) & ~(size_t)15); }

/* Calls f on each run [begin, end) of adjacent tensors not marked idle, zero_later, nor (with
   checked) grad_finite or grad_stale, in layout order; stops at the first call that returns 0,
   and returns 0 then (1 otherwise). */
static int each_used_run(const ml_params *p, int checked, int (*f)(const ml_params *, size_t, size_t)) {
    size_t begin = 0, end = 0;
    int open = 0;
    for (int k = 0; k < p->n_live; k++) {
        int h = p->order[k];
        const ml_tensor *t = &p->t[h];
        if (t->idle || (checked ? t->grad_finite || t->grad_stale : t->zero_later)) {
            if (open && !f(p, begin, end)) return 0;
            open = 0;
            continue;
        }
        if (!open) begin = p->t[h].off, open = 1;
        end = slot_end(p, h);
    }
    return !open || f(p, begin, end);
}

static int zero_run(const ml_params *p, size_t begin, size_t end) {
    ml_zero(p->grad + begin, end - begin);
    return 1;
}

void ml_params_zero_grad_used(ml_params *p) {
    if (!p->grad) return;
    for (int k = 0; k < p->n_live; k++) { /* the zero_later ones are left to their layer, stale */
        ml_tensor *t = &p->t[p->order[k]];
        if (!t->idle && t->zero_later) t->grad_stale = 1;
    }
    each_used_run(p, 0, zero_run);
}

/* Exponent bits all ones: Inf or NaN. Integer tests vectorise, and stay correct even under
 * -ffinite-math-only, where isfinite() may be folded to 1. */
int ml_span_finite(const float *x, size_t n) {
    uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

static int finite_run(const ml_params *p, size_t begin, size_t end) { return ml_span_finite(p->grad + begin, end - begin); }

int ml_params_grad_finite(const ml_params *p) {
    if (!p->grad) return 1;
    /* the whole block but the stale tensors' slots: padding between tensors is zeroed with the
       gradients */
    size_t begin = 0;
    for (int k = 0; k < p->n_live; k++) {
        const int h = p->order[k];
        if (!p->t[h].grad_stale) continue;
        if (!finite_run(p, begin, p->t[h].off)) return 0;
        begin = slot_end(p, h);
    }
    return finite_run(p, begin, p->total);
}

int ml_params_grad_finite_used(const ml_params *p) { return !p->grad || each_used_run(p, 1, finite_run); }

int ml_params_grad_first_nonfinite(const ml_params *p, int *count) {
    int first = -1, k = 0;
    for (int h = 0; p->grad && h < p->count; h++)
        if (!p->t[h].removed && !p->t[h].grad_stale && !ml_span_finite(p->grad + p->t[h].off, p->t[h].n)) {
            if (first < 0) first = h;
            k++;
        }
    if (count) *count = k;
    return first;
}
