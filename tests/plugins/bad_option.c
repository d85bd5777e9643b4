/* bad_option.c — test plugin: an option whose default lies outside its own range. */
#include "moelab/plugin.h"

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)init, (void)err;
    return host->alloc(1);
}

static void destroy(void *self) { (void)self; }

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    (void)self, (void)r, (void)scale, (void)dlogits, (void)dprob, (void)err;
    *value = 0;
    return 0;
}

static const ml_loss_api api = {sizeof(ml_loss_api), create, destroy, eval};

static const ml_option options[] = {
    {"k", ML_OPT_INT, "99", 1, 64, NULL, "default outside [1, 64]"},
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "bad_option",
    .version = "1.0",
    .doc = "option default out of range",
    .options = options,
    .num_options = 1,
    .api = &api,
};
