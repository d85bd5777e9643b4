/* experiment.c — one run: build from config, train/evaluate, health, growth, checkpoints. */
#include "run/experiment.h"
#include "base/glob.h"
#include "io/safetensors.h"
#include "run/provenance.h"
#include "base/strbuf.h"

#include <cblas.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/crash.h"
#include "data/camouflage.h"
#include "plugin/loader.h"
#include "run/checkpoint.h"
#include "run/dist.h"
#include "base/file.h"

volatile int ml_exp_interrupted;

/* ------------------------------------------------------------------ building */

static const ml_plugin *find_plugin(void *ctx, int kind, const char *name, char *err) {
    (void)ctx;
    const ml_plugin *p = ml_plugin_load(kind, name);
    if (!p) snprintf(err, ML_ERR_MAX, "%s", ml_error());
    return p;
}

static int plugin_opts(ml_experiment *e, const char *path, const ml_plugin *p, ml_optval **out) {
    *out = ml_calloc((size_t)(p->num_options > 0 ? p->num_options : 1), sizeof(ml_optval));
    if (!*out) return ML_ERR;
    return ml_config_plugin_options(e->cfg, path, p, *out);
}

/* One instance of each configured loss per MoE layer (ABI 1.1: per-layer state). */
static int build_losses(ml_experiment *e) {
    int n = ml_config_len(e->cfg, "losses");
    if (n > ML_MAX_LOSSES) return ml_errorf("%s: %d losses, at most %d are supported", ml_config_path(e->cfg), n, ML_MAX_LOSSES);
    ml_model *m = e->model;
    int states = 0;
    for (int i = 0; i < n; i++) {
        char path[64], key[80];
        snprintf(path, sizeof path, "losses.%d", i);
        snprintf(key, sizeof key, "%s.name", path);
        const char *name = ml_config_str(e->cfg, key, "");
        const ml_plugin *p = ml_plugin_load(ML_PLUGIN_LOSS, name);
        if (!p) return ML_ERR;
        ml_optval *opt = NULL;
        if (plugin_opts(e, path, p, &opt)) { free(opt); return ML_ERR; }
        ml_loss_slot *s = &e->loss[e->n_losses];
        s->plugin = p;
        s->inst = ml_calloc((size_t)m->L, sizeof *s->inst);
        if (!s->inst) { free(opt); return ML_ERR; }
        e->n_losses++; /* from here ml_exp_free releases the slot */
        for (int l = 0; l < m->L; l++) {
            char prefix[48];
            snprintf(prefix, sizeof prefix, "moe%d.loss%d.", l + 1, i); /* losses.<i> of the config */
            if (ml_loss_inst_init(&s->inst[l], p, opt, l, m->L, m->moe[l]->N, &m->S, prefix)) { free(opt); return ML_ERR; }
            states += s->inst[l].state.n;
        }
        free(opt);
        snprintf(s->name, sizeof s->name, "%s", p->name);
        for (int j = 0; j < e->n_losses - 1; j++)
            if (strcmp(e->loss[j].name, s->name) == 0) snprintf(s->name, sizeof s->name, "%s#%d", p->name, i + 1);
        snprintf(key, sizeof key, "%s.coef", path);
        s->coef = ml_config_float(e->cfg, key, 1.0);
    }
    /* loss state lives in the state block: lay it out (only when there is some, so runs
       without it draw exactly the initialisations they always did) */
    if (states && ml_params_commit(&m->S, &m->init_rng)) return ML_ERR;
    return ML_OK;
}

/* A 1.2 schedule's per-layer state tensors (after the model and the losses: they go into
   the state block after theirs). */
static int build_schedule_state(ml_experiment *e) {
    ml_model *m = e->model;
    int *ne = ml_calloc((size_t)m->L, sizeof *ne);
    if (!ne) return ML_ERR;
    for (int l = 0; l < m->L; l++) ne[l] = m->moe[l]->N;
    int n = ml_schedule_inst_declare_states(&e->sched, &m->S, ne);
    free(ne);
    if (n < 0) return ML_ERR;
    return n > 0 ? ml_params_commit(&m->S, &m->init_rng) : ML_OK;
}

static int build_schedule(ml_experiment *e, int L) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_SCHEDULE, ml_config_str(e->cfg, "schedule.name", "fixed"));
    if (!p) return ML_ERR;
    ml_optval *opt = NULL;
    if (plugin_opts(e, "schedule", p, &opt)) { free(opt); return ML_ERR; }
    int rc = ml_schedule_inst_init(&e->sched, p, opt, L, ML_MOE_MAX_EXPERTS);
    free(opt);
    return rc;
}

static int build_model(ml_experiment *e) {
    const ml_config *c = e->cfg;
    int cod = !strcmp(ml_config_str(c, "model.type", "mlp"), "cod");
    int L = cod ? 4 : (int)ml_config_int(c, "model.moe_layers", 1); /* cod: one MoE layer per scale */
    if (cod && !e->train.mask)
        return ml_errorf("model.type cod segments images: it needs a dataset with masks (data.dataset: camouflage "
                         "or image_mask_folder), not %s", ml_config_str(c, "data.dataset", "?"));
    if (build_schedule(e, L)) return ML_ERR;
    int configured = (int)ml_config_int(c, "model.experts", 4);
    int *experts = ml_calloc((size_t)L, sizeof(int));
    if (!experts) return ML_ERR;
    for (int l = 0; l < L; l++)
        if (ml_schedule_inst_initial(&e->sched, l, configured, &experts[l])) {
            free(experts);
            return ML_ERR;
        }
    const ml_plugin *router = ml_plugin_load(ML_PLUGIN_ROUTER, ml_config_str(c, "router.name", "softmax_topk"));
    ml_optval *ropt = NULL;
    if (!router || plugin_opts(e, "router", router, &ropt)) { free(experts); free(ropt); return ML_ERR; }
    int channels[16], nch = ml_config_len(c, "model.channels");
    if (nch > 16) nch = 16;
    for (int i = 0; i < nch; i++) {
        char key[64];
        snprintf(key, sizeof key, "model.channels.%d", i);
        channels[i] = (int)ml_config_int(c, key, 0);
    }
    const char *kinds[64];
    int nk = ml_config_len(c, "model.expert_kinds");
    if (nk > 64) nk = 64;
    for (int i = 0; i < nk; i++) {
        char key[64];
        snprintf(key, sizeof key, "model.expert_kinds.%d", i);
        kinds[i] = ml_config_str(c, key, "texture");
    }
    ml_model_cfg mc = {
        .expert_kinds = kinds, .n_kinds = nk < 0 ? 0 : nk,
        .w_bce = (float)ml_config_float(c, "seg.bce", 1.0),
        .w_iou = (float)ml_config_float(c, "seg.iou", 1.0),
        .w_dice = (float)ml_config_float(c, "seg.dice", 0.0),
        .type = ml_config_str(c, "model.type", "mlp"),
        .C = e->train.C, .H = e->train.H, .W = e->train.W,
        .latent = (int)ml_config_int(c, "model.latent", 128),
        .hidden = (int)ml_config_int(c, "model.hidden", 256),
        .expert_hidden = (int)ml_config_int(c, "model.expert_hidden", 256),
        .experts = configured, .moe_layers = L,
        .channels = channels, .n_channels = nch < 0 ? 0 : nch,
        .router = router, .router_opt = ropt,
        .seed = (uint64_t)ml_config_int(c, "train.seed", 1),
    };
    e->model = ml_model_new(&mc, experts);
    free(experts);
    free(ropt);
    if (!e->model) return ml_error_prefix("model");
    e->acc = ml_calloc((size_t)L, sizeof *e->acc);
    e->vacc = ml_calloc((size_t)L, sizeof *e->vacc);
    e->last_acc = ml_calloc((size_t)L, sizeof *e->last_acc);
    if (!e->acc || !e->vacc || !e->last_acc) return ML_ERR;
    for (int l = 0; l < L; l++) {
        e->acc[l] = ml_health_acc_new(e->model->moe[l]->N, e->train.num_classes);
        e->vacc[l] = ml_health_acc_new(e->model->moe[l]->N, e->train.num_classes);
        e->last_acc[l] = ml_health_acc_new(e->model->moe[l]->N, e->train.num_classes);
        if (!e->acc[l] || !e->vacc[l] || !e->last_acc[l]) return ML_ERR;
    }
    return ML_OK;
}

/* model.init_from: the tensors of a checkpoint that match model.init_match and exist in the
   model with the same shape initialise the model's (staged training). The file is read and
   verified (checksum, finite values) like any checkpoint; nothing else of it is used. */
