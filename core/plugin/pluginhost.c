/* pluginhost.c — host function table, search path, plugin loading and validation, options. */
#include "plugin/pluginhost.h"

#include <cblas.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crash.h"

/* ------------------------------------------------------------------- host table */

static void *host_alloc(size_t nbytes) { return calloc(nbytes ? nbytes : 1, 1); }
static void host_free(void *p) { free(p); }

static void host_log(int level, const char *fmt, ...) {
    if (level < ml_log_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ml_log(level, "%s", buf);
}

static void host_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                       const float *a, int lda, const float *b, int ldb, float beta,
                       float *c, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
                c, ldc);
}

static const ml_host g_host = {
    .size = sizeof(ml_host),
    .abi_major = ML_ABI_MAJOR,
    .abi_minor = ML_ABI_MINOR,
    .alloc = host_alloc,
    .free = host_free,
    .log = host_log,
    .rng_u64 = ml_rng_u64,
    .rng_uniform = ml_rng_uniform,
    .rng_normal = ml_rng_normal,
    .sgemm = host_sgemm,
};

const ml_host *ml_host_table(void) { return &g_host; }

/* ------------------------------------------------------------------ search path */

static char **g_path;
static int g_npath;

void ml_plugins_set_path(const char *const *dirs, int n) {
    for (int i = 0; i < g_npath; i++) free(g_path[i]);
    free(g_path);
    g_path = NULL;
    g_npath = 0;
    for (int i = 0; i < n; i++) ml_plugins_add_path(dirs[i]);
}

void ml_plugins_add_path(const char *dir) {
    if (!dir || !*dir) return;
    char **p = realloc(g_path, (size_t)(g_npath + 1) * sizeof *p);
    if (!p) return;
    g_path = p;
    char *d = strdup(dir);
    if (!d) return;
    g_path[g_npath++] = d;
}

int ml_plugins_default_path(const char *const *config_dirs, int n) {
    ml_plugins_set_path(NULL, 0);
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 16);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            strcpy(slash + 1, "plugins");
            ml_plugins_add_path(exe);
        }
    }
    for (int i = 0; i < n; i++) ml_plugins_add_path(config_dirs[i]);
    const char *env = getenv("MOELAB_PLUGIN_PATH");
    if (env && *env) {
        char *copy = strdup(env);
        if (copy) {
            char *save = NULL;
            for (char *t = strtok_r(copy, ":", &save); t; t = strtok_r(NULL, ":", &save))
                ml_plugins_add_path(t);
            free(copy);
        }
    }
    return ML_OK;
}

const char *const *ml_plugins_path(int *n) {
    *n = g_npath;
    return (const char *const *)g_path;
}

/* --------------------------------------------------------------------- registry */

typedef struct loaded {
    void *handle;
    const ml_plugin *desc;
    char *file; /* as given or found */
    char *real; /* realpath, for recognising the same file twice */
} loaded;

static loaded *g_loaded;
static int g_nloaded;
static char **g_interned;
static int g_ninterned;

const char *ml_plugin_kind_name(int kind) {
    switch (kind) {
    case ML_PLUGIN_ROUTER: return "router";
    case ML_PLUGIN_LOSS: return "loss";
    case ML_PLUGIN_SCHEDULE: return "schedule";
    default: return "unknown";
    }
}

const char *ml_plugin_file(const ml_plugin *p) {
    for (int i = 0; i < g_nloaded; i++)
        if (g_loaded[i].desc == p) return g_loaded[i].file;
    return NULL;
}

/* Directories nothing new may be loaded from (the run directory, once it exists). */
static char **g_forbid;
static int g_nforbid;

void ml_plugins_unload_all(void) {
    for (int i = 0; i < g_nforbid; i++) free(g_forbid[i]);
    free(g_forbid);
    g_forbid = NULL;
    g_nforbid = 0;
    for (int i = 0; i < g_nloaded; i++) {
        if (g_loaded[i].handle) dlclose(g_loaded[i].handle);
        free(g_loaded[i].file);
        free(g_loaded[i].real);
    }
    free(g_loaded);
    g_loaded = NULL;
    g_nloaded = 0;
    for (int i = 0; i < g_ninterned; i++) free(g_interned[i]);
    free(g_interned);
    g_interned = NULL;
    g_ninterned = 0;
}

