/* router_host.c — one hosted router plugin instance (router_host.h). */
#include "plugin/router_host.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crash.h"
#include "plugin/loader.h"
#include "plugin/options.h"

#define PROB_TOL 1e-6f /* a probability may stray this far outside [0, 1] by rounding */
#define ROW_TOL 1e-3   /* |sum of a prob row - 1| */

/* "router 'x' (file): <call> (layer L): <what>"; returns ML_ERR. */
static int rerr(const ml_router_inst *ri, const char *call, const char *fmt, ...) ML_PRINTF(3, 4);
static int rerr(const ml_router_inst *ri, const char *call, const char *fmt, ...) {
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ml_errorf("router '%s' (%s): %s (layer %d): %s", ri->plugin->name, ri->file, call, ri->layer + 1,
                     what);
}

/* ---------------------------------------------------------------------- metrics */

static int bad_metric_name(const char *s) {
    if (!s) return 1;
    size_t n = strlen(s);
    if (n < 1 || n >= ML_METRIC_NAME_MAX) return 1;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 1;
    return 0;
}

static void metric_cb(void *ctx, const char *name, double value) {
    ml_router_inst *ri = ctx;
    if (ri->metric_err[0]) return;
    if (bad_metric_name(name)) {
        snprintf(ri->metric_err, sizeof ri->metric_err,
                 "metric name \"%.40s\" must be 1..%d characters of [a-z0-9_]", name ? name : "(null)",
                 ML_METRIC_NAME_MAX - 1);
        return;
    }
    ml_router_metric *m = NULL;
    for (int i = 0; i < ri->n_metrics && !m; i++)
        if (strcmp(ri->metric[i].name, name) == 0) m = &ri->metric[i];
    if (!m) {
        if (ri->n_metrics == ML_ROUTER_MAX_METRICS) {
            snprintf(ri->metric_err, sizeof ri->metric_err, "more than %d metric names (\"%s\")",
                     ML_ROUTER_MAX_METRICS, name);
            return;
        }
        m = &ri->metric[ri->n_metrics++];
        memset(m, 0, sizeof *m);
        snprintf(m->name, sizeof m->name, "%s", name);
    }
    int w = ri->metric_window;
    if (w == ML_METRIC_EPOCH) m->sum[w] = value;
    else m->sum[w] += value;
    m->count[w]++;
}

/* Starts a call that may report metrics into window w. */
static void metrics_arm(ml_router_inst *ri, int w) {
    ri->metric_window = w;
    ri->metric_err[0] = 0;
}

int ml_router_inst_metrics(const ml_router_inst *ri, int window, const char **names, double *values, int cap) {
    int n = 0;
    for (int i = 0; i < ri->n_metrics && n < cap; i++) {
        const ml_router_metric *m = &ri->metric[i];
        if (!m->count[window]) continue;
        names[n] = m->name;
        values[n] = window == ML_METRIC_EPOCH ? m->sum[window] : m->sum[window] / (double)m->count[window];
        n++;
    }
    return n;
}

char *ml_router_inst_metrics_to_text(const ml_router_inst *ri, int window) {
    size_t cap = 8 + (size_t)ri->n_metrics * (ML_METRIC_NAME_MAX + 64), len = 0;
    char *t = ml_calloc(cap, 1);
    if (!t) return NULL;
    for (int i = 0; i < ri->n_metrics; i++) {
        const ml_router_metric *m = &ri->metric[i];
        if (!m->count[window]) continue;
        len += (size_t)snprintf(t + len, cap - len, "%s%s=%a:%lld", len ? ";" : "", m->name, m->sum[window],
                                (long long)m->count[window]);
    }
    return t;
}

