/*
 * main.c — the `moelab` command.
 *
 *   moelab run CONFIG [a.b=value ...]   run an experiment
 *   moelab run --resume RUN_DIR [--from TAG]   continue an interrupted run in its directory
 *   moelab plugins                      list plugins with their options
 *   moelab plugin-test FILE.so          conformance suite for a router/loss/schedule plugin
 *   moelab bench [options]              time the SRNN, cod or MLP training step (see docs/PERFORMANCE.md)
 *   moelab lua SCRIPT                   run a Lua script with `moelab` but no experiment
 *   moelab sweep CONFIG [key=v1,v2 ...] a study: many runs, locally or as a SLURM array
 *   moelab summarize DIR...             mean ± sd and 95% CI per group of seeds (docs/studies.md)
 *   moelab plot DIR...                  PNG plots of runs and studies, drawn by gnuplot
 *
 * Exit status: 0 success, 1 a run/script/plugin/data failure, 2 a bad command line or
 * config (nothing was run), 130 interrupted by SIGINT/SIGTERM (resume with --resume).
 */
#include <inttypes.h>
#include <libgen.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "run/bench.h"
#include "run/checkpoint.h"
#include "base/cpuload.h"
#include "base/crash.h"
#include "base/strbuf.h"
#include "run/experiment.h"
#include "run/dist.h"
#include "run/provenance.h"
#include "base/version.h"
#include "lua/luaexp.h"
#include "plugin/loader.h"
#include "plugin/plugintest.h"
#include "study/slurm.h"
#include "study/sweep.h"
#include "study/summarize.h"
#include "study/plot.h"

static char g_root[2048]; /* directory holding the executable (the build dir) */
static int g_argc;         /* the command line, for provenance */
static char **g_argv;

static void find_root(void) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        strcpy(g_root, ".");
        return;
    }
    exe[n] = 0;
    snprintf(g_root, sizeof g_root, "%s", dirname(exe));
}

/* The installation's scripts/ (next to the build directory). */
static void scripts_dir(char *out, size_t n, const char *sub) {
    snprintf(out, n, "%s/../scripts%s", g_root, sub);
}

static int usage(FILE *f) {
    fputs("usage: moelab run CONFIG [key.path=value ...]\n"
          "       moelab run --resume RUN_DIR [--from TAG]\n"
          "       moelab plugins\n"
          "       moelab plugin-test FILE.so\n"
          "       moelab bench [--model srnn|cod|mlp] [--image HxWxC] [--batch B] [--experts E] [--top-k K] [--steps S] [--threads T]\n"
          "                    [--idle-experts dense|lazy]\n"
          "       moelab lua SCRIPT\n"
          "       moelab sweep CONFIG [key=v1,v2,... ...] [--jobs N] [--launcher local|slurm] [--name NAME]\n"
          "       moelab sweep --resume DIR | --status DIR\n"
          "       moelab summarize DIR... [--cols C,...] [--at last|best|epoch=N] [--by KEY,...] [--format markdown|csv|json]\n"
          "       moelab plot RUN_OR_SWEEP_DIR... [--metric COL] [--at last|best|epoch=N] [--size WxH] [--runs]\n"
          "       moelab version\n"
          "`moelab COMMAND --help` tells more about each command.\n",
          f);
    return f == stdout ? 0 : ML_EXIT_USAGE;
}

