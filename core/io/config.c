/*
 * config.c — experiment configs: YAML (libyaml events) → tree → base merge → overrides →
 * validation against the schema table and the plugins' option tables → resolved tree.
 *
 * Every node remembers where it came from (file:line:col of its key and its value, or the
 * override it was set by), so any later check can report the exact place. The first
 * error stops the load.
 */
#include "io/config.h"
#include "base/file.h"
#include "base/glob.h"
#include "base/scalar.h"
#include "base/strbuf.h"
#include "data/camouflage.h"
#include "plugin/options.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "base/common.h"

#define CFG_MAX_NEST 64          /* nesting levels in one document */
#define CFG_MAX_BASES 8          /* base: chain length */
#define CFG_MAX_FILE (16u << 20) /* bytes */
#define CFG_MSG 768
#define CFG_PATH 512

struct ml_cfg_node {
    ml_cfg_kind kind;
    char *key;           /* map entries; NULL for seq items and the root */
    char *text;          /* scalars */
    int quoted;          /* scalar written quoted (or tagged !!str): always a string */
    const char *src;     /* file, "override '...'" or "default"; owned by the config */
    int line, col;       /* of the value, 1-based; 0 when src has no positions */
    int key_line, key_col;
    ml_cfg_node **item;  /* map entries / seq items */
    int n, cap;
};

struct ml_config {
    char *path;
    ml_cfg_node *root;
    char **srcs; /* interned source names */
    int n_srcs, cap_srcs;
    char *yaml;  /* resolved text */
    size_t yaml_len;
    uint64_t hash;
    ml_config_find_plugin find; /* during load only */
    void *find_ctx;
};

/* ------------------------------------------------------------------------ schema */

typedef enum {
    T_MAP = 1, /* fixed keys: the rows below it */
    T_STR,
    T_INT,
    T_FLOAT,
    T_BOOL,
    T_ENUM,
    T_LIST,  /* items described by the row "<path>.*" */
    T_FREE,  /* any mapping, keys unchecked */
    T_PLUGIN /* name (+ coef) from rows below, other keys from the plugin's option table */
} cfg_type;

enum {
    F_REQ = 1,     /* required */
    F_LO_OPEN = 2, /* min excluded */
    F_HI_OPEN = 4, /* max excluded */
    F_NAME = 8,    /* a relative path without '..' (becomes part of a directory name) */
    F_IDENT = 16,  /* 1..63 letters, digits, '_' or '-' */
    F_GLOB = 32,   /* a name pattern (base/glob.h) */
    F_UNIQUE = 64  /* in a list of mappings: no two items have the same value */
};

typedef struct cfg_key {
    const char *path;    /* dotted; "*" stands for list items */
    cfg_type type;
    const char *def;     /* default as YAML text; NULL: none (required, or omitted) */
    double min, max;     /* inclusive unless F_*_OPEN; +-INFINITY: unbounded */
    int flags;
    const char *choices; /* T_ENUM: "a|b|c" */
    int plugin_kind;     /* T_PLUGIN */
    const char *doc;
} cfg_key;

#define NOLO (-INFINITY)
#define NOHI INFINITY
#define ANY NOLO, NOHI
#define SEC(p, doc) {p, T_MAP, "{}", ANY, 0, NULL, 0, doc}
#define STR(p, def, fl, doc) {p, T_STR, def, ANY, fl, NULL, 0, doc}
#define INT(p, def, lo, hi, doc) {p, T_INT, def, lo, hi, 0, NULL, 0, doc}
#define FLT(p, def, lo, hi, fl, doc) {p, T_FLOAT, def, lo, hi, fl, NULL, 0, doc}
#define ENUM(p, def, fl, ch, doc) {p, T_ENUM, def, ANY, fl, ch, 0, doc}
#define BOOL(p, def, doc) {p, T_BOOL, def, ANY, 0, NULL, 0, doc}
#define LIST(p, def, doc) {p, T_LIST, def, ANY, 0, NULL, 0, doc}
#define LISTN(p, def, max, doc) {p, T_LIST, def, 0, max, 0, NULL, 0, doc} /* at most max items */
#define PLUG(p, kind, doc) {p, T_PLUGIN, "{}", ANY, 0, NULL, kind, doc}

