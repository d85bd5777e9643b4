/* check_luaapi.c — the exp API of scripts (docs/lua-api.md): its types in the lauxlib
 * manner (method tables, field getters and setters, messages that read like Lua's own),
 * errors that unwind through a binding without leaving C memory behind, and the API
 * researchers asked for (exp.optim, parameter groups, freezing, the router object).
 * Scripts are fixtures in tests/fixtures/luaapi/, run as `moelab run` children. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/common.h"
#include "io/safetensors.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"
#define FIX "tests/fixtures/luaapi/"

static void assert_out(const char *needle) { ck_assert_msg(strstr(tu_out, needle) != NULL, "expected '%s' in:\n%s", needle, tu_out); }

/* `moelab run SYNTH script=FIX<script> results.dir=<tmp> results.run_id=r <extra>`; returns
   the exit status, the output in tu_out, the run directory in run (cap bytes) and, when
   maxrss_kb is given, the child's peak RSS. */
/* rm -rf of the temporary directory a run_script run was made in */
static void remove_run(const char *run) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", run);
    char *cut = strstr(dir, "/test-synth/");
    if (cut) {
        *cut = 0;
        tu_rm_rf(dir);
    }
}

static int run_script(const char *script, const char *extra, char *run, size_t cap, long *maxrss_kb) {
    const char *tmp = tu_tmpdir("luaapi");
    ck_assert_ptr_nonnull(tmp);
    snprintf(run, cap, "%s/test-synth/r", tmp);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/moelab run " SYNTH " script=" FIX "%s results.dir=%s results.run_id=r %s", tu_build(),
             script, tmp, extra ? extra : "");
    if (!maxrss_kb) return tu_sh("%s", cmd);
    struct rusage before, after;
    getrusage(RUSAGE_CHILDREN, &before);
    int rc = tu_sh("%s", cmd);
    getrusage(RUSAGE_CHILDREN, &after);
    /* ru_maxrss of children is the largest of any child so far: the suite's earlier children
       are smaller (synth runs), so the value is this child's */
    *maxrss_kb = after.ru_maxrss;
    return rc;
}

/* ------------------------------------------------------------- error paths, leaks */

/* Every binding's argument errors, and memory errors raised while layer:stats() builds its
   result, 4000 times with 1024 experts: on the old host each of those leaked 16 KB of
   health arrays (64 MB here). make asan runs the same with LeakSanitizer watching. */
START_TEST(binding_errors_leave_nothing_behind) {
    char run[512];
    long rss = 0;
    int rc = run_script("error_paths.lua", "lua.memory_mb=64", run, sizeof run, &rss);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("error paths done");
    if (!getenv("MOELAB_SANITIZER_LOGS")) /* sanitizers keep freed memory in quarantine */
        ck_assert_msg(rss < 120 * 1024, "peak RSS %ld MB after failed calls (a leak? 90 MB expected)", rss / 1024);
    remove_run(run);
}
END_TEST

/* Method tables and field getters: unknown fields list the fields, read-only fields say so,
   argument errors are luaL_argerror's, values assigned to fields are checked. */
/* exp.schedule:decide() keeps its old shape for pairs and ipairs and carries removals in
   d.layers / d.remove; remove_experts returns the new count and the kept ids. */
START_TEST(decide_with_removals) {
    char run[512];
    int rc = run_script("decide.lua", "train.epochs=2 schedule.name=dynmoe schedule.window=8 schedule.interval=16 "
                        "schedule.mass_threshold=0.9 router.k=1", run, sizeof run, NULL);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("decide ok: ");
    remove_run(run);
}
END_TEST

START_TEST(messages_read_like_lua) {
    char run[512];
    int rc = run_script("messages.lua", "train.epochs=1", run, sizeof run, NULL);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("messages ok");
    remove_run(run);
}
END_TEST

/* exp.optim: settings read and written by the YAML's rules, groups, freezing by group and by
   pattern (a frozen tensor takes no step), parameter names, new experts joining their group;
   each freeze that changed something is an event. */
START_TEST(optim_from_scripts) {
    char run[512], p[600];
    int rc = run_script("optim.lua",
                        "train.epochs=1 optim.name=adamw optim.weight_decay=0.01 \"optim.groups=[{name: backbone, "
                        "match: 'enc.*', lr: 1e-4, frozen: true}, {name: experts, match: 'moe1.expert*'}]\"",
                        run, sizeof run, NULL);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("optim ok");
    snprintf(p, sizeof p, "%s/events.jsonl", run);
    char *ev = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(ev);
    ck_assert_msg(strstr(ev, "\"kind\":\"frozen\",\"pattern\":\"moe1.expert0.*\",\"tensors\":4}"), "%s", ev);
    ck_assert_msg(strstr(ev, "\"kind\":\"unfrozen\",\"group\":\"backbone\",\"tensors\":4}"), "%s", ev);
    free(ev);
    remove_run(run);
}
END_TEST

