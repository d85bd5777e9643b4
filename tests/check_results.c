/* check_results.c — run directory, metrics/routing/events/summary files, JSON helpers. */
#include "testutil.h"
#include "base/common.h"
#include "base/json.h"
#include "io/results.h"
#include "io/safetensors.h"
#include "base/file.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

/* Whole file as a NUL-terminated string (static buffer). */
static const char *slurp(const char *path) {
    static char buf[1 << 16];
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static const char *in_run(const ml_results *r, const char *rel) {
    static char p[4096];
    ck_assert_int_eq(ml_results_path(r, rel, p, sizeof p), ML_OK);
    return p;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* Removes a test's temporary tree. */
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* A fresh temporary directory the caller owns (copied out of tu_tmpdir's buffer). */
static void fresh_dir(char *out, size_t cap) {
    const char *d = tu_tmpdir("results");
    ck_assert_ptr_nonnull(d);
    snprintf(out, cap, "%s", d);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* No "*.tmp" left anywhere in dir. */
static int no_tmp_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n >= 4 && !strcmp(e->d_name + n - 4, ".tmp")) ok = 0;
    }
    closedir(d);
    return ok;
}

START_TEST(run_dir_and_refusal) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "run1");
    ck_assert_msg(r != NULL, "%s", ml_error());
    char want[512];
    snprintf(want, sizeof want, "%s/exp/run1", base);
    ck_assert_str_eq(ml_results_dir(r), want);
    ck_assert_str_eq(ml_results_run_id(r), "run1");
    ck_assert(is_dir(in_run(r, "checkpoints")));
    const char *names[] = {"epoch"};
    double v[] = {1};
    ck_assert_int_eq(ml_results_metrics_row(r, names, v, 1), ML_OK);
    ml_results_close(r);

    /* The same explicit run id again: refused, the old run untouched. */
    ck_assert_ptr_null(ml_results_open(base, "exp", "run1"));
    ck_assert_ptr_nonnull(strstr(ml_error(), "refusing to overwrite"));
    ck_assert_ptr_nonnull(strstr(ml_error(), want));
    snprintf(want, sizeof want, "%s/exp/run1/metrics.csv", base);
    ck_assert_str_eq(slurp(want), "epoch\n1\n");

    /* An existing empty directory is fine (e.g. made by a job scheduler). */
    snprintf(want, sizeof want, "%s/exp/empty", base);
    ck_assert_int_eq(mkdir(want, 0777), 0);
    r = ml_results_open(base, "exp", "empty");
    ck_assert_msg(r != NULL, "%s", ml_error());
    ml_results_close(r);

    /* Timestamped ids: never the same directory twice. */
    ml_results *a = ml_results_open(base, "ts", ""), *b = ml_results_open(base, "ts", NULL);
    ck_assert(a && b);
    ck_assert_str_ne(ml_results_dir(a), ml_results_dir(b));
    const char *id = ml_results_run_id(a);
    ck_assert_int_eq((int)strlen(id), 15);
    for (int i = 0; i < 15; i++) ck_assert(i == 8 ? id[i] == '-' : (id[i] >= '0' && id[i] <= '9'));
    ck_assert_int_eq(strncmp(ml_results_run_id(b), id, 8), 0);
    ml_results_close(a);
    ml_results_close(b);

    /* Names must be single path components. */
    ck_assert_ptr_null(ml_results_open(base, "a/b", "x"));
    ck_assert_ptr_nonnull(strstr(ml_error(), "single directory name"));
    ck_assert_ptr_null(ml_results_open(base, "exp", ".."));
    ck_assert_ptr_null(ml_results_open(base, "", "x"));
    ml_results_close(NULL);
    rm_rf(base);
}
END_TEST

/* One process per run directory: a second handle (a second `--resume`, a requeued task
 * while the first still runs) is refused while the first is open, and allowed after. */
