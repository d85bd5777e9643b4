/* check_crash.c — plugins that misbehave: fatal signals reported in one line naming the
 * plugin call, summary.json "crashed"/"running" and results kept; every dispatch of a
 * router validated; unterminated error buffers; plugin files that are not shared objects;
 * stale temp files, and reopening a run directory (resume). */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/crash.h"
#include "base/json.h"
#include "model/moe.h"
#include "plugin/loader.h"
#include "plugin/options.h"
#include "io/results.h"
#include "io/safetensors.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

static char err_out[1 << 16];

/*
 * Runs "<build>/moelab <args>" (args split at spaces; the test paths have none) with an
 * optional NAME=VALUE in its environment, stdout to /dev/null, stderr into err_out, no core
 * dumps. Returns the wait status; *pid receives the child's pid.
 */
static int run_moelab(const char *env, pid_t *pid, const char *fmt, ...) {
    char line[4096], *argv[64];
    int argc = 0;
    static char exe[512];
    snprintf(exe, sizeof exe, "%s/moelab", tu_build());
    argv[argc++] = exe;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *save = NULL, *t = strtok_r(line, " ", &save); t && argc < 63; t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    argv[argc] = NULL;
    char errf[] = "/tmp/moelab-test-stderr-XXXXXX";
    int efd = mkstemp(errf);
    ck_assert_int_ge(efd, 0);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(efd, 2);
        if (env) putenv((char *)env);
        execv(exe, argv);
        _exit(127);
    }
    int st = 0;
    waitpid(child, &st, 0);
    if (pid) *pid = child;
    lseek(efd, 0, SEEK_SET);
    ssize_t n = read(efd, err_out, sizeof err_out - 1);
    err_out[n > 0 ? n : 0] = 0;
    close(efd);
    unlink(errf);
    return st;
}

/* How many lines of err_out equal line exactly. */
static int count_line(const char *line) {
    int k = 0;
    size_t n = strlen(line);
    for (const char *p = err_out; (p = strstr(p, line)); p += n)
        if ((p == err_out || p[-1] == '\n') && (p[n] == '\n' || p[n] == 0)) k++;
    return k;
}

/* The only line of err_out that mentions "crashed" is `line`, and it is the last one. */
static void assert_one_crash_line(const char *line) {
    ck_assert_msg(count_line(line) == 1, "expected the line\n%s\nexactly once in:\n%s", line, err_out);
    int k = 0;
    for (const char *p = err_out; (p = strstr(p, "crashed")); p++) k++;
    ck_assert_msg(k == 1, "'crashed' appears %d times in:\n%s", k, err_out);
    size_t n = strlen(line), len = strlen(err_out);
    ck_assert_msg(len > n && !strncmp(err_out + len - n - 1, line, n) && err_out[len - 1] == '\n',
                  "the crash line is not the last line:\n%s", err_out);
}

static void assert_signal(int st, int sig) {
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == sig, "expected death by signal %d, got status 0x%x:\n%s", sig,
                  st, err_out);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* summary.json of a run, parsed (owned by the caller). */
static ml_jv *summary(const char *run_dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/summary.json", run_dir);
    size_t n;
    const char *text = slurp(path, &n);
    ck_assert_msg(text != NULL, "no %s", path);
    ml_jv *v = ml_jv_parse(text, n);
    ck_assert_msg(v && v->type == ML_JV_OBJ, "%s is not a JSON object: %s\n%s", path, ml_error(), text);
    return v;
}

static const char *jstr(const ml_jv *v, const char *key) {
    const ml_jv *x = ml_jv_get(v, key);
    ck_assert_msg(x && x->type == ML_JV_STR, "summary field '%s' missing or not a string", key);
    return x->str;
}

static int64_t jint(const ml_jv *v, const char *key) {
    const ml_jv *x = ml_jv_get(v, key);
    ck_assert_msg(x && x->type == ML_JV_NUM && x->is_int, "summary field '%s' missing or not an integer", key);
    return x->i;
}

/* "YYYY-mm-ddTHH:MM:SSZ" */
static void assert_utc(const char *s) {
    ck_assert_msg(strlen(s) == 20 && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':' && s[16] == ':' &&
                      s[19] == 'Z' && !strncmp(s, "20", 2),
                  "not a UTC time: %s", s);
}

static int lines_of(const char *path) {
    const char *t = slurp(path, NULL);
    if (!t) return -1;
    int n = 0;
    for (; *t; t++) n += *t == '\n';
    return n;
}

static int has_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n >= 4 && !strcmp(e->d_name + n - 4, ".tmp")) found = 1;
    }
    closedir(d);
    return found;
}

