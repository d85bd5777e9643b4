/* grid.c — a study's plan from a config's sweep: section and the command line (grid.h). */
#include "study/grid.h"
#include "base/common.h"
#include "base/strbuf.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A list of "key=value" strings (one point of the plan under construction). */
typedef struct ovlist {
    int n, cap;
    char **s;
} ovlist;

static void ov_free(ovlist *o) {
    for (int i = 0; i < o->n; i++) free(o->s[i]);
    free(o->s);
    memset(o, 0, sizeof *o);
}

static size_t key_len(const char *ov) { return strcspn(ov, "="); }

/* Adds "key=value", replacing an earlier value of the same key. */
static int ov_set(ovlist *o, const char *key, size_t klen, const char *value) {
    char *s = ml_calloc(klen + strlen(value) + 2, 1);
    if (!s) return ML_ERR;
    memcpy(s, key, klen);
    s[klen] = '=';
    strcpy(s + klen + 1, value);
    for (int i = 0; i < o->n; i++)
        if (key_len(o->s[i]) == klen && !strncmp(o->s[i], key, klen)) {
            free(o->s[i]);
            o->s[i] = s;
            return ML_OK;
        }
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 8;
        char **t = realloc(o->s, (size_t)cap * sizeof *t);
        if (!t) {
            free(s);
            return ml_errorf("out of memory");
        }
        o->s = t;
        o->cap = cap;
    }
    o->s[o->n++] = s;
    return ML_OK;
}

static int ov_copy(ovlist *dst, const ovlist *src) {
    for (int i = 0; i < src->n; i++) {
        const char *eq = src->s[i] + key_len(src->s[i]);
        if (ov_set(dst, src->s[i], (size_t)(eq - src->s[i]), eq + 1)) return ML_ERR;
    }
    return ML_OK;
}

/* ------------------------------------------------------------------ values */

static int valid_key(const char *k, size_t n) {
    if (!n || n > 200 || k[0] == '.' || k[n - 1] == '.') return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)k[i]) || k[i] == '_' || k[i] == '-' || (k[i] == '.' && k[i + 1] != '.')))
            return 0;
    return 1;
}

static void free_values(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static int push_value(char ***v, int *n, int *cap, const char *s, size_t len) {
    if (*n >= ML_GRID_MAX_RUNS) return ml_errorf("more than %d values", ML_GRID_MAX_RUNS);
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 8;
        char **t = realloc(*v, (size_t)c * sizeof *t);
        if (!t) return ml_errorf("out of memory");
        *v = t;
        *cap = c;
    }
    char *x = ml_calloc(len + 1, 1);
    if (!x) return ML_ERR;
    memcpy(x, s, len);
    (*v)[(*n)++] = x;
    return ML_OK;
}

/* Parses one number of range(...); *is_int when it is written as an integer. */
static int range_number(const char *s, size_t len, double *out, int *is_int) {
    char buf[64];
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (!len || len >= sizeof buf) return 0;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (*end || errno || !isfinite(v)) return 0;
    *is_int = !strpbrk(buf, ".eEnN") && fabs(v) < 9e15;
    *out = v;
    return 1;
}

/* range(a, b[, step]) -> values; 0 when text is not a range call, -1 on error. */
static int expand_range(const char *text, char ***v, int *n, int *cap) {
    while (isspace((unsigned char)*text)) text++;
    if (strncmp(text, "range(", 6)) return 0;
    const char *p = text + 6, *close = strrchr(p, ')');
    if (!close || close[1 + strspn(close + 1, " \t")] != 0) return 0;
    double x[3] = {0, 0, 1};
    int ints[3] = {1, 1, 1}, k = 0;
    while (p < close) {
        const char *c = memchr(p, ',', (size_t)(close - p));
        const char *e = c ? c : close;
        if (k == 3 || !range_number(p, (size_t)(e - p), &x[k], &ints[k]))
            return ml_errorf("'%s': expected range(start, stop[, step]) with numbers", text), -1;
        k++;
        p = c ? c + 1 : close;
    }
    if (k < 2) return ml_errorf("'%s': expected range(start, stop[, step])", text), -1;
    if (x[2] == 0) return ml_errorf("'%s': the step is 0", text), -1;
    int all_int = ints[0] && ints[1] && ints[2];
    double count = ceil((x[1] - x[0]) / x[2]);
    if (count < 1) return ml_errorf("'%s' is empty", text), -1;
    if (count > ML_GRID_MAX_RUNS) return ml_errorf("'%s' has more than %d values", text, ML_GRID_MAX_RUNS), -1;
    for (int i = 0; i < (int)count; i++) {
        char buf[64];
        if (all_int) snprintf(buf, sizeof buf, "%lld", (long long)x[0] + (long long)i * (long long)x[2]);
        else {
            /* 12 significant digits: 0 + 3 * 0.1 is written 0.3, not 0.30000000000000004 */
            snprintf(buf, sizeof buf, "%.12g", x[0] + i * x[2]);
            if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");
        }
        if (push_value(v, n, cap, buf, strlen(buf))) return -1;
    }
    return 1;
}