static const cfg_key cfg_schema[] = {
    STR("experiment", NULL, F_REQ | F_NAME,
        "name of the experiment: runs go to `<results.dir>/<experiment>/<run-id>/`"),
    STR("base", NULL, 0,
        "a config this file is deep-merged over (path relative to this file); consumed "
        "while loading, absent from the resolved config"),
    STR("script", "scripts/train.lua", 0, "the Lua script that drives the run"),
    LIST("plugin_path", "[]", "extra directories searched for plugins"),
    STR("plugin_path.*", NULL, 0, "a directory"),
    {"params", T_FREE, "{}", ANY, 0, NULL, 0,
     "free-form values for the script (`exp.config.params`); keys unchecked"},
    {"sweep", T_FREE, "{}", ANY, 0, NULL, 0,
     "a study's grid (`grid:`, `runs:`, `jobs:`, `name:`), read by `moelab sweep` and checked "
     "there (docs/studies.md); `moelab run` ignores it"},
    {"launcher", T_FREE, "{}", ANY, 0, NULL, 0,
     "where `moelab sweep` runs the grid (`name: local|slurm`, SLURM's partition, time, ...; "
     "docs/studies.md); `moelab run` ignores it"},

    SEC("data", "the dataset"),
    ENUM("data.dataset", NULL, F_REQ,
         "fashion_mnist|synthetic|cifar10|image_folder|image_mask_folder|camouflage",
         "which dataset (docs/data.md)"),
    STR("data.path", "", 0,
        "dataset location; \"\" = the dataset's default (`/usr/share/datasets/fashion-mnist`); "
        "image_mask_folder: the training folder, holding `Imgs/` and `GT/`"),
    STR("data.val_path", "", 0,
        "image_mask_folder: the validation (test) folder, holding `Imgs/` and `GT/`; \"\" = "
        "hold `val_images` out of `path` like the other datasets"),
    INT("data.train_images", "0", 0, NOHI, "training images used; 0 = all available"),
    INT("data.val_images", "10000", 0, NOHI,
        "validation images, held out from the training files; with `val_path`: at most this "
        "many of its images"),
    INT("data.image_size", "0", 0, 1024,
        "0 = native size (camouflage: 64); else pad (fashion 28 -> 32) or resize to S x S "
        "(masks too); camouflage: 16 to 256"),
    INT("data.synthetic_samples", "4096", 1, 10000000, "synthetic: number of samples"),
    INT("data.synthetic_dim", "64", 1, 100000, "synthetic: features per sample"),
    INT("data.synthetic_classes", "8", 2, 1000, "synthetic: number of classes"),
    INT("data.camouflage_samples", "0", 0, 100000000,
        "camouflage: generated samples the split draws from (fix it to keep the validation "
        "set while `train_images` varies); 0 = `train_images + val_images`"),
    FLT("data.difficulty", "0.5", 0, 1, 0,
        "camouflage: how close the object's texture statistics are to the background's: 0 = "
        "clearly different (colour, brightness, scale, contrast, orientation), 1 = equal, only "
        "the pattern breaks at the outline"),
    LISTN("data.habitats", "[foliage, sand, underwater]", ML_CAMO_HABITATS,
          "camouflage: the habitats, distinct; the label of a sample is its habitat's position "
          "here, and samples cycle through them"),
    ENUM("data.habitats.*", NULL, 0, "foliage|sand|underwater", "a habitat"),

    SEC("model", "the network"),
    ENUM("model.type", NULL, F_REQ, "mlp|srnn|cod",
         "model family: MoE autoencoders (mlp, srnn) or the camouflage segmentation net (cod, docs/cod.md)"),
    INT("model.experts", "4", 1, 4096, "experts per MoE layer at the start (a schedule may override)"),
    INT("model.latent", "128", 1, 65536, "D, the width of the MoE layer"),
    INT("model.hidden", "256", 1, 65536, "mlp: encoder/decoder hidden width"),
    INT("model.expert_hidden", "256", 1, 65536, "H, hidden width inside each residual-MLP expert"),
    INT("model.moe_layers", "1", 1, 64, "number of MoE layers"),
    LIST("model.channels", "[32, 64, 128, 256]", "srnn, cod: encoder channels per stage (cod: multiples of 4)"),
    INT("model.channels.*", NULL, 1, 65536, "channels of one stage"),
    STR("model.init_from", "", 0,
        "a checkpoint (.safetensors) whose tensors initialise the model's of the same name and "
        "shape, those matching model.init_match (staged training: a backbone trained before); "
        "\"\" = none"),
    STR("model.init_match", "\"*\"", 0, "glob over tensor names taken from model.init_from, e.g. \"enc.*\""),
    LIST("model.expert_kinds", "[texture, frequency, edge, contrast, texture, frequency]",
         "cod: the kind of expert i of every MoE layer (experts past the list, as growth adds, "
         "cycle through it)"),
    ENUM("model.expert_kinds.*", NULL, 0, "texture|frequency|edge|contrast", "one expert's kind"),

    PLUG("router", ML_PLUGIN_ROUTER, "the router plugin and its options"),
    STR("router.name", "softmax_topk", 0, "router plugin name"),

    LIST("losses", "[]", "balancing losses, each a loss plugin section"),
    PLUG("losses.*", ML_PLUGIN_LOSS, "one loss plugin and its options"),
    STR("losses.*.name", NULL, F_REQ, "loss plugin name"),
    FLT("losses.*.coef", "1.0", 0, NOHI, 0, "coefficient (settable from Lua while running)"),

    PLUG("schedule", ML_PLUGIN_SCHEDULE, "the growth schedule plugin and its options"),
    STR("schedule.name", "fixed", 0, "schedule plugin name"),

    SEC("growth", "how experts added during training start (add_experts without options, and so the "
        "schedule's additions in scripts/train.lua; docs/routing.md, growth)"),
    ENUM("growth.init", "random", 0, "random|copy|drop_upcycle",
         "`random`: each tensor by its own init; `copy`: a copy of an existing expert (sparse upcycling, "
         "Komatsuzaki et al. 2022); `drop_upcycle`: a copy with a share `ratio` of its intermediate units "
         "re-initialised (Nakamura et al. 2025)"),
    INT("growth.source", "-1", -1, 4095,
        "copy, drop_upcycle: the expert copied (its id, from 0); -1 = the most loaded ones, heaviest first"),
    FLT("growth.noise", "0", 0, NOHI, 0,
        "copy, drop_upcycle: Gaussian noise added to the copied values, std = noise x the tensor's std "
        "(0 = exact copies, as the paper)"),
    FLT("growth.ratio", "0.5", 0, 1, 0, "drop_upcycle: share r of the units re-initialised (the paper's r = 0.5)"),
    FLT("growth.router_noise", "0.01", 0, NOHI, 0,
        "copy, drop_upcycle: the router's rows of the new expert are the source's plus Gaussian noise, "
        "std = router_noise x the tensor's std, so the two can part"),

    SEC("optim", "the optimizer"),
    ENUM("optim.name", "adam", 0, "adam|adamw|sgd",
         "optimizer: `adam` (torch.optim.Adam), `adamw` (torch.optim.AdamW, decoupled weight decay), "
         "`sgd` (with momentum)"),
    FLT("optim.lr", "0.001", 0, 10, F_LO_OPEN, "learning rate"),
    FLT("optim.beta1", "0.9", 0, 1, F_HI_OPEN, "adam, adamw: first-moment decay"),
    FLT("optim.beta2", "0.999", 0, 1, F_HI_OPEN, "adam, adamw: second-moment decay"),
    FLT("optim.eps", "1e-8", 0, 1, F_LO_OPEN, "adam, adamw: denominator epsilon"),
    FLT("optim.weight_decay", "0", 0, NOHI, 0,
        "weight decay: adam and sgd add `weight_decay * p` to the gradient (an L2 term, torch's "
        "`weight_decay`); adamw decays the weights, `p -= lr * weight_decay * p`, before the update "
        "(decoupled, Loshchilov & Hutter 2019)"),
    FLT("optim.momentum", "0", 0, 1, F_HI_OPEN, "sgd: momentum"),
    /* no default in the resolved text: configs without the key keep their text and hash */
    ENUM("optim.idle_experts", NULL, 0, "dense|lazy",
         "experts that received no samples in a step: `dense` (absent: the default) updates them too "
         "(every parameter every step, as torch.optim with zero gradients), `lazy` leaves their weights, "
         "moments and step counts untouched (SparseAdam's semantics; see the optimizer section of "
         "docs/configs.md)"),
    LISTN("optim.groups", NULL, 32,
          "parameter groups, at most 32: tensors whose names match a group's pattern take its settings "
          "(the first matching group; tensors matching none use the ones above)"),
    SEC("optim.groups.*", "one parameter group"),
    STR("optim.groups.*.name", NULL, F_REQ | F_IDENT | F_UNIQUE,
        "the group's name: 1 to 63 letters, digits, `_` or `-`"),
    STR("optim.groups.*.match", NULL, F_REQ | F_GLOB,
        "the tensors, by a pattern on their names as fnmatch reads it: `enc.*`, `moe1.expert*`"),
    FLT("optim.groups.*.lr", NULL, 0, 10, F_LO_OPEN, "learning rate of the group; absent: `optim.lr`"),
    FLT("optim.groups.*.weight_decay", NULL, 0, NOHI, 0, "weight decay of the group; absent: `optim.weight_decay`"),
    BOOL("optim.groups.*.frozen", "false",
         "frozen: no update, no weight decay, optimizer moments and step counts unchanged"),

    SEC("train", "the training loop"),
    INT("train.epochs", "10", 1, 1000000, "epochs"),
    INT("train.batch_size", "64", 1, 1000000, "samples per step"),
    INT("train.seed", "1", 0, NOHI, "seed of every random choice in the run"),
    INT("train.threads", "0", 0, 1024, "worker threads; 0 = all cores"),
    INT("train.eval_every", "1", 1, NOHI, "evaluate every N epochs"),
    ENUM("train.nonfinite", "stop", 0, "stop|skip_step",
         "a non-finite loss or gradient: stop the run (naming the step and tensor), or skip "
         "that step's update and count it (metrics column `skipped_steps`)"),

    SEC("health", "routing-health thresholds"),
    FLT("health.active_threshold", "0.1", 0, 1, F_LO_OPEN,
        "an expert is active when its utilisation >= active_threshold / N"),
    FLT("health.collapse_active_fraction", "0.5", 0, 1, 0,
        "collapse warning when fewer than this fraction of experts are active"),
    FLT("health.collapse_entropy", "0.5", 0, 1, 0,
        "collapse warning when normalised marginal entropy H(u)/log N falls below this"),
    INT("health.new_expert_steps", "50", 0, 1000000,
        "watch each added expert this many training steps: its dispatch share relative to 1/N "
        "(new_expert_share); 0 = off"),
    FLT("health.collapse_margin", "0.5", 0, 64, 0,
        "collapse warning when exp(H(u)) <= k + this (k = slots per routed sample; top-k collapse)"),

    SEC("seg", "segmentation runs (model.type: cod): the task loss and what evaluation writes"),
    FLT("seg.bce", "1.0", 0, NOHI, 0, "weight of the BCE-with-logits loss"),
    FLT("seg.iou", "1.0", 0, NOHI, 0, "weight of the soft IoU loss"),
    FLT("seg.dice", "0.0", 0, NOHI, 0, "weight of the soft Dice loss"),
    INT("seg.predictions", "8", 0, 100000,
        "validation images written as PNG (image, ground truth, prediction) in predictions/"),
    BOOL("seg.minmax", "false", "rescale each predicted map by its min and max before the metrics (the COD toolboxes' habit)"),

    SEC("results", "where results go"),
    STR("results.dir", "results", 0, "results root"),
    STR("results.run_id", "", F_NAME, "run directory name; \"\" = a timestamp"),
    INT("results.log_every_steps", "0", 0, NOHI,
        "also write steps.csv and routing_steps.csv every N optimizer steps (window means); 0 = off"),
    STR("results.run_dir", "", 0,
        "the run directory itself, instead of `<dir>/<experiment>/<run_id>` (set by `moelab "
        "sweep`); it must not exist or be empty"),
    INT("results.checkpoint_every", "0", 0, NOHI,
        "also save checkpoint `epoch<N>` every N epochs; 0 = only best/last"),

    SEC("lua", "the script sandbox"),
    LIST("lua.allow_read", "[]", "extra paths scripts may read"),
    STR("lua.allow_read.*", NULL, 0, "a file or directory"),
    LIST("lua.allow_env", "[]", "environment variables os.getenv may read; other names raise an error"),
    STR("lua.allow_env.*", NULL, 0, "a variable name"),
    INT("lua.memory_mb", "1024", 16, 1048576,
        "memory cap of the script's Lua state in MiB; hitting it ends the run with a clear error"),
    INT("lua.timeout_s", "0", 0, NOHI, "wall-clock limit of the whole script in seconds; 0 = none"),
};
#define CFG_NKEYS ((int)(sizeof cfg_schema / sizeof cfg_schema[0]))

/* Length of the parent part of a schema path ("a.b.c" -> 3; "a" -> 0). */
static size_t parent_len(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? (size_t)(dot - path) : 0;
}

static const char *leaf_of(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

static int is_child(int si, const char *parent) {
    const char *p = cfg_schema[si].path;
    size_t pl = parent_len(p);
    return strlen(parent) == pl && strncmp(p, parent, pl) == 0;
}

/* Index of the schema row parent.leaf (parent "" for top level), or -1. */
static int schema_child(const char *parent, const char *leaf) {
    for (int i = 0; i < CFG_NKEYS; i++)
        if (is_child(i, parent) && strcmp(leaf_of(cfg_schema[i].path), leaf) == 0) return i;
    return -1;
}

/* ------------------------------------------------------------------------- nodes */

static ml_cfg_node *node_new(ml_cfg_kind kind, const char *src, int line, int col) {
    ml_cfg_node *n = ml_calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->src = src;
    n->line = n->key_line = line;
    n->col = n->key_col = col;
    return n;
}

static void node_free(ml_cfg_node *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) node_free(n->item[i]);
    free(n->item);
    free(n->key);
    free(n->text);
    free(n);
}

static int node_push(ml_cfg_node *parent, ml_cfg_node *child) {
    if (parent->n == parent->cap) {
        int cap = parent->cap ? 2 * parent->cap : 8;
        ml_cfg_node **it = realloc(parent->item, (size_t)cap * sizeof *it);
        if (!it) return ml_errorf("out of memory");
        parent->item = it;
        parent->cap = cap;
    }
    parent->item[parent->n++] = child;
    return ML_OK;
}

static void node_remove(ml_cfg_node *parent, int i) {
    node_free(parent->item[i]);
    memmove(parent->item + i, parent->item + i + 1, (size_t)(parent->n - i - 1) * sizeof *parent->item);
    parent->n--;
}

static int map_findn(const ml_cfg_node *map, const char *key, size_t len) {
    if (!map || map->kind != ML_CFG_MAP) return -1;
    for (int i = 0; i < map->n; i++)
        if (strncmp(map->item[i]->key, key, len) == 0 && map->item[i]->key[len] == 0) return i;
    return -1;
}

static int map_find(const ml_cfg_node *map, const char *key) { return map_findn(map, key, strlen(key)); }

static ml_cfg_node *map_get(const ml_cfg_node *map, const char *key) {
    int i = map_find(map, key);
    return i < 0 ? NULL : map->item[i];
}