int ml_router_inst_metrics_from_text(ml_router_inst *ri, int window, const char *text) {
    ml_router_inst_metrics_reset(ri, window);
    for (const char *p = text; p && *p;) {
        const char *end = strchr(p, ';'), *eq = strchr(p, '=');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char name[ML_METRIC_NAME_MAX];
        double sum;
        long long count;
        int n = 0;
        if (!eq || (size_t)(eq - p) >= len || (size_t)(eq - p) >= sizeof name)
            return ml_errorf("router metrics: '%.*s' is not name=sum:count", (int)(len < 60 ? len : 60), p);
        memcpy(name, p, (size_t)(eq - p));
        name[eq - p] = 0;
        if (bad_metric_name(name) || sscanf(eq + 1, "%la:%lld%n", &sum, &count, &n) != 2 ||
            (size_t)(eq + 1 - p) + (size_t)n != len || count < 1)
            return ml_errorf("router metrics: '%.*s' is not name=sum:count", (int)(len < 60 ? len : 60), p);
        int saved = ri->metric_window;
        ri->metric_window = window;
        ri->metric_err[0] = 0;
        metric_cb(ri, name, 0); /* finds or adds the slot */
        ri->metric_window = saved;
        if (ri->metric_err[0]) return ml_errorf("router metrics: %s", ri->metric_err);
        for (int i = 0; i < ri->n_metrics; i++)
            if (!strcmp(ri->metric[i].name, name)) ri->metric[i].sum[window] = sum, ri->metric[i].count[window] = count;
        p = end ? end + 1 : NULL;
    }
    return ML_OK;
}

void ml_router_inst_metrics_reset(ml_router_inst *ri, int window) {
    for (int i = 0; i < ri->n_metrics; i++) ri->metric[i].sum[window] = 0, ri->metric[i].count[window] = 0;
}

/* ------------------------------------------------------------------- lifecycle */

static void free_buffers(ml_router_inst *ri) {
    void *b[] = {ri->logits, ri->prob, ri->disp_sample, ri->disp_expert, ri->disp_gate, ri->per_expert,
                 ri->hits, ri->pairs};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) free(b[i]);
    ri->logits = ri->prob = ri->disp_gate = NULL;
    ri->disp_sample = ri->disp_expert = ri->per_expert = ri->hits = NULL;
    ri->pairs = NULL;
    ri->cap_B = ri->cap_N = 0;
    ri->valid = 0;
    ri->B = ri->n_disp = ri->n_dropped = 0;
}

int ml_router_inst_init(ml_router_inst *ri, const ml_plugin *p, const ml_optval *opt, int layer, int D, int N,
                        uint64_t create_seed, uint64_t rng_seed, ml_params *P, ml_params *S, const char *prefix) {
    memset(ri, 0, sizeof *ri);
    ri->plugin = p;
    ri->api = p->api;
    ri->file = ml_plugin_file(p) ? ml_plugin_file(p) : p->name;
    ri->layer = layer;
    ri->D = D;
    ri->N = N;
    if ((int)p->kind != ML_PLUGIN_ROUTER)
        return ml_errorf("plugin '%s' (%s) is a %s plugin, expected a router", p->name, ri->file,
                         ml_plugin_kind_name((int)p->kind));
    if (D < 1 || N < 1) return rerr(ri, "create", "dim %d, experts %d: both must be >= 1", D, N);
    if (ml_optvals_resolve(p, opt, ri->opt, &ri->opt_packed)) return ML_ERR;
    ml_rng_seed(&ri->rng, rng_seed);
    ml_router_init init = {sizeof init, layer, D, N, ri->opt_packed, create_seed};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ri->file, "create");
    ri->self = ri->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!ri->self) return rerr(ri, "create", "%s", err[0] ? err : "failed (no message)");
    ml_tensor_decl d[ML_MAX_TENSORS];
    int np = ml_tensor_decls_read(p, "params", ri->api->params, ri->self, d);
    if (np < 0 || ml_tensor_set_declare(&ri->param, P, prefix, d, np, N)) return ML_ERR;
    int ns = ml_tensor_decls_read(p, "states", ri->api->states, ri->self, d);
    if (ns < 0 || ml_tensor_set_declare(&ri->state, S, prefix, d, ns, N)) return ML_ERR;
    return ML_OK;
}

void ml_router_inst_release(ml_router_inst *ri) {
    if (!ri) return;
    if (ri->self) {
        ml_crash_enter(ri->file, "destroy");
        ri->api->destroy(ri->self);
        ml_crash_leave();
        ri->self = NULL;
    }
    free_buffers(ri);
    free(ri->opt_packed);
    ri->opt_packed = NULL;
}

