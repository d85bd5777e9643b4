/* plugintest.c — conformance checks for router, loss and schedule plugins (plugin-test).
 *
 * Every check drives the plugin through the same hosts a run uses (router_host, loss_host,
 * schedule_host), so what passes here is what a run accepts: the same tensor limits, the
 * same checks of every forward, the same option rules. Gradients are checked by the one
 * policy of nn/gradcheck.h.
 */
#include "plugin/plugintest.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/crash.h"
#include "nn/gradcheck.h"
#include "nn/params.h"
#include "plugin/loader.h"
#include "plugin/loss_host.h"
#include "plugin/options.h"
#include "plugin/router_host.h"
#include "plugin/schedule_host.h"

#define WHY 768
#define MAX_VARIANTS 8

typedef struct suite {
    FILE *out;
    int pass, fail;
    const char *tag; /* prefix of check names, e.g. "renormalize=false: " */
} suite;

static void report(suite *s, int ok, const char *name, const char *fmt, ...) ML_PRINTF(4, 5);
static void report(suite *s, int ok, const char *name, const char *fmt, ...) {
    if (ok) {
        s->pass++;
        fprintf(s->out, "PASS %s%s\n", s->tag, name);
        return;
    }
    s->fail++;
    fprintf(s->out, "FAIL %s%s: ", s->tag, name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(s->out, fmt, ap);
    va_end(ap);
    fputc('\n', s->out);
}

static void fill_uniform(ml_rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)ml_rng_uniform(r);
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static void why_set(char *why, const char *fmt, ...) ML_PRINTF(2, 3);
static void why_set(char *why, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, WHY, fmt, ap);
    va_end(ap);
}

/* ============================================================== router harness */

/* A stand-in for the model: the router hosted as a run hosts it, in blocks of its own. */
typedef struct harness {
    const ml_plugin *p;
    ml_params P, S;
    ml_router_inst ri;
    ml_rng init_rng;
    int D, N;
    float *x;    /* (cap_B, D) the input */
    int cap_B;
} harness;

static void h_free(harness *h) {
    ml_router_inst_release(&h->ri);
    ml_params_free(&h->P);
    ml_params_free(&h->S);
    free(h->x);
    memset(h, 0, sizeof *h);
}

static int h_new(harness *h, const ml_plugin *p, const ml_optval *opt, int D, int N, uint64_t seed, char *why) {
    memset(h, 0, sizeof *h);
    h->p = p;
    h->D = D;
    h->N = N;
    ml_params_init(&h->P, 1);
    ml_params_init(&h->S, 0);
    ml_rng_seed(&h->init_rng, seed);
    if (ml_router_inst_init(&h->ri, p, opt, 0, D, N, seed, seed + 1, &h->P, &h->S, "") ||
        ml_params_commit(&h->P, &h->init_rng) || ml_params_commit(&h->S, &h->init_rng)) {
        why_set(why, "%s", ml_error());
        return ML_ERR;
    }
    return ML_OK;
}

/* The input buffer for B samples, x filled uniform in [-scale, scale] from seed. */
static float *h_input(harness *h, int B, uint64_t seed, float scale) {
    if (B > h->cap_B) {
        free(h->x);
        h->x = ml_calloc((size_t)B * h->D, sizeof(float));
        h->cap_B = h->x ? B : 0;
        if (!h->x) return NULL;
    }
    ml_rng r;
    ml_rng_seed(&r, seed);
    fill_uniform(&r, h->x, (size_t)B * h->D, -scale, scale);
    return h->x;
}

static int h_forward(harness *h, int B, int training, char *why) {
    static const int32_t *no_ids = NULL;
    int32_t ids[4096];
    const int32_t *sid = no_ids;
    if (B <= 4096) {
        for (int b = 0; b < B; b++) ids[b] = 1000 + b;
        sid = ids;
    }
    if (ml_router_inst_forward(&h->ri, h->x, B, training, sid)) {
        why_set(why, "%s", ml_error());
        return ML_ERR;
    }
    return ML_OK;
}

static int h_backward(harness *h, const float *dgate, const float *dlogits, const float *dprob, float *dx, char *why) {
    if (ml_router_inst_backward(&h->ri, dgate, dlogits, dprob, dx)) {
        why_set(why, "%s", ml_error());
        return ML_ERR;
    }
    return ML_OK;
}

/* Grows to N2 experts as a run does: declare, commit, EXPERTS_ADDED. */
static int h_grow(harness *h, int N2, char *why) {
    int N1 = h->N;
    if (ml_router_inst_grow_declare(&h->ri, N2 - N1) || ml_params_commit(&h->P, &h->init_rng) ||
        ml_params_commit(&h->S, &h->init_rng) || ml_router_inst_grow_finish(&h->ri, N1)) {
        why_set(why, "%s", ml_error());
        return ML_ERR;
    }
    h->N = N2;
    return ML_OK;
}

/* Removes experts as a run does: keep the kept rows, commit, EXPERTS_REMOVED (ABI 1.2). */
static int h_remove(harness *h, const int *kept, int nkeep, char *why) {
    int N1 = h->N;
    if (ml_router_inst_remove_declare(&h->ri, kept, nkeep) || ml_params_commit(&h->P, &h->init_rng) ||
        ml_params_commit(&h->S, &h->init_rng) || ml_router_inst_remove_finish(&h->ri, kept, N1)) {
        why_set(why, "%s", ml_error());
        return ML_ERR;
    }
    h->N = nkeep;
    return ML_OK;
}

static size_t tensor_len(const harness *h, const ml_tensor_set *s, int i) {
    return (size_t)ml_tensor_decl_rows(&s->decl[i], h->N) * (size_t)s->decl[i].cols;
}

static void zero_grads(harness *h) { ml_params_zero_grad(&h->P); }

/* What a checkpoint keeps of a router between steps: its state block, RNG and step. */
typedef struct snapshot {
    float *state;
    size_t n;
    ml_rng rng;
    int64_t step;
} snapshot;

static int snap_take(harness *h, snapshot *s) {
    memset(s, 0, sizeof *s);
    s->n = h->S.total;
    s->state = ml_calloc(s->n ? s->n : 1, sizeof(float));
    if (!s->state) return ML_ERR;
    if (s->n) memcpy(s->state, h->S.data, s->n * sizeof(float));
    s->rng = h->ri.rng;
    s->step = h->ri.step;
    return ML_OK;
}

static void snap_restore(harness *h, const snapshot *s) {
    if (s->n) memcpy(h->S.data, s->state, s->n * sizeof(float));
    h->ri.rng = s->rng;
    h->ri.step = s->step;
}

static void snap_free(snapshot *s) {
    free(s->state);
    s->state = NULL;
}

/*
 * The functional whose gradient is checked: L = sum over triples of gate * (v_e . x_b)
 * (a linear stand-in for the experts), + sum a * prob + sum c * logits (stand-ins for
 * losses reading prob and logits). Accumulated in double.
 */
typedef struct functional {
    harness *h;
    int B;
    const float *v; /* (N, D) */
    const float *a; /* (B, N) */
    const float *c; /* (B, N) */
    const snapshot *snap;
    const unsigned char *mask0; /* (B, N) the dispatch of the unperturbed forward */
    unsigned char *mask;
    char *why;      /* the first failure of a perturbed forward */
} functional;

static double eval_functional(const functional *fn) {
    const ml_router_inst *ri = &fn->h->ri;
    const int D = fn->h->D, N = fn->h->N;
    double L = 0;
    for (int t = 0; t < ri->n_disp; t++) {
        const float *v = fn->v + (size_t)ri->disp_expert[t] * D, *x = fn->h->x + (size_t)ri->disp_sample[t] * D;
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)v[d] * x[d];
        L += ri->disp_gate[t] * dot;
    }
    for (size_t i = 0; i < (size_t)fn->B * N; i++) L += (double)fn->a[i] * ri->prob[i] + (double)fn->c[i] * ri->logits[i];
    return L;
}

static void dispatch_mask(const ml_router_inst *ri, int B, unsigned char *m) {
    memset(m, 0, (size_t)B * ri->N);
    for (int t = 0; t < ri->n_disp; t++) m[(size_t)ri->disp_sample[t] * ri->N + ri->disp_expert[t]] = 1;
}