static const char *intern(const char *s, size_t n) {
    for (int i = 0; i < g_ninterned; i++)
        if (strlen(g_interned[i]) == n && memcmp(g_interned[i], s, n) == 0) return g_interned[i];
    char **p = realloc(g_interned, (size_t)(g_ninterned + 1) * sizeof *p);
    if (!p) return NULL;
    g_interned = p;
    char *c = malloc(n + 1);
    if (!c) return NULL;
    memcpy(c, s, n);
    c[n] = 0;
    g_interned[g_ninterned++] = c;
    return c;
}

/* --------------------------------------------------------------------- options */

static const char *opt_type_name(ml_opt_type t) {
    switch (t) {
    case ML_OPT_INT: return "int";
    case ML_OPT_FLOAT: return "float";
    case ML_OPT_BOOL: return "bool";
    case ML_OPT_ENUM: return "enum";
    default: return "?";
    }
}

static int has_range(const ml_option *o) { return o->min <= o->max; }

/* Finds word [s, s+n) in "a|b|c"; returns its index or -1. */
static int choice_index(const char *choices, const char *s, size_t n, const char **start) {
    int idx = 0;
    const char *c = choices;
    while (c) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && len > 0 && memcmp(c, s, n) == 0) {
            if (start) *start = c;
            return idx;
        }
        idx++;
        c = bar ? bar + 1 : NULL;
    }
    return -1;
}

static void trim(const char *text, const char **s, size_t *n) {
    const char *b = text, *e = text + strlen(text);
    while (b < e && (*b == ' ' || *b == '\t')) b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) e--;
    *s = b;
    *n = (size_t)(e - b);
}

static int range_error(const ml_option *o, const char *what, const char *text) {
    return ml_errorf("expected %s in [%.17g, %.17g], got \"%s\"", what, o->min, o->max, text);
}

int ml_option_parse(const ml_option *o, const char *text, ml_optval *out) {
    ml_optval v = {0, 0, NULL};
    if (!text) text = "";
    const char *s;
    size_t n;
    trim(text, &s, &n);
    char buf[128];
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end = NULL;
    switch (o->type) {
    case ML_OPT_INT: {
        errno = 0;
        long long iv = n ? strtoll(buf, &end, 10) : 0;
        if (!n || *end || errno) {
            /* an integral real such as 1e6 or 7000.0 */
            double d = n ? strtod(buf, &end) : 0;
            if (!n || *end || !isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
                return has_range(o) ? range_error(o, "an integer", text)
                                    : ml_errorf("expected an integer, got \"%s\"", text);
            iv = (long long)d;
        }
        if (has_range(o) && ((double)iv < o->min || (double)iv > o->max))
            return range_error(o, "an integer", text);
        v.i = iv;
        v.f = (double)iv;
        break;
    }
    case ML_OPT_FLOAT: {
        double d = n ? strtod(buf, &end) : NAN;
        if (!n || *end || !isfinite(d))
            return has_range(o) ? range_error(o, "a number", text)
                                : ml_errorf("expected a number, got \"%s\"", text);
        if (has_range(o) && (d < o->min || d > o->max)) return range_error(o, "a number", text);
        v.f = d;
        v.i = fabs(d) < 9.2e18 ? (int64_t)d : (d < 0 ? INT64_MIN : INT64_MAX);
        break;
    }
    case ML_OPT_BOOL: {
        static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
        int found = -1;
        for (int i = 0; i < 4 && found < 0; i++) {
            if (strcasecmp(buf, yes[i]) == 0) found = 1;
            else if (strcasecmp(buf, no[i]) == 0) found = 0;
        }
        if (found < 0) return ml_errorf("expected true or false, got \"%s\"", text);
        v.i = found;
        v.f = found;
        break;
    }
    case ML_OPT_ENUM: {
        if (!o->choices) return ml_errorf("option has no choices");
        const char *start = NULL;
        int idx = choice_index(o->choices, buf, n, &start);
        if (idx < 0) return ml_errorf("expected one of %s, got \"%s\"", o->choices, text);
        v.i = idx;
        v.f = idx;
        v.s = intern(start, n);
        if (!v.s) return ml_errorf("out of memory");
        break;
    }
    default:
        return ml_errorf("unknown option type %d", (int)o->type);
    }
    *out = v;
    return ML_OK;
}

int ml_option_defaults(const ml_plugin *p, ml_optval *out) {
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        if (ml_option_parse(o, o->def, &out[i]) != ML_OK)
            return ml_error_prefix("plugin %s: option %s: default", p->name, o->name);
    }
    return ML_OK;
}

