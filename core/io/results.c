/* results.c — run directory, metrics/routing/events/summary files, atomic writes. */
#include "io/results.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RES_PATH_MAX 4096

typedef struct metrics_row {
    int n;        /* cells recorded (columns that existed when the row was written) */
    char **cells; /* (n) formatted cells; NULL = empty */
} metrics_row;

struct ml_results {
    char dir[RES_PATH_MAX];
    char run_id[256];
    /* metrics.csv, kept in memory and rewritten whole */
    int ncols, capcols;
    char **cols;
    int nrows, caprows;
    metrics_row *rows;
    /* routing.csv */
    FILE *routing;
    long routing_header; /* bytes of its header line */
    int n_extra;
    char **extra_names;
    /* events.jsonl */
    FILE *events;
    /* <dir>/.lock, held (flock, exclusive) while the handle is open: one process per run */
    int lock_fd, locked;
};

/* ================================================================ the run lock */

/*
 * Takes <dir>/.lock exclusively (flock, released when the process ends, however it ends):
 * two processes never write one run directory, e.g. a requeued SLURM task resuming a run
 * whose first task still runs. The file holds the owner's pid for the message.
 */
static int lock_dir(ml_results *r) {
    char path[RES_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/.lock", r->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0) return ml_errorf("results: cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (err == EWOULDBLOCK)
            return ml_errorf("results: run directory %s is in use by another moelab process%s%s%s; "
                             "wait for it to end, or stop it first", r->dir, *pid ? " (pid " : "", pid,
                             *pid ? ")" : "");
        return ml_errorf("results: cannot lock %s: %s", path, strerror(err));
    }
    char me[32];
    int n = snprintf(me, sizeof me, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, me, (size_t)n, 0) != n) { /* the pid is a courtesy */ }
    r->lock_fd = fd;
    r->locked = 1;
    return ML_OK;
}

/* ================================================================ run directory */

/* out = a + "/" + b; ML_ERR (message set) when it does not fit in cap. */
static int path_join(char *out, size_t cap, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la + 1 + lb + 1 > cap) return ml_errorf("results: path %s/%s is too long", a, b);
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
    return ML_OK;
}


/* 1 if dir holds nothing but "." and "..", 0 if it holds something, -1 on error. */
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = 0;
            break;
        }
    closedir(d);
    return empty;
}

static int check_component(const char *what, const char *s) {
    if (!s || !*s) return ml_errorf("results: %s is empty, expected a name", what);
    if (strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, ".."))
        return ml_errorf("results: %s '%s' must be a single directory name (no '/', not '.' or '..')",
                         what, s);
    if (strlen(s) >= 200) return ml_errorf("results: %s '%.40s...' is longer than 199 bytes", what, s);
    return ML_OK;
}

/* Creates r->dir (an explicit name: it may exist when empty), then checkpoints/, files/,
   the lock and a clean of stale temp files. Frees r on failure. */
static ml_results *open_explicit(ml_results *r) {
    if (mkdir(r->dir, 0777) < 0) {
        int err = errno;
        int empty = err == EEXIST ? dir_is_empty(r->dir) : -1;
        if (empty == 0) {
            ml_errorf("results: run directory %s already exists and is not empty; refusing to "
                      "overwrite it (hint: choose another run id, or none for a timestamp)", r->dir);
            free(r);
            return NULL;
        }
        if (empty < 0) {
            ml_errorf("results: cannot create run directory %s: %s", r->dir, strerror(err));
            free(r);
            return NULL;
        }
    }
    return r;
}

static ml_results *open_finish(ml_results *r) {
    char ck[RES_PATH_MAX + 16];
    for (int i = 0; i < 2; i++) { /* files/: the only place the script may write */
        snprintf(ck, sizeof ck, "%s/%s", r->dir, i ? "files" : "checkpoints");
        if (mkdir(ck, 0777) < 0 && errno != EEXIST) {
            ml_errorf("results: cannot create %s: %s", ck, strerror(errno));
            free(r);
            return NULL;
        }
    }
    if (lock_dir(r) || ml_results_clean_tmp(r->dir) < 0) {
        ml_results_close(r);
        return NULL;
    }
    return r;
}

