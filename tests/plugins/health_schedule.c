/*
 * health_schedule.c — test plugin (ABI 1.1): a growth schedule that reads routing health.
 * It checks what the host hands it (and fails the run when something is off: size, layer,
 * N, epoch, utilisation summing to 1, last_health NULL in epoch 1 only), and adds one
 * expert to a layer when the last completed epoch's effective number of experts was below
 * `below` times N and the layer has not grown since that epoch. Stateless, so a resumed run
 * decides the same.
 */
#include <math.h>
#include <stdio.h>

#include "moelab/plugin.h"

static const ml_option options[] = {
    {.name = "below", .type = ML_OPT_FLOAT, .def = "2.0", .min = 0, .max = 100,
     .doc = "grow when exp(H(utilisation)) < below * N over the last epoch"},
    {.name = "max", .type = ML_OPT_INT, .def = "6", .min = 1, .max = 4096, .doc = "experts per layer at most"},
};

typedef struct sched {
    const ml_host *host;
    double below;
    int max;
} sched;

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    (void)err;
    sched *s = host->alloc(sizeof *s);
    if (!s) return NULL;
    s->host = host;
    s->below = init->opt[0].f;
    s->max = (int)init->opt[1].i;
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

static int check(const ml_layer_health *h, int l, int n, int epoch, char *err, const char *what) {
    if (!h) return snprintf(err, ML_ERR_MAX, "%s[%d] is NULL", what, l), -1;
    if (h->size < sizeof *h || h->layer != l || h->epoch != epoch)
        return snprintf(err, ML_ERR_MAX, "%s[%d]: size %u, layer %d, epoch %d (expected layer %d, epoch %d)", what, l,
                        (unsigned)h->size, h->layer, h->epoch, l, epoch), -1;
    if (n >= 0 && h->num_experts != n)
        return snprintf(err, ML_ERR_MAX, "%s[%d]: %d experts, the layer has %d", what, l, h->num_experts, n), -1;
    if (h->slots > 0) {
        double s = 0;
        for (int e = 0; e < h->num_experts; e++) s += h->utilisation[e];
        if (fabs(s - 1) > 1e-9 || !(h->effective_experts >= 1 && h->effective_experts <= h->num_experts + 1e-9))
            return snprintf(err, ML_ERR_MAX, "%s[%d]: utilisation sums to %.12g, effective experts %g", what, l, s,
                            h->effective_experts), -1;
    }
    return 0;
}

static int decide(void *self, const ml_progress *p, int *add, char *err) {
    sched *s = self;
    if (p->size < sizeof *p || !p->health) return snprintf(err, ML_ERR_MAX, "no health (progress size %u)", (unsigned)p->size), -1;
    if ((p->epoch == 1) != (p->last_health == NULL))
        return snprintf(err, ML_ERR_MAX, "epoch %d: last_health is %s", p->epoch, p->last_health ? "set" : "NULL"), -1;
    for (int l = 0; l < p->num_layers; l++) {
        if (check(p->health[l], l, p->num_experts[l], p->epoch, err, "health")) return -1;
        if (!p->last_health) continue;
        const ml_layer_health *h = p->last_health[l];
        if (check(h, l, -1, p->epoch - 1, err, "last_health")) return -1;
        if (h->samples > 0 && h->effective_experts < s->below * h->num_experts &&
            p->num_experts[l] == h->num_experts && p->num_experts[l] < s->max)
            add[l] = 1;
    }
    return 0;
}

static const ml_schedule_api api = {
    .size = sizeof(ml_schedule_api), .create = create, .destroy = destroy,
    .initial_experts = initial_experts, .decide = decide,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_SCHEDULE),
    .name = "health_schedule",
    .version = "1.0",
    .doc = "grows a layer after an epoch whose routing used fewer than below * N effective experts",
    .options = options,
    .num_options = 2,
    .api = &api,
};