START_TEST(run_dir_lock) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "r");
    ck_assert_msg(r != NULL, "%s", ml_error());
    char dir[512], pid[64];
    snprintf(dir, sizeof dir, "%s", ml_results_dir(r));
    snprintf(pid, sizeof pid, "(pid %ld)", (long)getpid());
    ck_assert_ptr_null(ml_results_reopen(dir));
    ck_assert_msg(strstr(ml_error(), "is in use by another moelab process") && strstr(ml_error(), pid), "%s", ml_error());
    ml_results_close(r);
    ml_results *again = ml_results_reopen(dir);
    ck_assert_msg(again != NULL, "%s", ml_error());
    ck_assert_ptr_null(ml_results_reopen(dir));
    ml_results_close(again);
    rm_rf(base);
}
END_TEST

START_TEST(metrics_columns_grow) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "r");
    ck_assert(r);
    const char *n1[] = {"epoch", "loss"};
    double v1[] = {1, 0.5};
    ck_assert_int_eq(ml_results_metrics_row(r, n1, v1, 2), ML_OK);
    ck_assert_str_eq(slurp(in_run(r, "metrics.csv")), "epoch,loss\n1,0.5\n");

    /* A column appears mid-run; columns may come in any order. */
    const char *n2[] = {"loss", "epoch", "val_iou"};
    double v2[] = {0.25, 2, 0.123456789012};
    ck_assert_int_eq(ml_results_metrics_row(r, n2, v2, 3), ML_OK);
    ck_assert_str_eq(slurp(in_run(r, "metrics.csv")), "epoch,loss,val_iou\n1,0.5,\n2,0.25,0.123456789\n");

    /* Missing values, NaN, big integers, text cells needing quotes. */
    const char *n3[] = {"epoch", "note", "images_seen", "val_iou"};
    double v3[] = {3, 0, 12345678901.0, NAN};
    const char *s3[] = {NULL, "warm-up, \"phase\" 2", NULL, NULL};
    ck_assert_int_eq(ml_results_metrics_row_mixed(r, n3, v3, s3, 4), ML_OK);
    ck_assert_str_eq(slurp(in_run(r, "metrics.csv")),
                     "epoch,loss,val_iou,note,images_seen\n"
                     "1,0.5,,,\n"
                     "2,0.25,0.123456789,,\n"
                     "3,,nan,\"warm-up, \"\"phase\"\" 2\",12345678901\n");
    ck_assert(no_tmp_files(ml_results_dir(r)));

    /* Bad rows change nothing. */
    const char *dup[] = {"epoch", "epoch"};
    ck_assert_int_eq(ml_results_metrics_row(r, dup, v1, 2), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "'epoch' given twice"));
    const char *empty[] = {"epoch", ""};
    ck_assert_int_eq(ml_results_metrics_row(r, empty, v1, 2), ML_ERR);
    ck_assert_ptr_nonnull(strstr(slurp(in_run(r, "metrics.csv")), "images_seen\n1,0.5,,,\n"));
    ml_results_close(r);
    rm_rf(base);
}
END_TEST

START_TEST(routing_rows) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "r");
    ck_assert(r);
    double util[3] = {0.5, 0.25, 0.25}, imp[3] = {0.4, 0.35, 0.25};
    ml_health h = {0};
    h.num_experts = 3;
    h.utilisation = util;
    h.importance = imp;
    float sat[3] = {0.125f, 0.5f, 1.0f}, bias[3] = {-1, 0, 1};
    const char *names[] = {"saturation", "bias"};
    const float *vals[] = {sat, bias};
    ck_assert_int_eq(ml_results_routing_rows(r, 1, 0, &h, names, vals, 2), ML_OK);
    /* Later: a layer whose router reports only one of the columns, in another order. */
    const char *names2[] = {"bias"};
    const float *vals2[] = {bias};
    ck_assert_int_eq(ml_results_routing_rows(r, 1, 1, &h, names2, vals2, 1), ML_OK);
    ck_assert_int_eq(ml_results_routing_rows(r, 2, 0, &h, NULL, NULL, 0), ML_OK);
    const char *want =
        "epoch,layer,expert,utilisation,importance,saturation,bias\n"
        "1,0,0,0.5,0.4,0.125,-1\n"
        "1,0,1,0.25,0.35,0.5,0\n"
        "1,0,2,0.25,0.25,1,1\n"
        "1,1,0,0.5,0.4,,-1\n"
        "1,1,1,0.25,0.35,,0\n"
        "1,1,2,0.25,0.25,,1\n"
        "2,0,0,0.5,0.4,,\n"
        "2,0,1,0.25,0.35,,\n"
        "2,0,2,0.25,0.25,,\n";
    ck_assert_str_eq(slurp(in_run(r, "routing.csv")), want);
    /* A column the header does not have is refused; nothing is appended. */
    const char *bad[] = {"temperature"};
    ck_assert_int_eq(ml_results_routing_rows(r, 3, 0, &h, bad, vals2, 1), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "'temperature' is not in the header"));
    ck_assert_str_eq(slurp(in_run(r, "routing.csv")), want);
    ml_results_close(r);
    rm_rf(base);
}
END_TEST

