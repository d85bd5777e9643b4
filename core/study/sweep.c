/* sweep.c — sweep directories, manifests, run states and the local launcher (sweep.h). */
#include "study/sweep.h"
#include "study/grid.h"
#include "study/slurm.h"
#include "base/common.h"
#include "base/file.h"
#include "base/json.h"
#include "base/strbuf.h"
#include "io/config.h"
#include "run/experiment.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MANIFEST "sweep.yaml"
#define MANIFEST_FORMAT 1
/* how each attempt's first line in logs/<id>.log begins (ml_sweep_log_attempts counts them) */
#define ATTEMPT_LINE "moelab sweep: attempt"

static const char *state_names[] = {"pending", "running", "ok", "failed", "interrupted", "crashed"};

const char *ml_run_state_name(int state) {
    return state >= 0 && state <= ML_RUN_CRASHED ? state_names[state] : "unknown";
}

static int state_from_name(const char *s) {
    for (int i = 0; i <= ML_RUN_CRASHED; i++)
        if (!strcmp(s, state_names[i])) return i;
    return -1;
}

int ml_sweep_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------------------------ free */

static void free_strs(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

void ml_sweep_free(ml_sweep *s) {
    if (!s) return;
    for (int i = 0; i < s->n_runs; i++) {
        ml_sweep_run *r = &s->run[i];
        free_strs(r->over, r->n);
        free(r->label);
        free(r->group);
        free(r->seed);
    }
    free(s->run);
    free_strs(s->axis, s->n_axes);
    free_strs(s->launcher.sbatch, s->launcher.n_sbatch);
    free(s->command);
    free(s);
}

int ml_sweep_run_dir(const ml_sweep *s, int i, char *out, size_t cap) {
    if ((size_t)snprintf(out, cap, "%s/%s", s->dir, s->run[i].id) >= cap)
        return ml_errorf("sweep: path %s/%s is too long", s->dir, s->run[i].id);
    return ML_OK;
}

/* --------------------------------------------------------------- run state */

/* 1 when a live process holds dir/.lock (a run in progress on this machine). */
static int dir_locked(const char *dir) {
    char path[ML_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/.lock", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return 0;
    int held = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);
    return held;
}

int ml_sweep_dir_state(const char *dir) {
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    char *text = NULL;
    size_t len = 0;
    if (ml_read_file(path, 1 << 24, &text, &len)) {
        ml_error_clear();
        return dir_locked(dir) ? ML_RUN_RUNNING : ML_RUN_PENDING;
    }
    ml_jv *v = ml_jv_parse(text, len);
    free(text);
    const ml_jv *st = v ? ml_jv_get(v, "status") : NULL;
    int state = ML_RUN_INTERRUPTED; /* unreadable: treat as something to resume or redo */
    if (st && st->type == ML_JV_STR) {
        if (!strcmp(st->str, "ok")) state = ML_RUN_OK;
        else if (!strcmp(st->str, "error")) state = ML_RUN_FAILED;
        else if (!strcmp(st->str, "crashed")) state = ML_RUN_CRASHED;
        else if (!strcmp(st->str, "running")) state = dir_locked(dir) ? ML_RUN_RUNNING : ML_RUN_INTERRUPTED;
    }
    ml_jv_free(v);
    return state;
}

void ml_sweep_refresh(ml_sweep *s) {
    char dir[ML_PATH_MAX];
    for (int i = 0; i < s->n_runs; i++)
        if (!ml_sweep_run_dir(s, i, dir, sizeof dir)) s->run[i].state = ml_sweep_dir_state(dir);
}

/* ---------------------------------------------------------------- manifest */

static void yq(ml_strbuf *b, const char *s) { ml_strbuf_json_string(b, s ? s : ""); } /* JSON strings are YAML */

static void ylist(ml_strbuf *b, char *const *v, int n) {
    ml_strbuf_puts(b, "[");
    for (int i = 0; i < n; i++) {
        if (i) ml_strbuf_puts(b, ", ");
        yq(b, v[i]);
    }
    ml_strbuf_puts(b, "]");
}

int ml_sweep_save(const ml_sweep *s) {
    ml_strbuf b = {0};
    ml_strbuf_puts(&b, "# moelab sweep manifest (docs/studies.md): written by moelab; `moelab sweep --status DIR`\n"
                       "# reads the runs' own status, `moelab sweep --resume DIR` finishes what is missing.\n");
    ml_strbuf_printf(&b, "format: %d\nid: ", MANIFEST_FORMAT);
    yq(&b, s->id);
    ml_strbuf_puts(&b, "\nexperiment: ");
    yq(&b, s->experiment);
    ml_strbuf_puts(&b, "\nconfig: ");
    yq(&b, s->config);
    ml_strbuf_puts(&b, "\ncwd: ");
    yq(&b, s->cwd);
    ml_strbuf_puts(&b, "\nmoelab: ");
    yq(&b, s->moelab);
    ml_strbuf_puts(&b, "\ncommand: ");
    yq(&b, s->command);
    ml_strbuf_puts(&b, "\ncreated: ");
    yq(&b, s->created);
    ml_strbuf_printf(&b, "\nplan_hash: \"%016" PRIx64 "\"\njobs: %d\nthreads: %d\naxes: ", s->hash, s->jobs, s->threads);
    ylist(&b, s->axis, s->n_axes);
    const ml_sweep_launcher *l = &s->launcher;
    ml_strbuf_puts(&b, "\nlauncher:\n  name: ");
    yq(&b, l->name);
    ml_strbuf_puts(&b, "\n  partition: ");
    yq(&b, l->partition);
    ml_strbuf_puts(&b, "\n  time: ");
    yq(&b, l->time);
    ml_strbuf_puts(&b, "\n  mem: ");
    yq(&b, l->mem);
    ml_strbuf_puts(&b, "\n  account: ");
    yq(&b, l->account);
    ml_strbuf_puts(&b, "\n  qos: ");
    yq(&b, l->qos);
    ml_strbuf_printf(&b, "\n  max_parallel: %d\n  sbatch: ", l->max_parallel);
    ylist(&b, l->sbatch, l->n_sbatch);
    ml_strbuf_puts(&b, "\n  job_id: ");
    yq(&b, l->job_id);
    ml_strbuf_printf(&b, "\nruns:%s\n", s->n_runs ? "" : " []");
    for (int i = 0; i < s->n_runs; i++) {
        const ml_sweep_run *r = &s->run[i];
        ml_strbuf_puts(&b, "  - id: ");
        yq(&b, r->id);
        ml_strbuf_puts(&b, "\n    overrides: ");
        ylist(&b, r->over, r->n);
        ml_strbuf_puts(&b, "\n    group: ");
        yq(&b, r->group);
        ml_strbuf_puts(&b, "\n    seed: ");
        yq(&b, r->seed);
        ml_strbuf_printf(&b, "\n    status: %s\n    exit: %d\n    attempts: %d\n    seconds: %.3f\n",
                         ml_run_state_name(r->state), r->exit_code, r->attempts, r->seconds);
    }
    if (b.oom) return ml_errorf("sweep: out of memory writing the manifest");
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/" MANIFEST, s->dir);
    int rc = ml_write_file_atomic(path, b.buf, b.len);
    ml_strbuf_free(&b);
    return rc;
}

/* -------------------------------------------------------- reading a manifest */

typedef struct rd {
    const ml_config *c;
    const char *path;
    int bad;
} rd;

static const ml_cfg_node *rd_node(rd *r, const ml_cfg_node *map, const char *key, ml_cfg_kind kind) {
    for (int i = 0; map && i < ml_cfg_node_len(map); i++) {
        const ml_cfg_node *e = ml_cfg_node_at(map, i);
        if (!strcmp(ml_cfg_node_key(e), key)) {
            if (ml_cfg_node_kind(e) == kind) return e;
            break;
        }
    }
    if (!r->bad) {
        int line = 0, col = 0;
        if (map) ml_cfg_node_source(map, &line, &col);
        ml_errorf("%s:%d:%d: expected '%s' (a %s) in this map (the manifest moelab writes; was it edited?)", r->path,
                  line, col, key, kind == ML_CFG_SEQ ? "list" : kind == ML_CFG_MAP ? "map" : "value");
    }
    r->bad = 1;
    return NULL;
}

static const char *rd_str(rd *r, const ml_cfg_node *map, const char *key) {
    const ml_cfg_node *n = rd_node(r, map, key, ML_CFG_SCALAR);
    return n ? ml_cfg_node_text(n) : "";
}

static int rd_copy(rd *r, const ml_cfg_node *map, const char *key, char *out, size_t cap) {
    const char *t = rd_str(r, map, key);
    if ((size_t)snprintf(out, cap, "%s", t) >= cap && !r->bad) {
        ml_errorf("%s: '%s' is too long", r->path, key);
        r->bad = 1;
    }
    return r->bad ? ML_ERR : ML_OK;
}

static long long rd_int(rd *r, const ml_cfg_node *map, const char *key, long long lo, long long hi) {
    const char *t = rd_str(r, map, key);
    char *end;
    errno = 0;
    long long v = strtoll(t, &end, 10);
    if (r->bad) return 0;
    if (!*t || *end || errno || v < lo || v > hi) {
        ml_errorf("%s: '%s' is '%s', expected an integer in [%lld, %lld]", r->path, key, t, lo, hi);
        r->bad = 1;
        return 0;
    }
    return v;
}

static char **rd_list(rd *r, const ml_cfg_node *map, const char *key, int *n) {
    *n = 0;
    const ml_cfg_node *l = rd_node(r, map, key, ML_CFG_SEQ);
    if (!l) return NULL;
    int k = ml_cfg_node_len(l);
    char **v = ml_calloc((size_t)(k ? k : 1), sizeof *v);
    if (!v) {
        r->bad = 1;
        return NULL;
    }
    for (int i = 0; i < k; i++) {
        const char *t = ml_cfg_node_text(ml_cfg_node_at(l, i));
        if (!t || !(v[i] = ml_strdup(t))) {
            if (!t) ml_errorf("%s: '%s' holds something other than text", r->path, key);
            free_strs(v, i);
            r->bad = 1;
            return NULL;
        }
    }
    *n = k;
    return v;
}

ml_sweep *ml_sweep_open(const char *dir) {
    char path[ML_PATH_MAX + 32], abs[PATH_MAX];
    if (!realpath(dir, abs)) {
        ml_errorf("sweep: %s: %s", dir, strerror(errno));
        return NULL;
    }
    snprintf(path, sizeof path, "%s/" MANIFEST, abs);
    if (access(path, R_OK) != 0) {
        ml_errorf("sweep: %s is not a sweep directory (no readable %s)", dir, MANIFEST);
        return NULL;
    }
    ml_config *c = ml_config_load_plain(path);
    if (!c) return NULL;
    ml_sweep *s = ml_calloc(1, sizeof *s);
    if (!s) {
        ml_config_free(c);
        return NULL;
    }
    rd r = {c, path, 0};
    const ml_cfg_node *root = ml_config_root(c);
    snprintf(s->dir, sizeof s->dir, "%s", abs);
    if (rd_int(&r, root, "format", MANIFEST_FORMAT, MANIFEST_FORMAT), r.bad) goto fail;
    rd_copy(&r, root, "id", s->id, sizeof s->id);
    rd_copy(&r, root, "experiment", s->experiment, sizeof s->experiment);
    rd_copy(&r, root, "config", s->config, sizeof s->config);
    rd_copy(&r, root, "cwd", s->cwd, sizeof s->cwd);
    rd_copy(&r, root, "moelab", s->moelab, sizeof s->moelab);
    rd_copy(&r, root, "created", s->created, sizeof s->created);
    if (!r.bad && !(s->command = ml_strdup(rd_str(&r, root, "command")))) r.bad = 1;
    const char *h = rd_str(&r, root, "plan_hash");
    if (!r.bad) s->hash = strtoull(h, NULL, 16);
    s->jobs = (int)rd_int(&r, root, "jobs", 1, 65536);
    s->threads = (int)rd_int(&r, root, "threads", 1, 65536);
    s->axis = rd_list(&r, root, "axes", &s->n_axes);
    const ml_cfg_node *l = rd_node(&r, root, "launcher", ML_CFG_MAP);
    if (r.bad) goto fail;
    ml_sweep_launcher *L = &s->launcher;
    rd_copy(&r, l, "name", L->name, sizeof L->name);
    rd_copy(&r, l, "partition", L->partition, sizeof L->partition);
    rd_copy(&r, l, "time", L->time, sizeof L->time);
    rd_copy(&r, l, "mem", L->mem, sizeof L->mem);
    rd_copy(&r, l, "account", L->account, sizeof L->account);
    rd_copy(&r, l, "qos", L->qos, sizeof L->qos);
    L->max_parallel = (int)rd_int(&r, l, "max_parallel", 0, 1 << 20);
    L->sbatch = rd_list(&r, l, "sbatch", &L->n_sbatch);
    rd_copy(&r, l, "job_id", L->job_id, sizeof L->job_id);
    const ml_cfg_node *runs = rd_node(&r, root, "runs", ML_CFG_SEQ);
    if (r.bad) goto fail;
    int n = ml_cfg_node_len(runs);
    s->run = ml_calloc((size_t)(n ? n : 1), sizeof *s->run);
    if (!s->run) goto fail;
    for (int i = 0; i < n && !r.bad; i++) {
        const ml_cfg_node *e = ml_cfg_node_at(runs, i);
        ml_sweep_run *x = &s->run[i];
        s->n_runs = i + 1;
        if (ml_cfg_node_kind(e) != ML_CFG_MAP) {
            ml_errorf("%s: runs item %d is not a map", path, i);
            goto fail;
        }
        rd_copy(&r, e, "id", x->id, sizeof x->id);
        x->over = rd_list(&r, e, "overrides", &x->n);
        if (!r.bad && (!(x->group = ml_strdup(rd_str(&r, e, "group"))) || !(x->seed = ml_strdup(rd_str(&r, e, "seed")))))
            r.bad = 1;
        const char *st = rd_str(&r, e, "status");
        x->state = r.bad ? 0 : state_from_name(st);
        if (!r.bad && x->state < 0) {
            ml_errorf("%s: run %s: unknown status '%s'", path, x->id, st);
            goto fail;
        }
        x->exit_code = (int)rd_int(&r, e, "exit", -1, 255);
        x->attempts = (int)rd_int(&r, e, "attempts", 0, 1 << 20);
        x->seconds = strtod(rd_str(&r, e, "seconds"), NULL);
        if (!r.bad && (strchr(x->id, '/') || !strcmp(x->id, ".") || !strcmp(x->id, ".."))) {
            ml_errorf("%s: run id '%s' is not a directory name", path, x->id);
            goto fail;
        }
    }
    if (r.bad) goto fail;
    /* labels are derived, not stored */
    for (int i = 0; i < s->n_runs; i++) {
        ml_strbuf b = {0};
        for (int a = 0; a < s->n_axes; a++)
            for (int j = 0; j < s->run[i].n; j++) {
                size_t kl = strcspn(s->run[i].over[j], "=");
                if (strlen(s->axis[a]) == kl && !strncmp(s->axis[a], s->run[i].over[j], kl)) {
                    if (b.len) ml_strbuf_puts(&b, " ");
                    ml_strbuf_puts(&b, s->run[i].over[j]);
                }
            }
        if (!(s->run[i].label = ml_strbuf_take(&b))) goto fail;
    }
    ml_config_free(c);
    return s;
fail:
    ml_config_free(c);
    ml_sweep_free(s);
    return NULL;
}

/* ----------------------------------------------------------------- creating */

static uint64_t fnv(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return (h ^ 0xff) * 0x100000001b3ULL;
}

static int copy_str(char *dst, size_t cap, const char *src, const char *what) {
    if ((size_t)snprintf(dst, cap, "%s", src ? src : "") >= cap)
        return ml_errorf("sweep: %s '%.40s...' is too long", what, src);
    return ML_OK;
}

/* The launcher settings: the config's launcher: section, then the command line. */
static int read_launcher(ml_sweep *s, const ml_config *cfg, const ml_sweep_opts *o) {
    ml_sweep_launcher *L = &s->launcher;
    snprintf(L->name, sizeof L->name, "local");
    const ml_cfg_node *sec = ml_config_get(cfg, "launcher");
    for (int i = 0; sec && ml_cfg_node_kind(sec) == ML_CFG_MAP && i < ml_cfg_node_len(sec); i++) {
        const ml_cfg_node *e = ml_cfg_node_at(sec, i);
        const char *k = ml_cfg_node_key(e), *t = ml_cfg_node_text(e);
        int line = 0, col = 0;
        const char *src = ml_cfg_node_source(e, &line, &col);
        char *dst = NULL;
        size_t cap = 0;
        if (!strcmp(k, "name")) dst = L->name, cap = sizeof L->name;
        else if (!strcmp(k, "partition")) dst = L->partition, cap = sizeof L->partition;
        else if (!strcmp(k, "time")) dst = L->time, cap = sizeof L->time;
        else if (!strcmp(k, "mem")) dst = L->mem, cap = sizeof L->mem;
        else if (!strcmp(k, "account")) dst = L->account, cap = sizeof L->account;
        else if (!strcmp(k, "qos")) dst = L->qos, cap = sizeof L->qos;
        else if (!strcmp(k, "max_parallel")) {
            char *end;
            long v = t ? strtol(t, &end, 10) : -1;
            if (!t || *end || v < 0 || v > (1 << 20))
                return ml_errorf("%s:%d:%d: launcher.max_parallel: expected an integer >= 0", src, line, col);
            L->max_parallel = (int)v;
            continue;
        } else if (!strcmp(k, "sbatch")) {
            if (ml_cfg_node_kind(e) != ML_CFG_SEQ)
                return ml_errorf("%s:%d:%d: launcher.sbatch: expected a list of sbatch options", src, line, col);
            int n = ml_cfg_node_len(e);
            L->sbatch = ml_calloc((size_t)(n ? n : 1), sizeof *L->sbatch);
            if (!L->sbatch) return ML_ERR;
            for (int j = 0; j < n; j++) {
                const char *x = ml_cfg_node_text(ml_cfg_node_at(e, j));
                if (!x || strchr(x, '\n'))
                    return ml_errorf("%s:%d:%d: launcher.sbatch: each item is one line of text", src, line, col);
                const char *why = ml_slurm_check_setting("sbatch", x);
                char vis[256];
                if (why)
                    return ml_errorf("%s:%d:%d: launcher.sbatch '%s': %s", src, line, col,
                                     ml_slurm_visible(x, vis, sizeof vis), why);
                if (!(L->sbatch[L->n_sbatch++] = ml_strdup(x))) return ML_ERR;
            }
            continue;
        } else
            return ml_errorf("%s:%d:%d: unknown key '%s' in launcher (expected name, partition, time, mem, "
                             "account, qos, max_parallel or sbatch)", src, line, col, k);
        if (!t || strchr(t, '\n'))
            return ml_errorf("%s:%d:%d: launcher.%s: expected one line of text", src, line, col, k);
        if ((size_t)snprintf(dst, cap, "%s", t) >= cap)
            return ml_errorf("%s:%d:%d: launcher.%s is too long", src, line, col, k);
        /* these go into an sbatch script: refused here, with their place, not on a cluster */
        const char *why = strcmp(k, "name") ? ml_slurm_check_setting(k, t) : NULL;
        char vis[256];
        if (why) return ml_errorf("%s:%d:%d: launcher.%s '%s': %s", src, line, col, k, ml_slurm_visible(t, vis, sizeof vis), why);
    }
    return ml_sweep_set_launcher(L, o);
}

int ml_sweep_set_launcher(ml_sweep_launcher *L, const ml_sweep_opts *o) {
    static const char *const keys[] = {"partition", "time", "mem", "account", "qos"};
    const char *vals[] = {o->partition, o->time, o->mem, o->account, o->qos};
    char *dsts[] = {L->partition, L->time, L->mem, L->account, L->qos};
    size_t caps[] = {sizeof L->partition, sizeof L->time, sizeof L->mem, sizeof L->account, sizeof L->qos};
    if (o->launcher && copy_str(L->name, sizeof L->name, o->launcher, "--launcher")) return ML_ERR;
    for (int k = 0; k < 5; k++) {
        if (!vals[k]) continue;
        const char *why = ml_slurm_check_setting(keys[k], vals[k]);
        char vis[256];
        if (why) return ml_errorf("sweep: --%s '%s': %s", keys[k], ml_slurm_visible(vals[k], vis, sizeof vis), why);
        char what[32];
        snprintf(what, sizeof what, "--%s", keys[k]);
        if (copy_str(dsts[k], caps[k], vals[k], what)) return ML_ERR;
    }
    if (o->max_parallel > 0) L->max_parallel = o->max_parallel;
    for (int i = 0; i < o->n_sbatch; i++) {
        const char *why = ml_slurm_check_setting("sbatch", o->sbatch[i]);
        char vis[256];
        if (why) return ml_errorf("sweep: --sbatch '%s': %s", ml_slurm_visible(o->sbatch[i], vis, sizeof vis), why);
        char **t = realloc(L->sbatch, (size_t)(L->n_sbatch + 1) * sizeof *t);
        if (!t) return ml_errorf("out of memory");
        L->sbatch = t;
        if (!(L->sbatch[L->n_sbatch] = ml_strdup(o->sbatch[i]))) return ML_ERR;
        L->n_sbatch++;
    }
    if (strcmp(L->name, "local") && strcmp(L->name, "slurm"))
        return ml_errorf("sweep: launcher '%s': expected local or slurm", L->name);
    return ML_OK;
}

/* The keys a sweep sets itself; a plan that sets them is refused. */
static int reserved(const char *ov) {
    return !strncmp(ov, "results.run_dir=", 16) || !strncmp(ov, "results.run_id=", 15);
}

ml_sweep *ml_sweep_create(const char *config, const char *const *args, int n_args, const ml_sweep_opts *o) {
    ml_sweep *s = ml_calloc(1, sizeof *s);
    ml_config *cfg = NULL;
    ml_grid *g = NULL;
    if (!s) return NULL;
    char abs[PATH_MAX];
    if (!realpath(config, abs)) {
        ml_errorf("sweep: %s: %s", config, strerror(errno));
        goto fail;
    }
    if (copy_str(s->config, sizeof s->config, abs, "config path") || !getcwd(s->cwd, sizeof s->cwd)) goto fail;
    ssize_t k = readlink("/proc/self/exe", s->moelab, sizeof s->moelab - 1);
    if (k <= 0) {
        ml_errorf("sweep: cannot find the moelab executable (/proc/self/exe): %s", strerror(errno));
        goto fail;
    }
    s->moelab[k] = 0;
    /* the base config (the command line's fixed overrides included) must load as a run's */
    if (!(cfg = ml_exp_load_config(s->config, NULL, 0))) goto fail;
    if (!(g = ml_grid_new(cfg, args, n_args))) goto fail;
    if (g->n_runs < 1) {
        ml_errorf("sweep: the plan has no runs");
        goto fail;
    }
    for (int i = 0; i < g->n_runs; i++)
        for (int j = 0; j < g->run[i].n; j++)
            if (reserved(g->run[i].over[j])) {
                ml_errorf("sweep: '%s': a sweep sets each run's directory itself", g->run[i].over[j]);
                goto fail;
            }
    if (read_launcher(s, cfg, o)) goto fail;
    /* every run's config, as its run will load it */
    char rdir[ML_PATH_MAX];
    uint64_t h = fnv(0xcbf29ce484222325ULL, s->config);
    for (int i = 0; i < g->n_runs; i++) {
        ml_config *rc = ml_exp_load_config(s->config, (const char *const *)g->run[i].over, g->run[i].n);
        if (!rc) {
            char lab[512] = "";
            for (int j = 0; j < g->run[i].n; j++) {
                size_t l = strlen(lab);
                snprintf(lab + l, sizeof lab - l, "%s%s", j ? " " : "", g->run[i].over[j]);
            }
            ml_error_prefix("sweep: run %d (%s)", i, lab);
            goto fail;
        }
        h = fnv(h, ml_config_yaml(rc));
        if (i == 0) { /* where the sweep goes: as the first run's config says */
            snprintf(s->experiment, sizeof s->experiment, "%s", ml_config_str(rc, "experiment", "default"));
            if (copy_str(rdir, sizeof rdir, ml_config_str(rc, "results.dir", "results"), "results.dir")) {
                ml_config_free(rc);
                goto fail;
            }
        }
        ml_config_free(rc);
    }
    s->hash = h ^ ml_grid_hash(g);
    /* threads and workers: never more threads in all than CPUs */
    int cpus = ml_sweep_cpus();
    int jobs = o->jobs > 0 ? o->jobs : (int)ml_config_int(cfg, "sweep.jobs", 0);
    int fixed_threads = 0;
    for (int i = 0; i < g->n_fixed; i++)
        if (!strncmp(g->fixed[i], "train.threads=", 14)) fixed_threads = atoi(g->fixed[i] + 14);
    int cfg_threads = (int)ml_config_int(cfg, "train.threads", 0);
    s->threads = fixed_threads > 0 ? fixed_threads : 0;
    if (jobs <= 0) jobs = s->threads > 0 ? cpus / s->threads : cpus;
    if (jobs > g->n_runs) jobs = g->n_runs;
    if (jobs < 1) jobs = 1;
    if (!s->threads) s->threads = cpus / jobs > 0 ? cpus / jobs : 1;
    (void)cfg_threads;
    s->jobs = jobs;
    /* the runs */
    s->run = ml_calloc((size_t)g->n_runs, sizeof *s->run);
    if (!s->run) goto fail;
    int width = 3;
    for (int n = g->n_runs - 1; n >= 1000; n /= 10) width++;
    const char *cfg_seed = ml_config_str(cfg, "train.seed", NULL);
    char seedbuf[32];
    if (!cfg_seed) {
        snprintf(seedbuf, sizeof seedbuf, "%" PRId64, ml_config_int(cfg, "train.seed", 0));
        cfg_seed = seedbuf;
    }
    s->axis = ml_calloc((size_t)(g->n_axes ? g->n_axes : 1), sizeof *s->axis);
    if (!s->axis) goto fail;
    for (int a = 0; a < g->n_axes; a++) {
        if (!(s->axis[a] = ml_strdup(g->axis[a]))) goto fail;
        s->n_axes++;
    }
    for (int i = 0; i < g->n_runs; i++) {
        ml_sweep_run *r = &s->run[i];
        s->n_runs++;
        if (snprintf(r->id, sizeof r->id, "%0*d", width, i) >= (int)sizeof r->id) goto fail;
        r->n = g->run[i].n;
        r->over = g->run[i].over;
        g->run[i].over = NULL;
        g->run[i].n = 0;
        r->exit_code = -1;
        ml_strbuf lab = {0}, grp = {0};
        for (int a = 0; a < s->n_axes; a++)
            for (int j = 0; j < r->n; j++) {
                size_t kl = strcspn(r->over[j], "=");
                if (strlen(s->axis[a]) != kl || strncmp(s->axis[a], r->over[j], kl)) continue;
                if (lab.len) ml_strbuf_puts(&lab, " ");
                ml_strbuf_puts(&lab, r->over[j]);
                if (strcmp(s->axis[a], "train.seed")) {
                    if (grp.len) ml_strbuf_puts(&grp, " ");
                    ml_strbuf_puts(&grp, r->over[j]);
                }
            }
        r->label = ml_strbuf_take(&lab);
        r->group = ml_strbuf_take(&grp);
        const char *sv = ml_grid_run_value(&(ml_grid_run){r->n, r->over}, "train.seed");
        r->seed = ml_strdup(sv ? sv : cfg_seed);
        if (!r->label || !r->group || !r->seed) goto fail;
    }
    /* the directory */
    char stem[128];
    const char *base = strrchr(s->config, '/');
    if (snprintf(stem, sizeof stem, "%s", base ? base + 1 : s->config) >= (int)sizeof stem) stem[100] = 0;
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem) *dot = 0;
    if (o->name) {
        if (!*o->name || strchr(o->name, '/') || !strcmp(o->name, ".") || !strcmp(o->name, "..") || strlen(o->name) > 100) {
            ml_errorf("sweep: --name '%s': expected a directory name (no '/', at most 100 bytes)", o->name);
            goto fail;
        }
        snprintf(s->id, sizeof s->id, "%s", o->name);
    } else
        if (snprintf(s->id, sizeof s->id, "%.100s-%08" PRIx64, stem, (s->hash >> 32) ^ (s->hash & 0xffffffffu)) < 0) goto fail;
    char parent[ML_PATH_MAX];
    if ((size_t)snprintf(parent, sizeof parent, "%s/%s/sweeps", rdir, s->experiment) >= sizeof parent ||
        (!o->dry_run && ml_mkdir_p(parent))) {
        ml_error_prefix("sweep");
        goto fail;
    }
    char absparent[PATH_MAX];
    if (o->dry_run) {
        if (parent[0] == '/') snprintf(absparent, sizeof absparent, "%s", parent);
        else if ((size_t)snprintf(absparent, sizeof absparent, "%s/%s", s->cwd, parent) >= sizeof absparent) goto fail;
    } else if (!realpath(parent, absparent)) {
        ml_errorf("sweep: %s: %s", parent, strerror(errno));
        goto fail;
    }
    if ((size_t)snprintf(s->dir, sizeof s->dir, "%s/%s", absparent, s->id) >= sizeof s->dir) {
        ml_errorf("sweep: the sweep directory under %s is too long", absparent);
        goto fail;
    }
    if (!(s->command = ml_strdup(o->command ? o->command : ""))) goto fail;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(s->created, sizeof s->created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char mpath[ML_PATH_MAX + 32];
    snprintf(mpath, sizeof mpath, "%s/" MANIFEST, s->dir);
    if (o->dry_run) {
        ml_grid_free(g);
        ml_config_free(cfg);
        return s;
    }
    if (access(mpath, F_OK) == 0) { /* the same sweep again: continue it */
        ml_sweep *old = ml_sweep_open(s->dir);
        if (!old) goto fail;
        if (old->hash != s->hash || old->n_runs != s->n_runs) {
            ml_errorf("sweep: %s holds another sweep (other config or grid: plan %016" PRIx64 ", this one %016" PRIx64
                      "); choose another --name, or continue that one with moelab sweep --resume %s",
                      s->dir, old->hash, s->hash, s->dir);
            ml_sweep_free(old);
            goto fail;
        }
        /* keep its history; take this command's workers and launcher settings */
        char jid[sizeof old->launcher.job_id];
        snprintf(jid, sizeof jid, "%s", old->launcher.job_id);
        free_strs(old->launcher.sbatch, old->launcher.n_sbatch);
        old->launcher = s->launcher;
        s->launcher.sbatch = NULL;
        s->launcher.n_sbatch = 0;
        snprintf(old->launcher.job_id, sizeof old->launcher.job_id, "%s", jid);
        old->jobs = s->jobs;
        old->threads = s->threads;
        free(old->command);
        old->command = s->command;
        s->command = NULL;
        ml_grid_free(g);
        ml_config_free(cfg);
        ml_sweep_free(s);
        ml_sweep_refresh(old);
        return old;
    }
    if (mkdir(s->dir, 0777) != 0 && errno != EEXIST) {
        ml_errorf("sweep: cannot create %s: %s", s->dir, strerror(errno));
        goto fail;
    }
    char logs[ML_PATH_MAX + 16];
    snprintf(logs, sizeof logs, "%s/logs", s->dir);
    if (ml_mkdir_p(logs) || ml_sweep_save(s)) goto fail;
    ml_grid_free(g);
    ml_config_free(cfg);
    return s;
fail:
    ml_grid_free(g);
    ml_config_free(cfg);
    ml_sweep_free(s);
    return NULL;
}

/* ------------------------------------------------------------ starting a run */

void ml_sweep_argv_free(char **argv) {
    if (!argv) return;
    for (char **p = argv; *p; p++) free(*p);
    free(argv);
}

static int has_checkpoint(const char *dir) {
    char p[ML_PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/checkpoints/interrupt.safetensors", dir);
    if (access(p, R_OK) == 0) return 1;
    snprintf(p, sizeof p, "%s/checkpoints/last.safetensors", dir);
    return access(p, R_OK) == 0;
}

/* Moves a run directory that will not be continued out of the way: <id>.attempt-<k>. */
static int set_aside(const char *dir) {
    char to[ML_PATH_MAX + 32];
    for (int k = 1; k < 10000; k++) {
        snprintf(to, sizeof to, "%s.attempt-%d", dir, k);
        if (access(to, F_OK) == 0) continue;
        if (rename(dir, to) != 0) return ml_errorf("sweep: cannot move %s aside to %s: %s", dir, to, strerror(errno));
        return ML_OK;
    }
    return ml_errorf("sweep: %s: too many earlier attempts", dir);
}

int ml_sweep_prepare(ml_sweep *s, int i, char ***argv_out) {
    *argv_out = NULL;
    char dir[ML_PATH_MAX];
    if (ml_sweep_run_dir(s, i, dir, sizeof dir)) return ML_ERR;
    ml_sweep_run *r = &s->run[i];
    int st = ml_sweep_dir_state(dir);
    r->state = st;
    if (st == ML_RUN_OK || st == ML_RUN_RUNNING) return ML_OK;
    int resume = st == ML_RUN_INTERRUPTED && has_checkpoint(dir);
    if (!resume && access(dir, F_OK) == 0) {
        /* a failed, crashed or checkpoint-less attempt: kept beside, the run starts anew */
        if (set_aside(dir)) return ML_ERR;
    }
    int n = resume ? 4 : r->n + 5;
    char **argv = ml_calloc((size_t)n + 1, sizeof *argv);
    if (!argv) return ML_ERR;
    int k = 0, ok = 1;
    char buf[ML_PATH_MAX + 64];
    ok &= !!(argv[k++] = ml_strdup(s->moelab));
    ok &= !!(argv[k++] = ml_strdup("run"));
    if (resume) {
        ok &= !!(argv[k++] = ml_strdup("--resume"));
        ok &= !!(argv[k++] = ml_strdup(dir));
    } else {
        ok &= !!(argv[k++] = ml_strdup(s->config));
        for (int j = 0; j < r->n; j++) ok &= !!(argv[k++] = ml_strdup(r->over[j]));
        snprintf(buf, sizeof buf, "results.run_dir=%s", dir);
        ok &= !!(argv[k++] = ml_strdup(buf));
        snprintf(buf, sizeof buf, "train.threads=%d", s->threads);
        ok &= !!(argv[k++] = ml_strdup(buf));
    }
    if (!ok) {
        ml_sweep_argv_free(argv);
        return ML_ERR;
    }
    *argv_out = argv;
    return ML_OK;
}

/* In a child about to exec: the run's environment, directory and log. */
static void child_setup(const ml_sweep *s, int i, int to_log) {
    char t[16];
    snprintf(t, sizeof t, "%d", s->threads);
    setenv("OMP_NUM_THREADS", t, 1);
    setenv("OPENBLAS_NUM_THREADS", t, 1);
    if (chdir(s->cwd) != 0 && chdir(s->dir) != 0) { /* the run still resolves absolute paths */ }
    if (to_log) {
        char log[ML_PATH_MAX + 32];
        snprintf(log, sizeof log, "%s/logs/%s.log", s->dir, s->run[i].id);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
    }
}

int ml_sweep_exec(ml_sweep *s, int i, int to_log) {
    char **argv;
    if (ml_sweep_prepare(s, i, &argv)) return ML_ERR;
    if (!argv) return ML_OK;
    /* where this attempt runs: a SLURM array task says which, for the log */
    char where[256] = "";
    const char *job = getenv("SLURM_ARRAY_JOB_ID"), *task = getenv("SLURM_ARRAY_TASK_ID");
    const char *restart = getenv("SLURM_RESTART_COUNT"), *node = getenv("SLURMD_NODENAME");
    if (job && task)
        snprintf(where, sizeof where, " (SLURM job %.40s_%.20s on %.100s, restart %.20s)", job, task, node ? node : "?",
                 restart ? restart : "0");
    int attempt = ml_sweep_log_attempts(s, i) + 1;
    if (to_log) {
        fprintf(stderr, "moelab sweep: run %s, attempt %d%s: output in %s/logs/%s.log\n", s->run[i].id, attempt, where,
                s->dir, s->run[i].id);
        fflush(stderr);
    }
    child_setup(s, i, to_log);
    fprintf(stderr, ATTEMPT_LINE " %d%s:", attempt, where);
    for (char **p = argv; *p; p++) fprintf(stderr, " %s", *p);
    fputc('\n', stderr);
    fflush(stderr);
    execv(argv[0], argv);
    ml_errorf("sweep: cannot start %s: %s", argv[0], strerror(errno));
    ml_sweep_argv_free(argv);
    return ML_ERR;
}

/* ----------------------------------------------------------- local launcher */

static volatile sig_atomic_t g_stop;

static void on_stop(int sig) { g_stop = sig; }

/* The last line of a run's log that says what went wrong ("moelab: ..."), for the summary. */
static void last_error_line(const ml_sweep *s, int i, char *out, size_t cap) {
    char log[ML_PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/logs/%s.log", s->dir, s->run[i].id);
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (!f) return;
    if (fseek(f, -8192, SEEK_END) != 0) rewind(f);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "moelab: ", 8) && !strstr(line, "run directory") && !strstr(line, "results written so far"))
            if (snprintf(out, cap, "%s", line + 8) < 0) out[0] = 0;
    }
    fclose(f);
}

