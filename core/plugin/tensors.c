/* tensors.c — plugin-declared tensors: reading, checking, keeping them in a block. */
#include "plugin/tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crash.h"
#include "plugin/loader.h"

int ml_tensor_decl_rows(const ml_tensor_decl *d, int num_experts) {
    return d->per_expert ? num_experts : d->rows;
}

static int bad_name(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n >= ML_DECL_NAME_MAX) return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '\\') return 1;
    return 0;
}

int ml_tensor_decls_check(const ml_tensor_decl *d, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (!d[i].name || !*d[i].name) return ml_errorf("%s %d has no name", what, i);
        if (bad_name(d[i].name))
            return ml_errorf("%s %d: name \"%.60s\" must be 1..%d printable characters without blanks, "
                             "quotes or backslashes", what, i, d[i].name, ML_DECL_NAME_MAX - 1);
        for (int j = 0; j < i; j++)
            if (strcmp(d[j].name, d[i].name) == 0)
                return ml_errorf("%s %s is declared twice", what, d[i].name);
        if (d[i].cols < 1 || (!d[i].per_expert && d[i].rows < 1))
            return ml_errorf("%s %s has rows %d, cols %d; both must be >= 1", what, d[i].name,
                             d[i].per_expert ? 1 : d[i].rows, d[i].cols);
        if ((int64_t)(d[i].per_expert ? 1 : d[i].rows) * d[i].cols > (1 << 28))
            return ml_errorf("%s %s has %lld elements per %s, more than 2^28", what, d[i].name,
                             (long long)(d[i].per_expert ? 1 : d[i].rows) * d[i].cols,
                             d[i].per_expert ? "expert" : "tensor");
        if (d[i].init < ML_INIT_ZEROS || d[i].init > ML_INIT_UNIFORM_FANIN)
            return ml_errorf("%s %s has unknown init %d", what, d[i].name, (int)d[i].init);
        if (d[i].init == ML_INIT_UNIFORM_FANIN && d[i].fan_in < 1)
            return ml_errorf("%s %s: UNIFORM_FANIN needs fan_in >= 1, got %d", what, d[i].name,
                             d[i].fan_in);
    }
    return ML_OK;
}

int ml_tensor_decls_read(const ml_plugin *p, const char *what, int (*fn)(void *, ml_tensor_decl *, int),
                         void *self, ml_tensor_decl *out) {
    const char *file = ml_plugin_file(p) ? ml_plugin_file(p) : p->name;
    const char *kind = ml_plugin_kind_name((int)p->kind);
    size_t stride = ml_plugin_decl_size(p);
    /* one spare element: a plugin that writes past cap lands there, not in the heap */
    char *buf = calloc((size_t)ML_MAX_TENSORS + 1, stride);
    if (!buf) return ml_errorf("%s '%s': out of memory", kind, p->name);
    ml_crash_enter(file, what);
    int n = fn(self, (ml_tensor_decl *)(void *)buf, ML_MAX_TENSORS);
    ml_crash_leave();
    if (n < 0 || n > ML_MAX_TENSORS) {
        free(buf);
        return ml_errorf("%s '%s' (%s): %s() returned %d declarations, expected 0..%d", kind, p->name, file, what,
                         n, ML_MAX_TENSORS);
    }
    memset(out, 0, (size_t)ML_MAX_TENSORS * sizeof *out);
    size_t each = stride < sizeof *out ? stride : sizeof *out;
    for (int i = 0; i < n; i++) memcpy(&out[i], buf + (size_t)i * stride, each);
    free(buf);
    if (ml_tensor_decls_check(out, n, strcmp(what, "params") == 0 ? "parameter" : "state tensor"))
        return ml_error_prefix("%s '%s' (%s): %s()", kind, p->name, file, what);
    return n;
}

int ml_tensor_set_declare(ml_tensor_set *s, ml_params *blk, const char *prefix, const ml_tensor_decl *d,
                          int n, int N) {
    memset(s, 0, sizeof *s);
    s->blk = blk;
    for (int i = 0; i < n; i++) {
        s->decl[i] = d[i];
        snprintf(s->name[i], sizeof s->name[i], "%s", d[i].name);
        s->decl[i].name = s->name[i];
        char full[ML_TENSOR_NAME_MAX];
        snprintf(full, sizeof full, "%s%s", prefix, d[i].name);
        int shape[2] = {ml_tensor_decl_rows(&d[i], N), d[i].cols};
        int h = ml_params_declare(blk, full, 2, shape, (ml_init)d[i].init, d[i].init_value, d[i].fan_in);
        if (h < 0) return ML_ERR;
        s->handle[i] = h;
        s->n = i + 1;
    }
    return ML_OK;
}

void ml_tensor_set_bind(ml_tensor_set *s) {
    for (int i = 0; i < s->n; i++) {
        s->data[i] = ml_params_data(s->blk, s->handle[i]);
        s->grad[i] = s->blk->grad ? ml_params_grad(s->blk, s->handle[i]) : NULL;
    }
}

int ml_tensor_set_grow(ml_tensor_set *s, int N) {
    for (int i = 0; i < s->n; i++)
        if (s->decl[i].per_expert && ml_params_grow(s->blk, s->handle[i], N)) return ML_ERR;
    return ML_OK;
}

int ml_tensor_set_keep_rows(ml_tensor_set *s, const int *kept, int nkeep) {
    for (int i = 0; i < s->n; i++)
        if (s->decl[i].per_expert && ml_params_shrink_rows(s->blk, s->handle[i], kept, nkeep)) return ML_ERR;
    return ML_OK;
}

int ml_tensor_set_has_per_expert(const ml_tensor_set *s) {
    for (int i = 0; i < s->n; i++)
        if (s->decl[i].per_expert) return 1;
    return 0;
}
