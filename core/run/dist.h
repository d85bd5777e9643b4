/*
 * dist.h — data parallelism across processes: `mpirun -np R moelab run CONFIG` runs R
 * processes (ranks), each computing its part of every global batch (docs/PERFORMANCE.md,
 * "Data parallelism (MPI)"). This module is the only user of MPI (OpenMPI; the build
 * defines ML_MPI when it finds it): it starts and ends MPI and fills the collective
 * table the model computes with (base/comm.h).
 *
 * A process not started by an MPI launcher (no OMPI_COMM_WORLD_SIZE, PMI_SIZE or
 * PMIX_RANK in its environment) never initialises MPI: it is rank 0 of 1, exactly as a
 * build without MPI. A build without MPI started by a launcher with more than one rank
 * refuses (each process would train the whole run on its own and write the same files).
 *
 * Ownership: the table ml_dist_comm returns is static; nothing to free.
 */
#ifndef MOELAB_DIST_H
#define MOELAB_DIST_H

#include "base/comm.h"

/* Starts MPI when a launcher started this process; ML_OK, or ML_ERR with a message. */
int ml_dist_init(int *argc, char ***argv);
/* Ends MPI (a no-op when it was not started). */
void ml_dist_finalize(void);
/* Ends every rank of the job: a rank that fails while the others wait in a collective
   would leave them waiting forever. Returns only when MPI is not running. */
void ml_dist_abort(int code);
int ml_dist_rank(void);
int ml_dist_size(void);
/* The ranks of this job on this machine (they share its cores). */
int ml_dist_local_size(void);
/* The number of processes an MPI launcher started this job with (from the environment, without
   starting MPI), or 0 when no launcher started it. */
int ml_dist_launched_size(void);
/* This process's rank as the launcher announces it (0 when none does). */
int ml_dist_launched_rank(void);
/* 1 when moelab was built with MPI. */
int ml_dist_built(void);
/* The collectives of this job, or NULL for a job of one rank. */
const ml_comm *ml_dist_comm(void);
/* Every rank waits for every other. */
int ml_dist_barrier(void);

#endif
