/*
 * crash_router.c — test plugin: a valid top-1 softmax router (as good_router) that can be
 * told to crash, for the crash reports of core/base/crash.c:
 *   crash: none | create | forward | backward | kill
 *   how:   segv | abort | fpe | stack   (kill: SIGKILL itself, as `kill -9` would)
 *   after: forward calls that succeed before `forward`/`kill` strikes (0: the first one)
 * MOELAB_TEST_CRASH_LOAD=1 in the environment makes its constructor crash (SIGSEGV) while
 * the host is inside dlopen.
 */
#define _POSIX_C_SOURCE 200809L /* kill() under -std=c11 */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "moelab/plugin.h"

enum { C_NONE, C_CREATE, C_FORWARD, C_BACKWARD, C_KILL };
enum { H_SEGV, H_ABORT, H_FPE, H_STACK };

typedef struct rt {
    const ml_host *host;
    int dim, crash, how;
    long after, calls;
} rt;

static int *volatile g_null;

/* the crash itself: a real store through NULL; UBSan (make asan) must not report it first */
#if defined(__GNUC__)
__attribute__((no_sanitize_undefined))
#endif
static void store_null(void) { *g_null = 1; }
static volatile int g_zero;

static int recurse(int n) {
    volatile char pad[4096];
    pad[0] = (char)n;
    if (g_zero) return 0; /* never: g_zero is 0, but the compiler cannot know */
    return recurse(n + 1) + pad[0]; /* not a tail call: the stack grows until it overflows */
}

/* a real integer division by zero; UBSan (make asan) must not turn it into its own report */
#if defined(__GNUC__)
__attribute__((no_sanitize_undefined))
#endif
static int divide(int a, int b) { return a / b; }

static void crash_now(int how) {
    if (how == H_ABORT) abort();
    if (how == H_FPE) {
        volatile int x = divide(1, g_zero);
        (void)x;
        raise(SIGFPE); /* in case the division did not trap */
    }
    if (how == H_STACK) (void)recurse(0);
    store_null();
}

__attribute__((constructor)) static void on_load(void) {
    const char *v = getenv("MOELAB_TEST_CRASH_LOAD");
    if (v && *v == '1') store_null();
}

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    (void)err;
    int crash = (int)init->opt[0].i, how = (int)init->opt[1].i;
    if (crash == C_CREATE) crash_now(how);
    rt *r = host->alloc(sizeof *r);
    if (r) r->host = host, r->dim = init->dim, r->crash = crash, r->how = how, r->after = (long)init->opt[2].i;
    return r;
}

static void destroy(void *self) {
    rt *r = self;
    if (r) r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    rt *r = self;
    if (cap < 1) return -1;
    ml_tensor_decl w = {.name = "w", .per_expert = 1, .cols = r->dim, .init = ML_INIT_NORMAL,
                        .init_value = 0.5f};
    out[0] = w;
    return 1;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int forward(void *self, ml_route *r, char *err) {
    (void)err;
    rt *s = self;
    if (s->calls++ >= s->after) {
        if (s->crash == C_FORWARD) crash_now(s->how);
        if (s->crash == C_KILL) kill(getpid(), SIGKILL);
    }
    const float *w = r->param[0];
    r->n_disp = r->B;
    r->n_dropped = 0;
    for (int b = 0; b < r->B; b++) {
        float *z = r->logits + (size_t)b * r->N, *p = r->prob + (size_t)b * r->N;
        int best = 0;
        for (int e = 0; e < r->N; e++) {
            double sum = 0;
            for (int d = 0; d < r->D; d++) sum += (double)r->x[(size_t)b * r->D + d] * w[(size_t)e * r->D + d];
            z[e] = (float)sum;
            if (z[e] > z[best]) best = e;
        }
        double sum = 0;
        for (int e = 0; e < r->N; e++) sum += (p[e] = expf(z[e] - z[best]));
        for (int e = 0; e < r->N; e++) p[e] = (float)(p[e] / sum);
        r->disp_sample[b] = b, r->disp_expert[b] = best, r->disp_gate[b] = p[best];
    }
    return 0;
}

static int backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    (void)err;
    rt *s = self;
    if (s->crash == C_BACKWARD) crash_now(s->how);
    const float *w = r->param[0];
    float dz[256];
    if (r->N > 256) return -1;
    for (int b = 0; b < r->B; b++) {
        const float *p = r->prob + (size_t)b * r->N;
        for (int e = 0; e < r->N; e++) dz[e] = g->dprob ? g->dprob[(size_t)b * r->N + e] : 0;
        dz[r->disp_expert[b]] += g->dgate[b];
        double dot = 0;
        for (int e = 0; e < r->N; e++) dot += (double)p[e] * dz[e];
        for (int e = 0; e < r->N; e++) dz[e] = (float)(p[e] * (dz[e] - dot));
        for (int e = 0; e < r->N; e++) {
            if (g->dlogits) dz[e] += g->dlogits[(size_t)b * r->N + e];
            for (int d = 0; d < r->D; d++) {
                r->grad[0][(size_t)e * r->D + d] += dz[e] * r->x[(size_t)b * r->D + d];
                if (g->dx) g->dx[(size_t)b * r->D + d] += dz[e] * w[(size_t)e * r->D + d];
            }
        }
    }
    return 0;
}

static const ml_option options[] = {
    {"crash", ML_OPT_ENUM, "none", 1, 0, "none|create|forward|backward|kill", "which call crashes"},
    {"how", ML_OPT_ENUM, "segv", 1, 0, "segv|abort|fpe|stack", "null write, abort(), SIGFPE or stack overflow"},
    {"after", ML_OPT_INT, "0", 0, 1e9, NULL, "forward calls that succeed first"},
};

static const ml_router_api api = {
    .size = sizeof(ml_router_api), .create = create, .destroy = destroy, .params = params,
    .states = states, .forward = forward, .backward = backward, .event = NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    .name = "crash_router",
    .version = "1.0",
    .doc = "a router that crashes on request (tests of crash reports)",
    .options = options,
    .num_options = 3,
    .api = &api,
};