/* Plain "", "~", "null": YAML's null, which the schema reads as "use the default". */
static int is_null(const ml_cfg_node *n) {
    if (n->kind != ML_CFG_SCALAR || n->quoted) return 0;
    const char *t = n->text;
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

static const char *kind_name(ml_cfg_kind k) {
    return k == ML_CFG_MAP ? "a mapping" : k == ML_CFG_SEQ ? "a list" : "a single value";
}

static int set_text(ml_cfg_node *n, const char *text) {
    char *t = ml_strdup(text);
    if (!t) return ML_ERR;
    free(n->text);
    n->text = t;
    return ML_OK;
}

/* Turns a null scalar into an empty map or seq, keeping its place. */
static void null_to(ml_cfg_node *n, ml_cfg_kind kind) {
    free(n->text);
    n->text = NULL;
    n->quoted = 0;
    n->kind = kind;
}

static const char *cfg_intern(ml_config *c, const char *s) {
    for (int i = 0; i < c->n_srcs; i++)
        if (!strcmp(c->srcs[i], s)) return c->srcs[i];
    if (c->n_srcs == c->cap_srcs) {
        int cap = c->cap_srcs ? 2 * c->cap_srcs : 8;
        char **p = realloc(c->srcs, (size_t)cap * sizeof *p);
        if (!p) {
            ml_errorf("out of memory");
            return NULL;
        }
        c->srcs = p;
        c->cap_srcs = cap;
    }
    char *d = ml_strdup(s);
    if (d) c->srcs[c->n_srcs++] = d;
    return d;
}

/* ------------------------------------------------------------------------ errors */

static int err_pos(const char *src, int line, int col, const char *fmt, ...) ML_PRINTF(4, 5);
static int err_pos(const char *src, int line, int col, const char *fmt, ...) {
    char msg[CFG_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0) return ml_errorf("%s:%d:%d: %s", src, line, col, msg);
    return ml_errorf("%s: %s", src, msg);
}

#define ERR_AT(n, ...) err_pos((n)->src, (n)->line, (n)->col, __VA_ARGS__)
#define ERR_KEY(n, ...) err_pos((n)->src, (n)->key_line, (n)->key_col, __VA_ARGS__)

/* Optimal-string-alignment distance, capped inputs. */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

/* "Did you mean": the closest candidate within distance 2, else one sharing a prefix. */
typedef struct suggest {
    const char *word;
    char best[64];
    int score;        /* lower is better; 99 = none */
    char all[200];    /* the candidates, comma-separated, while they fit */
    int all_overflow;
} suggest;

static void suggest_init(suggest *s, const char *word) {
    memset(s, 0, sizeof *s);
    s->word = word;
    s->score = 99;
}

static void suggest_try(suggest *s, const char *cand, size_t len) {
    char c[64];
    if (len >= sizeof c) return;
    memcpy(c, cand, len);
    c[len] = 0;
    size_t used = strlen(s->all);
    if (!s->all_overflow) {
        int k = snprintf(s->all + used, sizeof s->all - used, "%s%s", used ? ", " : "", c);
        if (k < 0 || (size_t)k >= sizeof s->all - used) {
            s->all[used] = 0;
            s->all_overflow = 1;
        }
    }
    size_t lw = strlen(s->word);
    int d = edit_distance(s->word, c), score = 99;
    if (d <= 2 && (size_t)d < lw && (size_t)d < len) score = d;
    else if (lw >= 2 && (strncmp(s->word, c, lw) == 0 || strncmp(s->word, c, len) == 0)) score = 3;
    if (score < s->score) {
        s->score = score;
        memcpy(s->best, c, len + 1);
    }
}

static void suggest_str(suggest *s, const char *cand) { suggest_try(s, cand, strlen(cand)); }

/* " (did you mean 'x'?)", " (valid: a, b)" or "". */
static const char *suggest_text(const suggest *s, char *buf, size_t size, const char *what) {
    if (s->score < 99) snprintf(buf, size, " (did you mean '%s'?)", s->best);
    else if (s->all[0] && !s->all_overflow) snprintf(buf, size, " (%s: %s)", what, s->all);
    else buf[0] = 0;
    return buf;
}

/* ------------------------------------------------------------------------ parser */

typedef struct frame {
    ml_cfg_node *node;
    char *key; /* pending key of a map entry */
    int kl, kc;
} frame;

static int yaml_syntax_error(const char *src, const yaml_parser_t *p, const char *text,
                             size_t len, int positions) {
    const char *problem = p->problem ? p->problem : "invalid YAML";
    if (p->error == YAML_READER_ERROR || !positions) {
        if (p->error == YAML_READER_ERROR)
            return ml_errorf("%s: %s at byte %zu", src, problem, p->problem_offset);
        return ml_errorf("%s: invalid YAML value: %s", src, problem);
    }
    const char *hint = "";
    if (strstr(problem, "cannot start any token") && p->problem_mark.index < len &&
        text[p->problem_mark.index] == '\t')
        hint = " (hint: YAML does not allow tabs; indent with spaces)";
    if (p->context)
        return ml_errorf("%s:%zu:%zu: %s, %s started at %zu:%zu%s", src, p->problem_mark.line + 1,
                         p->problem_mark.column + 1, problem, p->context, p->context_mark.line + 1,
                         p->context_mark.column + 1, hint);
    return ml_errorf("%s:%zu:%zu: %s%s", src, p->problem_mark.line + 1, p->problem_mark.column + 1,
                     problem, hint);
}

/*
 * Parses one YAML document into *out (NULL for an empty document). positions = 0 for
 * override values, whose nodes carry no line/col.
 */
static int parse_yaml(const char *src, const char *text, size_t len, int positions,
                      ml_cfg_node **out) {
    yaml_parser_t p;
    yaml_event_t ev;
    frame st[CFG_MAX_NEST];
    int top = -1, docs = 0, done = 0, rc = ML_ERR;
    ml_cfg_node *root = NULL;
    *out = NULL;
    if (!yaml_parser_initialize(&p)) return ml_errorf("out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    while (!done) {
        if (!yaml_parser_parse(&p, &ev)) {
            yaml_syntax_error(src, &p, text, len, positions);
            goto out;
        }
        int line = positions ? (int)ev.start_mark.line + 1 : 0;
        int col = positions ? (int)ev.start_mark.column + 1 : 0;
        int bad = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (docs++) bad = err_pos(src, line, col, "multiple documents are not supported");
            break;
        case YAML_ALIAS_EVENT:
            bad = err_pos(src, line, col, "aliases are not supported (found '*%s')",
                          (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            ml_cfg_kind kind = ev.type == YAML_SCALAR_EVENT ? ML_CFG_SCALAR
                             : ev.type == YAML_SEQUENCE_START_EVENT ? ML_CFG_SEQ : ML_CFG_MAP;
            const yaml_char_t *anchor = kind == ML_CFG_SCALAR ? ev.data.scalar.anchor
                                      : kind == ML_CFG_SEQ ? ev.data.sequence_start.anchor
                                                           : ev.data.mapping_start.anchor;
            const yaml_char_t *tag = kind == ML_CFG_SCALAR ? ev.data.scalar.tag
                                   : kind == ML_CFG_SEQ ? ev.data.sequence_start.tag
                                                        : ev.data.mapping_start.tag;
            int str_tag = tag && !strcmp((const char *)tag, YAML_STR_TAG);
            if (anchor) {
                bad = err_pos(src, line, col,
                              "anchors and aliases are not supported (found '&%s')",
                              (const char *)anchor);
                break;
            }
            if (tag && !(str_tag && kind == ML_CFG_SCALAR)) {
                bad = err_pos(src, line, col, "tags are not supported (found '%s')",
                              (const char *)tag);
                break;
            }
            if (top >= 0 && st[top].node->kind == ML_CFG_MAP && !st[top].key) {
                if (kind != ML_CFG_SCALAR) {
                    bad = err_pos(src, line, col, "keys must be single values, not %s",
                                  kind_name(kind));
                    break;
                }
                st[top].key = malloc(ev.data.scalar.length + 1);
                if (!st[top].key) {
                    bad = ml_errorf("out of memory");
                    break;
                }
                memcpy(st[top].key, ev.data.scalar.value, ev.data.scalar.length);
                st[top].key[ev.data.scalar.length] = 0;
                st[top].kl = line;
                st[top].kc = col;
                break;
            }
            ml_cfg_node *n = node_new(kind, src, line, col);
            if (!n) {
                bad = ML_ERR;
                break;
            }
            if (kind == ML_CFG_SCALAR) {
                n->text = malloc(ev.data.scalar.length + 1);
                if (!n->text) {
                    node_free(n);
                    bad = ml_errorf("out of memory");
                    break;
                }
                memcpy(n->text, ev.data.scalar.value, ev.data.scalar.length);
                n->text[ev.data.scalar.length] = 0;
                n->quoted = ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE || str_tag;
            }
            if (top < 0) {
                root = n;
            } else if (st[top].node->kind == ML_CFG_SEQ) {
                if (node_push(st[top].node, n)) {
                    node_free(n);
                    bad = ML_ERR;
                    break;
                }
            } else {
                n->key = st[top].key;
                st[top].key = NULL;
                n->key_line = st[top].kl;
                n->key_col = st[top].kc;
                int j = map_find(st[top].node, n->key);
                if (node_push(st[top].node, n)) {
                    node_free(n);
                    bad = ML_ERR;
                    break;
                }
                if (j >= 0) {
                    const ml_cfg_node *first = st[top].node->item[j];
                    if (first->key_line > 0)
                        bad = ERR_KEY(n, "duplicate key '%s' (first defined at %d:%d)", n->key,
                                      first->key_line, first->key_col);
                    else
                        bad = ERR_KEY(n, "duplicate key '%s'", n->key);
                    break;
                }
            }
            if (kind != ML_CFG_SCALAR) {
                if (top + 1 >= CFG_MAX_NEST) {
                    bad = err_pos(src, line, col, "nested deeper than %d levels", CFG_MAX_NEST);
                    break;
                }
                top++;
                st[top].node = n;
                st[top].key = NULL;
            }
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            top--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (bad) goto out;
    }
    *out = root;
    root = NULL;
    rc = ML_OK;
out:
    for (int i = 0; i <= top; i++) free(st[i].key);
    node_free(root);
    yaml_parser_delete(&p);
    return rc;
}

/* A node from YAML text with no positions (override values, defaults). */
static ml_cfg_node *node_from_text(const char *src, const char *text) {
    ml_cfg_node *n;
    if (parse_yaml(src, text, strlen(text), 0, &n)) return NULL;
    if (!n) {
        n = node_new(ML_CFG_SCALAR, src, 0, 0);
        if (n && !(n->text = ml_strdup(""))) {
            node_free(n);
            n = NULL;
        }
    }
    return n;
}

/* -------------------------------------------------------------- files and bases */


/* Deep merge: over's entries win; maps present in both merge; under is consumed. */
static int merge_maps(ml_cfg_node *over, ml_cfg_node *under) {
    int total = over->n + under->n;
    ml_cfg_node **it = malloc((size_t)(total ? total : 1) * sizeof *it);
    char *used = calloc((size_t)over->n + 1, 1);
    if (!it || !used) {
        free(it);
        free(used);
        return ml_errorf("out of memory");
    }
    int k = 0;
    for (int i = 0; i < under->n; i++) {
        ml_cfg_node *u = under->item[i];
        int j = map_find(over, u->key);
        if (j < 0) {
            it[k++] = u;
            continue;
        }
        ml_cfg_node *o = over->item[j];
        used[j] = 1;
        it[k++] = o;
        if (o->kind == ML_CFG_MAP && u->kind == ML_CFG_MAP) {
            if (merge_maps(o, u)) { /* u consumed either way */
                for (int r = i + 1; r < under->n; r++) node_free(under->item[r]);
                for (int r = 0; r < over->n; r++)
                    if (!used[r]) node_free(over->item[r]);
                for (int r = 0; r < k; r++) node_free(it[r]);
                free(it);
                free(used);
                free(over->item);
                over->item = NULL;
                over->n = over->cap = 0;
                under->n = 0;
                node_free(under);
                return ML_ERR;
            }
        } else {
            node_free(u);
        }
    }
    for (int j = 0; j < over->n; j++)
        if (!used[j]) it[k++] = over->item[j];
    free(over->item);
    free(used);
    over->item = it;
    over->n = k;
    over->cap = total ? total : 1;
    under->n = 0;
    node_free(under);
    return ML_OK;
}

/* Loads path and, through its base: key, the chain under it; returns the merged map. */
static ml_cfg_node *load_tree(ml_config *c, const char *path, int depth, const ml_cfg_node *via) {
    char *text = NULL;
    size_t len = 0;
    if (ml_read_file(path, CFG_MAX_FILE, &text, &len)) {
        if (via) ml_error_prefix("%s:%d:%d: base", via->src, via->line, via->col);
        return NULL;
    }
    const char *src = cfg_intern(c, path);
    ml_cfg_node *root = NULL;
    int rc = src ? parse_yaml(src, text, len, 1, &root) : ML_ERR;
    free(text);
    if (rc) return NULL;
    if (!root && !(root = node_new(ML_CFG_MAP, src, 1, 1))) return NULL;
    if (root->kind != ML_CFG_MAP) {
        ERR_AT(root, "the top level must be a mapping, got %s", kind_name(root->kind));
        node_free(root);
        return NULL;
    }
    int bi = map_find(root, "base");
    if (bi < 0) return root;
    ml_cfg_node *b = root->item[bi];
    if (b->kind != ML_CFG_SCALAR || is_null(b)) {
        ERR_AT(b, "base: expected a file name, got %s", is_null(b) ? "nothing" : kind_name(b->kind));
        node_free(root);
        return NULL;
    }
    if (depth >= CFG_MAX_BASES) {
        ERR_AT(b, "base: more than %d levels of base configs (is there a cycle?)", CFG_MAX_BASES);
        node_free(root);
        return NULL;
    }
    char bpath[4096];
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) : 0;
    int k = b->text[0] == '/' || !slash ? snprintf(bpath, sizeof bpath, "%s", b->text)
                                        : snprintf(bpath, sizeof bpath, "%.*s/%s", (int)dl, path, b->text);
    if (k < 0 || (size_t)k >= sizeof bpath) {
        ERR_AT(b, "base: path too long");
        node_free(root);
        return NULL;
    }
    ml_cfg_node *under = load_tree(c, bpath, depth + 1, b);
    if (!under) {
        node_free(root);
        return NULL;
    }
    node_remove(root, bi);
    if (merge_maps(root, under)) {
        node_free(root);
        return NULL;
    }
    return root;
}

/* --------------------------------------------------------------------- overrides */

static int is_index(const char *s, size_t len) {
    if (!len || len > 9) return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

static int apply_override(ml_config *c, ml_cfg_node *root, const char *ov) {
    char *label = malloc(strlen(ov) + 16);
    if (!label) return ml_errorf("out of memory");
    sprintf(label, "override '%s'", ov);
    const char *src = cfg_intern(c, label);
    free(label);
    if (!src) return ML_ERR;
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) return err_pos(src, 0, 0, "expected KEY=VALUE, e.g. train.epochs=3");
    const char *key = ov;
    size_t klen = (size_t)(eq - ov);
    if (klen >= 4 && !strncmp(key, "base", 4) && (klen == 4 || key[4] == '.'))
        return err_pos(src, 0, 0, "base can only be set in a config file");
    for (size_t i = 0; i <= klen; i++)
        if ((i == klen || key[i] == '.') && (i == 0 || key[i - 1] == '.'))
            return err_pos(src, 0, 0, "empty key component in '%.*s'", (int)klen, key);
    ml_cfg_node *val = node_from_text(src, eq + 1);
    if (!val) return ML_ERR;

    ml_cfg_node *cur = root;
    const char *comp = key;
    for (;;) {
        const char *dot = memchr(comp, '.', klen - (size_t)(comp - key));
        size_t cl = dot ? (size_t)(dot - comp) : klen - (size_t)(comp - key);
        int last = !dot;
        int plen = (int)(comp - key) - 1; /* display path of cur */
        if (plen < 0) plen = 0;
        if (cur->kind == ML_CFG_SCALAR && is_null(cur))
            null_to(cur, is_index(comp, cl) ? ML_CFG_SEQ : ML_CFG_MAP);
        int j;
        if (cur->kind == ML_CFG_MAP) {
            j = map_findn(cur, comp, cl);
        } else if (cur->kind == ML_CFG_SEQ) {
            if (!is_index(comp, cl)) {
                node_free(val);
                return err_pos(src, 0, 0, "'%.*s' is a list: expected an index, got '%.*s'", plen,
                               key, (int)cl, comp);
            }
            j = atoi(comp);
            if (j > cur->n) {
                node_free(val);
                return err_pos(src, 0, 0, "index %d out of range for '%.*s' (%d items)", j, plen,
                               key, cur->n);
            }
            if (j == cur->n) j = -1; /* append */
        } else {
            node_free(val);
            return err_pos(src, 0, 0, "'%.*s' is a single value, not a section", plen, key);
        }
        ml_cfg_node *next;
        if (last) {
            next = val;
            val = NULL;
        } else if (j >= 0) {
            cur = cur->item[j];
            comp = dot + 1;
            continue;
        } else {
            const char *nc = dot + 1;
            const char *nd = memchr(nc, '.', klen - (size_t)(nc - key));
            size_t nl = nd ? (size_t)(nd - nc) : klen - (size_t)(nc - key);
            next = node_new(is_index(nc, nl) ? ML_CFG_SEQ : ML_CFG_MAP, src, 0, 0);
            if (!next) {
                node_free(val);
                return ML_ERR;
            }
        }
        next->src = src;
        next->line = next->col = next->key_line = next->key_col = 0;
        if (cur->kind == ML_CFG_MAP) {
            next->key = malloc(cl + 1);
            if (!next->key) {
                node_free(next);
                node_free(val);
                return ml_errorf("out of memory");
            }
            memcpy(next->key, comp, cl);
            next->key[cl] = 0;
        }
        if (j >= 0) {
            node_free(cur->item[j]);
            cur->item[j] = next;
        } else if (node_push(cur, next)) {
            node_free(next);
            node_free(val);
            return ML_ERR;
        }
        if (last) return ML_OK;
        cur = next;
        comp = dot + 1;
    }
}

/* ---------------------------------------------------------------- value checking */

/* The scalar rules themselves live in base/scalar.c, shared with plugin options and Lua. */
#define parse_int ml_scalar_parse_int
#define parse_float ml_scalar_parse_float
#define parse_bool ml_scalar_parse_bool
#define enum_index ml_scalar_choice

static void fmt_range(double lo, double hi, int flags, char *buf, size_t size) {
    ml_scalar_spec sp = {ML_SC_FLOAT, lo, hi, (flags & F_LO_OPEN ? ML_SC_LO_OPEN : 0) | (flags & F_HI_OPEN ? ML_SC_HI_OPEN : 0), NULL};
    ml_scalar_fmt_range(&sp, buf, size);
}

/* What a scalar must be: a schema row or a plugin option. */
typedef struct vspec {
    cfg_type type;
    double min, max;
    int flags;
    const char *choices;
} vspec;

static int sc_type(cfg_type t) {
    switch (t) {
    case T_INT: return ML_SC_INT;
    case T_FLOAT: return ML_SC_FLOAT;
    case T_BOOL: return ML_SC_BOOL;
    case T_ENUM: return ML_SC_ENUM;
    default: return ML_SC_STR;
    }
}

/* Checks scalar n against v and rewrites its text in canonical form. */
static int check_scalar(ml_cfg_node *n, const vspec *v, const char *path) {
    if (n->kind != ML_CFG_SCALAR)
        return ERR_AT(n, "%s: expected %s, got %s", path,
                      v->type == T_ENUM ? "a single value" : ml_scalar_article(sc_type(v->type)), kind_name(n->kind));
    if (v->type == T_STR) {
        n->quoted = 1;
        if (v->flags & F_NAME) {
            const char *t = n->text;
            int dotdot = !strcmp(t, "..") || !strncmp(t, "../", 3) || strstr(t, "/../") ||
                         (strlen(t) >= 3 && !strcmp(t + strlen(t) - 3, "/.."));
            if ((v->flags & F_REQ && !*t) || *t == '/' || dotdot)
                return ERR_AT(n, "%s: expected a non-empty relative name without '..', got '%s'",
                              path, t);
        }
        if (v->flags & F_IDENT) {
            const char *t = n->text;
            size_t len = strlen(t);
            int ok = len >= 1 && len <= 63;
            for (size_t i = 0; ok && i < len; i++)
                ok = (t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= '0' && t[i] <= '9') ||
                     t[i] == '_' || t[i] == '-';
            if (!ok) return ERR_AT(n, "%s: expected 1..63 letters, digits, '_' or '-', got '%s'", path, t);
        }
        if (v->flags & F_GLOB && ml_glob_check(n->text)) return ERR_AT(n, "%s: %s", path, ml_error());
        return ML_OK;
    }
    ml_scalar_spec sp = {sc_type(v->type), v->min, v->max,
                         (v->flags & F_LO_OPEN ? ML_SC_LO_OPEN : 0) | (v->flags & F_HI_OPEN ? ML_SC_HI_OPEN : 0),
                         v->choices};
    char canon[48];
    int rc = ml_scalar_check(&sp, n->text, n->quoted, NULL, canon, sizeof canon);
    if (rc == ML_SC_BAD_RANGE) return ERR_AT(n, "%s %s", path, ml_error());
    if (rc != ML_SC_OK) {
        char msg[CFG_MSG];
        snprintf(msg, sizeof msg, "%s", ml_error());
        if (v->type == T_ENUM) { /* the nearest choice as a hint */
            suggest sg;
            char hint[300];
            suggest_init(&sg, n->text);
            for (const char *p = v->choices; p && *p;) {
                const char *bar = strchr(p, '|');
                size_t len = bar ? (size_t)(bar - p) : strlen(p);
                suggest_try(&sg, p, len);
                p = bar ? bar + 1 : NULL;
            }
            sg.all[0] = 0;
            return ERR_AT(n, "%s: %s%s", path, msg, suggest_text(&sg, hint, sizeof hint, ""));
        }
        return ERR_AT(n, "%s: %s", path, msg);
    }
    if (v->type == T_ENUM) {
        n->quoted = 0;
        return ML_OK;
    }
    if (v->type == T_BOOL) return ML_OK;
    return set_text(n, canon);
}

/* ------------------------------------------------------------------- resolution */

static int resolve_map(ml_config *c, ml_cfg_node *n, const char *spath, const char *path);
static int resolve_plugin(ml_config *c, ml_cfg_node *n, int si, const char *path);
static int check_unique(const ml_cfg_node *list, const char *spath, const char *path);

static void join_path(char *buf, size_t size, const char *a, const char *b) {
    int k = snprintf(buf, size, "%s%s%s", a, *a ? "." : "", b);
    if (k < 0 || (size_t)k >= size) snprintf(buf + size - 4, 4, "...");
}

static int err_missing(const ml_cfg_node *parent, const char *ppath, const char *leaf) {
    const char *src = parent->src;
    int line = parent->key ? parent->key_line : parent->line;
    int col = parent->key ? parent->key_col : parent->col;
    if (*ppath) return err_pos(src, line, col, "missing required key '%s' in '%s'", leaf, ppath);
    return err_pos(src, line, col, "missing required key '%s'", leaf);
}

/*
 * Checks and completes the value at parent->item[idx] (idx < 0: absent, so parent is a
 * map) against schema row si; ppath is the parent's display path.
 */
static int resolve(ml_config *c, ml_cfg_node *parent, int idx, int si, const char *ppath,
                   const char *leaf) {
    const cfg_key *k = &cfg_schema[si];
    ml_cfg_node *n = idx >= 0 ? parent->item[idx] : NULL;
    char path[CFG_PATH];
    join_path(path, sizeof path, ppath, leaf);
    if (!n || is_null(n)) {
        if (k->flags & F_REQ) {
            if (n) return ERR_AT(n, "%s: missing value for required key", path);
            return err_missing(parent, ppath, leaf);
        }
        if (!k->def) {
            if (n) node_remove(parent, idx);
            return ML_OK;
        }
        ml_cfg_node *d = node_from_text("default", k->def);
        if (!d) return ML_ERR;
        const ml_cfg_node *from = n ? n : parent;
        d->src = from->src;
        d->line = d->key_line = n ? from->line : (from->key ? from->key_line : from->line);
        d->col = d->key_col = n ? from->col : (from->key ? from->key_col : from->col);
        if (parent->kind == ML_CFG_MAP && !(d->key = ml_strdup(leaf))) {
            node_free(d);
            return ML_ERR;
        }
        if (n) {
            d->key_line = n->key_line;
            d->key_col = n->key_col;
            node_free(n);
            parent->item[idx] = d;
        } else if (node_push(parent, d)) {
            node_free(d);
            return ML_ERR;
        }
        n = d;
    }
    switch (k->type) {
    case T_MAP:
    case T_FREE:
    case T_PLUGIN:
        if (n->kind != ML_CFG_MAP) return ERR_AT(n, "%s: expected a mapping, got %s", path, kind_name(n->kind));
        if (k->type == T_MAP) return resolve_map(c, n, k->path, path);
        if (k->type == T_PLUGIN) return resolve_plugin(c, n, si, path);
        return ML_OK;
    case T_LIST: {
        if (n->kind != ML_CFG_SEQ) return ERR_AT(n, "%s: expected a list, got %s", path, kind_name(n->kind));
        if (n->n > k->max) return ERR_AT(n, "%s: at most %.0f items, got %d", path, k->max, n->n);
        int ci = schema_child(k->path, "*");
        for (int i = 0; i < n->n; i++) {
            char num[16];
            snprintf(num, sizeof num, "%d", i);
            if (is_null(n->item[i])) return ERR_AT(n->item[i], "%s.%s: empty list item", path, num);
            if (ci >= 0 && resolve(c, n, i, ci, path, num)) return ML_ERR;
        }
        return ci >= 0 && cfg_schema[ci].type == T_MAP ? check_unique(n, cfg_schema[ci].path, path) : ML_OK;
    }
    default: {
        vspec v = {k->type, k->min, k->max, k->flags, k->choices};
        return check_scalar(n, &v, path);
    }
    }
}

/* A list of mappings (schema row spath for its items): keys flagged F_UNIQUE differ
   between items. */
static int check_unique(const ml_cfg_node *list, const char *spath, const char *path) {
    for (int si = 0; si < CFG_NKEYS; si++) {
        if (!is_child(si, spath) || !(cfg_schema[si].flags & F_UNIQUE)) continue;
        const char *leaf = leaf_of(cfg_schema[si].path);
        for (int i = 0; i < list->n; i++) {
            const ml_cfg_node *a = map_get(list->item[i], leaf);
            for (int j = 0; a && a->kind == ML_CFG_SCALAR && j < i; j++) {
                const ml_cfg_node *b = map_get(list->item[j], leaf);
                if (!b || b->kind != ML_CFG_SCALAR || strcmp(a->text, b->text) != 0) continue;
                if (b->line > 0)
                    return ERR_AT(a, "%s.%d.%s: '%s' is used twice (first at %d:%d)", path, i, leaf, a->text, b->line,
                                  b->col);
                return ERR_AT(a, "%s.%d.%s: '%s' is used twice (first in %s.%d)", path, i, leaf, a->text, path, j);
            }
        }
    }
    return ML_OK;
}

/* Puts n's entries in schema order, then desc's option order, then the rest. */
static int reorder(ml_cfg_node *n, const char *spath, const ml_plugin *desc) {
    if (!n->n) return ML_OK;
    ml_cfg_node **it = malloc((size_t)n->n * sizeof *it);
    char *taken = calloc((size_t)n->n, 1);
    if (!it || !taken) {
        free(it);
        free(taken);
        return ml_errorf("out of memory");
    }
    int k = 0;
    for (int si = 0; si < CFG_NKEYS; si++) {
        int j = is_child(si, spath) ? map_find(n, leaf_of(cfg_schema[si].path)) : -1;
        if (j >= 0 && !taken[j]) {
            it[k++] = n->item[j];
            taken[j] = 1;
        }
    }
    for (int o = 0; desc && o < desc->num_options; o++) {
        int j = desc->options[o].name ? map_find(n, desc->options[o].name) : -1;
        if (j >= 0 && !taken[j]) {
            it[k++] = n->item[j];
            taken[j] = 1;
        }
    }
    for (int j = 0; j < n->n; j++)
        if (!taken[j]) it[k++] = n->item[j];
    memcpy(n->item, it, (size_t)k * sizeof *it);
    free(it);
    free(taken);
    return ML_OK;
}

static int resolve_map(ml_config *c, ml_cfg_node *n, const char *spath, const char *path) {
    for (int j = 0; j < n->n; j++) {
        ml_cfg_node *e = n->item[j];
        if (schema_child(spath, e->key) >= 0) continue;
        suggest s;
        char hint[300];
        suggest_init(&s, e->key);
        for (int si = 0; si < CFG_NKEYS; si++)
            if (is_child(si, spath)) suggest_str(&s, leaf_of(cfg_schema[si].path));
        suggest_text(&s, hint, sizeof hint, "valid keys");
        if (*path) return ERR_KEY(e, "unknown key '%s' in '%s'%s", e->key, path, hint);
        return ERR_KEY(e, "unknown key '%s'%s", e->key, hint);
    }
    for (int si = 0; si < CFG_NKEYS; si++) {
        if (!is_child(si, spath)) continue;
        const char *leaf = leaf_of(cfg_schema[si].path);
        if (resolve(c, n, map_find(n, leaf), si, path, leaf)) return ML_ERR;
    }
    return reorder(n, spath, NULL);
}

static const char *plugin_kind_name(int kind) {
    return kind == ML_PLUGIN_ROUTER ? "router" : kind == ML_PLUGIN_LOSS ? "loss"
         : kind == ML_PLUGIN_SCHEDULE ? "schedule" : "unknown";
}

/* A plugin option's rule, as the plugin layer states it (plugin/options.h): one rule for
   YAML, the command line and Lua. */
static vspec option_spec(const ml_option *o) {
    ml_scalar_spec sp = ml_option_spec(o);
    vspec v = {T_STR, sp.min, sp.max, 0, sp.choices};
    v.type = sp.type == ML_SC_INT ? T_INT : sp.type == ML_SC_FLOAT ? T_FLOAT : sp.type == ML_SC_BOOL ? T_BOOL
           : sp.type == ML_SC_ENUM ? T_ENUM : T_STR;
    return v;
}

static int option_index(const ml_plugin *desc, const char *name) {
    for (int o = 0; o < desc->num_options; o++)
        if (desc->options[o].name && !strcmp(desc->options[o].name, name)) return o;
    return -1;
}

static int resolve_plugin(ml_config *c, ml_cfg_node *n, int si, const char *path) {
    const cfg_key *k = &cfg_schema[si];
    for (int ci = 0; ci < CFG_NKEYS; ci++) {
        if (!is_child(ci, k->path)) continue;
        const char *leaf = leaf_of(cfg_schema[ci].path);
        if (resolve(c, n, map_find(n, leaf), ci, path, leaf)) return ML_ERR;
    }
    const ml_cfg_node *name = map_get(n, "name");
    if (!c->find || !name) return reorder(n, k->path, NULL);
    char err[ML_ERR_MAX] = "";
    const ml_plugin *desc = c->find(c->find_ctx, k->plugin_kind, name->text, err);
    if (!desc)
        return ERR_AT(name, "%s", err[0] ? err : "plugin not found");
    if ((int)desc->kind != k->plugin_kind)
        return ERR_AT(name, "'%s' is a %s plugin, %s expects a %s plugin", name->text,
                      plugin_kind_name((int)desc->kind), path, plugin_kind_name(k->plugin_kind));
    for (int j = 0; j < n->n; j++) {
        ml_cfg_node *e = n->item[j];
        if (schema_child(k->path, e->key) >= 0) continue;
        char opath[CFG_PATH];
        join_path(opath, sizeof opath, path, e->key);
        int o = option_index(desc, e->key);
        if (o < 0) {
            suggest s;
            char hint[300];
            suggest_init(&s, e->key);
            for (int ci = 0; ci < CFG_NKEYS; ci++)
                if (is_child(ci, k->path)) suggest_str(&s, leaf_of(cfg_schema[ci].path));
            for (int q = 0; q < desc->num_options; q++)
                if (desc->options[q].name) suggest_str(&s, desc->options[q].name);
            return ERR_KEY(e, "unknown option '%s' for %s plugin '%s' in '%s'%s", e->key,
                           plugin_kind_name(k->plugin_kind), desc->name, path,
                           suggest_text(&s, hint, sizeof hint, "valid keys"));
        }
        vspec v = option_spec(&desc->options[o]);
        if (is_null(e))
            return ERR_AT(e, "%s: missing value (omit the key for the default, %s)", opath,
                          desc->options[o].def ? desc->options[o].def : "none");
        if (check_scalar(e, &v, opath)) return ML_ERR;
    }
    for (int o = 0; o < desc->num_options; o++) {
        const ml_option *opt = &desc->options[o];
        if (!opt->name || !opt->def || map_find(n, opt->name) >= 0) continue;
        char opath[CFG_PATH];
        join_path(opath, sizeof opath, path, opt->name);
        ml_cfg_node *d = node_from_text("default", opt->def);
        vspec v = option_spec(opt);
        if (!d || check_scalar(d, &v, opath)) {
            node_free(d);
            return ERR_AT(n, "%s plugin '%s' has an invalid default for option '%s': %s",
                          plugin_kind_name(k->plugin_kind), desc->name, opt->name, ml_error());
        }
        d->src = n->src;
        d->line = d->key_line = n->key ? n->key_line : n->line;
        d->col = d->key_col = n->key ? n->key_col : n->col;
        if (!(d->key = ml_strdup(opt->name)) || node_push(n, d)) {
            node_free(d);
            return ML_ERR;
        }
    }
    return reorder(n, k->path, desc);
}

/* ----------------------------------------------------------------------- emitter */

static int sb_write(void *data, unsigned char *buf, size_t size) {
    ml_strbuf *b = data;
    ml_strbuf_put(b, (const char *)buf, size);
    return !b->oom;
}

static int emit_scalar(yaml_emitter_t *em, const char *text, int quoted) {
    yaml_event_t ev;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)text, (int)strlen(text), 1, 1,
                                      quoted ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_PLAIN_SCALAR_STYLE))
        return ML_ERR;
    return yaml_emitter_emit(em, &ev) ? ML_OK : ML_ERR;
}