/* `moelab CMD --help`: what each subcommand does, its arguments and exit statuses. */
static const struct { const char *cmd, *text; } g_help[] = {
    {"run",
     "usage: moelab run CONFIG [key.path=value ...] [--print-config] [--quiet]\n"
     "       moelab run --resume RUN_DIR [--from TAG] [--quiet]\n\n"
     "Runs the experiment CONFIG (YAML, docs/configs.md) with its Lua script (default\n"
     "scripts/train.lua) and writes results/<experiment>/<run-id>/ (docs/results.md).\n"
     "key.path=value overrides a config value, e.g. train.epochs=2 router.k=1.\n"
     "--print-config prints the resolved config (defaults filled in, paths made absolute,\n"
     "plugin options checked) as the run would save it, and exits.\n"
     "Progress: a bar on a terminal, a line per epoch (task and validation loss, experts and\n"
     "active experts per layer, the collapse flag, time and ETA), growth and interventions\n"
     "as they happen; --quiet (-q) prints none of it (warnings and errors still).\n\n"
     "Ctrl-C or SIGTERM stops the run after the current step, saves the checkpoint\n"
     "'interrupt' and exits 130. --resume RUN_DIR continues that run in its directory,\n"
     "with the config it was started with, from 'interrupt' (or 'last' when it is further,\n"
     "or --from TAG), and gives the same results as a run never interrupted.\n"
     "Scripts run in a sandbox (docs/lua-api.md, docs/reliability.md).\n\n"
     "Exit status: 0 done; 1 a script, plugin, data or checkpoint failure; 2 a bad command\n"
     "line or config (nothing was run); 130 interrupted; killed by the signal when a plugin\n"
     "crashed (summary.json then says \"crashed\").\n"},
    {"plugins",
     "usage: moelab plugins\n\n"
     "Lists every plugin on the search path (the build's plugins, then $MOELAB_PLUGIN_PATH)\n"
     "with its kind, version, ABI and options (type, default, range, doc).\n"},
    {"plugin-test",
     "usage: moelab plugin-test FILE.so|NAME\n\n"
     "Runs the conformance suite on a router, loss or schedule plugin: descriptor and\n"
     "options, finite-difference gradients, dispatch rules, growth, checkpoint round trip.\n"
     "Exit status 0 when every check passes, 1 otherwise.\n"},
    {"bench",
     "usage: moelab bench [--model srnn|cod|mlp] [--image HxWxC] [--batch B] [--experts E] [--top-k K]\n"
     "                    [--steps S] [--threads T] [--idle-experts dense|lazy]\n\n"
     "Times S training steps (after 2 warm-up steps) on random data and prints one line;\n"
     "`make bench` runs it beside the PyTorch peer of each model (docs/PERFORMANCE.md).\n"
     "  --model srnn   the SRNN autoencoder (../shared/bench/torch_srnn_ref.py): saturation\n"
     "                 router, residual-MLP experts, MSE + 0.1 load balance (default)\n"
     "  --model cod    the camouflage segmentation net (model.type cod, bench/torch_cod_ref.py):\n"
     "                 channels 32,64,128,256, a softmax_topk MoE layer per scale, experts\n"
     "                 texture, frequency, edge, contrast, ...; BCE + soft IoU against a random\n"
     "                 mask + 0.01 load balance per layer\n"
     "  --model mlp    the demo's MLP autoencoder (configs/demo.yaml, bench/torch_mlp_moe_ref.py):\n"
     "                 784-256-64 encoder, one MoE layer of residual-MLP experts 64-128-64 with a\n"
     "                 softmax_topk router, 64-256-784 decoder; MSE + 0.01 load balance; 28x28x1\n"
     "  --image HxWxC  image size, H and W multiples of 16 (default 64x64x3; not for mlp)\n"
     "  --batch B      images per step (default 64 for srnn and mlp, 16 for cod)\n"
     "  --experts E    experts per MoE layer (default 16 for srnn, 6 for cod, 4 for mlp)\n"
     "  --top-k K      experts per image (default 2)\n"
     "  --steps S      timed steps (default 10; 200 for mlp)\n"
     "  --idle-experts dense|lazy  mlp: optim.idle_experts, what Adam does with the experts a\n"
     "                 step did not use (default dense)\n"
     "  --threads T    OpenMP and OpenBLAS threads (default 1)\n"
     "Exit status: 0 done; 1 a failure; 2 a bad option.\n"},
    {"lua",
     "usage: moelab lua SCRIPT\n\n"
     "Runs a Lua script in the sandbox with the `moelab` table (standalone routers and\n"
     "losses) but no experiment. Ctrl-C stops it (exit 130).\n"},
    {"sweep",
     "usage: moelab sweep CONFIG [key=v1,v2,... | key=range(a,b[,step]) | key=value ...] [options]\n"
     "       moelab sweep --resume DIR [--jobs N] [--launcher local|slurm] [slurm options]\n"
     "       moelab sweep --status DIR\n"
     "       moelab sweep --task DIR INDEX [--log]\n\n"
     "Runs a study: the Cartesian product of the command line's lists (and the config's\n"
     "sweep: grid and runs), one ordinary run directory each, under\n"
     "<results.dir>/<experiment>/sweeps/<sweep-id>/ with the manifest sweep.yaml\n"
     "(docs/studies.md). train.seed=1,2,3 is one more axis; key=value (one value) applies to\n"
     "every run. Every run's config is checked before anything starts. Running the same\n"
     "command again finishes what is missing: finished runs are kept, interrupted ones\n"
     "resume from their checkpoint, failed ones start again (the failed directory is kept\n"
     "as <id>.attempt-<k>).\n\n"
     "Options:\n"
     "  --jobs N            runs at a time (default: one per CPU, or sweep.jobs); each run gets\n"
     "                      CPUs / N threads, so the machine is never oversubscribed\n"
     "  --launcher L        local (default, or launcher.name) or slurm (a job array)\n"
     "  --name NAME         the sweep id (default: config name + a hash of config and grid)\n"
     "  --dry-run           print the runs and their overrides, start nothing\n"
     "  --resume DIR        continue the sweep in DIR (same as re-running its command)\n"
     "  --status DIR        each run's status, from the run directories (and squeue's\n"
     "                      count of the sweep's SLURM tasks still queued or running)\n"
     "  --task DIR INDEX [--log]  run one run of the sweep in this process (what a SLURM\n"
     "                      array task runs; INDEX counts from 0; --log: output to logs/)\n\n"
     "SLURM (--launcher slurm, or launcher.name: slurm; docs/studies.md \"SLURM\"): one job\n"
     "array, one task per run not finished, from <sweep>/slurm/sweep.sbatch (submitted with\n"
     "sbatch --parsable, output in <sweep>/slurm/<job>_<task>.out); runs need a filesystem\n"
     "the nodes share. Preempted or requeued tasks resume from their checkpoints.\n"
     "  --partition P  --time T  --mem M  --account A  --qos Q   as sbatch's (checked first)\n"
     "  --max-parallel M    at most M tasks at a time (--array=...%M)\n"
     "  --sbatch LINE       one more #SBATCH line, e.g. --sbatch --gres=gpu:1 (repeatable)\n"
     "  --no-wait           submit, print the job id and return; --status DIR follows it,\n"
     "                      the same command again waits for it\n"
     "  --poll SECONDS      seconds between squeue polls while waiting (default 10)\n"
     "Waiting prints a line per run as it ends. Ctrl-C cancels the array (scancel): running\n"
     "runs save their interrupt checkpoints; a second Ctrl-C stops waiting at once.\n\n"
     "Exit status: 0 every run finished; 1 some run failed (the lines above say which), or\n"
     "sbatch/squeue failed; 2 a bad command line, config, grid or launcher setting (nothing\n"
     "was started); 130 interrupted (the runs saved their interrupt checkpoints; run the\n"
     "command again to continue).\n"},
    {"summarize",
     "usage: moelab summarize DIR... [--cols C1,C2,...] [--at last|best|epoch=N] [--best-by COL[:max]]\n"
     "                        [--by KEY1,KEY2,...] [--format markdown|csv|json] [--include-unfinished]\n\n"
     "One table over a study's runs: per group of runs that differ only in the seed, and per\n"
     "metrics.csv column, n, mean, sample standard deviation and the 95% confidence interval\n"
     "of the mean (Student's t with n-1 degrees of freedom; none for n = 1). docs/studies.md.\n\n"
     "DIR is a sweep directory (sweep.yaml), a run directory, or a directory holding runs or\n"
     "sweeps (searched 3 levels down, e.g. results/demo/); any mix. Groups come from each\n"
     "run's config.yaml: the keys whose values differ between the runs, leaving out keys that\n"
     "cannot change results (train.seed, train.threads, experiment, results.*, sweep.*,\n"
     "launcher.*, lua.*). Each group's seeds are listed.\n\n"
     "Options:\n"
     "  --cols C1,C2,...    metrics.csv columns (default: val_loss and, per MoE layer L,\n"
     "                      moe<L>_active, moe<L>_cv, moe<L>_mutual_info, moe<L>_collapsed)\n"
     "  --at last           each run's last metrics.csv row (default)\n"
     "  --at best           the epoch with the lowest val_loss, or the one --best-by chooses\n"
     "  --at epoch=N        the row of epoch N\n"
     "  --best-by COL[:max] judge 'best' by COL, lowest (or highest with :max)\n"
     "  --by KEY1,KEY2,...  group by these config keys instead (a section such as 'router'\n"
     "                      means all its keys; train.seed and the other left-out keys too)\n"
     "  --format F          markdown (default): mean ± sd [lo, hi] (n=...) per cell;\n"
     "                      csv: one row per group and column (group, col, n, mean, sd, ci_lo,\n"
     "                      ci_hi, runs, seeds, then the group's key values); json: groups with\n"
     "                      their keys, statistics and each run's values\n"
     "  --include-unfinished  keep runs whose status is not ok (left out and listed by default)\n\n"
     "Values that are missing (no such column, empty, nan, inf, no such epoch) are not counted\n"
     "in n; stderr names the runs that lack them.\n\n"
     "Exit status: 0 done; 1 nothing could be summarised; 2 a bad command line (unknown\n"
     "option or column, a DIR that does not exist).\n"},
    {"plot",
     "usage: moelab plot RUN_OR_SWEEP_DIR... [--metric COL] [--at last|best|epoch=N] [--best-by COL[:max]]\n"
     "                   [--by KEY1,KEY2,...] [--size WxH] [--runs] [--include-unfinished]\n\n"
     "Draws PNGs with gnuplot into DIR/plots/, beside the data files and gnuplot scripts that\n"
     "made them (edit a script and run `gnuplot NAME.gp` there to change a plot). Each PNG\n"
     "written is named on stdout. docs/studies.md shows them.\n\n"
     "A run directory gets loss.png (task loss and each balancing loss, training and\n"
     "validation), routing.png (active experts, H(u)/log N and I(x; expert) per MoE layer),\n"
     "heatmap_moe<L>.png (expert utilisation, expert x epoch, with experts_added, collapse and\n"
     "intervention events from events.jsonl), and from routing_steps.csv and steps.csv when\n"
     "the run has them, heatmap_steps_moe<L>.png and steps.png (per step).\n"
     "A sweep directory, or a directory of runs, gets per group of runs that differ only in\n"
     "the seed (as moelab summarize groups them) curve_<metric>.png (mean over epochs with a\n"
     "95% CI band) and compare_<metric>_<at>.png (mean and 95% CI at the last or best epoch).\n\n"
     "Options:\n"
     "  --metric COL        the metrics.csv column of the study plots (default val_loss)\n"
     "  --at last|best|epoch=N  the comparison's epoch (default last; best: lowest val_loss)\n"
     "  --best-by COL[:max] judge 'best' by COL, lowest (or highest with :max)\n"
     "  --by KEY1,KEY2,...  group by these config keys (as moelab summarize --by)\n"
     "  --size WxH          pixels of every PNG (default 1000x600)\n"
     "  --runs              with a study, also plot each of its runs\n"
     "  --include-unfinished  keep runs whose status is not ok\n\n"
     "Needs gnuplot with the pngcairo terminal (Debian: gnuplot-nox, which make test installs).\n\n"
     "Exit status: 0 every plot written; 1 a plot failed, a run had no metrics.csv rows, or\n"
     "gnuplot is missing; 2 a bad command line.\n"},
    {"version", "usage: moelab version\n\nPrints moelab's version and plugin ABI version.\n"},
};

