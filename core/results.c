/* results.c — run directory, metrics/routing/events/summary files, atomic writes. */
#include "results.h"
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    int n_extra;
    char **extra_names;
    /* events.jsonl */
    FILE *events;
};

/* ================================================================ atomic writes */

static int write_all(int fd, const void *data, size_t n) {
    const char *p = data;
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

static void dir_of(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else if (slash == path) snprintf(out, cap, "/");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    /* Some file systems refuse fsync on directories; the rename is still done. */
    if (rc < 0 && (errno == EINVAL || errno == EBADF)) rc = 0;
    close(fd);
    return rc;
}

int ml_write_file_atomic(const char *path, const void *data, size_t n) {
    char tmp[RES_PATH_MAX + 8], dir[RES_PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return ml_errorf("%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return ml_errorf("%s: cannot create temporary file %s: %s", path, tmp, strerror(errno));
    const char *step = NULL;
    if (write_all(fd, data, n) < 0) step = "write";
    else if (fsync(fd) < 0) step = "fsync";
    int err = errno;
    if (close(fd) < 0 && !step) {
        step = "close";
        err = errno;
    }
    if (!step && rename(tmp, path) < 0) {
        step = "rename";
        err = errno;
    }
    if (step) {
        unlink(tmp);
        return ml_errorf("%s: %s failed: %s (the previous file, if any, is untouched)", path, step,
                         strerror(err));
    }
    dir_of(path, dir, sizeof dir);
    if (fsync_dir(dir) < 0)
        return ml_errorf("%s: written, but fsync of directory %s failed: %s", path, dir, strerror(errno));
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

static int mkdir_p(const char *path) {
    char buf[RES_PATH_MAX];
    if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf)
        return ml_errorf("%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) < 0 && errno != EEXIST)
                return ml_errorf("cannot create directory %s: %s", buf, strerror(errno));
            struct stat st;
            if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
                return ml_errorf("cannot create directory %s: a file of that name exists", buf);
            *p = c;
            if (!c) break;
        }
    }
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

ml_results *ml_results_open(const char *dir, const char *experiment, const char *run_id) {
    if (!dir || !*dir) dir = ".";
    if (check_component("experiment", experiment)) return NULL;
    int explicit_id = run_id && *run_id;
    if (explicit_id && check_component("run id", run_id)) return NULL;
    char parent[RES_PATH_MAX];
    if (path_join(parent, sizeof parent - 256, dir, experiment)) return NULL;
    if (mkdir_p(parent)) {
        ml_error_prefix("results");
        return NULL;
    }
    ml_results *r = ml_calloc(1, sizeof *r);
    if (!r) return NULL;
    if (explicit_id) {
        snprintf(r->run_id, sizeof r->run_id, "%s", run_id);
        path_join(r->dir, sizeof r->dir, parent, run_id); /* fits: parent < 3840, id < 200 */
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
    char ck[RES_PATH_MAX + 16];
    snprintf(ck, sizeof ck, "%s/checkpoints", r->dir);
    if (mkdir(ck, 0777) < 0 && errno != EEXIST) {
        ml_errorf("results: cannot create %s: %s", ck, strerror(errno));
        free(r);
        return NULL;
    }
    return r;
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

/* A growable text buffer; on out-of-memory it latches `oom` and stops growing. */
typedef struct sbuf {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Appends one cell, quoted (quotes doubled) when it holds a comma, quote, CR or LF. */
static void sb_cell(sbuf *b, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        sb_puts(b, s);
        return;
    }
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"') sb_put(b, "\"", 1);
        sb_put(b, p, 1);
    }
    sb_put(b, "\"", 1);
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
    sbuf b = {0};
    for (int c = 0; c < r->ncols; c++) {
        if (c) sb_put(&b, ",", 1);
        sb_cell(&b, r->cols[c]);
    }
    sb_put(&b, "\n", 1);
    for (int i = 0; i < r->nrows; i++) {
        const metrics_row *row = &r->rows[i];
        for (int c = 0; c < r->ncols; c++) {
            if (c) sb_put(&b, ",", 1);
            if (c < row->n && row->cells[c]) sb_cell(&b, row->cells[c]);
        }
        sb_put(&b, "\n", 1);
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
        sbuf b = {0};
        sb_puts(&b, "epoch,layer,expert,utilisation,importance");
        for (int i = 0; i < n_extra; i++) {
            sb_put(&b, ",", 1);
            sb_cell(&b, names[i]);
        }
        sb_put(&b, "\n", 1);
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
    sbuf b = {0};
    for (int e = 0; e < h->num_experts; e++) {
        char num[64];
        snprintf(num, sizeof num, "%d,%d,%d,", epoch, layer, e);
        sb_puts(&b, num);
        fmt_num(num, sizeof num, h->utilisation[e]);
        sb_puts(&b, num);
        sb_put(&b, ",", 1);
        fmt_num(num, sizeof num, h->importance[e]);
        sb_puts(&b, num);
        for (int c = 0; c < r->n_extra; c++) {
            sb_put(&b, ",", 1);
            if (col[c]) {
                fmt_num(num, sizeof num, col[c][e]);
                sb_puts(&b, num);
            }
        }
        sb_put(&b, "\n", 1);
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
    sbuf b = {0};
    sb_put(&b, line, j.len - 1); /* without the closing brace */
    if (fields_json && *fields_json) {
        sb_put(&b, ",", 1);
        sb_puts(&b, fields_json);
    }
    sb_put(&b, "}", 1);
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
    sb_put(&b, "\n", 1);
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
    free(r);
}

/* ================================================================ resume */
/* Interim versions of the resume functions (the results helper's branch has the final
 * ones; same names and signatures). */

/* One CSV record from *p (quotes doubled inside quoted cells); cells malloc'd, "" -> NULL. */
static int csv_record(const char **p, char ***cells, int *n) {
    *cells = NULL;
    *n = 0;
    int cap = 0;
    const char *s = *p;
    for (;;) {
        sbuf b = {0};
        sb_put(&b, "", 0);
        if (*s == '"') {
            s++;
            for (;;) {
                if (!*s) {
                    free(b.buf);
                    return ML_ERR;
                }
                if (*s == '"' && s[1] == '"') { sb_put(&b, "\"", 1); s += 2; continue; }
                if (*s == '"') { s++; break; }
                sb_put(&b, s++, 1);
            }
        } else {
            while (*s && *s != ',' && *s != '\n' && *s != '\r') sb_put(&b, s++, 1);
        }
        if (b.oom) return ML_ERR;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **c = realloc(*cells, (size_t)cap * sizeof *c);
            if (!c) {
                free(b.buf);
                return ML_ERR;
            }
            *cells = c;
        }
        if (b.len == 0) {
            free(b.buf);
            b.buf = NULL;
        }
        (*cells)[(*n)++] = b.buf;
        if (*s == ',') { s++; continue; }
        if (*s == '\r') s++;
        if (*s == '\n') s++;
        break;
    }
    *p = s;
    return ML_OK;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    sbuf b = {0};
    char tmp[8192];
    size_t k;
    sb_put(&b, "", 0);
    while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) sb_put(&b, tmp, k);
    fclose(f);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    *len = b.len;
    return b.buf;
}

ml_results *ml_results_reopen(const char *run_dir) {
    ml_results *r = ml_calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->dir, sizeof r->dir, "%s", run_dir);
    const char *slash = strrchr(run_dir, '/');
    snprintf(r->run_id, sizeof r->run_id, "%s", slash ? slash + 1 : run_dir);
    char path[RES_PATH_MAX + 32];
    size_t len;
    snprintf(path, sizeof path, "%s/metrics.csv", r->dir);
    char *text = slurp(path, &len);
    if (text && len) {
        const char *p = text;
        char **cells;
        int n;
        if (csv_record(&p, &cells, &n)) goto bad_metrics;
        r->cols = cells;
        r->ncols = r->capcols = n;
        for (int c = 0; c < n; c++)
            if (!cells[c]) goto bad_metrics;
        while (*p) {
            if (csv_record(&p, &cells, &n) || n > r->ncols) {
                for (int c = 0; c < n; c++) free(cells[c]);
                free(cells);
                goto bad_metrics;
            }
            if (r->nrows == r->caprows) {
                int nc = r->caprows ? 2 * r->caprows : 64;
                metrics_row *rows = realloc(r->rows, (size_t)nc * sizeof *rows);
                if (!rows) goto bad_metrics;
                r->rows = rows;
                r->caprows = nc;
            }
            r->rows[r->nrows++] = (metrics_row){n, cells};
        }
    }
    free(text);
    snprintf(path, sizeof path, "%s/routing.csv", r->dir);
    text = slurp(path, &len);
    if (text && len) {
        const char *p = text;
        char **cells;
        int n;
        if (csv_record(&p, &cells, &n) || n < 5) {
            free(text);
            ml_errorf("%s: not a moelab routing.csv (bad header)", path);
            ml_results_close(r);
            return NULL;
        }
        for (int c = 0; c < 5; c++) free(cells[c]);
        r->n_extra = n - 5;
        r->extra_names = ml_calloc((size_t)(n > 5 ? n - 5 : 1), sizeof *r->extra_names);
        for (int c = 5; c < n; c++) r->extra_names[c - 5] = cells[c];
        free(cells);
        r->routing = fopen(path, "a");
    }
    free(text);
    snprintf(path, sizeof path, "%s/events.jsonl", r->dir);
    struct stat st;
    if (stat(path, &st) == 0) r->events = fopen(path, "a");
    return r;
bad_metrics:
    free(text);
    ml_errorf("%s: cannot read it back (not a metrics.csv moelab wrote)", path);
    ml_results_close(r);
    return NULL;
}

static long file_size(FILE *f) {
    struct stat st;
    if (!f) return 0;
    fflush(f);
    return fstat(fileno(f), &st) == 0 ? (long)st.st_size : 0;
}

void ml_results_sizes(ml_results *r, int *metrics_rows, long *routing_bytes, long *events_bytes) {
    *metrics_rows = r->nrows;
    *routing_bytes = file_size(r->routing);
    *events_bytes = file_size(r->events);
}

/* Cuts a line file back to n bytes; 0 removes it, so the next write creates it afresh. */
static int cut_file(ml_results *r, FILE **f, const char *name, long n) {
    char path[RES_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    if (n == file_size(*f)) return ML_OK;
    if (*f) fclose(*f);
    *f = NULL;
    if (n == 0) return unlink(path) == 0 ? ML_OK : ml_errorf("%s: cannot remove: %s", path, strerror(errno));
    if (truncate(path, n) != 0) return ml_errorf("%s: cannot truncate to %ld bytes: %s", path, n, strerror(errno));
    if (!(*f = fopen(path, "a"))) return ml_errorf("%s: cannot reopen: %s", path, strerror(errno));
    return ML_OK;
}

int ml_results_truncate(ml_results *r, int metrics_rows, long routing_bytes, long events_bytes) {
    /* all checks before any change: a mismatch leaves every file as it was */
    if (metrics_rows > r->nrows)
        return ml_errorf("%s/metrics.csv has %d rows, the checkpoint was taken when it had %d (was it edited?)", r->dir,
                         r->nrows, metrics_rows);
    long rb = file_size(r->routing), eb = file_size(r->events);
    if (routing_bytes > rb || events_bytes > eb)
        return ml_errorf("%s/%s has %ld bytes, the checkpoint was taken when it had %ld (was it edited?)", r->dir,
                         routing_bytes > rb ? "routing.csv" : "events.jsonl", routing_bytes > rb ? rb : eb,
                         routing_bytes > rb ? routing_bytes : events_bytes);
    if (metrics_rows < r->nrows) {
        while (r->nrows > metrics_rows) {
            metrics_row *row = &r->rows[--r->nrows];
            for (int c = 0; c < row->n; c++) free(row->cells[c]);
            free(row->cells);
        }
        /* columns only the removed rows had (new columns are only ever added at the right) */
        int keep = 0;
        for (int i = 0; i < r->nrows; i++)
            for (int c = 0; c < r->rows[i].n; c++)
                if (r->rows[i].cells[c] && c + 1 > keep) keep = c + 1;
        while (r->ncols > keep) free(r->cols[--r->ncols]);
        for (int i = 0; i < r->nrows; i++)
            if (r->rows[i].n > r->ncols) r->rows[i].n = r->ncols;
        if (metrics_write(r)) return ML_ERR;
    }
    if (cut_file(r, &r->routing, "routing.csv", routing_bytes)) return ML_ERR;
    if (!r->routing) {
        for (int i = 0; i < r->n_extra; i++) free(r->extra_names[i]);
        free(r->extra_names);
        r->extra_names = NULL;
        r->n_extra = 0;
    }
    return cut_file(r, &r->events, "events.jsonl", events_bytes);
}
