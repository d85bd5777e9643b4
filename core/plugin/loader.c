/* loader.c — the host function table, the search path, loading plugins and validating and
   normalising their descriptors (loader.h). The only dlopen user of moelab. */
#include "plugin/loader.h"

#include <cblas.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crash.h"
#include "plugin/options.h"

/* ------------------------------------------------------------------- host table */

/* Live plugin allocations, for the tests' leak checks (atomic: instances may run on
   different threads, plugin.h "Threads"). */
static long g_live_allocs;

static void *host_alloc(size_t nbytes) {
    void *p = calloc(nbytes ? nbytes : 1, 1);
    if (p) __atomic_add_fetch(&g_live_allocs, 1, __ATOMIC_RELAXED);
    return p;
}

static void host_free(void *p) {
    if (!p) return;
    __atomic_sub_fetch(&g_live_allocs, 1, __ATOMIC_RELAXED);
    free(p);
}

long ml_host_live_allocs(void) { return __atomic_load_n(&g_live_allocs, __ATOMIC_RELAXED); }

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

/*
 * One loaded plugin. The host never reads the plugin's own descriptor, option table or api
 * table after loading: it reads `desc`, a copy laid out as this host's header defines it,
 * whose options and api point at host-sized copies. Fields the plugin's (older) structs do
 * not cover are zero there: NULL functions, no flags (plugin.h, "Versioning").
 */
typedef struct loaded {
    void *handle;
    const ml_plugin *orig;  /* the plugin's descriptor, as it exported it */
    ml_plugin desc;         /* the host's view */
    ml_option *options;     /* (num_options) host-sized */
    union {
        ml_router_api router;
        ml_loss_api loss;
        ml_schedule_api schedule;
    } api;
    uint32_t optval_size;   /* the plugin's sizeof(ml_optval) */
    uint32_t decl_size;     /* the plugin's sizeof(ml_tensor_decl) */
    char *file;             /* as given or found */
    char *real;             /* realpath, for recognising the same file twice */
} loaded;

static loaded **g_loaded; /* entries are never moved: &desc is handed out */
static int g_nloaded;

const char *ml_plugin_kind_name(int kind) {
    switch (kind) {
    case ML_PLUGIN_ROUTER: return "router";
    case ML_PLUGIN_LOSS: return "loss";
    case ML_PLUGIN_SCHEDULE: return "schedule";
    default: return "unknown";
    }
}

static const loaded *entry_of(const ml_plugin *p) {
    for (int i = 0; i < g_nloaded; i++)
        if (&g_loaded[i]->desc == p || g_loaded[i]->orig == p) return g_loaded[i];
    return NULL;
}

const char *ml_plugin_file(const ml_plugin *p) {
    const loaded *l = entry_of(p);
    return l ? l->file : NULL;
}

size_t ml_plugin_optval_size(const ml_plugin *p) {
    const loaded *l = entry_of(p);
    return l ? l->optval_size : sizeof(ml_optval);
}

size_t ml_plugin_decl_size(const ml_plugin *p) {
    const loaded *l = entry_of(p);
    return l ? l->decl_size : sizeof(ml_tensor_decl);
}

/* Directories nothing new may be loaded from (the run directory, once it exists). */
static char **g_forbid;
static int g_nforbid;

static void entry_free(loaded *e) {
    if (!e) return;
    if (e->handle) dlclose(e->handle);
    free(e->options);
    free(e->file);
    free(e->real);
    free(e);
}

void ml_plugins_unload_all(void) {
    for (int i = 0; i < g_nforbid; i++) free(g_forbid[i]);
    free(g_forbid);
    g_forbid = NULL;
    g_nforbid = 0;
    for (int i = 0; i < g_nloaded; i++) entry_free(g_loaded[i]);
    free(g_loaded);
    g_loaded = NULL;
    g_nloaded = 0;
    ml_options_release();
}

/* ------------------------------------------------------------- ABI 1.0 sizes */

/* sizeof a struct as it was before `member` was added: its offset rounded up to the
   struct's alignment (the padding the compiler put at the end then). */
#define SIZE_BEFORE(type, member) ((offsetof(type, member) + _Alignof(type) - 1) & ~(_Alignof(type) - 1))

/*
 * The element and struct sizes of each minor version, for plugins whose descriptor does not
 * say (ABI 1.0 had no option_size, optval_size or decl_size). tests/check_abi.c checks the
 * 1.0 column against the frozen 1.0 header. A struct's size at a minor is the offset of the
 * first field a later minor added.
 */
