/* crash.c — fatal-signal report: one line naming the plugin call, summary.json "crashed". */
#include "base/crash.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *volatile ml_crash_file;
const char *volatile ml_crash_call;

static const int g_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
#define NSIG_FATAL ((int)(sizeof g_signals / sizeof *g_signals))

const char *ml_crash_signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    default: return "signal";
    }
}

/* ------------------------------------------------------------- armed summary */

/*
 * Two slots: ml_crash_arm fills the one the handler is not looking at, then publishes it
 * with one store, so the handler never sees a half-written summary.
 */
typedef struct armed {
    char *path, *tmp, *dir; /* summary.json, summary.json.tmp, the run directory */
    char *json;             /* the crashed summary without its closing brace */
    size_t len;
    int empty;              /* the object had no members: no comma before the handler's */
} armed;

static armed g_slot[2];
static volatile sig_atomic_t g_active = -1;

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

int ml_crash_arm(const char *summary_path, const char *crashed_json) {
    int k = g_active == 0 ? 1 : 0;
    armed *a = &g_slot[k];
    size_t pn = strlen(summary_path), n = strlen(crashed_json);
    while (n > 0 && crashed_json[n - 1] != '}') n--;
    if (n == 0 || crashed_json[0] != '{') return ml_errorf("crash: the crashed summary is not a JSON object");
    n--; /* drop the closing brace */
    const char *slash = strrchr(summary_path, '/');
    char *path = dup_n(summary_path, pn), *tmp = malloc(pn + 5), *json = dup_n(crashed_json, n);
    char *dir = slash ? dup_n(summary_path, slash == summary_path ? 1 : (size_t)(slash - summary_path))
                      : dup_n(".", 1);
    if (!path || !tmp || !json || !dir) {
        free(path), free(tmp), free(json), free(dir);
        return ml_errorf("crash: out of memory arming the summary");
    }
    memcpy(tmp, summary_path, pn);
    memcpy(tmp + pn, ".tmp", 5);
    free(a->path), free(a->tmp), free(a->json), free(a->dir);
    a->path = path;
    a->tmp = tmp;
    a->dir = dir;
    a->json = json;
    a->len = n;
    size_t i = 1;
    while (i < n && (json[i] == ' ' || json[i] == '\n' || json[i] == '\t' || json[i] == '\r')) i++;
    a->empty = i == n;
    g_active = k;
    return ML_OK;
}

void ml_crash_disarm(void) { g_active = -1; }

/* ------------------------------------------------------------------ handler */

/*
 * Everything below runs inside the signal handler: no stdio, no malloc, no locale; only
 * write, open, fsync, close, rename, clock_gettime and raise (all async-signal-safe).
 */

typedef struct obuf {
    char buf[8192];
    size_t n;
} obuf;

static obuf g_line, g_tail;

static void ob_put(obuf *b, const char *s) {
    while (*s && b->n < sizeof b->buf - 1) b->buf[b->n++] = *s++;
}

static void ob_char(obuf *b, char c) {
    if (b->n < sizeof b->buf - 1) b->buf[b->n++] = c;
}

static void ob_uint(obuf *b, unsigned long v, int width) {
    char d[24];
    int k = 0;
    do {
        d[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && k < 24);
    while (k < width && k < 24) d[k++] = '0';
    while (k > 0) ob_char(b, d[--k]);
}

/* A JSON string: quotes, backslashes and control bytes escaped. At most ~1.5 KB of it
 * (cut at a UTF-8 character boundary, marked "..."), so the three strings of the crash
 * summary's tail always fit its buffer and the file stays valid JSON whatever the path. */
#define OB_STR_BUDGET 1536
static void ob_json_str(obuf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    ob_char(b, '"');
    size_t start = b->n;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (b->n - start > OB_STR_BUDGET && (c & 0xC0) != 0x80) {
            ob_put(b, "...");
            break;
        }
        if (c == '"' || c == '\\') {
            ob_char(b, '\\');
            ob_char(b, (char)c);
        } else if (c < 0x20) {
            ob_put(b, "\\u00");
            ob_char(b, hex[c >> 4]);
            ob_char(b, hex[c & 15]);
        } else {
            ob_char(b, (char)c);
        }
    }
    ob_char(b, '"');
}