/* ml_gc_fn: a forward from the snapshot; NaN when the dispatch changed (a discrete choice,
   not a gradient) or the forward failed (the failure is kept in why). */
static double fd_point(void *ctx) {
    functional *fn = ctx;
    char why[WHY];
    snap_restore(fn->h, fn->snap);
    if (h_forward(fn->h, fn->B, 1, why) != ML_OK) {
        if (!fn->why[0]) snprintf(fn->why, WHY, "%s", why);
        return NAN;
    }
    dispatch_mask(&fn->h->ri, fn->B, fn->mask);
    if (memcmp(fn->mask, fn->mask0, (size_t)fn->B * fn->h->N) != 0) return NAN;
    return eval_functional(fn);
}

/* Finite-difference check of dL/dx and dL/dparam; one reported check per tensor. */
static void router_gradcheck(suite *s, harness *h, int B, uint64_t seed) {
    char why[WHY] = "", name[128];
    const int N = h->N, D = h->D;
    size_t bn = (size_t)B * N;
    ml_rng r;
    ml_rng_seed(&r, seed);
    float *v = ml_calloc((size_t)N * D, sizeof(float)), *a = ml_calloc(bn, sizeof(float));
    float *c = ml_calloc(bn, sizeof(float)), *dx = ml_calloc((size_t)B * D, sizeof(float));
    float *dgate = ml_calloc(bn + 1, sizeof(float));
    unsigned char *mask0 = ml_calloc(bn, 1), *mask = ml_calloc(bn, 1);
    float **grads = ml_calloc((size_t)h->ri.param.n + 1, sizeof *grads);
    snapshot snap = {0};
    if (!v || !a || !c || !dx || !dgate || !mask0 || !mask || !grads || !h_input(h, B, seed ^ 0x9e37, 1) ||
        snap_take(h, &snap) != ML_OK) {
        report(s, 0, "gradient", "out of memory");
        goto done;
    }
    fill_uniform(&r, v, (size_t)N * D, -1, 1);
    fill_uniform(&r, a, bn, -1, 1);
    fill_uniform(&r, c, bn, -0.5f, 0.5f);
    if (h_forward(h, B, 1, why) != ML_OK) {
        report(s, 0, "gradient", "%s", why);
        goto done;
    }
    const ml_router_inst *ri = &h->ri;
    dispatch_mask(ri, B, mask0);
    for (int t = 0; t < ri->n_disp; t++) {
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)v[(size_t)ri->disp_expert[t] * D + d] * h->x[(size_t)ri->disp_sample[t] * D + d];
        dgate[t] = (float)dot;
    }
    zero_grads(h);
    if (h_backward(h, dgate, c, a, dx, why) != ML_OK) {
        report(s, 0, "gradient", "%s", why);
        goto done;
    }
    /* the stand-in experts' own dependence on x, which the host would add */
    for (int t = 0; t < ri->n_disp; t++)
        for (int d = 0; d < D; d++) dx[(size_t)ri->disp_sample[t] * D + d] += ri->disp_gate[t] * v[(size_t)ri->disp_expert[t] * D + d];
    /* the analytic gradients, copied: the perturbed forwards below do not touch them, but
       a plugin's forward might (it must not; then the check says so) */
    double scale = ml_gc_scale(dx, (size_t)B * D);
    for (int p = 0; p < ri->param.n; p++) {
        size_t n = tensor_len(h, &ri->param, p);
        if (!(grads[p] = ml_calloc(n, sizeof(float)))) {
            report(s, 0, "gradient", "out of memory");
            goto done;
        }
        memcpy(grads[p], ri->param.grad[p], n * sizeof(float));
        scale = fmax(scale, ml_gc_scale(grads[p], n));
    }
    functional fn = {h, B, v, a, c, &snap, mask0, mask, why};
    for (int p = -1; p < ri->param.n; p++) {
        why[0] = 0;
        float *t = p < 0 ? h->x : ri->param.data[p];
        const float *an = p < 0 ? dx : grads[p];
        size_t n = p < 0 ? (size_t)B * D : tensor_len(h, &ri->param, p);
        snprintf(name, sizeof name, "gradient %s", p < 0 ? "dx" : ri->param.decl[p].name);
        ml_gc_result res;
        int ok = ml_gradcheck(NULL, fd_point, &fn, t, n, an, scale, &res);
        if (why[0] && !res.checked) report(s, 0, name, "%s", why);
        else if (!res.checked)
            report(s, 0, name, "the dispatch changes under every perturbation (%d skipped)", res.skipped);
        else if (!ok)
            report(s, 0, name, "d/d%s[%zu]: backward gives %.6g, finite differences %.6g (relative error %.3g > %.3g; "
                   "%d entries checked)", p < 0 ? "x" : ri->param.decl[p].name, res.index, res.analytic,
                   res.numeric, res.worst, ml_gc_default().tol, res.checked);
        else
            report(s, 1, name, NULL);
    }
    snap_restore(h, &snap);
done:
    snap_free(&snap);
    for (int p = 0; grads && p < h->ri.param.n; p++) free(grads[p]);
    free(grads);
    free(v), free(a), free(c), free(dx), free(dgate), free(mask0), free(mask);
}

/* Forward (training and eval) + backward with random upstream gradients; all finite. */
static int router_roundtrip(harness *h, int B, uint64_t seed, float xscale, char *why) {
    ml_rng r;
    ml_rng_seed(&r, seed);
    size_t bn = (size_t)B * h->N;
    float *dg = ml_calloc(bn + 1, sizeof(float)), *dl = ml_calloc(bn, sizeof(float));
    float *dp = ml_calloc(bn, sizeof(float)), *dx = ml_calloc((size_t)B * h->D, sizeof(float));
    int ok = dg && dl && dp && dx && h_input(h, B, seed, xscale);
    if (!ok) why_set(why, "out of memory");
    fill_uniform(&r, dg, bn, -1, 1);
    fill_uniform(&r, dl, bn, -1, 1);
    fill_uniform(&r, dp, bn, -1, 1);
    for (int training = 0; training < 2 && ok; training++)
        if (h_forward(h, B, training, why) != ML_OK) ok = 0;
    if (ok) {
        zero_grads(h);
        if (h_backward(h, dg, dl, dp, dx, why) != ML_OK) ok = 0;
        else if (!all_finite(dx, (size_t)B * h->D)) ok = 0, why_set(why, "dx not finite");
        for (int i = 0; i < h->ri.param.n && ok; i++)
            if (!all_finite(h->ri.param.grad[i], tensor_len(h, &h->ri.param, i)))
                ok = 0, why_set(why, "gradient of %s not finite", h->ri.param.decl[i].name);
    }
    free(dg), free(dl), free(dp), free(dx);
    return ok;
}

/* Backward must add into dx and the gradients, not overwrite them; and an eval forward
   followed by backward must take the eval forward's gradient (the training flag is the
   forward's, as the host passes it). */