static void fresh(char *out, size_t cap, const char *tag) {
    const char *d = tu_tmpdir(tag);
    ck_assert_ptr_nonnull(d);
    snprintf(out, cap, "%s", d);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

#define SYNTH "run tests/fixtures/run/synth.yaml"
#define CRASH_ROUTER "%s/tests/plugins/crash_router.so"

/* The plugin's absolute path: a config resolves a plugin named by path to it (the path
   rule of docs/configs.md), and messages name that. */
static void abs_plugin(char *out, size_t cap, const char *fmt) {
    char rel[512], real[PATH_MAX];
    snprintf(rel, sizeof rel, fmt, tu_build());
    if (snprintf(out, cap, "%s", realpath(rel, real) ? real : rel) >= (int)cap) out[0] = 0;
}

/* -------------------------------------------------------- fatal signals */

START_TEST(segv_in_create) {
    char tmp[256], plugin[256], want[512], path[512];
    fresh(tmp, sizeof tmp, "crash-create");
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s router.name=%s router.crash=create", tmp, plugin);
    assert_signal(st, SIGSEGV);
    snprintf(want, sizeof want, "moelab: plugin %s: create: crashed (SIGSEGV)", plugin);
    assert_one_crash_line(want);
    snprintf(path, sizeof path, "%s/test-synth", tmp); /* the run had not started: no directory */
    struct stat sb;
    ck_assert_int_ne(stat(path, &sb), 0);
    rm_rf(tmp);
}
END_TEST

/* abort() in forward during epoch 3: results of epochs 1-2 intact, summary "crashed" */
START_TEST(abort_in_forward_keeps_results) {
    char tmp[256], plugin[256], want[512], run[512], path[600];
    fresh(tmp, sizeof tmp, "crash-fwd");
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    /* 48 training + 16 validation forwards per epoch: call 151 is in epoch 3's training */
    pid_t pid;
    int st = run_moelab(NULL, &pid, SYNTH " results.dir=%s results.run_id=r router.name=%s router.crash=forward "
                        "router.how=abort router.after=150", tmp, plugin);
    assert_signal(st, SIGABRT);
    snprintf(want, sizeof want, "moelab: plugin %s: forward: crashed (SIGABRT)", plugin);
    assert_one_crash_line(want);
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    ml_jv *s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "crashed");
    ck_assert_str_eq(jstr(s, "signal"), "SIGABRT");
    ck_assert_str_eq(jstr(s, "plugin"), plugin);
    ck_assert_str_eq(jstr(s, "call"), "forward");
    ck_assert_str_eq(jstr(s, "error"), want + strlen("moelab: "));
    ck_assert_int_eq(jint(s, "pid"), pid);
    ck_assert_int_eq(jint(s, "epochs"), 2);
    assert_utc(jstr(s, "updated"));
    const ml_jv *last = ml_jv_get(s, "last_epoch");
    ck_assert_ptr_nonnull(last);
    ck_assert_int_eq(jint(last, "epoch"), 2); /* the last row of metrics.csv */
    ml_jv_free(s);
    snprintf(path, sizeof path, "%s/metrics.csv", run);
    ck_assert_int_eq(lines_of(path), 3); /* header + epochs 1 and 2 */
    snprintf(path, sizeof path, "%s/checkpoints/last.safetensors", run);
    ml_st_file *f = ml_st_open(path); /* verifies the checksum */
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_st_meta(f, "epoch"), "2");
    ml_st_close(f);
    ck_assert(!has_tmp(run));
    snprintf(path, sizeof path, "%s/checkpoints", run);
    ck_assert(!has_tmp(path));
    rm_rf(tmp);
}
END_TEST

START_TEST(segv_in_loss_eval) {
    char tmp[256], plugin[256], want[512], run[512];
    fresh(tmp, sizeof tmp, "crash-loss");
    abs_plugin(plugin, sizeof plugin, "%s/tests/plugins/crash_loss.so");
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s results.run_id=r losses.0.name=%s losses.0.fail=segv",
                        tmp, plugin);
    assert_signal(st, SIGSEGV);
    snprintf(want, sizeof want, "moelab: plugin %s: eval: crashed (SIGSEGV)", plugin);
    assert_one_crash_line(want);
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    ml_jv *s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "crashed");
    ck_assert_str_eq(jstr(s, "call"), "eval");
    ck_assert_int_eq(jint(s, "epochs"), 0);
    ml_jv_free(s);
    rm_rf(tmp);
}
END_TEST

/* a stack overflow is caught on the alternate signal stack */
START_TEST(stack_overflow_in_forward) {
    char tmp[256], plugin[256], want[512];
    fresh(tmp, sizeof tmp, "crash-stack");
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s router.name=%s router.crash=forward router.how=stack",
                        tmp, plugin);
    assert_signal(st, SIGSEGV);
    snprintf(want, sizeof want, "moelab: plugin %s: forward: crashed (SIGSEGV)", plugin);
    assert_one_crash_line(want);
    rm_rf(tmp);
}
END_TEST