int ml_option_find(const ml_plugin *p, const char *name) {
    for (int i = 0; i < p->num_options; i++)
        if (strcmp(p->options[i].name, name) == 0) return i;
    return -1;
}

/* Checks the option table of a descriptor (name, type, choices, default, range). */
static int check_options(const ml_plugin *d) {
    if (d->num_options < 0) return ml_errorf("num_options is %d", d->num_options);
    if (d->num_options > 0 && !d->options)
        return ml_errorf("num_options is %d but the option table is NULL", d->num_options);
    for (int i = 0; i < d->num_options; i++) {
        const ml_option *o = &d->options[i];
        if (!o->name || !*o->name) return ml_errorf("option %d has no name", i);
        for (int j = 0; j < i; j++)
            if (strcmp(d->options[j].name, o->name) == 0)
                return ml_errorf("option %s is declared twice", o->name);
        if (o->type < ML_OPT_INT || o->type > ML_OPT_ENUM)
            return ml_errorf("option %s has unknown type %d", o->name, (int)o->type);
        if (o->type == ML_OPT_ENUM && (!o->choices || !*o->choices))
            return ml_errorf("option %s is an enum without choices", o->name);
        if (!o->def) return ml_errorf("option %s has no default", o->name);
        ml_optval v;
        if (ml_option_parse(o, o->def, &v) != ML_OK)
            return ml_error_prefix("option %s: default \"%s\" is invalid", o->name, o->def);
    }
    return ML_OK;
}

/* ----------------------------------------------------------------- validation */

static int check_api(const ml_plugin *d) {
    switch (d->kind) {
    case ML_PLUGIN_ROUTER: {
        const ml_router_api *a = d->api;
        if (a->size < sizeof(ml_router_api))
            return ml_errorf("router api size %u is smaller than %zu", (unsigned)a->size,
                             sizeof(ml_router_api));
        if (!a->create || !a->destroy || !a->params || !a->states || !a->forward || !a->backward)
            return ml_errorf("router api lacks a required function (create, destroy, params, "
                             "states, forward and backward must be set)");
        return ML_OK;
    }
    case ML_PLUGIN_LOSS: {
        const ml_loss_api *a = d->api;
        if (a->size < sizeof(ml_loss_api))
            return ml_errorf("loss api size %u is smaller than %zu", (unsigned)a->size,
                             sizeof(ml_loss_api));
        if (!a->create || !a->destroy || !a->eval)
            return ml_errorf("loss api lacks a required function (create, destroy, eval)");
        return ML_OK;
    }
    case ML_PLUGIN_SCHEDULE: {
        const ml_schedule_api *a = d->api;
        if (a->size < sizeof(ml_schedule_api))
            return ml_errorf("schedule api size %u is smaller than %zu", (unsigned)a->size,
                             sizeof(ml_schedule_api));
        if (!a->create || !a->destroy || !a->initial_experts || !a->decide)
            return ml_errorf("schedule api lacks a required function (create, destroy, "
                             "initial_experts, decide)");
        return ML_OK;
    }
    default:
        return ml_errorf("unknown plugin kind %d", (int)d->kind);
    }
}

/* Validates a descriptor; the message does not yet name the file. */
static int check_descriptor(const ml_plugin *d, int kind) {
    /* the version fields come first so that they are readable whatever the size */
    if (d->abi_major != ML_ABI_MAJOR)
        return ml_errorf("plugin abi %u.%u, host abi %d.%d: major versions differ",
                         (unsigned)d->abi_major, (unsigned)d->abi_minor, ML_ABI_MAJOR,
                         ML_ABI_MINOR);
    if (d->abi_minor > ML_ABI_MINOR)
        return ml_errorf("plugin abi %u.%u, host abi %d.%d: plugin minor version is newer than "
                         "the host's (hint: update moelab, or rebuild the plugin against this "
                         "moelab's plugin.h)",
                         (unsigned)d->abi_major, (unsigned)d->abi_minor, ML_ABI_MAJOR,
                         ML_ABI_MINOR);
    if (d->size < sizeof(ml_plugin))
        return ml_errorf("descriptor size %u is smaller than %zu", (unsigned)d->size,
                         sizeof(ml_plugin));
    if (d->kind < ML_PLUGIN_ROUTER || d->kind > ML_PLUGIN_SCHEDULE)
        return ml_errorf("unknown plugin kind %d", (int)d->kind);
    if (kind && (int)d->kind != kind)
        return ml_errorf("is a %s plugin, expected a %s", ml_plugin_kind_name((int)d->kind),
                         ml_plugin_kind_name(kind));
    if (!d->name || !*d->name) return ml_errorf("descriptor has no name");
    if (!d->api) return ml_errorf("descriptor has no api table");
    if (check_api(d) != ML_OK) return ML_ERR;
    if (check_options(d) != ML_OK) return ML_ERR;
    return ML_OK;
}

