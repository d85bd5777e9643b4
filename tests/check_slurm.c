/* check_slurm.c — the SLURM launcher against a real SLURM: a single-node cluster
 * (slurmctld, slurmd and munged of Debian's packages) that this suite starts itself with
 * tools/slurm-cluster.sh in a temporary directory and stops at the end, also when a test
 * fails or the suite is signalled. It fails, with the daemons' log tails, when the cluster
 * cannot start: it never skips.
 *
 * A 2 x 2-seed sweep as a job array gives bitwise the runs of the local launcher (paths
 * with spaces and quotes); --no-wait, then --status, then a running task requeued by
 * `scontrol requeue` resumes from its interrupt checkpoint to the same bits as a run never
 * interrupted; Ctrl-C on the waiting command cancels the array and the runs save their
 * checkpoints; settings that may not go into a script are refused before anything is
 * submitted; sbatch's own refusals and a missing sbatch give one-line errors. */
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "study/slurm.h"
#include "study/sweep.h"
#include "base/common.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"
#define GRID "router.k=1,2 train.seed=1,2 train.epochs=2"

/* ------------------------------------------------------------------ the cluster */

static char g_cluster[256];    /* its directory, while it may be running */
static pid_t g_owner;          /* the process that started it (not Check's test children) */
static int g_started;
static char g_start_log[1 << 14];

static void stop_cluster(void) {
    if (!g_cluster[0] || getpid() != g_owner) return;
    pid_t p = fork();
    if (p == 0) {
        execl("/bin/sh", "sh", "tools/slurm-cluster.sh", "stop", g_cluster, (char *)NULL);
        _exit(127);
    }
    if (p > 0)
        while (waitpid(p, NULL, 0) < 0 && errno == EINTR) {}
    g_cluster[0] = 0;
}

static void on_fatal_signal(int sig) {
    stop_cluster(); /* fork, exec and waitpid only: safe here */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void start_cluster(void) {
    const char *d = tu_tmpdir("slurmcluster");
    if (!d) {
        snprintf(g_start_log, sizeof g_start_log, "cannot create a directory under /tmp");
        return;
    }
    snprintf(g_cluster, sizeof g_cluster, "%s", d);
    g_owner = getpid();
    atexit(stop_cluster);
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    signal(SIGHUP, on_fatal_signal);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "sh tools/slurm-cluster.sh start '%s' 2>&1", g_cluster);
    double t0 = ml_now();
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(g_start_log, sizeof g_start_log, "cannot run %s", cmd);
        return;
    }
    size_t n = fread(g_start_log, 1, sizeof g_start_log - 1, p);
    g_start_log[n] = 0;
    int st = pclose(p);
    g_started = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (g_started) {
        char conf[300];
        snprintf(conf, sizeof conf, "%s/slurm.conf", g_cluster);
        setenv("SLURM_CONF", conf, 1);
        fprintf(stderr, "check_slurm: single-node cluster up in %.1f s (%s)\n", ml_now() - t0, g_cluster);
    }
}

#define NEED_CLUSTER() \
    ck_assert_msg(g_started, "the test cluster did not start (tools/slurm-cluster.sh start):\n%s", g_start_log)

/* ------------------------------------------------------------------ helpers */

static void assert_out(const char *needle) {
    ck_assert_msg(strstr(tu_out, needle) != NULL, "expected '%s' in:\n%s", needle, tu_out);
}

/* metrics.csv without the wall-clock column `seconds` (owned). */
static char *metrics_no_clock(const char *path) {
    char *t = tu_slurp(path, NULL);
    ck_assert_msg(t != NULL, "cannot read %s", path);
    char *o = calloc(strlen(t) + 1, 1), *q = o;
    int col = -1, c = 0;
    for (char *p = t; *p && *p != '\n'; c++) {
        size_t n = strcspn(p, ",\n");
        if (n == 7 && !strncmp(p, "seconds", 7)) col = c;
        p += n;
        if (*p == ',') p++;
    }
    ck_assert_int_ge(col, 0);
    c = 0;
    int first = 1;
    for (char *p = t; *p; p++) {
        if (*p == '\n') {
            *q++ = '\n';
            c = 0;
            first = 1;
            continue;
        }
        if (*p == ',') {
            c++;
            continue;
        }
        if (c == col) continue;
        if (p == t || p[-1] == ',' || p[-1] == '\n') {
            if (!first) *q++ = ',';
            first = 0;
        }
        *q++ = *p;
    }
    free(t);
    return o;
}

