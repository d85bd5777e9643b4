/* steplog.c — steps.csv, routing_steps.csv and new-expert share (steplog.h). */
#include "run/steplog.h"
#include "base/common.h"
#include "base/json.h"
#include "base/strbuf.h"
#include "io/results.h"
#include "run/experiment.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(ML_MAX_LOSSES <= 16, "steplog keeps 16 losses");

int ml_steplog_init(ml_experiment *e) {
    ml_steplog *s = &e->steplog;
    memset(s, 0, sizeof *s);
    s->every = (int)ml_config_int(e->cfg, "results.log_every_steps", 0);
    s->watch_steps = (int)ml_config_int(e->cfg, "health.new_expert_steps", 50);
    s->L = e->model->L;
    if (s->L > ML_STEPLOG_MAX_LAYERS) return ml_errorf("steplog: more than %d MoE layers", ML_STEPLOG_MAX_LAYERS);
    if (s->every > 0) {
        s->win = ml_calloc((size_t)s->L, sizeof *s->win);
        if (!s->win) return ML_ERR;
        for (int l = 0; l < s->L; l++)
            if (!(s->win[l] = ml_health_acc_new(e->model->moe[l]->N, 0))) return ML_ERR;
    }
    return ML_OK;
}

void ml_steplog_free(ml_steplog *s) {
    if (s->win)
        for (int l = 0; l < s->L; l++) ml_health_acc_free(s->win[l]);
    free(s->win);
    free(s->watch);
    memset(s, 0, sizeof *s);
}

int ml_steplog_route(ml_experiment *e, int l, const ml_routing_record *r, int n_dropped) {
    ml_steplog *s = &e->steplog;
    if (s->win) ml_health_acc_add(s->win[l], r, n_dropped);
    for (int w = 0; w < s->n_watch; w++) {
        ml_watch *x = &s->watch[w];
        if (x->layer != l) continue;
        for (int t = 0; t < r->n_disp; t++) x->slots += r->disp_expert[t] == x->expert;
        x->total += r->n_disp;
    }
    return ML_OK;
}

/* Ends watch w: its event, and its ratio into the epoch's column. Removes it. */
static int end_watch(ml_experiment *e, int w, int partial) {
    ml_steplog *s = &e->steplog;
    ml_watch x = s->watch[w];
    int N = e->model->moe[x.layer]->N;
    double share = x.total ? (double)x.slots / (double)x.total : NAN, ratio = share * N;
    ml_json j;
    ml_json_begin(&j);
    ml_json_int(&j, "layer", x.layer + 1);
    ml_json_int(&j, "expert", x.expert);
    ml_json_int(&j, "added_step", x.added_step);
    ml_json_int(&j, "steps", x.steps);
    ml_json_num(&j, "share", share);
    ml_json_num(&j, "fair", 1.0 / N);
    ml_json_num(&j, "ratio", ratio);
    if (partial) ml_json_raw(&j, "partial", "true");
    int rc = ml_exp_event_json(e, "new_expert_share", &j);
    ml_json_free(&j);
    if (!partial && ratio == ratio) {
        s->done_sum[x.layer] += ratio;
        s->done_n[x.layer]++;
    }
    memmove(&s->watch[w], &s->watch[w + 1], (size_t)(s->n_watch - w - 1) * sizeof *s->watch);
    s->n_watch--;
    return rc;
}