/* "YYYY-mm-ddTHH:MM:SSZ" from the real-time clock (days to civil date: H. Hinnant). */
static void ob_utc(obuf *b) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || ts.tv_sec < 0) {
        ob_put(b, "null");
        return;
    }
    long long t = (long long)ts.tv_sec, days = t / 86400, sod = t % 86400;
    long long z = days + 719468, era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    long long y = yoe + era * 400 + (m <= 2);
    ob_char(b, '"');
    ob_uint(b, (unsigned long)y, 4);
    ob_char(b, '-');
    ob_uint(b, (unsigned long)m, 2);
    ob_char(b, '-');
    ob_uint(b, (unsigned long)d, 2);
    ob_char(b, 'T');
    ob_uint(b, (unsigned long)(sod / 3600), 2);
    ob_char(b, ':');
    ob_uint(b, (unsigned long)(sod / 60 % 60), 2);
    ob_char(b, ':');
    ob_uint(b, (unsigned long)(sod % 60), 2);
    ob_put(b, "Z\"");
}

static int write_full(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void write_summary(const armed *a, const char *error, int sig, const char *file,
                          const char *call) {
    g_tail.n = 0;
    if (!a->empty) ob_char(&g_tail, ',');
    ob_put(&g_tail, "\"error\":");
    ob_json_str(&g_tail, error);
    ob_put(&g_tail, ",\"signal\":");
    ob_json_str(&g_tail, ml_crash_signal_name(sig));
    ob_put(&g_tail, ",\"plugin\":");
    if (call && file) ob_json_str(&g_tail, file);
    else ob_put(&g_tail, "null");
    ob_put(&g_tail, ",\"call\":");
    if (call) ob_json_str(&g_tail, call);
    else ob_put(&g_tail, "null");
    ob_put(&g_tail, ",\"updated\":");
    ob_utc(&g_tail);
    ob_put(&g_tail, "}\n");
    int fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return;
    int ok = write_full(fd, a->json, a->len) == 0 && write_full(fd, g_tail.buf, g_tail.n) == 0 &&
             fsync(fd) == 0;
    close(fd);
    if (!ok || rename(a->tmp, a->path) != 0) {
        unlink(a->tmp);
        return;
    }
    int dfd = open(a->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

static void on_fatal(int sig) {
    int saved = errno;
    const char *call = ml_crash_call, *file = ml_crash_file;
    const char *name = ml_crash_signal_name(sig);
    g_line.n = 0;
    ob_put(&g_line, "moelab: ");
    size_t msg = g_line.n; /* the summary's "error" is the line without this prefix */
    if (call) {
        ob_put(&g_line, "plugin ");
        ob_put(&g_line, file ? file : "(unknown file)");
        ob_put(&g_line, ": ");
        ob_put(&g_line, call);
        ob_put(&g_line, ": crashed (");
        ob_put(&g_line, name);
        ob_put(&g_line, ")");
    } else {
        ob_put(&g_line, "crashed (");
        ob_put(&g_line, name);
        ob_put(&g_line, ") outside plugin code");
    }
    ob_char(&g_line, '\n');
    (void)write_full(2, g_line.buf, g_line.n);
    int k = g_active;
    if (k == 0 || k == 1) {
        g_line.buf[g_line.n - 1] = 0;
        write_summary(&g_slot[k], g_line.buf + msg, sig, file, call);
    }
    errno = saved;
    /* SA_RESETHAND restored the default action; the signal is blocked until we return,
       then it ends the process the way it would have without us */
    raise(sig);
}

int ml_crash_install(void) {
    static int installed;
    if (installed) return ML_OK;
    /* room for the kernel's signal frame (large with AVX-512 state) plus the handler */
    size_t size = 1 << 16;
#ifdef _SC_SIGSTKSZ
    long min = sysconf(_SC_SIGSTKSZ);
    if (min > 0) size += (size_t)min;
#else
    size += SIGSTKSZ;
#endif
    static void *altstack; /* kept for the life of the process (and reachable for LeakSanitizer) */
    if (!altstack && !(altstack = malloc(size))) return ml_errorf("crash: out of memory for the signal stack");
    stack_t ss = {.ss_sp = altstack, .ss_size = size, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) return ml_errorf("crash: sigaltstack failed: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < NSIG_FATAL; i++) sigaddset(&sa.sa_mask, g_signals[i]);
    for (int i = 0; i < NSIG_FATAL; i++)
        if (sigaction(g_signals[i], &sa, NULL) != 0)
            return ml_errorf("crash: sigaction(%s) failed: %s", ml_crash_signal_name(g_signals[i]),
                             strerror(errno));
    installed = 1;
    return ML_OK;
}
