/*
 * comm.h — the collective operations a computation split over processes needs, as a table
 * of functions. The model layer computes with it (model/moe.c, model/model.c: one part of
 * a global batch per process); the run layer fills it (run/dist.c, with MPI). Keeping MPI
 * behind this table keeps it out of every layer but run/ (tools/check-layers.sh).
 *
 * A batch of B rows is split over the `size` processes in contiguous parts: process r
 * holds rows [ml_part_off(B, size, r), ml_part_off(B, size, r + 1)), which every process
 * computes alike (ml_part_off). Every call is collective: all processes make it, in the
 * same order, with the same B and width. Functions return ML_OK or ML_ERR with a message.
 *
 * Ownership: the table is borrowed by whoever computes with it (run/dist.h owns it).
 */
#ifndef MOELAB_COMM_H
#define MOELAB_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct ml_comm {
    int rank, size;
    /* x (n) <- the sum of every process's x (n), in place */
    int (*sum_floats)(float *x, size_t n);
    int (*sum_doubles)(double *x, size_t n);
    /* *x <- the largest of the processes' *x */
    int (*max_int)(int *x);
    /* all (B, width) <- this process's part of the rows, mine (its rows, width), from each */
    int (*gather_rows)(const float *mine, float *all, int B, int width);
} ml_comm;

/* The first row of process r's part of a batch of B rows over `size` processes. */
static inline int ml_part_off(int B, int size, int r) { return (int)((int64_t)B * r / size); }

#endif
