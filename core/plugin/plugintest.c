/* plugintest.c — conformance checks for router, loss and schedule plugins (plugin-test). */
#include "plugin/plugintest.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/crash.h"
#include "plugin/pluginhost.h"

#define MAXT 32        /* tensor declarations a router may make */
#define GRAD_TOL 2e-2  /* relative error of analytic vs finite-difference gradients */
#define GRAD_EPS 1e-2  /* central-difference step */
#define GRAD_MAX 96    /* entries checked per tensor */
#define WHY 512

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

/* The file named in a crash report: every plugin call below is bracketed by
   ml_crash_enter(pf(p), "<call>") and ml_crash_leave(). */
static const char *pf(const ml_plugin *p) {
    const char *f = ml_plugin_file(p);
    return f ? f : p->name;
}

/* ============================================================== router harness */

/* A stand-in for the model: keeps the router's tensors the way the host does. */
typedef struct harness {
    const ml_plugin *p;
    const ml_router_api *api;
    const ml_optval *opt;
    void *self;
    int D, N;
    int np, ns;
    ml_tensor_decl pd[MAXT], sd[MAXT];
    float *param[MAXT], *grad[MAXT], *state[MAXT];
    ml_rng init_rng; /* parameter initialisation */
    ml_rng rng;      /* the route's RNG */
    int64_t step;
    char err[ML_ERR_MAX];
} harness;

/* Buffers of one forward call, kept for the backward that follows it. */
typedef struct fwd {
    int B, N, D;
    float *x, *logits, *prob, *gate;
    int32_t *ds, *de, *sid;
    ml_route r;
} fwd;

static size_t decl_size(const ml_tensor_decl *d, int N) {
    return (size_t)ml_tensor_decl_rows(d, N) * (size_t)d->cols;
}

static void h_free(harness *h) {
    if (h->self) {
        ml_crash_enter(pf(h->p), "destroy");
        h->api->destroy(h->self);
        ml_crash_leave();
    }
    for (int i = 0; i < h->np; i++) free(h->param[i]), free(h->grad[i]);
    for (int i = 0; i < h->ns; i++) free(h->state[i]);
    memset(h, 0, sizeof *h);
}

static int h_new(harness *h, const ml_plugin *p, const ml_optval *opt, int D, int N,
                 uint64_t seed, char *why) {
    memset(h, 0, sizeof *h);
    h->p = p;
    h->api = p->api;
    h->opt = opt;
    h->D = D;
    h->N = N;
    ml_rng_seed(&h->init_rng, seed);
    ml_rng_seed(&h->rng, seed + 1);
    ml_router_init init = {sizeof init, 0, D, N, opt, seed};
    ml_crash_enter(pf(p), "create");
    h->self = h->api->create(ml_host_table(), &init, h->err);
    ml_crash_leave();
    ml_err_seal(h->err);
    if (!h->self) {
        snprintf(why, WHY, "create failed: %s", h->err[0] ? h->err : "(no message)");
        return ML_ERR;
    }
    ml_crash_enter(pf(p), "params");
    h->np = h->api->params(h->self, h->pd, MAXT);
    ml_crash_enter(pf(p), "states");
    h->ns = h->api->states(h->self, h->sd, MAXT);
    ml_crash_leave();
    if (h->np < 0 || h->np > MAXT || h->ns < 0 || h->ns > MAXT) {
        snprintf(why, WHY, "params() returned %d and states() %d (0..%d expected)", h->np,
                 h->ns, MAXT);
        h->np = h->ns = 0;
        return ML_ERR;
    }
    if (ml_tensor_decls_check(h->pd, h->np, "parameter") != ML_OK ||
        ml_tensor_decls_check(h->sd, h->ns, "state tensor") != ML_OK) {
        snprintf(why, WHY, "%s", ml_error());
        return ML_ERR;
    }
    for (int i = 0; i < h->np; i++) {
        h->param[i] = ml_calloc(decl_size(&h->pd[i], N), sizeof(float));
        h->grad[i] = ml_calloc(decl_size(&h->pd[i], N), sizeof(float));
        if (!h->param[i] || !h->grad[i]) return snprintf(why, WHY, "out of memory"), ML_ERR;
        ml_tensor_decl_init(&h->pd[i], h->param[i], 0, ml_tensor_decl_rows(&h->pd[i], N),
                            &h->init_rng);
    }
    for (int i = 0; i < h->ns; i++) {
        h->state[i] = ml_calloc(decl_size(&h->sd[i], N), sizeof(float));
        if (!h->state[i]) return snprintf(why, WHY, "out of memory"), ML_ERR;
        ml_tensor_decl_init(&h->sd[i], h->state[i], 0, ml_tensor_decl_rows(&h->sd[i], N),
                            &h->init_rng);
    }
    return ML_OK;
}

/* Grows per-expert tensors to N2 rows as the host does (old rows kept, new rows
   initialised by their declaration), then sends ML_EV_EXPERTS_ADDED. */
static int h_grow(harness *h, int N2, char *why) {
    int N1 = h->N;
    for (int k = 0; k < 2; k++) {
        int n = k ? h->ns : h->np;
        for (int i = 0; i < n; i++) {
            ml_tensor_decl *d = k ? &h->sd[i] : &h->pd[i];
            if (!d->per_expert) continue;
            float **slot = k ? &h->state[i] : &h->param[i];
            float *t = ml_calloc(decl_size(d, N2), sizeof(float));
            if (!t) return snprintf(why, WHY, "out of memory"), ML_ERR;
            memcpy(t, *slot, decl_size(d, N1) * sizeof(float));
            ml_tensor_decl_init(d, t, N1, N2, &h->init_rng);
            free(*slot);
            *slot = t;
            if (!k) {
                free(h->grad[i]);
                h->grad[i] = ml_calloc(decl_size(d, N2), sizeof(float));
                if (!h->grad[i]) return snprintf(why, WHY, "out of memory"), ML_ERR;
            }
        }
    }
    h->N = N2;
    if (!h->api->event) return ML_OK;
    ml_router_event ev = {sizeof ev, ML_EV_EXPERTS_ADDED, N2, N1, NULL, NULL,
                          (const float *const *)h->param, h->state, 1, h->step};
    ml_crash_enter(pf(h->p), "event");
    int erc = h->api->event(h->self, &ev, h->err);
    ml_crash_leave();
    ml_err_seal(h->err);
    if (erc != 0) return snprintf(why, WHY, "event EXPERTS_ADDED failed: %s", h->err), ML_ERR;
    return ML_OK;
}