static const char *resolve_script(const ml_experiment *e, char *buf, size_t n) {
    const char *s = ml_config_str(e->cfg, "script", "scripts/train.lua");
    if (s[0] == '/' || access(s, R_OK) == 0) return s;
    snprintf(buf, n, "%s/../%s", g_root, s); /* relative to the installation */
    return access(buf, R_OK) == 0 ? buf : s;
}

static void on_signal(int sig) {
    ml_exp_interrupted = sig;
    signal(sig, SIG_DFL); /* a second signal ends the process at once */
}

#define ML_EXIT_INTERRUPTED 130 /* 128 + SIGINT, as shells report it */

/* --resume RUN_DIR [--from TAG]: checks the directory; the config is RUN_DIR/config.yaml */
static int resume_args(int argc, char **argv, const char **run_dir, const char **tag, char *cfg, size_t n) {
    if (argc != 2 && !(argc == 4 && strcmp(argv[2], "--from") == 0)) {
        fprintf(stderr, "moelab: expected: moelab run --resume RUN_DIR [--from TAG] (no overrides: a resumed run "
                        "keeps the config it was started with)\n");
        return ML_EXIT_USAGE;
    }
    *run_dir = argv[1];
    *tag = argc == 4 ? argv[3] : NULL;
    snprintf(cfg, n, "%s/config.yaml", *run_dir);
    if (access(cfg, R_OK) != 0) {
        fprintf(stderr, "moelab: %s is not a moelab run directory (no readable config.yaml)\n", *run_dir);
        return ML_EXIT_USAGE;
    }
    /* a finished run has nothing left to do */
    char sum[PATH_MAX + 32], text[1 << 16];
    snprintf(sum, sizeof sum, "%s/summary.json", *run_dir);
    FILE *f = fopen(sum, "r");
    if (f) {
        size_t k = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        ml_jv *v = ml_jv_parse(text, k);
        const ml_jv *st = v ? ml_jv_get(v, "status") : NULL;
        int done = st && st->type == ML_JV_STR && strcmp(st->str, "ok") == 0;
        ml_jv_free(v);
        if (done) {
            fprintf(stderr, "moelab: %s finished (summary.json status \"ok\"): nothing to resume\n", *run_dir);
            return ML_EXIT_USAGE;
        }
    }
    return 0;
}

