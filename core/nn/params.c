/* params.c — named tensors in contiguous blocks, re-laid out by name on growth. */
#include "nn/params.h"

#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

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
    ml_params_init(p, p->trainable);
}

static size_t shape_numel(int ndim, const int *shape) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

int ml_params_find(const ml_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->t[i].name, name) == 0) return i;
    return -1;
}

int ml_params_declare(ml_params *p, const char *name, int ndim, const int *shape,
                      ml_init init, float init_value, int fan_in) {
    if (strlen(name) >= ML_TENSOR_NAME_MAX)
        return ml_errorf("tensor name '%s' is longer than %d bytes", name, ML_TENSOR_NAME_MAX - 1);
    if (ml_params_find(p, name) >= 0) return ml_errorf("tensor '%s' declared twice", name);
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
    return p->count++;
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

static float *realloc_block(size_t total) { return ml_alloc_floats(total); }

int ml_params_commit(ml_params *p, ml_rng *rng) {
    size_t total = 0;
    size_t *off = ml_calloc((size_t)p->count + 1, sizeof *off);
    if (!off) return ML_ERR;
    for (int i = 0; i < p->count; i++) {
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
            return ML_ERR;
        }
    }
    float *old[4] = {p->data, p->grad, p->m, p->v};
    for (int i = 0; i < p->count; i++) {
        ml_tensor *t = &p->t[i];
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
    return ML_OK;
}

void ml_params_zero_grad(ml_params *p) {
    if (p->grad) memset(p->grad, 0, p->total * sizeof(float));
}

/* Exponent bits all ones: Inf or NaN. Integer tests vectorise, and stay correct even under
 * -ffinite-math-only, where isfinite() may be folded to 1. */
static int span_finite(const float *x, size_t n) {
    uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

int ml_params_grad_finite(const ml_params *p) {
    /* the whole block: padding between tensors is zeroed with the gradients */
    return !p->grad || span_finite(p->grad, p->total);
}

int ml_params_grad_first_nonfinite(const ml_params *p, int *count) {
    int first = -1, k = 0;
    for (int h = 0; p->grad && h < p->count; h++)
        if (!span_finite(p->grad + p->t[h].off, p->t[h].n)) {
            if (first < 0) first = h;
            k++;
        }
    if (count) *count = k;
    return first;
}
