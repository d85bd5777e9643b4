/*
 * crash_loss.c — test plugin: a zero loss that misbehaves on request in eval:
 *   fail:  none | segv | abort | noterm (returns an error whose message fills the whole
 *          ML_ERR_MAX buffer without a terminator)
 *   after: eval calls that succeed first
 */
#include <stdlib.h>
#include <string.h>

#include "moelab/plugin.h"

enum { F_NONE, F_SEGV, F_ABORT, F_NOTERM };

typedef struct loss {
    const ml_host *host;
    int fail;
    long after, calls;
} loss;

static int *volatile g_null;

/* the crash itself: a real store through NULL; UBSan (make asan) must not report it first */
#if defined(__GNUC__)
__attribute__((no_sanitize_undefined))
#endif
static void store_null(void) { *g_null = 1; }

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)err;
    loss *l = host->alloc(sizeof *l);
    if (l) l->host = host, l->fail = (int)init->opt[0].i, l->after = (long)init->opt[1].i;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (l) l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    (void)r, (void)scale, (void)dlogits, (void)dprob;
    loss *l = self;
    if (l->calls++ >= l->after) {
        if (l->fail == F_SEGV) store_null();
        if (l->fail == F_ABORT) abort();
        if (l->fail == F_NOTERM) {
            memset(err, 'L', ML_ERR_MAX);
            return -1;
        }
    }
    *value = 0;
    return 0;
}

static const ml_option options[] = {
    {"fail", ML_OPT_ENUM, "none", 1, 0, "none|segv|abort|noterm", "how eval misbehaves"},
    {"after", ML_OPT_INT, "0", 0, 1e9, NULL, "eval calls that succeed first"},
};

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "crash_loss",
    .version = "1.0",
    .doc = "a zero loss that crashes or misbehaves on request (tests)",
    .options = options,
    .num_options = 2,
    .api = &api,
};