/* moelab run --print-config CONFIG [overrides]: the resolved config, as a run would save it. */
static int print_config(int argc, char **argv) {
    const char *cfgp = NULL;
    const char **ov = ml_calloc((size_t)argc + 1, sizeof *ov);
    int n = 0;
    if (!ov) return ML_EXIT_RUNTIME;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--print-config")) continue;
        if (!cfgp) cfgp = argv[i];
        else if (strchr(argv[i], '=')) ov[n++] = argv[i];
        else {
            fprintf(stderr, "moelab: override '%s': expected key.path=value\n", argv[i]);
            free(ov);
            return ML_EXIT_USAGE;
        }
    }
    if (!cfgp) {
        free(ov);
        return usage(stderr);
    }
    ml_config *c = ml_exp_load_config(cfgp, ov, n);
    free(ov);
    if (!c) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        return ML_EXIT_USAGE;
    }
    fputs(ml_config_yaml(c), stdout);
    ml_config_free(c);
    return 0;
}

static int cmd_run(int argc, char **argv) {
    if (argc < 1) return usage(stderr);
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--print-config")) return print_config(argc, argv);
    int quiet = 0;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) { /* drop it from the arguments */
            quiet = 1;
            memmove(argv + i, argv + i + 1, (size_t)(argc - i - 1) * sizeof *argv);
            argc--, i--;
        }
    if (argc < 1) return usage(stderr);
    const char *run_dir = NULL, *from = NULL;
    char cfg[PATH_MAX + 16];
    if (strcmp(argv[0], "--resume") == 0) {
        int rc = resume_args(argc, argv, &run_dir, &from, cfg, sizeof cfg);
        if (rc) return rc;
    } else {
        for (int i = 1; i < argc; i++)
            if (!strchr(argv[i], '=')) {
                fprintf(stderr, "moelab: override '%s': expected key.path=value\n", argv[i]);
                return ML_EXIT_USAGE;
            }
    }
    char lib[PATH_MAX], sbuf[PATH_MAX];
    scripts_dir(lib, sizeof lib, "/lib");
    int code;
    ml_experiment *e = run_dir ? ml_exp_new(cfg, NULL, 0, &code)
                               : ml_exp_new(argv[0], (const char *const *)argv + 1, argc - 1, &code);
    if (!e) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        return code;
    }
    if (ml_prov_set_command(e, g_argc, g_argv, run_dir ? NULL : (const char *const *)argv + 1, run_dir ? 0 : argc - 1)) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        ml_exp_free(e);
        return ML_EXIT_RUNTIME;
    }
    e->quiet = quiet || e->rank > 0; /* rank 0 speaks for a data-parallel job */
    /* a data-parallel job's ranks > 0 resume from a copy of the run directory, taken before
       rank 0 changes it (they write their own copy, rank 0 the run directory) */
    char own[PATH_MAX];
    const char *resume_dir = run_dir;
    if (run_dir && e->rank > 0) {
        const char *scratch = ml_exp_scratch(e);
        snprintf(own, sizeof own, "%s/run", scratch ? scratch : "");
        if (!scratch || ml_copy_tree(run_dir, own)) {
            fprintf(stderr, "moelab: rank %d: resume: %s\n", e->rank, ml_error());
            ml_exp_free(e);
            return ML_EXIT_RUNTIME;
        }
        resume_dir = own;
    }
    if (run_dir && e->ranks > 1 && ml_dist_barrier()) {
        fprintf(stderr, "moelab: resume: %s\n", ml_error());
        ml_exp_free(e);
        return ML_EXIT_RUNTIME;
    }
    if (run_dir && ml_exp_resume(e, resume_dir, from, &code)) {
        fprintf(stderr, "moelab: resume: %s\n", ml_error());
        ml_exp_free(e);
        return code;
    }
    ml_lua *lua = ml_lua_new(e, lib);
    if (!lua || ml_lua_load(lua, resolve_script(e, sbuf, sizeof sbuf))) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        ml_lua_free(lua);
        ml_exp_free(e);
        return ML_EXIT_USAGE;
    }
    if (!run_dir && ml_exp_open_results(e)) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        ml_lua_free(lua);
        ml_exp_free(e);
        return ML_EXIT_RUNTIME;
    }
    /* Until here a signal ends the process at once (nothing is running that a checkpoint
     * could save, and setup may take long); from here on it stops the run cleanly. */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (!e->rank) fprintf(stderr, "moelab: run directory %s\n", ml_exp_run_dir(e));
    if (!e->rank && e->ranks > 1)
        fprintf(stderr, "moelab: data parallel over %d ranks (each computes its part of every batch)\n", e->ranks);
    int rc = ml_lua_exec(lua);
    int interrupted = rc && (ml_exp_interrupted || ml_lua_stop_reason(lua) == ML_LUA_STOP_INTERRUPT);
    if (rc) snprintf(e->last_error, sizeof e->last_error, "%s", ml_error());
    if (rc && !interrupted) fprintf(stderr, "moelab: %s\n", e->last_error);
    if (ml_exp_finish(e, !rc ? "ok" : interrupted ? "interrupted" : "error")) {
        fprintf(stderr, "moelab: writing the summary: %s\n", ml_error());
        rc = ML_ERR;
    }
    if (interrupted) { /* one line, no traceback: the interrupt is not a script error */
        int saved = e->ep.interrupt_saved;
        const char *why = "";
        char failed[600];
        if (saved < 0) { /* the message's first line says why */
            snprintf(failed, sizeof failed, " (%.*s; --resume continues from 'last')",
                     (int)strcspn(e->last_error, "\n"), e->last_error);
            why = failed;
        } else if (!saved) {
            why = " (outside exp:train_epoch: no interrupt checkpoint, --resume continues from 'last')";
        }
        if (!e->rank)
            fprintf(stderr, "moelab: interrupted at epoch %d step %" PRId64 "%s; resume with: %smoelab run --resume %s\n",
                    saved ? abs(saved) : e->epoch, e->step, why, e->ranks > 1 ? "mpirun -np R " : "", ml_exp_run_dir(e));
        ml_lua_free(lua);
        ml_exp_free(e);
        return ML_EXIT_INTERRUPTED;
    }
    if (!rc && !e->rank) fprintf(stderr, "moelab: done; results in %s\n", ml_exp_run_dir(e));
    else if (rc && !e->rank) fprintf(stderr, "moelab: the run failed; results written so far are in %s\n", ml_exp_run_dir(e));
    ml_lua_free(lua);
    ml_exp_free(e);
    return rc ? ML_EXIT_RUNTIME : 0;
}

