/* slurm.c — the SLURM launcher of a sweep: checked settings, the sbatch script, submission
 * and waiting by squeue (slurm.h). */
#include "study/slurm.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ settings */

/* Every byte a letter, a digit or one of extra. */
static int all_of(const char *v, const char *extra) {
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (!isalnum(*p) && !strchr(extra, *p)) return 0;
    return 1;
}

static int has_control(const char *v) {
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return 1;
    return 0;
}

/* A SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or unlimited. */
static int time_ok(const char *v) {
    if (!strcasecmp(v, "unlimited") || !strcasecmp(v, "infinite")) return 1;
    const char *p = v, *dash = strchr(v, '-');
    if (dash) {
        if (dash == v) return 0;
        for (; p < dash; p++)
            if (!isdigit((unsigned char)*p)) return 0;
        p = dash + 1;
    }
    int groups = 0;
    for (;;) {
        const char *q = p;
        while (isdigit((unsigned char)*p)) p++;
        if (p == q || p - q > 9) return 0;
        groups++;
        if (*p == 0) break;
        if (*p != ':') return 0;
        p++;
    }
    return groups <= 3;
}

/* What the sweep relies on, so that extra sbatch lines may not change it (getopt_long also
   takes an unambiguous prefix, so a prefix of these is refused too). */
static const struct { const char *opt, *why; } g_reserved[] = {
    {"array", "the sweep sets --array itself (the runs not finished; --max-parallel gives %M)"},
    {"output", "task output goes to <sweepdir>/slurm/%A_%a.out"},
    {"error", "task output goes to <sweepdir>/slurm/%A_%a.out"},
    {"open-mode", "task output is appended across requeues"},
    {"job-name", "the job is named moelab-<sweep id>: the sweep finds its tasks by that name"},
    {"cpus-per-task", "each task gets the runs' threads; set train.threads=T instead"},
    {"parsable", "the sweep submits the script itself"},
    {"wrap", "the sweep submits its own script"},
    {"wait", "the sweep waits for the array itself (or not, with --no-wait)"},
};

static const char *sbatch_line_check(const char *v) {
    if (strlen(v) > 1000) return "longer than 1000 characters";
    if (has_control(v)) return "has a control character (one #SBATCH line, no newline)";
    if (strncmp(v, "--", 2) || !isalnum((unsigned char)v[2]))
        return "expected one long sbatch option, --name or --name=value (e.g. --gres=gpu:1)";
    size_t n = 2;
    while (isalnum((unsigned char)v[n]) || v[n] == '-' || v[n] == '_') n++;
    if (v[n] && v[n] != '=' && v[n] != ' ')
        return "expected one long sbatch option, --name or --name=value (e.g. --gres=gpu:1)";
    size_t len = n - 2;
    for (size_t i = 0; i < sizeof g_reserved / sizeof *g_reserved; i++)
        if (len <= strlen(g_reserved[i].opt) && !strncmp(v + 2, g_reserved[i].opt, len)) return g_reserved[i].why;
    return NULL;
}

const char *ml_slurm_check_setting(const char *key, const char *v) {
    if (!strcmp(key, "sbatch")) return sbatch_line_check(v);
    if (!*v) return NULL;
    if (strlen(v) > 100) return "longer than 100 characters";
    if (!strcmp(key, "partition"))
        return all_of(v, "_.-,") && v[0] != ',' && v[0] != '-' && !strstr(v, ",,")
                   ? NULL : "expected a partition name (letters, digits, '_', '.', '-'; ',' between several)";
    if (!strcmp(key, "account") || !strcmp(key, "qos"))
        return all_of(v, "_.-") && v[0] != '-' ? NULL : "expected a name of letters, digits, '_', '.' and '-'";
    if (!strcmp(key, "time"))
        return time_ok(v) ? NULL
                          : "expected a SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED";
    if (!strcmp(key, "mem")) {
        const char *p = v;
        while (isdigit((unsigned char)*p)) p++;
        if (p > v && p - v <= 12 && (!*p || (strchr("KMGTkmgt", *p) && !p[1]))) return NULL;
        return "expected a memory size: a number of megabytes, or with a unit K, M, G or T (e.g. 16G)";
    }
    return "not a launcher setting";
}

