/* options.c — plugin options by the scalar rules of configs (options.h). */
#include "plugin/options.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/loader.h"

static char **g_interned;
static int g_ninterned;

static const char *intern(const char *s) {
    for (int i = 0; i < g_ninterned; i++)
        if (strcmp(g_interned[i], s) == 0) return g_interned[i];
    char **p = realloc(g_interned, (size_t)(g_ninterned + 1) * sizeof *p);
    if (!p) return NULL;
    g_interned = p;
    char *c = strdup(s);
    if (!c) return NULL;
    g_interned[g_ninterned++] = c;
    return c;
}

void ml_options_release(void) {
    for (int i = 0; i < g_ninterned; i++) free(g_interned[i]);
    free(g_interned);
    g_interned = NULL;
    g_ninterned = 0;
}

ml_scalar_spec ml_option_spec(const ml_option *o) {
    ml_scalar_spec s = {ML_SC_STR, -INFINITY, INFINITY, 0, o->choices};
    switch (o->type) {
    case ML_OPT_INT: s.type = ML_SC_INT; break;
    case ML_OPT_FLOAT: s.type = ML_SC_FLOAT; break;
    case ML_OPT_BOOL: s.type = ML_SC_BOOL; break;
    case ML_OPT_ENUM: s.type = ML_SC_ENUM; break;
    default: break;
    }
    if ((s.type == ML_SC_INT || s.type == ML_SC_FLOAT) && o->min <= o->max) {
        s.min = o->min;
        s.max = o->max;
    }
    return s;
}

int ml_option_parse(const ml_option *o, const char *text, int quoted, ml_optval *out) {
    if (o->type < ML_OPT_INT || o->type > ML_OPT_ENUM) return ml_errorf("unknown option type %d", (int)o->type);
    if (o->type == ML_OPT_ENUM && !o->choices) return ml_errorf("option has no choices");
    ml_scalar_spec s = ml_option_spec(o);
    ml_scalar_value v;
    if (ml_scalar_check(&s, text ? text : "", quoted, &v, NULL, 0) != ML_SC_OK) return ML_ERR;
    ml_optval r = {v.i, v.f, NULL};
    if (o->type == ML_OPT_ENUM && !(r.s = intern(text))) return ml_errorf("out of memory");
    *out = r;
    return ML_OK;
}

int ml_option_defaults(const ml_plugin *p, ml_optval *out) {
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        if (ml_option_parse(o, o->def, 0, &out[i]) != ML_OK)
            return ml_error_prefix("plugin %s: option %s: default", p->name, o->name);
    }
    return ML_OK;
}

int ml_option_find(const ml_plugin *p, const char *name) {
    for (int i = 0; i < p->num_options; i++)
        if (p->options[i].name && strcmp(p->options[i].name, name) == 0) return i;
    return -1;
}

void ml_option_format(const ml_option *o, const ml_optval *v, char *buf, size_t size) {
    switch (o->type) {
    case ML_OPT_INT: snprintf(buf, size, "%lld", (long long)v->i); break;
    case ML_OPT_FLOAT: {
        ml_scalar_fmt_num(v->f, buf, size);
        if (!strpbrk(buf, ".e") && strlen(buf) + 3 <= size) strcat(buf, ".0");
        break;
    }
    case ML_OPT_BOOL: snprintf(buf, size, "%s", v->i ? "true" : "false"); break;
    case ML_OPT_ENUM: snprintf(buf, size, "%s", v->s ? v->s : "?"); break;
    default: snprintf(buf, size, "?");
    }
}

void ml_option_names(const ml_plugin *p, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < p->num_options && used < size; i++) {
        int w = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", p->options[i].name);
        if (w > 0) used += (size_t)w;
    }
    if (!p->num_options) snprintf(buf, size, "(none)");
}

void *ml_optvals_pack(const ml_plugin *p, const ml_optval *v) {
    size_t stride = ml_plugin_optval_size(p), n = (size_t)(p->num_options > 0 ? p->num_options : 1);
    char *out = calloc(n, stride);
    if (!out) {
        ml_errorf("out of memory");
        return NULL;
    }
    size_t each = stride < sizeof(ml_optval) ? stride : sizeof(ml_optval);
    for (int i = 0; i < p->num_options; i++) memcpy(out + (size_t)i * stride, &v[i], each);
    return out;
}

int ml_optvals_resolve(const ml_plugin *p, const ml_optval *given, ml_optval *out, void **packed) {
    if (p->num_options > ML_MAX_OPTIONS)
        return ml_errorf("%s '%s': %d options, at most %d", ml_plugin_kind_name((int)p->kind), p->name, p->num_options,
                         ML_MAX_OPTIONS);
    if (given) memcpy(out, given, (size_t)p->num_options * sizeof *out);
    else if (ml_option_defaults(p, out)) return ML_ERR;
    return (*packed = ml_optvals_pack(p, out)) ? ML_OK : ML_ERR;
}