ml_results *ml_results_open_at(const char *run_dir) {
    size_t n = run_dir ? strlen(run_dir) : 0;
    while (n > 1 && run_dir[n - 1] == '/') n--;
    if (!n) {
        ml_errorf("results: the run directory is empty");
        return NULL;
    }
    const char *slash = memrchr(run_dir, '/', n);
    const char *base = slash ? slash + 1 : run_dir;
    char id[256], parent[RES_PATH_MAX];
    if (n >= RES_PATH_MAX - 256 || (size_t)(run_dir + n - base) >= sizeof id) {
        ml_errorf("results: run directory '%.60s...' is too long", run_dir);
        return NULL;
    }
    snprintf(id, sizeof id, "%.*s", (int)(run_dir + n - base), base);
    if (check_component("run directory name", id)) return NULL;
    if (!slash) strcpy(parent, ".");
    else if (slash == run_dir) strcpy(parent, "/");
    else snprintf(parent, sizeof parent, "%.*s", (int)(slash - run_dir), run_dir);
    if (ml_mkdir_p(parent)) {
        ml_error_prefix("results");
        return NULL;
    }
    ml_results *r = ml_calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->run_id, sizeof r->run_id, "%s", id);
    snprintf(r->dir, sizeof r->dir, "%.*s", (int)n, run_dir);
    r = open_explicit(r);
    return r ? open_finish(r) : NULL;
}

ml_results *ml_results_open(const char *dir, const char *experiment, const char *run_id) {
    if (!dir || !*dir) dir = ".";
    if (check_component("experiment", experiment)) return NULL;
    int explicit_id = run_id && *run_id;
    if (explicit_id && check_component("run id", run_id)) return NULL;
    char parent[RES_PATH_MAX];
    if (path_join(parent, sizeof parent - 256, dir, experiment)) return NULL;
    if (ml_mkdir_p(parent)) {
        ml_error_prefix("results");
        return NULL;
    }
    ml_results *r = ml_calloc(1, sizeof *r);
    if (!r) return NULL;
    if (explicit_id) {
        snprintf(r->run_id, sizeof r->run_id, "%s", run_id);
        path_join(r->dir, sizeof r->dir, parent, run_id); /* fits: parent < 3840, id < 200 */
        if (!(r = open_explicit(r))) return NULL;
    } else {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
        int k;
        for (k = 1; k <= 10000; k++) {
            if (k == 1) snprintf(r->run_id, sizeof r->run_id, "%s", stamp);
            else snprintf(r->run_id, sizeof r->run_id, "%s-%d", stamp, k);
            path_join(r->dir, sizeof r->dir, parent, r->run_id);
            if (mkdir(r->dir, 0777) == 0) break;
            if (errno != EEXIST) {
                ml_errorf("results: cannot create run directory %s: %s", r->dir, strerror(errno));
                free(r);
                return NULL;
            }
        }
        if (k > 10000) {
            ml_errorf("results: no free run directory %s/%s-N", parent, stamp);
            free(r);
            return NULL;
        }
    }
    return open_finish(r);
}

const char *ml_results_dir(const ml_results *r) { return r->dir; }
const char *ml_results_run_id(const ml_results *r) { return r->run_id; }

int ml_results_path(const ml_results *r, const char *rel, char *out, size_t cap) {
    if ((size_t)snprintf(out, cap, "%s/%s", r->dir, rel) >= cap)
        return ml_errorf("results: path %s/%s does not fit in %zu bytes", r->dir, rel, cap);
    return ML_OK;
}

static FILE *open_new(const ml_results *r, const char *name) {
    char path[RES_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    FILE *f = fopen(path, "wx"); /* C11 exclusive: never truncates someone's file */
    if (!f) ml_errorf("results: cannot create %s: %s", path, strerror(errno));
    return f;
}

/* ======================================================================== CSV */

/* Appends one cell, quoted (quotes doubled) when it holds a comma, quote, CR or LF. */
static void sb_cell(ml_strbuf *b, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        ml_strbuf_puts(b, s);
        return;
    }
    ml_strbuf_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"') ml_strbuf_put(b, "\"", 1);
        ml_strbuf_put(b, p, 1);
    }
    ml_strbuf_put(b, "\"", 1);
}

