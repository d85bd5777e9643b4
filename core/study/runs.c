/* runs.c — finding a study's runs and grouping them by their configs (runs.h). */
#include "study/runs.h"
#include "study/sweep.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"
#include "io/config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEARCH_DEPTH 3 /* directories below an argument searched for runs */

/* Keys that cannot change what a run computes (runs.h; kept in step with ML_RUNS_NOT_SETTINGS):
   an entry matches the key itself and every key below it. */
static const char *const not_settings[] = {"train.seed", "train.threads", "experiment", "results",
                                           "sweep",      "launcher",      "lua"};

static int under(const char *key, const char *prefix) {
    size_t n = strlen(prefix);
    return !strncmp(key, prefix, n) && (key[n] == 0 || key[n] == '.');
}

static int is_setting(const char *key) {
    for (size_t i = 0; i < sizeof not_settings / sizeof *not_settings; i++)
        if (under(key, not_settings[i])) return 0;
    return 1;
}

void ml_runs_free_list(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

char **ml_runs_split(const char *list, int *n) {
    *n = 0;
    size_t len = strlen(list);
    char **v = ml_calloc(len / 2 + 2, sizeof *v);
    if (!v) return NULL;
    const char *p = list;
    while (*p) {
        size_t k = strcspn(p, ",");
        const char *s = p, *e = p + k;
        while (s < e && (*s == ' ' || *s == '\t')) s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e > s) {
            char *item = ml_calloc((size_t)(e - s) + 1, 1);
            if (!item) {
                ml_runs_free_list(v, *n);
                return NULL;
            }
            memcpy(item, s, (size_t)(e - s));
            v[(*n)++] = item;
        }
        p += k;
        if (*p == ',') p++;
    }
    return v;
}

const char *ml_runs_opt(int argc, char **argv, int *i, const char *name, int *missing) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n]) return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

/* ------------------------------------------------------------ flattening */

/* One entry of a flattened config: a scalar (key=text) or a list's own entry, which comes
   before its items and holds the list as flow YAML (used when the list's length differs
   between runs). */
typedef struct entry {
    char *key, *val;
    int list;  /* 1: the entry of a list; len its length */
    int len;
} entry;

typedef struct flat {
    int n, cap;
    entry *e;
} flat;

static void flat_free(flat *f) {
    for (int i = 0; i < f->n; i++) {
        free(f->e[i].key);
        free(f->e[i].val);
    }
    free(f->e);
    f->n = f->cap = 0;
    f->e = NULL;
}

static int flat_add(flat *f, const char *key, char *val, int list, int len) {
    if (!val) return ML_ERR;
    if (f->n == f->cap) {
        int nc = f->cap ? 2 * f->cap : 64;
        entry *e = realloc(f->e, (size_t)nc * sizeof *e);
        if (!e) {
            free(val);
            return ml_errorf("out of memory");
        }
        f->e = e;
        f->cap = nc;
    }
    char *k = ml_strdup(key);
    if (!k) {
        free(val);
        return ML_ERR;
    }
    f->e[f->n++] = (entry){k, val, list, len};
    return ML_OK;
}

/* A scalar as a label shows it: bare, or as a JSON string when YAML would read it otherwise. */
static void render_scalar(ml_strbuf *b, const char *t) {
    int plain = *t && t[0] != ' ' && t[strlen(t) - 1] != ' ' && !strpbrk(t, ",:{}[]#&*!|>'\"%@`\n\t");
    if (plain) ml_strbuf_puts(b, t);
    else ml_strbuf_json_string(b, t);
}

/* A node as one line of flow YAML: {name: load_balance, coef: 0.01}. */
static void render(ml_strbuf *b, const ml_cfg_node *n, int depth) {
    ml_cfg_kind k = ml_cfg_node_kind(n);
    if (k == ML_CFG_SCALAR || depth > 32) {
        render_scalar(b, k == ML_CFG_SCALAR ? ml_cfg_node_text(n) : "...");
        return;
    }
    ml_strbuf_puts(b, k == ML_CFG_MAP ? "{" : "[");
    for (int i = 0; i < ml_cfg_node_len(n); i++) {
        const ml_cfg_node *c = ml_cfg_node_at(n, i);
        if (i) ml_strbuf_puts(b, ", ");
        if (k == ML_CFG_MAP) {
            render_scalar(b, ml_cfg_node_key(c));
            ml_strbuf_puts(b, ": ");
        }
        render(b, c, depth + 1);
    }
    ml_strbuf_puts(b, k == ML_CFG_MAP ? "}" : "]");
}

