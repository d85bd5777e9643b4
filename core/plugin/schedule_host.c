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

int ml_schedule_inst_decide(ml_schedule_inst *si, const ml_progress *p, int *add) {
    const int L = si->num_layers;
    ml_progress pr = *p;
    pr.size = sizeof pr;
    pr.num_layers = L;
    /* one sentinel past the end: a schedule that writes add[L] is caught */
    int *buf = calloc((size_t)L + 1, sizeof *buf);
    if (!buf) return ml_errorf("schedule '%s': out of memory", si->plugin->name);
    buf[L] = -777;
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(si->file, "decide");
    int rc = si->api->decide(si->self, &pr, buf, err);
    ml_crash_leave();
    ml_err_seal(err);
    int ret = ML_OK;
    if (rc) ret = ml_errorf("schedule '%s' (%s): %s", si->plugin->name, si->file, err[0] ? err : "decide failed (no message)");
    else if (buf[L] != -777)
        ret = ml_errorf("schedule '%s' (%s): decide wrote past add[num_layers - 1]", si->plugin->name, si->file);
    for (int l = 0; l < L && ret == ML_OK; l++) {
        if (buf[l] < 0)
            ret = ml_errorf("schedule '%s' (%s): asked to add %d experts to layer %d", si->plugin->name, si->file,
                            buf[l], l + 1);
        else if ((int64_t)p->num_experts[l] + buf[l] > si->max_experts)
            ret = ml_errorf("schedule '%s' (%s): asked to add %d experts to layer %d, which has %d: more than %d",
                            si->plugin->name, si->file, buf[l], l + 1, p->num_experts[l], si->max_experts);
    }
    if (ret == ML_OK) memcpy(add, buf, (size_t)L * sizeof *add);
    free(buf);
    return ret;
}