START_TEST(events_lines) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "r");
    ck_assert(r);
    ck_assert_int_eq(ml_results_event(r, 3, 1200, "collapse_warning", "\"layer\":0,\"active\":1"), ML_OK);
    ml_json j;
    ml_json_begin(&j);
    ml_json_int(&j, "added", 2);
    ml_json_str(&j, "why", "dead \"expert\"\n");
    const char *obj = ml_json_end(&j);
    /* Fields without the braces. */
    char fields[256];
    snprintf(fields, sizeof fields, "%.*s", (int)strlen(obj) - 2, obj + 1);
    ml_json_free(&j);
    ck_assert_int_eq(ml_results_event(r, 4, 1600, "experts_added", fields), ML_OK);
    ck_assert_int_eq(ml_results_event(r, 5, 2000, "kind \"quoted\"", NULL), ML_OK);
    /* Bad fields and a duplicate of a fixed key are refused before writing. */
    ck_assert_int_eq(ml_results_event(r, 6, 2400, "x", "\"a\":"), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "not valid JSON"));
    ck_assert_int_eq(ml_results_event(r, 6, 2400, "x", "\"epoch\":7"), ML_ERR);
    ck_assert_int_eq(ml_results_event(r, 6, 2400, "x", "\"a\":1},{\"b\":2"), ML_ERR);

    const char *text = slurp(in_run(r, "events.jsonl"));
    ck_assert_str_eq(text,
                     "{\"epoch\":3,\"step\":1200,\"kind\":\"collapse_warning\",\"layer\":0,\"active\":1}\n"
                     "{\"epoch\":4,\"step\":1600,\"kind\":\"experts_added\",\"added\":2,"
                     "\"why\":\"dead \\\"expert\\\"\\n\"}\n"
                     "{\"epoch\":5,\"step\":2000,\"kind\":\"kind \\\"quoted\\\"\"}\n");
    /* Each line is one JSON object. */
    int lines = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        ck_assert_ptr_nonnull(nl);
        ml_jv *v = ml_jv_parse(p, (size_t)(nl - p));
        ck_assert_msg(v != NULL, "%s", ml_error());
        ck_assert_int_eq(v->type, ML_JV_OBJ);
        ck_assert(ml_jv_get(v, "epoch")->is_int);
        ck_assert_str_eq(ml_jv_get(v, "kind")->type == ML_JV_STR ? "s" : "?", "s");
        if (lines == 1) ck_assert_str_eq(ml_jv_get(v, "why")->str, "dead \"expert\"\n");
        ml_jv_free(v);
        lines++;
        p = nl + 1;
    }
    ck_assert_int_eq(lines, 3);
    ml_results_close(r);
    rm_rf(base);
}
END_TEST