/* A number from a run's summary.json: last_epoch.<key> when in_last, else <key> (NAN if absent). */
static double summary_value(const char *dir, const char *key, int in_last) {
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    char *text = NULL;
    size_t len = 0;
    if (ml_read_file(path, 1 << 24, &text, &len)) {
        ml_error_clear();
        return NAN;
    }
    ml_jv *v = ml_jv_parse(text, len);
    free(text);
    const ml_jv *le = !v ? NULL : in_last ? ml_jv_get(v, "last_epoch") : v;
    const ml_jv *x = le ? ml_jv_get(le, key) : NULL;
    double r = x && x->type == ML_JV_NUM ? x->num : NAN;
    ml_jv_free(v);
    return r;
}

double ml_sweep_run_seconds(const ml_sweep *s, int i) {
    char dir[ML_PATH_MAX];
    if (ml_sweep_run_dir(s, i, dir, sizeof dir)) return NAN;
    return summary_value(dir, "seconds", 0);
}

int ml_sweep_log_attempts(const ml_sweep *s, int i) {
    char log[ML_PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/logs/%s.log", s->dir, s->run[i].id);
    FILE *f = fopen(log, "r");
    if (!f) return 0;
    int n = 0, bol = 1;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (bol && !strncmp(line, ATTEMPT_LINE, sizeof ATTEMPT_LINE - 1)) n++;
        bol = strchr(line, '\n') != NULL;
    }
    fclose(f);
    return n;
}

