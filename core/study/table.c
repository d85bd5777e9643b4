/* table.c — CSV files of a run read back as numbers (table.h). */
#include "study/table.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_MAX_BYTES ((size_t)1 << 30)

void ml_table_free(ml_table *t) {
    if (!t) return;
    for (int i = 0; i < t->ncols; i++) free(t->cols[i]);
    free(t->cols);
    free(t->v);
    free(t->kind);
    free(t->path);
    free(t);
}

int ml_table_col(const ml_table *t, const char *name) {
    for (int i = 0; i < t->ncols; i++)
        if (!strcmp(t->cols[i], name)) return i;
    return -1;
}

double ml_table_num(const ml_table *t, int row, int col) {
    if (col < 0 || col >= t->ncols || row < 0 || row >= t->nrows) return NAN;
    return t->v[(size_t)row * t->ncols + col];
}

int ml_table_kind(const ml_table *t, int row, int col) {
    if (col < 0 || col >= t->ncols || row < 0 || row >= t->nrows) return ML_CELL_EMPTY;
    return t->kind[(size_t)row * t->ncols + col];
}

/*
 * The next cell from *p into cell (cleared first): quoted ("" is a quote) or plain up to
 * ',' or the end of the line ('\r' dropped). *end_of_row is set when the cell ended its
 * row. Returns ML_ERR on an unclosed quote.
 */
static int next_cell(const char **p, const char *end, ml_strbuf *cell, int *end_of_row) {
    const char *c = *p;
    ml_strbuf_clear(cell);
    ml_strbuf_put(cell, "", 0);
    if (c < end && *c == '"') {
        for (c++;; c++) {
            if (c >= end) return ML_ERR;
            if (*c == '"') {
                if (c + 1 < end && c[1] == '"') {
                    ml_strbuf_put(cell, "\"", 1);
                    c++;
                    continue;
                }
                c++;
                break;
            }
            ml_strbuf_put(cell, c, 1);
        }
    }
    const char *s = c;
    while (c < end && *c != ',' && *c != '\n') c++;
    const char *e = c;
    if (e > s && e[-1] == '\r') e--;
    ml_strbuf_put(cell, s, (size_t)(e - s));
    *end_of_row = !(c < end && *c == ',');
    *p = c < end ? c + 1 : c;
    return ML_OK;
}

/* A cell's number: strtod over the whole cell (nan, inf, -inf included). */
static int parse_num(const char *s, double *v) {
    if (!*s) return ML_CELL_EMPTY;
    char *end;
    double x = strtod(s, &end);
    if (end == s || *end) return ML_CELL_TEXT;
    *v = x;
    return ML_CELL_NUM;
}

ml_table *ml_table_load(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (ml_read_file(path, TABLE_MAX_BYTES, &text, &len)) return NULL;
    ml_table *t = ml_calloc(1, sizeof *t);
    ml_strbuf cell = {0};
    const char *p = text, *end = text + len;
    int line = 1, eor = 0, cap_cols = 0;
    size_t cap_cells = 0;
    if (!t || !(t->path = ml_strdup(path))) goto fail;
    if (len == 0) {
        ml_errorf("%s: empty file (no header)", path);
        goto fail;
    }
    /* the header */
    do {
        if (next_cell(&p, end, &cell, &eor)) {
            ml_errorf("%s:%d: a quoted cell is not closed", path, line);
            goto fail;
        }
        if (cell.oom) goto oom;
        if (!cell.buf[0]) {
            ml_errorf("%s:%d: column %d has no name", path, line, t->ncols + 1);
            goto fail;
        }
        if (ml_table_col(t, cell.buf) >= 0) {
            ml_errorf("%s:%d: column '%s' appears twice", path, line, cell.buf);
            goto fail;
        }
        if (t->ncols == cap_cols) {
            cap_cols = cap_cols ? 2 * cap_cols : 32;
            char **c = realloc(t->cols, (size_t)cap_cols * sizeof *c);
            if (!c) goto oom;
            t->cols = c;
        }
        if (!(t->cols[t->ncols] = ml_strdup(cell.buf))) goto fail;
        t->ncols++;
    } while (!eor);
    /* the rows */
    while (p < end) {
        line++;
        if (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n')) { /* a blank line */
            p += *p == '\n' ? 1 : 2;
            continue;
        }
        if ((size_t)(t->nrows + 1) * t->ncols > cap_cells) {
            size_t nc = cap_cells ? 2 * cap_cells : (size_t)t->ncols * 64;
            double *v = realloc(t->v, nc * sizeof *v);
            if (v) t->v = v;
            unsigned char *k = realloc(t->kind, nc);
            if (k) t->kind = k;
            if (!v || !k) goto oom;
            cap_cells = nc;
        }
        double *row = t->v + (size_t)t->nrows * t->ncols;
        unsigned char *kind = t->kind + (size_t)t->nrows * t->ncols;
        for (int i = 0; i < t->ncols; i++) {
            row[i] = NAN;
            kind[i] = ML_CELL_EMPTY;
        }
        int n = 0;
        do {
            if (next_cell(&p, end, &cell, &eor)) {
                ml_errorf("%s:%d: a quoted cell is not closed", path, line);
                goto fail;
            }
            if (cell.oom) goto oom;
            if (n >= t->ncols) {
                ml_errorf("%s:%d: more cells than the header's %d columns", path, line, t->ncols);
                goto fail;
            }
            double x;
            kind[n] = (unsigned char)parse_num(cell.buf, &x);
            if (kind[n] == ML_CELL_NUM) row[n] = x;
            n++;
        } while (!eor);
        t->nrows++;
    }
    ml_strbuf_free(&cell);
    free(text);
    return t;
oom:
    ml_errorf("%s: out of memory", path);
fail:
    ml_strbuf_free(&cell);
    free(text);
    ml_table_free(t);
    return NULL;
}