static void fwd_free(fwd *f) {
    free(f->x), free(f->logits), free(f->prob), free(f->gate);
    free(f->ds), free(f->de), free(f->sid);
    memset(f, 0, sizeof *f);
}

static int fwd_new(fwd *f, int B, int N, int D) {
    memset(f, 0, sizeof *f);
    f->B = B, f->N = N, f->D = D;
    size_t bn = (size_t)B * N;
    f->x = ml_calloc((size_t)B * D, sizeof(float));
    f->logits = ml_calloc(bn, sizeof(float));
    f->prob = ml_calloc(bn, sizeof(float));
    f->gate = ml_calloc(bn, sizeof(float));
    f->ds = ml_calloc(bn, sizeof(int32_t));
    f->de = ml_calloc(bn, sizeof(int32_t));
    f->sid = ml_calloc((size_t)B, sizeof(int32_t));
    if (!f->x || !f->logits || !f->prob || !f->gate || !f->ds || !f->de || !f->sid) {
        fwd_free(f);
        return ML_ERR;
    }
    for (int b = 0; b < B; b++) f->sid[b] = b;
    return ML_OK;
}

static int h_forward(harness *h, fwd *f, int training, char *why) {
    size_t bn = (size_t)f->B * f->N;
    for (size_t i = 0; i < bn; i++) f->logits[i] = f->prob[i] = f->gate[i] = NAN;
    ml_route r = {
        .size = sizeof(ml_route), .B = f->B, .D = f->D, .N = f->N, .training = training,
        .x = f->x, .sample_id = f->sid, .param = (const float *const *)h->param,
        .grad = h->grad, .state = h->state, .rng = &h->rng, .step = h->step,
        .logits = f->logits, .prob = f->prob, .disp_sample = f->ds, .disp_expert = f->de,
        .disp_gate = f->gate, .n_disp = -1, .n_dropped = -1,
    };
    f->r = r;
    h->err[0] = 0;
    ml_crash_enter(pf(h->p), "forward");
    int frc = h->api->forward(h->self, &f->r, h->err);
    ml_crash_leave();
    ml_err_seal(h->err);
    if (frc != 0)
        return snprintf(why, WHY, "forward failed: %s", h->err[0] ? h->err : "(no message)"),
               ML_ERR;
    return ML_OK;
}

static int h_backward(harness *h, fwd *f, const float *dgate, const float *dlogits,
                      const float *dprob, float *dx, char *why) {
    ml_route_grad g = {sizeof g, dgate, dlogits, dprob, dx};
    h->err[0] = 0;
    ml_crash_enter(pf(h->p), "backward");
    int brc = h->api->backward(h->self, &f->r, &g, h->err);
    ml_crash_leave();
    ml_err_seal(h->err);
    if (brc != 0)
        return snprintf(why, WHY, "backward failed: %s", h->err[0] ? h->err : "(no message)"),
               ML_ERR;
    return ML_OK;
}

/* What the host relies on after a forward: ranges, uniqueness, finiteness, rows of 1. */
static int validate(const fwd *f, char *why) {
    const ml_route *r = &f->r;
    int B = f->B, N = f->N;
    if (r->n_disp < 0 || r->n_disp > B * N)
        return snprintf(why, WHY, "n_disp = %d, expected 0..B*N = %d", r->n_disp, B * N), 0;
    unsigned char *seen = calloc((size_t)B * N + (size_t)B, 1);
    if (!seen) return snprintf(why, WHY, "out of memory"), 0;
    unsigned char *hit = seen + (size_t)B * N;
    int ok = 1;
    for (int t = 0; t < r->n_disp && ok; t++) {
        int b = f->ds[t], e = f->de[t];
        if (b < 0 || b >= B || e < 0 || e >= N)
            ok = 0, snprintf(why, WHY, "triple %d is (sample %d, expert %d), outside (%d, %d)",
                             t, b, e, B, N);
        else if (seen[(size_t)b * N + e]++)
            ok = 0, snprintf(why, WHY, "(sample %d, expert %d) dispatched twice", b, e);
        else if (!isfinite(f->gate[t]))
            ok = 0, snprintf(why, WHY, "gate of triple %d is %g", t, f->gate[t]);
        else
            hit[b] = 1;
    }
    int dropped = 0;
    for (int b = 0; b < B; b++) dropped += !hit[b];
    if (ok && r->n_dropped != dropped)
        ok = 0, snprintf(why, WHY, "n_dropped = %d but %d samples have no triple",
                         r->n_dropped, dropped);
    for (int b = 0; b < B && ok; b++) {
        double s = 0;
        for (int e = 0; e < N && ok; e++) {
            float z = f->logits[(size_t)b * N + e], p = f->prob[(size_t)b * N + e];
            if (!isfinite(z)) ok = 0, snprintf(why, WHY, "logits[%d, %d] = %g", b, e, z);
            else if (!isfinite(p) || p < -1e-6f)
                ok = 0, snprintf(why, WHY, "prob[%d, %d] = %g", b, e, p);
            s += p;
        }
        if (ok && fabs(s - 1) > 1e-3)
            ok = 0, snprintf(why, WHY, "prob row %d sums to %.6f, not 1", b, s);
    }
    free(seen);
    return ok;
}

typedef struct snapshot {
    float *state[MAXT];
    ml_rng rng;
    int64_t step;
} snapshot;

static int snap_take(harness *h, snapshot *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < h->ns; i++) {
        size_t n = decl_size(&h->sd[i], h->N);
        s->state[i] = ml_calloc(n, sizeof(float));
        if (!s->state[i]) return ML_ERR;
        memcpy(s->state[i], h->state[i], n * sizeof(float));
    }
    s->rng = h->rng;
    s->step = h->step;
    return ML_OK;
}

static void snap_restore(harness *h, const snapshot *s) {
    for (int i = 0; i < h->ns; i++)
        memcpy(h->state[i], s->state[i], decl_size(&h->sd[i], h->N) * sizeof(float));
    h->rng = s->rng;
    h->step = s->step;
}