static int write_rows(ml_experiment *e) {
    ml_steplog *s = &e->steplog;
    ml_strbuf head = {0}, row = {0}, rh = {0}, rrows = {0};
    ml_strbuf_puts(&head, "step,epoch,images_seen,loss,task_loss");
    ml_strbuf_printf(&row, "%" PRId64 ",%d,%" PRId64, e->step, e->epoch, e->images_seen);
    double u = (double)s->win_used;
    ml_strbuf_printf(&row, ",%.9g,%.9g", u ? s->loss_sum / u : NAN, u ? s->task_sum / u : NAN);
    for (int i = 0; i < e->n_losses; i++) {
        ml_strbuf_printf(&head, ",%s,coef_%s", e->loss[i].name, e->loss[i].name);
        ml_strbuf_printf(&row, ",%.9g,%.9g", u ? s->aux_sum[i] / u : NAN, e->loss[i].coef);
    }
    ml_strbuf_puts(&rh, "step,epoch,layer,expert,utilisation,importance\n");
    int rc = ML_OK;
    for (int l = 0; l < s->L && !rc; l++) {
        ml_health h;
        if (ml_health_compute(s->win[l], &e->hcfg, &h)) {
            rc = ML_ERR;
            break;
        }
        ml_strbuf_printf(&head, ",moe%d_experts,moe%d_active,moe%d_cv,moe%d_entropy_norm", l + 1, l + 1, l + 1, l + 1);
        ml_strbuf_printf(&row, ",%d,%d,%.9g,%.9g", h.num_experts, h.active, h.cv, h.marginal_entropy_norm);
        for (int x = 0; x < h.num_experts; x++)
            ml_strbuf_printf(&rrows, "%" PRId64 ",%d,%d,%d,%.9g,%.9g\n", e->step, e->epoch, l + 1, x, h.utilisation[x],
                             h.importance[x]);
        ml_health_free(&h);
        ml_health_acc_reset(s->win[l]);
    }
    ml_strbuf_puts(&head, "\n");
    ml_strbuf_puts(&row, "\n");
    if (!rc && (head.oom || row.oom || rh.oom || rrows.oom)) rc = ml_errorf("steplog: out of memory");
    /* the header names the losses and layers of the run; "nan" where a window had no sample */
    if (!rc) rc = ml_results_append(e->res, "steps.csv", head.buf, row.buf);
    if (!rc) rc = ml_results_append(e->res, "routing_steps.csv", rh.buf, rrows.buf);
    ml_strbuf_free(&head);
    ml_strbuf_free(&row);
    ml_strbuf_free(&rh);
    ml_strbuf_free(&rrows);
    s->win_steps = 0;
    s->win_used = 0;
    s->loss_sum = s->task_sum = 0;
    memset(s->aux_sum, 0, sizeof s->aux_sum);
    return rc;
}

int ml_steplog_step(ml_experiment *e, int applied, int B, double loss, double task, const double *aux) {
    ml_steplog *s = &e->steplog;
    for (int w = 0; w < s->n_watch;) {
        if (++s->watch[w].steps >= s->watch_steps) {
            if (end_watch(e, w, 0)) return ML_ERR;
        } else
            w++;
    }
    if (s->every <= 0 || !e->res) return ML_OK;
    s->win_steps++;
    if (applied) {
        s->win_used += B;
        s->loss_sum += loss * B;
        s->task_sum += task * B;
        for (int i = 0; i < e->n_losses; i++) s->aux_sum[i] += aux[i] * B;
    }
    return e->step % s->every == 0 ? write_rows(e) : ML_OK;
}

int ml_steplog_grow(ml_experiment *e, int l, int old_n, int new_n, int watch) {
    ml_steplog *s = &e->steplog;
    if (s->win && ml_health_acc_resize(s->win[l], new_n)) return ML_ERR;
    if (!watch || s->watch_steps <= 0) return ML_OK;
    int need = s->n_watch + (new_n - old_n);
    if (need > s->cap_watch) {
        int cap = need > 2 * s->cap_watch ? need : 2 * s->cap_watch;
        ml_watch *w = realloc(s->watch, (size_t)cap * sizeof *w);
        if (!w) return ml_errorf("steplog: out of memory");
        s->watch = w;
        s->cap_watch = cap;
    }
    for (int x = old_n; x < new_n; x++) s->watch[s->n_watch++] = (ml_watch){l, x, e->step, 0, 0, 0};
    return ML_OK;
}

