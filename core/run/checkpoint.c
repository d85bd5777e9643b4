/* checkpoint.c — checkpoints of a run, their validation, and resuming a run exactly. */
#include "run/checkpoint.h"
#include "run/provenance.h"
#include "plugin/loader.h"
#include "nn/params.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/scalar.h"
#include "io/safetensors.h"
#include "plugin/options.h"

#define CK_MAX_LAYERS 64
#define CK_MAX_EXPERTS ML_MOE_MAX_EXPERTS

/* ------------------------------------------------------------------ helpers */

static int check_tag(const char *tag) {
    if (!*tag || strlen(tag) > 64) return ml_errorf("checkpoint tag '%s': expected 1..64 characters", tag);
    for (const char *c = tag; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-' && *c != '.')
            return ml_errorf("checkpoint tag '%s': only letters, digits, '_', '-' and '.' are allowed", tag);
    if (tag[0] == '.') return ml_errorf("checkpoint tag '%s' must not start with '.'", tag);
    return ML_OK;
}

static void ckpt_path(const ml_experiment *e, const char *tag, char *path, size_t n) {
    snprintf(path, n, "%s/checkpoints/%s.safetensors", ml_results_dir(e->res), tag);
}

long ml_ckpt_first_nonfinite(const float *x, size_t n) {
    if (ml_span_finite(x, n)) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long)i;
    return -1;
}

/* Metadata being built: owned key and value strings. */
typedef struct meta {
    int n, cap;
    char **k, **v;
    int oom;
} meta;

static void meta_add(meta *m, const char *key, const char *fmt, ...) ML_PRINTF(3, 4);
static void meta_add(meta *m, const char *key, const char *fmt, ...) {
    if (m->oom) return;
    if (m->n == m->cap) {
        int nc = m->cap ? 2 * m->cap : 64;
        char **k = realloc(m->k, (size_t)nc * sizeof *k), **v = k ? realloc(m->v, (size_t)nc * sizeof *v) : NULL;
        if (k) m->k = k;
        if (!k || !v) {
            m->oom = 1;
            return;
        }
        m->v = v;
        m->cap = nc;
    }
    va_list ap;
    va_start(ap, fmt);
    char *val = NULL;
    int r = vasprintf(&val, fmt, ap);
    va_end(ap);
    char *kd = ml_strdup(key);
    if (r < 0 || !kd) {
        free(kd);
        if (r >= 0) free(val);
        m->oom = 1;
        return;
    }
    m->k[m->n] = kd;
    m->v[m->n++] = val;
}

static void meta_free(meta *m) {
    for (int i = 0; i < m->n; i++) {
        free(m->k[i]);
        free(m->v[i]);
    }
    free(m->k);
    free(m->v);
}

static void rng_hex(const ml_rng *r, char *out) {
    snprintf(out, 80, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, r->s[0], r->s[1], r->s[2], r->s[3]);
}

/* The wall-clock column of the metrics row: kept apart (metadata run.clock) so that
 * everything else in a checkpoint is the same for the same training. */
#define CLOCK_COL "seconds"

/* A metrics row as {"name":"<%a>",...}: hex floats keep every value (NaN too) exact; the
 * clock column holds "clock" and its value goes to clock[] ("none" when absent). */
static char *row_json(char *const *names, const double *values, int n, char *clock, size_t cap) {
    ml_json j;
    ml_json_begin(&j);
    snprintf(clock, cap, "none");
    for (int i = 0; i < n; i++) {
        char num[64];
        snprintf(num, sizeof num, "%a", values[i]);
        if (strcmp(names[i], CLOCK_COL) == 0) {
            snprintf(clock, cap, "%s", num);
            snprintf(num, sizeof num, "clock");
        }
        ml_json_str(&j, names[i], num);
    }
    const char *s = ml_json_end(&j);
    char *d = s ? ml_strdup(s) : NULL;
    ml_json_free(&j);
    return d;
}

/* ---------------------------------------------------------------------- save */

/* The first non-finite value among what a checkpoint would hold: tensor name in *name. */
static int find_nonfinite(const ml_model *m, char *name, size_t cap) {
    const struct { const ml_params *P; const float *blk; const char *prefix; } blocks[] = {
        {&m->P, m->P.data, ""}, {&m->P, m->P.m, "optim.m."}, {&m->P, m->P.v, "optim.v."}, {&m->S, m->S.data, ""}};
    for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++) {
        const ml_params *P = blocks[b].P;
        if (!blocks[b].blk || ml_ckpt_first_nonfinite(blocks[b].blk, P->total) < 0) continue;
        for (int k = 0; k < P->n_live; k++) {
            const ml_tensor *t = &P->t[P->order[k]];
            if (ml_ckpt_first_nonfinite(blocks[b].blk + t->off, t->n) >= 0) {
                snprintf(name, cap, "%s%s", blocks[b].prefix, t->name);
                return 1;
            }
        }
        snprintf(name, cap, "%s(padding)", blocks[b].prefix);
        return 1;
    }
    return 0;
}

/* The checkpoint_saved event's fields (written after the file). */
static void saved_event(const ml_experiment *e, const char *tag, ml_json *j) {
    ml_json_begin(j);
    ml_json_str(j, "tag", tag);
    ml_json_int(j, "images_seen", e->images_seen);
}

/* Bytes of the events.jsonl line ml_results_event writes for the checkpoint_saved event:
 * a checkpoint records the events file as it is once its own event is in, so a resume
 * from it keeps that line (and a resumed run's events match an uninterrupted one's). */
static long saved_event_bytes(const ml_experiment *e, const char *tag) {
    ml_json j;
    ml_json_begin(&j);
    ml_json_int(&j, "epoch", e->epoch);
    ml_json_int(&j, "step", e->step);
    ml_json_str(&j, "kind", "checkpoint_saved");
    ml_json_str(&j, "tag", tag);
    ml_json_int(&j, "images_seen", e->images_seen);
    const char *line = ml_json_end(&j);
    long n = line ? (long)strlen(line) + 1 : 0;
    ml_json_free(&j);
    return n;
}

/*
 * What a script may change while the run goes, which --resume sets again (a format-3 file
 * without these keys resumes with the config's values, which nothing could change then):
 *   run.optim    exp.optim's settings, "lr=<%a>,beta1=...,beta2=...,eps=...,weight_decay=...,momentum=..."
 *   run.groups   each parameter group's settings, {"<name>":{"lr":"<%a>"|null,"weight_decay":...,
 *                "frozen":true|false},...} in config order (null: follows run.optim)
 *   run.frozen   the frozen tensors' names, ';'-separated ("" for none)
 *   run.router<l>  layer l's router options, "name=value;..." as YAML text
 */
static const char *const optim_keys[6] = {"lr", "beta1", "beta2", "eps", "weight_decay", "momentum"};

static void optim_values(const ml_optim *o, double *v) {
    const float f[6] = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->momentum};
    for (int i = 0; i < 6; i++) v[i] = f[i];
}

static void hex_or_null(ml_json *j, const char *key, float v) {
    char num[64];
    snprintf(num, sizeof num, "%a", (double)v);
    if (isnan(v)) ml_json_raw(j, key, "null");
    else ml_json_str(j, key, num);
}

static int script_settings_meta(const ml_experiment *e, meta *md) {
    const ml_optim *o = &e->opt;
    double v[6];
    optim_values(o, v);
    meta_add(md, "run.optim", "lr=%a,beta1=%a,beta2=%a,eps=%a,weight_decay=%a,momentum=%a", v[0], v[1], v[2], v[3],
             v[4], v[5]);
    ml_json j;
    ml_json_begin(&j);
    for (int g = 0; g < o->n_groups; g++) {
        ml_json one;
        ml_json_begin(&one);
        hex_or_null(&one, "lr", o->group[g].lr);
        hex_or_null(&one, "weight_decay", o->group[g].weight_decay);
        ml_json_raw(&one, "frozen", o->group[g].frozen ? "true" : "false");
        const char *t = ml_json_end(&one);
        ml_json_raw(&j, o->group[g].name, t ? t : "");
        ml_json_free(&one);
    }
    const char *gt = ml_json_end(&j);
    if (gt) meta_add(md, "run.groups", "%s", gt);
    ml_json_free(&j);
    if (!gt) return ML_ERR;
    const ml_params *P = &e->model->P;
    ml_strbuf fz = {0};
    for (int k = 0; k < P->n_live; k++)
        if (P->t[P->order[k]].frozen) {
            if (fz.len) ml_strbuf_put(&fz, ";", 1);
            ml_strbuf_puts(&fz, P->t[P->order[k]].name);
        }
    if (fz.oom) return ml_errorf("out of memory");
    meta_add(md, "run.frozen", "%s", fz.buf ? fz.buf : "");
    free(fz.buf);
    for (int l = 0; l < e->model->L; l++) {
        const ml_router_inst *ri = &e->model->moe[l]->router;
        ml_strbuf rb = {0};
        for (int i = 0; i < ri->plugin->num_options; i++) {
            char val[128];
            ml_option_format(&ri->plugin->options[i], &ri->opt[i], val, sizeof val);
            ml_strbuf_printf(&rb, "%s%s=%s", i ? ";" : "", ri->plugin->options[i].name, val);
        }
        if (rb.oom) return ml_errorf("out of memory");
        char key[32];
        snprintf(key, sizeof key, "run.router%d", l + 1);
        meta_add(md, key, "%s", rb.buf ? rb.buf : "");
        free(rb.buf);
    }
    return ML_OK;
}

