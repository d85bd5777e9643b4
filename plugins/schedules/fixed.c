/* fixed — no growth: every layer keeps the configured number of experts. No options. */
#include "moelab/plugin.h"

typedef struct sched { const ml_host *host; } sched;

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
    (void)self, (void)p, (void)add, (void)err;
    return 0;
}

static const ml_schedule_api api = {
    .size = sizeof(ml_schedule_api),
    .create = create,
    .destroy = destroy,
    .initial_experts = initial_experts,
    .decide = decide,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_SCHEDULE),
    .name = "fixed",
    .version = "1.0",
    .doc = "no growth: the configured number of experts throughout",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
