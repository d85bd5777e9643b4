/* provenance.c — the provenance of a run in summary.json (provenance.h). */
#include "run/provenance.h"
#include "base/common.h"
#include "base/file.h"
#include "base/json.h"
#include "base/sha256.h"
#include "base/strbuf.h"
#include "base/version.h"
#include "plugin/loader.h"

#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

char *openblas_get_corename(void);

static void utc_now(char out[32]) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* s as a shell word: as is when it is plain, else in single quotes. */
static void shell_word(ml_strbuf *b, const char *s) {
    int plain = *s != 0;
    for (const char *p = s; *p && plain; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("-_./=:,+@%", *p);
    if (plain) {
        ml_strbuf_puts(b, s);
        return;
    }
    ml_strbuf_puts(b, "'");
    for (const char *p = s; *p; p++) {
        if (*p == '\'') ml_strbuf_puts(b, "'\\''");
        else ml_strbuf_put(b, p, 1);
    }
    ml_strbuf_puts(b, "'");
}

/* Keys whose override does not change what a run computes, or that say where it goes. */
static int bookkeeping(const char *ov) {
    static const char *const keys[] = {"train.seed=", "train.threads=", "results.", "lua.timeout_s=",
                                       "lua.memory_mb=", "experiment="};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strncmp(ov, keys[i], strlen(keys[i]))) return 1;
    return 0;
}

int ml_prov_set_command(ml_experiment *e, int argc, char *const *argv, const char *const *overrides, int n_overrides) {
    ml_strbuf c = {0}, o = {0}, g = {0};
    for (int i = 0; i < argc; i++) {
        if (i) ml_strbuf_puts(&c, " ");
        shell_word(&c, argv[i]);
    }
    ml_strbuf_puts(&o, "[");
    for (int i = 0; i < n_overrides; i++) {
        if (i) ml_strbuf_puts(&o, ",");
        ml_strbuf_json_string(&o, overrides[i]);
        if (!bookkeeping(overrides[i])) {
            if (g.len) ml_strbuf_puts(&g, " ");
            ml_strbuf_puts(&g, overrides[i]);
        }
    }
    ml_strbuf_puts(&o, "]");
    free(e->command);
    free(e->overrides);
    free(e->group);
    e->command = ml_strbuf_take(&c);
    e->overrides = ml_strbuf_take(&o);
    e->group = ml_strbuf_take(&g);
    if (!e->command || !e->overrides || !e->group) return ml_errorf("provenance: out of memory");
    return ML_OK;
}

/* One plugin, once (several layers or losses may share a file). */
static void add_plugin(ml_json *arr_items, int *first, const ml_plugin *p, const void **seen, int *n_seen) {
    const char *file = ml_plugin_file(p);
    for (int i = 0; i < *n_seen; i++)
        if (seen[i] == p) return;
    seen[(*n_seen)++] = p;
    ml_json o;
    ml_json_begin(&o);
    ml_json_str(&o, "kind", ml_plugin_kind_name(p->kind));
    ml_json_str(&o, "name", p->name);
    ml_json_str(&o, "version", p->version);
    char abi[32];
    snprintf(abi, sizeof abi, "%u.%u", (unsigned)p->abi_major, (unsigned)p->abi_minor);
    ml_json_str(&o, "abi", abi);
    char real[PATH_MAX], hex[65];
    const char *path = file && realpath(file, real) ? real : file;
    ml_json_str(&o, "path", path);
    if (path && ml_sha256_file(path, hex) == ML_OK) ml_json_str(&o, "sha256", hex);
    else {
        ml_json_str(&o, "sha256", NULL);
        ml_error_clear();
    }
    const char *t = ml_json_end(&o);
    if (t) {
        if (!*first) ml_strbuf_puts(&arr_items->b, ",");
        ml_strbuf_puts(&arr_items->b, t);
        *first = 0;
    }
    ml_json_free(&o);
}