static int build_meta(ml_experiment *e, const char *tag, meta *md) {
    ml_model *m = e->model;
    char buf[128];
    meta_add(md, "format", "moelab-checkpoint");
    meta_add(md, "format_version", ML_CKPT_FORMAT_VERSION);
    meta_add(md, "epoch", "%d", e->epoch);
    meta_add(md, "step", "%" PRId64, e->step);
    meta_add(md, "images_seen", "%" PRId64, e->images_seen);
    meta_add(md, "optim_t", "%" PRId64, e->opt.t);
    meta_add(md, "config_hash", "%016" PRIx64, ml_config_hash(e->cfg));
    char experts[CK_MAX_LAYERS * 8] = "", msteps[CK_MAX_LAYERS * 24] = "", mepochs[CK_MAX_LAYERS * 12] = "";
    for (int l = 0; l < m->L; l++) {
        size_t a = strlen(experts), b = strlen(msteps), c = strlen(mepochs);
        snprintf(experts + a, sizeof experts - a, "%s%d", l ? "," : "", m->moe[l]->N);
        snprintf(msteps + b, sizeof msteps - b, "%s%" PRId64, l ? "," : "", m->moe[l]->router.step);
        snprintf(mepochs + c, sizeof mepochs - c, "%s%d", l ? "," : "", m->moe[l]->router.epoch);
    }
    meta_add(md, "experts", "%s", experts);
    /* each expert's variant, for kinds whose experts differ (the segmentation kinds) */
    int any_var = 0;
    for (int l = 0; l < m->L; l++) any_var |= ml_moe_has_variants(m->moe[l]);
    if (any_var) {
        ml_strbuf vb = {0};
        for (int l = 0; l < m->L; l++)
            for (int x = 0; x < m->moe[l]->N; x++)
                ml_strbuf_printf(&vb, "%s%d", x ? "," : l ? ";" : "", ml_moe_variant(m->moe[l], x));
        if (vb.oom) return ml_errorf("out of memory");
        meta_add(md, "expert_variants", "%s", vb.buf ? vb.buf : "");
        free(vb.buf);
    }
    /* per-tensor Adam step counts: "name=step;name=step" */
    size_t cap = 64, len = 0;
    for (int k = 0; k < m->P.n_live; k++) cap += strlen(m->P.t[m->P.order[k]].name) + 24;
    char *steps = ml_calloc(cap, 1);
    if (!steps) return ML_ERR;
    for (int k = 0; k < m->P.n_live; k++) {
        const ml_tensor *t = &m->P.t[m->P.order[k]];
        len += (size_t)snprintf(steps + len, cap - len, "%s%s=%" PRId64, k ? ";" : "", t->name, t->step);
    }
    meta_add(md, "optim_steps", "%s", steps);
    free(steps);
    rng_hex(&m->init_rng, buf);
    meta_add(md, "rng.init", "%s", buf);
    for (int l = 0; l < m->L; l++) {
        char key[32];
        snprintf(key, sizeof key, "rng.moe%d", l + 1);
        rng_hex(&m->moe[l]->router.rng, buf);
        meta_add(md, key, "%s", buf);
    }
    /* run state: what --resume needs beyond the model */
    const ml_epoch_acc *a = &e->ep;
    meta_add(md, "run.moe_steps", "%s", msteps);
    meta_add(md, "run.moe_epochs", "%s", mepochs);
    char *coefs = ml_calloc((size_t)e->n_losses * 32 + 1, 1), *aux = ml_calloc((size_t)e->n_losses * 32 + 1, 1);
    if (!coefs || !aux) {
        free(coefs);
        free(aux);
        return ML_ERR;
    }
    for (int i = 0; i < e->n_losses; i++) {
        sprintf(coefs + strlen(coefs), "%s%a", i ? "," : "", e->loss[i].coef);
        sprintf(aux + strlen(aux), "%s%a", i ? "," : "", a->aux_sum[i]);
    }
    meta_add(md, "run.coefs", "%s", coefs);
    meta_add(md, "run.best_val", "%a", e->best_val);
    meta_add(md, "run.best_epoch", "%d", e->best_epoch);
    meta_add(md, "run.in_epoch", "%d", a->in_epoch);
    meta_add(md, "run.hook_pending", "%d", a->in_epoch && !a->in_hook);
    meta_add(md, "run.position", "%" PRId64, a->in_epoch ? ml_batcher_position(e->train_b) : 0);
    meta_add(md, "run.loss_sum", "%a", a->in_epoch ? a->loss_sum : 0.0);
    meta_add(md, "run.task_sum", "%a", a->in_epoch ? a->task_sum : 0.0);
    meta_add(md, "run.aux_sums", "%s", aux);
    meta_add(md, "run.seen", "%" PRId64, a->in_epoch ? a->seen : 0);
    meta_add(md, "run.steps", "%" PRId64, a->in_epoch ? a->steps : 0);
    meta_add(md, "run.used", "%" PRId64, a->in_epoch ? a->used : 0);
    meta_add(md, "run.skipped", "%" PRId64, a->in_epoch ? a->skipped : 0);
    free(coefs);
    free(aux);
    for (int l = 0; l < m->L; l++) {
        /* training, validation and the last completed epoch's routing (ml_progress.last_health) */
        for (int v = 0; v < 3; v++) {
            char key[32];
            snprintf(key, sizeof key, "run.%shealth%d", v == 1 ? "v" : v == 2 ? "last" : "", l + 1);
            char *t = ml_health_acc_to_text(v == 1 ? e->vacc[l] : v == 2 ? e->last_acc[l] : e->acc[l]);
            if (!t) return ML_ERR;
            meta_add(md, key, "%s", t);
            free(t);
        }
        /* the router's metrics of the epoch in progress (its training forwards) */
        char key[32], *t = ml_router_inst_metrics_to_text(&m->moe[l]->router, ML_METRIC_TRAIN);
        if (!t) return ML_ERR;
        snprintf(key, sizeof key, "run.rmetrics%d", l + 1);
        meta_add(md, key, "%s", a->in_epoch ? t : "");
        free(t);
    }
    meta_add(md, "run.have_last", "%d", e->have_last);
    char c1[64], c2[64];
    char *row = row_json(e->col_name, e->col_value, e->n_cols, c1, sizeof c1);
    char *last = row_json(e->last_name, e->last_value, e->last_n, c2, sizeof c2);
    if (row) meta_add(md, "run.row", "%s", row);
    if (last) meta_add(md, "run.last_row", "%s", last);
    meta_add(md, "run.clock", "%s,%s", c1, c2);
    free(row);
    free(last);
    if (!row || !last) return ML_ERR;
    int rows;
    long rbytes, ebytes;
    ml_results_sizes(e->res, &rows, &rbytes, &ebytes);
    meta_add(md, "run.metrics_rows", "%d", rows);
    meta_add(md, "run.routing_bytes", "%ld", rbytes);
    meta_add(md, "run.events_bytes", "%ld", ebytes + saved_event_bytes(e, tag));
    /* steps.csv and the new-expert watches (run/steplog.h) */
    char *sl = ml_steplog_to_text(e);
    if (!sl) return ML_ERR;
    meta_add(md, "run.steplog", "%s", sl);
    free(sl);
    meta_add(md, "run.steps_bytes", "%ld", ml_results_extent(e->res, "steps.csv"));
    meta_add(md, "run.rsteps_bytes", "%ld", ml_results_extent(e->res, "routing_steps.csv"));
    meta_add(md, "run.rlabels_bytes", "%ld", ml_results_extent(e->res, "routing_labels.csv"));
    char *state = NULL;
    if (e->state_save && e->state_save(e->state_ctx, &state)) return ML_ERR;
    meta_add(md, "run.script_state", "%s", state ? state : "null");
    free(state);
    if (script_settings_meta(e, md)) return ML_ERR;
    if (md->oom) return ml_errorf("out of memory");
    return ML_OK;
}