static int emit_node(yaml_emitter_t *em, const ml_cfg_node *n) {
    yaml_event_t ev;
    if (n->kind == ML_CFG_SCALAR) return emit_scalar(em, n->text, n->quoted);
    if (n->kind == ML_CFG_MAP) {
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE) ||
            !yaml_emitter_emit(em, &ev))
            return ML_ERR;
        for (int i = 0; i < n->n; i++)
            if (emit_scalar(em, n->item[i]->key, 0) || emit_node(em, n->item[i])) return ML_ERR;
        if (!yaml_mapping_end_event_initialize(&ev) || !yaml_emitter_emit(em, &ev)) return ML_ERR;
        return ML_OK;
    }
    int flat = 1;
    for (int i = 0; i < n->n; i++)
        if (n->item[i]->kind != ML_CFG_SCALAR) flat = 0;
    if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                              flat ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE) ||
        !yaml_emitter_emit(em, &ev))
        return ML_ERR;
    for (int i = 0; i < n->n; i++)
        if (emit_node(em, n->item[i])) return ML_ERR;
    if (!yaml_sequence_end_event_initialize(&ev) || !yaml_emitter_emit(em, &ev)) return ML_ERR;
    return ML_OK;
}

static int emit_yaml(ml_config *c) {
    yaml_emitter_t em;
    yaml_event_t ev;
    ml_strbuf b = {0};
    if (!yaml_emitter_initialize(&em)) return ml_errorf("out of memory");
    yaml_emitter_set_output(&em, sb_write, &b);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    yaml_emitter_set_indent(&em, 2);
    int ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) && yaml_emitter_emit(&em, &ev) &&
             yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) && yaml_emitter_emit(&em, &ev) &&
             !emit_node(&em, c->root) && yaml_document_end_event_initialize(&ev, 1) &&
             yaml_emitter_emit(&em, &ev) && yaml_stream_end_event_initialize(&ev) &&
             yaml_emitter_emit(&em, &ev) && yaml_emitter_flush(&em);
    const char *problem = em.problem;
    yaml_emitter_delete(&em);
    if (!ok || !b.buf) {
        free(b.buf);
        return ml_errorf("%s: cannot render the resolved config: %s", c->path,
                         problem ? problem : "out of memory");
    }
    c->yaml = b.buf;
    c->yaml_len = b.len;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < b.len; i++) {
        h ^= (unsigned char)b.buf[i];
        h *= 0x100000001b3ULL;
    }
    c->hash = h;
    return ML_OK;
}

