/*
 * FROZEN ABI 1.0 FIXTURE — do not edit. The plugin progressive exactly as moelab shipped it with
 * ABI 1.0 (only its name changed), compiled by the Makefile against the frozen 1.0 header
 * beside it (tests/abi/1.0/moelab/plugin.h) and, for comparison, against today's header.
 * tests/check_abi.c loads the 1.0 build into today's host, runs plugin-test on it and trains
 * with it: every later host must keep accepting it (docs/plugins.md, "Compatibility").
 */
/*
 * progressive — grow every layer by `add` experts each `every_images` training images,
 * from `start` up to `max`:
 *
 *     target = min(max, start + floor(images_seen / every_images) * add)
 *     add[l] = max(0, target - num_experts[l])
 *
 * Stateless: the decision depends only on the progress record, so resuming from a
 * checkpoint (images_seen and num_experts restored) continues the same schedule.
 */
#include "moelab/plugin.h"

typedef struct sched {
    const ml_host *host;
    int64_t start, every, add, max;
} sched;

static const ml_option options[] = {
    {"start", ML_OPT_INT, "2", 1, 4096, NULL, "experts per layer at the start"},
    {"every_images", ML_OPT_INT, "7000", 1, 1e12, NULL, "training images between additions"},
    {"add", ML_OPT_INT, "1", 1, 4096, NULL, "experts added to each layer per addition"},
    {"max", ML_OPT_INT, "16", 1, 4096, NULL, "experts per layer at most"},
};

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    (void)err;
    sched *s = host->alloc(sizeof *s);
    if (!s) return NULL;
    s->host = host;
    s->start = init->opt[0].i;
    s->every = init->opt[1].i;
    s->add = init->opt[2].i;
    s->max = init->opt[3].i;
    return s;
}

static void destroy(void *self) {
    sched *s = self;
    if (s) s->host->free(s);
}

static int initial_experts(void *self, int layer, int configured) {
    sched *s = self;
    (void)layer, (void)configured;
    return (int)(s->start < s->max ? s->start : s->max);
}

static int decide(void *self, const ml_progress *p, int *add, char *err) {
    sched *s = self;
    (void)err;
    int64_t steps = p->images_seen > 0 ? p->images_seen / s->every : 0;
    /* steps * add can exceed max by far; cap before multiplying */
    int64_t target = steps >= s->max ? s->max : s->start + steps * s->add;
    if (target > s->max) target = s->max;
    for (int l = 0; l < p->num_layers; l++) {
        int64_t d = target - p->num_experts[l];
        add[l] = d > 0 ? (int)d : 0;
    }
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
    .name = "progressive_v1_0",
    .version = "1.0",
    .doc = "add `add` experts per layer every `every_images` images, from `start` to `max`",
    .options = options,
    .num_options = 4,
    .api = &api,
};