int ml_exp_save_checkpoint(ml_experiment *e, const char *tag) {
    if (check_tag(tag)) return ML_ERR;
    if (!e->res) return ml_errorf("save_checkpoint: the run directory is not open");
    ml_model *m = e->model;
    char bad[ML_TENSOR_NAME_MAX + 16];
    if (find_nonfinite(m, bad, sizeof bad))
        return ml_errorf("save_checkpoint '%s': tensor '%s' holds non-finite values (NaN or Inf); the checkpoint was "
                         "not written and checkpoints/%s.safetensors is unchanged", tag, bad, tag);
    int nP = m->P.n_live, nS = m->S.n_live, n = 3 * nP + nS;
    ml_st_tensor *t = ml_calloc((size_t)n, sizeof *t);
    char (*names)[ML_TENSOR_NAME_MAX + 16] = ml_calloc((size_t)n, sizeof *names);
    if (!t || !names) {
        free(t);
        free(names);
        return ML_ERR;
    }
    int k = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < nP; i++) {
            const ml_tensor *x = &m->P.t[m->P.order[i]];
            const float *blk = pass == 0 ? m->P.data : pass == 1 ? m->P.m : m->P.v;
            snprintf(names[k], sizeof names[k], "%s%s", pass == 0 ? "" : pass == 1 ? "optim.m." : "optim.v.", x->name);
            t[k].name = names[k];
            t[k].ndim = x->ndim;
            for (int d = 0; d < x->ndim; d++) t[k].shape[d] = x->shape[d];
            t[k].data = blk + x->off;
            k++;
        }
    for (int i = 0; i < nS; i++) {
        const ml_tensor *x = &m->S.t[m->S.order[i]];
        snprintf(names[k], sizeof names[k], "%s", x->name);
        t[k].name = names[k];
        t[k].ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++) t[k].shape[d] = x->shape[d];
        t[k].data = m->S.data + x->off;
        k++;
    }
    meta md = {0};
    int rc = build_meta(e, tag, &md);
    if (!rc) {
        char path[4096];
        ckpt_path(e, tag, path, sizeof path);
        rc = ml_st_write(path, t, k, (const char *const *)md.k, (const char *const *)md.v, md.n);
    } else {
        ml_error_prefix("save_checkpoint '%s'", tag);
    }
    meta_free(&md);
    free(t);
    free(names);
    if (rc) return ML_ERR;
    ml_json j;
    saved_event(e, tag, &j);
    rc = ml_exp_event_json(e, "checkpoint_saved", &j);
    ml_json_free(&j);
    return rc;
}

int ml_exp_interrupt(ml_experiment *e) {
    int epoch = e->epoch + (e->ep.in_epoch ? 0 : 1);
    if (ml_exp_save_checkpoint(e, "interrupt")) {
        e->ep.interrupt_saved = -epoch;
        return ml_error_prefix("interrupted at epoch %d step %" PRId64 "; saving the interrupt checkpoint failed", epoch, e->step);
    }
    e->ep.interrupt_saved = epoch;
    return ml_errorf("interrupted at epoch %d step %" PRId64, epoch, e->step);
}

/* ---------------------------------------------------------------------- load */

/* What a checkpoint's metadata says, parsed and validated before the model is touched. */
typedef struct ck {
    const char *path;
    ml_st_file *f;
    int64_t epoch, step, seen, optt;
    int L, want[CK_MAX_LAYERS];
    int *var[CK_MAX_LAYERS];      /* (want[l]) each expert's variant, from expert_variants; NULL: absent */
    int keep[CK_MAX_LAYERS];      /* the model's experts 0..keep-1 are loaded; the others are removed
                                     (resume) or stay as they are (load_checkpoint) */
    int resume;
    ml_rng rng_init, rng_moe[CK_MAX_LAYERS];
    /* run state (resume only) */
    int64_t moe_step[CK_MAX_LAYERS], moe_epoch[CK_MAX_LAYERS];
    double coef[ML_MAX_LOSSES], aux[ML_MAX_LOSSES], best_val, loss_sum, task_sum;
    int64_t best_epoch, in_epoch, hook_pending, position, ep_seen, ep_steps, ep_used, ep_skipped;
    int64_t metrics_rows, routing_bytes, events_bytes;
    const char *health[CK_MAX_LAYERS], *vhealth[CK_MAX_LAYERS], *lhealth[CK_MAX_LAYERS];
    const char *rmetrics[CK_MAX_LAYERS]; /* format 3 */
    int have_last;
    ml_jv *row, *last_row;
    double clock[2];
    const char *state;
    int v2;          /* format version 2: layers numbered from 0 in names ("moe0.") */
    /* what scripts change (absent from older format-3 files: NULL / 0) */
    int has_optim;
    double optim[6];            /* run.optim, in optim_keys order */
    int has_groups;
    float glr[ML_OPTIM_MAX_GROUPS], gwd[ML_OPTIM_MAX_GROUPS]; /* NAN: follows run.optim */
    int gfrozen[ML_OPTIM_MAX_GROUPS];
    const char *frozen;         /* run.frozen */
    const char *router[CK_MAX_LAYERS]; /* run.router<l> */
    /* steps.csv, routing_steps.csv and watches (absent from older files: NULL / 0) */
    const char *steplog;
    int64_t steps_bytes, rsteps_bytes;
    int has_rlabels;            /* run.rlabels_bytes: routing_labels.csv (segmentation) */
    int64_t rlabels_bytes;
} ck;

/*
 * A tensor's name in the file: the model's own, except in a version-2 file, whose layers
 * count from 0 ("moe0.expert1.w1" for the model's "moe1.expert1.w1"; also after "optim.m."
 * and "optim.v."). to_model turns a file's name into the model's instead.
 */
static const char *renumber(const ck *c, const char *name, char *buf, size_t cap, int to_model) {
    if (!c->v2) return name;
    const char *p = name;
    size_t pre = 0;
    if (!strncmp(p, "optim.m.", 8) || !strncmp(p, "optim.v.", 8)) pre = 8;
    int l, n = 0;
    if (sscanf(p + pre, "moe%d.%n", &l, &n) != 1 || n == 0) return name;
    snprintf(buf, cap, "%.*smoe%d.%s", (int)pre, p, to_model ? l + 1 : l - 1, p + pre + n);
    return buf;
}

/* ml_st_get by the model's name of the tensor. */
static const float *ck_get(const ck *c, const char *name, int *nd, int64_t *sh) {
    char buf[ML_TENSOR_NAME_MAX + 32];
    return ml_st_get(c->f, renumber(c, name, buf, sizeof buf, 0), nd, sh);
}

static void ck_free(ck *c) {
    for (int l = 0; l < CK_MAX_LAYERS; l++) {
        free(c->var[l]);
        c->var[l] = NULL;
    }
    ml_st_close(c->f);
    ml_jv_free(c->row);
    ml_jv_free(c->last_row);
    c->f = NULL;
    c->row = c->last_row = NULL;
}

/* A metadata value for an error message: at most 40 printable characters. */
static const char *shown(const char *v, char *buf, size_t cap) {
    size_t k = 0;
    for (const char *p = v; *p && k + 4 < cap && k < 40; p++) buf[k++] = isprint((unsigned char)*p) ? *p : '?';
    if (strlen(v) > k) {
        buf[k++] = '.';
        buf[k++] = '.';
        buf[k++] = '.';
    }
    buf[k] = 0;
    return buf;
}

static const char *need(const ck *c, const char *key) {
    const char *v = ml_st_meta(c->f, key);
    if (!v) ml_errorf("%s: metadata '%s' is missing", c->path, key);
    return v;
}

static int bad_value(const ck *c, const char *key, const char *v, const char *expected) {
    char b[64];
    return ml_errorf("%s: metadata '%s' is '%s', expected %s", c->path, key, shown(v, b, sizeof b), expected);
}

/* Decimal digits only, whole string, at most 18 of them (no sign, no spaces, no overflow). */
static int parse_u(const char *s, size_t n, int64_t *out) {
    if (n == 0 || n > 18) return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static int meta_u(const ck *c, const char *key, int64_t max, int64_t *out) {
    const char *v = need(c, key);
    if (!v) return ML_ERR;
    if (!parse_u(v, strlen(v), out) || *out > max) {
        char exp[64];
        if (max == INT64_MAX) snprintf(exp, sizeof exp, "an integer >= 0");
        else snprintf(exp, sizeof exp, "an integer in [0, %" PRId64 "]", max);
        return bad_value(c, key, v, exp);
    }
    return ML_OK;
}

/* A list of n non-negative integers separated by ',' */
static int meta_u_list(const ck *c, const char *key, int n, int64_t min, int64_t max, int64_t *out) {
    const char *v = need(c, key), *p = v;
    if (!v) return ML_ERR;
    for (int i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!parse_u(p, len, &out[i]) || out[i] < min || out[i] > max || (i < n - 1) != (end != NULL)) {
            char exp[96];
            snprintf(exp, sizeof exp, "%d comma-separated integers in [%" PRId64 ", %" PRId64 "]", n, min, max);
            return bad_value(c, key, v, exp);
        }
        p = end ? end + 1 : p + len;
    }
    return ML_OK;
}

static int parse_double(const char *s, size_t n, double *out) {
    char buf[64];
    if (n == 0 || n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (isspace((unsigned char)buf[0])) return 0;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0;
}

/* n numbers (C99 hex floats as written) separated by ','; finite ones only unless allow_inf */
static int meta_f_list(const ck *c, const char *key, int n, int allow_inf, double *out) {
    const char *v = need(c, key), *p = v;
    if (!v) return ML_ERR;
    if (n == 0) return *v ? bad_value(c, key, v, "an empty list") : ML_OK;
    for (int i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!parse_double(p, len, &out[i]) || isnan(out[i]) || (!allow_inf && isinf(out[i])) ||
            (i < n - 1) != (end != NULL)) {
            char exp[64];
            snprintf(exp, sizeof exp, "%d comma-separated finite numbers", n);
            return bad_value(c, key, v, exp);
        }
        p = end ? end + 1 : p + len;
    }
    return ML_OK;
}