static int flatten(flat *f, const ml_cfg_node *n, ml_strbuf *path, int depth) {
    ml_cfg_kind k = ml_cfg_node_kind(n);
    if (k == ML_CFG_SCALAR) return flat_add(f, path->buf ? path->buf : "", ml_strdup(ml_cfg_node_text(n)), 0, 0);
    if (depth > 32) return ml_errorf("config nested more than 32 levels");
    if (k == ML_CFG_SEQ) {
        ml_strbuf v = {0};
        render(&v, n, 0);
        if (v.oom) return ml_errorf("out of memory");
        if (flat_add(f, path->buf, ml_strbuf_take(&v), 1, ml_cfg_node_len(n))) return ML_ERR;
    }
    size_t mark = path->len;
    for (int i = 0; i < ml_cfg_node_len(n); i++) {
        const ml_cfg_node *c = ml_cfg_node_at(n, i);
        if (mark) ml_strbuf_puts(path, ".");
        if (k == ML_CFG_MAP) ml_strbuf_puts(path, ml_cfg_node_key(c));
        else ml_strbuf_printf(path, "%d", i);
        if (path->oom) return ml_errorf("out of memory");
        int rc = flatten(f, c, path, depth + 1);
        path->len = mark;
        path->buf[mark] = 0;
        if (rc) return ML_ERR;
    }
    return ML_OK;
}

/* ------------------------------------------------------------------ finding */

typedef struct finder {
    ml_runset *s;
    const ml_runs_opts *o;
    int cap_runs, cap_out;
    flat *flats;      /* (cap_runs) each run's entries, until grouped */
    char **seen;      /* realpaths of the runs reached */
    int n_seen, cap_seen;
} finder;

static void note(const finder *f, const char *fmt, ...) ML_PRINTF(2, 3);
static void note(const finder *f, const char *fmt, ...) {
    if (!f->o->log) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(f->o->log, "%s: ", f->o->who ? f->o->who : "moelab");
    vfprintf(f->o->log, fmt, ap);
    fputc('\n', f->o->log);
    va_end(ap);
}

static int seen_before(finder *f, const char *dir) {
    char abs[PATH_MAX];
    if (!realpath(dir, abs)) snprintf(abs, sizeof abs, "%s", dir);
    for (int i = 0; i < f->n_seen; i++)
        if (!strcmp(f->seen[i], abs)) return 1;
    if (f->n_seen == f->cap_seen) {
        int nc = f->cap_seen ? 2 * f->cap_seen : 64;
        char **v = realloc(f->seen, (size_t)nc * sizeof *v);
        if (!v) return 0;
        f->seen = v;
        f->cap_seen = nc;
    }
    char *d = ml_strdup(abs);
    if (d) f->seen[f->n_seen++] = d;
    return 0;
}

static int left_out(finder *f, const char *dir, int state) {
    ml_runset *s = f->s;
    if (s->n_left_out == f->cap_out) {
        int nc = f->cap_out ? 2 * f->cap_out : 16;
        char **v = realloc(s->left_out, (size_t)nc * sizeof *v);
        if (!v) return ml_errorf("out of memory");
        s->left_out = v;
        f->cap_out = nc;
    }
    ml_strbuf b = {0};
    ml_strbuf_printf(&b, "%s (%s)", dir, ml_run_state_name(state));
    if (!(s->left_out[s->n_left_out] = ml_strbuf_take(&b))) return ml_errorf("out of memory");
    s->n_left_out++;
    return ML_OK;
}