/* `moelab run` under mpirun (run/dist.h): every rank runs it; a rank that fails ends the
   job, since the others would wait for it in the next collective for ever. */
static int cmd_run_dist(int argc, char **argv) {
    if (ml_dist_init(NULL, NULL)) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        return ML_EXIT_USAGE;
    }
    if (ml_dist_rank() > 0) ml_log_level = ML_LOG_WARN + 1; /* rank 0 speaks for the job */
    int rc = cmd_run(argc, argv);
    if (rc && rc != ML_EXIT_INTERRUPTED && ml_dist_size() > 1) {
        /* rank 0 fails the same way, most likely: give it the time to write its summary */
        if (ml_dist_rank() > 0) sleep(2);
        ml_dist_abort(rc);
    }
    ml_dist_finalize();
    return rc;
}

static void list_one(const ml_plugin *p, const char *file, void *ctx) {
    (void)ctx;
    ml_plugin_print(p, file, stdout);
}

static void list_err(const char *file, const char *reason, void *ctx) {
    (void)ctx;
    fprintf(stderr, "moelab: %s: %s\n", file, reason);
}


static int cmd_lua(int argc, char **argv) {
    if (argc != 1) return usage(stderr);
    ml_plugins_default_path(NULL, 0);
    char lib[PATH_MAX];
    scripts_dir(lib, sizeof lib, "/lib");
    ml_lua *lua = ml_lua_new(NULL, lib);
    signal(SIGINT, on_signal); /* Ctrl-C goes through the sandbox's hook: a clean stop, exit 130 */
    signal(SIGTERM, on_signal);
    int rc = !lua || ml_lua_load(lua, argv[0]) ? ML_EXIT_USAGE : ml_lua_exec(lua) ? ML_EXIT_RUNTIME : 0;
    if (rc == ML_EXIT_RUNTIME && ml_lua_stop_reason(lua) == ML_LUA_STOP_INTERRUPT) rc = ML_EXIT_INTERRUPTED;
    if (rc) fprintf(stderr, "moelab: %s\n", ml_error());
    ml_lua_free(lua);
    return rc;
}