static int meta_rng(const ck *c, const char *key, ml_rng *r) {
    const char *v = need(c, key);
    if (!v) return ML_ERR;
    size_t n = strlen(v);
    int ok = n == 64;
    for (size_t i = 0; ok && i < n; i++) ok = isxdigit((unsigned char)v[i]);
    if (!ok) return bad_value(c, key, v, "64 hexadecimal digits");
    for (int i = 0; i < 4; i++) {
        char part[17];
        memcpy(part, v + 16 * i, 16);
        part[16] = 0;
        r->s[i] = strtoull(part, NULL, 16);
    }
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) return bad_value(c, key, v, "a non-zero generator state");
    return ML_OK;
}

/* A metrics row {"name":"<number>"} */
static int meta_row(const ck *c, const char *key, ml_jv **out) {
    const char *v = need(c, key);
    if (!v) return ML_ERR;
    ml_jv *j = ml_jv_parse(v, strlen(v));
    int ok = j && j->type == ML_JV_OBJ && j->n <= ML_MAX_COLS;
    for (int i = 0; ok && i < j->n; i++) {
        double d;
        ok = j->items[i].type == ML_JV_STR && *j->keys[i] &&
             (parse_double(j->items[i].str, strlen(j->items[i].str), &d) ||
              (strcmp(j->keys[i], CLOCK_COL) == 0 && strcmp(j->items[i].str, "clock") == 0));
    }
    if (!ok) {
        ml_jv_free(j);
        return ml_errorf("%s: metadata '%s' is not a metrics row (a JSON object of at most %d column names to numbers as strings)",
                         c->path, key, ML_MAX_COLS);
    }
    *out = j;
    return ML_OK;
}

/* Model-level metadata: what exp:load_checkpoint needs. */
static int parse_model_meta(ml_experiment *e, ck *c, int strict_hash) {
    ml_model *m = e->model;
    const char *fmt = need(c, "format");
    if (!fmt) return ML_ERR;
    if (strcmp(fmt, "moelab-checkpoint") != 0) return bad_value(c, "format", fmt, "'moelab-checkpoint'");
    const char *ver = need(c, "format_version");
    if (!ver) return ML_ERR;
    if (strcmp(ver, "1") == 0)
        return ml_errorf("%s: checkpoint format version 1 (an older moelab) is not supported; this moelab reads version %s, "
                         "which also holds the run state and every RNG stream", c->path, ML_CKPT_FORMAT_VERSION);
    c->v2 = strcmp(ver, "2") == 0; /* layers numbered from 0; read with renumber() */
    if (strcmp(ver, ML_CKPT_FORMAT_VERSION) != 0 && !c->v2) {
        char b[64];
        return ml_errorf("%s: checkpoint format version '%s', this moelab reads versions 2 and %s", c->path,
                         shown(ver, b, sizeof b), ML_CKPT_FORMAT_VERSION);
    }
    if (meta_u(c, "epoch", INT32_MAX, &c->epoch) || meta_u(c, "step", INT64_MAX, &c->step) ||
        meta_u(c, "images_seen", INT64_MAX, &c->seen) || meta_u(c, "optim_t", INT64_MAX, &c->optt))
        return ML_ERR;
    const char *h = need(c, "config_hash");
    if (!h) return ML_ERR;
    int hex = strlen(h) == 16;
    for (int i = 0; hex && h[i]; i++) hex = isxdigit((unsigned char)h[i]);
    if (!hex) return bad_value(c, "config_hash", h, "16 hexadecimal digits");
    char mine[32];
    snprintf(mine, sizeof mine, "%016" PRIx64, ml_config_hash(e->cfg));
    if (strcmp(h, mine) != 0) {
        if (strict_hash)
            return ml_errorf("%s: saved under a different config (hash %s, this run's config.yaml %s)", c->path, h, mine);
        ml_log(ML_LOG_WARN, "%s was saved under a different config (hash %s, this run %s)", c->path, h, mine);
    }
    const char *ex = need(c, "experts");
    if (!ex) return ML_ERR;
    int commas = 0;
    for (const char *p = ex; *p; p++) commas += *p == ',';
    c->L = commas + 1;
    if (c->L != m->L || c->L > CK_MAX_LAYERS) {
        char b[64];
        return ml_errorf("%s: metadata 'experts' is '%s': %d MoE layers, the model has %d", c->path, shown(ex, b, sizeof b),
                         c->L, m->L);
    }
    int64_t want[CK_MAX_LAYERS];
    if (meta_u_list(c, "experts", c->L, 1, CK_MAX_EXPERTS, want)) return ML_ERR;
    for (int l = 0; l < c->L; l++) c->want[l] = (int)want[l];
    const char *vv = ml_st_meta(c->f, "expert_variants");
    if (vv) { /* "v,v,...;v,..." one list per layer */
        const char *q = vv;
        for (int l = 0; l < c->L; l++) {
            if (!(c->var[l] = ml_calloc((size_t)c->want[l], sizeof(int)))) return ML_ERR;
            for (int x = 0; x < c->want[l]; x++) {
                size_t len = strcspn(q, ",;");
                int64_t v;
                char sep = q[len];
                int last = x == c->want[l] - 1;
                if (!parse_u(q, len, &v) || !ml_moe_variant_ok(m->moe[l], (int)v) ||
                    (last ? sep != (l == c->L - 1 ? 0 : ';') : sep != ','))
                    return bad_value(c, "expert_variants", vv, "one list of the experts' variants per layer "
                                     "(',' between experts, ';' between layers), variants this model's kinds have");
                c->var[l][x] = (int)v;
                q += len + (sep ? 1 : 0);
            }
        }
    }
    if (meta_rng(c, "rng.init", &c->rng_init)) return ML_ERR;
    for (int l = 0; l < c->L; l++) {
        char key[32];
        snprintf(key, sizeof key, "rng.moe%d", c->v2 ? l : l + 1);
        if (meta_rng(c, key, &c->rng_moe[l])) return ML_ERR;
    }
    /* optim_steps: "name=step;..." — checked for syntax here, names after growth */
    const char *st = need(c, "optim_steps");
    if (!st) return ML_ERR;
    for (const char *p = st; *p;) {
        const char *end = strchr(p, ';'), *eq = memchr(p, '=', end ? (size_t)(end - p) : strlen(p));
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int64_t v;
        if (!eq || eq == p || !parse_u(eq + 1, len - (size_t)(eq + 1 - p), &v))
            return bad_value(c, "optim_steps", st, "'name=steps' pairs separated by ';' (steps an integer >= 0)");
        if (!end) break;
        p = end + 1;
        if (!*p) return bad_value(c, "optim_steps", st, "no trailing ';'");
    }
    return ML_OK;
}

static int parse_script_settings(ml_experiment *e, ck *c);

