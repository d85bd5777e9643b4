/*
 * sweep.h — a study: many ordinary `moelab run`s of one config (grid.h says which), each
 * in its own run directory under one sweep directory, with a manifest that lets any later
 * command (`--resume`, `--status`, a SLURM array task, `moelab summarize`) find them.
 *
 * Layout (docs/studies.md):
 *     <results.dir>/<experiment>/sweeps/<sweep-id>/
 *         sweep.yaml       the manifest: config, command, launcher, and per run its
 *                          overrides, group, seed and last known status
 *         000/ 001/ ...    one run directory each (docs/results.md)
 *         logs/000.log     what each run printed (every attempt, appended)
 *         slurm/           the sbatch script and SLURM's own output (slurm launcher)
 * The sweep id is --name, or "<config stem>-<hash>" where the hash covers the resolved
 * config and the plan: running the same command again finds the same directory and
 * finishes what is missing; a changed config or grid gets a new directory.
 *
 * A run's status lives in its own directory (summary.json, and the .lock a live run
 * holds); the manifest keeps the last status a launcher saw, for reading without the runs.
 * Runs are ordinary `moelab run` processes started by exec, so signals, checkpoints and
 * `--resume` behave exactly as for a run started by hand.
 *
 * Ownership: ml_sweep_create / ml_sweep_open return an owned sweep (ml_sweep_free).
 */
#ifndef MOELAB_SWEEP_H
#define MOELAB_SWEEP_H

#include <stdint.h>
#include <stdio.h>
#include "base/file.h"

enum {
    ML_RUN_PENDING = 0,     /* not started (no summary.json) */
    ML_RUN_RUNNING = 1,     /* a live moelab process holds the run directory */
    ML_RUN_OK = 2,          /* finished */
    ML_RUN_FAILED = 3,      /* ended with an error (status "error") */
    ML_RUN_INTERRUPTED = 4, /* stopped by a signal, or died (a checkpoint may resume it) */
    ML_RUN_CRASHED = 5      /* a plugin (or moelab) crashed */
};
const char *ml_run_state_name(int state);

typedef struct ml_sweep_run {
    char id[16];     /* "000": its directory name */
    int n;
    char **over;     /* its overrides, "key=value" */
    char *label;     /* the overrides of the sweep's axes, space-separated */
    char *group;     /* label without train.seed: runs that differ only in the seed */
    char *seed;      /* train.seed's value as written, or the config's */
    int state;       /* ML_RUN_*, as last seen */
    int exit_code;   /* of the last attempt (-1: none yet) */
    int attempts;    /* processes started for it */
    double seconds;  /* wall time of the last attempt */
} ml_sweep_run;

typedef struct ml_sweep_launcher {
    char name[16];          /* local | slurm */
    char partition[128], time[64], mem[64], account[128], qos[128];
    int max_parallel;       /* slurm: %M of --array; 0 = no limit */
    int n_sbatch;
    char **sbatch;          /* extra #SBATCH lines, "--gres=..." */
    char job_id[64];        /* the last array job submitted */
} ml_sweep_launcher;

typedef struct ml_sweep {
    char dir[ML_PATH_MAX];      /* the sweep directory (absolute) */
    char id[128];
    char experiment[128];
    char config[ML_PATH_MAX];   /* absolute */
    char cwd[ML_PATH_MAX];      /* where runs start (the sweep command's directory) */
    char moelab[ML_PATH_MAX];   /* the binary that runs them */
    char *command;              /* the command line that created the sweep */
    char created[32];
    uint64_t hash;              /* of the resolved config and the plan */
    int jobs, threads;          /* local workers; threads per run */
    ml_sweep_launcher launcher;
    int n_axes;
    char **axis;
    int n_runs;
    ml_sweep_run *run;
} ml_sweep;