/* Integers exactly (up to 2^53), other numbers with %.9g; "nan", "inf", "-inf". */
static void fmt_num(char *out, size_t cap, double v) {
    if (isnan(v)) snprintf(out, cap, "nan");
    else if (isinf(v)) snprintf(out, cap, v > 0 ? "inf" : "-inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0) snprintf(out, cap, "%.0f", v == 0 ? 0.0 : v);
    else snprintf(out, cap, "%.9g", v);
}

/* ================================================================ metrics.csv */

static int metrics_col(ml_results *r, const char *name) {
    for (int c = 0; c < r->ncols; c++)
        if (!strcmp(r->cols[c], name)) return c;
    if (r->ncols == r->capcols) {
        int nc = r->capcols ? 2 * r->capcols : 16;
        char **cols = realloc(r->cols, (size_t)nc * sizeof *cols);
        if (!cols) return ml_errorf("results: out of memory adding metrics column '%s'", name), -1;
        r->cols = cols;
        r->capcols = nc;
    }
    char *d = ml_strdup(name);
    if (!d) return -1;
    r->cols[r->ncols] = d;
    return r->ncols++;
}

static int metrics_write(const ml_results *r) {
    ml_strbuf b = {0};
    for (int c = 0; c < r->ncols; c++) {
        if (c) ml_strbuf_put(&b, ",", 1);
        sb_cell(&b, r->cols[c]);
    }
    ml_strbuf_put(&b, "\n", 1);
    for (int i = 0; i < r->nrows; i++) {
        const metrics_row *row = &r->rows[i];
        for (int c = 0; c < r->ncols; c++) {
            if (c) ml_strbuf_put(&b, ",", 1);
            if (c < row->n && row->cells[c]) sb_cell(&b, row->cells[c]);
        }
        ml_strbuf_put(&b, "\n", 1);
    }
    if (b.oom) {
        free(b.buf);
        return ml_errorf("results: out of memory formatting metrics.csv");
    }
    char path[RES_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.csv", r->dir);
    int rc = ml_write_file_atomic(path, b.buf, b.len);
    free(b.buf);
    return rc;
}

int ml_results_metrics_row_mixed(ml_results *r, const char *const *names, const double *values,
                                 const char *const *strings, int n) {
    for (int i = 0; i < n; i++) {
        if (!names[i] || !*names[i]) return ml_errorf("results: metrics row: name %d is empty", i);
        for (int k = 0; k < i; k++)
            if (!strcmp(names[i], names[k]))
                return ml_errorf("results: metrics row: column '%s' given twice", names[i]);
        if (!(strings && strings[i]) && !values)
            return ml_errorf("results: metrics row: no value for '%s'", names[i]);
    }
    if (r->nrows == r->caprows) {
        int nc = r->caprows ? 2 * r->caprows : 64;
        metrics_row *rows = realloc(r->rows, (size_t)nc * sizeof *rows);
        if (!rows) return ml_errorf("results: out of memory adding a metrics row");
        r->rows = rows;
        r->caprows = nc;
    }
    int old_cols = r->ncols;
    int *idx = ml_calloc((size_t)(n ? n : 1), sizeof *idx);
    if (!idx) return ML_ERR;
    for (int i = 0; i < n; i++)
        if ((idx[i] = metrics_col(r, names[i])) < 0) goto fail;
    metrics_row row = {r->ncols, ml_calloc((size_t)(r->ncols ? r->ncols : 1), sizeof(char *))};
    if (!row.cells) goto fail;
    for (int i = 0; i < n; i++) {
        char num[64];
        const char *text = strings && strings[i] ? strings[i] : num;
        if (text == num) fmt_num(num, sizeof num, values[i]);
        if (!(row.cells[idx[i]] = ml_strdup(text))) {
            for (int c = 0; c < row.n; c++) free(row.cells[c]);
            free(row.cells);
            goto fail;
        }
    }
    r->rows[r->nrows++] = row;
    free(idx);
    return metrics_write(r);
fail:
    /* Forget the columns this row would have added. */
    while (r->ncols > old_cols) free(r->cols[--r->ncols]);
    free(idx);
    return ml_error_prefix("results: metrics row");
}

int ml_results_metrics_row(ml_results *r, const char *const *names, const double *values, int n) {
    return ml_results_metrics_row_mixed(r, names, values, NULL, n);
}

/* ================================================================ routing.csv */

int ml_results_routing_rows(ml_results *r, int epoch, int layer, const ml_health *h,
                            const char *const *extra_names, const float *const *extra_values,
                            int n_extra) {
    if (!h || !h->utilisation || !h->importance)
        return ml_errorf("results: routing rows for layer %d: no routing health given", layer);
    for (int i = 0; i < n_extra; i++)
        if (!extra_names[i] || !*extra_names[i])
            return ml_errorf("results: routing rows: extra column %d has no name", i);
    if (!r->routing) {
        /* First call: fix the header. */
        char **names = ml_calloc((size_t)(n_extra ? n_extra : 1), sizeof *names);
        if (!names) return ML_ERR;
        for (int i = 0; i < n_extra; i++) {
            for (int k = 0; k < i; k++)
                if (!strcmp(extra_names[i], extra_names[k])) {
                    for (int m = 0; m < i; m++) free(names[m]);
                    free(names);
                    return ml_errorf("results: routing rows: extra column '%s' given twice", extra_names[i]);
                }
            if (!(names[i] = ml_strdup(extra_names[i]))) {
                for (int m = 0; m < i; m++) free(names[m]);
                free(names);
                return ML_ERR;
            }
        }
        ml_strbuf b = {0};
        ml_strbuf_puts(&b, "epoch,layer,expert,utilisation,importance");
        for (int i = 0; i < n_extra; i++) {
            ml_strbuf_put(&b, ",", 1);
            sb_cell(&b, names[i]);
        }
        ml_strbuf_put(&b, "\n", 1);
        FILE *f = b.oom ? NULL : open_new(r, "routing.csv");
        if (!f || fputs(b.buf, f) < 0 || fflush(f) != 0) {
            if (b.oom) ml_errorf("results: out of memory writing the routing.csv header");
            else if (f) ml_errorf("results: writing %s/routing.csv: %s", r->dir, strerror(errno));
            if (f) fclose(f);
            free(b.buf);
            for (int i = 0; i < n_extra; i++) free(names[i]);
            free(names);
            return ML_ERR;
        }
        r->routing_header = (long)b.len;
        free(b.buf);
        r->routing = f;
        r->extra_names = names;
        r->n_extra = n_extra;
    }
    /* Map the given extras onto the header's columns. */
    const float **col = ml_calloc((size_t)(r->n_extra ? r->n_extra : 1), sizeof *col);
    if (!col) return ML_ERR;
    for (int i = 0; i < n_extra; i++) {
        int c;
        for (c = 0; c < r->n_extra; c++)
            if (!strcmp(r->extra_names[c], extra_names[i])) break;
        if (c == r->n_extra) {
            free(col);
            return ml_errorf("results: routing.csv: extra column '%s' is not in the header fixed by "
                             "the first call (expected one of the %d extra columns given then)",
                             extra_names[i], r->n_extra);
        }
        col[c] = extra_values[i];
    }
    ml_strbuf b = {0};
    for (int e = 0; e < h->num_experts; e++) {
        char num[64];
        snprintf(num, sizeof num, "%d,%d,%d,", epoch, layer, e);
        ml_strbuf_puts(&b, num);
        fmt_num(num, sizeof num, h->utilisation[e]);
        ml_strbuf_puts(&b, num);
        ml_strbuf_put(&b, ",", 1);
        fmt_num(num, sizeof num, h->importance[e]);
        ml_strbuf_puts(&b, num);
        for (int c = 0; c < r->n_extra; c++) {
            ml_strbuf_put(&b, ",", 1);
            if (col[c]) {
                fmt_num(num, sizeof num, col[c][e]);
                ml_strbuf_puts(&b, num);
            }
        }
        ml_strbuf_put(&b, "\n", 1);
    }
    free(col);
    int rc = ML_OK;
    if (b.oom) rc = ml_errorf("results: out of memory formatting routing.csv rows");
    else if (b.len && (fputs(b.buf, r->routing) < 0 || fflush(r->routing) != 0))
        rc = ml_errorf("results: appending to %s/routing.csv: %s", r->dir, strerror(errno));
    free(b.buf);
    return rc;
}

/* ======================================================== events and summary */

int ml_results_event(ml_results *r, int epoch, int64_t step, const char *kind, const char *fields_json) {
    if (!kind || !*kind) return ml_errorf("results: event at epoch %d has no kind", epoch);
    ml_json j;
    ml_json_begin(&j);
    ml_json_int(&j, "epoch", epoch);
    ml_json_int(&j, "step", step);
    ml_json_str(&j, "kind", kind);
    const char *line = ml_json_end(&j);
    if (!line) return ML_ERR;
    ml_strbuf b = {0};
    ml_strbuf_put(&b, line, j.b.len - 1); /* without the closing brace */
    if (fields_json && *fields_json) {
        ml_strbuf_put(&b, ",", 1);
        ml_strbuf_puts(&b, fields_json);
    }
    ml_strbuf_put(&b, "}", 1);
    ml_json_free(&j);
    if (b.oom) return ml_errorf("results: out of memory formatting event '%s'", kind);
    ml_jv *v = ml_jv_parse(b.buf, b.len);
    if (!v) {
        ml_error_prefix("results: event '%s': fields are not valid JSON object members (%s)", kind,
                        fields_json);
        free(b.buf);
        return ML_ERR;
    }
    ml_jv_free(v);
    ml_strbuf_put(&b, "\n", 1);
    int rc = ML_OK;
    if (!r->events && !(r->events = open_new(r, "events.jsonl"))) rc = ML_ERR;
    else if (b.oom || fputs(b.buf, r->events) < 0 || fflush(r->events) != 0)
        rc = ml_errorf("results: appending to %s/events.jsonl: %s", r->dir,
                       b.oom ? "out of memory" : strerror(errno));
    free(b.buf);
    return rc;
}

int ml_results_summary(ml_results *r, const char *json_object) {
    size_t n = json_object ? strlen(json_object) : 0;
    ml_jv *v = json_object ? ml_jv_parse(json_object, n) : NULL;
    if (!v) return ml_error_prefix("results: summary is not valid JSON");
    int is_obj = v->type == ML_JV_OBJ;
    ml_jv_free(v);
    if (!is_obj) return ml_errorf("results: summary must be a JSON object ({...})");
    char path[RES_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/summary.json", r->dir);
    char *text = malloc(n + 2);
    if (!text) return ml_errorf("results: out of memory writing %s", path);
    memcpy(text, json_object, n);
    text[n] = '\n';
    int rc = ml_write_file_atomic(path, text, n + 1);
    free(text);
    return rc;
}

void ml_results_close(ml_results *r) {
    if (!r) return;
    if (r->routing) fclose(r->routing);
    if (r->events) fclose(r->events);
    for (int c = 0; c < r->ncols; c++) free(r->cols[c]);
    free(r->cols);
    for (int i = 0; i < r->nrows; i++) {
        for (int c = 0; c < r->rows[i].n; c++) free(r->rows[i].cells[c]);
        free(r->rows[i].cells);
    }
    free(r->rows);
    for (int i = 0; i < r->n_extra; i++) free(r->extra_names[i]);
    free(r->extra_names);
    if (r->locked) close(r->lock_fd); /* releases the run lock */
    free(r);
}

/* ========================================================= temp files, resume */

/* Removes dir/ *.tmp (regular files); adds the count to *removed. */
static int clean_tmp_in(const char *dir, int *removed) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? ML_OK : ml_errorf("results: cannot read %s: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = ML_OK;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".tmp") != 0) continue;
        char path[RES_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) != 0) {
            rc = ml_errorf("results: cannot remove stale temporary file %s: %s", path, strerror(errno));
            break;
        }
        (*removed)++;
    }
    closedir(d);
    return rc;
}

int ml_results_clean_tmp(const char *run_dir) {
    int removed = 0;
    char ck[RES_PATH_MAX + 16];
    if ((size_t)snprintf(ck, sizeof ck, "%s/checkpoints", run_dir) >= sizeof ck)
        return ml_errorf("results: path %s is too long", run_dir);
    if (clean_tmp_in(run_dir, &removed) || clean_tmp_in(ck, &removed)) return ML_ERR;
    return removed;
}

/* Whole file into a NUL-terminated buffer (owned); NULL with *missing = 1 if absent. */
static char *read_text(const char *path, size_t *len, int *missing) {
    *missing = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) *missing = 1;
        else ml_errorf("results: cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    ml_strbuf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ml_strbuf_put(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (bad || b.oom) {
        free(b.buf);
        ml_errorf("results: cannot read %s: %s", path, bad ? "read error" : "out of memory");
        return NULL;
    }
    if (!b.buf) ml_strbuf_put(&b, "", 0);
    *len = b.len;
    return b.buf;
}