static void router_accumulates(suite *s, harness *h, int B, uint64_t seed) {
    char why[WHY] = "";
    ml_rng r;
    ml_rng_seed(&r, seed);
    size_t bn = (size_t)B * h->N, bd = (size_t)B * h->D;
    float *dg = ml_calloc(bn + 1, sizeof(float)), *dx1 = ml_calloc(bd, sizeof(float));
    float *dx2 = ml_calloc(bd, sizeof(float));
    float **g1 = ml_calloc((size_t)h->ri.param.n + 1, sizeof *g1);
    snapshot snap = {0};
    int ok = dg && dx1 && dx2 && g1 && h_input(h, B, seed, 1) && snap_take(h, &snap) == ML_OK;
    if (!ok) why_set(why, "out of memory");
    if (ok) fill_uniform(&r, dg, bn, -1, 1);
    if (ok && h_forward(h, B, 1, why) != ML_OK) ok = 0;
    if (ok) zero_grads(h);
    if (ok && h_backward(h, dg, NULL, NULL, dx1, why) != ML_OK) ok = 0;
    for (int i = 0; i < h->ri.param.n && ok; i++) {
        size_t n = tensor_len(h, &h->ri.param, i);
        if (!(g1[i] = ml_calloc(n, sizeof(float)))) ok = 0, why_set(why, "out of memory");
        else memcpy(g1[i], h->ri.param.grad[i], n * sizeof(float));
        for (size_t j = 0; ok && j < n; j++) h->ri.param.grad[i][j] = 1.0f;
    }
    for (size_t j = 0; j < bd; j++) dx2[j] = 1.0f;
    if (ok) {
        snap_restore(h, &snap);
        if (h_forward(h, B, 1, why) != ML_OK || h_backward(h, dg, NULL, NULL, dx2, why) != ML_OK) ok = 0;
    }
    for (size_t j = 0; j < bd && ok; j++)
        if (fabsf(dx2[j] - 1.0f - dx1[j]) > 1e-4f * (1 + fabsf(dx1[j])))
            ok = 0, why_set(why, "dx[%zu]: %g on a zeroed buffer, %g added to 1 (backward must add with +=)", j,
                            dx1[j], dx2[j] - 1.0f);
    for (int i = 0; i < h->ri.param.n && ok; i++)
        for (size_t j = 0; j < tensor_len(h, &h->ri.param, i) && ok; j++)
            if (fabsf(h->ri.param.grad[i][j] - 1.0f - g1[i][j]) > 1e-4f * (1 + fabsf(g1[i][j])))
                ok = 0, why_set(why, "gradient of %s[%zu]: %g on a zeroed buffer, %g added to 1 (backward must add "
                                "with +=)", h->ri.param.decl[i].name, j, g1[i][j], h->ri.param.grad[i][j] - 1.0f);
    report(s, ok, "backward accumulates", "%s", why);
    snap_free(&snap);
    for (int i = 0; g1 && i < h->ri.param.n; i++) free(g1[i]);
    free(g1), free(dg), free(dx1), free(dx2);
}

/*
 * One training step as the host runs it: forward, backward with random upstream
 * gradients, AFTER_BACKWARD (grad_mag, load), EPOCH_END every third step. Outputs
 * appended to trace.
 */
static int train_step(harness *h, int B, float **trace, size_t *tn, char *why) {
    const int64_t step = h->ri.step;
    ml_rng r;
    ml_rng_seed(&r, 1000 + (uint64_t)step);
    size_t bn = (size_t)B * h->N, bd = (size_t)B * h->D;
    float *dg = ml_calloc(bn + 1, sizeof(float)), *dx = ml_calloc(bd, sizeof(float));
    float *mag = ml_calloc((size_t)h->N, sizeof(float)), *load = ml_calloc((size_t)h->N, sizeof(float));
    int ok = dg && dx && mag && load && h_input(h, B, 2000 + (uint64_t)step, 1);
    if (!ok) why_set(why, "out of memory");
    if (ok) fill_uniform(&r, dg, bn, -1, 1);
    /* every step starts from zero gradients, as the host's does: the AFTER_BACKWARD
       magnitudes are then this step's, which a restored instance can reproduce */
    if (ok) zero_grads(h);
    if (ok && (h_forward(h, B, 1, why) != ML_OK || h_backward(h, dg, NULL, NULL, dx, why) != ML_OK)) ok = 0;
    const ml_router_inst *ri = &h->ri;
    if (ok) {
        size_t add = 2 * bn + 3 * (size_t)ri->n_disp + 2;
        float *t = realloc(*trace, (*tn + add) * sizeof(float));
        if (!t) ok = 0, why_set(why, "out of memory");
        else {
            *trace = t;
            float *o = t + *tn;
            memcpy(o, ri->logits, bn * sizeof(float)), o += bn;
            memcpy(o, ri->prob, bn * sizeof(float)), o += bn;
            *o++ = (float)ri->n_disp;
            *o++ = (float)ri->n_dropped;
            for (int k = 0; k < ri->n_disp; k++)
                *o++ = (float)ri->disp_sample[k], *o++ = (float)ri->disp_expert[k], *o++ = ri->disp_gate[k];
            *tn += add;
        }
    }
    if (ok) {
        for (int k = 0; k < ri->n_disp; k++) load[ri->disp_expert[k]] += 1;
        for (int i = 0; i < ri->param.n; i++) {
            if (!ri->param.decl[i].per_expert) continue;
            int cols = ri->param.decl[i].cols;
            for (int e = 0; e < h->N; e++)
                for (int c = 0; c < cols; c++) mag[e] += fabsf(ri->param.grad[i][(size_t)e * cols + c]) / cols;
        }
        if (ml_router_inst_after_backward(&h->ri, mag, load)) ok = 0, why_set(why, "%s", ml_error());
        if (ok && step % 3 == 2 && ml_router_inst_epoch_end(&h->ri, 1 + (int)(step / 3)))
            ok = 0, why_set(why, "%s", ml_error());
    }
    free(dg), free(dx), free(mag), free(load);
    return ok;
}

static void router_determinism(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h[2];
    memset(h, 0, sizeof h);
    float *trace[2] = {NULL, NULL};
    size_t tn[2] = {0, 0};
    int ok = 1;
    for (int k = 0; k < 2 && ok; k++) {
        if (h_new(&h[k], p, opt, 8, 4, 42, why) != ML_OK) ok = 0;
        for (int st = 0; st < 3 && ok; st++) ok = train_step(&h[k], 16, &trace[k], &tn[k], why);
    }
    if (ok) {
        if (tn[0] != tn[1] || memcmp(trace[0], trace[1], tn[0] * sizeof(float)) != 0)
            ok = 0, why_set(why, "two instances with seed 42 produce different outputs");
        for (int i = 0; i < h[0].ri.param.n && ok; i++)
            if (memcmp(h[0].ri.param.grad[i], h[1].ri.param.grad[i], tensor_len(&h[0], &h[0].ri.param, i) * sizeof(float)))
                ok = 0, why_set(why, "gradients of %s differ between two instances", h[0].ri.param.decl[i].name);
    }
    report(s, ok, "determinism", "%s", why);
    for (int k = 0; k < 2; k++) h_free(&h[k]), free(trace[k]);
}

/* Checkpoint: state tensors, RNG and step copied after 2 steps into a fresh instance must
   make it continue exactly as the original does. */
static void router_checkpoint(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    float *ta = NULL, *tb = NULL, *junk = NULL;
    size_t na = 0, nb = 0, nj = 0;
    snapshot snap = {0};
    int ok = h_new(&a, p, opt, 8, 4, 7, why) == ML_OK && h_new(&b, p, opt, 8, 4, 7, why) == ML_OK;
    for (int st = 0; st < 2 && ok; st++) ok = train_step(&a, 16, &junk, &nj, why);
    if (ok && snap_take(&a, &snap) != ML_OK) ok = 0, why_set(why, "out of memory");
    for (int st = 0; st < 4 && ok; st++) ok = train_step(&a, 16, &ta, &na, why);
    if (ok) {
        /* b starts fresh: its parameters equal a's (same seed, no optimizer here) */
        snap_restore(&b, &snap);
        for (int st = 0; st < 4 && ok; st++) ok = train_step(&b, 16, &tb, &nb, why);
    }
    if (ok && (na != nb || memcmp(ta, tb, na * sizeof(float)) != 0))
        ok = 0, why_set(why, "a fresh instance given the saved state tensors and RNG continues differently (state kept "
                        "outside the declared state tensors is lost in checkpoints)");
    report(s, ok, "checkpoint state round trip", "%s", why);
    snap_free(&snap);
    free(ta), free(tb), free(junk);
    h_free(&a), h_free(&b);
}