char **ml_grid_split_values(const char *text, int *n_out) {
    char **v = NULL;
    int n = 0, cap = 0;
    *n_out = 0;
    int r = expand_range(text, &v, &n, &cap);
    if (r < 0) {
        free_values(v, n);
        return NULL;
    }
    if (r == 0) {
        int depth = 0;
        char quote = 0;
        const char *start = text, *p = text;
        for (;; p++) {
            char c = *p;
            if (quote) {
                if (!c) break;
                if (quote == '"' && c == '\\' && p[1]) p++;
                else if (c == quote) quote = 0;
                continue;
            }
            if (c == '"' || c == '\'') quote = c;
            else if (c == '[' || c == '{' || c == '(') depth++;
            else if ((c == ']' || c == '}' || c == ')') && depth > 0) depth--;
            else if ((c == ',' && depth == 0) || !c) {
                if (push_value(&v, &n, &cap, start, (size_t)(p - start))) {
                    free_values(v, n);
                    return NULL;
                }
                start = p + 1;
                if (!c) break;
            }
        }
        if (quote) {
            free_values(v, n);
            ml_errorf("'%s': a quote is not closed", text);
            return NULL;
        }
    }
    *n_out = n;
    return v;
}

/* ------------------------------------------------------------------- axes */

typedef struct axis {
    const char *key; /* borrowed (argv or config) */
    size_t klen;
    char **v;
    int n;
} axis;

static void axes_free(axis *a, int n) {
    for (int i = 0; i < n; i++) free_values(a[i].v, a[i].n);
}

static int err_node(const ml_cfg_node *n, const char *fmt, const char *a) {
    int line = 0, col = 0;
    const char *src = ml_cfg_node_source(n, &line, &col);
    if (line) ml_cfg_node_key_pos(n, &line, &col);
    char msg[512];
    snprintf(msg, sizeof msg, fmt, a);
    if (line) return ml_errorf("%s:%d:%d: %s", src, line, col, msg);
    return ml_errorf("%s: %s", src, msg);
}

/* One config value -> its override text (flow YAML). */
static char *node_value(const ml_cfg_node *n) { return ml_cfg_node_flow(n); }

/* The section's grid: map key -> list (or one scalar). */
static int read_grid(const ml_cfg_node *g, axis *ax, int *n_ax) {
    if (ml_cfg_node_kind(g) != ML_CFG_MAP) return err_node(g, "sweep.grid: expected a map of key: [values...]%s", "");
    for (int i = 0; i < ml_cfg_node_len(g); i++) {
        const ml_cfg_node *e = ml_cfg_node_at(g, i);
        const char *k = ml_cfg_node_key(e);
        if (!valid_key(k, strlen(k))) return err_node(e, "sweep.grid: '%s' is not a config key (a.b.c)", k);
        if (*n_ax >= ML_GRID_MAX_AXES) return err_node(e, "sweep.grid: more than 64 keys%s", "");
        axis *a = &ax[(*n_ax)++];
        memset(a, 0, sizeof *a);
        a->key = k;
        a->klen = strlen(k);
        int cap = 0;
        if (ml_cfg_node_kind(e) == ML_CFG_SEQ) {
            if (!ml_cfg_node_len(e)) return err_node(e, "sweep.grid.%s: expected at least one value", k);
            for (int j = 0; j < ml_cfg_node_len(e); j++) {
                char *t = node_value(ml_cfg_node_at(e, j));
                int rc = t ? push_value(&a->v, &a->n, &cap, t, strlen(t)) : ML_ERR;
                free(t);
                if (rc) return ML_ERR;
            }
        } else {
            char *t = node_value(e);
            int rc = t ? push_value(&a->v, &a->n, &cap, t, strlen(t)) : ML_ERR;
            free(t);
            if (rc) return ML_ERR;
        }
    }
    return ML_OK;
}