static void free_cells(char **cells, int n) {
    for (int i = 0; i < n; i++) free(cells[i]);
    free(cells);
}

/*
 * One CSV record (RFC 4180, as sb_cell writes it) from *p: cells into a new array of owned
 * strings ("" for an empty cell). Advances *p past the record's newline. Returns the cell
 * count, or -1 (message set) on an unterminated quote or out of memory.
 */
static int csv_record(const char **p, const char *end, char ***cells_out, const char *path, int line) {
    char **cells = NULL;
    int n = 0;
    const char *c = *p;
    for (;;) {
        ml_strbuf cell = {0};
        ml_strbuf_put(&cell, "", 0);
        if (c < end && *c == '"') {
            c++;
            for (;;) {
                if (c >= end) {
                    free(cell.buf);
                    free_cells(cells, n);
                    return ml_errorf("results: %s:%d: unterminated quoted cell", path, line), -1;
                }
                if (*c == '"') {
                    if (c + 1 < end && c[1] == '"') {
                        ml_strbuf_put(&cell, "\"", 1);
                        c += 2;
                        continue;
                    }
                    c++;
                    break;
                }
                ml_strbuf_put(&cell, c, 1);
                c++;
            }
        }
        while (c < end && *c != ',' && *c != '\n') {
            if (*c != '\r') ml_strbuf_put(&cell, c, 1);
            c++;
        }
        char **nc = cell.oom ? NULL : realloc(cells, (size_t)(n + 1) * sizeof *nc);
        if (!nc) {
            free(cell.buf);
            free_cells(cells, n);
            return ml_errorf("results: out of memory reading %s", path), -1;
        }
        cells = nc;
        cells[n++] = cell.buf;
        if (c < end && *c == ',') {
            c++;
            continue;
        }
        if (c < end) c++; /* the newline */
        break;
    }
    *p = c;
    *cells_out = cells;
    return n;
}