static void router_growth(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    int ok = h_new(&h, p, opt, 8, 4, 11, why) == ML_OK && router_roundtrip(&h, 16, 5, 1, why);
    if (ok) ok = h_grow(&h, 6, why) == ML_OK;
    if (ok) {
        ml_tensor_decl d[ML_MAX_TENSORS];
        int np = ml_tensor_decls_read(p, "params", h.ri.api->params, h.ri.self, d);
        if (np < 0) ok = 0, why_set(why, "%s", ml_error());
        else if (np != h.ri.param.n)
            ok = 0, why_set(why, "params() gives %d tensors after growth, %d before", np, h.ri.param.n);
    }
    if (ok) ok = router_roundtrip(&h, 16, 6, 1, why);
    report(s, ok, "experts added (N 4 -> 6)", "%s", why);
    if (ok) {
        const char *tag = s->tag;
        char t2[160];
        snprintf(t2, sizeof t2, "%sN=6: ", tag);
        s->tag = t2;
        router_gradcheck(s, &h, 16, 77);
        s->tag = tag;
    }
    h_free(&h);
}

/* Experts removed: N 6 -> 4 (experts 1 and 4 go). The host keeps the kept experts' rows of
   every per-expert tensor; a 1.2 router is told (EXPERTS_REMOVED) and must route and
   differentiate correctly at the new N. */
static void router_removal(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    static const int kept[4] = {0, 2, 3, 5};
    float *before[2][ML_MAX_TENSORS] = {{0}};
    int ok = h_new(&h, p, opt, 8, 4, 17, why) == ML_OK && h_grow(&h, 6, why) == ML_OK && router_roundtrip(&h, 16, 6, 1, why);
    ml_tensor_set *sets[2] = {&h.ri.param, &h.ri.state};
    for (int b = 0; b < 2 && ok; b++) {
        ml_tensor_set_bind(sets[b]);
        for (int i = 0; i < sets[b]->n && ok; i++) {
            size_t n = tensor_len(&h, sets[b], i);
            if (!(before[b][i] = ml_calloc(n, sizeof(float)))) ok = 0, why_set(why, "out of memory");
            else memcpy(before[b][i], sets[b]->data[i], n * sizeof(float));
        }
    }
    if (ok) ok = h_remove(&h, kept, 4, why) == ML_OK;
    for (int b = 0; b < 2 && ok; b++) {
        ml_tensor_set_bind(sets[b]);
        for (int i = 0; i < sets[b]->n && ok; i++) {
            const ml_tensor_decl *d = &sets[b]->decl[i];
            size_t cols = (size_t)d->cols;
            for (int j = 0; j < (d->per_expert ? 4 : d->rows) && ok; j++) {
                const float *want = before[b][i] + (size_t)(d->per_expert ? kept[j] : j) * cols;
                if (memcmp(sets[b]->data[i] + (size_t)j * cols, want, cols * sizeof(float)))
                    ok = 0, why_set(why, "%s %s: row %d is not what row %d was before the removal", b ? "state" : "param",
                                    d->name, j, d->per_expert ? kept[j] : j);
            }
        }
    }
    if (ok) ok = router_roundtrip(&h, 16, 4, 1, why);
    report(s, ok, "experts removed (N 6 -> 4, experts 1 and 4)", "%s", why);
    if (ok) {
        fprintf(s->out, "     %s\n", p->abi_minor >= 2 ? "told with ML_EV_EXPERTS_REMOVED (ABI 1.2)"
                                                         : "built before ABI 1.2: not told; the host kept the rows of its tensors");
        const char *tag = s->tag;
        char t2[160];
        snprintf(t2, sizeof t2, "%safter removal: ", tag);
        s->tag = t2;
        router_gradcheck(s, &h, 16, 79);
        s->tag = tag;
    }
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < ML_MAX_TENSORS; i++) free(before[b][i]);
    h_free(&h);
}

static void router_extreme(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    float xscale = 1;
    int ok = h_new(&h, p, opt, 8, 4, 13, why) == ML_OK && h_input(&h, 16, 3, 1) && h_forward(&h, 16, 0, why) == ML_OK;
    if (ok) {
        double m = 0;
        for (int i = 0; i < 64; i++) m = fmax(m, fabs(h.ri.logits[i]));
        double k = 1e4 / fmax(m, 1e-6);
        for (int i = 0; i < h.ri.param.n; i++)
            for (size_t j = 0; j < tensor_len(&h, &h.ri.param, i); j++) h.ri.param.data[i][j] *= (float)k;
        ok = h_forward(&h, 16, 0, why) == ML_OK;
        m = 0;
        for (int i = 0; i < 64 && ok; i++) m = fmax(m, fabs(h.ri.logits[i]));
        if (ok && m < 5e3) xscale = (float)fmin(1e4 / fmax(m, 1e-6), 1e4); /* not linear in params */
    }
    if (ok) ok = router_roundtrip(&h, 16, 3, xscale, why);
    report(s, ok, "extreme logits (about 1e4), training and eval", "%s", why);
    h_free(&h);
}

/* ABI 1.1: the named metrics a router reports (a bad name fails the forward or event that
   reported it, so getting here means they were accepted); listed for the author. */
static void router_metrics(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    float *junk = NULL;
    size_t nj = 0;
    int ok = h_new(&h, p, opt, 8, 4, 17, why) == ML_OK;
    for (int st = 0; st < 3 && ok; st++) ok = train_step(&h, 16, &junk, &nj, why);
    if (ok) ok = h_forward(&h, 16, 0, why) == ML_OK;
    report(s, ok, "metrics (names, training and eval forwards, epoch end)", "%s", why);
    if (ok) {
        static const char *wname[3] = {"training", "eval", "epoch end"};
        for (int w = 0; w < 3; w++) {
            const char *names[ML_ROUTER_MAX_METRICS];
            double vals[ML_ROUTER_MAX_METRICS];
            int n = ml_router_inst_metrics(&h.ri, w, names, vals, ML_ROUTER_MAX_METRICS);
            if (!n) continue;
            fprintf(s->out, "     %s metrics:", wname[w]);
            for (int i = 0; i < n; i++) fprintf(s->out, " %s=%.6g", names[i], vals[i]);
            fputc('\n', s->out);
        }
    }
    free(junk);
    h_free(&h);
}

/* ABI 1.1: each option flagged ML_OPTF_RUNTIME changed on a running router (another valid
   value: bool flipped, enum's other choice, a number moved inside its range); the router
   must accept it and keep routing validly with the new value; the change of an option not
   flagged is refused by the host. */
static void router_runtime_options(suite *s, const ml_plugin *p, const ml_optval *opt) {
    int flagged = 0;
    for (int i = 0; i < p->num_options; i++) flagged += !!(p->options[i].flags & ML_OPTF_RUNTIME);
    char why[WHY] = "";
    harness h;
    if (h_new(&h, p, opt, 8, 4, 19, why) != ML_OK) {
        report(s, 0, "options at run time", "%s", why);
        return;
    }
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        ml_optval nv[ML_MAX_OPTIONS];
        memcpy(nv, h.ri.opt, (size_t)p->num_options * sizeof *nv);
        char text[64] = "";
        if (o->type == ML_OPT_BOOL) snprintf(text, sizeof text, "%s", nv[i].i ? "false" : "true");
        else if (o->type == ML_OPT_ENUM) {
            const char *bar = strchr(o->choices, '|');
            if (nv[i].i == 0 && bar) snprintf(text, sizeof text, "%.*s", (int)strcspn(bar + 1, "|"), bar + 1);
            else snprintf(text, sizeof text, "%.*s", (int)strcspn(o->choices, "|"), o->choices);
        } else if (o->min <= o->max) {
            double x = o->type == ML_OPT_INT ? (double)nv[i].i : nv[i].f;
            double y = x > o->min ? (o->type == ML_OPT_INT ? x - 1 : 0.5 * (x + o->min))
                                  : (o->type == ML_OPT_INT ? x + 1 : 0.5 * (x + fmin(o->max, x + 1)));
            if (y < o->min || y > o->max || y == x) continue;
            if (o->type == ML_OPT_INT) snprintf(text, sizeof text, "%.0f", y);
            else ml_scalar_fmt_num(y, text, sizeof text);
        } else {
            double x = o->type == ML_OPT_INT ? (double)nv[i].i : nv[i].f;
            if (o->type == ML_OPT_INT) snprintf(text, sizeof text, "%.0f", x + 1);
            else ml_scalar_fmt_num(x * 0.5 + 0.25, text, sizeof text);
        }
        if (!text[0] || ml_option_parse(o, text, 0, &nv[i]) != ML_OK) continue;
        char name[128];
        snprintf(name, sizeof name, "option %s=%s at run time", o->name, text);
        int rc = ml_router_inst_set_options(&h.ri, nv);
        if (!(o->flags & ML_OPTF_RUNTIME)) {
            if (rc == ML_OK) report(s, 0, name, "the host accepted a change of an option not flagged ML_OPTF_RUNTIME");
            continue; /* refused, as it must be: nothing to report */
        }
        int ok = rc == ML_OK;
        if (!ok) why_set(why, "%s", ml_error());
        if (ok) ok = router_roundtrip(&h, 16, 31 + (uint64_t)i, 1, why);
        report(s, ok, name, "%s", why);
    }
    if (!flagged) fprintf(s->out, "     (no option is flagged ML_OPTF_RUNTIME: none can change while it runs)\n");
    h_free(&h);
}