static void snap_free(snapshot *s) {
    for (int i = 0; i < MAXT; i++) free(s->state[i]);
}

/*
 * The functional whose gradient is checked: L = sum over triples of gate * (v_e . x_b)
 * (a linear stand-in for the experts), + sum a * prob + sum c * logits (stand-ins for
 * losses reading prob and logits). Accumulated in double.
 */
typedef struct functional {
    const float *v; /* (N, D) */
    const float *a; /* (B, N) */
    const float *c; /* (B, N) */
} functional;

static double eval_functional(const functional *fn, const fwd *f) {
    double L = 0;
    for (int t = 0; t < f->r.n_disp; t++) {
        const float *v = fn->v + (size_t)f->de[t] * f->D, *x = f->x + (size_t)f->ds[t] * f->D;
        double dot = 0;
        for (int d = 0; d < f->D; d++) dot += (double)v[d] * x[d];
        L += f->gate[t] * dot;
    }
    for (size_t i = 0; i < (size_t)f->B * f->N; i++)
        L += (double)fn->a[i] * f->prob[i] + (double)fn->c[i] * f->logits[i];
    return L;
}

/* Dispatch set as a B*N mask, to notice top-k flips under perturbation. */
static void dispatch_mask(const fwd *f, unsigned char *m) {
    memset(m, 0, (size_t)f->B * f->N);
    for (int t = 0; t < f->r.n_disp; t++) m[(size_t)f->ds[t] * f->N + f->de[t]] = 1;
}

/* Forward from the snapshot; returns the functional or NAN when the dispatch changed. */
static double fd_point(harness *h, const snapshot *s, fwd *f, const functional *fn,
                       const unsigned char *mask0, unsigned char *mask, char *why) {
    snap_restore(h, s);
    if (h_forward(h, f, 1, why) != ML_OK) return NAN;
    dispatch_mask(f, mask);
    if (memcmp(mask, mask0, (size_t)f->B * f->N) != 0) return NAN;
    return eval_functional(fn, f);
}

/* Finite-difference check of dL/dx and dL/dparam; one reported check per tensor. */
static void router_gradcheck(suite *s, harness *h, int B, uint64_t seed) {
    char why[WHY] = "", name[128];
    int N = h->N, D = h->D;
    fwd f;
    ml_rng r;
    ml_rng_seed(&r, seed);
    if (fwd_new(&f, B, N, D) != ML_OK) {
        report(s, 0, "gradient", "out of memory");
        return;
    }
    size_t bn = (size_t)B * N;
    float *v = ml_calloc((size_t)N * D, sizeof(float)), *a = ml_calloc(bn, sizeof(float));
    float *c = ml_calloc(bn, sizeof(float)), *dx = ml_calloc((size_t)B * D, sizeof(float));
    float *dgate = ml_calloc(bn, sizeof(float));
    unsigned char *mask0 = ml_calloc(bn, 1), *mask = ml_calloc(bn, 1);
    snapshot snap = {0};
    int ok = v && a && c && dx && dgate && mask0 && mask;
    if (!ok) {
        report(s, 0, "gradient", "out of memory");
        goto done;
    }
    fill_uniform(&r, f.x, (size_t)B * D, -1, 1);
    fill_uniform(&r, v, (size_t)N * D, -1, 1);
    fill_uniform(&r, a, bn, -1, 1);
    fill_uniform(&r, c, bn, -0.5f, 0.5f);
    functional fn = {v, a, c};
    if (snap_take(h, &snap) != ML_OK) {
        report(s, 0, "gradient", "out of memory");
        goto done;
    }
    if (h_forward(h, &f, 1, why) != ML_OK || !validate(&f, why)) {
        report(s, 0, "gradient", "%s", why);
        goto done;
    }
    dispatch_mask(&f, mask0);
    for (int t = 0; t < f.r.n_disp; t++) {
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)v[(size_t)f.de[t] * D + d] * f.x[(size_t)f.ds[t] * D + d];
        dgate[t] = (float)dot;
    }
    for (int i = 0; i < h->np; i++) memset(h->grad[i], 0, decl_size(&h->pd[i], N) * sizeof(float));
    if (h_backward(h, &f, dgate, c, a, dx, why) != ML_OK) {
        report(s, 0, "gradient", "%s", why);
        goto done;
    }
    /* the stand-in experts' own dependence on x, which the host would add */
    for (int t = 0; t < f.r.n_disp; t++)
        for (int d = 0; d < D; d++)
            dx[(size_t)f.ds[t] * D + d] += f.gate[t] * v[(size_t)f.de[t] * D + d];

    /* one scale for the error floor over every tensor, so tiny entries of one tensor are
       judged against the gradient's overall size */
    double scale = 0;
    for (size_t i = 0; i < (size_t)B * D; i++) scale = fmax(scale, fabs(dx[i]));
    for (int p = 0; p < h->np; p++)
        for (size_t i = 0; i < decl_size(&h->pd[p], N); i++) scale = fmax(scale, fabs(h->grad[p][i]));
    double floor_ = fmax(1e-3, 1e-2 * scale);

    for (int p = -1; p < h->np; p++) {
        float *t = p < 0 ? f.x : h->param[p];
        const float *an = p < 0 ? dx : h->grad[p];
        size_t n = p < 0 ? (size_t)B * D : decl_size(&h->pd[p], N);
        snprintf(name, sizeof name, "gradient %s", p < 0 ? "dx" : h->pd[p].name);
        size_t stride = n > GRAD_MAX ? n / GRAD_MAX : 1;
        double worst = 0;
        size_t worst_i = 0, checked = 0, skipped = 0;
        double worst_a = 0, worst_fd = 0;
        int failed = 0;
        for (size_t i = 0; i < n && !failed; i += stride) {
            float x0 = t[i];
            double g = NAN;
            for (double eps = GRAD_EPS; eps > GRAD_EPS / 200 && isnan(g); eps /= 10) {
                t[i] = (float)(x0 + eps);
                double lp = fd_point(h, &snap, &f, &fn, mask0, mask, why);
                t[i] = (float)(x0 - eps);
                double lm = fd_point(h, &snap, &f, &fn, mask0, mask, why);
                t[i] = x0;
                if (why[0]) failed = 1;
                g = (lp - lm) / ((double)(float)(x0 + eps) - (double)(float)(x0 - eps));
            }
            if (failed) break;
            if (isnan(g)) {
                skipped++;
                continue;
            }
            checked++;
            double err = fabs(an[i] - g) / fmax(floor_, fabs(an[i]) + fabs(g));
            if (!(err <= worst)) {
                worst = isnan(err) ? INFINITY : err;
                worst_i = i, worst_a = an[i], worst_fd = g;
            }
        }
        if (failed) report(s, 0, name, "%s", why);
        else if (checked == 0)
            report(s, 0, name, "the dispatch changes under every perturbation (%zu skipped)",
                   skipped);
        else if (worst > GRAD_TOL)
            report(s, 0, name, "d/d%s[%zu]: backward gives %.6g, finite differences %.6g "
                   "(relative error %.3g > %.3g; %zu entries checked)",
                   p < 0 ? "x" : h->pd[p].name, worst_i, worst_a, worst_fd, worst, GRAD_TOL,
                   checked);
        else
            report(s, 1, name, NULL);
    }
    snap_restore(h, &snap);