/* --opt VALUE or --opt=VALUE at argv[*i]; advances *i past what it used. */
static const char *opt_value(int argc, char **argv, int *i, const char *name) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] || *i + 1 >= argc) return NULL;
    return argv[++*i];
}

static int sweep_summary(ml_sweep *s, int rc) {
    if (rc < 0) {
        fprintf(stderr, "moelab sweep: interrupted; run the same command again (or moelab sweep --resume %s) "
                        "to continue\n", s->dir);
        return ML_EXIT_INTERRUPTED;
    }
    int failed = 0;
    for (int i = 0; i < s->n_runs; i++)
        if (s->run[i].state != ML_RUN_OK) {
            char code[32] = "";
            if (!failed++) fprintf(stderr, "moelab sweep: not finished:\n");
            if (s->run[i].exit_code >= 0) snprintf(code, sizeof code, " (exit %d)", s->run[i].exit_code);
            fprintf(stderr, "  %s %s%s %s  log: %s/logs/%s.log\n", s->run[i].id, ml_run_state_name(s->run[i].state), code,
                    s->run[i].label, s->dir, s->run[i].id);
        }
    fprintf(stderr, "moelab sweep: %d of %d runs finished; results in %s\n", s->n_runs - failed, s->n_runs, s->dir);
    return failed ? ML_EXIT_RUNTIME : 0;
}

