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
#include "moelab/plugin_aux.h"

typedef struct sched {
    const ml_host *host;
    int64_t start, every, add, max;
} sched;

enum { NUM_OPTS = 4 };

static const ml_option options[NUM_OPTS] = {
    {"start", ML_OPT_INT, "2", 1, 4096, NULL, "experts per layer at the start", 0},
    {"every_images", ML_OPT_INT, "7000", 1, 1e12, NULL, "training images between additions", 0},
    {"add", ML_OPT_INT, "1", 1, 4096, NULL, "experts added to each layer per addition", 0},
    {"max", ML_OPT_INT, "16", 1, 4096, NULL, "experts per layer at most", 0},
};

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    const ml_optval *start = ml_aux_option(options, NUM_OPTS, init->opt, "start");
    const ml_optval *every = ml_aux_option(options, NUM_OPTS, init->opt, "every_images");
    const ml_optval *add = ml_aux_option(options, NUM_OPTS, init->opt, "add");
    const ml_optval *max = ml_aux_option(options, NUM_OPTS, init->opt, "max");
    sched *s = ml_aux_new(host, sizeof *s, "progressive", err);
    if (!s) return NULL;
    s->host = host;
    s->start = start->i;
    s->every = every->i;
    s->add = add->i;
    s->max = max->i;
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
    .name = "progressive",
    .version = "1.0",
    .doc = "add `add` experts per layer every `every_images` images, from `start` to `max`",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