const char *ml_slurm_visible(const char *v, char *out, size_t cap) {
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p && k + 5 < cap; p++) {
        if (*p == '\n') k += (size_t)snprintf(out + k, cap - k, "\\n");
        else if (*p == '\t') k += (size_t)snprintf(out + k, cap - k, "\\t");
        else if (*p < 0x20 || *p == 0x7f) k += (size_t)snprintf(out + k, cap - k, "\\x%02x", *p);
        else out[k++] = (char)*p;
    }
    out[k] = 0;
    return out;
}

int ml_slurm_check_launcher(const ml_sweep_launcher *l) {
    const char *keys[] = {"partition", "time", "mem", "account", "qos"};
    const char *vals[] = {l->partition, l->time, l->mem, l->account, l->qos};
    char vis[256];
    for (int k = 0; k < 5; k++) {
        const char *why = ml_slurm_check_setting(keys[k], vals[k]);
        if (why) return ml_errorf("sweep: launcher %s '%s': %s", keys[k], ml_slurm_visible(vals[k], vis, sizeof vis), why);
    }
    for (int i = 0; i < l->n_sbatch; i++) {
        const char *why = ml_slurm_check_setting("sbatch", l->sbatch[i]);
        if (why)
            return ml_errorf("sweep: launcher sbatch line '%s': %s", ml_slurm_visible(l->sbatch[i], vis, sizeof vis), why);
    }
    if (l->max_parallel < 0) return ml_errorf("sweep: launcher max_parallel %d: expected >= 0", l->max_parallel);
    return ML_OK;
}

/* -------------------------------------------------------------------- script */

int ml_slurm_array_spec(const int *idx, int n, int max_parallel, char *out, size_t cap) {
    ml_strbuf b = {0};
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && idx[j + 1] == idx[j] + 1) j++;
        if (j > i) ml_strbuf_printf(&b, "%s%d-%d", i ? "," : "", idx[i], idx[j]);
        else ml_strbuf_printf(&b, "%s%d", i ? "," : "", idx[i]);
        i = j + 1;
    }
    if (max_parallel > 0) ml_strbuf_printf(&b, "%%%d", max_parallel);
    int rc = ML_OK;
    if (b.oom || !b.buf) rc = ml_errorf("sweep: out of memory");
    else if ((size_t)snprintf(out, cap, "%s", b.buf) >= cap)
        rc = ml_errorf("sweep: the --array list of %d runs is too long (%zu bytes)", n, b.len);
    ml_strbuf_free(&b);
    return rc;
}

/* s as one single-quoted shell word ('\'' for each quote). */
static void shell_word(ml_strbuf *b, const char *s) {
    ml_strbuf_puts(b, "'");
    for (const char *p = s; *p; p++) {
        if (*p == '\'') ml_strbuf_puts(b, "'\\''");
        else ml_strbuf_put(b, p, 1);
    }
    ml_strbuf_puts(b, "'");
}

/* A path that may go, double-quoted, into an #SBATCH line: sbatch reads no escapes there,
   and in --output a '\' turns the %A/%a patterns off and '%' starts one. */
static int sbatch_path_ok(const char *p) {
    return !has_control(p) && !strpbrk(p, "\"\\%");
}

