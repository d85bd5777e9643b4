/*
 * dynmoe — the adaptive expert count of DynMoE (Guo et al. 2024, "Dynamic Mixture of
 * Experts: An Auto-Tuning Approach for Efficient Transformer Models", §3.2 and the reference
 * code, LINs-lab/DynMoE: deepspeed/moe/sharded_moe.py MOELayer.adaptive_update_experts and
 * layer.py's recording cadence), with the top-any signal adapted to top-k routers.
 *
 * DynMoE records routing for a while, then updates each MoE layer: experts that no token
 * activated during the recording are removed; if some tokens activated no expert, one
 * expert is added (its gate initialised from those tokens). Here, per layer:
 *
 *   recording:  the last `window` training steps before each decision;
 *   decisions:  at every step that is a multiple of `interval` (the reference records 300
 *               steps in each 900: window 300, interval 900);
 *   remove:     experts without a dispatched slot in the recording window (idle for
 *               `window` steps), most idle first, keeping at least `min`;
 *   add:        `add` experts (the paper: one) when the share of unserved samples in the
 *               recording window exceeds `min_share` (the paper: any, min_share 0), up to
 *               `max` experts.
 *
 * "Unserved" is the paper's "activates no expert", which a top-any gate can produce and a
 * top-k gate cannot. signal: dropped counts samples that got no dispatch triple at all (the
 * paper's literal rule; routers that drop: switch with capacity, relu, expert_choice);
 * low_mass (the default) counts samples whose dispatched experts hold less than
 * `mass_threshold` of the probability a uniform router would leave them (below, unserved()):
 * the router found no expert it was sure of. New experts start as the config's growth.init says (random, copy or
 * drop_upcycle), not from the unserved samples' embeddings: the router row is the router
 * plugin's own business.
 *
 * State per layer (checkpointed): "idle" (N, 1) steps since each expert's last slot, and
 * "record" (1, 3): samples recorded, unserved samples, the last decision's index (a script
 * that asks twice in one step gets the decision once).
 */
#include "moelab/plugin_aux.h"

typedef struct sched {
    const ml_host *host;
    int64_t start, max, min, window, interval, add;
    int dropped;           /* signal: 1 dropped, 0 low_mass */
    double threshold, min_share;
    int remove;
} sched;

enum { NUM_OPTS = 10 };
enum { S_IDLE, S_RECORD };
enum { R_SAMPLES, R_UNSERVED, R_DECIDED };

static const ml_option options[NUM_OPTS] = {
    {"start", ML_OPT_INT, "0", 0, 4096, NULL, "experts per layer at the start; 0 = the config's model.experts", 0},
    {"max", ML_OPT_INT, "16", 1, 4096, NULL, "experts per layer at most", 0},
    {"min", ML_OPT_INT, "1", 1, 4096, NULL, "experts per layer at least, removal stops there (at most max)", 0},
    {"window", ML_OPT_INT, "300", 1, 1e9, NULL, "training steps of routing recorded before each decision (at most interval)", 0},
    {"interval", ML_OPT_INT, "900", 1, 1e9, NULL, "training steps between decisions", 0},
    {"signal", ML_OPT_ENUM, "low_mass", 0, -1, "low_mass|dropped",
     "unserved samples: dispatched probability mass below mass_threshold, or no expert at all", 0},
    {"mass_threshold", ML_OPT_FLOAT, "0.5", 0, 1, NULL,
     "low_mass: a sample is unserved below this share of the mass above uniform on its experts", 0},
    {"min_share", ML_OPT_FLOAT, "0", 0, 1, NULL, "add when the unserved share of the window exceeds this", 0},
    {"add", ML_OPT_INT, "1", 1, 4096, NULL, "experts added to a layer per decision", 0},
    {"remove", ML_OPT_BOOL, "true", 0, -1, NULL, "remove experts dead through the recording window", 0},
};

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    sched *s = ml_aux_new(host, sizeof *s, "dynmoe", err);
    if (!s) return NULL;
    s->host = host;
    s->start = ml_aux_option(options, NUM_OPTS, init->opt, "start")->i;
    s->max = ml_aux_option(options, NUM_OPTS, init->opt, "max")->i;
    s->min = ml_aux_option(options, NUM_OPTS, init->opt, "min")->i;
    s->window = ml_aux_option(options, NUM_OPTS, init->opt, "window")->i;
    s->interval = ml_aux_option(options, NUM_OPTS, init->opt, "interval")->i;
    s->dropped = ml_aux_option(options, NUM_OPTS, init->opt, "signal")->i == 1;
    s->threshold = ml_aux_option(options, NUM_OPTS, init->opt, "mass_threshold")->f;
    s->min_share = ml_aux_option(options, NUM_OPTS, init->opt, "min_share")->f;
    s->add = ml_aux_option(options, NUM_OPTS, init->opt, "add")->i;
    s->remove = (int)ml_aux_option(options, NUM_OPTS, init->opt, "remove")->i;
    /* a recording longer than the interval records all of it; max bounds min */
    if (s->window > s->interval) s->window = s->interval;
    if (s->min > s->max) s->min = s->max;
    return s;
}