static int is_path(const char *s) {
    size_t n = strlen(s);
    return strchr(s, '/') != NULL || (n > 3 && strcmp(s + n - 3, ".so") == 0);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static const char *file_type(mode_t m) {
    if (S_ISDIR(m)) return "directory";
    if (S_ISCHR(m)) return "character device";
    if (S_ISBLK(m)) return "block device";
    if (S_ISFIFO(m)) return "FIFO";
    if (S_ISSOCK(m)) return "socket";
    return "special file";
}

/*
 * Says what a file that cannot be a plugin is, before dlopen sees it: missing, a directory,
 * a device or FIFO (dlopen would block on a FIFO or read /dev/zero forever), empty, not ELF,
 * or an ELF file that is not a shared object. Never echoes the file's content.
 */
static int check_plugin_file(const char *file) {
    struct stat st;
    if (stat(file, &st) != 0)
        return errno == ENOENT ? ml_errorf("plugin %s: file not found", file)
                               : ml_errorf("plugin %s: %s", file, strerror(errno));
    if (S_ISDIR(st.st_mode)) return ml_errorf("plugin %s: is a directory, expected a shared object (.so)", file);
    if (!S_ISREG(st.st_mode))
        return ml_errorf("plugin %s: is not a regular file (%s)", file, file_type(st.st_mode));
    /* O_NONBLOCK: if the file was swapped for a FIFO since the stat, open must not wait */
    int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return ml_errorf("plugin %s: cannot open: %s", file, strerror(errno));
    unsigned char h[20];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) n = read(fd, h, sizeof h);
    int err = errno;
    close(fd);
    if (n < 0) return ml_errorf("plugin %s: cannot read: %s", file, strerror(err));
    if (n == 0) return ml_errorf("plugin %s: is not a shared object (empty file)", file);
    if (n < 4 || memcmp(h, "\x7f" "ELF", 4) != 0)
        return ml_errorf("plugin %s: is not a shared object (not an ELF file)", file);
    if (n == (ssize_t)sizeof h) {
        int type = h[5] == 2 ? h[16] << 8 | h[17] : h[17] << 8 | h[16]; /* EI_DATA: 2 = big endian */
        if (type == 1) return ml_errorf("plugin %s: is not a shared object (an ELF relocatable object; hint: link with -shared)", file);
        if (type == 2) return ml_errorf("plugin %s: is not a shared object (an ELF executable)", file);
        if (type == 4) return ml_errorf("plugin %s: is not a shared object (an ELF core dump)", file);
    }
    return ML_OK;
}


void ml_plugins_forbid_dir(const char *dir) {
    char real[PATH_MAX];
    if (!dir || !realpath(dir, real)) return;
    char **f = realloc(g_forbid, (size_t)(g_nforbid + 1) * sizeof *f);
    if (!f) return;
    g_forbid = f;
    if ((g_forbid[g_nforbid] = strdup(real))) g_nforbid++;
}

static const char *forbidden_dir(const char *real) {
    for (int i = 0; i < g_nforbid; i++) {
        size_t n = strlen(g_forbid[i]);
        if (strncmp(real, g_forbid[i], n) == 0 && (real[n] == '/' || real[n] == 0)) return g_forbid[i];
    }
    return NULL;
}