static int cmd_sweep(int argc, char **argv) {
    ml_sweep_opts o = {0};
    const char *config = NULL, *resume = NULL, *status = NULL, *task = NULL, *task_index = NULL;
    ml_slurm_opts so = {0};
    int task_log = 0;
    const char **axes = ml_calloc((size_t)argc + 1, sizeof *axes), **sb = ml_calloc((size_t)argc + 1, sizeof *sb);
    int n_axes = 0;
    if (!axes || !sb) return ML_EXIT_RUNTIME;
    ml_strbuf cmd = {0};
    ml_strbuf_puts(&cmd, "moelab sweep");
    for (int i = 0; i < argc; i++) {
        ml_strbuf_puts(&cmd, " ");
        ml_strbuf_puts(&cmd, argv[i]);
    }
    o.command = cmd.buf;
    int rc = ML_EXIT_USAGE;
    const char *v;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((v = opt_value(argc, argv, &i, "--jobs"))) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 65536) {
                fprintf(stderr, "moelab sweep: --jobs '%s': expected a whole number >= 1\n", v);
                goto out;
            }
            o.jobs = (int)n;
        } else if ((v = opt_value(argc, argv, &i, "--launcher"))) o.launcher = v;
        else if ((v = opt_value(argc, argv, &i, "--name"))) o.name = v;
        else if ((v = opt_value(argc, argv, &i, "--partition"))) o.partition = v;
        else if ((v = opt_value(argc, argv, &i, "--time"))) o.time = v;
        else if ((v = opt_value(argc, argv, &i, "--mem"))) o.mem = v;
        else if ((v = opt_value(argc, argv, &i, "--account"))) o.account = v;
        else if ((v = opt_value(argc, argv, &i, "--qos"))) o.qos = v;
        else if ((v = opt_value(argc, argv, &i, "--sbatch"))) sb[o.n_sbatch++] = v;
        else if ((v = opt_value(argc, argv, &i, "--max-parallel"))) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > (1 << 20)) {
                fprintf(stderr, "moelab sweep: --max-parallel '%s': expected a whole number >= 1\n", v);
                goto out;
            }
            o.max_parallel = (int)n;
        } else if ((v = opt_value(argc, argv, &i, "--poll"))) {
            char *end;
            double t = strtod(v, &end);
            if (*end || !(t >= 0.05 && t <= 3600)) {
                fprintf(stderr, "moelab sweep: --poll '%s': expected seconds between 0.05 and 3600\n", v);
                goto out;
            }
            so.poll = t;
        } else if (!strcmp(a, "--no-wait")) so.no_wait = 1;
        else if (!strcmp(a, "--log")) task_log = 1;
        else if ((v = opt_value(argc, argv, &i, "--resume"))) resume = v;
        else if ((v = opt_value(argc, argv, &i, "--status"))) status = v;
        else if (!strcmp(a, "--task") && i + 2 < argc) {
            task = argv[++i];
            task_index = argv[++i];
        } else if (!strcmp(a, "--dry-run")) o.dry_run = 1;
        else if (a[0] == '-') {
            fprintf(stderr, "moelab sweep: unknown option '%s' (moelab sweep --help)\n", a);
            goto out;
        } else if (!config && !strchr(a, '=')) config = a;
        else if (strchr(a, '=')) axes[n_axes++] = a;
        else {
            fprintf(stderr, "moelab sweep: '%s': expected key.path=v1,v2,... (moelab sweep --help)\n", a);
            goto out;
        }
    }
    o.sbatch = sb;
    int modes = !!config + !!resume + !!status + !!task;
    if (modes != 1 || ((resume || status || task) && n_axes)) {
        fprintf(stderr, "moelab sweep: expected one of CONFIG [axes...], --resume DIR, --status DIR or --task DIR INDEX "
                        "(moelab sweep --help)\n");
        goto out;
    }
    if (task_log && !task) {
        fprintf(stderr, "moelab sweep: --log goes with --task DIR INDEX\n");
        goto out;
    }
    ml_plugins_default_path(NULL, 0);
    ml_sweep *s = NULL;
    if (config) s = ml_sweep_create(config, axes, n_axes, &o);
    else s = ml_sweep_open(resume ? resume : status ? status : task);
    if (!s) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        goto out;
    }
    if (status) {
        rc = ml_sweep_print_status(s, stdout) ? ML_EXIT_RUNTIME : 0;
        if (!strcmp(s->launcher.name, "slurm") && *s->launcher.job_id) {
            int k = ml_slurm_active(s, s->launcher.job_id, NULL);
            if (k < 0) printf("SLURM job %s: cannot ask squeue (%s)\n", s->launcher.job_id, ml_error());
            else printf("SLURM job %s: %d task%s queued or running\n", s->launcher.job_id, k, k == 1 ? "" : "s");
        }
    } else if (task) {
        char *end;
        long k = strtol(task_index, &end, 10);
        if (*end || k < 0 || k >= s->n_runs) {
            fprintf(stderr, "moelab sweep: --task %s %s: expected a run index in 0..%d\n", task, task_index, s->n_runs - 1);
        } else if (ml_sweep_exec(s, (int)k, task_log)) {
            fprintf(stderr, "moelab: %s\n", ml_error());
            rc = ML_EXIT_RUNTIME;
        } else {
            fprintf(stderr, "moelab sweep: run %s %s; nothing to do\n", s->run[k].id,
                    s->run[k].state == ML_RUN_RUNNING ? "is running in another process" : "has finished");
            rc = 0;
        }
    } else if (o.dry_run) {
        printf("sweep %s: %d runs, %d at a time with %d thread%s each, in %s\n", s->id, s->n_runs, s->jobs, s->threads,
               s->threads == 1 ? "" : "s", s->dir);
        for (int i = 0; i < s->n_runs; i++) {
            printf("%s", s->run[i].id);
            for (int j = 0; j < s->run[i].n; j++) printf(" %s", s->run[i].over[j]);
            putchar('\n');
        }
        rc = 0;
    } else {
        if (resume) {
            if (o.jobs > 0) {
                s->jobs = o.jobs;
                s->threads = ml_sweep_cpus() / o.jobs > 0 ? ml_sweep_cpus() / o.jobs : 1;
            }
            if (ml_sweep_set_launcher(&s->launcher, &o)) {
                fprintf(stderr, "moelab: %s\n", ml_error());
                ml_sweep_free(s);
                goto out;
            }
        }
        if (strcmp(s->launcher.name, "slurm")) {
            if (so.no_wait) fprintf(stderr, "moelab sweep: --no-wait goes with --launcher slurm\n");
            else {
                rc = sweep_summary(s, ml_sweep_run_local(s, stderr));
                if (rc != ML_EXIT_INTERRUPTED) ml_summarize_sweep(s->dir, stdout);
            }
        } else {
            int k = ml_sweep_run_slurm(s, &so, stderr);
            if (k == ML_SLURM_BAD_SETTINGS || k == ML_SLURM_FAILED) {
                fprintf(stderr, "moelab: %s\n", ml_error());
                rc = k == ML_SLURM_BAD_SETTINGS ? ML_EXIT_USAGE : ML_EXIT_RUNTIME;
            } else if (so.no_wait && k >= 0) {
                rc = 0;
            } else {
                rc = sweep_summary(s, k == ML_SLURM_INTERRUPTED ? -1 : k);
                if (rc != ML_EXIT_INTERRUPTED) ml_summarize_sweep(s->dir, stdout);
            }
        }
    }
    ml_sweep_free(s);
out:
    free(axes);
    free(sb);
    ml_strbuf_free(&cmd);
    return rc;
}

char *openblas_get_corename(void);

/*
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know AMD Zen 4/5 and falls back to its
 * AVX2 "Haswell" kernels on CPUs that have AVX-512, at about half the speed of its
 * "SkylakeX" kernels (docs/PERFORMANCE.md); container images also often pin
 * OPENBLAS_CORETYPE=Haswell. The kernel is chosen when the library loads, so moelab picks
 * it from the CPU and re-executes itself once. MOELAB_BLAS_CORETYPE=<name> forces a
 * kernel (any OPENBLAS_CORETYPE value); MOELAB_BLAS_CORETYPE=keep leaves OpenBLAS alone.
 */
static int pick_blas_kernel(void) {
    const char *want = getenv("MOELAB_BLAS_CORETYPE");
    if (want && strcmp(want, "keep") == 0) return 0;
    const char *core = openblas_get_corename();
    if (!want) {
        if (!core || (strcmp(core, "Haswell") != 0 && strcmp(core, "Zen") != 0)) return 0;
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
            !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl"))
            return 0;
        want = "SkylakeX";
    }
    if (core && strcasecmp(core, want) == 0) return 0;
    setenv("OPENBLAS_CORETYPE", want, 1);
    return 1;
}