START_TEST(sigfpe_in_backward) {
    char tmp[256], plugin[256], want[512];
    fresh(tmp, sizeof tmp, "crash-fpe");
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s router.name=%s router.crash=backward router.how=fpe",
                        tmp, plugin);
    assert_signal(st, SIGFPE);
    snprintf(want, sizeof want, "moelab: plugin %s: backward: crashed (SIGFPE)", plugin);
    assert_one_crash_line(want);
    rm_rf(tmp);
}
END_TEST

/* constructors run inside dlopen: `plugin-test` names the load */
START_TEST(crash_in_constructor) {
    char plugin[256], want[512];
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    int st = run_moelab("MOELAB_TEST_CRASH_LOAD=1", NULL, "plugin-test %s", plugin);
    assert_signal(st, SIGSEGV);
    snprintf(want, sizeof want, "moelab: plugin %s: load: crashed (SIGSEGV)", plugin);
    assert_one_crash_line(want);
}
END_TEST

/* `moelab lua`: a router called from a script */
START_TEST(crash_in_lua_standalone) {
    static char env[600];
    snprintf(env, sizeof env, "MOELAB_PLUGIN_PATH=%s/tests/plugins", tu_build());
    int st = run_moelab(env, NULL, "lua tests/fixtures/crash/lua_forward.lua");
    assert_signal(st, SIGABRT);
    char want[600];
    snprintf(want, sizeof want, "moelab: plugin %s/tests/plugins/crash_router.so: forward: crashed (SIGABRT)",
             tu_build());
    assert_one_crash_line(want);
}
END_TEST

/* kill -9 cannot be caught: the summary says "running", with the pid and the time */
START_TEST(sigkill_leaves_running_summary) {
    char tmp[256], plugin[256], run[512], path[600];
    fresh(tmp, sizeof tmp, "crash-kill");
    abs_plugin(plugin, sizeof plugin, CRASH_ROUTER);
    pid_t pid;
    int st = run_moelab(NULL, &pid, SYNTH " results.dir=%s results.run_id=r router.name=%s router.crash=kill "
                        "router.after=150", tmp, plugin);
    assert_signal(st, SIGKILL);
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    ml_jv *s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "running");
    ck_assert_int_eq(jint(s, "pid"), pid);
    ck_assert_int_eq(jint(s, "epochs"), 2);
    assert_utc(jstr(s, "updated"));
    ck_assert_ptr_null(ml_jv_get(s, "error"));
    ml_jv_free(s);
    snprintf(path, sizeof path, "%s/metrics.csv", run);
    ck_assert_int_eq(lines_of(path), 3);
    /* killed in the very first step: the summary written when the run directory opened */
    st = run_moelab(NULL, &pid, SYNTH " results.dir=%s results.run_id=r0 router.name=%s router.crash=kill", tmp,
                    plugin);
    assert_signal(st, SIGKILL);
    snprintf(run, sizeof run, "%s/test-synth/r0", tmp);
    s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "running");
    ck_assert_int_eq(jint(s, "epochs"), 0);
    ck_assert_int_eq(jint(s, "pid"), pid);
    ml_jv_free(s);
    rm_rf(tmp);
}
END_TEST

START_TEST(finished_run_summary) {
    char tmp[256], run[512];
    fresh(tmp, sizeof tmp, "crash-ok");
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s results.run_id=r train.epochs=1", tmp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", err_out);
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    ml_jv *s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "ok");
    ck_assert_ptr_null(ml_jv_get(s, "error"));
    jint(s, "pid");
    assert_utc(jstr(s, "updated"));
    ck_assert_int_eq(jint(s, "epochs"), 1);
    ml_jv_free(s);
    rm_rf(tmp);
}
END_TEST

/* In a child: the handler, with no plugin call active, or with one whose file needs escaping. */
static int crash_child(const char *dir, const char *file, const char *call, int arm, int sig, char *err, size_t cap) {
    char errf[] = "/tmp/moelab-test-stderr-XXXXXX";
    int efd = mkstemp(errf);
    pid_t child = fork();
    if (child == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        dup2(efd, 2);
        char path[512];
        snprintf(path, sizeof path, "%s/summary.json", dir);
        if (ml_crash_install() || ml_crash_install()) _exit(3); /* idempotent */
        if (ml_crash_arm(path, "{\"experiment\":\"x\",\"status\":\"crashed\",\"epochs\":4}")) _exit(4);
        if (!arm) ml_crash_disarm();
        if (call) ml_crash_enter(file, call);
        raise(sig);
        _exit(5);
    }
    int st;
    waitpid(child, &st, 0);
    lseek(efd, 0, SEEK_SET);
    ssize_t n = read(efd, err, cap - 1);
    err[n > 0 ? n : 0] = 0;
    close(efd);
    unlink(errf);
    return st;
}

