/* optim.c — SGD, Adam and AdamW over the parameter block, tensor by tensor. */
#include "nn/optim.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "base/glob.h"

static const char *const kind_names[] = {"adam", "sgd", "adamw"};

int ml_optim_kind_from_name(const char *name) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, kind_names[k])) return k;
    return -1;
}

const char *ml_optim_kind_name(ml_optim_kind kind) {
    return (int)kind >= 0 && (int)kind < 3 ? kind_names[kind] : "?";
}

static const char *const idle_names[] = {"dense", "lazy"};

int ml_optim_idle_from_name(const char *name) {
    for (int k = 0; k < 2; k++)
        if (!strcmp(name, idle_names[k])) return k;
    return -1;
}

const char *ml_optim_idle_name(ml_optim_idle idle) {
    return (int)idle >= 0 && (int)idle < 2 ? idle_names[idle] : "?";
}

int ml_optim_find_group(const ml_optim *o, const char *name) {
    for (int g = 0; g < o->n_groups; g++)
        if (!strcmp(o->group[g].name, name)) return g;
    return -1;
}

int ml_optim_add_group(ml_optim *o, const char *name, const char *match, float lr, float weight_decay, int frozen) {
    size_t n = strlen(name);
    int ok = n >= 1 && n < ML_OPTIM_GROUP_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
             (name[i] >= '0' && name[i] <= '9') || name[i] == '_' || name[i] == '-';
    if (!ok) return ml_errorf("group name '%s': expected 1..%d letters, digits, '_' or '-'", name, ML_OPTIM_GROUP_NAME_MAX - 1);
    if (ml_optim_find_group(o, name) >= 0) return ml_errorf("group '%s' is defined twice", name);
    if (o->n_groups == ML_OPTIM_MAX_GROUPS) return ml_errorf("at most %d parameter groups", ML_OPTIM_MAX_GROUPS);
    if (ml_glob_check(match)) return ml_error_prefix("group '%s': match", name);
    ml_optim_group *g = &o->group[o->n_groups++];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    snprintf(g->match, sizeof g->match, "%s", match);
    g->lr = lr;
    g->weight_decay = weight_decay;
    g->frozen = frozen;
    return ML_OK;
}

void ml_optim_place(const ml_optim *o, ml_params *p) {
    for (int k = 0; k < p->count; k++) {
        ml_tensor *t = &p->t[k];
        if (t->placed || t->removed) continue;
        t->placed = 1;
        t->group = -1;
        for (int g = 0; g < o->n_groups && t->group < 0; g++)
            if (ml_glob_match(o->group[g].match, t->name)) t->group = (int16_t)g;
        t->frozen = t->group >= 0 && o->group[t->group].frozen;
    }
}

void ml_optim_regroup(const ml_optim *o, ml_params *p, int h) {
    ml_tensor *t = &p->t[h];
    if (t->removed) return;
    t->group = -1;
    for (int g = 0; g < o->n_groups && t->group < 0; g++)
        if (ml_glob_match(o->group[g].match, t->name)) t->group = (int16_t)g;
}

int ml_optim_set_frozen(ml_optim *o, ml_params *p, int g, const char *pattern, int frozen, int *changed) {
    int matched = 0, moved = 0;
    frozen = !!frozen;
    if (g >= 0) o->group[g].frozen = frozen;
    for (int k = 0; k < p->count; k++) {
        ml_tensor *t = &p->t[k];
        if (t->removed || (g >= 0 ? t->group != g : !ml_glob_match(pattern, t->name))) continue;
        matched++;
        moved += t->frozen != frozen;
        t->frozen = (uint8_t)frozen;
    }
    if (changed) *changed = moved;
    return matched;
}

float ml_optim_tensor_lr(const ml_optim *o, const ml_tensor *t) {
    float v = t->group >= 0 && t->group < o->n_groups ? o->group[t->group].lr : NAN;
    return isnan(v) ? o->lr : v;
}