static int reserve(ml_router_inst *ri, int B) {
    if (B <= ri->cap_B && ri->N <= ri->cap_N) return ML_OK;
    if (B < ri->cap_B) B = ri->cap_B;
    /* the ABI counts dispatch triples in an int32 (ml_route.n_disp), at most B*N of them */
    if ((int64_t)B * ri->N > INT32_MAX)
        return ml_errorf("moe layer %d: batch of %d samples x %d experts = %lld routing slots, more than "
                         "2^31-1 (lower train.batch_size or the number of experts)",
                         ri->layer + 1, B, ri->N, (long long)B * ri->N);
    free_buffers(ri);
    size_t BN = (size_t)B * ri->N;
    ri->logits = ml_alloc_floats(BN);
    ri->prob = ml_alloc_floats(BN);
    ri->disp_gate = ml_alloc_floats(BN);
    ri->disp_sample = ml_calloc(BN, sizeof(int32_t));
    ri->disp_expert = ml_calloc(BN, sizeof(int32_t));
    ri->per_expert = ml_calloc((size_t)ri->N, sizeof(int32_t));
    ri->hits = ml_calloc((size_t)B, sizeof(int32_t));
    ri->pairs = ml_calloc((BN + 63) / 64, sizeof(uint64_t));
    if (!ri->logits || !ri->prob || !ri->disp_gate || !ri->disp_sample || !ri->disp_expert || !ri->per_expert ||
        !ri->hits || !ri->pairs) {
        free_buffers(ri);
        return ml_errorf("moe layer %d: out of memory for a batch of %d with %d experts", ri->layer + 1, B, ri->N);
    }
    ri->cap_B = B;
    ri->cap_N = ri->N;
    return ML_OK;
}

static void bind(ml_router_inst *ri) {
    ml_tensor_set_bind(&ri->param);
    ml_tensor_set_bind(&ri->state);
}

static void fill_route(ml_router_inst *ri, ml_route *r) {
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->B = ri->B;
    r->D = ri->D;
    r->N = ri->N;
    r->training = ri->training;
    r->x = ri->x;
    r->sample_id = ri->sample_id;
    r->param = (const float *const *)ri->param.data;
    r->grad = ri->param.grad;
    r->state = ri->state.data;
    r->rng = &ri->rng;
    r->step = ri->step;
    r->logits = ri->logits;
    r->prob = ri->prob;
    r->disp_sample = ri->disp_sample;
    r->disp_expert = ri->disp_expert;
    r->disp_gate = ri->disp_gate;
    r->n_disp = ri->n_disp;
    r->n_dropped = ri->n_dropped;
    r->layer = ri->layer;
    r->metric = metric_cb;
    r->metric_ctx = ri;
}

/* The host's loops over the B x N outputs of a forward (the NaN fill, the row checks) run on
   the OpenMP threads from this many elements on: 64 samples x 64 experts. */
#define ROWS_PAR_MIN 4096

/* 1 when row p, z (n) is good: every p in [0, 1] (within PROB_TOL), every z finite, the p
   summing to 1 within ROW_TOL; *sum (may be NULL) receives the sum. Without branches (a flag
   and sums of 8 lanes in double). */
static int row_ok(const float *p, const float *z, int n, double *sum) {
    double s8[8] = {0};
    int bad = 0;
    for (int e0 = 0; e0 < n; e0 += 8)
        for (int l = 0; l < 8 && e0 + l < n; l++) {
            const float pe = p[e0 + l];
            uint32_t u;
            memcpy(&u, &z[e0 + l], sizeof u);
            bad |= !(pe >= -PROB_TOL && pe <= 1 + PROB_TOL) | ((u & 0x7f800000u) == 0x7f800000u);
            s8[l] += pe;
        }
    const double s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
    if (sum) *sum = s;
    return !bad && !(fabs(s - 1) > ROW_TOL);
}

/*
 * Everything the host reads of a forward, checked in one pass before any of it is used
 * (router_host.h lists the rules). Counts triples per expert and per sample on the way.
 */