static int init_from(ml_experiment *e) {
    const char *path = ml_config_str(e->cfg, "model.init_from", "");
    if (!*path) return ML_OK;
    const char *pat = ml_config_str(e->cfg, "model.init_match", "*");
    if (ml_glob_check(pat)) return ml_error_prefix("model.init_match");
    ml_st_file *f = ml_st_open(path);
    if (!f) return ml_error_prefix("model.init_from");
    ml_params *P = &e->model->P;
    int copied = 0, matched = 0;
    for (int k = 0; k < P->count; k++) {
        const ml_tensor *t = &P->t[k];
        if (!ml_glob_match(pat, t->name)) continue;
        matched++;
        int nd;
        int64_t shape[8];
        const float *v = ml_st_get(f, t->name, &nd, shape);
        if (!v) continue;
        int same = nd == t->ndim;
        for (int d = 0; same && d < nd; d++) same = shape[d] == t->shape[d];
        if (!same) {
            ml_st_close(f);
            return ml_errorf("model.init_from: %s: tensor '%s' has another shape than the model's", path, t->name);
        }
        for (size_t i = 0; i < t->n; i++)
            if (!isfinite(v[i])) {
                ml_st_close(f);
                return ml_errorf("model.init_from: %s: tensor '%s' holds a non-finite value", path, t->name);
            }
        memcpy(ml_params_data(P, k), v, t->n * sizeof(float));
        copied++;
    }
    ml_st_close(f);
    if (!copied)
        return ml_errorf("model.init_from: %s has none of the model's %d tensors matching '%s' (names like '%s')", path,
                         matched, pat, P->count ? P->t[0].name : "?");
    e->init_copied = copied;
    e->init_matched = matched;
    return ML_OK;
}

/* The optimizer and its parameter groups (optim.groups), each tensor placed in its group. */
static int build_optim(ml_experiment *e) {
    const ml_config *c = e->cfg;
    int kind = ml_optim_kind_from_name(ml_config_str(c, "optim.name", "adam"));
    e->opt = (ml_optim){
        .kind = kind < 0 ? ML_OPTIM_ADAM : (ml_optim_kind)kind,
        .lr = (float)ml_config_float(c, "optim.lr", 1e-3),
        .beta1 = (float)ml_config_float(c, "optim.beta1", 0.9),
        .beta2 = (float)ml_config_float(c, "optim.beta2", 0.999),
        .eps = (float)ml_config_float(c, "optim.eps", 1e-8),
        .weight_decay = (float)ml_config_float(c, "optim.weight_decay", 0),
        .momentum = (float)ml_config_float(c, "optim.momentum", 0),
    };
    int idle = ml_optim_idle_from_name(ml_config_str(c, "optim.idle_experts", "dense"));
    e->opt.idle = idle < 0 ? ML_OPTIM_IDLE_DENSE : (ml_optim_idle)idle;
    int n = ml_config_len(c, "optim.groups");
    for (int g = 0; g < n; g++) {
        char key[32], name[64], match[64], lr[64], wd[64], frozen[64];
        snprintf(key, sizeof key, "optim.groups.%d", g);
        snprintf(name, sizeof name, "%s.name", key);
        snprintf(match, sizeof match, "%s.match", key);
        snprintf(lr, sizeof lr, "%s.lr", key);
        snprintf(wd, sizeof wd, "%s.weight_decay", key);
        snprintf(frozen, sizeof frozen, "%s.frozen", key);
        if (ml_optim_add_group(&e->opt, ml_config_str(c, name, ""), ml_config_str(c, match, ""),
                               (float)ml_config_float(c, lr, NAN), (float)ml_config_float(c, wd, NAN),
                               ml_config_bool(c, frozen, 0)))
            return ml_error_prefix("%s: optim.groups.%d", ml_config_path(c), g);
    }
    ml_optim_place(&e->opt, &e->model->P);
    for (int g = 0; g < n; g++) { /* most likely a typo; experts added later may still match */
        int members = 0;
        for (int k = 0; k < e->model->P.count; k++) members += !e->model->P.t[k].removed && e->model->P.t[k].group == g;
        if (!members)
            ml_log(ML_LOG_WARN, "optim.groups.%d '%s': pattern '%s' matches no parameter tensor (yet)", g,
                   e->opt.group[g].name, e->opt.group[g].match);
    }
    return ML_OK;
}

static void set_threads(int n) {
    /* all cores by default, shared among the ranks of a data-parallel job on this machine */
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN), local = ml_dist_local_size();
    if (n > 0 && local > 1 && n * local > cores && ml_dist_rank() == 0)
        ml_log(ML_LOG_WARN, "train.threads %d on each of %d ranks of this machine: %d threads on %d cores, which "
               "slows every rank down; hint: train.threads=0 shares the cores among the ranks", n, local, n * local,
               cores);
    if (n <= 0) {
        /* the cores other processes were using when moelab started are left to them
           (MOELAB_BUSY_CPUS, set by core/main.c's look at the CPUs; docs/PERFORMANCE.md,
           "Busy machines") */
        const char *busy = getenv("MOELAB_BUSY_CPUS");
        int others = busy ? atoi(busy) : 0, free_cores = cores - (others > 0 ? others : 0);
        n = (free_cores > 0 ? free_cores : 1) / local;
        if (others > 0 && ml_dist_rank() == 0)
            ml_log(ML_LOG_INFO, "%d other thread%s busy on these CPUs at the start: %d thread%s, waiting passively "
                   "(train.threads sets the number)", others, others == 1 ? " was" : "s were", n < 1 ? 1 : n,
                   n > 1 ? "s" : "");
    }
    if (n < 1) n = 1;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

ml_config *ml_exp_load_config(const char *config_path, const char *const *overrides, int n_overrides) {
    /* a first pass without plugin checks reads plugin_path (relative to the config file),
     * so the validating pass can find plugins there */
    ml_config *pre = ml_config_load(config_path, overrides, n_overrides, NULL, NULL);
    if (!pre) return NULL;
    int npp = ml_config_len(pre, "plugin_path");
    char (*dirs)[4096] = ml_calloc(npp > 0 ? (size_t)npp : 1, sizeof *dirs);
    const char **dirp = ml_calloc(npp > 0 ? (size_t)npp : 1, sizeof *dirp);
    if (!dirs || !dirp) {
        free(dirs);
        free(dirp);
        ml_config_free(pre);
        return NULL;
    }
    for (int i = 0; i < npp; i++) {
        char key[64], cdir[4096];
        snprintf(key, sizeof key, "plugin_path.%d", i);
        const char *d = ml_config_str(pre, key, "");
        snprintf(cdir, sizeof cdir, "%s", config_path);
        if (d[0] == '/') snprintf(dirs[i], sizeof dirs[i], "%s", d);
        else snprintf(dirs[i], sizeof dirs[i], "%.2040s/%.2040s", dirname(cdir), d);
        dirp[i] = dirs[i];
    }
    ml_plugins_default_path(dirp, npp); /* build's plugins, then these, then $MOELAB_PLUGIN_PATH */
    free(dirs);
    free(dirp);
    ml_config_free(pre);
    return ml_config_load(config_path, overrides, n_overrides, find_plugin, NULL);
}