/* Loads metrics.csv's header and rows into r (empty r). */
static int load_metrics(ml_results *r, const char *path) {
    size_t len;
    int missing;
    char *text = read_text(path, &len, &missing);
    if (!text) return missing ? ML_OK : ML_ERR;
    const char *p = text, *end = text + len;
    int line = 1, rc = ML_OK;
    char **cells;
    int n = p < end ? csv_record(&p, end, &cells, path, line) : 0;
    if (n < 0) rc = ML_ERR;
    for (int i = 0; i < n && !rc; i++) {
        if (!cells[i][0]) rc = ml_errorf("results: %s:1: column %d has no name", path, i + 1);
        else if (metrics_col(r, cells[i]) != i)
            rc = ml_errorf("results: %s:1: column '%s' appears twice", path, cells[i]);
    }
    if (n > 0) free_cells(cells, n);
    while (!rc && p < end) {
        line++;
        n = csv_record(&p, end, &cells, path, line);
        if (n < 0) {
            rc = ML_ERR;
            break;
        }
        if (n > r->ncols) {
            free_cells(cells, n);
            rc = ml_errorf("results: %s:%d: %d cells, the header has %d columns", path, line, n, r->ncols);
            break;
        }
        if (r->nrows == r->caprows) {
            int nc = r->caprows ? 2 * r->caprows : 64;
            metrics_row *rows = realloc(r->rows, (size_t)nc * sizeof *rows);
            if (!rows) {
                free_cells(cells, n);
                rc = ml_errorf("results: out of memory reading %s", path);
                break;
            }
            r->rows = rows;
            r->caprows = nc;
        }
        metrics_row row = {r->ncols, ml_calloc((size_t)(r->ncols ? r->ncols : 1), sizeof(char *))};
        if (!row.cells) {
            free_cells(cells, n);
            rc = ML_ERR;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (cells[i][0]) row.cells[i] = cells[i];
            else free(cells[i]);
        }
        free(cells);
        r->rows[r->nrows++] = row;
    }
    free(text);
    return rc;
}