void ml_sweep_print_ended(const ml_sweep *s, int i, int done, int todo, const char *note, FILE *out) {
    const ml_sweep_run *r = &s->run[i];
    char dir[ML_PATH_MAX], what[800] = "";
    if (ml_sweep_run_dir(s, i, dir, sizeof dir)) dir[0] = 0;
    if (r->state == ML_RUN_OK) {
        double v = summary_value(dir, "val_loss", 1);
        if (v == v) snprintf(what, sizeof what, "val_loss %.6g", v);
    } else { /* "exit N: error line; log logs/<id>.log; note", each part when there is one */
        char err[480], log[ML_PATH_MAX + 32];
        last_error_line(s, i, err, sizeof err);
        snprintf(log, sizeof log, "%s/logs/%s.log", s->dir, r->id);
        ml_strbuf b = {0};
        if (r->exit_code >= 0) ml_strbuf_printf(&b, "exit %d%s", r->exit_code, *err ? ": " : "");
        ml_strbuf_puts(&b, err);
        if (access(log, F_OK) == 0) ml_strbuf_printf(&b, "%slog logs/%s.log", b.len ? "; " : "", r->id);
        if (note) ml_strbuf_printf(&b, "%s%s", b.len ? "; " : "", note);
        if (b.buf && snprintf(what, sizeof what, "%s", b.buf) < 0) what[0] = 0;
        ml_strbuf_free(&b);
    }
    fprintf(out, "moelab sweep: [%d/%d] %s %s in %.1f s%s%s  %s\n", done, todo, r->id, ml_run_state_name(r->state),
            r->seconds, *what ? ", " : "", what, r->label);
    fflush(out);
}