float ml_optim_tensor_wd(const ml_optim *o, const ml_tensor *t) {
    float v = t->group >= 0 && t->group < o->n_groups ? o->group[t->group].weight_decay : NAN;
    return isnan(v) ? o->weight_decay : v;
}

/* The element loops. Each runs over a span of one tensor (n floats); the per-element
   arithmetic is the same expression for every tensor, so a run without groups updates bit for
   bit as the single loop over the block did. They are vectorised (omp simd): IEEE sqrt and
   division round the same in vector and scalar code, so results do not depend on it. */

static void sgd_span(float *restrict w, const float *restrict g, float *restrict m, size_t n, float lr, float wd,
                     float mu) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        if (mu > 0) {
            m[i] = mu * m[i] + gi;
            gi = m[i];
        }
        w[i] -= lr * gi;
    }
}

/* Adam, decay as L2: g + wd*w */
static void adam_span(float *restrict w, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                      float b1, float b2, float eps, float step, float rc2, float wd) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] -= step * m[i] / (sqrtf(v[i]) * rc2 + eps);
    }
}

/* AdamW: w*(1 - lr*wd) first (torch's p.mul_(1 - lr * weight_decay)), then Adam on g */
static void adamw_span(float *restrict w, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                       float b1, float b2, float eps, float step, float rc2, float decay) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], wi = w[i] * decay;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] = wi - step * m[i] / (sqrtf(v[i]) * rc2 + eps);
    }
}

/* Whether a step updates tensor t. */
static int updates(const ml_optim *o, const ml_tensor *t) {
    return !t->frozen && !t->removed && !(o->idle == ML_OPTIM_IDLE_LAZY && t->idle);
}

/* Adam's bias corrections 1 - beta^t of the last step count asked for: the tensors of an
   expert, next to each other, share one count (two pow calls per expert, not per tensor). */
typedef struct bias_memo {
    int64_t step; /* -1: none yet */
    float c1, c2;
} bias_memo;

/* The gradient of a stale tensor (ml_tensor.grad_stale: it reads as zero, its memory holds
   old values), in pieces: the update then reads zeros, the same arithmetic as a zeroed
   gradient. */
enum { ZERO_GRAD = 4096 };
static const float zero_grad[ZERO_GRAD];

/*
 * The update streams four arrays (weights, gradient, both moments), with many experts in
 * runs of a few tens of KB (an expert's tensors) scattered over blocks of tens of MB that
 * the caches do not hold from one of its steps to the next: the loop waits on memory, and
 * the hardware prefetcher restarts at every run. So the update asks for the lines PF_DIST
 * floats ahead itself, PF_CHUNK floats at a time, across the end of a tensor into the next
 * one it updates (pf_cursor, one per thread). Only the order of the memory reads changes,
 * not one result (docs/PERFORMANCE.md, Many experts: the optimizer's time at 256 experts
 * fell by about a seventh).
 */
enum { PF_DIST = 1024, PF_CHUNK = 256 };

typedef struct pf_cursor {
    const ml_optim *o;
    const ml_params *p;
    const ml_tensor *t; /* the tensor being prefetched, NULL: none */
    size_t at;          /* its next element to prefetch */
    int k;              /* its index in p->t */
    int started;
} pf_cursor;

/* Prefetches the next n elements of the cursor's run, moving on to the next updated tensors. */
static void pf_advance(pf_cursor *c, size_t n) {
    while (n > 0 && c->t) {
        const ml_tensor *t = c->t;
        const size_t left = t->n - c->at, step = n < left ? n : left, at = t->off + c->at;
        for (size_t i = 0; i < step; i += 16) {
            __builtin_prefetch(c->p->data + at + i, 1);
            __builtin_prefetch(c->p->m + at + i, 1);
            __builtin_prefetch(c->p->v + at + i, 1);
            if (!t->grad_stale) __builtin_prefetch(c->p->grad + at + i, 0);
        }
        c->at += step;
        n -= step;
        if (c->at < t->n) break;
        c->t = NULL;
        c->at = 0;
        for (int k = c->k + 1; k < c->p->count && !c->t; k++)
            if (updates(c->o, &c->p->t[k])) c->t = &c->p->t[k], c->k = k;
    }
}