/* Runs the router checks with one set of options. */
static void router_suite(suite *s, const ml_plugin *p, const ml_optval *opt, int full) {
    char why[WHY] = "";
    harness h;
    if (h_new(&h, p, opt, 8, 4, 1, why) != ML_OK) {
        report(s, 0, "create (D=8, N=4)", "%s", why);
        h_free(&h);
        return;
    }
    report(s, 1, "create (D=8, N=4)", NULL);
    report(s, router_roundtrip(&h, 16, 2, 1, why), "dispatch validity (B=16)", "%s", why);
    router_gradcheck(s, &h, 16, 9);
    if (full) {
        router_accumulates(s, &h, 16, 4);
        int ok = router_roundtrip(&h, 1, 21, 1, why) && router_roundtrip(&h, 37, 22, 1, why);
        report(s, ok, "batch sizes 1 and 37", "%s", why);
        router_determinism(s, p, opt);
        router_checkpoint(s, p, opt);
        router_growth(s, p, opt);
        router_removal(s, p, opt);
        router_extreme(s, p, opt);
        router_metrics(s, p, opt);
        router_runtime_options(s, p, opt);
    }
    h_free(&h);
}

/* ================================================================== losses */

typedef struct record {
    int B, N, C;
    float *logits, *prob, *gate;
    int32_t *ds, *de, *label;
    int n_disp;
    int coupled; /* a 1.0 loss reads gates as the probabilities they were taken from */
} record;

static void rec_free(record *r) {
    free(r->logits), free(r->prob), free(r->gate), free(r->ds), free(r->de), free(r->label);
}

static int rec_new(record *r, int B, int N, int C) {
    memset(r, 0, sizeof *r);
    r->B = B, r->N = N, r->C = C;
    size_t bn = (size_t)B * N;
    r->logits = ml_calloc(bn, sizeof(float));
    r->prob = ml_calloc(bn, sizeof(float));
    r->gate = ml_calloc(bn, sizeof(float));
    r->ds = ml_calloc(bn, sizeof(int32_t));
    r->de = ml_calloc(bn, sizeof(int32_t));
    r->label = ml_calloc((size_t)B, sizeof(int32_t));
    return r->logits && r->prob && r->gate && r->ds && r->de && r->label ? ML_OK : ML_ERR;
}

/* prob = softmax(logits); top-k dispatch with gate = prob (renormalize: false). */
static void rec_route(record *r, int k) {
    int N = r->N;
    r->n_disp = 0;
    for (int b = 0; b < r->B; b++) {
        float *z = r->logits + (size_t)b * N, *p = r->prob + (size_t)b * N;
        double m = -INFINITY, s = 0;
        for (int e = 0; e < N; e++) m = fmax(m, z[e]);
        for (int e = 0; e < N; e++) s += exp(z[e] - m);
        for (int e = 0; e < N; e++) p[e] = (float)(exp(z[e] - m) / s);
        unsigned long long used = 0;
        for (int j = 0; j < k && j < N; j++) {
            int best = -1;
            for (int e = 0; e < N; e++)
                if (!(used >> e & 1) && (best < 0 || p[e] > p[best])) best = e;
            used |= 1ull << best;
            r->ds[r->n_disp] = b, r->de[r->n_disp] = best, r->gate[r->n_disp] = p[best];
            r->n_disp++;
        }
    }
}

static ml_routing_record rec_view(const record *r, int labels, int training) {
    ml_routing_record v;
    memset(&v, 0, sizeof v);
    v.size = sizeof v;
    v.B = r->B, v.N = r->N, v.logits = r->logits, v.prob = r->prob;
    v.disp_sample = r->ds, v.disp_expert = r->de, v.disp_gate = r->gate, v.n_disp = r->n_disp;
    v.label = labels ? r->label : NULL;
    v.num_classes = labels ? r->C : 0;
    v.training = training;
    return v;
}

static int loss_eval(ml_loss_inst *li, const record *r, int labels, int training, double *value, float scale,
                     float *dl, float *dp, float *dg, char *why) {
    ml_routing_record v = rec_view(r, labels, training);
    if (ml_loss_inst_eval(li, &v, scale, dl, dp, dg, value)) return why_set(why, "%s", ml_error()), 0;
    size_t bn = (size_t)r->B * r->N;
    if ((dl && !all_finite(dl, bn)) || (dp && !all_finite(dp, bn)) || (dg && !all_finite(dg, (size_t)r->n_disp)))
        return why_set(why, "gradient not finite (value %g)", *value), 0;
    return 1;
}

/* The gate of a dispatched pair, or NULL. */
static float *gate_of(record *r, int b, int e) {
    for (int t = 0; t < r->n_disp; t++)
        if (r->ds[t] == b && r->de[t] == e) return &r->gate[t];
    return NULL;
}

typedef struct loss_fd {
    ml_loss_inst *li;
    record *r;
    int labels;
    float *t;     /* the tensor perturbed */
    int which;    /* 0 prob, 1 logits, 2 gates */
    char *why;
} loss_fd;

/* ml_gc_fn; a 1.0 loss (no eval_v2) sees gates that follow the perturbed probability, as
   its gradient assumes (d gate / d prob = 1); a 1.1 loss gets them as the independent
   inputs they are and reports their gradient itself. Training is off: state stays. */
static double loss_point(void *ctx) {
    loss_fd *f = ctx;
    double v;
    char why[WHY];
    if (!loss_eval(f->li, f->r, f->labels, 0, &v, 1, NULL, NULL, NULL, why)) {
        if (!f->why[0]) snprintf(f->why, WHY, "%s", why);
        return NAN;
    }
    return v;
}

/* The coupling above needs the entry index: the probability entries are perturbed through
   this wrapper, which moves the matching gate with them. */
typedef struct coupled_fd {
    loss_fd base;
    float *shadow; /* (B, N) the probabilities the check perturbs */
} coupled_fd;

static double coupled_point(void *ctx) {
    coupled_fd *c = ctx;
    record *r = c->base.r;
    const size_t bn = (size_t)r->B * r->N;
    /* find the one entry that differs from the record and carry it into prob and gate */
    size_t i = bn;
    for (size_t k = 0; k < bn && i == bn; k++)
        if (c->shadow[k] != r->prob[k]) i = k;
    float p0 = 0, g0 = 0, *g = NULL;
    if (i < bn) {
        p0 = r->prob[i];
        r->prob[i] = c->shadow[i];
        if ((g = gate_of(r, (int)(i / r->N), (int)(i % r->N)))) g0 = *g, *g = c->shadow[i];
    }
    double v = loss_point(&c->base);
    if (i < bn) {
        r->prob[i] = p0;
        if (g) *g = g0;
    }
    return v;
}