static size_t option_size_at(int minor) { return minor < 1 ? SIZE_BEFORE(ml_option, flags) : sizeof(ml_option); }
static size_t optval_size_at(int minor) { (void)minor; return sizeof(ml_optval); }
static size_t decl_size_at(int minor) { (void)minor; return sizeof(ml_tensor_decl); }

size_t ml_abi_size_1_0(const char *what) {
    if (!strcmp(what, "ml_plugin")) return SIZE_BEFORE(ml_plugin, option_size);
    if (!strcmp(what, "ml_option")) return option_size_at(0);
    if (!strcmp(what, "ml_optval")) return optval_size_at(0);
    if (!strcmp(what, "ml_tensor_decl")) return decl_size_at(0);
    if (!strcmp(what, "ml_router_api")) return sizeof(ml_router_api);
    if (!strcmp(what, "ml_loss_api")) return SIZE_BEFORE(ml_loss_api, states);
    if (!strcmp(what, "ml_schedule_api")) return SIZE_BEFORE(ml_schedule_api, states);
    if (!strcmp(what, "ml_host")) return sizeof(ml_host);
    if (!strcmp(what, "ml_route")) return SIZE_BEFORE(ml_route, layer);
    if (!strcmp(what, "ml_router_event")) return SIZE_BEFORE(ml_router_event, opt);
    if (!strcmp(what, "ml_routing_record")) return SIZE_BEFORE(ml_routing_record, layer);
    if (!strcmp(what, "ml_loss_init")) return SIZE_BEFORE(ml_loss_init, layer);
    if (!strcmp(what, "ml_progress")) return SIZE_BEFORE(ml_progress, health);
    return 0;
}

size_t ml_abi_size_1_1(const char *what) {
    if (!strcmp(what, "ml_schedule_api")) return SIZE_BEFORE(ml_schedule_api, states);
    if (!strcmp(what, "ml_router_event")) return SIZE_BEFORE(ml_router_event, kept);
    if (!strcmp(what, "ml_plugin")) return sizeof(ml_plugin);
    if (!strcmp(what, "ml_option")) return sizeof(ml_option);
    if (!strcmp(what, "ml_optval")) return sizeof(ml_optval);
    if (!strcmp(what, "ml_tensor_decl")) return sizeof(ml_tensor_decl);
    if (!strcmp(what, "ml_router_api")) return sizeof(ml_router_api);
    if (!strcmp(what, "ml_loss_api")) return sizeof(ml_loss_api);
    if (!strcmp(what, "ml_host")) return sizeof(ml_host);
    if (!strcmp(what, "ml_route")) return sizeof(ml_route);
    if (!strcmp(what, "ml_routing_record")) return sizeof(ml_routing_record);
    if (!strcmp(what, "ml_loss_init")) return sizeof(ml_loss_init);
    if (!strcmp(what, "ml_progress")) return sizeof(ml_progress);
    if (!strcmp(what, "ml_layer_health")) return sizeof(ml_layer_health);
    if (!strcmp(what, "ml_loss_eval")) return sizeof(ml_loss_eval);
    return 0;
}

/* The end of a struct member: a struct of at least this size holds the member. */
#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/* One of the descriptor's element sizes: the field when the descriptor holds it and it is
   set, else the size at the plugin's minor. Smaller than 1.0's is an error. */
static int element_size(const ml_plugin *d, size_t end, uint32_t field, size_t at_minor, size_t v1_0,
                        const char *what, uint32_t *out) {
    size_t sz = d->size >= end && field ? field : at_minor;
    if (sz < v1_0)
        return ml_errorf("descriptor says sizeof(%s) is %zu, smaller than ABI 1.0's %zu", what, sz, v1_0);
    if (sz > (1u << 16)) return ml_errorf("descriptor says sizeof(%s) is %zu, which no moelab header gives", what, sz);
    *out = (uint32_t)sz;
    return ML_OK;
}

static const char *opt_type_name(int t) {
    switch (t) {
    case ML_OPT_INT: return "int";
    case ML_OPT_FLOAT: return "float";
    case ML_OPT_BOOL: return "bool";
    case ML_OPT_ENUM: return "enum";
    default: return "?";
    }
}