static void job_name(const ml_sweep *s, char *out, size_t cap) {
    snprintf(out, cap, "moelab-%s", s->id);
    for (char *p = out; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_.-", *p)) *p = '_';
}

int ml_slurm_write_script(const ml_sweep *s, const int *idx, int n, char *path, size_t cap) {
    if (ml_slurm_check_launcher(&s->launcher)) return ML_ERR;
    if (!sbatch_path_ok(s->dir))
        return ml_errorf("sweep: the slurm launcher cannot name %s in an #SBATCH line (it has '\"', '\\', '%%' or a "
                         "control character); hint: choose a results.dir without them", s->dir);
    char dir[ML_PATH_MAX + 16], array[1 << 16], name[160];
    snprintf(dir, sizeof dir, "%s/slurm", s->dir);
    if (ml_mkdir_p(dir)) return ML_ERR;
    if ((size_t)snprintf(path, cap, "%s/" ML_SLURM_SCRIPT, dir) >= cap) return ml_errorf("sweep: %s: path too long", dir);
    if (ml_slurm_array_spec(idx, n, s->launcher.max_parallel, array, sizeof array)) return ML_ERR;
    job_name(s, name, sizeof name);
    const ml_sweep_launcher *L = &s->launcher;
    ml_strbuf b = {0};
    ml_strbuf_puts(&b, "#!/bin/sh\n");
    ml_strbuf_printf(&b, "# moelab sweep %s: one array task per run not yet finished (docs/studies.md, \"SLURM\").\n", s->id);
    ml_strbuf_puts(&b, "# Written by moelab for each submission (cd to this directory, then sbatch " ML_SLURM_SCRIPT ").\n");
    ml_strbuf_printf(&b, "#SBATCH --job-name=%s\n", name);
    ml_strbuf_printf(&b, "#SBATCH --array=%s\n", array);
    ml_strbuf_puts(&b, "#SBATCH --ntasks=1\n");
    ml_strbuf_printf(&b, "#SBATCH --cpus-per-task=%d\n", s->threads);
    ml_strbuf_printf(&b, "#SBATCH --output=\"%s/%%A_%%a.out\"\n", dir);
    ml_strbuf_printf(&b, "#SBATCH --error=\"%s/%%A_%%a.out\"\n", dir);
    ml_strbuf_puts(&b, "#SBATCH --open-mode=append\n");
    ml_strbuf_puts(&b, "#SBATCH --requeue\n");
    ml_strbuf_puts(&b, "#SBATCH --signal=B:TERM@60\n");
    if (*L->partition) ml_strbuf_printf(&b, "#SBATCH --partition=%s\n", L->partition);
    if (*L->time) ml_strbuf_printf(&b, "#SBATCH --time=%s\n", L->time);
    if (*L->mem) ml_strbuf_printf(&b, "#SBATCH --mem=%s\n", L->mem);
    if (*L->account) ml_strbuf_printf(&b, "#SBATCH --account=%s\n", L->account);
    if (*L->qos) ml_strbuf_printf(&b, "#SBATCH --qos=%s\n", L->qos);
    for (int i = 0; i < L->n_sbatch; i++) ml_strbuf_printf(&b, "#SBATCH %s\n", L->sbatch[i]);
    ml_strbuf_puts(&b,
                   "\n# The task becomes moelab (exec, no srun step): the SIGTERM of scancel, preemption,\n"
                   "# scontrol requeue or --signal reaches moelab itself, which saves its interrupt\n"
                   "# checkpoint; a requeued task resumes from it. SLURM_ARRAY_TASK_ID is the run's index.\n"
                   ": \"${SLURM_ARRAY_TASK_ID:?this script runs as a task of a SLURM job array}\"\n"
                   "MOELAB=");
    shell_word(&b, s->moelab);
    ml_strbuf_puts(&b, "\nSWEEP=");
    shell_word(&b, s->dir);
    ml_strbuf_puts(&b, "\nexec \"$MOELAB\" sweep --task \"$SWEEP\" \"$SLURM_ARRAY_TASK_ID\" --log\n");
    int rc = b.oom ? ml_errorf("sweep: out of memory writing the sbatch script") : ml_write_file_atomic(path, b.buf, b.len);
    ml_strbuf_free(&b);
    return rc;
}

/* ------------------------------------------------------------------ commands */

/* Variables that would override what the script says (sbatch reads SBATCH_* over #SBATCH
   lines) or change what squeue prints. */
static const char *const g_unset[] = {"SBATCH_ARRAY_INX", "SBATCH_OUTPUT", "SBATCH_ERROR", "SBATCH_OPEN_MODE",
                                      "SBATCH_JOB_NAME", "SBATCH_NO_REQUEUE", "SBATCH_WAIT", "SBATCH_CPUS_PER_TASK",
                                      "SQUEUE_STATES", "SQUEUE_FORMAT", "SQUEUE_FORMAT2", "SQUEUE_SORT",
                                      "SQUEUE_NAMES", "SQUEUE_USERS", "SQUEUE_ACCOUNT", "SQUEUE_PARTITION",
                                      "SQUEUE_QOS", "SQUEUE_ALL", "SQUEUE_ARRAY"};

/*
 * Runs argv[0] (found on PATH) in dir (NULL: here), stdin from /dev/null, in a process
 * group of its own (Ctrl-C at the terminal reaches only the sweep, which decides);
 * stdout and stderr go to *out (owned, NUL-terminated, the first 64 KiB). Returns its exit
 * status, 127 when it could not be started (*out says why), 128 + N when killed by N.
 */
static int run_cmd(char *const *argv, const char *dir, char **out) {
    *out = NULL;
    int fd[2];
    if (pipe(fd) != 0) return ml_errorf("sweep: pipe: %s", strerror(errno)), -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        ml_errorf("sweep: cannot start %s: %s", argv[0], strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        for (size_t i = 0; i < sizeof g_unset / sizeof *g_unset; i++) unsetenv(g_unset[i]);
        if (dir && chdir(dir) != 0) {
            dprintf(2, "cannot change to %s: %s", dir, strerror(errno));
            _exit(127);
        }
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1), tmp[4096];
    for (;;) {
        ssize_t k = read(fd[0], tmp, sizeof tmp);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        size_t take = (size_t)k < cap - len ? (size_t)k : cap - len;
        if (buf) memcpy(buf + len, tmp, take);
        len += take;
    }
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            st = 127 << 8;
            break;
        }
    if (!buf) return ml_errorf("sweep: out of memory"), -1;
    buf[len] = 0;
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* What a command printed, as one line: lines joined by " | ", at most ~300 bytes. */
static void one_line(const char *text, char *out, size_t cap) {
    size_t k = 0;
    const char *p = text ? text : "";
    while (*p && k + 4 < cap) {
        size_t n = strcspn(p, "\n");
        while (n && (p[n - 1] == '\r' || p[n - 1] == ' ')) n--;
        if (n) {
            if (k && k + 3 < cap) k += (size_t)snprintf(out + k, cap - k, " | ");
            size_t take = n < cap - k - 1 ? n : cap - k - 1;
            memcpy(out + k, p, take);
            k += take;
        }
        p += strcspn(p, "\n");
        if (*p) p++;
    }
    out[k < cap ? k : cap - 1] = 0;
    if (!k) snprintf(out, cap, "(nothing)");
}

static int cmd_error(const char *what, int rc, const char *text) {
    char line[400];
    one_line(text, line, sizeof line);
    if (rc == 127 && strstr(line, "cannot run"))
        return ml_errorf("sweep: %s; hint: the slurm launcher needs SLURM's commands (sbatch, squeue, scancel) on PATH",
                         line);
    return ml_errorf("sweep: %s failed (exit %d): %s", what, rc, line);
}

/* Terminal states: a task listed in one of these has ended. */
static int state_ended(const char *st) {
    static const char *const ended[] = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                                        "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"};
    for (size_t i = 0; i < sizeof ended / sizeof *ended; i++)
        if (!strcmp(st, ended[i])) return 1;
    return 0;
}