START_TEST(handler_outside_plugin_and_escaping) {
    char tmp[256], err[1024], path[512];
    fresh(tmp, sizeof tmp, "crash-unit");
    int st = crash_child(tmp, NULL, NULL, 1, SIGBUS, err, sizeof err);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "status 0x%x: %s", st, err);
    ck_assert_str_eq(err, "moelab: crashed (SIGBUS) outside plugin code\n");
    ml_jv *s = summary(tmp);
    ck_assert_str_eq(jstr(s, "status"), "crashed");
    ck_assert_int_eq(jint(s, "epochs"), 4);
    ck_assert_str_eq(jstr(s, "error"), "crashed (SIGBUS) outside plugin code");
    ck_assert_int_eq(ml_jv_get(s, "plugin")->type, ML_JV_NULL);
    ck_assert_int_eq(ml_jv_get(s, "call")->type, ML_JV_NULL);
    assert_utc(jstr(s, "updated"));
    ml_jv_free(s);
    /* a file name with a quote and a backslash still gives valid JSON */
    st = crash_child(tmp, "/p/we\"ird\\x.so", "decide", 1, SIGILL, err, sizeof err);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGILL, "status 0x%x: %s", st, err);
    ck_assert_str_eq(err, "moelab: plugin /p/we\"ird\\x.so: decide: crashed (SIGILL)\n");
    s = summary(tmp);
    ck_assert_str_eq(jstr(s, "plugin"), "/p/we\"ird\\x.so");
    ck_assert_str_eq(jstr(s, "call"), "decide");
    ml_jv_free(s);
    /* a very long file name full of quotes (escaped twice as long) still gives valid JSON:
     * the strings of the summary are cut, not the summary */
    static char longf[4000];
    for (int i = 0; i < 3900; i++) longf[i] = i % 3 ? '"' : 'a';
    longf[0] = '/';
    longf[3900] = 0;
    st = crash_child(tmp, longf, "forward", 1, SIGSEGV, err, sizeof err);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "status 0x%x", st);
    s = summary(tmp);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(jstr(s, "status"), "crashed");
    ck_assert_str_eq(jstr(s, "call"), "forward");
    ck_assert_int_eq(strncmp(jstr(s, "plugin"), longf, 500), 0);
    ml_jv_free(s);
    /* disarmed (run directory closed): the line, but no summary */
    snprintf(path, sizeof path, "%s/summary.json", tmp);
    unlink(path);
    st = crash_child(tmp, NULL, NULL, 0, SIGSEGV, err, sizeof err);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    ck_assert_str_eq(err, "moelab: crashed (SIGSEGV) outside plugin code\n");
    struct stat sb;
    ck_assert_int_ne(stat(path, &sb), 0);
    ck_assert(!has_tmp(tmp));
    rm_rf(tmp);
}
END_TEST

/* ------------------------------------------------------ dispatch validation */

enum { B = 6, D = 4, H = 5, N = 4 };

static const ml_plugin *test_plugin(int kind, const char *name, char *file, size_t cap) {
    snprintf(file, cap, "%s/tests/plugins/%s.so", tu_build(), name);
    const ml_plugin *p = ml_plugin_load(kind, file);
    ck_assert_msg(p != NULL, "%s", ml_error());
    return p;
}

/* A layer over bad_router in `mode`; NULL (error set) when create fails. */
static ml_moe *bad_layer(const char *mode, ml_params *P, ml_params *S, char *file, size_t cap) {
    const ml_plugin *p = test_plugin(ML_PLUGIN_ROUTER, "bad_router", file, cap);
    ml_optval opt[1];
    ck_assert_int_eq(ml_option_parse(&p->options[0], mode, 0, &opt[0]), ML_OK);
    ml_params_init(P, 1);
    ml_params_init(S, 0);
    ml_moe *m = ml_moe_new(0, D, H, N, p, opt, P, S, 7);
    if (!m) return NULL;
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(S, &rng), ML_OK);
    return m;
}