int ml_prov_begin(ml_experiment *e) {
    utc_now(e->started_at);
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, "moelab", ML_VERSION);
    ml_json_str(&j, "commit", ml_build_commit());
    ml_json_str(&j, "build", ml_build_flags());
    char abi[16];
    snprintf(abi, sizeof abi, "%d.%d", ML_ABI_MAJOR, ML_ABI_MINOR);
    ml_json_str(&j, "plugin_abi", abi);
    ml_json_str(&j, "command", e->command);
    char real[PATH_MAX], cwd[PATH_MAX];
    const char *cfg = ml_config_path(e->cfg);
    ml_json_str(&j, "config", realpath(cfg, real) ? real : cfg);
    ml_json_str(&j, "cwd", getcwd(cwd, sizeof cwd) ? cwd : NULL);
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0) host[0] = 0;
    ml_json_str(&j, "host", host);
    ml_json_int(&j, "threads", omp_get_max_threads());
    const char *blas = openblas_get_corename();
    ml_json_str(&j, "blas", blas ? blas : "unknown");
    /* the plugins, each file once */
    ml_json items;
    ml_json_begin(&items);
    ml_strbuf_clear(&items.b);
    ml_strbuf_puts(&items.b, "[");
    int first = 1, n_seen = 0;
    const void *seen[ML_MAX_LOSSES + 66];
    for (int l = 0; l < e->model->L && n_seen < 64; l++) add_plugin(&items, &first, e->model->moe[l]->router.plugin, seen, &n_seen);
    for (int i = 0; i < e->n_losses; i++) add_plugin(&items, &first, e->loss[i].plugin, seen, &n_seen);
    if (e->sched.plugin) add_plugin(&items, &first, e->sched.plugin, seen, &n_seen);
    ml_strbuf_puts(&items.b, "]");
    ml_json_raw(&j, "plugins", items.b.buf ? items.b.buf : "[]");
    ml_strbuf_free(&items.b);
    const char *t = ml_json_end(&j);
    free(e->prov);
    e->prov = t ? ml_strdup(t) : NULL;
    ml_json_free(&j);
    return e->prov ? ML_OK : ml_errorf("provenance: out of memory");
}

/* The text of member key of an object as JSON (owned), or NULL. */
static char *member_text(const ml_jv *v, const char *key) {
    const ml_jv *m = ml_jv_get(v, key);
    if (!m) return NULL;
    ml_strbuf b = {0};
    ml_jv_write(m, &b);
    return ml_strbuf_take(&b);
}

int ml_prov_resume(ml_experiment *e, const char *run_dir, const char *tag) {
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/summary.json", run_dir);
    char *text = NULL;
    size_t len = 0;
    ml_jv *v = NULL;
    if (ml_read_file(path, 1 << 24, &text, &len) == ML_OK) v = ml_jv_parse(text, len);
    free(text);
    ml_error_clear();
    /* what the run's start recorded; a summary too damaged to read leaves this process's */
    char *prov = v ? member_text(v, "provenance") : NULL;
    char *ov = v ? member_text(v, "overrides") : NULL;
    const ml_jv *g = v ? ml_jv_get(v, "group") : NULL;
    const ml_jv *st = v ? ml_jv_get(v, "started") : NULL;
    char *res = v ? member_text(v, "resumes") : NULL;
    if (prov) {
        free(e->prov);
        e->prov = prov;
    } else if (ml_prov_begin(e)) {
        free(ov);
        free(res);
        ml_jv_free(v);
        return ML_ERR;
    }
    if (ov) {
        free(e->overrides);
        e->overrides = ov;
    }
    if (g && g->type == ML_JV_STR) {
        free(e->group);
        e->group = ml_strdup(g->str);
    }
    char now[32];
    utc_now(now);
    if (st && st->type == ML_JV_STR) snprintf(e->started_at, sizeof e->started_at, "%.31s", st->str);
    else snprintf(e->started_at, sizeof e->started_at, "%s", now);
    ml_jv_free(v);
    /* this resume: when, from which checkpoint, by which command and build, where */
    ml_json r;
    ml_json_begin(&r);
    ml_json_str(&r, "at", now);
    ml_json_str(&r, "from", tag);
    ml_json_str(&r, "command", e->command);
    ml_json_str(&r, "commit", ml_build_commit());
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0) host[0] = 0;
    ml_json_str(&r, "host", host);
    const char *rt = ml_json_end(&r);
    ml_strbuf b = {0};
    if (res && res[0] == '[' && strcmp(res, "[]")) {
        ml_strbuf_put(&b, res, strlen(res) - 1);
        ml_strbuf_puts(&b, ",");
    } else
        ml_strbuf_puts(&b, "[");
    ml_strbuf_puts(&b, rt ? rt : "{}");
    ml_strbuf_puts(&b, "]");
    ml_json_free(&r);
    free(res);
    free(e->resumes);
    e->resumes = ml_strbuf_take(&b);
    return e->resumes && e->group ? ML_OK : ml_errorf("provenance: out of memory");
}

void ml_prov_summary(const ml_experiment *e, ml_json *j, int finished) {
    ml_json_int(j, "seed", ml_config_int(e->cfg, "train.seed", 0));
    ml_json_raw(j, "overrides", e->overrides ? e->overrides : "[]");
    ml_json_str(j, "group", e->group ? e->group : "");
    ml_json_str(j, "started", e->started_at[0] ? e->started_at : NULL);
    char now[32];
    if (finished) utc_now(now);
    ml_json_str(j, "ended", finished ? now : NULL);
    ml_json_raw(j, "provenance", e->prov ? e->prov : "{}");
    if (e->resumes) ml_json_raw(j, "resumes", e->resumes);
}

void ml_prov_free(ml_experiment *e) {
    free(e->command);
    free(e->overrides);
    free(e->group);
    free(e->prov);
    free(e->resumes);
    e->command = e->overrides = e->group = e->prov = e->resumes = NULL;
}