int ml_sweep_run_local(ml_sweep *s, FILE *out) {
    int jobs = s->jobs > 0 ? s->jobs : 1;
    pid_t *pid = ml_calloc((size_t)s->n_runs, sizeof *pid);
    double *t0 = ml_calloc((size_t)s->n_runs, sizeof *t0);
    if (!pid || !t0) {
        free(pid);
        free(t0);
        return ML_ERR;
    }
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    ml_sweep_refresh(s);
    int todo = 0, done = 0, running = 0, next = 0, stopped_sent = 0, bad = 0;
    for (int i = 0; i < s->n_runs; i++) todo += s->run[i].state != ML_RUN_OK;
    fprintf(out, "moelab sweep: %s: %d runs, %d to do, %d at a time with %d thread%s each\n", s->dir, s->n_runs, todo,
            jobs, s->threads, s->threads == 1 ? "" : "s");
    fflush(out);
    for (;;) {
        while (!g_stop && running < jobs && next < s->n_runs) {
            int i = next++;
            if (s->run[i].state == ML_RUN_OK) continue;
            char **argv;
            if (ml_sweep_prepare(s, i, &argv)) {
                fprintf(out, "moelab sweep: run %s: %s\n", s->run[i].id, ml_error());
                s->run[i].state = ML_RUN_FAILED;
                bad++;
                continue;
            }
            if (!argv) {
                if (s->run[i].state == ML_RUN_RUNNING)
                    fprintf(out, "moelab sweep: run %s is running in another process; left to it\n", s->run[i].id);
                continue;
            }
            fflush(out);
            pid_t p = fork();
            if (p < 0) {
                fprintf(out, "moelab sweep: cannot start run %s: %s\n", s->run[i].id, strerror(errno));
                ml_sweep_argv_free(argv);
                s->run[i].state = ML_RUN_FAILED;
                bad++;
                continue;
            }
            if (p == 0) {
                setpgid(0, 0); /* Ctrl-C reaches the sweep, which passes one SIGTERM on */
                sigaction(SIGINT, &old_int, NULL);
                sigaction(SIGTERM, &old_term, NULL);
                child_setup(s, i, 1);
                fprintf(stderr, ATTEMPT_LINE " %d:", s->run[i].attempts + 1);
                for (char **q = argv; *q; q++) fprintf(stderr, " %s", *q);
                fputc('\n', stderr);
                execv(argv[0], argv);
                fprintf(stderr, "moelab sweep: cannot start %s: %s\n", argv[0], strerror(errno));
                _exit(127);
            }
            setpgid(p, p);
            ml_sweep_argv_free(argv);
            pid[i] = p;
            t0[i] = ml_now();
            s->run[i].attempts++;
            s->run[i].state = ML_RUN_RUNNING;
            running++;
            if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
        }
        if (g_stop && !stopped_sent) {
            for (int i = 0; i < s->n_runs; i++)
                if (pid[i] > 0) kill(pid[i], SIGTERM);
            stopped_sent = 1;
            fprintf(out, "moelab sweep: stopping: each running run saves its interrupt checkpoint\n");
            fflush(out);
        }
        if (!running) break;
        int status;
        pid_t p = waitpid(-1, &status, 0);
        if (p < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int i = 0;
        while (i < s->n_runs && pid[i] != p) i++;
        if (i == s->n_runs) continue;
        pid[i] = 0;
        running--;
        ml_sweep_run *r = &s->run[i];
        r->seconds = ml_now() - t0[i];
        r->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        char dir[ML_PATH_MAX];
        ml_sweep_run_dir(s, i, dir, sizeof dir);
        r->state = ml_sweep_dir_state(dir);
        if (r->state == ML_RUN_PENDING || (r->state == ML_RUN_OK && r->exit_code != 0))
            r->state = r->exit_code == 130 ? ML_RUN_INTERRUPTED : ML_RUN_FAILED;
        done++;
        if (r->state != ML_RUN_OK && r->state != ML_RUN_INTERRUPTED) bad++;
        ml_sweep_print_ended(s, i, done, todo, NULL, out);
        if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(pid);
    free(t0);
    ml_sweep_refresh(s);
    if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
    if (g_stop) return -1;
    int not_ok = 0;
    for (int i = 0; i < s->n_runs; i++) not_ok += s->run[i].state != ML_RUN_OK;
    (void)bad;
    return not_ok;
}

int ml_sweep_print_status(ml_sweep *s, FILE *out) {
    ml_sweep_refresh(s);
    int count[ML_RUN_CRASHED + 1] = {0};
    fprintf(out, "sweep %s (%s)\n", s->id, s->dir);
    fprintf(out, "%-6s %-12s %-8s %s\n", "run", "status", "attempts", "overrides");
    for (int i = 0; i < s->n_runs; i++) {
        const ml_sweep_run *r = &s->run[i];
        count[r->state]++;
        int attempts = ml_sweep_log_attempts(s, i); /* SLURM tasks log theirs; the manifest may lag */
        fprintf(out, "%-6s %-12s %-8d %s\n", r->id, ml_run_state_name(r->state),
                attempts > r->attempts ? attempts : r->attempts, r->label);
    }
    fprintf(out, "%d runs:", s->n_runs);
    int first = 1;
    for (int k = 0; k <= ML_RUN_CRASHED; k++)
        if (count[k]) {
            fprintf(out, "%s %d %s", first ? "" : ",", count[k], ml_run_state_name(k));
            first = 0;
        }
    fputc('\n', out);
    return s->n_runs - count[ML_RUN_OK];
}