/* A node as one line of flow YAML (owned, free()): what an override's value is written as. */
char *ml_cfg_node_flow(const ml_cfg_node *n) {
    yaml_emitter_t em;
    yaml_event_t ev;
    ml_strbuf b = {0};
    if (!yaml_emitter_initialize(&em)) {
        ml_errorf("out of memory");
        return NULL;
    }
    yaml_emitter_set_output(&em, sb_write, &b);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    int ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) && yaml_emitter_emit(&em, &ev) &&
             yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) && yaml_emitter_emit(&em, &ev);
    /* a flow rendering of n: maps and sequences in flow style, scalars as they were */
    const ml_cfg_node *stack[CFG_MAX_NEST];
    int idx[CFG_MAX_NEST], top = 0;
    stack[0] = n;
    idx[0] = -1;
    while (ok && top >= 0) {
        const ml_cfg_node *x = stack[top];
        if (x->kind == ML_CFG_SCALAR) {
            ok = !emit_scalar(&em, x->text, x->quoted);
            top--;
            continue;
        }
        if (idx[top] < 0) {
            ok = x->kind == ML_CFG_MAP
                     ? yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_MAPPING_STYLE)
                     : yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE);
            ok = ok && yaml_emitter_emit(&em, &ev);
            idx[top] = 0;
            continue;
        }
        if (idx[top] >= x->n) {
            ok = (x->kind == ML_CFG_MAP ? yaml_mapping_end_event_initialize(&ev) : yaml_sequence_end_event_initialize(&ev)) &&
                 yaml_emitter_emit(&em, &ev);
            top--;
            continue;
        }
        const ml_cfg_node *child = x->item[idx[top]++];
        if (x->kind == ML_CFG_MAP) ok = !emit_scalar(&em, child->key, 0);
        if (ok && top + 1 >= CFG_MAX_NEST) ok = 0;
        if (ok) {
            stack[++top] = child;
            idx[top] = -1;
        }
    }
    ok = ok && yaml_document_end_event_initialize(&ev, 1) && yaml_emitter_emit(&em, &ev) &&
         yaml_stream_end_event_initialize(&ev) && yaml_emitter_emit(&em, &ev) && yaml_emitter_flush(&em);
    yaml_emitter_delete(&em);
    if (!ok || !b.buf) {
        free(b.buf);
        ml_errorf("cannot render a config value as YAML");
        return NULL;
    }
    /* one document: drop a "--- " start, "..." end and the trailing newline */
    char *t = b.buf;
    size_t len = b.len;
    while (len && (t[len - 1] == '\n' || t[len - 1] == ' ')) len--;
    if (len >= 3 && !strncmp(t + len - 3, "...", 3)) {
        len -= 3;
        while (len && (t[len - 1] == '\n' || t[len - 1] == ' ')) len--;
    }
    size_t start = !strncmp(t, "--- ", 4) ? 4 : 0;
    memmove(t, t + start, len - start);
    t[len - start] = 0;
    return t;
}