static int check_route(ml_router_inst *ri, const ml_route *r) {
    const int B = ri->B, N = ri->N, K = r->n_disp;
    if (K < 0 || K > B * N) return rerr(ri, "forward", "n_disp = %d, expected 0..%d (B*N)", K, B * N);
    memset(ri->per_expert, 0, (size_t)N * sizeof(int32_t));
    memset(ri->hits, 0, (size_t)B * sizeof(int32_t));
    memset(ri->pairs, 0, ((size_t)B * N + 63) / 64 * sizeof(uint64_t));
    for (int t = 0; t < K; t++) {
        int b = ri->disp_sample[t], e = ri->disp_expert[t];
        float g = ri->disp_gate[t];
        int why = 0; /* 1 sample, 2 expert, 3 gate, 4 duplicate */
        if (b < 0 || b >= B) why = 1;
        else if (e < 0 || e >= N) why = 2;
        else if (!(g >= 0) || !isfinite(g)) why = 3;
        else {
            size_t bit = (size_t)b * N + e;
            uint64_t mask = (uint64_t)1 << (bit & 63);
            if (ri->pairs[bit >> 6] & mask) why = 4;
            ri->pairs[bit >> 6] |= mask;
        }
        if (why) {
            char bad[96];
            if (why == 1) snprintf(bad, sizeof bad, "sample must be in 0..%d", B - 1);
            else if (why == 2) snprintf(bad, sizeof bad, "expert must be in 0..%d", N - 1);
            else if (why == 3) snprintf(bad, sizeof bad, "gate must be finite and >= 0");
            else snprintf(bad, sizeof bad, "the pair (sample %d, expert %d) appears twice", b, e);
            return rerr(ri, "forward", "dispatch[%d] = (sample %d, expert %d, gate %g): %s", t, b, e, (double)g,
                        bad);
        }
        ri->per_expert[e]++;
        ri->hits[b]++;
    }
    if (r->n_dropped < 0 || r->n_dropped > B)
        return rerr(ri, "forward", "n_dropped = %d, expected 0..%d (B)", r->n_dropped, B);
    int dropped = 0;
    for (int b = 0; b < B; b++) dropped += !ri->hits[b];
    if (r->n_dropped != dropped)
        return rerr(ri, "forward", "n_dropped = %d, but %d of the %d samples have no dispatch triple", r->n_dropped,
                    dropped, B);
    /* the rows on the threads (many experts: 16k elements at 64 x 256); the first bad row,
       the least index, is reported as a row-by-row pass would */
    int first = B;
#pragma omp parallel for schedule(static) reduction(min : first) if ((size_t)B * N >= ROWS_PAR_MIN)
    for (int b = 0; b < B; b++)
        if (!row_ok(ri->prob + (size_t)b * N, ri->logits + (size_t)b * N, N, NULL)) first = b < first ? b : first;
    if (first == B) return ML_OK;
    const float *p = ri->prob + (size_t)first * N, *z = ri->logits + (size_t)first * N;
    double s;
    for (int e = 0; e < N; e++) {
        if (!(p[e] >= -PROB_TOL && p[e] <= 1 + PROB_TOL))
            return rerr(ri, "forward", "prob[%d, %d] = %g: must be finite and in [0, 1]", first, e, (double)p[e]);
        if (!isfinite(z[e])) return rerr(ri, "forward", "logits[%d, %d] = %g: must be finite", first, e, (double)z[e]);
    }
    row_ok(p, z, N, &s);
    return rerr(ri, "forward", "prob row %d sums to %.6g, expected 1", first, s);
}

/* ----------------------------------------------------------------------- calls */