/* Marks the indices of "3", "[3-5,7%2]" in active; returns how many. */
static int mark_tasks(const char *t, unsigned char *active, int n_runs) {
    int count = 0;
    if (*t != '[') {
        char *end;
        long k = strtol(t, &end, 10);
        if (end == t) return 0;
        if (active && k >= 0 && k < n_runs) active[k] = 1;
        return 1;
    }
    t++;
    while (*t && *t != ']' && *t != '%') {
        char *end;
        long a = strtol(t, &end, 10), b = a;
        if (end == t) break;
        t = end;
        if (*t == '-') {
            b = strtol(t + 1, &end, 10);
            t = end;
        }
        for (long k = a; k <= b && k - a < 1000000; k++, count++)
            if (active && k >= 0 && k < n_runs) active[k] = 1;
        if (*t == ',') t++;
    }
    return count;
}

/* A job id as sbatch --parsable gives it (the manifest may have been edited: it goes into
   squeue's and scancel's arguments). */
static int job_id_ok(const char *id) {
    size_t n = strspn(id, "0123456789");
    if (n && n < 20 && !id[n]) return 1;
    char vis[80];
    return ml_errorf("sweep: launcher job_id '%s' in the manifest is not a SLURM job id (digits)",
                     ml_slurm_visible(id, vis, sizeof vis)), 0;
}