static const struct {
    const char *mode, *what;
} defects[] = {
    {"neg_gate", "dispatch[2] = (sample 2, expert 2, gate -0.5): gate must be finite and >= 0"},
    {"nan_gate", "dispatch[2] = (sample 2, expert 2, gate nan): gate must be finite and >= 0"},
    {"inf_gate", "dispatch[2] = (sample 2, expert 2, gate inf): gate must be finite and >= 0"},
    {"dup_pair", "dispatch[2] = (sample 1, expert 1, gate 1): the pair (sample 1, expert 1) appears twice"},
    {"bad_sample", "dispatch[2] = (sample 6, expert 2, gate 1): sample must be in 0..5"},
    {"bad_expert", "dispatch[2] = (sample 2, expert -1, gate 1): expert must be in 0..3"},
    {"big_n_disp", "n_disp = 25, expected 0..24 (B*N)"},
    {"neg_n_disp", "n_disp = -1, expected 0..24 (B*N)"},
    {"neg_dropped", "n_dropped = -1, expected 0..6 (B)"},
    {"big_dropped", "n_dropped = 7, expected 0..6 (B)"},
    {"nan_prob", "prob[1, 1] = nan: must be finite and in [0, 1]"},
    {"neg_prob", "prob[1, 1] = -0.25: must be finite and in [0, 1]"},
    {"big_prob", "prob[1, 1] = 1.5: must be finite and in [0, 1]"},
    {"row_sum", "prob row 1 sums to 2, expected 1"},
    {"nan_logits", "logits[1, 1] = nan: must be finite"},
};

START_TEST(dispatch_defects_named) {
    char file[512], want[1024];
    ml_params P, S;
    ml_moe *m = bad_layer(defects[_i].mode, &P, &S, file, sizeof file);
    ck_assert_msg(m != NULL, "%s", ml_error());
    float z[B * D], y[B * D];
    int32_t ids[B];
    tu_fill(z, B * D, 5, -1, 1);
    for (int b = 0; b < B; b++) ids[b] = b;
    ck_assert_int_eq(ml_moe_forward(m, z, y, B, 1, ids, NULL, 0), ML_ERR);
    snprintf(want, sizeof want, "router 'bad_router' (%s): forward (layer 1): %s", file, defects[_i].what);
    ck_assert_str_eq(ml_error(), want);
    ck_assert_int_eq(m->router.n_disp, 0); /* nothing of the bad forward is kept */
    ml_moe_free(m);
    ml_params_free(&P);
    ml_params_free(&S);
}
END_TEST

START_TEST(valid_dispatch_passes) {
    char file[512];
    ml_params P, S;
    ml_moe *m = bad_layer("ok", &P, &S, file, sizeof file);
    ck_assert_msg(m != NULL, "%s", ml_error());
    float z[B * D], y[B * D];
    int32_t ids[B];
    tu_fill(z, B * D, 5, -1, 1);
    for (int b = 0; b < B; b++) ids[b] = b;
    for (int k = 0; k < 3; k++) ck_assert_msg(ml_moe_forward(m, z, y, B, 1, ids, NULL, 0) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->router.n_disp, B);
    ml_moe_free(m);
    ml_params_free(&P);
    ml_params_free(&S);
}
END_TEST

/* the longest run of c in s */
static int run_of(const char *s, char c) {
    int best = 0, k = 0;
    for (; *s; s++) {
        k = *s == c ? k + 1 : 0;
        if (k > best) best = k;
    }
    return best;
}

START_TEST(unterminated_error_buffers) {
    char file[512];
    ml_params P, S;
    /* create fails with ML_ERR_MAX bytes of 'C' and no terminator: 255 are read, no more */
    ck_assert_ptr_null(bad_layer("noterm_create", &P, &S, file, sizeof file));
    ck_assert_int_eq(run_of(ml_error(), 'C'), ML_ERR_MAX - 1);
    ck_assert_msg(ml_error()[strlen(ml_error()) - 1] == 'C', "%s", ml_error());
    ml_params_free(&P);
    ml_params_free(&S);
    ml_moe *m = bad_layer("noterm", &P, &S, file, sizeof file);
    ck_assert_ptr_nonnull(m);
    float z[B * D], y[B * D];
    int32_t ids[B] = {0};
    tu_fill(z, B * D, 5, -1, 1);
    ck_assert_int_eq(ml_moe_forward(m, z, y, B, 1, ids, NULL, 0), ML_ERR);
    ck_assert_int_eq(run_of(ml_error(), 'F'), ML_ERR_MAX - 1);
    ck_assert_msg(ml_error()[strlen(ml_error()) - 1] == 'F', "%s", ml_error());
    ml_moe_free(m);
    ml_params_free(&P);
    ml_params_free(&S);
    /* a loss in a run: the message ends after 255 bytes of it */
    char tmp[256], plugin[256];
    fresh(tmp, sizeof tmp, "crash-noterm");
    snprintf(plugin, sizeof plugin, "%s/tests/plugins/crash_loss.so", tu_build());
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s losses.0.name=%s losses.0.fail=noterm", tmp, plugin);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == ML_EXIT_RUNTIME, "status 0x%x\n%s", st, err_out);
    const char *at = strstr(err_out, "eval (layer 1): L");
    ck_assert_msg(at != NULL && strstr(err_out, "loss 'crash_loss' ("), "%s", err_out);
    at += strlen("eval (layer 1): ");
    ck_assert_int_eq((int)strspn(at, "L"), ML_ERR_MAX - 1);
    ck_assert_int_eq(at[ML_ERR_MAX - 1], '\n');
    rm_rf(tmp);
}
END_TEST