done:
    snap_free(&snap);
    free(v), free(a), free(c), free(dx), free(dgate), free(mask0), free(mask);
    fwd_free(&f);
}

/* Forward (training and eval) + backward with random upstream gradients; all finite. */
static int router_roundtrip(harness *h, int B, uint64_t seed, float xscale, char *why) {
    fwd f;
    if (fwd_new(&f, B, h->N, h->D) != ML_OK) return snprintf(why, WHY, "out of memory"), 0;
    ml_rng r;
    ml_rng_seed(&r, seed);
    size_t bn = (size_t)B * h->N;
    float *dg = ml_calloc(bn, sizeof(float)), *dl = ml_calloc(bn, sizeof(float));
    float *dp = ml_calloc(bn, sizeof(float)), *dx = ml_calloc((size_t)B * h->D, sizeof(float));
    int ok = dg && dl && dp && dx;
    if (!ok) snprintf(why, WHY, "out of memory");
    fill_uniform(&r, f.x, (size_t)B * h->D, -xscale, xscale);
    fill_uniform(&r, dg, bn, -1, 1);
    fill_uniform(&r, dl, bn, -1, 1);
    fill_uniform(&r, dp, bn, -1, 1);
    for (int training = 0; training < 2 && ok; training++) {
        if (h_forward(h, &f, training, why) != ML_OK || !validate(&f, why)) {
            ok = 0;
            if (strncmp(why, "forward", 7) != 0) {
                char tmp[WHY];
                snprintf(tmp, sizeof tmp, "%s forward: %s", training ? "training" : "eval", why);
                memcpy(why, tmp, WHY);
            }
        }
    }
    if (ok) {
        for (int i = 0; i < h->np; i++) memset(h->grad[i], 0, decl_size(&h->pd[i], h->N) * sizeof(float));
        if (h_backward(h, &f, dg, dl, dp, dx, why) != ML_OK) ok = 0;
        else if (!all_finite(dx, (size_t)B * h->D)) ok = 0, snprintf(why, WHY, "dx not finite");
        for (int i = 0; i < h->np && ok; i++)
            if (!all_finite(h->grad[i], decl_size(&h->pd[i], h->N)))
                ok = 0, snprintf(why, WHY, "gradient of %s not finite", h->pd[i].name);
    }
    free(dg), free(dl), free(dp), free(dx);
    fwd_free(&f);
    return ok;
}

/* Backward must add into dx and the gradients, not overwrite them. */
static void router_accumulates(suite *s, harness *h, int B, uint64_t seed) {
    char why[WHY] = "";
    fwd f;
    ml_rng r;
    ml_rng_seed(&r, seed);
    if (fwd_new(&f, B, h->N, h->D) != ML_OK) {
        report(s, 0, "backward accumulates", "out of memory");
        return;
    }
    size_t bn = (size_t)B * h->N, bd = (size_t)B * h->D;
    float *dg = ml_calloc(bn, sizeof(float)), *dx1 = ml_calloc(bd, sizeof(float));
    float *dx2 = ml_calloc(bd, sizeof(float)), *g1[MAXT] = {0};
    int ok = dg && dx1 && dx2;
    fill_uniform(&r, f.x, bd, -1, 1);
    fill_uniform(&r, dg, bn, -1, 1);
    snapshot snap;
    ok = ok && snap_take(h, &snap) == ML_OK;
    if (ok && (h_forward(h, &f, 1, why) != ML_OK)) ok = 0;
    for (int i = 0; i < h->np && ok; i++) {
        memset(h->grad[i], 0, decl_size(&h->pd[i], h->N) * sizeof(float));
    }
    if (ok && h_backward(h, &f, dg, NULL, NULL, dx1, why) != ML_OK) ok = 0;
    for (int i = 0; i < h->np && ok; i++) {
        size_t n = decl_size(&h->pd[i], h->N);
        g1[i] = ml_calloc(n, sizeof(float));
        if (!g1[i]) ok = 0;
        else memcpy(g1[i], h->grad[i], n * sizeof(float));
        for (size_t j = 0; j < n; j++) h->grad[i][j] = 1.0f;
    }
    for (size_t j = 0; j < bd; j++) dx2[j] = 1.0f;
    if (ok) {
        snap_restore(h, &snap);
        if (h_forward(h, &f, 1, why) != ML_OK || h_backward(h, &f, dg, NULL, NULL, dx2, why) != ML_OK)
            ok = 0;
    }
    for (size_t j = 0; j < bd && ok; j++)
        if (fabsf(dx2[j] - 1.0f - dx1[j]) > 1e-4f * (1 + fabsf(dx1[j])))
            ok = 0, snprintf(why, WHY, "dx[%zu]: %g on a zeroed buffer, %g added to 1 "
                             "(backward must add with +=)", j, dx1[j], dx2[j] - 1.0f);
    for (int i = 0; i < h->np && ok; i++)
        for (size_t j = 0; j < decl_size(&h->pd[i], h->N) && ok; j++)
            if (fabsf(h->grad[i][j] - 1.0f - g1[i][j]) > 1e-4f * (1 + fabsf(g1[i][j])))
                ok = 0, snprintf(why, WHY, "gradient of %s[%zu]: %g on a zeroed buffer, %g "
                                 "added to 1 (backward must add with +=)",
                                 h->pd[i].name, j, g1[i][j], h->grad[i][j] - 1.0f);
    if (ok || why[0]) report(s, ok, "backward accumulates", "%s", why);
    else report(s, 0, "backward accumulates", "out of memory");
    snap_free(&snap);
    for (int i = 0; i < h->np; i++) free(g1[i]);
    free(dg), free(dx1), free(dx2);
    fwd_free(&f);
}