static void loss_gradcheck(suite *s, ml_loss_inst *li, record *r, int labels, const char *what) {
    char why[WHY] = "", name[96];
    size_t bn = (size_t)r->B * r->N;
    int v2 = ml_loss_inst_has_gate_grad(li);
    r->coupled = !v2;
    float *dl = ml_calloc(bn, sizeof(float)), *dp = ml_calloc(bn, sizeof(float));
    float *dg = ml_calloc(bn + 1, sizeof(float)), *shadow = ml_calloc(bn, sizeof(float));
    double v;
    if (!dl || !dp || !dg || !shadow || !loss_eval(li, r, labels, 0, &v, 1, dl, dp, v2 ? dg : NULL, why)) {
        report(s, 0, "gradient", "%s", why[0] ? why : "out of memory");
        free(dl), free(dp), free(dg), free(shadow);
        return;
    }
    double scale = fmax(ml_gc_scale(dl, bn), ml_gc_scale(dp, bn));
    if (v2) scale = fmax(scale, ml_gc_scale(dg, (size_t)r->n_disp));
    ml_gc_policy pol = ml_gc_default();
    pol.eps = 1e-3;
    pol.max_entries = (int)bn;
    for (int which = 0; which < (v2 ? 3 : 2); which++) {
        static const char *tn[3] = {"prob", "logits", "gates"};
        snprintf(name, sizeof name, "gradient wrt %s%s", tn[which], what);
        why[0] = 0;
        ml_gc_result res;
        int ok;
        if (which == 0 && r->coupled) {
            memcpy(shadow, r->prob, bn * sizeof(float));
            coupled_fd c = {{li, r, labels, shadow, 0, why}, shadow};
            ok = ml_gradcheck(&pol, coupled_point, &c, shadow, bn, dp, scale, &res);
        } else {
            float *t = which == 0 ? r->prob : which == 1 ? r->logits : r->gate;
            size_t n = which == 2 ? (size_t)r->n_disp : bn;
            loss_fd f = {li, r, labels, t, which, why};
            ok = ml_gradcheck(&pol, loss_point, &f, t, n, which == 0 ? dp : which == 1 ? dl : dg, scale, &res);
        }
        if (!res.checked) report(s, 0, name, "%s", why[0] ? why : "no entry could be checked");
        else if (!ok)
            report(s, 0, name, "d/d%s[%zu]: eval gives %.6g, finite differences %.6g (relative error %.3g > %.3g)",
                   tn[which], res.index, res.analytic, res.numeric, res.worst, pol.tol);
        else report(s, 1, name, NULL);
    }
    free(dl), free(dp), free(dg), free(shadow);
}

/* ABI 1.1: a loss with state tensors — evaluation (training off) leaves them alone, two
   instances given the same records agree, and a fresh instance given the saved state
   continues as the original. */
static void loss_state_checks(suite *s, const ml_plugin *p, const ml_optval *opt, record *r) {
    char why[WHY] = "";
    ml_params S[2];
    ml_loss_inst li[2];
    memset(li, 0, sizeof li);
    ml_rng rng;
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        ml_params_init(&S[k], 0);
        ml_rng_seed(&rng, 3);
        if (ok && (ml_loss_inst_init(&li[k], p, opt, 0, 1, r->N, &S[k], "") || ml_params_commit(&S[k], &rng)))
            ok = 0, why_set(why, "%s", ml_error());
    }
    if (ok && !li[0].state.n) goto done;
    double v[2][6];
    float *saved = NULL;
    for (int st = 0; st < 6 && ok; st++) {
        if (st == 3) {
            saved = ml_calloc(S[0].total + 1, sizeof(float));
            if (!saved) ok = 0, why_set(why, "out of memory");
            else memcpy(saved, S[0].data, S[0].total * sizeof(float));
        }
        for (int k = 0; k < 2 && ok; k++) {
            float *before = ml_calloc(S[k].total + 1, sizeof(float));
            if (!before) { ok = 0; break; }
            memcpy(before, S[k].data, S[k].total * sizeof(float));
            double e;
            ok = loss_eval(&li[k], r, 1, 0, &e, 1, NULL, NULL, NULL, why);
            if (ok && memcmp(before, S[k].data, S[k].total * sizeof(float)))
                ok = 0, why_set(why, "an evaluation with training = 0 changed the loss's state tensors");
            free(before);
            ok = ok && loss_eval(&li[k], r, 1, 1, &v[k][st], 1, NULL, NULL, NULL, why);
        }
    }
    for (int st = 0; st < 6 && ok; st++)
        if (v[0][st] != v[1][st]) ok = 0, why_set(why, "two instances fed the same records give %.9g and %.9g at step %d",
                                                v[0][st], v[1][st], st + 1);
    report(s, ok, "state: eval leaves it, determinism", "%s", why);
    if (ok && saved) {
        /* a third instance restored from the state after 3 steps must continue as the first */
        ml_params S3;
        ml_loss_inst l3;
        memset(&l3, 0, sizeof l3);
        ml_params_init(&S3, 0);
        ml_rng_seed(&rng, 3);
        int ok3 = ml_loss_inst_init(&l3, p, opt, 0, 1, r->N, &S3, "") == ML_OK && ml_params_commit(&S3, &rng) == ML_OK;
        if (!ok3) why_set(why, "%s", ml_error());
        if (ok3) memcpy(S3.data, saved, S3.total * sizeof(float));
        for (int st = 3; st < 6 && ok3; st++) {
            double e;
            ok3 = loss_eval(&l3, r, 1, 1, &e, 1, NULL, NULL, NULL, why);
            if (ok3 && e != v[0][st])
                ok3 = 0, why_set(why, "restored from the state after 3 steps, step %d gives %.9g, the original %.9g "
                                 "(state kept outside the declared tensors is lost in checkpoints)", st + 1, e, v[0][st]);
        }
        report(s, ok3, "state: checkpoint round trip", "%s", why);
        ml_loss_inst_release(&l3);
        ml_params_free(&S3);
    }
    free(saved);
done:
    for (int k = 0; k < 2; k++) ml_loss_inst_release(&li[k]), ml_params_free(&S[k]);
}