/* Elements [a, b) of tensor t, at most ZERO_GRAD of them when it is stale. */
static void update_span(const ml_optim *o, ml_params *p, const ml_tensor *t, size_t a, size_t b, bias_memo *bm,
                        pf_cursor *pf) {
    const float lr = ml_optim_tensor_lr(o, t), wd = ml_optim_tensor_wd(o, t);
    const size_t at = t->off + a, n = b - a;
    float *tw = p->data + at, *tm = p->m + at, *tv = p->v + at;
    const float *tg = t->grad_stale ? zero_grad : p->grad + at;
    if (o->kind == ML_OPTIM_SGD) {
        for (size_t i = 0; i < n; i += PF_CHUNK) {
            const size_t c = n - i < PF_CHUNK ? n - i : PF_CHUNK;
            pf_advance(pf, c);
            sgd_span(tw + i, tg + i, tm + i, c, lr, wd, o->momentum);
        }
        return;
    }
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    if (bm->step != t->step) {
        bm->step = t->step;
        bm->c1 = 1.0f - (float)pow(b1, (double)t->step);
        bm->c2 = 1.0f - (float)pow(b2, (double)t->step);
    }
    const float c1 = bm->c1, c2 = bm->c2;
    const float step = lr / c1, rc2 = 1.0f / sqrtf(c2);
    for (size_t i = 0; i < n; i += PF_CHUNK) {
        const size_t c = n - i < PF_CHUNK ? n - i : PF_CHUNK;
        pf_advance(pf, c);
        if (o->kind == ML_OPTIM_ADAMW)
            adamw_span(tw + i, tg + i, tm + i, tv + i, c, b1, b2, eps, step, rc2, 1.0f - lr * wd);
        else adam_span(tw + i, tg + i, tm + i, tv + i, c, b1, b2, eps, step, rc2, wd);
    }
}

/* Elements [a, b) of tensor t. */
static void update_range(const ml_optim *o, ml_params *p, const ml_tensor *t, size_t a, size_t b, bias_memo *bm,
                         pf_cursor *pf) {
    if (!t->grad_stale) {
        update_span(o, p, t, a, b, bm, pf);
        return;
    }
    for (size_t i = a; i < b; i += ZERO_GRAD) update_span(o, p, t, i, b - i < ZERO_GRAD ? b : i + ZERO_GRAD, bm, pf);
}

void ml_optim_step(ml_optim *o, ml_params *p) {
    o->t++;
    size_t total = 0;
    for (int k = 0; k < p->count; k++) {
        ml_tensor *t = &p->t[k];
        if (!updates(o, t)) continue;
        if (o->kind != ML_OPTIM_SGD) t->step++;
        total += t->n;
    }
    /* The updated tensors' elements, end to end, in equal shares (16-float aligned) per
       thread: many small tensors (experts) keep every thread busy as well as a few large ones. */
    int threads = total > 65536 ? omp_get_max_threads() : 1;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        const size_t lo = id ? (size_t)((double)total * id / nt) & ~(size_t)15 : 0;
        const size_t hi = id + 1 < nt ? (size_t)((double)total * (id + 1) / nt) & ~(size_t)15 : total;
        size_t pos = 0;
        bias_memo bm = {-1, 0, 0};
        pf_cursor pf = {o, p, NULL, 0, 0, 0};
        for (int k = 0; k < p->count && pos < hi; k++) {
            const ml_tensor *t = &p->t[k];
            if (!updates(o, t)) continue;
            size_t a = pos, b = pos + t->n;
            pos = b;
            if (b <= lo) continue;
            const size_t from = (a > lo ? a : lo) - a, to = (b < hi ? b : hi) - a;
            if (!pf.started) { /* this thread's first tensor: the cursor starts PF_DIST ahead */
                pf.t = t, pf.k = k, pf.at = from, pf.started = 1;
                pf_advance(&pf, PF_DIST);
            }
            update_range(o, p, t, from, to, &bm, &pf);
        }
    }
}