/*
 * One training step as the host runs it: forward, backward with random upstream
 * gradients, AFTER_BACKWARD event (grad_mag, load). Outputs appended to trace.
 */
static int train_step(harness *h, fwd *f, float **trace, size_t *tn, char *why) {
    ml_rng r;
    ml_rng_seed(&r, 1000 + (uint64_t)h->step);
    size_t bn = (size_t)f->B * f->N, bd = (size_t)f->B * f->D;
    fill_uniform(&r, f->x, bd, -1, 1);
    float *dg = ml_calloc(bn, sizeof(float)), *dx = ml_calloc(bd, sizeof(float));
    float *mag = ml_calloc((size_t)h->N, sizeof(float)), *load = ml_calloc((size_t)h->N, sizeof(float));
    int ok = dg && dx && mag && load;
    if (!ok) snprintf(why, WHY, "out of memory");
    if (ok) fill_uniform(&r, dg, bn, -1, 1);
    /* every step starts from zero gradients, as the host's does: the AFTER_BACKWARD
       magnitudes are then this step's, which a restored instance can reproduce */
    for (int i = 0; ok && i < h->np; i++) memset(h->grad[i], 0, decl_size(&h->pd[i], h->N) * sizeof(float));
    if (ok && (h_forward(h, f, 1, why) != ML_OK || h_backward(h, f, dg, NULL, NULL, dx, why) != ML_OK))
        ok = 0;
    if (ok) {
        size_t add = 2 * bn + 3 * (size_t)f->r.n_disp + 2;
        float *t = realloc(*trace, (*tn + add) * sizeof(float));
        if (!t) ok = 0, snprintf(why, WHY, "out of memory");
        else {
            *trace = t;
            float *o = t + *tn;
            memcpy(o, f->logits, bn * sizeof(float)), o += bn;
            memcpy(o, f->prob, bn * sizeof(float)), o += bn;
            *o++ = (float)f->r.n_disp;
            *o++ = (float)f->r.n_dropped;
            for (int k = 0; k < f->r.n_disp; k++)
                *o++ = (float)f->ds[k], *o++ = (float)f->de[k], *o++ = f->gate[k];
            *tn += add;
        }
    }
    if (ok && h->api->event) {
        for (int k = 0; k < f->r.n_disp; k++) load[f->de[k]] += 1;
        for (int i = 0; i < h->np; i++) {
            if (!h->pd[i].per_expert) continue;
            for (int e = 0; e < h->N; e++)
                for (int c = 0; c < h->pd[i].cols; c++)
                    mag[e] += fabsf(h->grad[i][(size_t)e * h->pd[i].cols + c]) / h->pd[i].cols;
        }
        ml_router_event ev = {sizeof ev, ML_EV_AFTER_BACKWARD, h->N, h->N, mag, load,
                              (const float *const *)h->param, h->state, 1, h->step};
        ml_crash_enter(pf(h->p), "event");
        int erc = h->api->event(h->self, &ev, h->err);
        ml_crash_leave();
        ml_err_seal(h->err);
        if (erc != 0) ok = 0, snprintf(why, WHY, "event AFTER_BACKWARD failed: %s", h->err);
        if (ok && h->step % 3 == 2) {
            ml_router_event ee = {sizeof ee, ML_EV_EPOCH_END, h->N, h->N, NULL, NULL,
                                  (const float *const *)h->param, h->state, 1, h->step};
            ml_crash_enter(pf(h->p), "event");
            erc = h->api->event(h->self, &ee, h->err);
            ml_crash_leave();
            ml_err_seal(h->err);
            if (erc != 0) ok = 0, snprintf(why, WHY, "event EPOCH_END failed: %s", h->err);
        }
    }
    h->step++;
    free(dg), free(dx), free(mag), free(load);
    return ok;
}

static void router_determinism(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h[2];
    float *trace[2] = {NULL, NULL};
    size_t tn[2] = {0, 0};
    int ok = 1;
    fwd f[2];
    memset(f, 0, sizeof f);
    for (int k = 0; k < 2 && ok; k++) {
        if (h_new(&h[k], p, opt, 8, 4, 42, why) != ML_OK) ok = 0;
        else if (fwd_new(&f[k], 16, 4, 8) != ML_OK) ok = 0, snprintf(why, WHY, "out of memory");
        for (int st = 0; st < 3 && ok; st++) ok = train_step(&h[k], &f[k], &trace[k], &tn[k], why);
    }
    if (ok) {
        if (tn[0] != tn[1] || memcmp(trace[0], trace[1], tn[0] * sizeof(float)) != 0)
            ok = 0, snprintf(why, WHY, "two instances with seed 42 produce different outputs");
        for (int i = 0; i < h[0].np && ok; i++)
            if (memcmp(h[0].grad[i], h[1].grad[i], decl_size(&h[0].pd[i], 4) * sizeof(float)))
                ok = 0, snprintf(why, WHY, "gradients of %s differ between two instances",
                                 h[0].pd[i].name);
    }
    report(s, ok, "determinism", "%s", why);
    for (int k = 0; k < 2; k++) h_free(&h[k]), fwd_free(&f[k]), free(trace[k]);
}

/* Checkpoint: state tensors + RNG copied after 2 steps into a fresh instance must make it
   continue exactly as the original does. */