/* Reads routing.csv's header (fixing the extra columns) and opens it for appending. */
static int load_routing(ml_results *r, const char *path) {
    size_t len;
    int missing;
    char *text = read_text(path, &len, &missing);
    if (!text) return missing ? ML_OK : ML_ERR;
    if (len == 0) { /* created but never written: start it again with a header */
        free(text);
        return unlink(path) == 0 ? ML_OK : ml_errorf("results: cannot remove empty %s: %s", path, strerror(errno));
    }
    const char *p = text;
    char **cells;
    int n = csv_record(&p, text + len, &cells, path, 1);
    static const char *fixed[] = {"epoch", "layer", "expert", "utilisation", "importance"};
    int rc = n < 0 ? ML_ERR : ML_OK;
    if (!rc && (n < 5 || p[-1] != '\n'))
        rc = ml_errorf("results: %s:1: expected the header epoch,layer,expert,utilisation,importance[,...]", path);
    for (int i = 0; i < 5 && !rc; i++)
        if (strcmp(cells[i], fixed[i]) != 0)
            rc = ml_errorf("results: %s:1: column %d is '%s', expected '%s'", path, i + 1, cells[i], fixed[i]);
    if (!rc) {
        r->routing_header = (long)(p - text);
        r->n_extra = n - 5;
        r->extra_names = ml_calloc((size_t)(n > 5 ? n - 5 : 1), sizeof(char *));
        if (!r->extra_names) rc = ML_ERR;
        for (int i = 5; i < n && !rc; i++) {
            r->extra_names[i - 5] = cells[i];
            cells[i] = NULL;
        }
    }
    if (n > 0) free_cells(cells, n);
    free(text);
    if (!rc && !(r->routing = fopen(path, "a")))
        rc = ml_errorf("results: cannot append to %s: %s", path, strerror(errno));
    return rc;
}