/* Two run directories hold the same run: metrics (but the clock) and every checkpoint's
   tensors, bit for bit. */
static void same_run(const char *a, const char *b) {
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/metrics.csv", a);
    snprintf(pb, sizeof pb, "%s/metrics.csv", b);
    char *ma = metrics_no_clock(pa), *mb = metrics_no_clock(pb);
    ck_assert_msg(!strcmp(ma, mb), "metrics differ:\n%s: %s\n%s: %s", pa, ma, pb, mb);
    free(ma);
    free(mb);
    const char *tags[] = {"last", "best"};
    for (int i = 0; i < 2; i++) {
        snprintf(pa, sizeof pa, "%s/checkpoints/%s.safetensors", a, tags[i]);
        snprintf(pb, sizeof pb, "%s/checkpoints/%s.safetensors", b, tags[i]);
        size_t na = 0, nb = 0;
        char *ta = tu_tensor_bytes(pa, &na), *tb = tu_tensor_bytes(pb, &nb);
        ck_assert_msg(ta && tb, "cannot read %s or %s", pa, pb);
        ck_assert_msg(na == nb && !memcmp(ta, tb, na), "%s and %s differ", pa, pb);
        free(ta);
        free(tb);
    }
}

/* The job id the manifest of sweep dir records. */
static void manifest_job(const char *dir, char *job, size_t cap) {
    ml_sweep *s = ml_sweep_open(dir);
    ck_assert_msg(s != NULL, "%s", ml_error());
    snprintf(job, cap, "%s", s->launcher.job_id);
    ml_sweep_free(s);
    ck_assert_msg(*job, "no job id in %s/sweep.yaml", dir);
}

/* Waits until pred(arg) or timeout seconds pass; returns pred's last answer. */
static int wait_for(int (*pred)(const char *), const char *arg, double timeout) {
    double end = ml_now() + timeout;
    while (!pred(arg) && ml_now() < end) usleep(50 * 1000);
    return pred(arg);
}

static int run_running(const char *dir) { return ml_sweep_dir_state(dir) == ML_RUN_RUNNING; }

static int task_pending(const char *task) { /* "J_i" listed as PENDING */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "squeue --noheader --array --jobs=%.20s --format='%%i %%T' | grep -qx '%s PENDING'", task,
             task);
    return system(cmd) == 0;
}

static int queue_empty(const char *unused) {
    (void)unused;
    FILE *p = popen("squeue --noheader --format=%i 2>&1", "r");
    char line[256];
    int empty = p && !fgets(line, sizeof line, p);
    if (p) pclose(p);
    return empty;
}

/* ------------------------------------------------------------------ tests */