static void router_checkpoint(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness a, b;
    fwd fa, fb;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    memset(&fa, 0, sizeof fa), memset(&fb, 0, sizeof fb);
    float *ta = NULL, *tb = NULL, *junk = NULL;
    size_t na = 0, nb = 0, nj = 0;
    snapshot snap = {0};
    int ok = h_new(&a, p, opt, 8, 4, 7, why) == ML_OK && h_new(&b, p, opt, 8, 4, 7, why) == ML_OK;
    if (ok && (fwd_new(&fa, 16, 4, 8) != ML_OK || fwd_new(&fb, 16, 4, 8) != ML_OK))
        ok = 0, snprintf(why, WHY, "out of memory");
    for (int st = 0; st < 2 && ok; st++) ok = train_step(&a, &fa, &junk, &nj, why);
    if (ok && snap_take(&a, &snap) != ML_OK) ok = 0, snprintf(why, WHY, "out of memory");
    for (int st = 0; st < 4 && ok; st++) ok = train_step(&a, &fa, &ta, &na, why);
    if (ok) {
        /* b starts fresh: its parameters equal a's (same seed, no optimizer here) */
        snap_restore(&b, &snap);
        for (int st = 0; st < 4 && ok; st++) ok = train_step(&b, &fb, &tb, &nb, why);
    }
    if (ok && (na != nb || memcmp(ta, tb, na * sizeof(float)) != 0))
        ok = 0, snprintf(why, WHY, "a fresh instance given the saved state tensors and RNG "
                         "continues differently (state kept outside the declared state "
                         "tensors is lost in checkpoints)");
    report(s, ok, "checkpoint state round trip", "%s", why);
    snap_free(&snap);
    free(ta), free(tb), free(junk);
    h_free(&a), h_free(&b), fwd_free(&fa), fwd_free(&fb);
}