/* One run directory: its state, config and metrics. Unreadable runs are noted and left out. */
static int add_run(finder *f, const char *dir) {
    if (seen_before(f, dir)) return ML_OK;
    int state = ml_sweep_dir_state(dir);
    if (state != ML_RUN_OK && !f->o->include_unfinished) return left_out(f, dir, state);
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    ml_config *c = ml_config_load_plain(path);
    if (!c) {
        note(f, "%s (run left out)", ml_error());
        return ML_OK;
    }
    flat fl = {0};
    ml_strbuf p = {0};
    ml_strbuf_put(&p, "", 0);
    int rc = flatten(&fl, ml_config_root(c), &p, 0);
    ml_strbuf_free(&p);
    ml_config_free(c);
    if (rc) {
        note(f, "%s: %s (run left out)", path, ml_error());
        flat_free(&fl);
        return ML_OK;
    }
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    ml_table *t = ml_table_load(path);
    if (!t) {
        note(f, "%s (run left out)", ml_error());
        flat_free(&fl);
        return ML_OK;
    }
    ml_runset *s = f->s;
    if (s->n_runs == f->cap_runs) {
        int nc = f->cap_runs ? 2 * f->cap_runs : 32;
        ml_run *r = realloc(s->run, (size_t)nc * sizeof *r);
        flat *fls = r ? realloc(f->flats, (size_t)nc * sizeof *fls) : NULL;
        if (r) s->run = r;
        if (fls) f->flats = fls;
        if (!r || !fls) {
            flat_free(&fl);
            ml_table_free(t);
            return ml_errorf("out of memory");
        }
        f->cap_runs = nc;
    }
    ml_run *r = &s->run[s->n_runs];
    memset(r, 0, sizeof *r);
    r->dir = ml_strdup(dir);
    r->state = state;
    r->metrics = t;
    f->flats[s->n_runs] = fl;
    s->n_runs++;
    return r->dir ? ML_OK : ML_ERR;
}

static int add_dir(finder *f, const char *dir, int depth);
static int add_key(char ***keys, int *n, int *cap, const char *key);

static int add_sweep(finder *f, const char *dir) {
    ml_sweep *sw = ml_sweep_open(dir);
    if (!sw) {
        note(f, "%s (its runs left out)", ml_error());
        return ML_OK;
    }
    int rc = ML_OK;
    for (int i = 0; i < sw->n_runs && !rc; i++) {
        char run[ML_PATH_MAX + 32];
        snprintf(run, sizeof run, "%s/%s", dir, sw->run[i].id);
        rc = add_run(f, run);
    }
    ml_sweep_free(sw);
    return rc;
}

