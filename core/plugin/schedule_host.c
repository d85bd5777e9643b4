/* schedule_host.c — the hosted growth-schedule plugin instance (schedule_host.h). */
#include "plugin/schedule_host.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crash.h"
#include "plugin/loader.h"
#include "plugin/options.h"

int ml_schedule_inst_init(ml_schedule_inst *si, const ml_plugin *p, const ml_optval *opt, int num_layers,
                          int max_experts) {
    memset(si, 0, sizeof *si);
    si->plugin = p;
    si->api = p->api;
    si->file = ml_plugin_file(p) ? ml_plugin_file(p) : p->name;
    si->num_layers = num_layers;
    si->max_experts = max_experts;
    if ((int)p->kind != ML_PLUGIN_SCHEDULE)
        return ml_errorf("plugin '%s' (%s) is a %s plugin, expected a schedule", p->name, si->file,
                         ml_plugin_kind_name((int)p->kind));
    if (ml_optvals_resolve(p, opt, si->opt, &si->opt_packed)) return ML_ERR;
    ml_schedule_init init = {sizeof init, num_layers, si->opt_packed};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(si->file, "create");
    si->self = si->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!si->self)
        return ml_errorf("schedule '%s' (%s): create failed: %s", p->name, si->file, err[0] ? err : "(no message)");
    return ML_OK;
}

void ml_schedule_inst_release(ml_schedule_inst *si) {
    if (!si) return;
    free(si->state);
    si->state = NULL;
    if (si->self) {
        ml_crash_enter(si->file, "destroy");
        si->api->destroy(si->self);
        ml_crash_leave();
        si->self = NULL;
    }
    free(si->opt_packed);
    si->opt_packed = NULL;
}

int ml_schedule_inst_initial(ml_schedule_inst *si, int layer, int configured, int *out) {
    ml_crash_enter(si->file, "initial_experts");
    int n = si->api->initial_experts(si->self, layer, configured);
    ml_crash_leave();
    if (n < 1 || n > si->max_experts)
        return ml_errorf("schedule '%s' (%s): initial_experts(layer %d) = %d, expected 1..%d", si->plugin->name,
                         si->file, layer + 1, n, si->max_experts);
    *out = n;
    return ML_OK;
}

int ml_schedule_inst_declare_states(ml_schedule_inst *si, ml_params *S, const int *num_experts) {
    if (!si->api->states) return 0;
    ml_tensor_decl d[ML_MAX_TENSORS];
    int n = ml_tensor_decls_read(si->plugin, "states", si->api->states, si->self, d);
    if (n <= 0) return n;
    if (!(si->state = ml_calloc((size_t)si->num_layers, sizeof *si->state))) return ML_ERR;
    for (int l = 0; l < si->num_layers; l++) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "moe%d.schedule.", l + 1);
        if (ml_tensor_set_declare(&si->state[l], S, prefix, d, n, num_experts[l]))
            return ml_error_prefix("schedule '%s' (%s): states", si->plugin->name, si->file);
    }
    return n;
}

int ml_schedule_inst_grow_declare(ml_schedule_inst *si, int layer, int N) {
    return si->state ? ml_tensor_set_grow(&si->state[layer], N) : ML_OK;
}

int ml_schedule_inst_keep_rows(ml_schedule_inst *si, int layer, const int *kept, int nkeep) {
    return si->state ? ml_tensor_set_keep_rows(&si->state[layer], kept, nkeep) : ML_OK;
}

const ml_tensor_set *ml_schedule_inst_state(const ml_schedule_inst *si, int layer) {
    return si->state && layer >= 0 && layer < si->num_layers ? &si->state[layer] : NULL;
}

int ml_schedule_inst_observe(ml_schedule_inst *si, int layer, int epoch, int64_t step, const ml_routing_record *r,
                             int n_dropped) {
    if (!si->api->observe) return ML_OK;
    float *const *state = NULL;
    if (si->state) {
        ml_tensor_set_bind(&si->state[layer]);
        state = si->state[layer].data;
    }
    ml_schedule_obs o = {sizeof o, layer, r->N, epoch, step, r, n_dropped, state};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(si->file, "observe");
    int rc = si->api->observe(si->self, &o, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc)
        return ml_errorf("schedule '%s' (%s): observe (layer %d): %s", si->plugin->name, si->file, layer + 1,
                         err[0] ? err : "failed (no message)");
    return ML_OK;
}

