/* wrong_kind.c — test plugin: a valid loss, loaded where a router is expected. */
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

ML_PLUGIN_EXPORT = {
    sizeof(ml_plugin), ML_ABI_MAJOR, ML_ABI_MINOR, ML_PLUGIN_LOSS,
    "wrong_kind", "1.0", "a loss that is not a router", NULL, 0, &api,
};