/* Loads one file; kind 0 accepts any. */
static const ml_plugin *load_file(int kind, const char *file) {
    char real[PATH_MAX];
    if (check_plugin_file(file) != ML_OK) return NULL;
    if (!realpath(file, real)) {
        ml_errorf("plugin %s: %s", file, strerror(errno));
        return NULL;
    }
    const char *fd = forbidden_dir(real);
    if (fd) {
        ml_errorf("plugin %s: refused: it lies in the run directory %s, which the script can write to "
                  "(plugins load only from the plugin search path outside the run directory)", file, fd);
        return NULL;
    }
    for (int i = 0; i < g_nloaded; i++) {
        if (strcmp(g_loaded[i].real, real) != 0) continue;
        if (kind && (int)g_loaded[i].desc->kind != kind) {
            ml_errorf("plugin %s: is a %s plugin, expected a %s", file,
                      ml_plugin_kind_name((int)g_loaded[i].desc->kind), ml_plugin_kind_name(kind));
            return NULL;
        }
        return g_loaded[i].desc;
    }
    dlerror();
    ml_crash_enter(file, "load"); /* constructors run inside dlopen */
    void *h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    ml_crash_leave();
    if (!h) {
        const char *e = dlerror();
        ml_errorf("plugin %s: dlopen failed: %s", file, e ? e : "unknown error");
        return NULL;
    }
    const ml_plugin *d = dlsym(h, ML_PLUGIN_SYMBOL);
    if (!d) {
        ml_errorf("plugin %s: missing symbol `%s` (hint: define the descriptor with "
                  "ML_PLUGIN_EXPORT, which gives it default visibility)",
                  file, ML_PLUGIN_SYMBOL);
        dlclose(h);
        return NULL;
    }
    if (check_descriptor(d, kind) != ML_OK) {
        ml_error_prefix("plugin %s", file);
        dlclose(h);
        return NULL;
    }
    loaded *l = realloc(g_loaded, (size_t)(g_nloaded + 1) * sizeof *l);
    if (!l) {
        dlclose(h);
        ml_errorf("plugin %s: out of memory", file);
        return NULL;
    }
    g_loaded = l;
    loaded *e = &g_loaded[g_nloaded];
    e->handle = h;
    e->desc = d;
    e->file = strdup(file);
    e->real = strdup(real);
    if (!e->file || !e->real) {
        free(e->file);
        free(e->real);
        dlclose(h);
        ml_errorf("plugin %s: out of memory", file);
        return NULL;
    }
    g_nloaded++;
    return d;
}

const ml_plugin *ml_plugin_load(int kind, const char *name_or_path) {
    const char *what = kind ? ml_plugin_kind_name(kind) : "plugin";
    if (!name_or_path || !*name_or_path) {
        ml_errorf("%s plugin: empty name", what);
        return NULL;
    }
    char file[PATH_MAX];
    if (is_path(name_or_path)) {
        /* a bare "x.so" would make dlopen search the system library path: anchor it */
        snprintf(file, sizeof file, "%s%s", strchr(name_or_path, '/') ? "" : "./",
                 name_or_path);
        return load_file(kind, file);
    }
    for (int i = 0; i < g_npath; i++) {
        snprintf(file, sizeof file, "%s/%s.so", g_path[i], name_or_path);
        struct stat st;
        /* the first entry that exists is the plugin: a directory or device there is reported */
        if (stat(file, &st) == 0) return load_file(kind, file);
    }
    char dirs[768];
    size_t used = 0;
    dirs[0] = 0;
    for (int i = 0; i < g_npath && used < sizeof dirs; i++) {
        int w = snprintf(dirs + used, sizeof dirs - used, "%s%s", i ? ", " : "", g_path[i]);
        if (w > 0) used += (size_t)w;
    }
    ml_errorf("%s plugin '%s' not found: no %s.so in %s (hint: give a path, or add the "
              "directory to plugin_path or MOELAB_PLUGIN_PATH)",
              what, name_or_path, name_or_path, g_npath ? dirs : "(empty search path)");
    return NULL;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int ml_plugins_scan(void (*on_plugin)(const ml_plugin *p, const char *file, void *ctx),
                    void (*on_error)(const char *file, const char *reason, void *ctx),
                    void *ctx) {
    int count = 0;
    char **seen = NULL;
    int nseen = 0;
    for (int i = 0; i < g_npath; i++) {
        DIR *dir = opendir(g_path[i]);
        if (!dir) {
            if (errno != ENOENT && on_error) on_error(g_path[i], strerror(errno), ctx);
            continue;
        }
        char **names = NULL;
        int nn = 0;
        struct dirent *de;
        while ((de = readdir(dir))) {
            size_t len = strlen(de->d_name);
            if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0) continue;
            char **p = realloc(names, (size_t)(nn + 1) * sizeof *p);
            if (!p) break;
            names = p;
            names[nn] = strdup(de->d_name);
            if (names[nn]) nn++;
        }
        closedir(dir);
        qsort(names, (size_t)nn, sizeof *names, cmp_str);
        for (int j = 0; j < nn; j++) {
            char file[PATH_MAX], real[PATH_MAX];
            snprintf(file, sizeof file, "%s/%s", g_path[i], names[j]);
            free(names[j]);
            if (!file_exists(file)) continue;
            int dup = 0;
            if (realpath(file, real)) {
                for (int k = 0; k < nseen && !dup; k++) dup = strcmp(seen[k], real) == 0;
                if (dup) continue;
                char **p = realloc(seen, (size_t)(nseen + 1) * sizeof *p);
                if (p) {
                    seen = p;
                    seen[nseen] = strdup(real);
                    if (seen[nseen]) nseen++;
                }
            }
            const ml_plugin *d = load_file(0, file);
            if (d) {
                count++;
                if (on_plugin) on_plugin(d, file, ctx);
            } else if (on_error) {
                /* the message starts "plugin <file>: "; hand over the reason alone */
                const char *msg = ml_error();
                size_t pre = strlen("plugin ") + strlen(file) + 2;
                on_error(file, strlen(msg) > pre ? msg + pre : msg, ctx);
            }
        }
        free(names);
    }
    for (int k = 0; k < nseen; k++) free(seen[k]);
    free(seen);
    return count;
}