START_TEST(summary_atomic) {
    char base[256];
    fresh_dir(base, sizeof base);
    ml_results *r = ml_results_open(base, "exp", "r");
    ck_assert(r);
    ck_assert_int_eq(ml_results_summary(r, "{\"best_epoch\":3,\"val_iou\":0.5}"), ML_OK);
    ck_assert_str_eq(slurp(in_run(r, "summary.json")), "{\"best_epoch\":3,\"val_iou\":0.5}\n");
    ck_assert_int_eq(ml_results_summary(r, "{\"best_epoch\":4}"), ML_OK);
    ck_assert_str_eq(slurp(in_run(r, "summary.json")), "{\"best_epoch\":4}\n");
    /* Invalid JSON or not an object: refused, previous summary intact. */
    ck_assert_int_eq(ml_results_summary(r, "{\"best_epoch\":}"), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "summary is not valid JSON"));
    ck_assert_int_eq(ml_results_summary(r, "[1,2]"), ML_ERR);
    ck_assert_str_eq(slurp(in_run(r, "summary.json")), "{\"best_epoch\":4}\n");
    ck_assert(no_tmp_files(ml_results_dir(r)));

    /* The atomic writer: a failing rename (target is a directory) leaves it as it was. */
    const char *d = in_run(r, "checkpoints");
    ck_assert_int_eq(ml_write_file_atomic(d, "x", 1), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "rename failed"));
    ck_assert(is_dir(d));
    ck_assert(no_tmp_files(ml_results_dir(r)));
    ml_results_close(r);
    rm_rf(base);
}
END_TEST

START_TEST(json_builder_escaping) {
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, "s", "quote\" back\\ nl\n tab\t ctl\x01 utf8 \xc3\xa9");
    ml_json_num(&j, "x", 0.1);
    ml_json_num(&j, "third", 1.0 / 3.0);
    ml_json_num(&j, "nan", NAN);
    ml_json_num(&j, "inf", -INFINITY);
    ml_json_num(&j, "whole", 1e15);
    ml_json_int(&j, "big", INT64_C(9007199254740993));
    ml_json_str(&j, "null", NULL);
    ml_json_raw(&j, "arr", "[1,{\"k\":[]}]");
    ml_json_str(&j, "key \"q\"", "v");
    const char *t = ml_json_end(&j);
    ck_assert_str_eq(t, "{\"s\":\"quote\\\" back\\\\ nl\\n tab\\t ctl\\u0001 utf8 \xc3\xa9\","
                        "\"x\":0.1,\"third\":0.3333333333333333,\"nan\":null,\"inf\":null,"
                        "\"whole\":1000000000000000,\"big\":9007199254740993,\"null\":null,"
                        "\"arr\":[1,{\"k\":[]}],\"key \\\"q\\\"\":\"v\"}");
    ml_jv *v = ml_jv_parse(t, strlen(t));
    ck_assert_msg(v != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_jv_get(v, "s")->str, "quote\" back\\ nl\n tab\t ctl\x01 utf8 \xc3\xa9");
    ck_assert(ml_jv_get(v, "third")->num == 1.0 / 3.0);
    ck_assert_int_eq(ml_jv_get(v, "big")->i, INT64_C(9007199254740993));
    ck_assert_int_eq(ml_jv_get(v, "nan")->type, ML_JV_NULL);
    ck_assert_int_eq(ml_jv_get(v, "arr")->n, 2);
    ck_assert_ptr_nonnull(ml_jv_get(v, "key \"q\""));
    ml_jv_free(v);
    ml_json_free(&j);
    ml_json_free(&j); /* twice is harmless */
}
END_TEST