/* a bad dispatch in a run: exit 1, the message, summary "error" */
START_TEST(bad_dispatch_ends_run) {
    char tmp[256], plugin[256], run[512];
    fresh(tmp, sizeof tmp, "crash-disp");
    snprintf(plugin, sizeof plugin, "%s/tests/plugins/bad_router.so", tu_build());
    int st = run_moelab(NULL, NULL, SYNTH " results.dir=%s results.run_id=r router.name=%s router.mode=neg_gate", tmp,
                        plugin);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == ML_EXIT_RUNTIME, "status 0x%x\n%s", st, err_out);
    ck_assert_msg(strstr(err_out, "forward (layer 1): dispatch[2] = (sample 2, expert 2, gate -0.5): gate must be finite and >= 0"),
                  "%s", err_out);
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    ml_jv *s = summary(run);
    ck_assert_str_eq(jstr(s, "status"), "error");
    ck_assert_ptr_nonnull(strstr(jstr(s, "error"), "gate must be finite"));
    ml_jv_free(s);
    rm_rf(tmp);
}
END_TEST

/* ------------------------------------------------------------ plugin files */

static void assert_load_error(const char *path, const char *want) {
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, path));
    ck_assert_msg(strstr(ml_error(), want) != NULL, "loading %s: expected '%s' in: %s", path, want, ml_error());
    ck_assert_msg(strstr(ml_error(), "file not found") == NULL, "%s", ml_error());
}

START_TEST(plugin_file_kinds) {
    char tmp[256], p[512];
    fresh(tmp, sizeof tmp, "crash-files");
    snprintf(p, sizeof p, "%s/dir.so", tmp);
    ck_assert_int_eq(mkdir(p, 0777), 0);
    assert_load_error(p, "is a directory");
    assert_load_error(tmp, "is a directory");
    assert_load_error("/dev/zero", "/dev/zero: is not a regular file (character device)");
    snprintf(p, sizeof p, "%s/fifo.so", tmp);
    ck_assert_int_eq(mkfifo(p, 0666), 0);
    assert_load_error(p, "is not a regular file (FIFO)"); /* and does not block */
    snprintf(p, sizeof p, "%s/empty.so", tmp);
    FILE *f = fopen(p, "w");
    fclose(f);
    assert_load_error(p, "is not a shared object (empty file)");
    snprintf(p, sizeof p, "%s/text.so", tmp);
    f = fopen(p, "w");
    fputs("secret content\n", f);
    fclose(f);
    assert_load_error(p, "is not a shared object (not an ELF file)");
    ck_assert_ptr_null(strstr(ml_error(), "secret"));
    /* an ELF header with e_type 1 (relocatable) and 2 (executable) */
    unsigned char elf[64] = {0x7f, 'E', 'L', 'F', 2, 1, 1};
    elf[16] = 1;
    snprintf(p, sizeof p, "%s/obj.so", tmp);
    f = fopen(p, "wb");
    fwrite(elf, 1, sizeof elf, f);
    fclose(f);
    assert_load_error(p, "is not a shared object (an ELF relocatable object; hint: link with -shared)");
    elf[16] = 2;
    snprintf(p, sizeof p, "%s/exe.so", tmp);
    f = fopen(p, "wb");
    fwrite(elf, 1, sizeof elf, f);
    fclose(f);
    assert_load_error(p, "is not a shared object (an ELF executable)");
    /* found by name on the search path: reported as what it is */
    const char *dirs[] = {tmp};
    ml_plugins_set_path(dirs, 1);
    assert_load_error("dir", "dir.so: is a directory");
    ml_plugins_set_path(NULL, 0);
    /* still missing is still "file not found" */
    snprintf(p, sizeof p, "%s/missing.so", tmp);
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, p));
    ck_assert_ptr_nonnull(strstr(ml_error(), "missing.so: file not found"));
    rm_rf(tmp);
}
END_TEST

/* --------------------------------------------------- temp files and resume */

static void put_file(const char *dir, const char *name, const char *text) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static const char *file_in(const char *dir, const char *name) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return slurp(p, NULL);
}