int ml_router_inst_forward(ml_router_inst *ri, const float *x, int B, int training, const int32_t *sample_id) {
    ri->valid = 0;
    if (B < 1) return rerr(ri, "forward", "batch of %d samples, expected >= 1", B);
    if (reserve(ri, B)) return ML_ERR;
    ri->B = B;
    ri->x = x;
    ri->training = training ? 1 : 0;
    ri->sample_id = sample_id;
    ri->n_disp = ri->n_dropped = 0;
    /* stale values must never pass for the plugin's: it writes every output */
    size_t BN = (size_t)B * ri->N;
    float *lg = ri->logits, *pr = ri->prob;
#pragma omp parallel if (BN >= ROWS_PAR_MIN)
    {
#pragma omp for simd schedule(static) nowait
        for (size_t i = 0; i < BN; i++) lg[i] = NAN; /* two loops: one store each, vectorised */
#pragma omp for simd schedule(static)
        for (size_t i = 0; i < BN; i++) pr[i] = NAN;
    }
    bind(ri);
    ml_route r;
    fill_route(ri, &r);
    r.n_disp = r.n_dropped = -1;
    char err[ML_ERR_MAX] = "";
    metrics_arm(ri, training ? ML_METRIC_TRAIN : ML_METRIC_EVAL);
    ml_crash_enter(ri->file, "forward");
    int rc = ri->api->forward(ri->self, &r, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc) return rerr(ri, "forward", "%s", err[0] ? err : "failed (no message)");
    if (ri->metric_err[0]) return rerr(ri, "forward", "%s", ri->metric_err);
    if (check_route(ri, &r)) return ML_ERR;
    ri->n_disp = r.n_disp;
    ri->n_dropped = r.n_dropped;
    ri->valid = 1;
    return ML_OK;
}

int ml_router_inst_backward(ml_router_inst *ri, const float *dgate, const float *dlogits, const float *dprob,
                            float *dx) {
    if (!ri->valid) return rerr(ri, "backward", "no successful forward to take the gradient of");
    bind(ri);
    ml_route r;
    fill_route(ri, &r);
    ml_route_grad g = {sizeof g, dgate, dlogits, dprob, dx};
    char err[ML_ERR_MAX] = "";
    metrics_arm(ri, ri->training ? ML_METRIC_TRAIN : ML_METRIC_EVAL);
    ml_crash_enter(ri->file, "backward");
    int rc = ri->api->backward(ri->self, &r, &g, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc) return rerr(ri, "backward", "%s", err[0] ? err : "failed (no message)");
    return ML_OK;
}

/* Sends one event; OK when the plugin has no event function. */
static int send(ml_router_inst *ri, ml_router_event *ev, const char *what) {
    if (!ri->api->event) return ML_OK;
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ri->file, "event");
    int rc = ri->api->event(ri->self, ev, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc) return rerr(ri, what, "%s", err[0] ? err : "failed (no message)");
    if (ri->metric_err[0]) return rerr(ri, what, "%s", ri->metric_err);
    return ML_OK;
}

static void fill_event(ml_router_inst *ri, ml_router_event *ev, int kind) {
    memset(ev, 0, sizeof *ev);
    ev->size = sizeof *ev;
    ev->kind = kind;
    ev->num_experts = ri->N;
    ev->old_num_experts = ri->N;
    ev->param = (const float *const *)ri->param.data;
    ev->state = ri->state.data;
    ev->epoch = ri->epoch;
    ev->step = ri->step;
    ev->opt = ri->opt_packed;
    ev->metric = metric_cb;
    ev->metric_ctx = ri;
}

int ml_router_inst_after_backward(ml_router_inst *ri, const float *grad_mag, const float *load) {
    ri->step++;
    bind(ri);
    ml_router_event ev;
    fill_event(ri, &ev, ML_EV_AFTER_BACKWARD);
    ev.grad_mag = grad_mag;
    ev.load = load;
    metrics_arm(ri, ML_METRIC_TRAIN);
    return send(ri, &ev, "after-backward event");
}

int ml_router_inst_epoch_end(ml_router_inst *ri, int epoch) {
    ri->epoch = epoch;
    bind(ri);
    ml_router_event ev;
    fill_event(ri, &ev, ML_EV_EPOCH_END);
    metrics_arm(ri, ML_METRIC_EPOCH);
    return send(ri, &ev, "epoch-end event");
}

int ml_router_inst_grow_declare(ml_router_inst *ri, int n) {
    if (n <= 0) return ML_OK;
    free_buffers(ri); /* re-sized at the next forward */
    ri->N += n;
    if (ml_tensor_set_grow(&ri->param, ri->N) || ml_tensor_set_grow(&ri->state, ri->N)) return ML_ERR;
    return ML_OK;
}

int ml_router_inst_grow_finish(ml_router_inst *ri, int old_n) {
    bind(ri);
    ml_router_event ev;
    fill_event(ri, &ev, ML_EV_EXPERTS_ADDED);
    ev.old_num_experts = old_n;
    metrics_arm(ri, ML_METRIC_EPOCH);
    return send(ri, &ev, "experts-added event");
}