START_TEST(json_parser_strict) {
    static const char *bad[] = {
        "", "{", "{\"a\":1,}", "[1,]", "{\"a\":1}x", "{\"a\":1,\"a\":2}", "{a:1}", "\"\\x\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"a\x01\"", "\"\xff\"", "\"\xc0\xaf\"", "01", "1.", "-",
        "1e", "tru", "nul", "\"\\u0000\"", "'a'", "[1 2]", "\"abc",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ml_jv *v = ml_jv_parse(bad[i], strlen(bad[i]));
        ck_assert_msg(v == NULL, "accepted bad JSON #%zu: %s", i, bad[i]);
        ck_assert_ptr_nonnull(strstr(ml_error(), "at byte"));
    }
    ml_jv *v = ml_jv_parse("{\"a\":1,\"a\":2}", 13);
    ck_assert_ptr_null(v);
    ck_assert_str_eq(ml_error(), "duplicate object key at byte 7");

    static const char *good[] = {
        " {\"a\": [1, -2.5e3, true, false, null, \"\\u00e9\\ud83d\\ude00\\/\"]} \n", "0", "-0.0",
        "[]", "{}", "\"\"", "123456789012345678",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        v = ml_jv_parse(good[i], strlen(good[i]));
        ck_assert_msg(v != NULL, "refused good JSON #%zu: %s (%s)", i, good[i], ml_error());
        if (i == 0) ck_assert_str_eq(ml_jv_get(v, "a")->items[5].str, "\xc3\xa9\xf0\x9f\x98\x80/");
        if (i == 6) ck_assert_int_eq(v->i, INT64_C(123456789012345678));
        ml_jv_free(v);
    }
    /* Nesting is bounded. */
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    ck_assert_ptr_null(ml_jv_parse(deep, 200));
    ck_assert_ptr_nonnull(strstr(ml_error(), "nesting"));
    ck_assert_ptr_nonnull(v = ml_jv_parse(deep + 40, 120));
    ml_jv_free(v);
}
END_TEST

/* docs/results.md's recipe for Python reads a checkpoint moelab wrote: every tensor's name,
   shape and values (compared with moelab's own reader) and the whole-file checksum. */
START_TEST(python_reads_checkpoints) {
    char dir[256], ck[512];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("pyread"));
    int rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml train.epochs=1 results.dir=%s results.run_id=r", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    snprintf(ck, sizeof ck, "%s/test-synth/r/checkpoints/last.safetensors", dir);
    rc = tu_sh("python3 tests/fixtures/results/read_checkpoint.py %s", ck);
    ck_assert_msg(rc == 0, "python3 could not read the checkpoint (make test installs python3):\n%s", tu_out);
    ck_assert_msg(strstr(tu_out, "checksum ok 1\n"), "%s", tu_out);
    ml_st_file *f = ml_st_open(ck);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert_int_gt(ml_st_count(f), 20);
    for (int i = 0; i < ml_st_count(f); i++) {
        const char *name = ml_st_name(f, i);
        int nd;
        int64_t shape[8], n = 1;
        const float *v = ml_st_get(f, name, &nd, shape);
        ck_assert_ptr_nonnull(v);
        char want[256];
        int k = snprintf(want, sizeof want, "%s ", name);
        for (int d = 0; d < nd; d++) {
            k += snprintf(want + k, sizeof want - (size_t)k, "%s%lld", d ? "x" : "", (long long)shape[d]);
            n *= shape[d];
        }
        double sum = 0; /* Python's sum(): doubles, left to right */
        for (int64_t j = 0; j < n; j++) sum += v[j];
        snprintf(want + k, sizeof want - (size_t)k, " %.9g\n", sum);
        ck_assert_msg(strstr(tu_out, want), "Python did not read '%s' as moelab does:\n%s", want, tu_out);
    }
    ck_assert_ptr_nonnull(strstr(tu_out, "moe1.router.w 4x16 "));
    ck_assert_ptr_nonnull(strstr(tu_out, "moe1.expert0.w1 32x16 "));
    ml_st_close(f);
    tu_rm_rf(dir);
}
END_TEST

static Suite *results_suite(void) {
    Suite *s = suite_create("results");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, run_dir_and_refusal);
    tcase_add_test(tc, run_dir_lock);
    tcase_add_test(tc, metrics_columns_grow);
    tcase_add_test(tc, routing_rows);
    tcase_add_test(tc, events_lines);
    tcase_add_test(tc, summary_atomic);
    tcase_add_test(tc, json_builder_escaping);
    tcase_add_test(tc, json_parser_strict);
    tcase_add_test(tc, python_reads_checkpoints);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(results_suite()); }