/* Checks layer l's removals: ids in 0..N-1, none twice, at least one expert left. */
static int check_removals(const ml_schedule_inst *si, int l, int N, const int32_t *ids, int n) {
    if (n < 0 || n > N)
        return ml_errorf("schedule '%s' (%s): n_remove[%d] = %d, expected 0..%d", si->plugin->name, si->file, l, n, N);
    if (n == N)
        return ml_errorf("schedule '%s' (%s): asked to remove all %d experts of layer %d (at least one must stay)",
                         si->plugin->name, si->file, N, l + 1);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= N)
            return ml_errorf("schedule '%s' (%s): asked to remove expert %d of layer %d, which has experts 0..%d",
                             si->plugin->name, si->file, (int)ids[i], l + 1, N - 1);
        for (int j = 0; j < i; j++)
            if (ids[j] == ids[i])
                return ml_errorf("schedule '%s' (%s): asked to remove expert %d of layer %d twice", si->plugin->name,
                                 si->file, (int)ids[i], l + 1);
    }
    return ML_OK;
}

int ml_schedule_inst_decide(ml_schedule_inst *si, const ml_progress *p, int *add, int *const *remove, int *n_remove) {
    const int L = si->num_layers;
    ml_progress pr = *p;
    pr.size = sizeof pr;
    pr.num_layers = L;
    /* one sentinel past the end of every array: a schedule that writes past it is caught */
    int32_t *buf = calloc((size_t)L + 1, sizeof *buf), *nrem = calloc((size_t)L + 1, sizeof *nrem);
    int32_t **rem = calloc((size_t)L + 1, sizeof *rem);
    float *const **st = calloc((size_t)L + 1, sizeof *st);
    int ok = buf && nrem && rem && st;
    for (int l = 0; ok && l < L; l++) ok = (rem[l] = calloc((size_t)p->num_experts[l] + 1, sizeof **rem)) != NULL;
    int ret = ML_OK;
    if (!ok) ret = ml_errorf("schedule '%s': out of memory", si->plugin->name);
    char err[ML_ERR_MAX] = "";
    if (ret == ML_OK) {
        buf[L] = nrem[L] = -777;
        for (int l = 0; l < L; l++) rem[l][p->num_experts[l]] = -777;
        int rc;
        if (si->api->decide_v2) {
            for (int l = 0; si->state && l < L; l++) {
                ml_tensor_set_bind(&si->state[l]);
                st[l] = si->state[l].data;
            }
            ml_schedule_decision d = {sizeof d, L, buf, rem, nrem, (float *const *const *)st};
            ml_crash_enter(si->file, "decide_v2");
            rc = si->api->decide_v2(si->self, &pr, &d, err);
            ml_crash_leave();
        } else {
            ml_crash_enter(si->file, "decide");
            rc = si->api->decide(si->self, &pr, buf, err);
            ml_crash_leave();
        }
        ml_err_seal(err);
        if (rc) ret = ml_errorf("schedule '%s' (%s): %s", si->plugin->name, si->file, err[0] ? err : "decide failed (no message)");
        else if (buf[L] != -777 || nrem[L] != -777)
            ret = ml_errorf("schedule '%s' (%s): decide wrote past add[num_layers - 1]", si->plugin->name, si->file);
        for (int l = 0; l < L && ret == ML_OK; l++)
            if (rem[l][p->num_experts[l]] != -777)
                ret = ml_errorf("schedule '%s' (%s): decide wrote past remove[%d][num_experts - 1]", si->plugin->name,
                                si->file, l);
    }
    for (int l = 0; l < L && ret == ML_OK; l++) {
        int left = p->num_experts[l] - (nrem[l] > 0 ? nrem[l] : 0);
        if (buf[l] < 0)
            ret = ml_errorf("schedule '%s' (%s): asked to add %d experts to layer %d", si->plugin->name, si->file,
                            buf[l], l + 1);
        else if (check_removals(si, l, p->num_experts[l], rem[l], nrem[l]))
            ret = ML_ERR;
        else if ((int64_t)left + buf[l] > si->max_experts)
            ret = ml_errorf("schedule '%s' (%s): asked to add %d experts to layer %d, which has %d: more than %d",
                            si->plugin->name, si->file, buf[l], l + 1, left, si->max_experts);
    }
    if (ret == ML_OK)
        for (int l = 0; l < L; l++) {
            add[l] = buf[l];
            n_remove[l] = nrem[l];
            for (int i = 0; i < nrem[l]; i++) remove[l][i] = rem[l][i];
        }
    for (int l = 0; rem && l < L; l++) free(rem[l]);
    free(buf), free(nrem), free(rem), free(st);
    return ret;
}