/* Every tensor of checkpoint a is in b with the same shape and bytes. */
static void same_tensors(const char *a, const char *b) {
    ml_st_file *fa = ml_st_open(a), *fb = ml_st_open(b);
    ck_assert_msg(fa && fb, "%s", ml_error());
    ck_assert_int_eq(ml_st_count(fa), ml_st_count(fb));
    for (int i = 0; i < ml_st_count(fa); i++) {
        const char *name = ml_st_name(fa, i);
        int na, nb;
        int64_t sa[4], sb[4];
        const float *da = ml_st_get(fa, name, &na, sa), *db = ml_st_get(fb, name, &nb, sb);
        ck_assert_msg(db != NULL && na == nb, "tensor '%s' missing or reshaped in %s", name, b);
        size_t n = 1;
        for (int d = 0; d < na; d++) {
            ck_assert_int_eq(sa[d], sb[d]);
            n *= (size_t)sa[d];
        }
        ck_assert_msg(memcmp(da, db, n * sizeof(float)) == 0, "tensor '%s' differs between %s and %s", name, a, b);
    }
    ml_st_close(fa);
    ml_st_close(fb);
}

/* exp.moe[i].router: the object (name, layer, options as a copy, string form the name),
   :set validated like the YAML and refused for options the plugin does not flag, each
   change one router_options event. */
START_TEST(router_object) {
    char run[512], p[600];
    int rc = run_script("router.lua", "train.epochs=2 params.mode=types", run, sizeof run, NULL);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("router types ok");
    snprintf(p, sizeof p, "%s/events.jsonl", run);
    char *ev = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(ev);
    ck_assert_msg(strstr(ev, "{\"epoch\":0,\"step\":0,\"kind\":\"router_options\",\"layer\":1,\"router\":\"softmax_topk\","
                             "\"values\":{\"k\":1,\"renormalize\":false},\"previous\":{\"k\":2,\"renormalize\":true}}\n"),
                  "%s", ev);
    ck_assert_msg(strstr(ev, "\"values\":{\"renormalize\":true},\"previous\":{\"renormalize\":false}}"), "%s", ev);
    int n = 0;
    for (const char *q = ev; (q = strstr(q, "router_options")); q++) n++;
    ck_assert_int_eq(n, 2); /* set{k = 1} again changed nothing */
    free(ev);
    remove_run(run);
    rc = run_script("router.lua", "train.epochs=1 params.mode=refused router.name=switch", run, sizeof run, NULL);
    ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
    assert_out("router refused ok");
    remove_run(run);
}
END_TEST

/* A router option set from the script before the first step trains exactly as the same
   value in the config: softmax_topk's k, noisy_topk's noise and k. */
START_TEST(router_options_apply) {
    static const char *const cases[][2] = {
        {"router.k=1", ""},
        {"router.name=noisy_topk router.noise=false router.k=1", "router.name=noisy_topk"},
    };
    for (int i = 0; i < 2; i++) {
        char a[512], b[512], pa[600], pb[600], args[256];
        snprintf(args, sizeof args, "train.epochs=1 params.mode=%s %s", i ? "noise" : "k1", cases[i][0]);
        int rc = run_script("router.lua", args, a, sizeof a, NULL);
        ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
        snprintf(args, sizeof args, "train.epochs=1 params.mode=%s %s", i ? "noise" : "k1", cases[i][1]);
        rc = run_script("router.lua", args, b, sizeof b, NULL);
        ck_assert_msg(rc == 0, "exit %d:\n%s", rc, tu_out);
        snprintf(pa, sizeof pa, "%s/checkpoints/last.safetensors", a);
        snprintf(pb, sizeof pb, "%s/checkpoints/last.safetensors", b);
        same_tensors(pa, pb);
        remove_run(a);
        remove_run(b);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("luaapi");
    TCase *c = tcase_create("errors");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, binding_errors_leave_nothing_behind);
    tcase_add_test(c, messages_read_like_lua);
    tcase_add_test(c, decide_with_removals);
    suite_add_tcase(s, c);
    c = tcase_create("api");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, optim_from_scripts);
    tcase_add_test(c, router_object);
    tcase_add_test(c, router_options_apply);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(suite()); }