/* ------------------------------------------------------------------- plan */

static int set_from_node(ovlist *o, const ml_cfg_node *e) {
    char *t = node_value(e);
    if (!t) return ML_ERR;
    const char *k = ml_cfg_node_key(e);
    int rc = ov_set(o, k, strlen(k), t);
    free(t);
    return rc;
}

/* Appends the Cartesian product of ax[0..n) (each point prefixed by `prefix`) to pts. */
static int product(const axis *ax, int n, const ovlist *prefix, ovlist **pts, int *npts, int *cap) {
    long long total = 1;
    for (int i = 0; i < n; i++) {
        total *= ax[i].n;
        if (total > ML_GRID_MAX_RUNS) return ml_errorf("the sweep has more than %d runs", ML_GRID_MAX_RUNS);
    }
    if (*npts + total > ML_GRID_MAX_RUNS) return ml_errorf("the sweep has more than %d runs", ML_GRID_MAX_RUNS);
    int idx[ML_GRID_MAX_AXES] = {0};
    for (long long t = 0; t < total; t++) {
        if (*npts == *cap) {
            int c = *cap ? 2 * *cap : 16;
            ovlist *q = realloc(*pts, (size_t)c * sizeof *q);
            if (!q) return ml_errorf("out of memory");
            *pts = q;
            *cap = c;
        }
        ovlist *o = &(*pts)[(*npts)++];
        memset(o, 0, sizeof *o);
        if (prefix && ov_copy(o, prefix)) return ML_ERR;
        for (int i = 0; i < n; i++)
            if (ov_set(o, ax[i].key, ax[i].klen, ax[i].v[idx[i]])) return ML_ERR;
        for (int i = n - 1; i >= 0; i--) { /* the last axis varies fastest */
            if (++idx[i] < ax[i].n) break;
            idx[i] = 0;
        }
    }
    return ML_OK;
}

static void grid_fail_free(ovlist *pts, int n) {
    for (int i = 0; i < n; i++) ov_free(&pts[i]);
    free(pts);
}