int ml_steplog_keep(ml_experiment *e, int l, const int *kept, int nkeep) {
    ml_steplog *s = &e->steplog;
    if (s->win && ml_health_acc_keep(s->win[l], kept, nkeep)) return ML_ERR;
    int w = 0;
    for (int i = 0; i < s->n_watch; i++) {
        ml_watch x = s->watch[i];
        if (x.layer == l) {
            int j = 0;
            while (j < nkeep && kept[j] < x.expert) j++;
            if (j == nkeep || kept[j] != x.expert) continue; /* removed while watched: no share to report */
            x.expert = j;
        }
        s->watch[w++] = x;
    }
    s->n_watch = w;
    return ML_OK;
}

int ml_steplog_epoch_end(ml_experiment *e) {
    ml_steplog *s = &e->steplog;
    char col[64];
    for (int l = 0; l < s->L; l++) {
        if (!s->done_n[l]) continue;
        snprintf(col, sizeof col, "moe%d_new_expert_share", l + 1);
        if (ml_exp_log(e, col, s->done_sum[l] / s->done_n[l])) return ML_ERR;
        s->done_sum[l] = 0;
        s->done_n[l] = 0;
    }
    return ML_OK;
}

int ml_steplog_finish(ml_experiment *e) {
    ml_steplog *s = &e->steplog;
    while (s->n_watch) {
        if (!s->watch[0].steps) { /* never trained with: nothing to say */
            memmove(&s->watch[0], &s->watch[1], (size_t)(s->n_watch - 1) * sizeof *s->watch);
            s->n_watch--;
        } else if (end_watch(e, 0, 1))
            return ML_ERR;
    }
    return ML_OK;
}

/* ------------------------------------------------------------- checkpoints */

/* "S1 <win_steps> <win_used> <loss> <task> <n> <aux>... | <done_sum> <done_n> per layer |
   <n_watch> (<layer> <expert> <added> <steps> <slots> <total>)... | <window health>;...",
   reals as C99 hex floats so a resume continues from exactly the same values. */
char *ml_steplog_to_text(const ml_experiment *e) {
    const ml_steplog *s = &e->steplog;
    ml_strbuf b = {0};
    ml_strbuf_printf(&b, "S1 %d %" PRId64 " %a %a %d", s->win_steps, s->win_used, s->loss_sum, s->task_sum, e->n_losses);
    for (int i = 0; i < e->n_losses; i++) ml_strbuf_printf(&b, " %a", s->aux_sum[i]);
    ml_strbuf_puts(&b, " |");
    for (int l = 0; l < s->L; l++) ml_strbuf_printf(&b, " %a %d", s->done_sum[l], s->done_n[l]);
    ml_strbuf_printf(&b, " | %d", s->n_watch);
    for (int w = 0; w < s->n_watch; w++) {
        const ml_watch *x = &s->watch[w];
        ml_strbuf_printf(&b, " %d %d %" PRId64 " %d %" PRId64 " %" PRId64, x->layer, x->expert, x->added_step, x->steps,
                         x->slots, x->total);
    }
    ml_strbuf_puts(&b, " |");
    for (int l = 0; s->win && l < s->L; l++) {
        char *t = ml_health_acc_to_text(s->win[l]);
        if (!t) {
            ml_strbuf_free(&b);
            return NULL;
        }
        ml_strbuf_printf(&b, "%s%s", l ? ";" : " ", t);
        free(t);
    }
    return ml_strbuf_take(&b);
}

/* Parses text for layers of N[l] experts into out (watches and window accumulators newly
   allocated, owned by out); nothing else is touched. */
