/* loss_host.c — one hosted loss plugin instance (loss_host.h). */
#include "plugin/loss_host.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crash.h"
#include "plugin/loader.h"
#include "plugin/options.h"

/* "loss 'x' (file): <call> (layer L): <what>"; returns ML_ERR. */
static int lerr(const ml_loss_inst *li, const char *call, const char *fmt, ...) ML_PRINTF(3, 4);
static int lerr(const ml_loss_inst *li, const char *call, const char *fmt, ...) {
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ml_errorf("loss '%s' (%s): %s (layer %d): %s", li->plugin->name, li->file, call, li->layer + 1, what);
}

int ml_loss_inst_init(ml_loss_inst *li, const ml_plugin *p, const ml_optval *opt, int layer, int num_layers,
                      int N, ml_params *S, const char *prefix) {
    memset(li, 0, sizeof *li);
    li->plugin = p;
    li->api = p->api;
    li->file = ml_plugin_file(p) ? ml_plugin_file(p) : p->name;
    li->layer = layer;
    li->num_layers = num_layers;
    if ((int)p->kind != ML_PLUGIN_LOSS)
        return ml_errorf("plugin '%s' (%s) is a %s plugin, expected a loss", p->name, li->file,
                         ml_plugin_kind_name((int)p->kind));
    if (ml_optvals_resolve(p, opt, li->opt, &li->opt_packed)) return ML_ERR;
    ml_loss_init init = {sizeof init, li->opt_packed, layer, num_layers, N};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(li->file, "create");
    li->self = li->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!li->self) return lerr(li, "create", "%s", err[0] ? err : "failed (no message)");
    if (li->api->states) {
        ml_tensor_decl d[ML_MAX_TENSORS];
        int ns = ml_tensor_decls_read(p, "states", li->api->states, li->self, d);
        if (ns < 0) return ML_ERR;
        if (ns > 0 && !S) return lerr(li, "states", "declares %d state tensors, but this host keeps none here", ns);
        if (ns > 0 && ml_tensor_set_declare(&li->state, S, prefix, d, ns, N)) return ML_ERR;
    }
    return ML_OK;
}

void ml_loss_inst_release(ml_loss_inst *li) {
    if (!li) return;
    if (li->self) {
        ml_crash_enter(li->file, "destroy");
        li->api->destroy(li->self);
        ml_crash_leave();
        li->self = NULL;
    }
    free(li->opt_packed);
    li->opt_packed = NULL;
}

int ml_loss_inst_has_gate_grad(const ml_loss_inst *li) { return li->api->eval_v2 != NULL; }

int ml_loss_inst_eval(ml_loss_inst *li, const ml_routing_record *r, float scale, float *dlogits, float *dprob,
                      float *dgate, double *value) {
    ml_routing_record rec = *r;
    rec.size = sizeof rec;
    rec.layer = li->layer;
    if (li->state.n) {
        ml_tensor_set_bind(&li->state);
        rec.state = li->state.data;
    } else {
        rec.state = NULL;
    }
    char err[ML_ERR_MAX] = "";
    double v = 0;
    int rc;
    ml_crash_enter(li->file, "eval");
    if (li->api->eval_v2) {
        ml_loss_eval io = {sizeof io, scale, dlogits, dprob, dgate, 0};
        rc = li->api->eval_v2(li->self, &rec, &io, err);
        v = io.value;
    } else {
        rc = li->api->eval(li->self, &rec, &v, scale, dlogits, dprob, err);
    }
    ml_crash_leave();
    ml_err_seal(err);
    if (rc) return lerr(li, "eval", "%s", err[0] ? err : "failed (no message)");
    if (!isfinite(v)) return lerr(li, "eval", "returned %g", v);
    *value = v;
    return ML_OK;
}

int ml_loss_inst_grow_declare(ml_loss_inst *li, int N) { return li->state.n ? ml_tensor_set_grow(&li->state, N) : ML_OK; }