static void loss_suite(suite *s, const ml_plugin *p, const ml_optval *opt, int full) {
    char why[WHY] = "";
    const int B = 16, N = 4, C = 3;
    ml_params S;
    ml_params_init(&S, 0);
    ml_loss_inst li;
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    if (ml_loss_inst_init(&li, p, opt, 0, 1, N, &S, "") || ml_params_commit(&S, &rng)) {
        report(s, 0, "create", "%s", ml_error());
        ml_loss_inst_release(&li);
        ml_params_free(&S);
        return;
    }
    report(s, 1, "create", NULL);
    record r;
    if (rec_new(&r, B, N, C) != ML_OK) {
        report(s, 0, "record", "out of memory");
        goto end;
    }
    ml_rng_seed(&rng, 5);
    fill_uniform(&rng, r.logits, (size_t)B * N, -2, 2);
    for (int b = 0; b < B; b++) r.label[b] = b % C;
    rec_route(&r, 2);
    loss_gradcheck(s, &li, &r, 1, "");
    loss_gradcheck(s, &li, &r, 0, " (no labels)");
    size_t bn = (size_t)B * N;
    float *dl = ml_calloc(bn, sizeof(float)), *dp = ml_calloc(bn, sizeof(float));
    float *dl2 = ml_calloc(bn, sizeof(float)), *dp2 = ml_calloc(bn, sizeof(float));
    float *dg = ml_calloc(bn + 1, sizeof(float)), *dg2 = ml_calloc(bn + 1, sizeof(float));
    if (full && dl && dp && dl2 && dp2 && dg && dg2) {
        /* value without gradients equals the value with them; gradients add scale * g */
        double v1, v2, v3;
        int ok = loss_eval(&li, &r, 1, 0, &v1, 1, dl, dp, dg, why) && loss_eval(&li, &r, 1, 0, &v2, 1, NULL, NULL, NULL, why);
        for (size_t i = 0; i < bn; i++) dl2[i] = dp2[i] = dg2[i] = 1;
        ok = ok && loss_eval(&li, &r, 1, 0, &v3, 2.5f, dl2, dp2, dg2, why);
        if (ok && (v1 != v2 || v1 != v3))
            ok = 0, why_set(why, "value %.9g with gradients, %.9g without, %.9g with scale 2.5", v1, v2, v3);
        for (size_t i = 0; i < bn && ok; i++)
            if (fabsf(dl2[i] - 1 - 2.5f * dl[i]) > 1e-4f * (1 + fabsf(dl[i])) ||
                fabsf(dp2[i] - 1 - 2.5f * dp[i]) > 1e-4f * (1 + fabsf(dp[i])) ||
                (i < (size_t)r.n_disp && fabsf(dg2[i] - 1 - 2.5f * dg[i]) > 1e-4f * (1 + fabsf(dg[i]))))
                ok = 0, why_set(why, "entry %zu: gradient with scale 2.5 added to 1 is (%g, %g), expected (%g, %g) (eval "
                                "must add scale * gradient)", i, dl2[i] - 1, dp2[i] - 1, 2.5 * dl[i], 2.5 * dp[i]);
        report(s, ok, "accumulates scale * gradient; NULL gradients allowed", "%s", why);

        loss_state_checks(s, p, opt, &r);

        /* perfect balance: uniform prob, dispatch spread evenly */
        memset(r.logits, 0, bn * sizeof(float));
        rec_route(&r, 2);
        for (int t = 0; t < r.n_disp; t++) r.de[t] = (2 * r.ds[t] + t % 2) % N;
        double v;
        ok = loss_eval(&li, &r, 1, 0, &v, 1, dl, dp, dg, why);
        report(s, ok, "perfect balance: finite", "%s", why);
        if (ok) fprintf(s->out, "     value at perfect balance: %.6g\n", v);

        /* total collapse: everything on expert 0, one-hot prob, large logits */
        for (int b = 0; b < B; b++)
            for (int e = 0; e < N; e++) r.logits[(size_t)b * N + e] = e == 0 ? 30.0f : -30.0f;
        rec_route(&r, 1);
        for (size_t i = 0; i < bn; i++) r.prob[i] = (i % N) == 0 ? 1.0f : 0.0f;
        for (int t = 0; t < r.n_disp; t++) r.gate[t] = 1.0f;
        ok = loss_eval(&li, &r, 1, 0, &v, 1, dl, dp, dg, why);
        report(s, ok, "total collapse: finite", "%s", why);
        if (ok) fprintf(s->out, "     value at total collapse: %.6g\n", v);

        /* one-hot rows on varied experts, logits at +-1e4 */
        for (int b = 0; b < B; b++)
            for (int e = 0; e < N; e++) r.logits[(size_t)b * N + e] = e == (b * 7) % N ? 1e4f : -1e4f;
        rec_route(&r, 2);
        ok = loss_eval(&li, &r, 1, 0, &v, 1, dl, dp, dg, why) && loss_eval(&li, &r, 0, 0, &v, 1, dl, dp, dg, why);
        report(s, ok, "one-hot probabilities, logits +-1e4: no NaN/Inf", "%s", why);
    }
    free(dl), free(dp), free(dl2), free(dp2), free(dg), free(dg2);
    rec_free(&r);
end:
    ml_loss_inst_release(&li);
    ml_params_free(&S);
}

/* =============================================================== schedules */

/* A synthetic health record for layer l: balanced when collapsed is 0, one expert taking
   everything when it is 1. */
static void fake_health(ml_layer_health *h, double *u, int l, int N, int collapsed, int epoch) {
    memset(h, 0, sizeof *h);
    h->size = sizeof *h;
    h->layer = l;
    h->num_experts = N;
    h->epoch = epoch;
    h->samples = 1000;
    h->slots = 2000;
    for (int e = 0; e < N; e++) u[e] = collapsed ? (e == 0) : 1.0 / N;
    h->utilisation = h->importance = u;
    h->cv = collapsed ? sqrt((double)N - 1) : 0;
    h->marginal_entropy_norm = collapsed ? 0 : 1;
    h->effective_experts = collapsed ? 1 : N;
    h->slots_per_sample = 2;
    h->max_load_ratio = collapsed ? N - 1 : 0;
    h->load_balance = collapsed ? N : 1;
    h->active = collapsed ? 1 : N;
    h->dead = collapsed ? N - 1 : 0;
    h->collapsed = collapsed;
}

/* A synthetic training step's routing of one layer with N experts, B samples, top-2:
   mode 0 balanced (sample b to experts b mod N and b+1 mod N, confident); 1 collapsed (every
   sample to experts 0 and 1, the others dead, probability spread evenly); 2 undecided (top-1,
   sample b to expert b mod N, probability spread evenly: no expert holds much of it). */
static void fake_route(ml_routing_record *r, float *prob, int32_t *ds, int32_t *de, float *dg, int B, int N,
                       int mode) {
    const int collapsed = mode != 0;
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->B = B;
    r->N = N;
    r->prob = r->logits = prob;
    r->disp_sample = ds;
    r->disp_expert = de;
    r->disp_gate = dg;
    r->training = 1;
    int k = N < 2 || mode == 2 ? 1 : 2, t = 0;
    for (int b = 0; b < B; b++) {
        float *p = prob + (size_t)b * N;
        for (int e = 0; e < N; e++) p[e] = collapsed ? 1.0f / N : (N > 1 ? 0.1f / (N - 1) : 1.0f);
        for (int j = 0; j < k; j++) {
            int e = mode == 1 ? j : (b + j) % N;
            if (!collapsed && N > 1) p[e] = j == 0 ? 0.9f : p[e];
            ds[t] = b, de[t] = e, dg[t] = p[e];
            t++;
        }
    }
    r->n_disp = t;
}

static void schedule_suite(suite *s, const ml_plugin *p, const ml_optval *opt, int full) {
    (void)full;
    char why[WHY] = "";
    enum { L = 3, CAP = 1 << 12, FB = 16 };
    ml_schedule_inst si;
    ml_params S;
    ml_params_init(&S, 0);
    if (ml_schedule_inst_init(&si, p, opt, L, CAP)) {
        report(s, 0, "create", "%s", ml_error());
        ml_schedule_inst_release(&si);
        return;
    }
    report(s, 1, "create", NULL);
    int ok = 1, ne[L];
    const int configured[] = {1, 4, 64};
    for (int c = 0; c < 3 && ok; c++)
        for (int l = 0; l < L && ok; l++) {
            int n;
            if (ml_schedule_inst_initial(&si, l, configured[c], &n)) ok = 0, why_set(why, "%s", ml_error());
            else if (c == 1) ne[l] = n;
        }
    report(s, ok, "initial_experts in 1..4096", "%s", why);
    /* ABI 1.2: state tensors per layer, kept the way a run keeps them */
    ml_rng rng;
    ml_rng_seed(&rng, 7);
    int nst = ml_schedule_inst_declare_states(&si, &S, ne);
    if (nst < 0 || (nst > 0 && ml_params_commit(&S, &rng))) {
        report(s, 0, "states", "%s", ml_error());
        ok = 0;
    } else if (nst > 0) {
        report(s, 1, "states", NULL);
        fprintf(s->out, "     %d state tensors per layer\n", nst);
    }
    /* a simulated run: 300 epochs of 60000 images, a decision every 1000 images (8 steps of
       routing observed before each), with routing that collapses in epochs 100-150 and is
       undecided in epochs 200-250: health for 1.1 schedules, every step's routing for 1.2 ones
       (observe); what decide answers is carried out as a run does (removals first), so state
       rows follow the experts */
    int add[L], nrem[L], *rem[L] = {0};
    int64_t added = 0, removed = 0;
    double *u = ml_calloc((size_t)2 * L * CAP, sizeof(double));
    float *prob = ml_calloc((size_t)FB * CAP, sizeof(float)), *dg = ml_calloc((size_t)FB * 2, sizeof(float));
    int32_t *ds = ml_calloc((size_t)FB * 2, sizeof(int32_t)), *de = ml_calloc((size_t)FB * 2, sizeof(int32_t));
    int *kept = ml_calloc(CAP, sizeof(int));
    for (int l = 0; l < L; l++)
        if (!(rem[l] = ml_calloc(CAP, sizeof(int)))) ok = 0;
    ml_layer_health hc[L], hl[L];
    const ml_layer_health *pc[L], *pl[L];
    if (!u || !prob || !dg || !ds || !de || !kept) ok = 0;
    if (!ok && !why[0]) why_set(why, "out of memory");
    ml_progress pr = {sizeof pr, 0, 0, 1, L, ne, 60000, NULL, NULL};
    for (int k = 0; ok && k <= 300 * 60; k++) {
        pr.images_seen = (int64_t)k * 1000;
        pr.epoch = 1 + k / 60;
        int bad = pr.epoch >= 100 && pr.epoch <= 150;
        int mode = bad ? 1 : pr.epoch >= 200 && pr.epoch <= 250 ? 2 : 0;
        for (int st = 0; st < 8 && ok; st++) {
            pr.step = (int64_t)k * 8 + st + 1;
            for (int l = 0; l < L && ok; l++) {
                ml_routing_record r;
                fake_route(&r, prob, ds, de, dg, FB, ne[l], mode);
                if (ml_schedule_inst_observe(&si, l, pr.epoch, pr.step, &r, 0)) ok = 0, why_set(why, "%s", ml_error());
            }
        }
        for (int l = 0; l < L; l++) {
            fake_health(&hc[l], u + (size_t)l * CAP, l, ne[l], bad, pr.epoch);
            fake_health(&hl[l], u + (size_t)(L + l) * CAP, l, ne[l], bad, pr.epoch - 1);
            pc[l] = &hc[l];
            pl[l] = &hl[l];
        }
        pr.health = pc;
        pr.last_health = pr.epoch > 1 ? pl : NULL;
        if (ok && ml_schedule_inst_decide(&si, &pr, add, rem, nrem)) {
            ok = 0, why_set(why, "at %lld images: %s", (long long)pr.images_seen, ml_error());
            break;
        }
        for (int l = 0; ok && l < L; l++) {
            if (nrem[l] > 0) {
                uint8_t gone[CAP] = {0};
                for (int i = 0; i < nrem[l]; i++) gone[rem[l][i]] = 1;
                int nk = 0;
                for (int x = 0; x < ne[l]; x++)
                    if (!gone[x]) kept[nk++] = x;
                if (ml_schedule_inst_keep_rows(&si, l, kept, nk)) ok = 0, why_set(why, "%s", ml_error());
                ne[l] = nk;
                removed += nrem[l];
            }
            if (add[l] > 0) {
                ne[l] += add[l];
                added += add[l];
                if (ml_schedule_inst_grow_declare(&si, l, ne[l])) ok = 0, why_set(why, "%s", ml_error());
            }
            if (ok && (nrem[l] > 0 || add[l] > 0) && nst > 0 && ml_params_commit(&S, &rng))
                ok = 0, why_set(why, "%s", ml_error());
        }
    }
    report(s, ok, "decide never negative, never past 4096 experts, removals valid over a simulated run", "%s", why);
    if (ok)
        fprintf(s->out, "     experts per layer after 300 epochs: %d %d %d (%lld added, %lld removed)\n", ne[0], ne[1],
                ne[2], (long long)added, (long long)removed);
    free(u), free(prob), free(dg), free(ds), free(de), free(kept);
    for (int l = 0; l < L; l++) free(rem[l]);
    ml_schedule_inst_release(&si);
    ml_params_free(&S);
}