static int parse(const ml_experiment *e, const int *N, const char *text, ml_steplog *out) {
    const ml_steplog *s = &e->steplog;
    ml_steplog n = *s;
    n.watch = NULL;
    n.n_watch = n.cap_watch = 0;
    n.win = NULL;
    const char *p = text;
    int used = 0, naux = -1;
    if (sscanf(p, "S1 %d %" SCNd64 " %la %la %d%n", &n.win_steps, &n.win_used, &n.loss_sum, &n.task_sum, &naux, &used) != 5 ||
        n.win_steps < 0 || n.win_used < 0 || naux != e->n_losses || !isfinite(n.loss_sum) || !isfinite(n.task_sum))
        return ml_errorf("steplog state: expected 'S1 <steps> <samples> <loss> <task> %d ...'", e->n_losses);
    p += used;
    for (int i = 0; i < naux; i++) {
        used = 0;
        if (sscanf(p, " %la%n", &n.aux_sum[i], &used) != 1 || !isfinite(n.aux_sum[i]))
            return ml_errorf("steplog state: bad loss sum %d", i);
        p += used;
    }
    used = 0;
    if (sscanf(p, " |%n", &used) != 0 || !used) return ml_errorf("steplog state: expected '|' after the losses");
    p += used;
    for (int l = 0; l < s->L; l++) {
        used = 0;
        if (sscanf(p, " %la %d%n", &n.done_sum[l], &n.done_n[l], &used) != 2 || n.done_n[l] < 0 || !isfinite(n.done_sum[l]))
            return ml_errorf("steplog state: bad new-expert sums of layer %d", l + 1);
        p += used;
    }
    int nw = -1;
    used = 0;
    if (sscanf(p, " | %d%n", &nw, &used) != 1 || nw < 0 || nw > ML_STEPLOG_MAX_LAYERS * 4096)
        return ml_errorf("steplog state: bad number of watched experts");
    p += used;
    n.watch = nw ? ml_calloc((size_t)nw, sizeof *n.watch) : NULL;
    if (nw && !n.watch) return ML_ERR;
    n.n_watch = n.cap_watch = nw;
    for (int i = 0; i < nw; i++) {
        ml_watch *x = &n.watch[i];
        used = 0;
        if (sscanf(p, " %d %d %" SCNd64 " %d %" SCNd64 " %" SCNd64 "%n", &x->layer, &x->expert, &x->added_step, &x->steps,
                   &x->slots, &x->total, &used) != 6 ||
            x->layer < 0 || x->layer >= s->L || x->expert < 0 || x->expert >= N[x->layer] || x->steps < 0 ||
            x->added_step < 0 || x->slots < 0 || x->total < x->slots) {
            ml_steplog_free(&n);
            return ml_errorf("steplog state: bad watched expert %d", i);
        }
        p += used;
    }
    used = 0;
    if (sscanf(p, " |%n", &used) != 0 || !used) {
        ml_steplog_free(&n);
        return ml_errorf("steplog state: expected '|' before the window's routing");
    }
    p += used;
    while (*p == ' ') p++;
    if (s->win) { /* the window's routing, one accumulator per layer */
        n.win = ml_calloc((size_t)s->L, sizeof *n.win);
        if (!n.win) {
            ml_steplog_free(&n);
            return ML_ERR;
        }
        for (int l = 0; l < s->L; l++) {
            const char *end = strchr(p, ';');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            char *t = ml_calloc(len + 1, 1);
            if (t) memcpy(t, p, len);
            n.win[l] = ml_health_acc_new(N[l], 0);
            int rc = t && n.win[l] ? ml_health_acc_from_text(n.win[l], t) : ML_ERR;
            free(t);
            if (rc || (!end && l + 1 < s->L)) {
                ml_steplog_free(&n);
                return ml_error_prefix("steplog state: layer %d window", l + 1);
            }
            p += len + (end ? 1 : 0);
        }
    }
    if (*p) {
        ml_steplog_free(&n);
        return ml_errorf("steplog state: unexpected text at the end");
    }
    *out = n;
    return ML_OK;
}

int ml_steplog_check_text(const ml_experiment *e, const int *N, const char *text) {
    ml_steplog n;
    if (parse(e, N, text, &n)) return ML_ERR;
    ml_steplog_free(&n);
    return ML_OK;
}

int ml_steplog_from_text(ml_experiment *e, const char *text) {
    int N[ML_STEPLOG_MAX_LAYERS];
    for (int l = 0; l < e->steplog.L; l++) N[l] = e->model->moe[l]->N;
    ml_steplog n;
    if (parse(e, N, text, &n)) return ML_ERR;
    ml_steplog_free(&e->steplog);
    e->steplog = n;
    return ML_OK;
}
