/*
 * nan_grad.c — test plugin: a loss that is zero with zero gradient, except at training
 * step `at_step` (counted over the calls that ask for a gradient, one per step with one
 * MoE layer), where it puts a NaN into the routing-probability gradient (mode gradient)
 * or returns a finite value so large that coef * value overflows (mode loss).
 * Drives the train.nonfinite tests in check_nonfinite.
 */
#include <math.h>

#include "moelab/plugin.h"

typedef struct loss { const ml_host *host; int64_t at_step, calls; int mode; } loss;

static const ml_option options[] = {
    {"at_step", ML_OPT_INT, "3", 1, 1e12, NULL, "the training step that goes wrong"},
    {"mode", ML_OPT_ENUM, "gradient", 0, -1, "gradient|loss",
     "a NaN in the gradient, or a loss whose coef * value is infinite"},
};

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)err;
    loss *l = host->alloc(sizeof *l);
    if (!l) return NULL;
    l->host = host;
    l->at_step = init->opt[0].i;
    l->mode = (int)init->opt[1].i;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (l) l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)scale, (void)err;
    *value = 0;
    if (!dprob && !dlogits) return 0; /* evaluation, or coef 0 */
    if (++l->calls != l->at_step || r->B <= 0 || r->N <= 0) return 0;
    if (l->mode == 1) *value = 1e308; /* finite; times coef >= 2 it is not */
    else if (dprob) dprob[0] = NAN;
    else dlogits[0] = NAN;
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "nan_grad",
    .version = "1.0",
    .doc = "test: a NaN gradient (or an overflowing loss) at one chosen training step",
    .options = options,
    .num_options = 2,
    .api = &api,
};