int ml_slurm_active(const ml_sweep *s, const char *job_id, unsigned char *active) {
    if (active) memset(active, 0, (size_t)s->n_runs);
    if (!job_id_ok(job_id)) return -1;
    char name[160], jobs[96], names[200];
    job_name(s, name, sizeof name);
    snprintf(jobs, sizeof jobs, "--jobs=%s", job_id);
    snprintf(names, sizeof names, "--name=%s", name);
    /* every state, judged here: squeue's default filter leaves out passing states (a task
       between requeue and its restart must never look ended) */
    char *argv[] = {"squeue", "--noheader", "--array", "--states=all", jobs, names, "--format=%i %T %j", NULL};
    char *out;
    int rc = run_cmd(argv, NULL, &out);
    if (rc < 0) return -1;
    if (rc != 0) {
        /* a job the controller has forgotten (MinJobAge after its end) has nothing left */
        int gone = strstr(out, "Invalid job id") != NULL;
        if (!gone) cmd_error("squeue", rc, out);
        free(out);
        return gone ? 0 : -1;
    }
    int count = 0;
    size_t jl = strlen(job_id);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char id[128], st[64], nm[200];
        if (sscanf(line, "%127s %63s %199s", id, st, nm) != 3 || strcmp(nm, name) || state_ended(st)) continue;
        if (strncmp(id, job_id, jl) || (id[jl] != '_' && id[jl] != 0)) continue;
        count += id[jl] == '_' ? mark_tasks(id + jl + 1, active, s->n_runs) : 1;
    }
    free(out);
    return count;
}

/* sbatch --parsable prints "<id>" or "<id>;<cluster>"; warnings may come before. */
static int parse_job_id(const char *out, char *id, size_t cap) {
    int found = 0;
    for (const char *p = out; *p;) {
        size_t n = strcspn(p, "\n");
        size_t d = 0;
        while (d < n && isdigit((unsigned char)p[d])) d++;
        if (d && d < cap && (d == n || p[d] == ';' || p[d] == '\r')) {
            memcpy(id, p, d);
            id[d] = 0;
            found = 1;
        }
        p += n;
        if (*p) p++;
    }
    return found;
}

/* ------------------------------------------------------------------- waiting */

/* An error message without its "sweep: " (for one that goes inside another). */
static const char *bare(const char *msg) { return strncmp(msg, "sweep: ", 7) ? msg : msg + 7; }

static volatile sig_atomic_t g_signals;

static void on_signal(int sig) {
    (void)sig;
    g_signals++;
}