/* ================================================================= options */

/* Each option: default parses and is in range; out-of-range / foreign values rejected. */
static void option_checks(suite *s, const ml_plugin *p) {
    char name[128];
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        ml_optval v;
        snprintf(name, sizeof name, "option %s", o->name);
        if (ml_option_parse(o, o->def, 0, &v) != ML_OK) {
            report(s, 0, name, "default \"%s\": %s", o->def, ml_error());
            continue;
        }
        const char *bad[2] = {NULL, NULL};
        char b0[64], b1[64];
        if ((o->type == ML_OPT_INT || o->type == ML_OPT_FLOAT) && o->min <= o->max) {
            double step = o->type == ML_OPT_INT ? 1 : fmax(1e-6, 1e-3 * (o->max - o->min));
            if (o->type == ML_OPT_INT) {
                snprintf(b0, sizeof b0, "%.0f", o->max + fmax(step, fabs(o->max) * 1e-3));
                snprintf(b1, sizeof b1, "%.0f", o->min - fmax(step, fabs(o->min) * 1e-3));
            } else {
                snprintf(b0, sizeof b0, "%.17g", o->max + fmax(step, fabs(o->max) * 1e-3));
                snprintf(b1, sizeof b1, "%.17g", o->min - fmax(step, fabs(o->min) * 1e-3));
            }
            bad[0] = b0, bad[1] = b1;
        } else if (o->type == ML_OPT_BOOL) {
            bad[0] = "maybe";
        } else if (o->type == ML_OPT_ENUM) {
            bad[0] = "no_such_choice";
        }
        int ok = 1;
        for (int k = 0; k < 2 && ok; k++)
            if (bad[k] && ml_option_parse(o, bad[k], 0, &v) == ML_OK)
                ok = 0, report(s, 0, name, "value \"%s\" is accepted", bad[k]);
        if (ok) report(s, 1, name, NULL);
    }
}

/* Option sets to run besides the defaults: each bool flipped, each other enum choice,
   each ranged int at its minimum and maximum. */
static int option_variants(const ml_plugin *p, const ml_optval *base, ml_optval (*out)[ML_MAX_OPTIONS],
                           char (*label)[96], int cap) {
    int n = 0;
    for (int i = 0; i < p->num_options && n < cap; i++) {
        const ml_option *o = &p->options[i];
        char texts[64][64];
        int nt = 0;
        if (o->type == ML_OPT_BOOL) {
            snprintf(texts[nt++], 64, "%s", base[i].i ? "false" : "true");
        } else if (o->type == ML_OPT_ENUM) {
            const char *c = o->choices;
            while (c && nt < 64) {
                const char *bar = strchr(c, '|');
                int len = bar ? (int)(bar - c) : (int)strlen(c);
                snprintf(texts[nt], 64, "%.*s", len, c);
                if (strcmp(texts[nt], base[i].s ? base[i].s : "") != 0) nt++;
                c = bar ? bar + 1 : NULL;
            }
        } else if (o->type == ML_OPT_INT && o->min <= o->max) {
            if ((double)base[i].i != o->min) snprintf(texts[nt++], 64, "%.0f", o->min);
            if ((double)base[i].i != o->max && o->max <= 1e6) snprintf(texts[nt++], 64, "%.0f", o->max);
        }
        for (int k = 0; k < nt && n < cap; k++) {
            memcpy(out[n], base, (size_t)p->num_options * sizeof *base);
            if (ml_option_parse(o, texts[k], 0, &out[n][i]) != ML_OK) continue;
            snprintf(label[n], 96, "%s=%s: ", o->name, texts[k]);
            n++;
        }
    }
    return n;
}

int ml_plugin_conformance(const char *path, FILE *out) {
    const ml_plugin *p = ml_plugin_load(0, path);
    if (!p) {
        fprintf(out, "plugin-test: cannot load: %s\n", ml_error());
        return -1;
    }
    suite s = {out, 0, 0, ""};
    fprintf(out, "plugin-test: %s: %s plugin %s, version %s, abi %u.%u\n", ml_plugin_file(p),
            ml_plugin_kind_name((int)p->kind), p->name, p->version ? p->version : "?", (unsigned)p->abi_major,
            (unsigned)p->abi_minor);
    report(&s, 1, "load (abi, descriptor, option table)", NULL);
    static ml_optval base[ML_MAX_OPTIONS];
    static ml_optval var[MAX_VARIANTS][ML_MAX_OPTIONS];
    static char label[MAX_VARIANTS][96];
    if (ml_option_defaults(p, base) != ML_OK) {
        report(&s, 0, "option defaults", "%s", ml_error());
        goto end;
    }
    option_checks(&s, p);
    int nv = option_variants(p, base, var, label, MAX_VARIANTS);
    void (*run)(suite *, const ml_plugin *, const ml_optval *, int) =
        p->kind == ML_PLUGIN_ROUTER ? router_suite : p->kind == ML_PLUGIN_LOSS ? loss_suite : schedule_suite;
    run(&s, p, base, 1);
    for (int k = 0; k < nv; k++) {
        s.tag = label[k];
        run(&s, p, var[k], 0);
    }
    s.tag = "";
end:
    fprintf(out, "plugin-test: %d passed, %d failed\n", s.pass, s.fail);
    return s.fail;
}