/* ---------------------------------------------------------------------- listing */

void ml_plugin_print(const ml_plugin *p, const char *file, FILE *out) {
    fprintf(out, "%s  (%s, version %s, abi %u.%u)%s%s\n", p->name,
            ml_plugin_kind_name((int)p->kind), p->version ? p->version : "?",
            (unsigned)p->abi_major, (unsigned)p->abi_minor, file ? "  " : "", file ? file : "");
    if (p->doc && *p->doc) fprintf(out, "    %s\n", p->doc);
    if (p->num_options == 0) {
        fprintf(out, "    (no options)\n");
        return;
    }
    int w = 4;
    for (int i = 0; i < p->num_options; i++) {
        int len = (int)strlen(p->options[i].name);
        if (len > w) w = len;
    }
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        char range[160] = "";
        if (o->type == ML_OPT_ENUM) snprintf(range, sizeof range, "%s", o->choices);
        else if (o->type != ML_OPT_BOOL && has_range(o))
            snprintf(range, sizeof range, "[%g, %g]", o->min, o->max);
        fprintf(out, "    %-*s  %-5s  default %-10s  %-22s  %s\n", w, o->name,
                opt_type_name(o->type), o->def ? o->def : "?", range, o->doc ? o->doc : "");
    }
}

/* ---------------------------------------------------------- tensor declarations */

int ml_tensor_decl_rows(const ml_tensor_decl *d, int num_experts) {
    return d->per_expert ? num_experts : d->rows;
}

void ml_tensor_decl_init(const ml_tensor_decl *d, float *x, int row0, int row1, ml_rng *rng) {
    size_t cols = (size_t)d->cols;
    float *p = x + (size_t)row0 * cols;
    size_t n = (size_t)(row1 - row0) * cols;
    switch (d->init) {
    case ML_INIT_ZEROS:
        memset(p, 0, n * sizeof *p);
        break;
    case ML_INIT_CONST:
        for (size_t i = 0; i < n; i++) p[i] = d->init_value;
        break;
    case ML_INIT_NORMAL:
        for (size_t i = 0; i < n; i++) p[i] = (float)(d->init_value * ml_rng_normal(rng));
        break;
    case ML_INIT_UNIFORM_FANIN: {
        double a = 1.0 / sqrt(d->fan_in > 0 ? d->fan_in : 1);
        for (size_t i = 0; i < n; i++) p[i] = (float)(a * (2 * ml_rng_uniform(rng) - 1));
        break;
    }
    }
}

int ml_tensor_decls_check(const ml_tensor_decl *d, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (!d[i].name || !*d[i].name) return ml_errorf("%s %d has no name", what, i);
        for (int j = 0; j < i; j++)
            if (strcmp(d[j].name, d[i].name) == 0)
                return ml_errorf("%s %s is declared twice", what, d[i].name);
        if (d[i].cols < 1 || (!d[i].per_expert && d[i].rows < 1))
            return ml_errorf("%s %s has rows %d, cols %d; both must be >= 1", what, d[i].name,
                             d[i].per_expert ? 1 : d[i].rows, d[i].cols);
        if ((int)d[i].init < ML_INIT_ZEROS || (int)d[i].init > ML_INIT_UNIFORM_FANIN)
            return ml_errorf("%s %s has unknown init %d", what, d[i].name, (int)d[i].init);
        if (d[i].init == ML_INIT_UNIFORM_FANIN && d[i].fan_in < 1)
            return ml_errorf("%s %s: UNIFORM_FANIN needs fan_in >= 1, got %d", what, d[i].name,
                             d[i].fan_in);
    }
    return ML_OK;
}