ml_grid *ml_grid_new(const ml_config *cfg, const char *const *args, int n_args) {
    axis yax[ML_GRID_MAX_AXES], cax[ML_GRID_MAX_AXES];
    int ny = 0, nc = 0;
    ovlist fixed = {0}, *base = NULL, *pts = NULL;
    int nbase = 0, cbase = 0, npts = 0, cpts = 0;
    ml_grid *g = NULL;
    /* the command line: axes and fixed overrides */
    for (int i = 0; i < n_args; i++) {
        const char *a = args[i], *eq = strchr(a, '=');
        if (!eq || !valid_key(a, (size_t)(eq - a))) {
            ml_errorf("sweep argument '%s': expected key.path=value or key.path=v1,v2,... or "
                      "key.path=range(a,b[,step])", a);
            goto fail;
        }
        int n;
        char **v = ml_grid_split_values(eq + 1, &n);
        if (!v) {
            ml_error_prefix("sweep argument '%s'", a);
            goto fail;
        }
        size_t klen = (size_t)(eq - a);
        int dup = 0;
        for (int j = 0; j < nc; j++) dup |= cax[j].klen == klen && !strncmp(cax[j].key, a, klen);
        for (int j = 0; j < fixed.n; j++) dup |= key_len(fixed.s[j]) == klen && !strncmp(fixed.s[j], a, klen);
        if (dup) {
            free_values(v, n);
            ml_errorf("sweep argument '%s': the key %.*s is given twice", a, (int)klen, a);
            goto fail;
        }
        if (n == 1) {
            int rc = ov_set(&fixed, a, klen, v[0]);
            free_values(v, n);
            if (rc) goto fail;
        } else {
            if (nc >= ML_GRID_MAX_AXES) {
                free_values(v, n);
                ml_errorf("sweep: more than %d axes", ML_GRID_MAX_AXES);
                goto fail;
            }
            cax[nc++] = (axis){a, klen, v, n};
        }
    }
    /* the config's sweep: section */
    const ml_cfg_node *sec = cfg ? ml_config_get(cfg, "sweep") : NULL;
    const ml_cfg_node *grid = NULL, *runs = NULL;
    if (sec && ml_cfg_node_kind(sec) == ML_CFG_MAP) {
        for (int i = 0; i < ml_cfg_node_len(sec); i++) {
            const ml_cfg_node *e = ml_cfg_node_at(sec, i);
            const char *k = ml_cfg_node_key(e);
            if (!strcmp(k, "grid")) grid = e;
            else if (!strcmp(k, "runs")) runs = e;
            else if (strcmp(k, "jobs") && strcmp(k, "name")) {
                err_node(e, "unknown key '%s' in sweep (expected grid, runs, jobs or name)", k);
                goto fail;
            }
        }
    } else if (sec && ml_cfg_node_kind(sec) != ML_CFG_SCALAR) {
        err_node(sec, "sweep: expected a map (grid:, runs:, jobs:, name:)%s", "");
        goto fail;
    }
    if (grid && read_grid(grid, yax, &ny)) goto fail;
    /* the command line wins: its keys leave the section's grid */
    for (int i = 0; i < ny; i++) {
        int taken = 0;
        for (int j = 0; j < nc; j++) taken |= cax[j].klen == yax[i].klen && !strncmp(cax[j].key, yax[i].key, yax[i].klen);
        for (int j = 0; j < fixed.n; j++)
            taken |= key_len(fixed.s[j]) == yax[i].klen && !strncmp(fixed.s[j], yax[i].key, yax[i].klen);
        if (taken) {
            free_values(yax[i].v, yax[i].n);
            memmove(&yax[i], &yax[i + 1], (size_t)(ny - i - 1) * sizeof *yax);
            ny--, i--;
        }
    }
    if (grid || !runs) {
        if (product(yax, ny, NULL, &base, &nbase, &cbase)) goto fail;
    }
    if (runs) {
        if (ml_cfg_node_kind(runs) != ML_CFG_SEQ) {
            err_node(runs, "sweep.runs: expected a list of maps (key: value)%s", "");
            goto fail;
        }
        for (int i = 0; i < ml_cfg_node_len(runs); i++) {
            const ml_cfg_node *r = ml_cfg_node_at(runs, i);
            if (ml_cfg_node_kind(r) != ML_CFG_MAP) {
                err_node(r, "sweep.runs: each run is a map of key: value%s", "");
                goto fail;
            }
            if (nbase >= ML_GRID_MAX_RUNS) {
                ml_errorf("the sweep has more than %d runs", ML_GRID_MAX_RUNS);
                goto fail;
            }
            if (nbase == cbase) {
                int c = cbase ? 2 * cbase : 16;
                ovlist *q = realloc(base, (size_t)c * sizeof *q);
                if (!q) goto fail;
                base = q;
                cbase = c;
            }
            ovlist *o = &base[nbase++];
            memset(o, 0, sizeof *o);
            for (int j = 0; j < ml_cfg_node_len(r); j++) {
                const ml_cfg_node *e = ml_cfg_node_at(r, j);
                const char *k = ml_cfg_node_key(e);
                if (!valid_key(k, strlen(k))) {
                    err_node(e, "sweep.runs: '%s' is not a config key (a.b.c)", k);
                    goto fail;
                }
                if (set_from_node(o, e)) goto fail;
            }
        }
    }
    /* cross with the command line's axes (outermost), then the fixed overrides */
    {
        long long total = 1;
        for (int i = 0; i < nc; i++) total *= cax[i].n;
        if (total * nbase > ML_GRID_MAX_RUNS) {
            ml_errorf("the sweep has more than %d runs", ML_GRID_MAX_RUNS);
            goto fail;
        }
        ovlist *outer = NULL;
        int nouter = 0, couter = 0;
        if (product(cax, nc, NULL, &outer, &nouter, &couter)) {
            grid_fail_free(outer, nouter);
            goto fail;
        }
        for (int o = 0; o < nouter; o++)
            for (int b = 0; b < nbase; b++) {
                if (npts == cpts) {
                    int c = cpts ? 2 * cpts : 16;
                    ovlist *q = realloc(pts, (size_t)c * sizeof *q);
                    if (!q) {
                        grid_fail_free(outer, nouter);
                        goto fail;
                    }
                    pts = q;
                    cpts = c;
                }
                ovlist *p = &pts[npts++];
                memset(p, 0, sizeof *p);
                if (ov_copy(p, &base[b]) || ov_copy(p, &outer[o]) || ov_copy(p, &fixed)) {
                    grid_fail_free(outer, nouter);
                    goto fail;
                }
            }
        grid_fail_free(outer, nouter);
    }
    g = ml_calloc(1, sizeof *g);
    if (!g) goto fail;
    g->n_runs = npts;
    g->run = ml_calloc((size_t)(npts ? npts : 1), sizeof *g->run);
    g->fixed = ml_calloc((size_t)(fixed.n ? fixed.n : 1), sizeof *g->fixed);
    if (!g->run || !g->fixed) goto fail;
    for (int i = 0; i < npts; i++) {
        g->run[i].n = pts[i].n;
        g->run[i].over = pts[i].s;
        memset(&pts[i], 0, sizeof pts[i]);
    }
    g->n_fixed = fixed.n;
    for (int i = 0; i < fixed.n; i++) g->fixed[i] = fixed.s[i];
    free(fixed.s);
    memset(&fixed, 0, sizeof fixed);
    /* axes: keys whose value differs between runs, in the order they first appear */
    g->axis = ml_calloc((size_t)ML_GRID_MAX_AXES * 2 + 1, sizeof *g->axis);
    if (!g->axis) goto fail;
    for (int i = 0; i < npts; i++)
        for (int j = 0; j < g->run[i].n; j++) {
            const char *ov = g->run[i].over[j];
            size_t kl = key_len(ov);
            int known = 0;
            for (int a = 0; a < g->n_axes && !known; a++) known = strlen(g->axis[a]) == kl && !strncmp(g->axis[a], ov, kl);
            if (known) continue;
            int varies = 0;
            for (int r = 0; r < npts && !varies; r++) {
                int found = 0;
                for (int m = 0; m < g->run[r].n && !found; m++)
                    if (key_len(g->run[r].over[m]) == kl && !strncmp(g->run[r].over[m], ov, kl)) {
                        found = 1;
                        varies = strcmp(g->run[r].over[m], ov) != 0;
                    }
                varies |= !found;
            }
            if (varies && g->n_axes < ML_GRID_MAX_AXES * 2) {
                char *k = ml_calloc(kl + 1, 1);
                if (!k) goto fail;
                memcpy(k, ov, kl);
                g->axis[g->n_axes++] = k;
            }
        }
    axes_free(yax, ny);
    axes_free(cax, nc);
    grid_fail_free(base, nbase);
    free(pts);
    return g;
fail:
    axes_free(yax, ny);
    axes_free(cax, nc);
    ov_free(&fixed);
    grid_fail_free(base, nbase);
    grid_fail_free(pts, npts);
    ml_grid_free(g);
    return NULL;
}

void ml_grid_free(ml_grid *g) {
    if (!g) return;
    for (int i = 0; i < g->n_runs; i++) {
        for (int j = 0; j < g->run[i].n; j++) free(g->run[i].over[j]);
        free(g->run[i].over);
    }
    free(g->run);
    for (int i = 0; i < g->n_fixed; i++) free(g->fixed[i]);
    free(g->fixed);
    if (g->axis)
        for (int i = 0; i < g->n_axes; i++) free(g->axis[i]);
    free(g->axis);
    free(g);
}

const char *ml_grid_run_value(const ml_grid_run *r, const char *key) {
    size_t kl = strlen(key);
    for (int i = 0; i < r->n; i++)
        if (key_len(r->over[i]) == kl && !strncmp(r->over[i], key, kl)) return r->over[i] + kl + 1;
    return NULL;
}

uint64_t ml_grid_hash(const ml_grid *g) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < g->n_runs; i++) {
        for (int j = 0; j < g->run[i].n; j++) {
            for (const char *p = g->run[i].over[j]; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
            h = (h ^ 0x1f) * 0x100000001b3ULL;
        }
        h = (h ^ 0x1e) * 0x100000001b3ULL;
    }
    return h;
}