static void router_growth(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    int ok = h_new(&h, p, opt, 8, 4, 11, why) == ML_OK && router_roundtrip(&h, 16, 5, 1, why);
    if (ok) ok = h_grow(&h, 6, why) == ML_OK;
    if (ok) {
        ml_tensor_decl d[MAXT];
        ml_crash_enter(pf(p), "params");
        int np = h.api->params(h.self, d, MAXT);
        ml_crash_leave();
        if (np != h.np) ok = 0, snprintf(why, WHY, "params() gives %d tensors after growth, %d before", np, h.np);
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

static void router_extreme(suite *s, const ml_plugin *p, const ml_optval *opt) {
    char why[WHY] = "";
    harness h;
    fwd f;
    memset(&f, 0, sizeof f);
    int ok = h_new(&h, p, opt, 8, 4, 13, why) == ML_OK;
    if (ok && fwd_new(&f, 16, 4, 8) != ML_OK) ok = 0, snprintf(why, WHY, "out of memory");
    ml_rng r;
    ml_rng_seed(&r, 3);
    float xscale = 1;
    if (ok) {
        fill_uniform(&r, f.x, 16 * 8, -1, 1);
        ok = h_forward(&h, &f, 0, why) == ML_OK;
    }
    if (ok) {
        double m = 0;
        for (int i = 0; i < 64; i++) m = fmax(m, fabs(f.logits[i]));
        double k = 1e4 / fmax(m, 1e-6);
        for (int i = 0; i < h.np; i++)
            for (size_t j = 0; j < decl_size(&h.pd[i], 4); j++) h.param[i][j] *= (float)k;
        ok = h_forward(&h, &f, 0, why) == ML_OK;
        m = 0;
        for (int i = 0; i < 64 && ok; i++) m = fmax(m, fabs(f.logits[i]));
        if (ok && m < 5e3) xscale = (float)fmin(1e4 / fmax(m, 1e-6), 1e4); /* not linear in params */
    }
    if (ok) ok = router_roundtrip(&h, 16, 3, xscale, why);
    report(s, ok, "extreme logits (about 1e4), training and eval", "%s", why);
    fwd_free(&f);
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
        router_extreme(s, p, opt);
    }
    h_free(&h);
}

/* ================================================================== losses */

typedef struct record {
    int B, N, C, K;
    float *logits, *prob, *gate;
    int32_t *ds, *de, *label;
    int n_disp;
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

static ml_routing_record rec_view(const record *r, int labels) {
    ml_routing_record v = {sizeof v, r->B, r->N, r->logits, r->prob, r->ds, r->de, r->gate,
                           r->n_disp, labels ? r->label : NULL, labels ? r->C : 0};
    return v;
}

static const char *g_loss_file; /* the loss under test, for crash reports */

static int loss_eval(const ml_loss_api *api, void *self, const record *r, int labels,
                     double *value, float scale, float *dl, float *dp, char *why) {
    char err[ML_ERR_MAX] = "";
    ml_routing_record v = rec_view(r, labels);
    ml_crash_enter(g_loss_file, "eval");
    int rc = api->eval(self, &v, value, scale, dl, dp, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc != 0)
        return snprintf(why, WHY, "eval failed: %s", err[0] ? err : "(no message)"), 0;
    if (!isfinite(*value)) return snprintf(why, WHY, "value is %g", *value), 0;
    size_t bn = (size_t)r->B * r->N;
    if ((dl && !all_finite(dl, bn)) || (dp && !all_finite(dp, bn)))
        return snprintf(why, WHY, "gradient not finite (value %g)", *value), 0;
    return 1;
}

/* Gate of each dispatched pair, if any, so that prob perturbations carry to the gate:
   the record's gates equal prob at dispatched pairs (see rec_route). */
static float *gate_of(record *r, int b, int e) {
    for (int t = 0; t < r->n_disp; t++)
        if (r->ds[t] == b && r->de[t] == e) return &r->gate[t];
    return NULL;
}

static void loss_gradcheck(suite *s, const ml_loss_api *api, void *self, record *r, int labels,
                           const char *what) {
    char why[WHY] = "", name[96];
    size_t bn = (size_t)r->B * r->N;
    float *dl = ml_calloc(bn, sizeof(float)), *dp = ml_calloc(bn, sizeof(float));
    double v;
    if (!dl || !dp || !loss_eval(api, self, r, labels, &v, 1, dl, dp, why)) {
        report(s, 0, "gradient", "%s", why[0] ? why : "out of memory");
        free(dl), free(dp);
        return;
    }
    double scale = 0;
    for (size_t i = 0; i < bn; i++) scale = fmax(scale, fmax(fabs(dl[i]), fabs(dp[i])));
    double floor_ = fmax(1e-4, 1e-2 * scale);
    for (int which = 0; which < 2; which++) {
        float *t = which ? r->logits : r->prob, *an = which ? dl : dp;
        snprintf(name, sizeof name, "gradient wrt %s%s", which ? "logits" : "prob", what);
        double worst = 0, wa = 0, wf = 0;
        size_t wi = 0;
        int ok = 1;
        const double eps = 1e-3;
        for (size_t i = 0; i < bn && ok; i++) {
            float x0 = t[i];
            float *g = which ? NULL : gate_of(r, (int)(i / r->N), (int)(i % r->N));
            double lp, lm;
            t[i] = (float)(x0 + eps);
            if (g) *g = t[i];
            double hp = t[i];
            ok = loss_eval(api, self, r, labels, &lp, 1, NULL, NULL, why);
            t[i] = (float)(x0 - eps);
            if (g) *g = t[i];
            double hm = t[i];
            ok = ok && loss_eval(api, self, r, labels, &lm, 1, NULL, NULL, why);
            t[i] = x0;
            if (g) *g = x0;
            if (!ok) break;
            double fd = (lp - lm) / (hp - hm);
            double err = fabs(an[i] - fd) / fmax(floor_, fabs(an[i]) + fabs(fd));
            if (!(err <= worst)) worst = isnan(err) ? INFINITY : err, wi = i, wa = an[i], wf = fd;
        }
        if (!ok) report(s, 0, name, "%s", why);
        else if (worst > GRAD_TOL)
            report(s, 0, name, "d/d%s[%zu, %zu]: eval gives %.6g, finite differences %.6g "
                   "(relative error %.3g > %.3g)", which ? "logits" : "prob", wi / r->N,
                   wi % r->N, wa, wf, worst, GRAD_TOL);
        else report(s, 1, name, NULL);
    }
    free(dl), free(dp);
}

static void loss_suite(suite *s, const ml_plugin *p, const ml_optval *opt, int full) {
    const ml_loss_api *api = p->api;
    char why[WHY] = "", err[ML_ERR_MAX] = "";
    ml_loss_init init = {sizeof init, opt};
    g_loss_file = pf(p);
    ml_crash_enter(pf(p), "create");
    void *self = api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!self) {
        report(s, 0, "create", "%s", err[0] ? err : "(no message)");
        return;
    }
    report(s, 1, "create", NULL);
    const int B = 16, N = 4, C = 3;
    record r;
    if (rec_new(&r, B, N, C) != ML_OK) {
        report(s, 0, "record", "out of memory");
        ml_crash_enter(pf(p), "destroy");
        api->destroy(self);
        ml_crash_leave();
        return;
    }
    ml_rng rng;
    ml_rng_seed(&rng, 5);
    fill_uniform(&rng, r.logits, (size_t)B * N, -2, 2);
    for (int b = 0; b < B; b++) r.label[b] = b % C;
    rec_route(&r, 2);
    loss_gradcheck(s, api, self, &r, 1, "");
    loss_gradcheck(s, api, self, &r, 0, " (no labels)");
    size_t bn = (size_t)B * N;
    float *dl = ml_calloc(bn, sizeof(float)), *dp = ml_calloc(bn, sizeof(float));
    float *dl2 = ml_calloc(bn, sizeof(float)), *dp2 = ml_calloc(bn, sizeof(float));
    if (full && dl && dp && dl2 && dp2) {
        /* value without gradients equals the value with them; gradients add scale * g */
        double v1, v2, v3;
        int ok = loss_eval(api, self, &r, 1, &v1, 1, dl, dp, why) &&
                 loss_eval(api, self, &r, 1, &v2, 1, NULL, NULL, why);
        for (size_t i = 0; i < bn; i++) dl2[i] = dp2[i] = 1;
        ok = ok && loss_eval(api, self, &r, 1, &v3, 2.5f, dl2, dp2, why);
        if (ok && (v1 != v2 || v1 != v3))
            ok = 0, snprintf(why, WHY, "value %.9g with gradients, %.9g without, %.9g with "
                             "scale 2.5", v1, v2, v3);
        for (size_t i = 0; i < bn && ok; i++)
            if (fabsf(dl2[i] - 1 - 2.5f * dl[i]) > 1e-4f * (1 + fabsf(dl[i])) ||
                fabsf(dp2[i] - 1 - 2.5f * dp[i]) > 1e-4f * (1 + fabsf(dp[i])))
                ok = 0, snprintf(why, WHY, "entry %zu: gradient with scale 2.5 added to 1 is "
                                 "(%g, %g), expected (%g, %g) (eval must add scale * gradient)",
                                 i, dl2[i] - 1, dp2[i] - 1, 2.5 * dl[i], 2.5 * dp[i]);
        report(s, ok, "accumulates scale * gradient; NULL gradients allowed", "%s", why);

        /* perfect balance: uniform prob, dispatch spread evenly */
        memset(r.logits, 0, bn * sizeof(float));
        rec_route(&r, 2);
        for (int t = 0; t < r.n_disp; t++) r.de[t] = (2 * r.ds[t] + t % 2) % N;
        memset(dl, 0, bn * sizeof(float)), memset(dp, 0, bn * sizeof(float));
        double v;
        ok = loss_eval(api, self, &r, 1, &v, 1, dl, dp, why);
        report(s, ok, "perfect balance: finite", "%s", why);
        if (ok) fprintf(s->out, "     value at perfect balance: %.6g\n", v);

        /* total collapse: everything on expert 0, one-hot prob, large logits */
        for (int b = 0; b < B; b++)
            for (int e = 0; e < N; e++) r.logits[(size_t)b * N + e] = e == 0 ? 30.0f : -30.0f;
        rec_route(&r, 1);
        for (size_t i = 0; i < bn; i++) r.prob[i] = (i % N) == 0 ? 1.0f : 0.0f;
        for (int t = 0; t < r.n_disp; t++) r.gate[t] = 1.0f;
        memset(dl, 0, bn * sizeof(float)), memset(dp, 0, bn * sizeof(float));
        ok = loss_eval(api, self, &r, 1, &v, 1, dl, dp, why);
        report(s, ok, "total collapse: finite", "%s", why);
        if (ok) fprintf(s->out, "     value at total collapse: %.6g\n", v);

        /* one-hot rows on varied experts, logits at +-1e4 */
        for (int b = 0; b < B; b++)
            for (int e = 0; e < N; e++)
                r.logits[(size_t)b * N + e] = e == (b * 7) % N ? 1e4f : -1e4f;
        rec_route(&r, 2);
        memset(dl, 0, bn * sizeof(float)), memset(dp, 0, bn * sizeof(float));
        ok = loss_eval(api, self, &r, 1, &v, 1, dl, dp, why) &&
             loss_eval(api, self, &r, 0, &v, 1, dl, dp, why);
        report(s, ok, "one-hot probabilities, logits +-1e4: no NaN/Inf", "%s", why);
    }
    free(dl), free(dp), free(dl2), free(dp2);
    rec_free(&r);
    ml_crash_enter(pf(p), "destroy");
    api->destroy(self);
    ml_crash_leave();
}

/* =============================================================== schedules */

static void schedule_suite(suite *s, const ml_plugin *p, const ml_optval *opt, int full) {
    (void)full;
    const ml_schedule_api *api = p->api;
    char why[WHY] = "", err[ML_ERR_MAX] = "";
    enum { L = 3 };
    ml_schedule_init init = {sizeof init, L, opt};
    ml_crash_enter(pf(p), "create");
    void *self = api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!self) {
        report(s, 0, "create", "%s", err[0] ? err : "(no message)");
        return;
    }
    report(s, 1, "create", NULL);
    int ok = 1, ne[L];
    const int configured[] = {1, 4, 64};
    for (int c = 0; c < 3 && ok; c++)
        for (int l = 0; l < L && ok; l++) {
            ml_crash_enter(pf(p), "initial_experts");
            int n = api->initial_experts(self, l, configured[c]);
            ml_crash_leave();
            if (n < 1) ok = 0, snprintf(why, WHY, "initial_experts(layer %d, configured %d) = %d",
                                        l, configured[c], n);
            if (c == 1) ne[l] = n;
        }
    report(s, ok, "initial_experts >= 1", "%s", why);
    /* a simulated run: 300 epochs of 60000 images, a decision every 1000 images */
    int add[L + 1];
    ml_progress pr = {sizeof pr, 0, 0, 1, L, ne, 60000};
    for (int k = 0; ok && k <= 300 * 60; k++) {
        pr.images_seen = (int64_t)k * 1000;
        pr.step = k * 8;
        pr.epoch = 1 + k / 60;
        for (int l = 0; l < L; l++) add[l] = 0;
        add[L] = -777;
        err[0] = 0;
        ml_crash_enter(pf(p), "decide");
        int drc = api->decide(self, &pr, add, err);
        ml_crash_leave();
        ml_err_seal(err);
        if (drc != 0)
            ok = 0, snprintf(why, WHY, "decide failed at %lld images: %s",
                             (long long)pr.images_seen, err[0] ? err : "(no message)");
        else if (add[L] != -777)
            ok = 0, snprintf(why, WHY, "decide wrote past add[num_layers - 1]");
        for (int l = 0; l < L && ok; l++) {
            if (add[l] < 0 || add[l] > 1 << 20)
                ok = 0, snprintf(why, WHY, "decide at %lld images: add[%d] = %d",
                                 (long long)pr.images_seen, l, add[l]);
            else if (ne[l] + add[l] > 1 << 20)
                ok = 0, snprintf(why, WHY, "layer %d grows past 2^20 experts", l);
            else
                ne[l] += add[l];
        }
    }
    report(s, ok, "decide never negative over a simulated run", "%s", why);
    if (ok) fprintf(s->out, "     experts per layer after 300 epochs: %d %d %d\n", ne[0], ne[1], ne[2]);
    ml_crash_enter(pf(p), "destroy");
    api->destroy(self);
    ml_crash_leave();
}