/* Checks the (host-sized) option table: name, type, choices, default, range. */
static int check_options(const ml_option *opt, int n) {
    if (n < 0 || n > ML_MAX_OPTIONS) return ml_errorf("num_options is %d, expected 0..%d", n, ML_MAX_OPTIONS);
    for (int i = 0; i < n; i++) {
        const ml_option *o = &opt[i];
        if (!o->name || !*o->name) return ml_errorf("option %d has no name", i);
        for (int j = 0; j < i; j++)
            if (strcmp(opt[j].name, o->name) == 0) return ml_errorf("option %s is declared twice", o->name);
        if (o->type < ML_OPT_INT || o->type > ML_OPT_ENUM)
            return ml_errorf("option %s has unknown type %d", o->name, (int)o->type);
        if (o->type == ML_OPT_ENUM && (!o->choices || !*o->choices))
            return ml_errorf("option %s is an enum without choices", o->name);
        if (!o->def) return ml_errorf("option %s has no default", o->name);
        if (o->flags & ~ML_OPTF_RUNTIME) return ml_errorf("option %s has unknown flags 0x%x", o->name, (unsigned)o->flags);
        ml_optval v;
        if (ml_option_parse(o, o->def, 0, &v) != ML_OK)
            return ml_error_prefix("option %s: default \"%s\" is invalid", o->name, o->def);
    }
    return ML_OK;
}

/* ----------------------------------------------------------------- validation */

/* The api table's size must cover every required function; later fields default to NULL. */
static int check_api_size(const char *what, uint32_t size, size_t need, const char *fields) {
    if (size < need)
        return ml_errorf("%s api size %u is smaller than %zu, the end of its required functions (%s)",
                         what, (unsigned)size, need, fields);
    return ML_OK;
}

/* Copies the plugin's api table into e->api (host layout, zero beyond the plugin's size)
   and checks the required functions. */
static int normalise_api(loaded *e, const ml_plugin *d) {
    const uint32_t size = *(const uint32_t *)d->api;
    size_t host = d->kind == ML_PLUGIN_ROUTER ? sizeof(ml_router_api)
                : d->kind == ML_PLUGIN_LOSS ? sizeof(ml_loss_api) : sizeof(ml_schedule_api);
    memset(&e->api, 0, sizeof e->api);
    memcpy(&e->api, d->api, size < host ? size : host);
    switch (d->kind) {
    case ML_PLUGIN_ROUTER: {
        ml_router_api *a = &e->api.router;
        if (check_api_size("router", size, END_OF(ml_router_api, backward),
                           "create, destroy, params, states, forward, backward"))
            return ML_ERR;
        a->size = sizeof *a;
        if (!a->create || !a->destroy || !a->params || !a->states || !a->forward || !a->backward)
            return ml_errorf("router api lacks a required function (create, destroy, params, "
                             "states, forward and backward must be set)");
        return ML_OK;
    }
    case ML_PLUGIN_LOSS: {
        ml_loss_api *a = &e->api.loss;
        if (check_api_size("loss", size, END_OF(ml_loss_api, eval), "create, destroy, eval")) return ML_ERR;
        a->size = sizeof *a;
        if (!a->create || !a->destroy || (!a->eval && !a->eval_v2))
            return ml_errorf("loss api lacks a required function (create, destroy, and eval or eval_v2)");
        if (!a->eval && d->abi_minor < 1)
            return ml_errorf("loss api has no eval (an ABI 1.0 loss must define eval)");
        return ML_OK;
    }
    case ML_PLUGIN_SCHEDULE: {
        ml_schedule_api *a = &e->api.schedule;
        if (check_api_size("schedule", size, END_OF(ml_schedule_api, decide),
                           "create, destroy, initial_experts, decide"))
            return ML_ERR;
        a->size = sizeof *a;
        if (!a->create || !a->destroy || !a->initial_experts || (!a->decide && !a->decide_v2))
            return ml_errorf("schedule api lacks a required function (create, destroy, "
                             "initial_experts, and decide or decide_v2)");
        if (!a->decide && d->abi_minor < 2)
            return ml_errorf("schedule api has no decide (a schedule of ABI 1.%d must define decide)", d->abi_minor);
        if (d->abi_minor < 2) a->states = NULL, a->observe = NULL, a->decide_v2 = NULL; /* not theirs to set */
        return ML_OK;
    }
    default:
        return ml_errorf("unknown plugin kind %d", (int)d->kind);
    }
}

/* Validates a descriptor and fills e with the host's view of it; the message does not yet
   name the file. */
