/*
 * FROZEN ABI 1.1 FIXTURE — a growth schedule built against the frozen 1.1 header: one
 * expert more per layer at the first decision of each epoch after the first, while the last
 * epoch's routing health had no dead expert, up to 6. It has decide only (no decide_v2, no
 * state): on today's host it keeps working and never removes (tests/check_abi.c).
 */
#include "moelab/plugin.h"

typedef struct sched { const ml_host *host; int last_epoch; } sched;

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    (void)init, (void)err;
    sched *s = host->alloc(sizeof *s);
    if (s) s->host = host;
    return s;
}

static void destroy(void *self) {
    sched *s = self;
    if (s) s->host->free(s);
}

static int initial_experts(void *self, int layer, int configured) {
    (void)self, (void)layer;
    return configured;
}

static int decide(void *self, const ml_progress *p, int *add, char *err) {
    sched *s = self;
    (void)err, (void)s;
    if (!p->last_health) return 0;
    for (int l = 0; l < p->num_layers; l++) {
        const ml_layer_health *h = p->last_health[l];
        /* the health of the epoch before: grow once per epoch, when its routing had no dead expert */
        if (h->dead == 0 && p->num_experts[l] < 6 && h->num_experts == p->num_experts[l] && p->step % 48 == 1) add[l] = 1;
    }
    return 0;
}

static const ml_schedule_api api = {sizeof(ml_schedule_api), create, destroy, initial_experts, decide};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_SCHEDULE),
    .name = "grow_v1_1",
    .version = "1.1",
    .doc = "one expert more per epoch while none is dead (frozen ABI 1.1 fixture)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