ml_results *ml_results_reopen(const char *run_dir) {
    struct stat st;
    if (!run_dir || !*run_dir || stat(run_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        ml_errorf("results: %s is not a run directory (%s)", run_dir ? run_dir : "(null)",
                  run_dir && *run_dir && stat(run_dir, &st) != 0 ? strerror(errno) : "not a directory");
        return NULL;
    }
    size_t len = strlen(run_dir);
    while (len > 1 && run_dir[len - 1] == '/') len--;
    if (len >= RES_PATH_MAX - 64) {
        ml_errorf("results: path %s is too long", run_dir);
        return NULL;
    }
    ml_results *r = ml_calloc(1, sizeof *r);
    if (!r) return NULL;
    memcpy(r->dir, run_dir, len);
    r->dir[len] = 0;
    const char *slash = strrchr(r->dir, '/');
    snprintf(r->run_id, sizeof r->run_id, "%.200s", slash ? slash + 1 : r->dir);
    char path[RES_PATH_MAX + 32];
    for (int i = 0; i < 2; i++) { /* files/ too: runs from before it existed get one */
        snprintf(path, sizeof path, "%s/%s", r->dir, i ? "files" : "checkpoints");
        if (mkdir(path, 0777) < 0 && errno != EEXIST) {
            ml_errorf("results: cannot create %s: %s", path, strerror(errno));
            ml_results_close(r);
            return NULL;
        }
    }
    if (lock_dir(r) || ml_results_clean_tmp(r->dir) < 0) goto fail;
    snprintf(path, sizeof path, "%s/metrics.csv", r->dir);
    if (load_metrics(r, path)) goto fail;
    snprintf(path, sizeof path, "%s/routing.csv", r->dir);
    if (load_routing(r, path)) goto fail;
    snprintf(path, sizeof path, "%s/events.jsonl", r->dir);
    if (!(r->events = fopen(path, "a")) && errno != ENOENT) {
        ml_errorf("results: cannot append to %s: %s", path, strerror(errno));
        goto fail;
    }
    if (r->events && fstat(fileno(r->events), &st) == 0 && st.st_size == 0) {
        fclose(r->events); /* fopen "a" created it: leave creation to the first event */
        r->events = NULL;
        unlink(path);
    }
    return r;
fail:
    ml_results_close(r);
    return NULL;
}

static long file_size(FILE *f) {
    struct stat st;
    if (!f || fflush(f) != 0 || fstat(fileno(f), &st) != 0) return 0;
    return (long)st.st_size;
}

/* ------------------------------------------------------- other line files */

int ml_results_append(ml_results *r, const char *name, const char *header, const char *text) {
    char path[RES_PATH_MAX + 64];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", r->dir, name) >= sizeof path)
        return ml_errorf("results: path %s/%s is too long", r->dir, name);
    FILE *f = fopen(path, "a");
    if (!f) return ml_errorf("results: cannot append to %s: %s", path, strerror(errno));
    struct stat st;
    int ok = fstat(fileno(f), &st) == 0;
    if (ok && st.st_size == 0 && header) ok = fputs(header, f) >= 0;
    ok = ok && fputs(text, f) >= 0;
    ok = fflush(f) == 0 && ok;
    if (fclose(f) != 0) ok = 0;
    if (!ok) return ml_errorf("results: writing %s: %s", path, strerror(errno));
    return ML_OK;
}

long ml_results_extent(const ml_results *r, const char *name) {
    char path[RES_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

int ml_results_cut(ml_results *r, const char *name, long bytes) {
    char path[RES_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    long now = ml_results_extent(r, name);
    if (bytes < 0 || bytes > now)
        return ml_errorf("results: cannot cut %s back to %ld bytes: it has %ld", name, bytes, now);
    if (bytes == 0) {
        if (unlink(path) != 0 && errno != ENOENT) return ml_errorf("results: cannot remove %s: %s", path, strerror(errno));
        return ML_OK;
    }
    if (truncate(path, (off_t)bytes) != 0)
        return ml_errorf("results: cannot truncate %s to %ld bytes: %s", path, bytes, strerror(errno));
    return ML_OK;
}

void ml_results_sizes(ml_results *r, int *metrics_rows, long *routing_bytes, long *events_bytes) {
    if (metrics_rows) *metrics_rows = r->nrows;
    if (routing_bytes) *routing_bytes = file_size(r->routing);
    if (events_bytes) *events_bytes = file_size(r->events);
}

/* Truncates (or, for 0 bytes, closes and removes) one line file. */
static int cut_file(ml_results *r, FILE **f, const char *name, long bytes) {
    char path[RES_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    if (bytes == 0) {
        if (*f) fclose(*f);
        *f = NULL;
        if (unlink(path) != 0 && errno != ENOENT)
            return ml_errorf("results: cannot remove %s: %s", path, strerror(errno));
        return ML_OK;
    }
    if (ftruncate(fileno(*f), (off_t)bytes) != 0)
        return ml_errorf("results: cannot truncate %s to %ld bytes: %s", path, bytes, strerror(errno));
    return ML_OK;
}

int ml_results_truncate(ml_results *r, int metrics_rows, long routing_bytes, long events_bytes) {
    long rsize = file_size(r->routing), esize = file_size(r->events);
    if (metrics_rows < 0 || metrics_rows > r->nrows)
        return ml_errorf("results: cannot cut metrics.csv back to %d rows: it has %d", metrics_rows, r->nrows);
    if (routing_bytes < 0 || routing_bytes > rsize)
        return ml_errorf("results: cannot cut routing.csv back to %ld bytes: it has %ld", routing_bytes, rsize);
    if (routing_bytes > 0 && routing_bytes < r->routing_header)
        return ml_errorf("results: cannot cut routing.csv back to %ld bytes: its header alone has %ld",
                         routing_bytes, r->routing_header);
    if (events_bytes < 0 || events_bytes > esize)
        return ml_errorf("results: cannot cut events.jsonl back to %ld bytes: it has %ld", events_bytes, esize);
    if (cut_file(r, &r->routing, "routing.csv", routing_bytes)) return ML_ERR;
    if (!r->routing) {
        for (int i = 0; i < r->n_extra; i++) free(r->extra_names[i]);
        free(r->extra_names);
        r->extra_names = NULL;
        r->n_extra = 0;
        r->routing_header = 0;
    }
    if (cut_file(r, &r->events, "events.jsonl", events_bytes)) return ML_ERR;
    if (metrics_rows == r->nrows) return ML_OK;
    while (r->nrows > metrics_rows) {
        metrics_row *row = &r->rows[--r->nrows];
        for (int c = 0; c < row->n; c++) free(row->cells[c]);
        free(row->cells);
    }
    /* columns are created in row order, so those only dropped rows used are a suffix */
    int keep = 0;
    for (int i = 0; i < r->nrows; i++)
        for (int c = r->rows[i].n - 1; c >= keep; c--)
            if (r->rows[i].cells[c]) {
                keep = c + 1;
                break;
            }
    while (r->ncols > keep) free(r->cols[--r->ncols]);
    for (int i = 0; i < r->nrows; i++)
        if (r->rows[i].n > keep) r->rows[i].n = keep; /* the cut cells are all NULL */
    if (r->nrows == 0) {
        char path[RES_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/metrics.csv", r->dir);
        if (unlink(path) != 0 && errno != ENOENT)
            return ml_errorf("results: cannot remove %s: %s", path, strerror(errno));
        return ML_OK;
    }
    return metrics_write(r);
}