ml_experiment *ml_exp_new(const char *config_path, const char *const *overrides, int n_overrides,
                          int *exit_code) {
    *exit_code = ML_EXIT_USAGE;
    ml_experiment *e = ml_calloc(1, sizeof *e);
    if (!e) return NULL;
    e->best_val = INFINITY;
    e->comm = ml_dist_comm();
    e->rank = ml_dist_rank();
    e->ranks = ml_dist_size();
    e->cfg = ml_exp_load_config(config_path, overrides, n_overrides);
    if (!e->cfg) goto fail;
    snprintf(e->experiment, sizeof e->experiment, "%s", ml_config_str(e->cfg, "experiment", "default"));
    *exit_code = ML_EXIT_RUNTIME;
    set_threads((int)ml_config_int(e->cfg, "train.threads", 0));
    const char *dpath = ml_config_str(e->cfg, "data.path", "");
    const char *habitats[ML_CAMO_HABITATS];
    int n_habitats = ml_config_len(e->cfg, "data.habitats");
    if (n_habitats == 0) {
        ml_errorf("data.habitats: an empty list, expected 1 to %d of foliage, sand, underwater", ML_CAMO_HABITATS);
        goto fail;
    }
    n_habitats = n_habitats < 0 ? 0 : n_habitats > ML_CAMO_HABITATS ? ML_CAMO_HABITATS : n_habitats;
    for (int i = 0; i < n_habitats; i++) {
        char key[64];
        snprintf(key, sizeof key, "data.habitats.%d", i);
        habitats[i] = ml_config_str(e->cfg, key, "");
    }
    ml_data_cfg dc = {
        .dataset = ml_config_str(e->cfg, "data.dataset", "synthetic"),
        .path = dpath,
        .train_images = ml_config_int(e->cfg, "data.train_images", 0),
        .val_images = ml_config_int(e->cfg, "data.val_images", 10000),
        .image_size = (int)ml_config_int(e->cfg, "data.image_size", 0),
        .synthetic_samples = ml_config_int(e->cfg, "data.synthetic_samples", 4096),
        .synthetic_dim = (int)ml_config_int(e->cfg, "data.synthetic_dim", 64),
        .synthetic_classes = (int)ml_config_int(e->cfg, "data.synthetic_classes", 8),
        .seed = (uint64_t)ml_config_int(e->cfg, "train.seed", 1),
        .val_path = ml_config_str(e->cfg, "data.val_path", ""),
        .camouflage_samples = ml_config_int(e->cfg, "data.camouflage_samples", 0),
        .difficulty = ml_config_float(e->cfg, "data.difficulty", 0.5),
        .habitats = habitats,
        .n_habitats = n_habitats,
    };
    if (ml_data_load(&dc, &e->train, &e->val)) { ml_error_prefix("data"); goto fail; }
    if (e->train.n < 1) { ml_errorf("data: the training split is empty (check data.train_images / data.val_images)"); goto fail; }
    if (build_model(e) || build_losses(e) || build_schedule_state(e) || init_from(e)) goto fail;
    if (build_optim(e)) goto fail;
    e->hcfg = (ml_health_cfg){ml_config_float(e->cfg, "health.active_threshold", 0.1),
                              ml_config_float(e->cfg, "health.collapse_active_fraction", 0.5),
                              ml_config_float(e->cfg, "health.collapse_entropy", 0.5),
                              ml_config_float(e->cfg, "health.collapse_margin", 0.5)};
    e->B = (int)ml_config_int(e->cfg, "train.batch_size", 64);
    uint64_t seed = (uint64_t)ml_config_int(e->cfg, "train.seed", 1);
    e->train_b = ml_batcher_new(&e->train, e->B, 1, seed);
    e->val_b = e->val.n > 0 ? ml_batcher_new(&e->val, e->B, 0, seed) : NULL;
    size_t D = (size_t)e->train.C * e->train.H * e->train.W;
    e->xb = ml_alloc_floats((size_t)e->B * D);
    if (e->model->seg && !(e->mb = ml_alloc_floats((size_t)e->B * e->train.H * e->train.W))) goto fail;
    if (ml_segrun_init(e)) goto fail;
    e->yb = ml_calloc((size_t)e->B, sizeof(int32_t));
    e->ids = ml_calloc((size_t)e->B, sizeof(int32_t));
    if (!e->train_b || (e->val.n > 0 && !e->val_b) || !e->xb || !e->yb || !e->ids) goto fail;
    e->progress_tty = isatty(2);
    if (ml_steplog_init(e)) goto fail;
    return e;
fail:
    ml_exp_free(e);
    return NULL;
}

const char *ml_exp_scratch(ml_experiment *e) {
    if (e->scratch) return e->scratch;
    const char *tmp = getenv("TMPDIR");
    char path[ML_PATH_MAX];
    snprintf(path, sizeof path, "%s/moelab-rank%d-XXXXXX", tmp && *tmp ? tmp : "/tmp", e->rank);
    if (!mkdtemp(path)) {
        ml_errorf("rank %d: cannot create its scratch directory %s: %s", e->rank, path, strerror(errno));
        return NULL;
    }
    return e->scratch = ml_strdup(path);
}

int ml_exp_open_results(ml_experiment *e) {
    const char *at = ml_config_str(e->cfg, "results.run_dir", "");
    char own[ML_PATH_MAX];
    if (e->rank > 0) { /* rank 0 writes the run directory; the others, their own copy */
        const char *s = ml_exp_scratch(e);
        if (!s) return ML_ERR;
        snprintf(own, sizeof own, "%s/run", s);
        at = own;
    }
    e->res = *at ? ml_results_open_at(at)
                 : ml_results_open(ml_config_str(e->cfg, "results.dir", "results"), e->experiment,
                                   ml_config_str(e->cfg, "results.run_id", ""));
    if (!e->res) return ML_ERR;
    ml_plugins_forbid_dir(ml_results_dir(e->res)); /* the script writes there: never a plugin from it */
    if (ml_prov_begin(e)) return ML_ERR;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.yaml", ml_results_dir(e->res));
    if (ml_config_write(e->cfg, path)) return ML_ERR;
    e->started = ml_now();
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, "config", ml_config_path(e->cfg));
    ml_json_int(&j, "train_images", e->train.n);
    ml_json_int(&j, "val_images", e->val.n);
    ml_json_int(&j, "parameters", (int64_t)ml_params_numel(&e->model->P));
    int rc = ml_exp_event_json(e, "run_start", &j);
    ml_json_free(&j);
    if (!rc && e->init_copied) {
        ml_json_begin(&j);
        ml_json_str(&j, "path", ml_config_str(e->cfg, "model.init_from", ""));
        ml_json_str(&j, "match", ml_config_str(e->cfg, "model.init_match", "*"));
        ml_json_int(&j, "tensors", e->init_copied);
        ml_json_int(&j, "matching", e->init_matched);
        rc = ml_exp_event_json(e, "init_from", &j);
        ml_json_free(&j);
    }
    if (ml_exp_write_summary(e, "running")) rc = ML_ERR;
    return rc;
}

const char *ml_exp_run_dir(const ml_experiment *e) { return e->res ? ml_results_dir(e->res) : NULL; }

/* ------------------------------------------------------------- metrics row */

int ml_exp_log(ml_experiment *e, const char *name, double value) {
    for (int i = 0; i < e->n_cols; i++)
        if (strcmp(e->col_name[i], name) == 0) {
            e->col_value[i] = value;
            return ML_OK;
        }
    if (e->n_cols == ML_MAX_COLS) return ml_errorf("log: more than %d metrics columns in one epoch", ML_MAX_COLS);
    if (!(e->col_name[e->n_cols] = ml_strdup(name))) return ML_ERR;
    e->col_value[e->n_cols++] = value;
    e->row_pending = 1;
    return ML_OK;
}

static void epoch_line(ml_experiment *e);

static int flush_row(ml_experiment *e) {
    if (!e->row_pending || !e->res) return ML_OK;
    epoch_line(e);
    int rc = ml_results_metrics_row(e->res, (const char *const *)e->col_name, e->col_value, e->n_cols);
    for (int i = 0; i < e->last_n; i++) free(e->last_name[i]);
    memcpy(e->last_name, e->col_name, sizeof e->last_name);
    memcpy(e->last_value, e->col_value, sizeof e->last_value);
    e->last_n = e->n_cols;
    e->n_cols = 0;
    e->row_pending = 0;
    return rc;
}

/* Events a researcher wants to see as they happen (warnings print themselves). */
static int echoed(const char *kind) {
    static const char *const k[] = {"experts_added", "experts_removed", "intervention", "router_options", "frozen", "unfrozen", "resumed"};
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (!strcmp(kind, k[i])) return 1;
    return 0;
}

int ml_exp_event(ml_experiment *e, const char *kind, const char *fields_json) {
    if (!e->res) return ML_OK;
    int rc = ml_results_event(e->res, e->epoch, e->step, kind, fields_json);
    if (!rc && !e->quiet && echoed(kind))
        fprintf(stderr, "%sepoch %d step %" PRId64 ": %s {%s}\n", e->progress_tty ? "\r\033[K" : "", e->epoch, e->step,
                kind, fields_json && *fields_json ? fields_json : "}");
    return rc;
}

int ml_exp_event_json(ml_experiment *e, const char *kind, const ml_json *fields) {
    if (!fields->b.buf || fields->b.len < 1) return ml_errorf("event '%s': no fields (out of memory?)", kind);
    char *inner = ml_calloc(fields->b.len, 1); /* the fields without the opening brace */
    if (!inner) return ML_ERR;
    memcpy(inner, fields->b.buf + 1, fields->b.len - 1);
    int rc = ml_exp_event(e, kind, inner);
    free(inner);
    return rc;
}

/* ------------------------------------------------------------------ training */