static void destroy(void *self) {
    sched *s = self;
    if (s) s->host->free(s);
}

static int initial_experts(void *self, int layer, int configured) {
    sched *s = self;
    (void)layer;
    int64_t n = s->start > 0 ? s->start : configured;
    return (int)(n < s->max ? n : s->max);
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    if (cap < 2) return -1;
    out[S_IDLE] = (ml_tensor_decl){.name = "idle", .per_expert = 1, .cols = 1, .init = ML_INIT_ZEROS};
    out[S_RECORD] = (ml_tensor_decl){.name = "record", .rows = 1, .cols = 3, .init = ML_INIT_ZEROS};
    return 2;
}

/*
 * Unserved samples of one step. dropped: no dispatch triple. low_mass: the probability mass
 * m on the k experts a sample went to, measured above what a uniform router gives them,
 *
 *     m~ = (m - k/N) / (1 - k/N)      0: no more than uniform, 1: all of it on them,
 *
 * below the threshold (a sample without a triple has m~ = 0; k = N leaves nothing to
 * choose: served). The raw m would not do: the top-k of N probabilities hold at least k/N,
 * so a fixed threshold on m would fire less as a layer has fewer experts, and never at
 * k/N >= threshold.
 */
static int unserved(const sched *s, const ml_routing_record *r) {
    int n = 0;
    const int N = r->N;
    for (int b = 0; b < r->B; b++) {
        double mass = 0;
        int k = 0;
        for (int t = 0; t < r->n_disp; t++)
            if (r->disp_sample[t] == b) {
                int e = r->disp_expert[t];
                k++;
                if (e >= 0 && e < N) mass += r->prob[(size_t)b * N + e];
            }
        if (s->dropped) n += k == 0;
        else if (k < N) n += (mass - (double)k / N) / (1 - (double)k / N) < s->threshold;
    }
    return n;
}

static int observe(void *self, const ml_schedule_obs *o, char *err) {
    sched *s = self;
    (void)err;
    ml_aux_idle_update(o->state[S_IDLE], o->route);
    float *rec = o->state[S_RECORD];
    int64_t phase = (o->step - 1) % s->interval; /* this step's place in its decision interval */
    if (phase < s->interval - s->window) return 0; /* not recording */
    if (phase == s->interval - s->window) rec[R_SAMPLES] = rec[R_UNSERVED] = 0; /* a recording begins */
    rec[R_SAMPLES] += (float)o->route->B;
    rec[R_UNSERVED] += (float)unserved(s, o->route);
    return 0;
}

static int decide_v2(void *self, const ml_progress *p, ml_schedule_decision *d, char *err) {
    sched *s = self;
    (void)err;
    if (p->step < s->interval || p->step % s->interval) return 0;
    float k = (float)(p->step / s->interval); /* this decision's index */
    for (int l = 0; l < p->num_layers; l++) {
        float *rec = d->state[l][S_RECORD];
        if (rec[R_DECIDED] >= k) continue; /* decided at this step already */
        rec[R_DECIDED] = k;
        int N = p->num_experts[l];
        if (s->remove) d->n_remove[l] = ml_aux_dead_experts(d->state[l][S_IDLE], N, (double)s->window, (int)s->min, d->remove[l]);
        int64_t left = N - d->n_remove[l], room = s->max - left;
        double share = rec[R_SAMPLES] > 0 ? rec[R_UNSERVED] / rec[R_SAMPLES] : 0;
        if (share > s->min_share && room > 0) d->add[l] = (int)(s->add < room ? s->add : room);
    }
    return 0;
}

static const ml_schedule_api api = {
    .size = sizeof(ml_schedule_api),
    .create = create,
    .destroy = destroy,
    .initial_experts = initial_experts,
    .states = states,
    .observe = observe,
    .decide_v2 = decide_v2,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_SCHEDULE),
    .name = "dynmoe",
    .version = "1.0",
    .doc = "DynMoE (Guo et al. 2024): remove experts dead through a recording window, add one when samples go unserved",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