/* Sleeps up to seconds, less when a signal comes. */
static void nap(double seconds, int signals_before) {
    double end = ml_now() + seconds;
    while (g_signals == signals_before) {
        double left = end - ml_now();
        if (left <= 0) break;
        if (left > 0.1) left = 0.1;
        struct timespec ts = {0, (long)(left * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int cancel_job(const char *job_id, FILE *out) {
    if (!job_id_ok(job_id)) return -1;
    char *argv[] = {"scancel", (char *)job_id, NULL};
    char *text;
    int rc = run_cmd(argv, NULL, &text);
    if (rc != 0) {
        if (rc > 0) cmd_error("scancel", rc, text);
        fprintf(out, "moelab sweep: %s; cancel it yourself: scancel %s\n", bare(ml_error()), job_id);
    }
    free(text);
    return rc;
}

/* A run whose task has left the queue: its state from its directory. A run that never
   started is pending when the array was cancelled, else failed (its task's output says why). */
static void task_ended(ml_sweep *s, int i, int cancelled) {
    ml_sweep_run *r = &s->run[i];
    char dir[ML_PATH_MAX];
    if (ml_sweep_run_dir(s, i, dir, sizeof dir)) return;
    r->state = ml_sweep_dir_state(dir);
    if (r->state == ML_RUN_PENDING && !cancelled) r->state = ML_RUN_FAILED;
    /* without accounting the task's exit status is not known: the one its state implies */
    r->exit_code = r->state == ML_RUN_OK ? 0 : r->state == ML_RUN_FAILED ? 1 : r->state == ML_RUN_INTERRUPTED ? 130 : -1;
    double sec = ml_sweep_run_seconds(s, i);
    r->seconds = sec == sec ? sec : 0;
    int a = ml_sweep_log_attempts(s, i);
    if (a > r->attempts) r->attempts = a;
}

int ml_sweep_run_slurm(ml_sweep *s, const ml_slurm_opts *o, FILE *out) {
    if (ml_slurm_check_launcher(&s->launcher)) return ML_SLURM_BAD_SETTINGS;
    double poll = o->poll > 0 ? o->poll : ML_SLURM_POLL_DEFAULT;
    unsigned char *active = ml_calloc((size_t)s->n_runs, 1), *watch = ml_calloc((size_t)s->n_runs, 1);
    int *idx = ml_calloc((size_t)s->n_runs, sizeof *idx);
    int result = ML_SLURM_FAILED;
    if (!active || !watch || !idx) goto out;
    ml_sweep_refresh(s);
    int todo = 0, attach = 0;
    char *job = s->launcher.job_id;
    if (*job) { /* the last array of this sweep, if still there: wait for it, never run a run twice */
        int k = ml_slurm_active(s, job, active);
        if (k < 0) {
            char why[600];
            snprintf(why, sizeof why, "%s", ml_error());
            ml_errorf("sweep: cannot tell whether SLURM job %s of this sweep is still queued: %s", job, bare(why));
            goto out;
        }
        if (k > 0) {
            attach = 1;
            for (int i = 0; i < s->n_runs; i++)
                if (active[i]) watch[i] = 1, todo++;
            fprintf(out, "moelab sweep: %s: SLURM job %s of this sweep still has %d task%s queued or running: %s\n",
                    s->dir, job, k, k == 1 ? "" : "s", o->no_wait ? "not submitting again" : "waiting for it");
        }
    }
    if (!attach) {
        int n = 0;
        for (int i = 0; i < s->n_runs; i++) {
            if (s->run[i].state == ML_RUN_OK) continue;
            if (s->run[i].state == ML_RUN_RUNNING) {
                fprintf(out, "moelab sweep: run %s is running in another process; left to it\n", s->run[i].id);
                continue;
            }
            idx[n++] = i;
            watch[i] = 1;
        }
        todo = n;
        char limit[48] = "";
        if (s->launcher.max_parallel > 0) snprintf(limit, sizeof limit, " of at most %d at a time", s->launcher.max_parallel);
        fprintf(out, "moelab sweep: %s: %d runs, %d to do, as a SLURM job array%s, %d thread%s each\n", s->dir,
                s->n_runs, todo, limit, s->threads, s->threads == 1 ? "" : "s");
        fflush(out);
        if (!n) {
            result = 0;
            for (int i = 0; i < s->n_runs; i++) result += s->run[i].state != ML_RUN_OK;
            goto out;
        }
        char script[ML_PATH_MAX + 64];
        if (ml_slurm_write_script(s, idx, n, script, sizeof script)) {
            result = ML_SLURM_BAD_SETTINGS;
            goto out;
        }
        char sdir[ML_PATH_MAX + 16], *text;
        snprintf(sdir, sizeof sdir, "%s/slurm", s->dir);
        char *argv[] = {"sbatch", "--parsable", ML_SLURM_SCRIPT, NULL};
        int rc = run_cmd(argv, sdir, &text);
        if (rc < 0) goto out;
        char id[64];
        if (rc != 0 || !parse_job_id(text, id, sizeof id)) {
            if (rc == 0) {
                char line[400];
                one_line(text, line, sizeof line);
                ml_errorf("sweep: sbatch printed no job id: %s", line);
            } else
                cmd_error("sbatch", rc, text);
            free(text);
            goto out;
        }
        free(text);
        snprintf(s->launcher.job_id, sizeof s->launcher.job_id, "%s", id);
        if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
        fprintf(out, "moelab sweep: submitted SLURM job %s: %s; task output in %s/%s_<task>.out\n", id, script, sdir, id);
        fflush(out);
    }
    if (o->no_wait) {
        fprintf(out, "moelab sweep: not waiting (--no-wait); moelab sweep --status %s shows the runs, and the same "
                     "command again waits for job %s\n", s->dir, job);
        result = 0;
        goto out;
    }
    /* wait: squeue says which tasks are left; a run's directory says how it ended */
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_signals = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int done = 0, cancelled = 0, seen = 0;
    double failing_since = 0, cancelled_at = 0;
    char note[128];
    for (;;) {
        if (g_signals >= 2) {
            fprintf(out, "moelab sweep: stopped waiting; job %s may still be ending (moelab sweep --status %s)\n", job,
                    s->dir);
            break;
        }
        if (g_signals && !cancelled) {
            fprintf(out, "moelab sweep: stopping: cancelling SLURM job %s; running runs save their interrupt "
                         "checkpoints (Ctrl-C again to stop waiting)\n", job);
            fflush(out);
            cancel_job(job, out);
            cancelled = 1;
            cancelled_at = ml_now();
        }
        seen = g_signals;
        nap(cancelled ? (poll < 1 ? poll : 1) : poll, seen);
        if (g_signals != seen) continue;
        int k = ml_slurm_active(s, job, active);
        if (k < 0) {
            if (!failing_since) {
                failing_since = ml_now();
                fprintf(out, "moelab sweep: warning: %s; still waiting\n", bare(ml_error()));
                fflush(out);
            } else if (ml_now() - failing_since > 600) {
                char why[600];
                snprintf(why, sizeof why, "%s", ml_error());
                ml_errorf("sweep: squeue has failed for 10 minutes (%s); job %s may still run (moelab sweep --status %s)",
                          bare(why), job, s->dir);
                break;
            }
            continue;
        }
        if (failing_since) fprintf(out, "moelab sweep: squeue answers again\n");
        failing_since = 0;
        for (int i = 0; i < s->n_runs; i++) {
            if (!watch[i] || active[i]) continue;
            watch[i] = 0;
            task_ended(s, i, cancelled);
            if (s->run[i].state == ML_RUN_PENDING) snprintf(note, sizeof note, "cancelled before it started");
            else if (!ml_sweep_log_attempts(s, i))
                (void)!snprintf(note, sizeof note, "the task ended before its run started: see slurm/%.60s_%d.out", job, i);
            else (void)!snprintf(note, sizeof note, "slurm/%.60s_%d.out", job, i);
            ml_sweep_print_ended(s, i, ++done, todo, s->run[i].state == ML_RUN_OK ? NULL : note, out);
            if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
        }
        if (k == 0) break;
        if (cancelled && ml_now() - cancelled_at > 300) {
            fprintf(out, "moelab sweep: job %s is still ending after 5 minutes; stopped waiting\n", job);
            break;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    for (int i = 0; i < s->n_runs; i++) /* the runs not seen to end (stopped waiting): as their directories say */
        if (watch[i]) {
            char dir[ML_PATH_MAX];
            if (!ml_sweep_run_dir(s, i, dir, sizeof dir)) s->run[i].state = ml_sweep_dir_state(dir);
        }
    if (ml_sweep_save(s)) fprintf(out, "moelab sweep: warning: %s\n", ml_error());
    if (g_signals) {
        result = ML_SLURM_INTERRUPTED;
    } else if (failing_since) {
        result = ML_SLURM_FAILED;
    } else {
        result = 0;
        for (int i = 0; i < s->n_runs; i++) result += s->run[i].state != ML_RUN_OK;
    }
out:
    free(active);
    free(watch);
    free(idx);
    return result;
}