/* ------------------------------------------------------------------------- paths */

/*
 * One path rule (docs/configs.md, "Paths"): a relative path in a config is relative to the
 * file that names it (a base: file's paths to that base file, a command-line override's to
 * the working directory); when nothing is there, moelab's own tree is tried (scripts/,
 * configs/ and the tests' fixtures ship with it). The resolved config holds absolute paths,
 * so a run means the same wherever it is started or resumed from.
 */
static char g_install[ML_PATH_MAX];

void ml_config_set_install_dir(const char *dir) {
    char real[PATH_MAX];
    snprintf(g_install, sizeof g_install, "%s", dir && realpath(dir, real) ? real : (dir ? dir : ""));
}

/* The tree the running binary belongs to: the first directory above it holding
   scripts/train.lua. */
static const char *install_dir(void) {
    if (g_install[0]) return g_install;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return "";
    exe[n] = 0;
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash || slash == exe) break;
        *slash = 0;
        char probe[PATH_MAX + 32];
        snprintf(probe, sizeof probe, "%s/scripts/train.lua", exe);
        if (access(probe, R_OK) == 0) {
            snprintf(g_install, sizeof g_install, "%s", exe);
            break;
        }
    }
    return g_install;
}

/* The directory a node's relative paths are relative to: its file's, or the working one. */
static void base_dir(const ml_cfg_node *n, char *out, size_t cap) {
    char real[PATH_MAX];
    if (!strcmp(n->src, "default")) {
        snprintf(out, cap, "%s", install_dir());
        return;
    }
    if (!strncmp(n->src, "override '", 10) || !realpath(n->src, real)) {
        if (!getcwd(out, cap)) snprintf(out, cap, ".");
        return;
    }
    char *slash = strrchr(real, '/');
    if (slash && slash != real) *slash = 0;
    else strcpy(real, "/");
    snprintf(out, cap, "%s", real);
}