START_TEST(array_specs_and_settings) {
    char b[256];
    ck_assert_int_eq(ml_slurm_array_spec((int[]){0, 1, 2, 3, 5, 7, 8, 9}, 8, 2, b, sizeof b), ML_OK);
    ck_assert_str_eq(b, "0-3,5,7-9%2");
    ck_assert_int_eq(ml_slurm_array_spec((int[]){4}, 1, 0, b, sizeof b), ML_OK);
    ck_assert_str_eq(b, "4");
    const char *good[][2] = {{"partition", "gpu"}, {"partition", "short,long"}, {"time", "30"}, {"time", "1-12:00:00"},
                             {"time", "04:00"}, {"time", "UNLIMITED"}, {"mem", "16G"}, {"mem", "4000"},
                             {"account", "proj_x-1"}, {"qos", "high.prio"}, {"sbatch", "--gres=gpu:1"},
                             {"sbatch", "--constraint=\"a100|h100\""}, {"sbatch", "--exclusive"}, {"sbatch", "--nice 10"}};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        ck_assert_msg(!ml_slurm_check_setting(good[i][0], good[i][1]), "%s '%s' refused: %s", good[i][0], good[i][1],
                      ml_slurm_check_setting(good[i][0], good[i][1]));
    const char *bad[][2] = {{"partition", "a;b"}, {"partition", "$(id)"}, {"partition", "-x"}, {"time", "1h"},
                            {"time", "1:2:3:4"}, {"mem", "16GB"}, {"mem", "G"}, {"account", "a b"}, {"qos", "`x`"},
                            {"sbatch", "x"}, {"sbatch", "-p gpu"}, {"sbatch", "--gres=gpu:1\nrm -rf /"},
                            {"sbatch", "--array=1-9"}, {"sbatch", "--arr=1"}, {"sbatch", "--output=/x"},
                            {"sbatch", "--job-name=x"}, {"sbatch", "--wrap=id"}, {"sbatch", "--cpus-per-task=8"},
                            {"sbatch", ""}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(ml_slurm_check_setting(bad[i][0], bad[i][1]) != NULL, "%s '%s' accepted", bad[i][0], bad[i][1]);
}
END_TEST

START_TEST(cluster_is_up) {
    NEED_CLUSTER();
    int rc = tu_sh("sinfo --noheader --format='%%P %%T %%c'");
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("test* idle");
    /* the script removes only what it made, and starts only in an empty directory */
    const char *d = tu_tmpdir("slurmnot");
    char dir[300];
    snprintf(dir, sizeof dir, "%s", d);
    FILE *f = fopen(tu_path("%s/keep", dir), "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    rc = tu_sh("sh tools/slurm-cluster.sh stop %s", dir);
    ck_assert_int_eq(rc, 1);
    assert_out("was not made by");
    rc = tu_sh("sh tools/slurm-cluster.sh start %s", dir);
    ck_assert_int_eq(rc, 1);
    assert_out("is not empty");
    ck_assert_int_eq(access(tu_path("%s/keep", dir), F_OK), 0);
    tu_rm_rf(dir);
}
END_TEST

/* The same 2 x 2-seed grid with both launchers (threads 1 each: --jobs 2 on this 2-CPU
   machine, and cpus-per-task 1): every run the same bits. The SLURM sweep lives under a
   path with a space and a quote, which the script must carry intact. */
START_TEST(slurm_sweep_matches_local) {
    NEED_CLUSTER();
    const char *tmp = tu_tmpdir("slurmsweep");
    char res[400], odd[500];
    snprintf(res, sizeof res, "%s", tmp);
    snprintf(odd, sizeof odd, "%s/it's a dir", res);
    ck_assert_int_eq(mkdir(odd, 0777), 0);
    double t0 = ml_now();
    int rc = tu_sh("%s/moelab sweep " SYNTH " " GRID " results.dir=%s/local --jobs 2 --name s", tu_build(), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    double t1 = ml_now();
    rc = tu_sh("%s/moelab sweep " SYNTH " " GRID " \"results.dir=\\\"%s\\\"\" --jobs 2 --name s --launcher slurm --poll 0.3",
               tu_build(), odd);
    ck_assert_msg(rc == 0, "%s", tu_out);
    fprintf(stderr, "check_slurm: 4 runs: local %.1f s, slurm %.1f s\n", t1 - t0, ml_now() - t1);
    assert_out("4 runs, 4 to do, as a SLURM job array");
    assert_out("submitted SLURM job ");
    assert_out("] 003 ok in");
    assert_out("4 of 4 runs finished");
    char sw[700], lw[700], a[800], b[800];
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/s", odd);
    snprintf(lw, sizeof lw, "%s/local/test-synth/sweeps/s", res);
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof a, "%s/00%d", lw, i);
        snprintf(b, sizeof b, "%s/00%d", sw, i);
        same_run(a, b);
    }
    /* the script: what the brief of docs/studies.md says it holds */
    char *script = tu_slurp(tu_path("%s/slurm/sweep.sbatch", sw), NULL);
    ck_assert_ptr_nonnull(script);
    const char *want[] = {"#SBATCH --array=0-3\n", "#SBATCH --cpus-per-task=1\n", "#SBATCH --requeue\n",
                          "#SBATCH --signal=B:TERM@60\n", "#SBATCH --job-name=moelab-s\n", "--open-mode=append",
                          "/it's a dir/test-synth/sweeps/s/slurm/%A_%a.out\"\n", "SWEEP='", "'\\''s a dir",
                          "exec \"$MOELAB\" sweep --task \"$SWEEP\" \"$SLURM_ARRAY_TASK_ID\" --log\n"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        ck_assert_msg(strstr(script, want[i]), "expected '%s' in the script:\n%s", want[i], script);
    free(script);
    char job[64];
    manifest_job(sw, job, sizeof job);
    ck_assert_int_eq(access(tu_path("%s/slurm/", sw), F_OK), 0);
    char out[900];
    snprintf(out, sizeof out, "%s/slurm/%s_2.out", sw, job);
    char *o = tu_slurp(out, NULL);
    ck_assert_msg(o && strstr(o, "moelab sweep: run 002, attempt 1 (SLURM job "), "%s: %s", out, o ? o : "(missing)");
    free(o);
    char *log = tu_slurp(tu_path("%s/logs/002.log", sw), NULL);
    ck_assert_msg(log && strstr(log, "moelab sweep: attempt 1 (SLURM job ") && strstr(log, "moelab: done;"), "%s",
                  log ? log : "(no log)");
    free(log);
    /* again: nothing to submit */
    rc = tu_sh("%s/moelab sweep " SYNTH " " GRID " \"results.dir=\\\"%s\\\"\" --jobs 2 --name s --launcher slurm --poll 0.3",
               tu_build(), odd);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("4 runs, 0 to do");
    ck_assert_ptr_null(strstr(tu_out, "submitted"));
    rc = tu_sh("%s/moelab sweep --status \"%s\"", tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("4 runs: 4 ok");
    tu_rm_rf(res);
}
END_TEST

/* --no-wait returns at once with the job queued; --status counts its tasks; a task
   requeued while its run trains (what preemption does: SIGTERM, then back to the queue)
   resumes from its interrupt checkpoint, and the same command again waits for the array
   instead of submitting it twice. The run ends as one never interrupted. */
START_TEST(no_wait_status_and_requeue) {
    NEED_CLUSTER();
    const char *tmp = tu_tmpdir("slurmrq");
    char res[400], cmd[1200], sw[700], job[64], task[96];
    snprintf(res, sizeof res, "%s", tmp);
    snprintf(cmd, sizeof cmd,
             "%s/moelab sweep " SYNTH " router.k=1 train.seed=1,2 train.epochs=2 results.dir=%s --jobs 2 --name rq "
             "--launcher slurm --poll 0.3",
             tu_build(), res);
    int rc = tu_sh("MOELAB_TEST_STEP_SLEEP_MS=25 %s --no-wait", cmd);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("not waiting (--no-wait)");
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/rq", res);
    manifest_job(sw, job, sizeof job);
    char run0[800];
    snprintf(run0, sizeof run0, "%s/000", sw);
    ck_assert_msg(wait_for(run_running, run0, 60), "run 000 did not start");
    rc = tu_sh("%s/moelab sweep --status %s", tu_build(), sw);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("000    running");
    assert_out("tasks queued or running");
    usleep(600 * 1000); /* well inside its training loop (48 steps of 25 ms an epoch) */
    snprintf(task, sizeof task, "%s_0", job);
    rc = tu_sh("scontrol requeue %s", task);
    ck_assert_msg(rc == 0, "%s", tu_out);
    ck_assert_msg(wait_for(task_pending, task, 60), "task %s was not requeued", task);
    /* a requeued job waits 2 minutes before it may start again: not in a test. Not at once
       either: slurmd refuses to launch a job again within the second it was killed in
       ("Job N already killed, do not launch batch job"), and the task would fail. */
    rc = tu_sh("scontrol update JobId=%s StartTime=now+2", task);
    ck_assert_msg(rc == 0, "%s", tu_out);
    rc = tu_sh("%s", cmd);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("still has ");
    assert_out("waiting for it");
    assert_out("2 of 2 runs finished");
    ck_assert_ptr_null(strstr(tu_out, "submitted"));
    char *log = tu_slurp(tu_path("%s/logs/000.log", sw), NULL);
    ck_assert_ptr_nonnull(log);
    ck_assert_msg(strstr(log, "moelab: interrupted at epoch") && strstr(log, "restart 1): ") &&
                      strstr(log, " run --resume "),
                  "expected an interrupt, then a resume in the requeued task:\n%s", log);
    free(log);
    rc = tu_sh("%s/moelab sweep --status %s", tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("000    ok           2 ");
    /* the same run, never interrupted */
    rc = tu_sh("%s/moelab run " SYNTH " router.k=1 train.seed=1 train.epochs=2 train.threads=1 results.dir=%s "
               "results.run_id=straight",
               tu_build(), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    same_run(tu_path("%s/test-synth/straight", res), run0);
    tu_rm_rf(res);
}
END_TEST

/* Ctrl-C on the waiting command cancels the array: running runs save their interrupt
   checkpoints, the command exits 130; the same command again finishes them. */
START_TEST(ctrl_c_cancels_the_array) {
    NEED_CLUSTER();
    const char *tmp = tu_tmpdir("slurmint");
    char res[400], cmd[1200], outf[500], sw[700];
    snprintf(res, sizeof res, "%s", tmp);
    snprintf(outf, sizeof outf, "%s/out.txt", res);
    snprintf(cmd, sizeof cmd,
             "exec %s/moelab sweep " SYNTH " router.k=2 train.seed=1,2,3 train.epochs=2 results.dir=%s --jobs 2 "
             "--name c --launcher slurm --poll 0.3 >%s 2>&1",
             tu_build(), res, outf);
    pid_t p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) {
        setenv("MOELAB_TEST_STEP_SLEEP_MS", "25", 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/c", res);
    int up = wait_for(run_running, tu_path("%s/000", sw), 60) && wait_for(run_running, tu_path("%s/001", sw), 60);
    usleep(400 * 1000);
    kill(p, SIGINT);
    int st;
    ck_assert_int_eq(waitpid(p, &st, 0), p);
    char *o = tu_slurp(outf, NULL);
    ck_assert_msg(up, "runs 000 and 001 did not start:\n%s", o ? o : "");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 130, "expected exit 130:\n%s", o ? o : "");
    ck_assert_msg(strstr(o, "cancelling SLURM job") && strstr(o, "] 000 interrupted in") &&
                      strstr(o, "002 pending") && strstr(o, "cancelled before it started"),
                  "%s", o);
    free(o);
    ck_assert_int_eq(ml_sweep_dir_state(tu_path("%s/000", sw)), ML_RUN_INTERRUPTED);
    ck_assert_int_eq(access(tu_path("%s/000/checkpoints/interrupt.safetensors", sw), F_OK), 0);
    ck_assert_msg(wait_for(queue_empty, NULL, 30), "tasks left in the queue after the cancel");
    int rc = tu_sh("%s/moelab sweep " SYNTH " router.k=2 train.seed=1,2,3 train.epochs=2 results.dir=%s --jobs 2 "
                   "--name c --launcher slurm --poll 0.3",
                   tu_build(), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("3 runs, 3 to do");
    assert_out("3 of 3 runs finished");
    char *log = tu_slurp(tu_path("%s/logs/000.log", sw), NULL);
    ck_assert_msg(log && strstr(log, " run --resume "), "%s", log ? log : "(no log)");
    free(log);
    tu_rm_rf(res);
}
END_TEST

/* What may not go into a script is refused before anything is created or submitted
   (exit 2, naming the setting); sbatch's own refusal and a missing sbatch are one line
   (exit 1). */
START_TEST(bad_settings_refused) {
    NEED_CLUSTER();
    const char *tmp = tu_tmpdir("slurmbad");
    char res[400];
    snprintf(res, sizeof res, "%s", tmp);
    const char *b = tu_build();
    struct {
        const char *opts, *msg;
    } cases[] = {
        {"--partition 'a;touch /tmp/pwned'", "--partition 'a;touch /tmp/pwned': expected a partition name"},
        {"--time '$(id)'", "expected a SLURM time limit"},
        {"--mem 16GB", "expected a memory size"},
        {"--account 'a b'", "expected a name of letters"},
        {"--qos '`id`'", "--qos '`id`'"},
        {"--sbatch 'rm -rf /'", "expected one long sbatch option"},
        {"--sbatch \"$(printf -- '--gres=gpu:1\\nid')\"", "has a control character"},
        {"--sbatch --array=0-99", "sets --array itself"},
        {"--sbatch --out=/tmp/x", "task output goes to"},
        {"--sbatch --job-name=x", "finds its tasks by that name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = tu_sh("%s/moelab sweep " SYNTH " router.k=1,2 results.dir=%s --launcher slurm %s", b, res, cases[i].opts);
        ck_assert_msg(rc == 2, "%s: exit %d\n%s", cases[i].opts, rc, tu_out);
        assert_out(cases[i].msg);
        ck_assert_msg(!strchr(tu_out, '\n') || strchr(tu_out, '\n')[1] == 0, "not one line: %s", tu_out);
    }
    ck_assert_int_ne(access(tu_path("%s/test-synth", res), F_OK), 0); /* nothing created */
    ck_assert_int_ne(access("/tmp/pwned", F_OK), 0);
    /* the config's launcher: section, with its place */
    FILE *f = fopen(tu_path("%s/l.yaml", res), "w");
    ck_assert_ptr_nonnull(f);
    char here[512];
    ck_assert_ptr_nonnull(getcwd(here, sizeof here));
    fprintf(f, "base: %s/" SYNTH "\nlauncher:\n  name: slurm\n  partition: gpu\n  sbatch: [\"--gres=gpu:1\", \"--wrap=id\"]\n",
            here);
    fclose(f);
    int rc = tu_sh("%s/moelab sweep %s/l.yaml router.k=1,2 results.dir=%s", b, res, res);
    ck_assert_msg(rc == 2, "%s", tu_out);
    assert_out("l.yaml:5:");
    assert_out("launcher.sbatch '--wrap=id': the sweep submits its own script");
    /* a manifest edited by hand is checked again before its script is written */
    rc = tu_sh("%s/moelab sweep " SYNTH " router.k=1,2 results.dir=%s --name m --no-wait --launcher slurm "
               "--partition nosuch --max-parallel 3 --time 1-00:30 --mem 2G --sbatch --exclusive",
               b, res);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("sbatch failed (exit 1): ");
    assert_out("nosuch");
    char sw[700];
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/m", res);
    char *script = tu_slurp(tu_path("%s/slurm/sweep.sbatch", sw), NULL);
    ck_assert_ptr_nonnull(script);
    ck_assert_msg(strstr(script, "#SBATCH --array=0-1%3\n") && strstr(script, "#SBATCH --partition=nosuch\n") &&
                      strstr(script, "#SBATCH --time=1-00:30\n") && strstr(script, "#SBATCH --mem=2G\n") &&
                      strstr(script, "#SBATCH --exclusive\n"),
                  "%s", script);
    free(script);
    rc = tu_sh("sed -i 's/partition: \"nosuch\"/partition: \"x;id\"/' %s/sweep.yaml && %s/moelab sweep --resume %s", sw, b,
               sw);
    ck_assert_msg(rc == 2, "%s", tu_out);
    assert_out("launcher partition 'x;id'");
    /* so is its job id, which goes into squeue's and scancel's arguments */
    rc = tu_sh("sed -i -e 's/partition: \"x;id\"/partition: \"\"/' -e 's/job_id: \"\"/job_id: \"--user=root\"/' "
               "%s/sweep.yaml && %s/moelab sweep --resume %s",
               sw, b, sw);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("launcher job_id '--user=root' in the manifest is not a SLURM job id");
    /* no sbatch on PATH */
    rc = tu_sh("PATH=/nonexistent %s/moelab sweep " SYNTH " router.k=1,2 results.dir=%s --name n --launcher slurm", b,
               res);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("cannot run sbatch: No such file or directory");
    /* no controller listening (the cluster's slurm.conf with another port) */
    rc = tu_sh("sed -e 's/^SlurmctldPort=.*/SlurmctldPort=1/' -e 's/^MessageTimeout=.*/MessageTimeout=2/' %s > %s/dead.conf",
               getenv("SLURM_CONF"), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    rc = tu_sh("SLURM_CONF=%s/dead.conf %s/moelab sweep " SYNTH " router.k=1,2 results.dir=%s --name d --launcher slurm",
               res, b, res);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("moelab: sweep: sbatch failed (exit 1): sbatch: error: Batch job submission failed: Unable to contact "
               "slurm controller");
    /* --no-wait belongs to the slurm launcher; nothing of all this reached the queue */
    rc = tu_sh("%s/moelab sweep " SYNTH " router.k=1,2 results.dir=%s --name l --no-wait", b, res);
    ck_assert_int_eq(rc, 2);
    assert_out("--no-wait goes with --launcher slurm");
    ck_assert_msg(queue_empty(NULL), "something was submitted");
    tu_rm_rf(res);
}
END_TEST

START_TEST(help_names_the_slurm_options) {
    int rc = tu_sh("%s/moelab sweep --help", tu_build());
    ck_assert_int_eq(rc, 0);
    const char *want[] = {"--launcher", "--partition", "--time", "--mem", "--account", "--qos", "--max-parallel",
                          "--sbatch", "--no-wait", "--poll", "scancel"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) assert_out(want[i]);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("slurm");
    TCase *t = tcase_create("slurm");
    tcase_set_timeout(t, 180);
    tcase_add_test(t, array_specs_and_settings);
    tcase_add_test(t, help_names_the_slurm_options);
    tcase_add_test(t, cluster_is_up);
    tcase_add_test(t, slurm_sweep_matches_local);
    tcase_add_test(t, no_wait_status_and_requeue);
    tcase_add_test(t, ctrl_c_cancels_the_array);
    tcase_add_test(t, bad_settings_refused);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    start_cluster();
    int rc = tu_run(suite());
    stop_cluster();
    return rc;
}