/* Run-level metadata: what --resume needs on top. */
static int parse_run_meta(ml_experiment *e, ck *c) {
    int L = c->L;
    if (meta_u_list(c, "run.moe_steps", L, 0, INT64_MAX, c->moe_step) ||
        meta_u_list(c, "run.moe_epochs", L, 0, INT32_MAX, c->moe_epoch) ||
        meta_f_list(c, "run.coefs", e->n_losses, 0, c->coef) || meta_f_list(c, "run.best_val", 1, 1, &c->best_val) ||
        meta_u(c, "run.best_epoch", INT32_MAX, &c->best_epoch) || meta_u(c, "run.in_epoch", 1, &c->in_epoch) ||
        meta_u(c, "run.hook_pending", 1, &c->hook_pending) ||
        meta_u(c, "run.position", e->train.n, &c->position) || meta_f_list(c, "run.loss_sum", 1, 0, &c->loss_sum) ||
        meta_f_list(c, "run.task_sum", 1, 0, &c->task_sum) || meta_f_list(c, "run.aux_sums", e->n_losses, 0, c->aux) ||
        meta_u(c, "run.seen", INT64_MAX, &c->ep_seen) || meta_u(c, "run.steps", INT64_MAX, &c->ep_steps) ||
        meta_u(c, "run.used", INT64_MAX, &c->ep_used) || meta_u(c, "run.skipped", INT64_MAX, &c->ep_skipped) ||
        meta_u(c, "run.metrics_rows", INT32_MAX, &c->metrics_rows) ||
        meta_u(c, "run.routing_bytes", INT64_MAX, &c->routing_bytes) ||
        meta_u(c, "run.events_bytes", INT64_MAX, &c->events_bytes) || meta_row(c, "run.row", &c->row) ||
        meta_row(c, "run.last_row", &c->last_row))
        return ML_ERR;
    if (c->ep_used > c->ep_seen || c->ep_skipped > c->ep_steps)
        return ml_errorf("%s: metadata run.used/run.skipped (%" PRId64 "/%" PRId64 ") exceed run.seen/run.steps "
                         "(%" PRId64 "/%" PRId64 ")", c->path, c->ep_used, c->ep_skipped, c->ep_seen, c->ep_steps);
    const char *clk = need(c, "run.clock");
    if (!clk) return ML_ERR;
    const char *comma = strchr(clk, ',');
    for (int k = 0; k < 2; k++) {
        const char *p = k ? (comma ? comma + 1 : "") : clk;
        size_t len = k ? strlen(p) : comma ? (size_t)(comma - clk) : 0;
        if (len == 4 && strncmp(p, "none", 4) == 0) c->clock[k] = NAN;
        else if (!comma || !parse_double(p, len, &c->clock[k]))
            return bad_value(c, "run.clock", clk, "two numbers or 'none' separated by ','");
    }
    for (int i = 0; i < e->n_losses; i++)
        if (c->coef[i] < 0) return bad_value(c, "run.coefs", ml_st_meta(c->f, "run.coefs"), "coefficients >= 0");
    if (c->in_epoch && c->epoch < 1) return bad_value(c, "epoch", ml_st_meta(c->f, "epoch"), "an epoch >= 1 for a mid-epoch checkpoint");
    for (int l = 0; l < L; l++)
        for (int v = 0; v < 3; v++) {
            char key[32];
            if (v == 2 && c->v2) continue; /* format 2 did not keep the last epoch's routing */
            snprintf(key, sizeof key, "run.%shealth%d", v == 1 ? "v" : v == 2 ? "last" : "", c->v2 ? l : l + 1);
            const char *t = need(c, key);
            if (!t) return ML_ERR;
            /* a resumed layer has exactly the checkpoint's experts */
            ml_health_acc *tmp = ml_health_acc_new(c->want[l], e->train.num_classes);
            int rc = tmp ? ml_health_acc_from_text(tmp, t) : ML_ERR;
            ml_health_acc_free(tmp);
            if (rc) return ml_error_prefix("%s: metadata '%s'", c->path, key);
            (v == 1 ? c->vhealth : v == 2 ? c->lhealth : c->health)[l] = t;
        }
    if (!c->v2) {
        int64_t hl;
        if (meta_u(c, "run.have_last", 1, &hl)) return ML_ERR;
        c->have_last = (int)hl;
        for (int l = 0; l < L; l++) {
            char key[32];
            snprintf(key, sizeof key, "run.rmetrics%d", l + 1);
            if (!(c->rmetrics[l] = need(c, key))) return ML_ERR;
            ml_router_inst probe;
            memset(&probe, 0, sizeof probe);
            if (ml_router_inst_metrics_from_text(&probe, ML_METRIC_TRAIN, c->rmetrics[l]))
                return ml_error_prefix("%s: metadata '%s'", c->path, key);
        }
    }
    const char *s = need(c, "run.script_state");
    if (!s) return ML_ERR;
    if (strcmp(s, "null") != 0) {
        ml_jv *j = ml_jv_parse(s, strlen(s));
        int ok = j && j->type == ML_JV_OBJ;
        ml_jv_free(j);
        if (!ok) return ml_errorf("%s: metadata 'run.script_state' is not a JSON object (exp.state)", c->path);
    }
    c->state = s;
    return parse_script_settings(e, c);
}

/* A value of a script setting, checked by the rule of its config key. */
static int setting_ok(const char *key, double v) {
    ml_scalar_spec sp;
    char text[48];
    if (!isfinite(v) || ml_config_key_spec(key, &sp)) return 0;
    ml_scalar_fmt_num(v, text, sizeof text);
    return ml_scalar_check(&sp, text, 0, NULL, NULL, 0) == ML_SC_OK;
}

static int parse_optim(ck *c, const char *v) {
    const char *p = v;
    for (int i = 0; i < 6; i++) {
        size_t kl = strlen(optim_keys[i]);
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char key[32];
        snprintf(key, sizeof key, "optim.%s", optim_keys[i]);
        if (len <= kl + 1 || strncmp(p, optim_keys[i], kl) != 0 || p[kl] != '=' ||
            !parse_double(p + kl + 1, len - kl - 1, &c->optim[i]) || !setting_ok(key, c->optim[i]) ||
            (i < 5) != (end != NULL))
            return bad_value(c, "run.optim", v, "lr=,beta1=,beta2=,eps=,weight_decay=,momentum= within the optim.* ranges");
        p = end ? end + 1 : p + len;
    }
    c->has_optim = 1;
    return ML_OK;
}

/* "lr" or "weight_decay" of one group: a number (hex, as a string) in the key's range, or null */
static int group_value(const ml_jv *g, const char *k, float *out) {
    const ml_jv *x = ml_jv_get(g, k);
    char key[48];
    snprintf(key, sizeof key, "optim.groups.*.%s", k);
    double d;
    if (x && x->type == ML_JV_NULL) *out = NAN;
    else if (x && x->type == ML_JV_STR && parse_double(x->str, strlen(x->str), &d) && setting_ok(key, d)) *out = (float)d;
    else return 0;
    return 1;
}

static int parse_groups(const ml_experiment *e, ck *c, const char *v) {
    const ml_optim *o = &e->opt;
    ml_jv *j = ml_jv_parse(v, strlen(v));
    int ok = j && j->type == ML_JV_OBJ && j->n == o->n_groups;
    for (int g = 0; ok && g < j->n; g++) {
        const ml_jv *x = &j->items[g], *fz = ml_jv_get(x, "frozen");
        ok = !strcmp(j->keys[g], o->group[g].name) && x->type == ML_JV_OBJ && x->n == 3 && fz && fz->type == ML_JV_BOOL &&
             group_value(x, "lr", &c->glr[g]) && group_value(x, "weight_decay", &c->gwd[g]);
        if (ok) c->gfrozen[g] = fz->boolean;
    }
    ml_jv_free(j);
    if (!ok)
        return ml_errorf("%s: metadata 'run.groups' does not hold the config's %d parameter groups (in config order: "
                         "{\"name\": {\"lr\", \"weight_decay\", \"frozen\"}}, values in their ranges)", c->path, o->n_groups);
    c->has_groups = 1;
    return ML_OK;
}

/* A name in run.frozen: a parameter of the model, or of an expert the checkpoint has (a resume
   makes the layers match the checkpoint: every expert tensor in the file is the model's then). */
static int frozen_name_ok(const ml_experiment *e, const ck *c, const char *name) {
    const ml_model *m = e->model;
    int l, k, n = 0;
    if (sscanf(name, "moe%d.expert%d.%n", &l, &k, &n) == 2 && n > 0) {
        if (--l < 0 || l >= m->L || k >= c->want[l]) return 0;
        return ck_get(c, name, NULL, NULL) != NULL;
    }
    return ml_params_find(&m->P, name) >= 0;
}

/* Calls fn(ctx, name) for each name of the ';'-separated list v (names < ML_TENSOR_NAME_MAX
   bytes); stops at the first that returns 0 and returns 0 then, with the name in bad. */
static int each_name(const char *v, int (*fn)(void *ctx, const char *name), void *ctx, char *bad, size_t cap) {
    for (const char *p = v; *p;) {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char nm[ML_TENSOR_NAME_MAX];
        snprintf(bad, cap, "%.*s", (int)(len < 60 ? len : 60), p);
        if (len == 0 || len >= sizeof nm) return 0;
        memcpy(nm, p, len);
        nm[len] = 0;
        if (!fn(ctx, nm)) return 0;
        if (!end) break;
        p = end + 1;
        if (!*p) {
            snprintf(bad, cap, "%s", ""); /* a trailing ';' */
            return 0;
        }
    }
    return 1;
}

typedef struct frozen_ctx { const ml_experiment *e; const ck *c; ml_params *P; } frozen_ctx;

static int frozen_check(void *ctx, const char *name) {
    frozen_ctx *f = ctx;
    return frozen_name_ok(f->e, f->c, name);
}

static int frozen_set(void *ctx, const char *name) {
    frozen_ctx *f = ctx;
    int h = ml_params_find(f->P, name);
    if (h >= 0) f->P->t[h].frozen = 1;
    return h >= 0;
}

/* run.router<l> into out, from the layer's options (the config's when the checkpoint is
   read): every name an option of the plugin, every value valid, and only options the
   plugin flags ML_OPTF_RUNTIME different from the config's. */