/* Makes a relative path scalar absolute by the rule above. must_exist: fail, listing the
   places tried, when neither holds it; else the first place is taken. */
static int resolve_path(ml_cfg_node *n, const char *key, int must_exist) {
    if (!n || n->kind != ML_CFG_SCALAR || !n->text || !n->text[0] || n->text[0] == '/') return ML_OK;
    char dir[PATH_MAX], a[2 * PATH_MAX], b[2 * PATH_MAX];
    base_dir(n, dir, sizeof dir);
    snprintf(a, sizeof a, "%s/%s", dir, n->text);
    const char *inst = install_dir();
    int same = !*inst || !strcmp(inst, dir);
    snprintf(b, sizeof b, "%s/%s", inst, n->text);
    const char *pick = a;
    if (access(a, F_OK) != 0) {
        if (!same && access(b, F_OK) == 0) pick = b;
        else if (must_exist) {
            if (same) return ERR_AT(n, "%s: '%s' not found (tried %s)", key, n->text, a);
            return ERR_AT(n, "%s: '%s' not found (tried %s and %s)", key, n->text, a, b);
        }
    }
    return set_text(n, pick);
}

static int is_path_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    return n && (strchr(s, '/') || (n >= 3 && !strcmp(s + n - 3, ".so")));
}

/* The written paths, before validation (plugins named by path are loaded during it). */
static int resolve_paths(ml_config *c) {
    ml_cfg_node *r = c->root, *x;
    if (resolve_path(map_get(r, "script"), "script", 1)) return ML_ERR;
    if ((x = map_get(r, "data")) && x->kind == ML_CFG_MAP &&
        (resolve_path(map_get(x, "path"), "data.path", 1) ||
         resolve_path(map_get(x, "val_path"), "data.val_path", 1)))
        return ML_ERR;
    if ((x = map_get(r, "model")) && x->kind == ML_CFG_MAP && resolve_path(map_get(x, "init_from"), "model.init_from", 1))
        return ML_ERR;
    if ((x = map_get(r, "plugin_path")) && x->kind == ML_CFG_SEQ)
        for (int i = 0; i < x->n; i++)
            if (resolve_path(x->item[i], "plugin_path", 0)) return ML_ERR;
    if ((x = map_get(r, "lua")) && x->kind == ML_CFG_MAP && (x = map_get(x, "allow_read")) && x->kind == ML_CFG_SEQ)
        for (int i = 0; i < x->n; i++)
            if (resolve_path(x->item[i], "lua.allow_read", 0)) return ML_ERR;
    static const char *const plug[] = {"router", "schedule"};
    for (int i = 0; i < 2; i++) {
        ml_cfg_node *sec = map_get(r, plug[i]), *nm;
        if (sec && sec->kind == ML_CFG_MAP && (nm = map_get(sec, "name")) && nm->kind == ML_CFG_SCALAR &&
            is_path_name(nm->text) && resolve_path(nm, plug[i], 1))
            return ML_ERR;
    }
    if ((x = map_get(r, "losses")) && x->kind == ML_CFG_SEQ)
        for (int i = 0; i < x->n; i++) {
            ml_cfg_node *nm = x->item[i]->kind == ML_CFG_MAP ? map_get(x->item[i], "name") : NULL;
            if (nm && nm->kind == ML_CFG_SCALAR && is_path_name(nm->text) && resolve_path(nm, "losses.name", 1))
                return ML_ERR;
        }
    return ML_OK;
}

/* --------------------------------------------------------------------------- API */

ml_config *ml_config_load_plain(const char *path) {
    ml_config *c = ml_calloc(1, sizeof *c);
    if (!c) return NULL;
    if (!(c->path = ml_strdup(path))) goto fail;
    char *text = NULL;
    size_t len = 0;
    if (ml_read_file(path, CFG_MAX_FILE, &text, &len)) goto fail;
    const char *src = cfg_intern(c, path);
    int rc = src ? parse_yaml(src, text, len, 1, &c->root) : ML_ERR;
    free(text);
    if (rc) goto fail;
    if (!c->root && !(c->root = node_new(ML_CFG_MAP, src, 1, 1))) goto fail;
    if (c->root->kind != ML_CFG_MAP) {
        err_pos(src, c->root->line, c->root->col, "the top level must be a mapping, got %s", kind_name(c->root->kind));
        goto fail;
    }
    return c;
fail:
    ml_config_free(c);
    return NULL;
}

ml_config *ml_config_load(const char *path, const char *const *overrides, int n_overrides,
                          ml_config_find_plugin find, void *find_ctx) {
    ml_config *c = ml_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->find = find;
    c->find_ctx = find_ctx;
    if (!(c->path = ml_strdup(path)) || !(c->root = load_tree(c, path, 0, NULL))) goto fail;
    for (int i = 0; i < n_overrides; i++)
        if (apply_override(c, c->root, overrides[i])) goto fail;
    if (resolve_paths(c) || resolve_map(c, c->root, "", "")) goto fail;
    /* the default script lives in moelab's tree */
    if (resolve_path(map_get(c->root, "script"), "script", 1) || emit_yaml(c)) goto fail;
    c->find = NULL;
    c->find_ctx = NULL;
    return c;
fail:
    ml_config_free(c);
    return NULL;
}

void ml_config_free(ml_config *c) {
    if (!c) return;
    node_free(c->root);
    for (int i = 0; i < c->n_srcs; i++) free(c->srcs[i]);
    free(c->srcs);
    free(c->yaml);
    free(c->path);
    free(c);
}

const ml_cfg_node *ml_config_get(const ml_config *c, const char *path) {
    const ml_cfg_node *n = c ? c->root : NULL;
    const char *p = path;
    while (n && p && *p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (n->kind == ML_CFG_MAP) {
            int j = map_findn(n, p, len);
            n = j < 0 ? NULL : n->item[j];
        } else if (n->kind == ML_CFG_SEQ && is_index(p, len)) {
            int j = atoi(p);
            n = j < n->n ? n->item[j] : NULL;
        } else {
            n = NULL;
        }
        p = dot ? dot + 1 : NULL;
    }
    return n;
}

static const char *plain_text(const ml_config *c, const char *path) {
    const ml_cfg_node *n = ml_config_get(c, path);
    return n && n->kind == ML_CFG_SCALAR && !n->quoted ? n->text : NULL;
}

int64_t ml_config_int(const ml_config *c, const char *path, int64_t fallback) {
    const char *t = plain_text(c, path);
    int64_t v;
    return t && !parse_int(t, &v) ? v : fallback;
}

double ml_config_float(const ml_config *c, const char *path, double fallback) {
    const char *t = plain_text(c, path);
    double v;
    return t && !parse_float(t, &v) ? v : fallback;
}

int ml_config_bool(const ml_config *c, const char *path, int fallback) {
    const char *t = plain_text(c, path);
    int v;
    return t && !parse_bool(t, &v) ? v : fallback;
}

const char *ml_config_str(const ml_config *c, const char *path, const char *fallback) {
    const ml_cfg_node *n = ml_config_get(c, path);
    return n && n->kind == ML_CFG_SCALAR ? n->text : fallback;
}

int ml_config_len(const ml_config *c, const char *path) {
    const ml_cfg_node *n = ml_config_get(c, path);
    return n && n->kind == ML_CFG_SEQ ? n->n : -1;
}

