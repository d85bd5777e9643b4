/*
 * slurm.h — the SLURM launcher of a sweep: one sbatch job array with one task per run that
 * has not finished; each task runs `moelab sweep --task DIR $SLURM_ARRAY_TASK_ID --log`,
 * which prepares its run as sweep.h says (finished: nothing; interrupted with a checkpoint:
 * `moelab run --resume`; failed: set aside, start anew) and becomes it by exec.
 *
 * The script, <sweepdir>/slurm/sweep.sbatch, is written anew for each submission and kept:
 * `--array=<the runs not finished>[%max_parallel]`, one task of `threads` CPUs each, output
 * to <sweepdir>/slurm/%A_%a.out (appended across requeues), `--requeue`, and
 * `--signal=B:TERM@60`. Because the task's shell execs moelab (no srun step), every signal
 * SLURM sends the batch step — that warning before the time limit, scancel, preemption,
 * `scontrol requeue` — reaches moelab itself, which stops after its current step and saves
 * its `interrupt` checkpoint; a requeued task then resumes from it. Runs assume a shared
 * filesystem: the nodes see the sweep directory, the config and the moelab binary at the
 * same absolute paths.
 *
 * Settings from configs and command lines end up in a shell script that runs on a cluster:
 * partition, time, mem, account and qos must match conservative character sets, extra
 * sbatch lines must be one `--option[=value]` line without control characters and may not
 * replace what the sweep relies on (array, output, error, open-mode, job-name,
 * cpus-per-task, parsable, wrap); paths go into the shell as single-quoted words and into
 * #SBATCH lines only when they hold no '"', '\', '%' or control character.
 *
 * Waiting needs no accounting database: it polls `squeue` for the array's tasks still
 * queued or running (only jobs whose name is this sweep's) and reads each run's state from
 * its directory when its task has left the queue.
 */
#ifndef MOELAB_SLURM_H
#define MOELAB_SLURM_H

#include <stddef.h>
#include <stdio.h>
#include "study/sweep.h"

#define ML_SLURM_SCRIPT "sweep.sbatch"   /* in <sweepdir>/slurm/ */
#define ML_SLURM_POLL_DEFAULT 10.0       /* seconds between squeue polls */

/* What ml_sweep_run_slurm returns besides the count of runs not ok. */
enum {
    ML_SLURM_INTERRUPTED = -1, /* SIGINT/SIGTERM while waiting: the array was cancelled */
    ML_SLURM_FAILED = -2,      /* sbatch or squeue could not be run or refused (ml_error) */
    ML_SLURM_BAD_SETTINGS = -3 /* a launcher setting may not go into a script (ml_error) */
};

/* Why a launcher setting (key: partition, time, mem, account, qos, sbatch) may not go into
   the script, or NULL when it may. The empty string is fine for all but sbatch lines. */
const char *ml_slurm_check_setting(const char *key, const char *value);
/* value for a message: control characters as \n, \t or \xNN, cut to fit out. */
const char *ml_slurm_visible(const char *value, char *out, size_t cap);
/* Every setting of l; the error names the setting and its value. */
int ml_slurm_check_launcher(const ml_sweep_launcher *l);

/* The --array value for the sorted run indices idx[0..n) ("0-3,5,7-9"), with "%M" when
   max_parallel > 0. */
int ml_slurm_array_spec(const int *idx, int n, int max_parallel, char *out, size_t cap);

/* Writes <sweepdir>/slurm/sweep.sbatch for the runs idx[0..n) (sorted); its path into path. */
int ml_slurm_write_script(const ml_sweep *s, const int *idx, int n, char *path, size_t cap);

/* The tasks of array job job_id named like this sweep's that are still queued or running
   (squeue); their indices go to active[] (s->n_runs entries, 1 = active) when not NULL.
   Returns their count, or -1 when squeue failed (ml_error). */
int ml_slurm_active(const ml_sweep *s, const char *job_id, unsigned char *active);

typedef struct ml_slurm_opts {
    int no_wait;    /* submit, record the job id, return 0 */
    double poll;    /* seconds between squeue polls; <= 0: ML_SLURM_POLL_DEFAULT */
} ml_slurm_opts;

/*
 * The SLURM launcher. When the manifest's last job of this sweep still has tasks queued or
 * running, waits for it instead of submitting again. Otherwise submits the runs not
 * finished (none: nothing to do) as one array with `sbatch --parsable`, records the job id
 * in the manifest and, unless o->no_wait, polls until every task has left the queue,
 * printing a line on out per run as it ends. SIGINT/SIGTERM while waiting cancel the array
 * (scancel: running tasks get SIGTERM and save their interrupt checkpoints), wait for its
 * tasks to end and return ML_SLURM_INTERRUPTED; a second one stops waiting at once.
 * Returns the runs not ok (0: all done), or ML_SLURM_*.
 */
int ml_sweep_run_slurm(ml_sweep *s, const ml_slurm_opts *o, FILE *out);

#endif