/*
 * How idle OpenMP threads wait (docs/PERFORMANCE.md, "Busy machines"). libgomp's default
 * spins about 300 000 iterations at every barrier before it sleeps; on a core another
 * process needs, the spinning thread holds the core the late thread is waiting for: with
 * one competing process on 2 cores a run fell 6x to 60x. Passive waiting (sleep at once)
 * was the best setting tried on a busy machine (default spin, GOMP_SPINCOUNT 10000, 1000,
 * passive: 110, 638, 803, 1191 img/s, same run), but costs about a quarter of the speed on
 * a quiet one, and no spin count was within 5% quiet and kept 40% busy. So the commands
 * that train look at their CPUs when they start: when another process's thread is runnable
 * on one of them (ml_cpu_others_running: the least of five looks 4 ms apart), threads wait
 * passively and the default thread count (train.threads: 0) leaves that many cores to them
 * (MOELAB_BUSY_CPUS; one thread beside a busy loop on 2 cores ran at 0.75 of the quiet
 * 2-thread speed, two passive threads at 0.3-0.7); otherwise threads spin 30 000 times
 * (GOMP_SPINCOUNT; libgomp's default is 300 000) before they sleep: as fast on a quiet
 * machine, and about 5x the default's speed when load arrives after the start, which the
 * look cannot see. libgomp reads both settings when it loads, hence the re-execution.
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment win. OpenBLAS is its OpenMP
 * build (Debian's libopenblas0-openmp), so its threads follow the same policy.
 */
static int pick_wait_policy(const char *cmd) {
    static const char *const trains[] = {"run", "bench", "lua", "sweep", "plugin-test"};
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || !cmd) return 0;
    int trainer = 0;
    for (size_t i = 0; i < sizeof trains / sizeof *trains; i++) trainer |= !strcmp(cmd, trains[i]);
    if (!trainer) return 0;
    /* under mpirun the ranks of this machine share its cores by design (set_threads): they
       are started together and are not load to one another */
    const char *ranks = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int others = ml_cpu_others_running(5, 4, ranks && atoi(ranks) > 1 ? (long)getppid() : 0);
    if (others == 0) {
        /* a tenth of libgomp's default spin: the same speed on a quiet machine, and 5x the
           default's when load arrives after the start (which this look cannot see) */
        setenv("GOMP_SPINCOUNT", "30000", 1);
        return 1;
    }
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1); /* also when /proc cannot tell (-1) */
    if (others > 0) { /* and the default thread count leaves their cores to them (set_threads) */
        char v[16];
        snprintf(v, sizeof v, "%d", others);
        setenv("MOELAB_BUSY_CPUS", v, 1);
    }
    return 1;
}

static void prepare_environment(char **argv) {
    if (getenv("MOELAB_NO_REEXEC")) return;
    int changed = pick_blas_kernel();
    changed |= pick_wait_policy(argv[1]);
    if (!changed) return;
    setenv("MOELAB_NO_REEXEC", "1", 1);
    /* the binary's own path, so that ps and pgrep still show "moelab" (not "exe") */
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        execv(self, argv);
    }
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    prepare_environment(argv);
    g_argc = argc;
    g_argv = argv;
    find_root();
    if (argc < 2) return usage(stderr);
    /* a crashing plugin (or moelab) is reported in one line, in every command */
    if (ml_crash_install()) fprintf(stderr, "moelab: warning: %s\n", ml_error());
    const char *cmd = argv[1];
    if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")))
        for (size_t i = 0; i < sizeof g_help / sizeof *g_help; i++)
            if (!strcmp(cmd, g_help[i].cmd)) {
                fputs(g_help[i].text, stdout);
                return 0;
            }
    if (!strcmp(cmd, "run")) return cmd_run_dist(argc - 2, argv + 2);
    /* only run splits its batches over ranks (cmd_run_dist); under mpirun any other command
       would run once per rank, each writing the same files (lua scripts, sweeps included) */
    if (ml_dist_launched_size() > 1) {
        if (ml_dist_launched_rank() == 0) /* one line for the job */
            fprintf(stderr, "moelab: '%s' does not run under mpirun (%d ranks): only 'moelab run' splits its work over "
                            "ranks; run it as one process\n", cmd, ml_dist_launched_size());
        return ML_EXIT_USAGE;
    }
    if (!strcmp(cmd, "plugins")) {
        ml_plugins_default_path(NULL, 0);
        return ml_plugins_scan(list_one, list_err, NULL) < 0 ? ML_EXIT_RUNTIME : 0;
    }
    if (!strcmp(cmd, "plugin-test")) {
        if (argc != 3) return usage(stderr);
        ml_plugins_default_path(NULL, 0);
        int failed = ml_plugin_conformance(argv[2], stdout);
        return failed == 0 ? 0 : ML_EXIT_RUNTIME;
    }
    if (!strcmp(cmd, "bench")) {
        ml_plugins_default_path(NULL, 0);
        return ml_bench_main(argc - 2, argv + 2);
    }
    if (!strcmp(cmd, "lua")) return cmd_lua(argc - 2, argv + 2);
    if (!strcmp(cmd, "sweep")) return cmd_sweep(argc - 2, argv + 2);
    if (!strcmp(cmd, "summarize")) return ml_summarize_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "plot")) return ml_plot_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("moelab %s (plugin ABI %d.%d, commit %s)\n", ML_VERSION, ML_ABI_MAJOR, ML_ABI_MINOR, ml_build_commit());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return usage(stdout);
    fprintf(stderr, "moelab: unknown command '%s'\n", cmd);
    return usage(stderr);
}