START_TEST(stale_tmp_files_cleaned) {
    char tmp[256], run[512], ck[600];
    fresh(tmp, sizeof tmp, "crash-tmp");
    snprintf(run, sizeof run, "%s/exp/r", tmp);
    snprintf(ck, sizeof ck, "%s/checkpoints", run);
    char p[600];
    snprintf(p, sizeof p, "%s/exp", tmp);
    mkdir(p, 0777);
    mkdir(run, 0777);
    mkdir(ck, 0777);
    put_file(run, "summary.json.tmp", "{\"half");
    put_file(run, "metrics.csv.tmp", "epo");
    put_file(ck, "last.safetensors.tmp", "xx");
    put_file(run, "keep.txt", "keep");
    snprintf(p, sizeof p, "%s/dir.tmp", run); /* a directory is not a temp file of ours */
    mkdir(p, 0777);
    ck_assert_int_eq(ml_results_clean_tmp(run), 3);
    ck_assert_ptr_null(file_in(run, "summary.json.tmp"));
    ck_assert_ptr_null(file_in(ck, "last.safetensors.tmp"));
    ck_assert_str_eq(file_in(run, "keep.txt"), "keep");
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_int_eq(ml_results_clean_tmp(run), 0);
    /* reopening a run directory cleans too */
    put_file(ck, "best.safetensors.tmp", "xx");
    ml_results *r = ml_results_reopen(run);
    ck_assert_msg(r != NULL, "%s", ml_error());
    ck_assert_ptr_null(file_in(ck, "best.safetensors.tmp"));
    ml_results_close(r);
    rm_rf(tmp);
}
END_TEST

static ml_health fake_health(int n, double *u) {
    ml_health h;
    memset(&h, 0, sizeof h);
    h.num_experts = n;
    h.utilisation = u;
    h.importance = u;
    return h;
}