int ml_router_inst_remove_declare(ml_router_inst *ri, const int *kept, int nkeep) {
    if (nkeep < 1 || nkeep > ri->N) return rerr(ri, "remove experts", "keep %d of %d experts", nkeep, ri->N);
    free_buffers(ri); /* re-sized at the next forward */
    if (ml_tensor_set_keep_rows(&ri->param, kept, nkeep) || ml_tensor_set_keep_rows(&ri->state, kept, nkeep))
        return ML_ERR;
    ri->N = nkeep;
    return ML_OK;
}

int ml_router_inst_remove_finish(ml_router_inst *ri, const int *kept, int old_n) {
    if (ri->plugin->abi_minor < 2) return ML_OK; /* its declared tensors are compacted: all it can know */
    int32_t *k32 = ml_calloc((size_t)ri->N, sizeof *k32);
    if (!k32) return ML_ERR;
    for (int j = 0; j < ri->N; j++) k32[j] = kept[j];
    bind(ri);
    ml_router_event ev;
    fill_event(ri, &ev, ML_EV_EXPERTS_REMOVED);
    ev.old_num_experts = old_n;
    ev.kept = k32;
    metrics_arm(ri, ML_METRIC_EPOCH);
    int rc = send(ri, &ev, "experts-removed event");
    free(k32);
    return rc;
}

int ml_router_inst_set_options(ml_router_inst *ri, const ml_optval *opt) {
    const ml_plugin *p = ri->plugin;
    uint8_t changed[ML_MAX_OPTIONS] = {0};
    int any = 0;
    for (int i = 0; i < p->num_options; i++) {
        const ml_optval *a = &ri->opt[i], *b = &opt[i];
        changed[i] = a->i != b->i || !(a->f == b->f || (isnan(a->f) && isnan(b->f)));
        if (!changed[i]) continue;
        any = 1;
        if (!(p->options[i].flags & ML_OPTF_RUNTIME))
            return rerr(ri, "set", "option '%s' cannot change while the router runs (the plugin does not flag it "
                        "ML_OPTF_RUNTIME)%s", p->options[i].name,
                        p->abi_minor < 1 ? "; the plugin was built against ABI 1.0, which has no run-time options" : "");
    }
    if (!any) return ML_OK;
    if (!ri->api->event)
        return rerr(ri, "set", "the plugin flags options ML_OPTF_RUNTIME but has no event function to be told");
    void *packed = ml_optvals_pack(p, opt);
    if (!packed) return ML_ERR;
    bind(ri);
    ml_router_event ev;
    fill_event(ri, &ev, ML_EV_OPTIONS_CHANGED);
    ev.opt = packed;
    ev.changed = changed;
    metrics_arm(ri, ML_METRIC_EPOCH);
    if (send(ri, &ev, "options-changed event")) {
        free(packed);
        return ML_ERR;
    }
    free(ri->opt_packed);
    ri->opt_packed = packed;
    memcpy(ri->opt, opt, (size_t)p->num_options * sizeof *opt);
    ri->valid = 0; /* a backward of the last forward would mix the old options with the new */
    return ML_OK;
}

/* -------------------------------------------------------------------- readers */

void ml_router_inst_record(const ml_router_inst *ri, ml_routing_record *r) {
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->B = ri->valid ? ri->B : 0;
    r->N = ri->N;
    r->logits = ri->logits;
    r->prob = ri->prob;
    r->disp_sample = ri->disp_sample;
    r->disp_expert = ri->disp_expert;
    r->disp_gate = ri->disp_gate;
    r->n_disp = ri->valid ? ri->n_disp : 0;
    r->layer = ri->layer;
    r->training = ri->training;
    r->step = ri->step;
}

int ml_router_inst_reported_state(const ml_router_inst *ri, const char **names, const float **values, int cap) {
    int n = 0;
    for (int i = 0; i < ri->state.n && n < cap; i++) {
        const ml_tensor_decl *d = &ri->state.decl[i];
        if (d->report && d->per_expert && d->cols == 1) {
            names[n] = d->name;
            values[n] = ml_params_data(ri->state.blk, ri->state.handle[i]);
            n++;
        }
    }
    return n;
}