static int has(const char *dir, const char *name) {
    char p[ML_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int hidden(const struct dirent *d) { return d->d_name[0] != '.'; }

static int add_dir(finder *f, const char *dir, int depth) {
    if (has(dir, "sweep.yaml")) return add_sweep(f, dir);
    if (has(dir, "summary.json") || has(dir, "config.yaml")) return add_run(f, dir);
    if (depth >= SEARCH_DEPTH) return ML_OK;
    struct dirent **names = NULL;
    int n = scandir(dir, &names, hidden, alphasort);
    if (n < 0) {
        note(f, "%s: cannot read the directory: %s", dir, strerror(errno));
        return ML_OK;
    }
    int rc = ML_OK;
    for (int i = 0; i < n; i++) {
        char child[ML_PATH_MAX + 256];
        size_t dl = strlen(dir);
        snprintf(child, sizeof child, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", names[i]->d_name);
        if (!rc && ml_is_dir(child)) rc = add_dir(f, child, depth + 1);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* 1 when the list at key has the same length in every run. */
static int list_same_everywhere(const finder *f, const char *key, int len) {
    for (int q = 0; q < f->s->n_runs; q++) {
        int found = 0;
        for (int j = 0; j < f->flats[q].n && !found; j++) {
            const entry *x = &f->flats[q].e[j];
            if (x->list && !strcmp(x->key, key)) {
                if (x->len != len) return 0;
                found = 1;
            }
        }
        if (!found) return 0;
    }
    return 1;
}

/* Each run's keys and values from its entries: lists whose length differs between runs (or
   that some run lacks) become one key holding the list, the others their items. */
static int finish_flats(finder *f) {
    ml_runset *s = f->s;
    char **whole = NULL, **same = NULL; /* the lists, decided before any entry moves */
    int n_whole = 0, cap_whole = 0, n_same = 0, cap_same = 0, rc = ML_OK;
    for (int r = 0; r < s->n_runs && !rc; r++)
        for (int i = 0; i < f->flats[r].n && !rc; i++) {
            const entry *e = &f->flats[r].e[i];
            if (!e->list) continue;
            int known = 0;
            for (int k = 0; k < n_whole && !known; k++) known = !strcmp(whole[k], e->key);
            for (int k = 0; k < n_same && !known; k++) known = !strcmp(same[k], e->key);
            if (!known)
                rc = list_same_everywhere(f, e->key, e->len) ? add_key(&same, &n_same, &cap_same, e->key)
                                                             : add_key(&whole, &n_whole, &cap_whole, e->key);
        }
    for (int r = 0; r < s->n_runs && !rc; r++) {
        flat *fl = &f->flats[r];
        ml_run *run = &s->run[r];
        run->key = ml_calloc((size_t)fl->n + 1, sizeof *run->key);
        run->val = ml_calloc((size_t)fl->n + 1, sizeof *run->val);
        if (!run->key || !run->val) rc = ML_ERR;
        for (int i = 0; i < fl->n && !rc; i++) {
            entry *e = &fl->e[i];
            if (e->list) {
                int is_whole = 0;
                for (int k = 0; k < n_whole && !is_whole; k++) is_whole = !strcmp(whole[k], e->key);
                if (!is_whole) continue; /* its items follow */
                while (i + 1 < fl->n && under(fl->e[i + 1].key, e->key)) i++;
            }
            run->key[run->n_kv] = e->key;
            run->val[run->n_kv] = e->val;
            e->key = e->val = NULL;
            run->n_kv++;
        }
        const char *seed = ml_run_value(run, "train.seed");
        if (!rc && !(run->seed = ml_strdup(seed ? seed : "?"))) rc = ML_ERR;
    }
    ml_runs_free_list(whole, n_whole);
    ml_runs_free_list(same, n_same);
    return rc;
}

ml_runset *ml_runs_find(const char *const *dirs, int n, const ml_runs_opts *o) {
    static const ml_runs_opts none = {0, NULL, NULL};
    finder f = {0};
    f.o = o ? o : &none;
    f.s = ml_calloc(1, sizeof *f.s);
    if (!f.s) return NULL;
    int rc = ML_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (!ml_is_dir(dirs[i])) {
            rc = ml_errorf("%s: %s", dirs[i], access(dirs[i], F_OK) ? strerror(errno) : "not a directory");
            break;
        }
        int before = f.s->n_runs + f.s->n_left_out;
        rc = add_dir(&f, dirs[i], 0);
        if (!rc && f.s->n_runs + f.s->n_left_out == before)
            note(&f, "%s: no runs here (a sweep directory holds sweep.yaml, a run directory summary.json and "
                     "metrics.csv)", dirs[i]);
    }
    if (!rc) rc = finish_flats(&f);
    for (int r = 0; r < f.s->n_runs; r++) flat_free(&f.flats[r]);
    free(f.flats);
    ml_runs_free_list(f.seen, f.n_seen);
    if (!rc) rc = ml_runs_group(f.s, NULL, 0);
    if (rc) {
        ml_runs_free(f.s);
        return NULL;
    }
    return f.s;
}

static void free_groups(ml_runset *s) {
    for (int g = 0; g < s->n_groups; g++) {
        free(s->group[g].label);
        ml_runs_free_list(s->group[g].val, s->n_keys);
        free(s->group[g].run);
    }
    free(s->group);
    s->group = NULL;
    s->n_groups = 0;
    ml_runs_free_list(s->keys, s->n_keys);
    s->keys = NULL;
    s->n_keys = 0;
}

void ml_runs_free(ml_runset *s) {
    if (!s) return;
    free_groups(s);
    for (int i = 0; i < s->n_runs; i++) {
        ml_run *r = &s->run[i];
        free(r->dir);
        free(r->seed);
        ml_runs_free_list(r->key, r->n_kv);
        ml_runs_free_list(r->val, r->n_kv);
        ml_table_free(r->metrics);
    }
    free(s->run);
    ml_runs_free_list(s->left_out, s->n_left_out);
    free(s);
}

const char *ml_run_value(const ml_run *r, const char *key) {
    for (int i = 0; i < r->n_kv; i++)
        if (!strcmp(r->key[i], key)) return r->val[i];
    return NULL;
}

/* ------------------------------------------------------------------ grouping */

#define UNSET "(unset)"

static const char *value_or_unset(const ml_run *r, const char *key) {
    const char *v = ml_run_value(r, key);
    return v ? v : UNSET;
}

/* Appends key to keys when it is not there yet. */
static int add_key(char ***keys, int *n, int *cap, const char *key) {
    for (int i = 0; i < *n; i++)
        if (!strcmp((*keys)[i], key)) return ML_OK;
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        char **v = realloc(*keys, (size_t)nc * sizeof *v);
        if (!v) return ml_errorf("out of memory");
        *keys = v;
        *cap = nc;
    }
    if (!((*keys)[*n] = ml_strdup(key))) return ML_ERR;
    (*n)++;
    return ML_OK;
}

/*
 * 1 when key splits some class of runs that the keys kept so far put together: class[r] is
 * run r's class (the index of the first run with the same values of the kept keys),
 * updated when the key is kept. A key whose value follows from the keys before it (a
 * router's own options, when router.name differs) tells no groups apart and is not shown.
 */
static int refines(const ml_runset *s, int *cls, int *next, const char *key) {
    int split = 0, differs = 0;
    for (int r = 1; r < s->n_runs && !differs; r++)
        differs = strcmp(value_or_unset(&s->run[0], key), value_or_unset(&s->run[r], key)) != 0;
    if (!differs) return 0;
    for (int r = 0; r < s->n_runs; r++) {
        next[r] = r;
        for (int q = 0; q < r; q++)
            if (cls[q] == cls[r] && next[q] == q &&
                !strcmp(value_or_unset(&s->run[q], key), value_or_unset(&s->run[r], key))) {
                next[r] = q;
                break;
            }
        if (next[r] == r && cls[r] != r) split = 1; /* r starts a class of its own */
    }
    if (split) memcpy(cls, next, (size_t)s->n_runs * sizeof *cls);
    return split;
}

int ml_runs_group(ml_runset *s, const char *const *by, int n_by) {
    free_groups(s);
    /* every key of every run, in the order first seen */
    char **all = NULL;
    int n_all = 0, cap_all = 0, cap_keys = 0, rc = ML_OK;
    int *cls = ml_calloc((size_t)s->n_runs + 1, sizeof *cls), *next = ml_calloc((size_t)s->n_runs + 1, sizeof *next);
    if (!cls || !next) rc = ML_ERR;
    for (int r = 0; r < s->n_runs && !rc; r++)
        for (int i = 0; i < s->run[r].n_kv && !rc; i++) rc = add_key(&all, &n_all, &cap_all, s->run[r].key[i]);
    for (int r = 0; r < s->n_runs; r++) cls[r] = 0; /* one class */
    for (int k = 0; k < n_all && !rc && n_by == 0; k++)
        if (is_setting(all[k]) && refines(s, cls, next, all[k])) rc = add_key(&s->keys, &s->n_keys, &cap_keys, all[k]);
    for (int b = 0; b < n_by && !rc; b++) {
        int found = 0;
        for (int k = 0; k < n_all && !rc; k++) {
            if (!under(all[k], by[b])) continue;
            found = 1;
            /* a key named exactly is shown; the keys of a section only when they split groups */
            if (!strcmp(all[k], by[b])) {
                refines(s, cls, next, all[k]);
                rc = add_key(&s->keys, &s->n_keys, &cap_keys, all[k]);
            } else if (refines(s, cls, next, all[k])) {
                rc = add_key(&s->keys, &s->n_keys, &cap_keys, all[k]);
            }
        }
        if (!found && !rc)
            rc = ml_errorf("--by '%s': no run's config has this key (keys are dotted paths of config.yaml, e.g. "
                           "router.k, losses.0.coef; a section such as 'router' selects all of its keys)",
                           by[b]);
    }
    ml_runs_free_list(all, n_all);
    free(cls);
    free(next);
    if (rc) return ML_ERR;
    s->group = ml_calloc((size_t)s->n_runs + 1, sizeof *s->group);
    if (!s->group) return ML_ERR;
    for (int r = 0; r < s->n_runs; r++) {
        ml_run *run = &s->run[r];
        int g = 0;
        for (; g < s->n_groups; g++) {
            int same = 1;
            for (int k = 0; k < s->n_keys && same; k++) same = !strcmp(s->group[g].val[k], value_or_unset(run, s->keys[k]));
            if (same) break;
        }
        ml_run_group *G = &s->group[g];
        if (g == s->n_groups) {
            s->n_groups++;
            G->val = ml_calloc((size_t)s->n_keys + 1, sizeof *G->val);
            G->run = ml_calloc((size_t)s->n_runs, sizeof *G->run);
            if (!G->val || !G->run) return ML_ERR;
            ml_strbuf l = {0};
            for (int k = 0; k < s->n_keys; k++) {
                if (!(G->val[k] = ml_strdup(value_or_unset(run, s->keys[k])))) return ML_ERR;
                ml_strbuf_printf(&l, "%s%s=%s", k ? " " : "", s->keys[k], G->val[k]);
            }
            if (!s->n_keys) ml_strbuf_puts(&l, "all runs");
            if (!(G->label = ml_strbuf_take(&l))) return ml_errorf("out of memory");
        }
        G->run[G->n_runs++] = r;
        run->group = g;
    }
    return ML_OK;
}

/* ---------------------------------------------------------------- --at */

int ml_at_parse(const char *at, const char *best_by, ml_at *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->by, sizeof out->by, "val_loss");
    if (!at) at = best_by ? "best" : "last";
    if (!strcmp(at, "last")) out->kind = ML_AT_LAST;
    else if (!strcmp(at, "best")) out->kind = ML_AT_BEST;
    else if (!strncmp(at, "epoch=", 6)) {
        char *end;
        errno = 0;
        long e = strtol(at + 6, &end, 10);
        if (!at[6] || *end || errno || e < 0)
            return ml_errorf("--at '%s': expected epoch=N with N a whole number >= 0", at);
        out->kind = ML_AT_EPOCH;
        out->epoch = e;
    } else {
        return ml_errorf("--at '%s': expected last, best or epoch=N", at);
    }
    if (best_by) {
        if (out->kind != ML_AT_BEST) return ml_errorf("--best-by %s: only with --at best", best_by);
        const char *colon = strrchr(best_by, ':');
        size_t n = colon ? (size_t)(colon - best_by) : strlen(best_by);
        if (colon && strcmp(colon, ":max") && strcmp(colon, ":min"))
            return ml_errorf("--best-by '%s': expected COLUMN, COLUMN:min or COLUMN:max", best_by);
        if (n == 0 || n >= sizeof out->by) return ml_errorf("--best-by '%s': expected a metrics.csv column", best_by);
        memcpy(out->by, best_by, n);
        out->by[n] = 0;
        out->maximize = colon && !strcmp(colon, ":max");
    }
    return ML_OK;
}

const char *ml_at_describe(const ml_at *at, char *buf, size_t n) {
    if (at->kind == ML_AT_LAST) snprintf(buf, n, "the last epoch");
    else if (at->kind == ML_AT_EPOCH) snprintf(buf, n, "epoch %ld", at->epoch);
    else snprintf(buf, n, "the best epoch by %s (%s)", at->by, at->maximize ? "highest" : "lowest");
    return buf;
}

int ml_at_row(const ml_table *t, const ml_at *at, char *why, size_t n) {
    if (t->nrows == 0) {
        snprintf(why, n, "metrics.csv has no rows");
        return -1;
    }
    if (at->kind == ML_AT_LAST) return t->nrows - 1;
    if (at->kind == ML_AT_EPOCH) {
        int c = ml_table_col(t, "epoch");
        if (c < 0) {
            snprintf(why, n, "metrics.csv has no 'epoch' column");
            return -1;
        }
        double lo = INFINITY, hi = -INFINITY;
        for (int r = 0; r < t->nrows; r++) {
            double e = ml_table_num(t, r, c);
            if (e == (double)at->epoch) return r;
            if (e < lo) lo = e;
            if (e > hi) hi = e;
        }
        if (lo <= hi) snprintf(why, n, "no epoch %ld in metrics.csv (epochs %g to %g)", at->epoch, lo, hi);
        else snprintf(why, n, "no epoch %ld in metrics.csv", at->epoch);
        return -1;
    }
    int c = ml_table_col(t, at->by);
    if (c < 0) {
        snprintf(why, n, "no column '%s' in metrics.csv to find the best epoch by", at->by);
        return -1;
    }
    int best = -1;
    for (int r = 0; r < t->nrows; r++) {
        double v = ml_table_num(t, r, c);
        if (!isfinite(v)) continue;
        if (best < 0 || (at->maximize ? v > ml_table_num(t, best, c) : v < ml_table_num(t, best, c))) best = r;
    }
    if (best < 0) snprintf(why, n, "no finite '%s' value in metrics.csv to find the best epoch by", at->by);
    return best;
}