int ml_config_plugin_options(const ml_config *c, const char *path, const ml_plugin *desc,
                             ml_optval *out) {
    const ml_cfg_node *sec = ml_config_get(c, path);
    if (!sec || sec->kind != ML_CFG_MAP)
        return ml_errorf("config: no plugin section '%s'", path);
    /* the section may name the plugin by path, so its keys (not its name) must fit desc */
    for (int k = 0; k < sec->n; k++) {
        const char *key = sec->item[k]->key;
        if (!key || !strcmp(key, "name") || !strcmp(key, "coef")) continue;
        int known = 0;
        for (int o = 0; o < desc->num_options && !known; o++) known = desc->options[o].name && !strcmp(desc->options[o].name, key);
        if (!known)
            return ml_errorf("config: '%s' has option '%s', which plugin '%s' does not declare", path, key, desc->name);
    }
    for (int o = 0; o < desc->num_options; o++) {
        const ml_option *opt = &desc->options[o];
        const ml_cfg_node *n = opt->name ? map_get(sec, opt->name) : NULL;
        const char *text = n && n->kind == ML_CFG_SCALAR ? n->text : opt->def;
        memset(&out[o], 0, sizeof out[o]);
        if (!text) continue;
        if (ml_option_parse(opt, text, n && n->quoted, &out[o]) != ML_OK)
            return ml_errorf("config: %s.%s: %s (plugin '%s')", path, opt->name ? opt->name : "?", ml_error(),
                             desc->name);
    }
    return ML_OK;
}

const ml_cfg_node *ml_config_root(const ml_config *c) { return c ? c->root : NULL; }
ml_cfg_kind ml_cfg_node_kind(const ml_cfg_node *n) { return n->kind; }
int ml_cfg_node_len(const ml_cfg_node *n) { return n->kind == ML_CFG_SCALAR ? 0 : n->n; }
const ml_cfg_node *ml_cfg_node_at(const ml_cfg_node *n, int i) {
    return n->kind != ML_CFG_SCALAR && i >= 0 && i < n->n ? n->item[i] : NULL;
}
const char *ml_cfg_node_key(const ml_cfg_node *n) { return n->key; }
const char *ml_cfg_node_text(const ml_cfg_node *n) { return n->kind == ML_CFG_SCALAR ? n->text : NULL; }
int ml_cfg_node_is_quoted(const ml_cfg_node *n) { return n->kind == ML_CFG_SCALAR && n->quoted; }

const char *ml_cfg_node_source(const ml_cfg_node *n, int *line, int *col) {
    if (line) *line = n->line;
    if (col) *col = n->col;
    return n->src;
}

void ml_cfg_node_key_pos(const ml_cfg_node *n, int *line, int *col) {
    *line = n->key ? n->key_line : n->line;
    *col = n->key ? n->key_col : n->col;
}

int ml_config_write(const ml_config *c, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return ml_errorf("%s: cannot open for writing: %s", path, strerror(errno));
    int ok = fwrite(c->yaml, 1, c->yaml_len, f) == c->yaml_len;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) return ml_errorf("%s: cannot write: %s", path, strerror(e));
    return ML_OK;
}

const char *ml_config_yaml(const ml_config *c) { return c->yaml; }
uint64_t ml_config_hash(const ml_config *c) { return c->hash; }
const char *ml_config_path(const ml_config *c) { return c->path; }

int ml_config_key_spec(const char *path, ml_scalar_spec *out) {
    for (int si = 0; si < CFG_NKEYS; si++) {
        const cfg_key *k = &cfg_schema[si];
        if (strcmp(k->path, path) != 0) continue;
        if (k->type != T_INT && k->type != T_FLOAT && k->type != T_BOOL && k->type != T_ENUM && k->type != T_STR) break;
        *out = (ml_scalar_spec){sc_type(k->type), k->min, k->max,
                                (k->flags & F_LO_OPEN ? ML_SC_LO_OPEN : 0) | (k->flags & F_HI_OPEN ? ML_SC_HI_OPEN : 0),
                                k->choices};
        return ML_OK;
    }
    return ml_errorf("config: '%s' is not a setting of the schema", path);
}

/* ------------------------------------------------------------------ schema docs */


/* "losses.*.coef" -> "losses.N.coef" */
static void doc_path(const char *p, char *buf, size_t size) {
    size_t k = 0;
    for (; *p && k + 1 < size; p++) buf[k++] = *p == '*' ? 'N' : *p;
    buf[k] = 0;
}

static void doc_type(int si, char *buf, size_t size) {
    const cfg_key *k = &cfg_schema[si];
    switch (k->type) {
    case T_STR: snprintf(buf, size, "string"); break;
    case T_INT: snprintf(buf, size, "int"); break;
    case T_FLOAT: snprintf(buf, size, "float"); break;
    case T_BOOL: snprintf(buf, size, "bool"); break;
    case T_FREE: snprintf(buf, size, "mapping, free-form"); break;
    case T_MAP: snprintf(buf, size, "section"); break;
    case T_PLUGIN: snprintf(buf, size, "%s plugin section", plugin_kind_name(k->plugin_kind)); break;
    case T_ENUM: {
        size_t n = (size_t)snprintf(buf, size, "one of `");
        for (const char *p = k->choices; *p && n + 6 < size; p++) {
            if (*p == '|') {
                memcpy(buf + n, "`, `", 4);
                n += 4;
            } else {
                buf[n++] = *p;
            }
        }
        snprintf(buf + n, size - n, "`");
        break;
    }
    case T_LIST: {
        int ci = schema_child(k->path, "*");
        char item[200] = "any";
        if (ci >= 0) doc_type(ci, item, sizeof item);
        if (ci >= 0 && cfg_schema[ci].type == T_MAP) snprintf(item, sizeof item, "mappings");
        snprintf(buf, size, "list of %s%s", item,
                 ci >= 0 && cfg_schema[ci].type == T_PLUGIN ? "s" : "");
        break;
    }
    }
}

static void doc_row(ml_strbuf *b, int si) {
    const cfg_key *k = &cfg_schema[si];
    char path[CFG_PATH], type[300], def[200], range[100] = "";
    doc_path(k->path, path, sizeof path);
    doc_type(si, type, sizeof type);
    if (k->flags & F_REQ) snprintf(def, sizeof def, "**required**");
    else if (!k->def) snprintf(def, sizeof def, "none");
    else if (k->type == T_STR) snprintf(def, sizeof def, "`\"%s\"`", k->def);
    else snprintf(def, sizeof def, "`%s`", k->def);
    int item = k->type == T_LIST ? schema_child(k->path, "*") : si;
    if (item >= 0 && (cfg_schema[item].type == T_INT || cfg_schema[item].type == T_FLOAT)) {
        const cfg_key *r = &cfg_schema[item];
        char t[80];
        fmt_range(r->min, r->max, r->flags, t, sizeof t);
        /* backticks keep > and < out of HTML */
        if (*t) snprintf(range, sizeof range, "%s%s%s%s", item != si ? "each " : "",
                         *t == '>' || *t == '<' ? "`" : "", t, *t == '>' || *t == '<' ? "`" : "");
    }
    ml_strbuf_printf(b, "| `%s` | %s | %s | %s | %s |\n", path, type, def, range, k->doc);
}

static void doc_table_head(ml_strbuf *b) {
    ml_strbuf_printf(b, "| key | type | default | range | meaning |\n|---|---|---|---|---|\n");
}

static void doc_options_row(ml_strbuf *b, int si) {
    char path[CFG_PATH];
    doc_path(cfg_schema[si].path, path, sizeof path);
    ml_strbuf_printf(b, "| `%s.<option>` | per option | the option's default | per option | "
                 "options of the named %s plugin (`moelab plugins` lists them) |\n",
              path, plugin_kind_name(cfg_schema[si].plugin_kind));
}

/* All rows under the section row si (recursively, skipping scalar list-item rows). */
static void doc_section_rows(ml_strbuf *b, const char *spath) {
    for (int si = 0; si < CFG_NKEYS; si++) {
        if (!is_child(si, spath)) continue;
        const cfg_key *k = &cfg_schema[si];
        if (!strcmp(leaf_of(k->path), "*") && k->type != T_PLUGIN) continue;
        if (k->type != T_PLUGIN) doc_row(b, si);
        if (k->type == T_MAP || k->type == T_PLUGIN) doc_section_rows(b, k->path);
        if (k->type == T_PLUGIN) doc_options_row(b, si);
        int item = k->type == T_LIST ? schema_child(k->path, "*") : -1;
        if (item >= 0 && cfg_schema[item].type == T_MAP) doc_section_rows(b, cfg_schema[item].path);
    }
}

/* Rows with a heading of their own: sections, plugin sections, lists of plugin sections. */
static int doc_is_section(int si) {
    const cfg_key *k = &cfg_schema[si];
    int item = k->type == T_LIST ? schema_child(k->path, "*") : -1;
    return k->type == T_MAP || k->type == T_PLUGIN || (item >= 0 && cfg_schema[item].type == T_PLUGIN);
}

char *ml_config_schema_markdown(void) {
    ml_strbuf b = {0};
    ml_strbuf_printf(&b, "### Top level\n\n");
    doc_table_head(&b);
    for (int si = 0; si < CFG_NKEYS; si++) {
        if (is_child(si, "") && !doc_is_section(si)) doc_row(&b, si);
    }
    for (int si = 0; si < CFG_NKEYS; si++) {
        const cfg_key *k = &cfg_schema[si];
        if (!is_child(si, "") || !doc_is_section(si)) continue;
        char type[300];
        doc_type(si, type, sizeof type);
        char first = k->doc[0] >= 'a' && k->doc[0] <= 'z' ? (char)(k->doc[0] - 'a' + 'A') : k->doc[0];
        ml_strbuf_printf(&b, "\n### `%s` — %s\n\n%c%s.\n\n", k->path, type, first, k->doc + 1);
        doc_table_head(&b);
        if (k->type == T_LIST) doc_row(&b, si);
        doc_section_rows(&b, k->path);
        if (k->type == T_PLUGIN) doc_options_row(&b, si);
    }
    char *md = ml_strbuf_take(&b);
    if (!md) ml_errorf("out of memory");
    return md;
}