typedef struct ml_sweep_opts {
    const char *name;        /* --name, or NULL */
    int jobs;                /* --jobs, 0 = the config's sweep.jobs or one per core */
    const char *launcher;    /* --launcher, or NULL = the config's launcher.name or local */
    const char *command;     /* the command line, for the manifest */
    int dry_run;             /* plan and check only: no directory, no manifest */
    /* slurm settings from the command line (NULL / 0 = the config's launcher: section) */
    const char *partition, *time, *mem, *account, *qos;
    int max_parallel;
    int n_sbatch;
    const char *const *sbatch;
} ml_sweep_opts;

/*
 * Plans the sweep (config + command-line axes), checks every run's config as `moelab run`
 * would (nothing starts when one is bad: the error names the run's overrides), and creates
 * the sweep directory and its manifest, or reopens it when it holds the same plan. With a
 * --name that holds another plan it fails.
 */
ml_sweep *ml_sweep_create(const char *config, const char *const *args, int n_args, const ml_sweep_opts *o);
/* Reads DIR/sweep.yaml. */
ml_sweep *ml_sweep_open(const char *dir);
void ml_sweep_free(ml_sweep *s);
/* Writes the manifest atomically. */
int ml_sweep_save(const ml_sweep *s);
/* Reads every run's status from its directory (state only; exit codes stay as saved). */
void ml_sweep_refresh(ml_sweep *s);
/* The status of one run directory (ML_RUN_*). */
int ml_sweep_dir_state(const char *run_dir);
/* DIR/<id> of run i into out. */
int ml_sweep_run_dir(const ml_sweep *s, int i, char *out, size_t cap);

/*
 * Readies run i to be started and gives the argv that starts it (owned: ml_sweep_argv_free):
 * `moelab run CONFIG overrides... results.run_dir=... train.threads=T` for a new run,
 * `moelab run --resume DIR` for an interrupted one that has a checkpoint. A failed,
 * crashed or checkpoint-less run directory is first renamed to <id>.attempt-<k> (kept,
 * never deleted). *argv = NULL when the run has finished (or is running): nothing to do.
 */
int ml_sweep_prepare(ml_sweep *s, int i, char ***argv);
void ml_sweep_argv_free(char **argv);
/* Prepares run i and replaces this process with it (chdir to the sweep's cwd, stdout and
   stderr appended to logs/<id>.log when to_log, after one line on stderr saying so): returns
   only on failure or when there is nothing to do (ML_OK). What a SLURM array task runs
   (`moelab sweep --task DIR I --log`); the log names the SLURM job, task and restart. */
int ml_sweep_exec(ml_sweep *s, int i, int to_log);

/* The launcher settings of the command line (o: --launcher, --partition, ..., --sbatch) over
   L's: each checked as ml_slurm_check_setting says, --sbatch lines appended. */
int ml_sweep_set_launcher(ml_sweep_launcher *L, const ml_sweep_opts *o);

/* The line a launcher prints when run i has ended, from its state, exit code and seconds:
   "moelab sweep: [3/12] 002 ok in 41.2 s, val_loss 0.0119  router.k=2", or for a run not
   ok its exit code (when >= 0), the last error line of logs/<id>.log, and note. */
void ml_sweep_print_ended(const ml_sweep *s, int i, int done, int todo, const char *note, FILE *out);
/* The attempts logs/<id>.log records (each attempt begins with a line that says so). */
int ml_sweep_log_attempts(const ml_sweep *s, int i);
/* summary.json's seconds of run i (the last attempt's), or NAN. */
double ml_sweep_run_seconds(const ml_sweep *s, int i);

/*
 * The local launcher: `jobs` workers (each run gets `threads` threads), a line on out per
 * finished run, failures do not stop the others. Returns the number of runs that did not
 * finish ok (0: all done), or -1 when interrupted (SIGINT/SIGTERM are passed on to the
 * runs, which save their interrupt checkpoints).
 */
int ml_sweep_run_local(ml_sweep *s, FILE *out);

/* The status table (one line per run, then the counts); returns the runs not ok. */
int ml_sweep_print_status(ml_sweep *s, FILE *out);

/* CPUs this process may use (its affinity mask). */
int ml_sweep_cpus(void);

#endif