static int normalise(loaded *e, const ml_plugin *d, int kind) {
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
    const size_t need = END_OF(ml_plugin, api);
    if (d->size < need)
        return ml_errorf("descriptor size %u is smaller than %zu, ABI 1.0's descriptor", (unsigned)d->size, need);
    memset(&e->desc, 0, sizeof e->desc);
    memcpy(&e->desc, d, d->size < sizeof(ml_plugin) ? d->size : sizeof(ml_plugin));
    ml_plugin *h = &e->desc;
    if (h->kind < ML_PLUGIN_ROUTER || h->kind > ML_PLUGIN_SCHEDULE)
        return ml_errorf("unknown plugin kind %d", (int)h->kind);
    if (kind && (int)h->kind != kind)
        return ml_errorf("is a %s plugin, expected a %s", ml_plugin_kind_name((int)h->kind),
                         ml_plugin_kind_name(kind));
    if (!h->name || !*h->name) return ml_errorf("descriptor has no name");
    if (!h->api) return ml_errorf("descriptor has no api table");
    int minor = d->abi_minor;
    uint32_t osz = 0;
    if (element_size(d, END_OF(ml_plugin, option_size), d->size >= END_OF(ml_plugin, option_size) ? d->option_size : 0,
                     option_size_at(minor), option_size_at(0), "ml_option", &osz) ||
        element_size(d, END_OF(ml_plugin, optval_size), d->size >= END_OF(ml_plugin, optval_size) ? d->optval_size : 0,
                     optval_size_at(minor), optval_size_at(0), "ml_optval", &e->optval_size) ||
        element_size(d, END_OF(ml_plugin, decl_size), d->size >= END_OF(ml_plugin, decl_size) ? d->decl_size : 0,
                     decl_size_at(minor), decl_size_at(0), "ml_tensor_decl", &e->decl_size))
        return ML_ERR;
    if (h->num_options < 0 || h->num_options > ML_MAX_OPTIONS)
        return ml_errorf("num_options is %d, expected 0..%d", h->num_options, ML_MAX_OPTIONS);
    if (h->num_options > 0 && !h->options)
        return ml_errorf("num_options is %d but the option table is NULL", h->num_options);
    e->options = calloc((size_t)(h->num_options ? h->num_options : 1), sizeof(ml_option));
    if (!e->options) return ml_errorf("out of memory");
    for (int i = 0; i < h->num_options; i++)
        memcpy(&e->options[i], (const char *)d->options + (size_t)i * osz, osz < sizeof(ml_option) ? osz : sizeof(ml_option));
    h->options = e->options;
    h->size = sizeof(ml_plugin);
    h->option_size = sizeof(ml_option);
    h->optval_size = sizeof(ml_optval);
    h->decl_size = sizeof(ml_tensor_decl);
    if (normalise_api(e, d)) return ML_ERR;
    h->api = &e->api;
    return check_options(e->options, h->num_options);
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
        if (strcmp(g_loaded[i]->real, real) != 0) continue;
        if (kind && (int)g_loaded[i]->desc.kind != kind) {
            ml_errorf("plugin %s: is a %s plugin, expected a %s", file,
                      ml_plugin_kind_name((int)g_loaded[i]->desc.kind), ml_plugin_kind_name(kind));
            return NULL;
        }
        return &g_loaded[i]->desc;
    }
    loaded **grown = realloc(g_loaded, (size_t)(g_nloaded + 1) * sizeof *grown);
    loaded *e = calloc(1, sizeof *e);
    if (grown) g_loaded = grown;
    if (!grown || !e || !(e->file = strdup(file)) || !(e->real = strdup(real))) {
        entry_free(e);
        ml_errorf("plugin %s: out of memory", file);
        return NULL;
    }
    dlerror();
    ml_crash_enter(file, "load"); /* constructors run inside dlopen */
    e->handle = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    ml_crash_leave();
    if (!e->handle) {
        const char *err = dlerror();
        ml_errorf("plugin %s: dlopen failed: %s", file, err ? err : "unknown error");
        entry_free(e);
        return NULL;
    }
    const ml_plugin *d = dlsym(e->handle, ML_PLUGIN_SYMBOL);
    if (!d) {
        ml_errorf("plugin %s: missing symbol `%s` (hint: define the descriptor with "
                  "ML_PLUGIN_EXPORT, which gives it default visibility)",
                  file, ML_PLUGIN_SYMBOL);
        entry_free(e);
        return NULL;
    }
    e->orig = d;
    if (normalise(e, d, kind) != ML_OK) {
        ml_error_prefix("plugin %s", file);
        entry_free(e);
        return NULL;
    }
    g_loaded[g_nloaded++] = e;
    return &e->desc;
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
        else if (o->type != ML_OPT_BOOL && o->min <= o->max)
            snprintf(range, sizeof range, "[%g, %g]", o->min, o->max);
        fprintf(out, "    %-*s  %-5s  default %-10s  %-22s  %s%s\n", w, o->name,
                opt_type_name(o->type), o->def ? o->def : "?", range, o->doc ? o->doc : "",
                o->flags & ML_OPTF_RUNTIME ? " (settable at run time)" : "");
    }
}