START_TEST(reopen_appends_and_truncates) {
    char tmp[256], run[512];
    fresh(tmp, sizeof tmp, "crash-reopen");
    ml_results *r = ml_results_open(tmp, "exp", "r");
    ck_assert(r);
    snprintf(run, sizeof run, "%s", ml_results_dir(r));
    double u[2] = {0.25, 0.75};
    float sat[2] = {1, 2};
    ml_health h = fake_health(2, u);
    const char *xn[] = {"saturation"};
    const float *xv[] = {sat};
    const char *n1[] = {"epoch", "loss"}, *n2[] = {"epoch", "loss", "note"};
    double v1[] = {1, 0.5}, v2[] = {2, 0.25, 0};
    const char *s2[] = {NULL, NULL, "a,\"b\""};
    ck_assert_int_eq(ml_results_metrics_row(r, n1, v1, 2), ML_OK);
    ck_assert_int_eq(ml_results_routing_rows(r, 1, 1, &h, xn, xv, 1), ML_OK);
    ck_assert_int_eq(ml_results_event(r, 1, 10, "a", NULL), ML_OK);
    int rows;
    long rb, eb;
    ml_results_sizes(r, &rows, &rb, &eb);
    ck_assert_int_eq(rows, 1);
    ck_assert_int_eq(rb, (long)strlen(file_in(run, "routing.csv")));
    ck_assert_int_eq(eb, (long)strlen(file_in(run, "events.jsonl")));
    char metrics1[256], routing1[512], events1[256];
    snprintf(metrics1, sizeof metrics1, "%s", file_in(run, "metrics.csv"));
    snprintf(routing1, sizeof routing1, "%s", file_in(run, "routing.csv"));
    snprintf(events1, sizeof events1, "%s", file_in(run, "events.jsonl"));
    /* epoch 2, then the process "dies" (close without summary) */
    ck_assert_int_eq(ml_results_metrics_row_mixed(r, n2, v2, s2, 3), ML_OK);
    ck_assert_int_eq(ml_results_routing_rows(r, 2, 1, &h, xn, xv, 1), ML_OK);
    ck_assert_int_eq(ml_results_event(r, 2, 20, "b", NULL), ML_OK);
    char metrics2[256];
    snprintf(metrics2, sizeof metrics2, "%s", file_in(run, "metrics.csv"));
    ml_results_close(r);

    /* reopen: rows are loaded, files appended to */
    r = ml_results_reopen(run);
    ck_assert_msg(r != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_results_run_id(r), "r");
    ml_results_sizes(r, &rows, NULL, NULL);
    ck_assert_int_eq(rows, 2);
    ck_assert_int_eq(ml_results_metrics_row(r, n1, v1, 2), ML_OK); /* a third row after both */
    char want[512];
    snprintf(want, sizeof want, "%s1,0.5,\n", metrics2);
    ck_assert_str_eq(file_in(run, "metrics.csv"), want);
    /* the routing header fixed the extra columns: an unknown one is still refused */
    const char *bad[] = {"other"};
    ck_assert_int_eq(ml_results_routing_rows(r, 3, 1, &h, bad, xv, 1), ML_ERR);
    ck_assert_int_eq(ml_results_routing_rows(r, 3, 1, &h, xn, xv, 1), ML_OK);
    ck_assert_int_eq(ml_results_event(r, 3, 30, "c", NULL), ML_OK);
    ck_assert_ptr_nonnull(strstr(file_in(run, "events.jsonl"), "\"kind\":\"b\"}\n{\"epoch\":3"));

    /* back to the extent after epoch 1: byte-identical files, the "note" column gone */
    ck_assert_int_eq(ml_results_truncate(r, 1, rb, eb), ML_OK);
    ck_assert_str_eq(file_in(run, "metrics.csv"), metrics1);
    ck_assert_str_eq(file_in(run, "routing.csv"), routing1);
    ck_assert_str_eq(file_in(run, "events.jsonl"), events1);
    /* and writing continues after them */
    ck_assert_int_eq(ml_results_metrics_row_mixed(r, n2, v2, s2, 3), ML_OK);
    ck_assert_str_eq(file_in(run, "metrics.csv"), metrics2);
    ck_assert_int_eq(ml_results_event(r, 2, 20, "b", NULL), ML_OK);
    ck_assert_int_eq(ml_results_routing_rows(r, 2, 1, &h, xn, xv, 1), ML_OK);
    /* extents beyond the files, or into the routing header, change nothing */
    ck_assert_int_eq(ml_results_truncate(r, 9, rb, eb), ML_ERR);
    ck_assert_int_eq(ml_results_truncate(r, 1, 1 << 20, eb), ML_ERR);
    ck_assert_int_eq(ml_results_truncate(r, 1, 3, eb), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "header"));
    ck_assert_str_eq(file_in(run, "metrics.csv"), metrics2);
    /* to nothing: files removed, routing.csv starts again with its header */
    ck_assert_int_eq(ml_results_truncate(r, 0, 0, 0), ML_OK);
    ck_assert_ptr_null(file_in(run, "metrics.csv"));
    ck_assert_ptr_null(file_in(run, "events.jsonl"));
    ck_assert_int_eq(ml_results_routing_rows(r, 1, 1, &h, xn, xv, 1), ML_OK);
    ck_assert_str_eq(file_in(run, "routing.csv"), routing1);
    ml_results_close(r);

    /* not a run directory; a malformed metrics.csv is named with its line */
    ck_assert_ptr_null(ml_results_reopen("/nonexistent/run"));
    ck_assert_ptr_nonnull(strstr(ml_error(), "/nonexistent/run"));
    put_file(run, "metrics.csv", "epoch,loss\n1,2\n1,2,3\n");
    ck_assert_ptr_null(ml_results_reopen(run));
    ck_assert_msg(strstr(ml_error(), "metrics.csv:3:") != NULL, "%s", ml_error());
    put_file(run, "metrics.csv", "epoch\n\"1\n");
    ck_assert_ptr_null(ml_results_reopen(run));
    ck_assert_msg(strstr(ml_error(), "unterminated") != NULL, "%s", ml_error());
    rm_rf(tmp);
}
END_TEST

static Suite *crash_suite(void) {
    Suite *s = suite_create("crash");
    TCase *t = tcase_create("signals");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, segv_in_create);
    tcase_add_test(t, abort_in_forward_keeps_results);
    tcase_add_test(t, segv_in_loss_eval);
    tcase_add_test(t, stack_overflow_in_forward);
    tcase_add_test(t, sigfpe_in_backward);
    tcase_add_test(t, crash_in_constructor);
    tcase_add_test(t, crash_in_lua_standalone);
    tcase_add_test(t, sigkill_leaves_running_summary);
    tcase_add_test(t, finished_run_summary);
    tcase_add_test(t, handler_outside_plugin_and_escaping);
    suite_add_tcase(s, t);
    TCase *v = tcase_create("validation");
    tcase_set_timeout(v, 60);
    tcase_add_loop_test(v, dispatch_defects_named, 0, (int)(sizeof defects / sizeof *defects));
    tcase_add_test(v, valid_dispatch_passes);
    tcase_add_test(v, unterminated_error_buffers);
    tcase_add_test(v, bad_dispatch_ends_run);
    tcase_add_test(v, plugin_file_kinds);
    suite_add_tcase(s, v);
    TCase *r = tcase_create("results");
    tcase_add_test(r, stale_tmp_files_cleaned);
    tcase_add_test(r, reopen_appends_and_truncates);
    suite_add_tcase(s, r);
    return s;
}

int main(void) { return tu_run(crash_suite()); }