/* h:mm:ss (or m:ss) of a duration in seconds. */
static void fmt_eta(double s, char *out, size_t cap) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(out, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(out, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(out, cap, "%ld:%02ld", t / 60, t % 60);
}

/* Seconds left: the rest of this epoch at its pace, then the config's remaining epochs at
   the mean pace of the epochs this process trained. */
static double eta(const ml_experiment *e, double epoch_left) {
    int64_t total = ml_config_int(e->cfg, "train.epochs", 0);
    double per = e->timed_epochs ? e->epoch_seconds / e->timed_epochs : 0;
    double rest = total > e->epoch ? (double)(total - e->epoch) * per : 0;
    return epoch_left + rest;
}

/* The bar of the epoch in progress, on a terminal: task and balancing loss apart (the total
   hides a task loss that is small beside its balance term). */
static void progress(ml_experiment *e, int64_t done, int64_t total, double task, double aux, double t0, int final) {
    if (!e->progress_tty || e->quiet) return;
    if (final) {
        fputs("\r\033[K", stderr); /* the epoch's line follows when its row is complete */
        return;
    }
    double dt = ml_now() - t0, rate = dt > 0 ? done / dt : 0;
    int w = 24, fill = total ? (int)(w * done / total) : w;
    char bar[64], left[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fmt_eta(eta(e, rate > 0 ? (double)(total - done) / rate : 0), left, sizeof left);
    int64_t epochs = ml_config_int(e->cfg, "train.epochs", 0);
    char of[32] = "";
    if (epochs >= e->epoch) snprintf(of, sizeof of, "/%" PRId64, epochs);
    fprintf(stderr, "\r\033[Kepoch %d%s [%s] %3d%% task %.5g aux %.3g %.0f img/s ETA %s", e->epoch, of, bar,
            total ? (int)(100 * done / total) : 100, task, aux, rate, left);
}

/* The value of a column of the row being written, or NAN. */
static double row_value(const ml_experiment *e, const char *name) {
    for (int i = 0; i < e->n_cols; i++)
        if (!strcmp(e->col_name[i], name)) return e->col_value[i];
    return NAN;
}

/* One line per epoch once its metrics row is complete (the script's evaluate and log
   included): task and validation loss, experts and active experts per layer, the collapse
   flag, time and ETA. */
static void epoch_line(ml_experiment *e) {
    if (e->quiet || !e->n_cols) return;
    double ep = row_value(e, "epoch");
    if (ep != ep) return;
    ml_strbuf b = {0};
    int64_t epochs = ml_config_int(e->cfg, "train.epochs", 0);
    ml_strbuf_printf(&b, "epoch %.0f", ep);
    if (epochs >= ep) ml_strbuf_printf(&b, "/%" PRId64, epochs);
    double task = row_value(e, "task_loss"), val = row_value(e, "val_loss");
    ml_strbuf_puts(&b, ":");
    if (task == task) ml_strbuf_printf(&b, " task %.6g", task);
    if (val == val) ml_strbuf_printf(&b, "%s val %.6g", task == task ? "," : "", val);
    double iou = row_value(e, "val_iou"), dice = row_value(e, "val_dice");
    if (iou == iou) ml_strbuf_printf(&b, ", IoU %.4f, Dice %.4f", iou, dice);
    char col[64], collapsed[256] = "";
    for (int l = 0; l < e->model->L; l++) {
        snprintf(col, sizeof col, "moe%d_experts", l + 1);
        double n = row_value(e, col);
        snprintf(col, sizeof col, "moe%d_active", l + 1);
        double act = row_value(e, col);
        snprintf(col, sizeof col, "moe%d_collapsed", l + 1);
        double c = row_value(e, col);
        if (n == n && act == act) ml_strbuf_printf(&b, "%s moe%d %.0f/%.0f active", l ? "," : " |", l + 1, act, n);
        snprintf(col, sizeof col, "moe%d_new_expert_share", l + 1);
        double share = row_value(e, col);
        if (share == share) ml_strbuf_printf(&b, " (new experts %.2fx fair)", share);
        if (c == 1) {
            size_t k = strlen(collapsed);
            snprintf(collapsed + k, sizeof collapsed - k, "%smoe%d", k ? ", " : "", l + 1);
        }
    }
    if (*collapsed) ml_strbuf_printf(&b, " | COLLAPSED: %s", collapsed);
    double sec = row_value(e, "seconds");
    if (sec == sec) {
        char left[32];
        fmt_eta(eta(e, 0), left, sizeof left);
        ml_strbuf_printf(&b, " | %.1f s", sec);
        if (epochs > ep) ml_strbuf_printf(&b, ", ETA %s", left);
    }
    if (b.buf) fprintf(stderr, "%s%s\n", e->progress_tty ? "\r\033[K" : "", b.buf);
    ml_strbuf_free(&b);
}

static int aux_losses(ml_experiment *e, int training, double *total, double *per_loss) {
    ml_model *m = e->model;
    for (int l = 0; l < m->L; l++) {
        ml_moe *q = m->moe[l];
        ml_routing_record rec;
        ml_moe_record(q, &rec);
        ml_health_acc_add(training ? e->acc[l] : e->vacc[l], &rec, ml_moe_dropped(q));
        if (training && ml_steplog_route(e, l, &rec, ml_moe_dropped(q))) return ML_ERR;
        if (training && ml_schedule_inst_observe(&e->sched, l, e->epoch, e->step + 1, &rec, ml_moe_dropped(q)))
            return ML_ERR;
        for (int i = 0; i < e->n_losses; i++) {
            ml_loss_slot *s = &e->loss[i];
            double v = 0;
            int grad = training && s->coef != 0;
            if (ml_loss_inst_eval(&s->inst[l], &rec, (float)s->coef, grad ? q->dlogits : NULL, grad ? q->dprob : NULL,
                                  grad ? q->dgate_loss : NULL, &v))
                return ML_ERR;
            per_loss[i] += v;
            *total += s->coef * v;
        }
    }
    return ML_OK;
}

/* train.nonfinite: stop — the error names the step and the first tensor at fault. */
static int nonfinite_grad_error(ml_experiment *e, int64_t step) {
    int k = 0, h = ml_params_grad_first_nonfinite(&e->model->P, &k);
    return ml_errorf("epoch %d step %" PRId64 ": non-finite gradient in tensor '%s' (first of %d tensors); "
                     "hint: lower optim.lr or the loss coefficients, check the plugins' gradients, "
                     "or set train.nonfinite: skip_step to skip such steps",
                     e->epoch, step, h >= 0 ? e->model->P.t[h].name : "?", k);
}

/* train.nonfinite: skip_step — the step's update is dropped, an event records why. */
static int nonfinite_skip(ml_experiment *e, int64_t step, double loss, int warn) {
    int k = 0, h = isfinite(loss) ? ml_params_grad_first_nonfinite(&e->model->P, &k) : -1;
    const char *tensor = h >= 0 ? e->model->P.t[h].name : NULL;
    if (warn)
        ml_log(ML_LOG_WARN, "epoch %d step %" PRId64 ": non-finite %s%s%s; update skipped (train.nonfinite: skip_step)",
               e->epoch, step, tensor ? "gradient in tensor '" : "loss", tensor ? tensor : "", tensor ? "'" : "");
    ml_json j;
    ml_json_begin(&j);
    ml_json_int(&j, "skipped_step", step);
    ml_json_str(&j, "reason", tensor ? "gradient" : "loss");
    ml_json_num(&j, "loss", loss);
    ml_json_str(&j, "tensor", tensor);
    ml_json_int(&j, "tensors", k);
    int rc = ml_exp_event_json(e, "nonfinite_step", &j);
    ml_json_free(&j);
    return rc;
}

/* The ranks of a data-parallel job stop together: a signal reaches them at different
   moments, so each step they agree on whether one came (to any of them). */
static int agreed_stop(ml_experiment *e) {
    if (!e->comm) return ML_OK;
    int stop = ml_exp_interrupted;
    if (e->comm->max_int(&stop)) return ML_ERR;
    if (stop && !ml_exp_interrupted) ml_exp_interrupted = stop;
    return ML_OK;
}

static int train_epoch(ml_experiment *e, ml_step_hook hook, void *ctx, ml_epoch_stats *out) {
    ml_epoch_acc *a = &e->ep;
    /* a signal that came outside training (script code, evaluate) stops at the epoch boundary */
    if (agreed_stop(e)) return ML_ERR;
    if (ml_exp_interrupted && !a->resume_pending) return ml_exp_interrupt(e);
    if (flush_row(e) || ml_exp_write_summary(e, "running")) return ML_ERR; /* summary = metrics.csv so far */
    ml_model *m = e->model;
    e->epoch++;
    ml_batcher_begin_epoch(e->train_b, e->epoch);
    int run_hook = 0;
    if (a->resume_pending) { /* continue the epoch an interrupt checkpoint stopped */
        ml_batcher_seek(e->train_b, a->position);
        run_hook = a->hook_pending;
        a->resume_pending = 0;
    } else {
        for (int l = 0; l < m->L; l++) {
            ml_health_acc_reset(e->acc[l]);
            ml_router_inst_metrics_reset(&m->moe[l]->router, ML_METRIC_TRAIN);
        }
        memset(a, 0, sizeof *a);
    }
    a->in_epoch = 1;
    /* test hook (docs/lua-api.md): behave as if SIGINT arrived during step N */
    const char *stop = getenv("MOELAB_TEST_INTERRUPT_AT_STEP");
    int64_t stop_step = stop ? strtoll(stop, NULL, 10) : 0;
    /* test hook: sleep this many milliseconds after each step (a run slow enough to be
       signalled, preempted or requeued while it trains; the results do not change) */
    const char *nap = getenv("MOELAB_TEST_STEP_SLEEP_MS");
    long nap_ms = nap ? strtol(nap, NULL, 10) : 0;
    double t0 = ml_now(), last_draw = 0;
    double *aux_sum = a->aux_sum;
    int skip_nonfinite = !strcmp(ml_config_str(e->cfg, "train.nonfinite", "stop"), "skip_step");
    int B;
    if (run_hook && hook) {
        a->in_hook = 1;
        int rc = hook(ctx);
        a->in_hook = 0;
        if (rc) return ML_ERR;
    }
    while ((B = ml_batcher_next_masks(e->train_b, e->xb, e->mb, e->yb, e->ids)) > 0) {
        ml_params_zero_grad_used(&m->P); /* the experts the last step used, and the rest of the model */
        /* every rank reads the whole batch (the same data order as one process) and computes
           its part of it (ml_model_forward_part) */
        if (ml_model_forward_part(m, e->comm, e->xb, e->mb, B, 1, e->ids, e->train.y ? e->yb : NULL,
                                  e->train.num_classes))
            return ML_ERR;
        double total = m->task_loss, aux_step[ML_MAX_LOSSES] = {0};
        if (aux_losses(e, 1, &total, aux_step)) return ML_ERR;
        /* train.nonfinite: a non-finite loss or gradient never reaches the weights */
        int skip = 0;
        if (!isfinite(total)) {
            if (!skip_nonfinite)
                return ml_errorf("epoch %d step %" PRId64 ": the loss is %g (diverged); hint: lower optim.lr or the loss coefficients",
                                 e->epoch, e->step + 1, total);
            skip = 1;
        } else if (ml_model_backward(m)) {
            return ML_ERR;
        } else if (!ml_params_grad_finite_used(&m->P)) {
            if (!skip_nonfinite) return nonfinite_grad_error(e, e->step + 1);
            skip = 1;
        }
        if (skip && nonfinite_skip(e, e->step + 1, total, a->skipped++ == 0)) return ML_ERR;
        if (!skip) ml_optim_step(&e->opt, &m->P);
        e->step++;
        e->images_seen += B;
        a->seen += B;
        a->steps++;
        if (!skip) { /* a skipped step counts in seen/steps, not in the epoch's losses */
            a->used += B;
            a->loss_sum += total * B;
            a->task_sum += m->task_loss * B;
            for (int i = 0; i < e->n_losses; i++) aux_sum[i] += aux_step[i] / m->L * B;
        }
        for (int i = 0; i < e->n_losses; i++) aux_step[i] /= m->L;
        if (ml_steplog_step(e, !skip, B, total, m->task_loss, aux_step)) return ML_ERR;
        double now = ml_now();
        if (e->progress_tty && now - last_draw > 0.1) {
            double task = a->used ? a->task_sum / a->used : 0;
            progress(e, a->seen, e->train.n, task, a->used ? a->loss_sum / a->used - task : 0, t0, 0);
            last_draw = now;
        }
        if (nap_ms > 0 && nap_ms <= 10000) nanosleep(&(struct timespec){nap_ms / 1000, nap_ms % 1000 * 1000000L}, NULL);
        if (stop_step > 0 && e->step == stop_step) ml_exp_interrupted = 2;
        if (agreed_stop(e)) return ML_ERR;
        /* before the hook: a resume runs this step's hook first, as the uninterrupted run did */
        if (ml_exp_interrupted) return ml_exp_interrupt(e);
        if (hook) {
            a->in_hook = 1;
            int rc = hook(ctx);
            a->in_hook = 0;
            if (rc) return ML_ERR;
        }
    }
    for (int l = 0; l < m->L; l++) {
        if (ml_moe_epoch_end(m->moe[l], e->epoch)) return ML_ERR;
        /* the completed epoch's routing, for growth schedules (ml_progress.last_health) */
        char *t = ml_health_acc_to_text(e->acc[l]);
        int rc = t ? ml_health_acc_from_text(e->last_acc[l], t) : ML_ERR;
        free(t);
        if (rc) return ML_ERR;
    }
    e->have_last = 1;
    memset(out, 0, sizeof *out);
    out->epoch = e->epoch;
    out->seconds = ml_now() - t0;
    int64_t seen = a->seen;
    out->loss = a->used ? a->loss_sum / a->used : 0;
    out->task_loss = a->used ? a->task_sum / a->used : 0;
    out->images_seen = e->images_seen;
    out->steps = a->steps;
    out->img_per_s = out->seconds > 0 ? seen / out->seconds : 0;
    out->n_aux = e->n_losses;
    for (int i = 0; i < e->n_losses; i++) {
        snprintf(out->aux_name[i], sizeof out->aux_name[i], "%s", e->loss[i].name);
        out->aux_value[i] = a->used ? aux_sum[i] / a->used : 0;
    }
    progress(e, seen, e->train.n, 0, 0, t0, 1);
    e->epoch_seconds += out->seconds;
    e->timed_epochs++;

    /* the epoch's row: progress, losses, coefficients, routing health per layer */
    ml_exp_log(e, "epoch", e->epoch);
    ml_exp_log(e, "images_seen", (double)e->images_seen);
    ml_exp_log(e, "seconds", out->seconds);
    ml_exp_log(e, "loss", out->loss);
    ml_exp_log(e, "task_loss", out->task_loss);
    if (skip_nonfinite) {
        ml_exp_log(e, "skipped_steps", (double)a->skipped);
        if (a->skipped > 1)
            ml_log(ML_LOG_WARN, "epoch %d: %" PRId64 " steps skipped for non-finite values (train.nonfinite: skip_step)",
                   e->epoch, a->skipped);
    }
    char col[128];
    for (int i = 0; i < e->n_losses; i++) {
        ml_exp_log(e, e->loss[i].name, out->aux_value[i]);
        snprintf(col, sizeof col, "coef_%s", e->loss[i].name);
        ml_exp_log(e, col, e->loss[i].coef);
    }
    for (int l = 0; l < m->L; l++) {
        ml_health h;
        if (ml_exp_health(e, l, 0, &h)) return ML_ERR;
        struct { const char *k; double v; } cols[] = {
            {"experts", h.num_experts}, {"active", h.active}, {"dead", h.dead}, {"cv", h.cv},
            {"entropy_norm", h.marginal_entropy_norm}, {"effective_experts", h.effective_experts},
            {"max_share", h.max_share}, {"kl_uniform", h.kl_uniform}, {"slots_per_sample", h.slots_per_sample},
            {"sample_entropy", h.mean_sample_entropy},
            {"mutual_info", h.mutual_info}, {"max_load", h.max_load_ratio}, {"dropped", h.dropped_share},
            {"nmi", h.nmi_label}, {"load_balance", h.load_balance}, {"collapsed", h.collapsed}};
        for (size_t i = 0; i < sizeof cols / sizeof *cols; i++) {
            snprintf(col, sizeof col, "moe%d_%s", l + 1, cols[i].k);
            ml_exp_log(e, col, cols[i].v);
        }
        /* what the router reported (ABI 1.1 metrics): the epoch's mean of its training
           forwards, then its epoch-end values */
        const char *mn[ML_ROUTER_MAX_METRICS];
        double mv[ML_ROUTER_MAX_METRICS];
        static const int windows[2] = {ML_METRIC_TRAIN, ML_METRIC_EPOCH};
        for (int wi = 0; wi < 2; wi++) {
            int w = windows[wi];
            int k = ml_router_inst_metrics(&m->moe[l]->router, w, mn, mv, ML_ROUTER_MAX_METRICS);
            for (int i = 0; i < k; i++) {
                snprintf(col, sizeof col, "moe%d_%s", l + 1, mn[i]);
                ml_exp_log(e, col, mv[i]);
            }
            ml_router_inst_metrics_reset(&m->moe[l]->router, w);
        }
        const char *names[ML_MAX_TENSORS];
        const float *vals[ML_MAX_TENSORS];
        int nx = ml_moe_reported_state(m->moe[l], names, vals, ML_MAX_TENSORS);
        int rc = e->res ? ml_results_routing_rows(e->res, e->epoch, l + 1, &h, names, vals, nx) : ML_OK;
        ml_health_free(&h);
        if (rc) return ML_ERR;
    }
    if (ml_steplog_epoch_end(e)) return ML_ERR;
    return ml_exp_write_summary(e, "running");
}

int ml_exp_train_epoch(ml_experiment *e, ml_step_hook hook, void *ctx, ml_epoch_stats *out) {
    int rc = train_epoch(e, hook, ctx, out);
    e->ep.in_epoch = 0;
    return rc;
}

int ml_exp_evaluate(ml_experiment *e, ml_eval_stats *out) {
    memset(out, 0, sizeof *out);
    ml_model *m = e->model;
    for (int l = 0; l < m->L; l++) {
        ml_health_acc_reset(e->vacc[l]);
        ml_router_inst_metrics_reset(&m->moe[l]->router, ML_METRIC_EVAL);
    }
    out->n_aux = e->n_losses;
    for (int i = 0; i < e->n_losses; i++) snprintf(out->aux_name[i], sizeof out->aux_name[i], "%s", e->loss[i].name);
    if (!e->val_b) return ml_errorf("evaluate: there is no validation split (data.val_images is 0)");
    ml_batcher_begin_epoch(e->val_b, 1);
    double sum = 0, aux_sum[ML_MAX_LOSSES] = {0};
    int64_t n = 0;
    int B;
    if (ml_segrun_begin(e)) return ML_ERR;
    while ((B = ml_batcher_next_masks(e->val_b, e->xb, e->mb, e->yb, e->ids)) > 0) {
        if (ml_model_forward(m, e->xb, e->mb, B, 0, e->ids, e->val.y ? e->yb : NULL, e->val.num_classes)) return ML_ERR;
        double total = 0, aux[ML_MAX_LOSSES] = {0};
        if (aux_losses(e, 0, &total, aux)) return ML_ERR;
        if (ml_segrun_batch(e, B, e->xb, e->mb, e->val.y ? e->yb : NULL, e->ids)) return ML_ERR;
        sum += m->task_loss * B;
        for (int i = 0; i < e->n_losses; i++) aux_sum[i] += aux[i] / m->L * B;
        n += B;
    }
    out->samples = n;
    out->loss = n ? sum / n : 0;
    if (ml_segrun_end(e)) return ML_ERR;
    for (int i = 0; i < e->n_losses; i++) out->aux_value[i] = n ? aux_sum[i] / n : 0;
    ml_exp_log(e, "val_loss", out->loss);
    char col[128];
    for (int i = 0; i < e->n_losses; i++) {
        snprintf(col, sizeof col, "val_%s", e->loss[i].name);
        ml_exp_log(e, col, out->aux_value[i]);
    }
    for (int l = 0; l < m->L; l++) {
        ml_health h;
        if (ml_exp_health(e, l, 1, &h)) return ML_ERR;
        snprintf(col, sizeof col, "val_moe%d_active", l + 1);
        ml_exp_log(e, col, h.active);
        snprintf(col, sizeof col, "val_moe%d_nmi", l + 1);
        ml_exp_log(e, col, h.nmi_label);
        snprintf(col, sizeof col, "val_moe%d_mutual_info", l + 1);
        ml_exp_log(e, col, h.mutual_info);
        snprintf(col, sizeof col, "val_moe%d_cv", l + 1);
        ml_exp_log(e, col, h.cv);
        snprintf(col, sizeof col, "val_moe%d_entropy_norm", l + 1);
        ml_exp_log(e, col, h.marginal_entropy_norm);
        ml_health_free(&h);
        const char *mn[ML_ROUTER_MAX_METRICS];
        double mv[ML_ROUTER_MAX_METRICS];
        int k = ml_router_inst_metrics(&m->moe[l]->router, ML_METRIC_EVAL, mn, mv, ML_ROUTER_MAX_METRICS);
        for (int i = 0; i < k; i++) {
            snprintf(col, sizeof col, "val_moe%d_%s", l + 1, mn[i]);
            ml_exp_log(e, col, mv[i]);
        }
    }
    if (out->loss < e->best_val) {
        e->best_val = out->loss;
        e->best_epoch = e->epoch;
    }
    return ML_OK;
}

int ml_exp_health(ml_experiment *e, int layer, int val, ml_health *out) {
    if (layer < 0 || layer >= e->model->L)
        return ml_errorf("health: layer %d does not exist (model has %d)", layer + 1, e->model->L);
    return ml_health_compute(val ? e->vacc[layer] : e->acc[layer], &e->hcfg, out);
}

/* The layer whose experts a tensor's rows follow (per-expert router or loss tensors). */
static int set_layer(const ml_tensor_set *s, const ml_params *blk, int h, int l) {
    if (s->blk != blk) return -2;
    for (int i = 0; i < s->n; i++)
        if (s->handle[i] == h) return s->decl[i].per_expert ? l : -1;
    return -2;
}

int ml_exp_growing_layer(const ml_experiment *e, const ml_params *blk, int h) {
    const ml_model *m = e->model;
    for (int l = 0; l < m->L; l++) {
        const ml_router_inst *ri = &m->moe[l]->router;
        int r = set_layer(&ri->param, blk, h, l);
        if (r == -2) r = set_layer(&ri->state, blk, h, l);
        for (int i = 0; r == -2 && i < e->n_losses; i++) r = set_layer(&e->loss[i].inst[l].state, blk, h, l);
        const ml_tensor_set *ss = ml_schedule_inst_state(&e->sched, l);
        if (r == -2 && ss) r = set_layer(ss, blk, h, l);
        if (r != -2) return r;
    }
    return -1;
}

int ml_growth_init_from_name(const char *name) {
    static const char *const names[] = {"random", "copy", "drop_upcycle"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

const char *ml_growth_init_name(ml_expert_init init) {
    return init == ML_EXPERT_INIT_COPY ? "copy" : init == ML_EXPERT_INIT_DROP_UPCYCLE ? "drop_upcycle" : "random";
}

void ml_exp_growth_defaults(const ml_experiment *e, ml_growth *g) {
    int init = ml_growth_init_from_name(ml_config_str(e->cfg, "growth.init", "random"));
    g->init = init < 0 ? ML_EXPERT_INIT_RANDOM : (ml_expert_init)init;
    g->source = (int)ml_config_int(e->cfg, "growth.source", -1);
    g->noise = ml_config_float(e->cfg, "growth.noise", 0.0);
    g->ratio = ml_config_float(e->cfg, "growth.ratio", 0.5);
    g->router_noise = ml_config_float(e->cfg, "growth.router_noise", 0.01);
}

/* The experts of layer ranked by load, heaviest first (ties: the lower id): the share of
   dispatched slots in this epoch so far, or in the last epoch when this one has none yet. */
static int rank_by_load(ml_experiment *e, int layer, int *rank) {
    const int N = e->model->moe[layer]->N;
    ml_health h;
    memset(&h, 0, sizeof h);
    if (ml_health_compute(e->acc[layer], &e->hcfg, &h)) return ML_ERR;
    if (!h.slots && e->have_last) {
        ml_health_free(&h);
        if (ml_health_compute(e->last_acc[layer], &e->hcfg, &h)) return ML_ERR;
    }
    for (int i = 0; i < N; i++) rank[i] = i;
    /* insertion sort: stable, so ties keep the lower id first */
    for (int i = 1; i < N; i++) {
        int x = rank[i], k = i;
        double ux = h.utilisation && x < h.num_experts ? h.utilisation[x] : 0;
        while (k > 0) {
            int y = rank[k - 1];
            double uy = h.utilisation && y < h.num_experts ? h.utilisation[y] : 0;
            if (uy >= ux) break;
            rank[k] = y;
            k--;
        }
        rank[k] = x;
    }
    ml_health_free(&h);
    return ML_OK;
}

int ml_exp_grow_layer(ml_experiment *e, int layer, int n, const int *variant) {
    ml_model *m = e->model;
    int old = layer >= 0 && layer < m->L ? m->moe[layer]->N : 0;
    if (ml_model_grow_begin(m, layer, n, variant)) return ML_ERR;
    for (int i = 0; i < e->n_losses; i++)
        if (ml_loss_inst_grow_declare(&e->loss[i].inst[layer], old + n)) return ML_ERR;
    if (ml_schedule_inst_grow_declare(&e->sched, layer, old + n)) return ML_ERR;
    if (ml_model_grow_end(m, layer, old)) return ML_ERR;
    ml_optim_place(&e->opt, &m->P); /* the new experts join the groups their names match */
    if (ml_health_acc_resize(e->acc[layer], m->moe[layer]->N) || ml_health_acc_resize(e->vacc[layer], m->moe[layer]->N))
        return ML_ERR;
    if (e->last_acc && e->last_acc[layer] && ml_health_acc_resize(e->last_acc[layer], m->moe[layer]->N)) return ML_ERR;
    return ml_steplog_grow(e, layer, old, m->moe[layer]->N, 0);
}

/* "[a,b,c]" */
static char *int_list(const int *v, int n) {
    ml_strbuf b = {0};
    ml_strbuf_puts(&b, "[");
    for (int i = 0; i < n; i++) ml_strbuf_printf(&b, "%s%d", i ? "," : "", v[i]);
    ml_strbuf_puts(&b, "]");
    if (b.oom) {
        free(b.buf);
        ml_errorf("out of memory");
        return NULL;
    }
    return b.buf;
}

int ml_exp_add_experts(ml_experiment *e, int layer, int n, const char *reason) {
    return ml_exp_add_experts_with(e, layer, n, reason, NULL);
}

int ml_exp_add_experts_with(ml_experiment *e, int layer, int n, const char *reason, const ml_growth *g) {
    ml_model *m = e->model;
    if (layer < 0 || layer >= m->L) return ml_errorf("add_experts: layer %d does not exist (model has %d)", layer + 1, m->L);
    ml_moe *q = m->moe[layer];
    int old = q->N;
    if (n < 1 || n > ML_MOE_MAX_EXPERTS - old)
        return ml_errorf("add_experts: a layer holds at most %d experts (layer %d has %d, asked for %d more)",
                         ML_MOE_MAX_EXPERTS, layer + 1, old, n);
    ml_growth rnd = {ML_EXPERT_INIT_RANDOM, -1, 0, 0.5, 0};
    if (!g) g = &rnd;
    if (g->init != ML_EXPERT_INIT_RANDOM) {
        if (g->source >= old)
            return ml_errorf("add_experts: source expert %d does not exist (layer %d has experts 0..%d)", g->source,
                             layer + 1, old - 1);
        if (!(g->noise >= 0 && isfinite(g->noise)) || !(g->router_noise >= 0 && isfinite(g->router_noise)) ||
            !(g->ratio >= 0 && g->ratio <= 1))
            return ml_errorf("add_experts: noise and router_noise must be finite and >= 0, ratio in [0, 1]");
    }
    int *src = ml_calloc((size_t)n + (size_t)old, sizeof *src), *var = ml_calloc((size_t)n, sizeof *var);
    if (!src || !var) {
        free(src), free(var);
        return ML_ERR;
    }
    int rc = ML_OK;
    if (g->init != ML_EXPERT_INIT_RANDOM) {
        /* the sources: the one asked for, or the most loaded experts, heaviest first (the
           n-th new expert copies the n-th heaviest, round the layer again past N) */
        int *rank = src + n;
        if (g->source < 0) rc = rank_by_load(e, layer, rank);
        for (int j = 0; j < n && rc == ML_OK; j++) {
            src[j] = g->source >= 0 ? g->source : rank[j % old];
            var[j] = ml_moe_variant(q, src[j]); /* a copy has its source's structure */
        }
    }
    if (rc == ML_OK) rc = ml_model_grow_begin(m, layer, n, g->init != ML_EXPERT_INIT_RANDOM ? var : NULL);
    for (int i = 0; i < e->n_losses && rc == ML_OK; i++) rc = ml_loss_inst_grow_declare(&e->loss[i].inst[layer], old + n);
    if (rc == ML_OK) rc = ml_schedule_inst_grow_declare(&e->sched, layer, old + n);
    if (rc == ML_OK) rc = ml_model_grow_commit(m);
    if (rc == ML_OK && g->init != ML_EXPERT_INIT_RANDOM) {
        ml_moe_init in = {g->init, src, g->noise, g->ratio, g->router_noise, &m->init_rng};
        rc = ml_moe_init_experts(q, old, n, &in);
    }
    if (rc == ML_OK) rc = ml_model_grow_end(m, layer, old);
    if (rc == ML_OK) {
        ml_optim_place(&e->opt, &m->P); /* the new experts join the groups their names match */
        if (ml_health_acc_resize(e->acc[layer], q->N) || ml_health_acc_resize(e->vacc[layer], q->N) ||
            (e->last_acc && e->last_acc[layer] && ml_health_acc_resize(e->last_acc[layer], q->N)) ||
            ml_steplog_grow(e, layer, old, q->N, 0) || ml_steplog_grow(e, layer, old, q->N, 1))
            rc = ML_ERR;
    }
    char *sources = rc == ML_OK && g->init != ML_EXPERT_INIT_RANDOM ? int_list(src, n) : NULL;
    if (rc == ML_OK && g->init != ML_EXPERT_INIT_RANDOM && !sources) rc = ML_ERR;
    if (rc == ML_OK) {
        ml_json j;
        ml_json_begin(&j);
        ml_json_int(&j, "layer", layer + 1);
        ml_json_int(&j, "added", n);
        ml_json_int(&j, "from", old);
        ml_json_int(&j, "to", q->N);
        ml_json_int(&j, "images_seen", e->images_seen);
        ml_json_str(&j, "reason", reason ? reason : "script");
        if (g->init != ML_EXPERT_INIT_RANDOM) { /* runs that add random experts write what they always wrote */
            ml_json_str(&j, "init", ml_growth_init_name(g->init));
            ml_json_raw(&j, "sources", sources);
            if (g->init == ML_EXPERT_INIT_DROP_UPCYCLE) ml_json_num(&j, "ratio", g->ratio);
        }
        rc = ml_exp_event_json(e, "experts_added", &j);
        ml_json_free(&j);
    }
    free(sources), free(src), free(var);
    return rc;
}

int ml_exp_keep_experts(ml_experiment *e, int layer, const int *kept, int nkeep) {
    ml_model *m = e->model;
    if (layer < 0 || layer >= m->L)
        return ml_errorf("remove_experts: layer %d does not exist (model has %d)", layer + 1, m->L);
    ml_moe *q = m->moe[layer];
    const int old = q->N;
    if (ml_model_remove_begin(m, layer, kept, nkeep)) return ML_ERR;
    for (int i = 0; i < e->n_losses; i++)
        if (ml_tensor_set_keep_rows(&e->loss[i].inst[layer].state, kept, nkeep)) return ML_ERR;
    if (ml_schedule_inst_keep_rows(&e->sched, layer, kept, nkeep)) return ML_ERR;
    if (ml_model_remove_end(m, layer, kept, old)) return ML_ERR;
    /* renamed tensors join the groups their new names match (their frozen flags stay) */
    for (int j = 0; j < q->N; j++)
        for (int i = 0; i < q->nt[j]; i++) ml_optim_regroup(&e->opt, &m->P, q->th[j][i]);
    if (ml_health_acc_keep(e->acc[layer], kept, nkeep) || ml_health_acc_keep(e->vacc[layer], kept, nkeep) ||
        (e->last_acc && e->last_acc[layer] && ml_health_acc_keep(e->last_acc[layer], kept, nkeep)))
        return ML_ERR;
    return ml_steplog_keep(e, layer, kept, nkeep);
}

int ml_exp_remove_experts(ml_experiment *e, int layer, const int *ids, int n, const char *reason) {
    ml_model *m = e->model;
    if (layer < 0 || layer >= m->L)
        return ml_errorf("remove_experts: layer %d does not exist (model has %d)", layer + 1, m->L);
    const int N = m->moe[layer]->N;
    if (n < 1) return ml_errorf("remove_experts: no experts to remove");
    if (n >= N)
        return ml_errorf("remove_experts: layer %d has %d experts; removing %d would leave none (at least one must stay)",
                         layer + 1, N, n);
    uint8_t *gone = ml_calloc((size_t)N, 1);
    int *kept = ml_calloc((size_t)N, sizeof *kept), *removed = ml_calloc((size_t)n, sizeof *removed);
    int rc = gone && kept && removed ? ML_OK : ML_ERR;
    for (int i = 0; i < n && rc == ML_OK; i++) {
        if (ids[i] < 0 || ids[i] >= N)
            rc = ml_errorf("remove_experts: expert %d does not exist (layer %d has experts 0..%d)", ids[i], layer + 1, N - 1);
        else if (gone[ids[i]])
            rc = ml_errorf("remove_experts: expert %d is named twice", ids[i]);
        else
            gone[ids[i]] = 1;
    }
    int nkeep = 0, nrem = 0;
    for (int x = 0; x < N && rc == ML_OK; x++) {
        if (gone[x]) removed[nrem++] = x;
        else kept[nkeep++] = x;
    }
    if (rc == ML_OK) rc = ml_exp_keep_experts(e, layer, kept, nkeep);
    char *tk = rc == ML_OK ? int_list(kept, nkeep) : NULL, *tr = rc == ML_OK ? int_list(removed, nrem) : NULL;
    if (rc == ML_OK && (!tk || !tr)) rc = ML_ERR;
    if (rc == ML_OK) {
        ml_json j;
        ml_json_begin(&j);
        ml_json_int(&j, "layer", layer + 1);
        ml_json_raw(&j, "removed", tr);
        ml_json_int(&j, "from", N);
        ml_json_int(&j, "to", nkeep);
        ml_json_raw(&j, "kept", tk); /* the id map: expert j now was expert kept[j] */
        ml_json_int(&j, "images_seen", e->images_seen);
        ml_json_str(&j, "reason", reason ? reason : "script");
        rc = ml_exp_event_json(e, "experts_removed", &j);
        ml_json_free(&j);
    }
    free(tk), free(tr), free(gone), free(kept), free(removed);
    return rc;
}

/* The ABI's view of a layer's health (plugin.h, ml_layer_health). */
static void health_to_abi(const ml_health *h, int layer, int epoch, ml_layer_health *o) {
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->layer = layer;
    o->num_experts = h->num_experts;
    o->epoch = epoch;
    o->samples = h->samples;
    o->slots = h->slots;
    o->utilisation = h->utilisation;
    o->importance = h->importance;
    o->cv = h->cv;
    o->marginal_entropy_norm = h->marginal_entropy_norm;
    o->effective_experts = h->effective_experts;
    o->slots_per_sample = h->slots_per_sample;
    o->mean_sample_entropy = h->mean_sample_entropy;
    o->mutual_info = h->mutual_info;
    o->max_load_ratio = h->max_load_ratio;
    o->dropped_share = h->dropped_share;
    o->load_balance = h->load_balance;
    o->active = h->active;
    o->dead = h->dead;
    o->collapsed = h->collapsed;
}

int ml_exp_schedule_decide(ml_experiment *e, int *add, int *const *remove, int *n_remove) {
    ml_model *m = e->model;
    const int L = m->L;
    int *ne = ml_calloc((size_t)L, sizeof *ne);
    ml_health *h = ml_calloc((size_t)L * 2, sizeof *h);
    ml_layer_health *lh = ml_calloc((size_t)L * 2, sizeof *lh);
    const ml_layer_health **ph = ml_calloc((size_t)L * 2, sizeof *ph);
    int rc = ne && h && lh && ph ? ML_OK : ML_ERR;
    for (int l = 0; l < L && rc == ML_OK; l++) {
        ne[l] = m->moe[l]->N;
        add[l] = 0;
    }
    ml_progress p = {sizeof p, e->images_seen, e->step, e->epoch, L, ne, e->train.n, NULL, NULL};
    /* routing health for schedules that can read it (ABI 1.1): this epoch so far and the last one */
    if (rc == ML_OK && e->sched.plugin->abi_minor >= 1) {
        for (int l = 0; l < L && rc == ML_OK; l++) {
            rc = ml_health_compute(e->acc[l], &e->hcfg, &h[l]);
            if (rc == ML_OK) health_to_abi(&h[l], l, e->epoch, &lh[l]), ph[l] = &lh[l];
            if (rc == ML_OK && e->have_last) {
                rc = ml_health_compute(e->last_acc[l], &e->hcfg, &h[L + l]);
                if (rc == ML_OK) health_to_abi(&h[L + l], l, e->epoch - 1, &lh[L + l]), ph[L + l] = &lh[L + l];
            }
        }
        p.health = ph;
        p.last_health = e->have_last ? ph + L : NULL;
    }
    if (rc == ML_OK) rc = ml_schedule_inst_decide(&e->sched, &p, add, remove, n_remove);
    for (int k = 0; h && k < 2 * L; k++) ml_health_free(&h[k]);
    free(ne), free(h), free(lh), free(ph);
    return rc;
}

/* An option value as JSON: integers, numbers, true/false, enum choices as strings. */
static void option_json(ml_json *j, const ml_option *o, const ml_optval *v) {
    switch (o->type) {
    case ML_OPT_INT: ml_json_int(j, o->name, v->i); break;
    case ML_OPT_FLOAT: ml_json_num(j, o->name, v->f); break;
    case ML_OPT_BOOL: ml_json_raw(j, o->name, v->i ? "true" : "false"); break;
    default: ml_json_str(j, o->name, v->s); break;
    }
}

int ml_exp_set_router_options(ml_experiment *e, int layer, const ml_optval *opt) {
    if (layer < 0 || layer >= e->model->L) return ml_errorf("router options: layer %d does not exist", layer + 1);
    ml_router_inst *ri = &e->model->moe[layer]->router;
    const ml_plugin *p = ri->plugin;
    ml_optval old[ML_MAX_OPTIONS];
    memcpy(old, ri->opt, (size_t)p->num_options * sizeof *old);
    if (ml_router_inst_set_options(ri, opt)) return ML_ERR;
    ml_json now, was, j;
    ml_json_begin(&now);
    ml_json_begin(&was);
    int changed = 0;
    for (int i = 0; i < p->num_options; i++) {
        if (old[i].i == ri->opt[i].i && (old[i].f == ri->opt[i].f || (isnan(old[i].f) && isnan(ri->opt[i].f)))) continue;
        option_json(&now, &p->options[i], &ri->opt[i]);
        option_json(&was, &p->options[i], &old[i]);
        changed++;
    }
    const char *tn = ml_json_end(&now), *tw = ml_json_end(&was);
    int rc = ML_OK;
    if (changed) {
        ml_json_begin(&j);
        ml_json_int(&j, "layer", layer + 1);
        ml_json_str(&j, "router", p->name);
        ml_json_raw(&j, "values", tn ? tn : "{}");
        ml_json_raw(&j, "previous", tw ? tw : "{}");
        rc = tn && tw ? ml_exp_event_json(e, "router_options", &j) : ML_ERR;
        ml_json_free(&j);
    }
    ml_json_free(&now);
    ml_json_free(&was);
    return rc;
}

int ml_exp_loss_index(const ml_experiment *e, const char *name) {
    for (int i = 0; i < e->n_losses; i++)
        if (strcmp(e->loss[i].name, name) == 0) return i;
    return -1;
}

/* -------------------------------------------------------------------- finish */

/*
 * summary.json's object. crashed = 1 renders the variant the crash handler writes: status
 * "crashed", without "error" and "updated" (the handler appends those).
 */
static const char *summary_json(ml_experiment *e, ml_json *j, ml_json *last, const char *status, int crashed) {
    ml_json_begin(j);
    ml_json_str(j, "experiment", e->experiment);
    ml_json_str(j, "status", crashed ? "crashed" : status);
    if (!crashed && strcmp(status, "ok") != 0 && strcmp(status, "running") != 0)
        ml_json_str(j, "error", e->last_error);
    ml_json_int(j, "pid", (int64_t)getpid());
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0) host[0] = 0;
    ml_json_str(j, "host", host);
    if (!crashed) {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
        ml_json_str(j, "updated", stamp);
    }
    ml_json_int(j, "epochs", e->epoch);
    ml_json_int(j, "steps", e->step);
    ml_json_int(j, "images_seen", e->images_seen);
    ml_json_num(j, "seconds", ml_now() - e->started);
    ml_json_num(j, "best_val_loss", isfinite(e->best_val) ? e->best_val : NAN);
    ml_json_int(j, "best_epoch", e->best_epoch);
    ml_json_str(j, "router", e->model->moe[0]->router.plugin->name);
    char experts[512] = "[";
    for (int l = 0; l < e->model->L; l++) {
        size_t len = strlen(experts);
        snprintf(experts + len, sizeof experts - len, "%s%d", l ? "," : "", e->model->moe[l]->N);
    }
    strcat(experts, "]");
    ml_json_raw(j, "experts", experts);
    ml_json_int(j, "parameters", (int64_t)ml_params_numel(&e->model->P));
    ml_json_int(j, "ranks", e->ranks);
    ml_json_begin(last);
    for (int i = 0; i < e->last_n; i++) ml_json_num(last, e->last_name[i], e->last_value[i]);
    const char *lt = ml_json_end(last);
    ml_json_raw(j, "last_epoch", lt ? lt : "{}");
    ml_prov_summary(e, j, crashed || strcmp(status, "running") != 0);
    return ml_json_end(j);
}

/*
 * Rewrites summary.json atomically with this status ("running" while the run goes, then
 * "ok", "error" or "interrupted") and arms the crash handler with the "crashed" variant.
 */
int ml_exp_write_summary(ml_experiment *e, const char *status) {
    if (!e->res) return ML_OK;
    ml_json j, last;
    const char *text = summary_json(e, &j, &last, status, 0);
    int rc = text ? ml_results_summary(e->res, text) : ML_ERR;
    ml_json_free(&j);
    ml_json_free(&last);
    char real[PATH_MAX], path[PATH_MAX + 16];
    if (realpath(ml_results_dir(e->res), real)) {
        snprintf(path, sizeof path, "%s/summary.json", real);
        text = summary_json(e, &j, &last, status, 1);
        if (!text || ml_crash_arm(path, text)) rc = ML_ERR;
        ml_json_free(&j);
        ml_json_free(&last);
    }
    return rc;
}

int ml_exp_finish(ml_experiment *e, const char *status) {
    e->finished = 1;
    if (!e->res) return ML_OK;
    /* a run that is done reports the watches of experts added near its end, marked partial */
    int rc = status && !strcmp(status, "ok") ? ml_steplog_finish(e) : ML_OK;
    if (flush_row(e)) rc = ML_ERR;
    if (ml_exp_write_summary(e, status ? status : "error")) rc = ML_ERR;
    return rc;
}

void ml_exp_free(ml_experiment *e) {
    if (!e) return;
    ml_prov_free(e);
    ml_steplog_free(&e->steplog);
    for (int i = 0; i < e->n_cols; i++) free(e->col_name[i]);
    for (int i = 0; i < e->last_n; i++) free(e->last_name[i]);
    for (int i = 0; i < e->n_losses; i++) {
        for (int l = 0; e->loss[i].inst && e->model && l < e->model->L; l++) ml_loss_inst_release(&e->loss[i].inst[l]);
        free(e->loss[i].inst);
    }
    ml_schedule_inst_release(&e->sched);
    if (e->model) {
        for (int l = 0; l < e->model->L; l++) {
            if (e->acc) ml_health_acc_free(e->acc[l]);
            if (e->vacc) ml_health_acc_free(e->vacc[l]);
            if (e->last_acc) ml_health_acc_free(e->last_acc[l]);
        }
    }
    free(e->acc);
    free(e->vacc);
    free(e->last_acc);
    ml_model_free(e->model);
    ml_batcher_free(e->train_b);
    ml_batcher_free(e->val_b);
    ml_dataset_free(&e->train);
    ml_dataset_free(&e->val);
    free(e->xb);
    free(e->mb);
    ml_segrun_free(e);
    free(e->yb);
    free(e->ids);
    if (e->res) {
        ml_crash_disarm(); /* the summary written last stays */
        ml_results_close(e->res);
    }
    ml_config_free(e->cfg);
    free(e->script_state);
    if (e->scratch) {
        if (ml_remove_tree(e->scratch)) ml_log(ML_LOG_WARN, "%s", ml_error());
        free(e->scratch);
    }
    free(e);
}