static int parse_router_opts(const ml_router_inst *ri, const ck *c, const char *key, const char *v, ml_optval *out) {
    const ml_plugin *p = ri->plugin;
    memcpy(out, ri->opt, (size_t)p->num_options * sizeof *out);
    for (const char *q = v; *q;) {
        const char *end = strchr(q, ';');
        size_t len = end ? (size_t)(end - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        char name[128], val[128], b[64];
        if (!eq || eq == q || (size_t)(eq - q) >= sizeof name || len - (size_t)(eq - q) - 1 >= sizeof val)
            return bad_value(c, key, v, "'option=value' pairs separated by ';'");
        snprintf(name, sizeof name, "%.*s", (int)(eq - q), q);
        snprintf(val, sizeof val, "%.*s", (int)(len - (size_t)(eq - q) - 1), eq + 1);
        int o = ml_option_find(p, name);
        if (o < 0)
            return ml_errorf("%s: metadata '%s': router '%s' has no option '%s'", c->path, key, p->name, shown(name, b, sizeof b));
        ml_optval x;
        if (ml_option_parse(&p->options[o], val, 0, &x))
            return ml_error_prefix("%s: metadata '%s': option '%s'", c->path, key, name);
        int differs = x.i != ri->opt[o].i || !(x.f == ri->opt[o].f || (isnan(x.f) && isnan(ri->opt[o].f)));
        if (differs && !(p->options[o].flags & ML_OPTF_RUNTIME))
            return ml_errorf("%s: metadata '%s': option '%s' is %s, not the config's value, and router '%s' cannot "
                             "change it while it runs", c->path, key, name, shown(val, b, sizeof b), p->name);
        out[o] = x;
        if (!end) break;
        q = end + 1;
    }
    return ML_OK;
}

/* The keys of what scripts change; each is optional (format-3 files before them). */
static int parse_script_settings(ml_experiment *e, ck *c) {
    const char *v;
    if ((v = ml_st_meta(c->f, "run.optim")) && parse_optim(c, v)) return ML_ERR;
    if ((v = ml_st_meta(c->f, "run.groups")) && parse_groups(e, c, v)) return ML_ERR;
    if ((v = ml_st_meta(c->f, "run.frozen"))) {
        char bad[64], b[64];
        frozen_ctx f = {e, c, NULL};
        if (!each_name(v, frozen_check, &f, bad, sizeof bad))
            return ml_errorf("%s: metadata 'run.frozen' names tensor '%s', which the model does not have (or is not "
                             "a ';'-separated list of names)", c->path, shown(bad, b, sizeof b));
        c->frozen = v;
    }
    if ((v = ml_st_meta(c->f, "run.steplog"))) {
        int N[CK_MAX_LAYERS];
        for (int l = 0; l < c->L; l++)
            N[l] = c->want[l]; /* a resumed layer has exactly the checkpoint's experts */
        if (ml_steplog_check_text(e, N, v)) return ml_error_prefix("%s: metadata 'run.steplog'", c->path);
        if (meta_u(c, "run.steps_bytes", INT64_MAX, &c->steps_bytes) ||
            meta_u(c, "run.rsteps_bytes", INT64_MAX, &c->rsteps_bytes))
            return ML_ERR;
        c->steplog = v;
    }
    if (ml_st_meta(c->f, "run.rlabels_bytes")) {
        if (meta_u(c, "run.rlabels_bytes", INT64_MAX, &c->rlabels_bytes)) return ML_ERR;
        c->has_rlabels = 1;
    }
    for (int l = 0; l < c->L; l++) {
        char key[32];
        snprintf(key, sizeof key, "run.router%d", l + 1);
        if (!(v = ml_st_meta(c->f, key))) continue;
        ml_optval opt[ML_MAX_OPTIONS];
        if (parse_router_opts(&e->model->moe[l]->router, c, key, v, opt)) return ML_ERR;
        c->router[l] = v;
    }
    return ML_OK;
}

/* Sets again what the script had set (after growth: every frozen name is a tensor). */
static int apply_script_settings(ml_experiment *e, const ck *c) {
    ml_optim *o = &e->opt;
    if (c->has_optim) {
        float *dst[6] = {&o->lr, &o->beta1, &o->beta2, &o->eps, &o->weight_decay, &o->momentum};
        for (int i = 0; i < 6; i++) *dst[i] = (float)c->optim[i];
    }
    for (int g = 0; c->has_groups && g < o->n_groups; g++) {
        o->group[g].lr = c->glr[g];
        o->group[g].weight_decay = c->gwd[g];
        o->group[g].frozen = c->gfrozen[g];
    }
    if (c->frozen) {
        ml_params *P = &e->model->P;
        for (int k = 0; k < P->count; k++) P->t[k].frozen = 0;
        char bad[64];
        frozen_ctx f = {e, c, P};
        if (!each_name(c->frozen, frozen_set, &f, bad, sizeof bad))
            return ml_errorf("%s: metadata 'run.frozen' names tensor '%s', which the model does not have", c->path, bad);
    }
    for (int l = 0; l < e->model->L; l++) {
        if (!c->router[l]) continue;
        char key[32];
        snprintf(key, sizeof key, "run.router%d", l + 1);
        ml_optval opt[ML_MAX_OPTIONS];
        ml_router_inst *ri = &e->model->moe[l]->router;
        if (parse_router_opts(ri, c, key, c->router[l], opt) || ml_router_inst_set_options(ri, opt)) return ML_ERR;
    }
    return ML_OK;
}

static int has_tensor(const ck *c, const char *path, const char *name, int ndim, const int *shape) {
    int nd;
    int64_t sh[4];
    if (!ck_get(c, name, &nd, sh))
        return ml_errorf("%s: checkpoint has no tensor '%s' (it was saved from a different model)", path, name);
    int same = nd == ndim;
    for (int d = 0; same && d < nd; d++) same = sh[d] == shape[d];
    if (!same) return ml_errorf("%s: tensor '%s' has a different shape in the checkpoint than in the model", path, name);
    return ML_OK;
}

/* layer of a per-expert router, loss or schedule tensor (its rows follow the layer's
   experts), else -1 */
static int growing_layer(const ml_experiment *e, const ml_params *blk, const ml_tensor *x) {
    return ml_exp_growing_layer(e, blk, (int)(x - blk->t));
}

/* expert index of "moe<l>.expert<e>.*" in layer *layer, else -1 */
static int expert_of(const ml_tensor *x, int *layer) {
    int l, k, n = 0;
    if (sscanf(x->name, "moe%d.expert%d.%n", &l, &k, &n) != 2 || n == 0) return -1;
    *layer = l - 1; /* names count layers from 1 */
    return k;
}

/* An expert tensor the file does not give: of an expert past what the checkpoint loads into
   (removed by a resume, or kept as it is by load_checkpoint). */
static int not_loaded(const ml_model *m, const ml_tensor *x, const int *keep) {
    int l, k = expert_of(x, &l);
    return k >= 0 && l >= 0 && l < m->L && k >= keep[l];
}

/* Rows of a per-expert router or loss tensor to take from the file (all of them otherwise). */
static size_t file_elems(const ml_experiment *e, const ml_params *blk, const ml_tensor *x, const int *want) {
    int l = growing_layer(e, blk, x);
    if (l < 0 || want[l] >= x->shape[0]) return x->n;
    return x->n / (size_t)x->shape[0] * (size_t)want[l];
}

/* The variant the checkpoint gives expert x of layer l, or -1: as the model has it. */
static int file_variant(const ck *c, int l, int x) { return c->var[l] ? c->var[l][x] : -1; }

/*
 * What loading does to each layer: the model's experts 0..keep-1 take the file's values; a
 * resume removes the model's experts keep..N-1 and creates keep..want-1 as the file has them
 * (its layers become the checkpoint's: count and variants); load_checkpoint keeps a layer's
 * experts past the file's as they are and creates the ones the file has beyond the layer's.
 */
static void plan(const ml_experiment *e, ck *c) {
    for (int l = 0; l < c->L; l++) {
        const ml_moe *q = e->model->moe[l];
        int k = q->N < c->want[l] ? q->N : c->want[l];
        if (c->resume)
            for (int x = 0; x < k; x++)
                if (file_variant(c, l, x) >= 0 && file_variant(c, l, x) != ml_moe_variant(q, x)) {
                    k = x; /* from the first that differs in structure, the layer is rebuilt */
                    break;
                }
        c->keep[l] = k;
    }
}

/* Every tensor the (restructured) model takes from the file is there with its shape, and finite. */
static int validate_tensors(const ml_experiment *e, const ck *c) {
    const ml_model *m = e->model;
    const int *want = c->want;
    char name[ML_TENSOR_NAME_MAX + 16];
    for (int b = 0; b < 2; b++) {
        const ml_params *P = b ? &m->S : &m->P;
        for (int i = 0; i < P->count; i++) {
            const ml_tensor *x = &P->t[i];
            if (x->removed || not_loaded(m, x, c->keep)) continue;
            int shape[ML_MAX_DIMS];
            memcpy(shape, x->shape, sizeof shape);
            int l = growing_layer(e, P, x);
            if (l >= 0) shape[0] = want[l];
            if (has_tensor(c, c->path, x->name, x->ndim, shape)) return ML_ERR;
            for (int k = 0; !b && k < 2; k++) {
                snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', x->name);
                if (has_tensor(c, c->path, name, x->ndim, shape)) return ML_ERR;
            }
        }
    }
    for (int l = 0; l < m->L; l++) { /* the experts the loading creates, as the file has them */
        const ml_moe *q = m->moe[l];
        ml_expert_tensor t;
        for (int x = c->resume ? c->keep[l] : q->N; x < want[l]; x++)
            for (int p = 0; ml_moe_expert_tensor_as(q, x, file_variant(c, l, x), p, &t) == 0; p++)
                for (int k = 0; k < 3; k++) {
                    snprintf(name, sizeof name, "%smoe%d.expert%d.%s", k == 0 ? "" : k == 1 ? "optim.m." : "optim.v.", l + 1,
                             x, t.name);
                    if (has_tensor(c, c->path, name, t.ndim, t.shape)) return ML_ERR;
                }
    }
    /* refuse non-finite values anywhere in the file (one pass over each tensor) */
    for (int i = 0; i < ml_st_count(c->f); i++) {
        const char *nm = ml_st_name(c->f, i);
        int nd;
        int64_t sh[4];
        const float *d = ml_st_get(c->f, nm, &nd, sh);
        size_t n = 1;
        for (int k = 0; k < nd; k++) n *= (size_t)sh[k];
        if (d && ml_ckpt_first_nonfinite(d, n) >= 0)
            return ml_errorf("%s: tensor '%s' holds non-finite values (NaN or Inf); refusing to load it", c->path, nm);
    }
    return ML_OK;
}

static void copy_tensors(ml_experiment *e, const ck *c) {
    ml_model *m = e->model;
    char name[ML_TENSOR_NAME_MAX + 16];
    int nd;
    int64_t sh[4];
    for (int i = 0; i < m->P.count; i++) {
        const ml_tensor *x = &m->P.t[i];
        if (x->removed || not_loaded(m, x, c->want)) continue;
        size_t bytes = file_elems(e, &m->P, x, c->want) * sizeof(float);
        memcpy(m->P.data + x->off, ck_get(c, x->name, &nd, sh), bytes);
        snprintf(name, sizeof name, "optim.m.%s", x->name);
        memcpy(m->P.m + x->off, ck_get(c, name, &nd, sh), bytes);
        snprintf(name, sizeof name, "optim.v.%s", x->name);
        memcpy(m->P.v + x->off, ck_get(c, name, &nd, sh), bytes);
    }
    for (int i = 0; i < m->S.count; i++) {
        const ml_tensor *x = &m->S.t[i];
        if (x->removed || not_loaded(m, x, c->want)) continue;
        memcpy(m->S.data + x->off, ck_get(c, x->name, &nd, sh), file_elems(e, &m->S, x, c->want) * sizeof(float));
    }
}

/* After growth: every name in optim_steps is a model tensor. */
static int check_steps(const ml_model *m, const ck *c) {
    const char *st = ml_st_meta(c->f, "optim_steps");
    for (const char *p = st; *p;) {
        const char *eq = strchr(p, '='), *end = strchr(p, ';');
        char nm[ML_TENSOR_NAME_MAX + 1], mn[ML_TENSOR_NAME_MAX + 32];
        size_t len = (size_t)(eq - p);
        if (len >= sizeof nm ||
            ml_params_find(&m->P, renumber(c, (memcpy(nm, p, len), nm[len] = 0, nm), mn, sizeof mn, 1)) < 0) {
            char b[64];
            snprintf(nm, sizeof nm, "%.*s", (int)(len < 60 ? len : 60), p);
            return ml_errorf("%s: metadata 'optim_steps' names tensor '%s', which the model does not have", c->path,
                             shown(nm, b, sizeof b));
        }
        if (!end) break;
        p = end + 1;
    }
    return ML_OK;
}

static void apply_steps(ml_model *m, const ck *c) {
    const char *st = ml_st_meta(c->f, "optim_steps");
    for (const char *p = st; *p;) {
        const char *eq = strchr(p, '='), *end = strchr(p, ';');
        char nm[ML_TENSOR_NAME_MAX + 1], mn[ML_TENSOR_NAME_MAX + 32];
        size_t len = (size_t)(eq - p);
        memcpy(nm, p, len);
        nm[len] = 0;
        int h = ml_params_find(&m->P, renumber(c, nm, mn, sizeof mn, 1));
        int64_t v = 0;
        parse_u(eq + 1, end ? (size_t)(end - eq - 1) : strlen(eq + 1), &v);
        if (h >= 0) m->P.t[h].step = v;
        if (!end) break;
        p = end + 1;
    }
}

/*
 * Makes each layer what the plan says (plan() above): a resume removes the experts past
 * keep and creates the file's, silently (the events file already tells how the run got
 * there); load_checkpoint creates the experts the file has beyond the layer's with an
 * experts_added event (reason "checkpoint"), as add_experts does.
 */
static int restructure(ml_experiment *e, const ck *c) {
    ml_model *m = e->model;
    for (int l = 0; l < m->L; l++) {
        ml_moe *q = m->moe[l];
        const int N0 = q->N;
        int first = q->N; /* the first expert the file's new ones take */
        if (c->resume && c->keep[l] > 0 && c->keep[l] < N0) {
            int *kept = ml_calloc((size_t)c->keep[l], sizeof *kept);
            if (!kept) return ML_ERR;
            for (int x = 0; x < c->keep[l]; x++) kept[x] = x;
            int rc = ml_exp_keep_experts(e, l, kept, c->keep[l]);
            free(kept);
            if (rc) return ML_ERR;
            first = c->keep[l];
        } else if (c->resume && c->keep[l] == 0) {
            first = 0; /* expert 0 itself differs in structure: the file's experts are made beside the
                          model's, which then go, and the new ones take their numbers */
        }
        int old = q->N, n = c->want[l] - first;
        if (n <= 0) continue;
        int *var = ml_calloc((size_t)n, sizeof *var);
        if (!var) return ML_ERR;
        for (int j = 0; j < n; j++) var[j] = file_variant(c, l, first + j);
        int rc = ml_exp_grow_layer(e, l, n, var);
        free(var);
        if (rc) return ML_ERR;
        if (c->resume && c->keep[l] == 0) {
            int *kept = ml_calloc((size_t)n, sizeof *kept);
            if (!kept) return ML_ERR;
            for (int j = 0; j < n; j++) kept[j] = old + j;
            rc = ml_exp_keep_experts(e, l, kept, n);
            free(kept);
            if (rc) return ML_ERR;
        }
        if (!c->resume) {
            if (ml_steplog_grow(e, l, old, q->N, 1)) return ML_ERR;
            ml_json j;
            ml_json_begin(&j);
            ml_json_int(&j, "layer", l + 1);
            ml_json_int(&j, "added", n);
            ml_json_int(&j, "from", old);
            ml_json_int(&j, "to", q->N);
            ml_json_int(&j, "images_seen", e->images_seen);
            ml_json_str(&j, "reason", "checkpoint");
            rc = ml_exp_event_json(e, "experts_added", &j);
            ml_json_free(&j);
            if (rc) return ML_ERR;
        }
    }
    return ML_OK;
}

/* A resumed run lays its blocks out as the checkpoint lists its tensors, which is how the
   interrupted run had them laid out (additions and removals make that differ from the
   order a fresh model declares), so it writes the same checkpoints, byte for byte. */
static int reorder_as_file(ml_experiment *e, const ck *c) {
    ml_model *m = e->model;
    int n = ml_st_count(c->f), rc = ML_OK;
    int *hp = ml_calloc((size_t)n + 1, sizeof *hp), *hs = ml_calloc((size_t)n + 1, sizeof *hs);
    if (!hp || !hs) rc = ML_ERR;
    int np = 0, ns = 0;
    for (int i = 0; i < n && rc == ML_OK; i++) {
        const char *nm = ml_st_name(c->f, i);
        char buf[ML_TENSOR_NAME_MAX + 32];
        if (!strncmp(nm, "optim.", 6)) continue;
        const char *mn = renumber(c, nm, buf, sizeof buf, 1);
        int h = ml_params_find(&m->P, mn);
        if (h >= 0) hp[np++] = h;
        else if ((h = ml_params_find(&m->S, mn)) >= 0) hs[ns++] = h;
    }
    if (rc == ML_OK) rc = ml_params_reorder(&m->P, hp, np);
    if (rc == ML_OK) rc = ml_params_reorder(&m->S, hs, ns);
    if (rc == ML_OK) rc = ml_model_grow_commit(m);
    free(hp), free(hs);
    return rc;
}

/* Opens and validates everything; on success the model is not yet changed. */
static int ck_open(ml_experiment *e, ck *c, const char *path, int resume) {
    memset(c, 0, sizeof *c);
    c->path = path;
    c->resume = resume;
    c->f = ml_st_open(path);
    if (!c->f) return ML_ERR;
    if (parse_model_meta(e, c, resume)) return ML_ERR;
    plan(e, c);
    if (resume && parse_run_meta(e, c)) return ML_ERR;
    return validate_tensors(e, c);
}

/* Loads the model-level state of an opened, validated checkpoint. */
static int ck_apply_model(ml_experiment *e, ck *c) {
    ml_model *m = e->model;
    if (restructure(e, c) || (c->resume && reorder_as_file(e, c)) || check_steps(m, c)) return ML_ERR;
    copy_tensors(e, c);
    e->opt.t = c->optt;
    apply_steps(m, c);
    m->init_rng = c->rng_init;
    for (int l = 0; l < m->L; l++) m->moe[l]->router.rng = c->rng_moe[l];
    return ML_OK;
}

static int resolve_tag(ml_experiment *e, const char *tag, char *path, size_t n) {
    if (strchr(tag, '/')) {
        snprintf(path, n, "%s", tag);
        return ML_OK;
    }
    if (check_tag(tag)) return ML_ERR;
    if (!e->res) return ml_errorf("load_checkpoint: the run directory is not open");
    ckpt_path(e, tag, path, n);
    return ML_OK;
}

int ml_exp_load_checkpoint(ml_experiment *e, const char *tag, int *epoch, int64_t *step) {
    char path[4096];
    if (resolve_tag(e, tag, path, sizeof path)) return ML_ERR;
    ck c;
    int rc = ck_open(e, &c, path, 0);
    if (!rc) rc = ck_apply_model(e, &c);
    *epoch = (int)c.epoch;
    *step = c.step;
    ck_free(&c);
    if (rc) return ML_ERR;
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, "tag", tag);
    ml_json_int(&j, "checkpoint_epoch", *epoch);
    rc = ml_exp_event_json(e, "checkpoint_loaded", &j);
    ml_json_free(&j);
    return rc;
}

