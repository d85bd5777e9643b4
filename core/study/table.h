/*
 * table.h — a run's CSV files (metrics.csv, routing.csv, steps.csv, routing_steps.csv) read
 * back as tables of numbers, for the commands that study finished runs (summarize, plot).
 * The files are RFC 4180 as core/io/results.c writes them: a header of unique names, then
 * rows whose cells are numbers (`nan`, `inf`, `-inf` included), empty (a value not logged
 * in that row) or text (a script's own string columns).
 *
 * Ownership: ml_table_load returns an owned table, freed with ml_table_free (NULL is a
 * no-op); names and values are owned by the table.
 */
#ifndef MOELAB_TABLE_H
#define MOELAB_TABLE_H

#include <stddef.h>

enum { ML_CELL_EMPTY = 0, ML_CELL_NUM = 1, ML_CELL_TEXT = 2 };

typedef struct ml_table {
    char *path;           /* as given to ml_table_load */
    int ncols, nrows;
    char **cols;          /* (ncols) column names */
    double *v;            /* (nrows, ncols) the numbers; NaN in empty and text cells */
    unsigned char *kind;  /* (nrows, ncols) ML_CELL_* */
} ml_table;

/*
 * Reads path (at most 1 GiB). Fails, naming the file, when it cannot be read, has no
 * header, a header name is empty or repeated, a quoted cell is not closed, or a row has
 * more cells than the header (fewer is fine: the rest are empty).
 */
ml_table *ml_table_load(const char *path);
void ml_table_free(ml_table *t);

/* The index of column name, or -1. */
int ml_table_col(const ml_table *t, const char *name);
/* The number in (row, col), NaN when the cell is empty or text or col is -1. */
double ml_table_num(const ml_table *t, int row, int col);
/* ML_CELL_* of (row, col); ML_CELL_EMPTY for col -1. */
int ml_table_kind(const ml_table *t, int row, int col);

#endif