/* ================================================================= options */

/* Each option: default parses and is in range; out-of-range / foreign values rejected. */
static void option_checks(suite *s, const ml_plugin *p) {
    char name[128];
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        ml_optval v;
        snprintf(name, sizeof name, "option %s", o->name);
        if (ml_option_parse(o, o->def, &v) != ML_OK) {
            report(s, 0, name, "default \"%s\": %s", o->def, ml_error());
            continue;
        }
        const char *bad[2] = {NULL, NULL};
        char b0[64], b1[64];
        if ((o->type == ML_OPT_INT || o->type == ML_OPT_FLOAT) && o->min <= o->max) {
            double step = o->type == ML_OPT_INT ? 1 : fmax(1e-6, 1e-3 * (o->max - o->min));
            snprintf(b0, sizeof b0, "%.17g", o->max + fmax(step, fabs(o->max) * 1e-3));
            snprintf(b1, sizeof b1, "%.17g", o->min - fmax(step, fabs(o->min) * 1e-3));
            bad[0] = b0, bad[1] = b1;
        } else if (o->type == ML_OPT_BOOL) {
            bad[0] = "maybe";
        } else if (o->type == ML_OPT_ENUM) {
            bad[0] = "no_such_choice";
        }
        int ok = 1;
        for (int k = 0; k < 2 && ok; k++)
            if (bad[k] && ml_option_parse(o, bad[k], &v) == ML_OK)
                ok = 0, report(s, 0, name, "value \"%s\" is accepted", bad[k]);
        if (ok) report(s, 1, name, NULL);
    }
}

/* Option sets to run besides the defaults: each bool flipped, each other enum choice,
   each ranged int at its minimum and maximum. */
static int option_variants(const ml_plugin *p, ml_optval *base, ml_optval (*out)[16],
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
            if (ml_option_parse(o, texts[k], &out[n][i]) != ML_OK) continue;
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
    fprintf(out, "plugin-test: %s: %s plugin %s, version %s\n", ml_plugin_file(p),
            ml_plugin_kind_name((int)p->kind), p->name, p->version ? p->version : "?");
    report(&s, 1, "load (abi, descriptor, option table)", NULL);
    if (p->num_options > 16) {
        report(&s, 0, "options", "%d options; plugin-test handles up to 16", p->num_options);
        goto end;
    }
    ml_optval base[16];
    if (ml_option_defaults(p, base) != ML_OK) {
        report(&s, 0, "option defaults", "%s", ml_error());
        goto end;
    }
    option_checks(&s, p);
    ml_optval var[8][16];
    char label[8][96];
    int nv = option_variants(p, base, var, label, 8);
    void (*run)(suite *, const ml_plugin *, const ml_optval *, int) =
        p->kind == ML_PLUGIN_ROUTER ? router_suite
        : p->kind == ML_PLUGIN_LOSS ? loss_suite : schedule_suite;
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