/* -------------------------------------------------------------------- resume */

static int set_row(char **names, double *values, int *n, const ml_jv *row, double clock) {
    for (int i = 0; i < *n; i++) free(names[i]);
    *n = 0;
    for (int i = 0; i < row->n; i++) {
        if (!(names[i] = ml_strdup(row->keys[i]))) return ML_ERR;
        values[i] = strcmp(row->items[i].str, "clock") == 0 ? clock : strtod(row->items[i].str, NULL);
        *n = i + 1;
    }
    return ML_OK;
}

static int ck_apply_run(ml_experiment *e, ck *c) {
    ml_model *m = e->model;
    e->epoch = (int)(c->epoch - c->in_epoch);
    e->step = c->step;
    e->images_seen = c->seen;
    for (int l = 0; l < m->L; l++) {
        m->moe[l]->router.step = c->moe_step[l];
        m->moe[l]->router.epoch = (int)c->moe_epoch[l];
        if (ml_health_acc_from_text(e->acc[l], c->health[l]) || ml_health_acc_from_text(e->vacc[l], c->vhealth[l]))
            return ML_ERR;
        if (c->lhealth[l] && ml_health_acc_from_text(e->last_acc[l], c->lhealth[l])) return ML_ERR;
        if (ml_router_inst_metrics_from_text(&m->moe[l]->router, ML_METRIC_TRAIN, c->rmetrics[l] ? c->rmetrics[l] : ""))
            return ML_ERR;
    }
    e->have_last = c->v2 ? 0 : c->have_last;
    for (int i = 0; i < e->n_losses; i++) e->loss[i].coef = c->coef[i];
    e->best_val = c->best_val;
    e->best_epoch = (int)c->best_epoch;
    ml_epoch_acc *a = &e->ep;
    memset(a, 0, sizeof *a);
    if (c->in_epoch) {
        a->resume_pending = 1;
        a->hook_pending = (int)c->hook_pending;
        a->position = c->position;
        a->loss_sum = c->loss_sum;
        a->task_sum = c->task_sum;
        memcpy(a->aux_sum, c->aux, sizeof a->aux_sum);
        a->seen = c->ep_seen;
        a->steps = c->ep_steps;
        a->used = c->ep_used;
        a->skipped = c->ep_skipped;
    }
    if (set_row(e->col_name, e->col_value, &e->n_cols, c->row, c->clock[0]) ||
        set_row(e->last_name, e->last_value, &e->last_n, c->last_row, c->clock[1]))
        return ML_ERR;
    e->row_pending = e->n_cols > 0;
    free(e->script_state);
    e->script_state = strcmp(c->state, "null") != 0 ? ml_strdup(c->state) : NULL;
    if (strcmp(c->state, "null") != 0 && !e->script_state) return ML_ERR;
    if (c->steplog && ml_steplog_from_text(e, c->steplog)) return ML_ERR;
    return apply_script_settings(e, c);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* "interrupt" when present and at least as far as "last" (by step), else "last". */
static const char *pick_tag(const char *run_dir, char *why, size_t n, int *bad) {
    char pi[4200], pl[4200];
    snprintf(pi, sizeof pi, "%s/checkpoints/interrupt.safetensors", run_dir);
    snprintf(pl, sizeof pl, "%s/checkpoints/last.safetensors", run_dir);
    int hi = file_exists(pi), hl = file_exists(pl);
    if (!hi) return hl ? "last" : NULL;
    if (!hl) return "interrupt";
    /* both: compare their steps. An interrupt checkpoint that does not read is an error,
     * not a silent fallback to 'last' (which would redo an epoch without saying why). */
    int64_t si = -1, sl = -1;
    ml_st_file *f = ml_st_open(pi);
    const char *v;
    if (!f || !(v = ml_st_meta(f, "step")) || !parse_u(v, strlen(v), &si)) {
        ml_error_prefix("checkpoints/interrupt.safetensors cannot be used (hint: resume from the last complete "
                        "epoch with --from last)");
        ml_st_close(f);
        *bad = 1;
        return NULL;
    }
    ml_st_close(f);
    f = ml_st_open(pl);
    if (f && (v = ml_st_meta(f, "step")) && !parse_u(v, strlen(v), &sl)) sl = -1;
    ml_st_close(f);
    snprintf(why, n, "interrupt at step %" PRId64 ", last at step %" PRId64, si, sl);
    return si >= 0 && si >= sl ? "interrupt" : "last";
}

int ml_exp_resume(ml_experiment *e, const char *run_dir, const char *from_tag, int *exit_code) {
    *exit_code = ML_EXIT_USAGE;
    char why[128] = "";
    const char *tag = from_tag;
    if (tag && check_tag(tag)) return ML_ERR;
    int bad = 0;
    if (!tag && !(tag = pick_tag(run_dir, why, sizeof why, &bad))) {
        if (bad) {
            *exit_code = ML_EXIT_RUNTIME;
            return ML_ERR;
        }
        return ml_errorf("%s: no checkpoint to resume from (neither checkpoints/interrupt.safetensors nor "
                         "checkpoints/last.safetensors exists; the run stopped before its first epoch ended)", run_dir);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/checkpoints/%s.safetensors", run_dir, tag);
    if (!file_exists(path)) return ml_errorf("%s: no checkpoint '%s' to resume from", path, tag);
    *exit_code = ML_EXIT_RUNTIME;
    ck c;
    if (ck_open(e, &c, path, 1)) {
        ck_free(&c);
        return ML_ERR;
    }
    ml_plugins_forbid_dir(run_dir); /* the script writes there: never a plugin from it */
    if ((e->res = ml_results_reopen(run_dir)) &&
        ((c.steplog && (ml_results_extent(e->res, "steps.csv") < c.steps_bytes ||
                        ml_results_extent(e->res, "routing_steps.csv") < c.rsteps_bytes)) ||
         (c.has_rlabels && ml_results_extent(e->res, "routing_labels.csv") < c.rlabels_bytes))) { /* before anything is cut */
        ck_free(&c);
        return ml_errorf("%s: steps.csv, routing_steps.csv or routing_labels.csv is shorter than checkpoint '%s' says "
                         "(%" PRId64 ", %" PRId64 " and %" PRId64 " bytes): was it edited?",
                         run_dir, tag, c.steps_bytes, c.rsteps_bytes, c.rlabels_bytes);
    }
    if (!e->res ||
        ml_results_truncate(e->res, (int)c.metrics_rows, (long)c.routing_bytes, (long)c.events_bytes) ||
        (c.steplog && (ml_results_cut(e->res, "steps.csv", (long)c.steps_bytes) ||
                       ml_results_cut(e->res, "routing_steps.csv", (long)c.rsteps_bytes))) ||
        (c.has_rlabels && ml_results_cut(e->res, "routing_labels.csv", (long)c.rlabels_bytes)) ||
        ck_apply_model(e, &c) || ck_apply_run(e, &c)) {
        ck_free(&c);
        return ML_ERR;
    }
    ck_free(&c);
    e->resumed = 1;
    e->started = ml_now();
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, "from", tag);
    ml_json_int(&j, "images_seen", e->images_seen);
    ml_json_int(&j, "epochs_done", e->epoch);
    ml_json_raw(&j, "mid_epoch", e->ep.resume_pending ? "true" : "false");
    int rc = ml_exp_event_json(e, "resumed", &j);
    ml_json_free(&j);
    if (!rc) rc = ml_prov_resume(e, run_dir, tag);
    if (!rc) rc = ml_exp_write_summary(e, "running"); /* also arms the crash report for this directory */
    if (!rc) ml_log(ML_LOG_INFO, "resuming %s from checkpoint '%s' (epoch %d%s, step %" PRId64 ")%s%s%s", run_dir, tag,
                    e->epoch + (e->ep.resume_pending ? 1 : 0), e->ep.resume_pending ? " in progress" : " done", e->step,
                    *why ? " [" : "", why, *why ? "]" : "");
    return rc;
}
