/*
 * check_config.c — config loading: a valid config resolves with every default, each
 * error class gives file:line:col and the right message, overrides and base merges work,
 * the written config reloads to the same text and hash, docs/configs.md matches the schema.
 * Plugins are fakes: descriptors with small option tables, found by fake_find.
 */
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/common.h"
#include "io/config.h"
#include "testutil.h"

#define FIX "tests/fixtures/configs/"

static const ml_option softmax_opts[] = {
    {"k", ML_OPT_INT, "2", 1, 64, NULL, "experts per sample", 0},
    {"noise", ML_OPT_FLOAT, "0", 0, 10, NULL, "noise std", 0},
    {"normalize", ML_OPT_BOOL, "true", 0, 0, NULL, "renormalise top-k gates", 0},
    {"capacity", ML_OPT_ENUM, "none", 0, 0, "none|drop|reroute", "over-capacity policy", 0},
};
static const ml_option noisy_opts[] = {
    {"k", ML_OPT_INT, "2", 1, 64, NULL, "experts per sample", 0},
    {"noise_std", ML_OPT_FLOAT, "1.0", 0, -1, NULL, "noise std, unbounded", 0},
};
static const ml_option zloss_opts[] = {
    {"mode", ML_OPT_ENUM, "mean", 0, 0, "mean|sum", "reduction", 0},
};
static const ml_option progressive_opts[] = {
    {"target", ML_OPT_INT, "16", 1, 4096, NULL, "experts at the end", 0},
    {"every", ML_OPT_INT, "1", 1, 1000000, NULL, "epochs between additions", 0},
};

#define FAKE(kind, nm, opts, n) {ML_PLUGIN_HEADER(kind), nm, "0", "fake", opts, n, NULL}
static const ml_plugin fakes[] = {
    FAKE(ML_PLUGIN_ROUTER, "softmax_topk", softmax_opts, 4),
    FAKE(ML_PLUGIN_ROUTER, "noisy_topk", noisy_opts, 2),
    FAKE(ML_PLUGIN_LOSS, "switch", NULL, 0),
    FAKE(ML_PLUGIN_LOSS, "z_loss", zloss_opts, 1),
    FAKE(ML_PLUGIN_SCHEDULE, "fixed", NULL, 0),
    FAKE(ML_PLUGIN_SCHEDULE, "progressive", progressive_opts, 2),
};

static int find_calls;

static const ml_plugin *fake_find(void *ctx, int kind, const char *name, char *err) {
    (void)ctx;
    find_calls++;
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++)
        if ((int)fakes[i].kind == kind && !strcmp(fakes[i].name, name)) return &fakes[i];
    snprintf(err, ML_ERR_MAX, "no %s plugin named '%s' (searched: fake)",
             kind == ML_PLUGIN_ROUTER ? "router" : kind == ML_PLUGIN_LOSS ? "loss" : "schedule", name);
    return NULL;
}

static ml_config *load(const char *path) { return ml_config_load(path, NULL, 0, fake_find, NULL); }

static ml_config *load_ov(const char *path, const char *ov) {
    return ml_config_load(path, &ov, 1, fake_find, NULL);
}

/* Loading must fail; the message starts with prefix and contains sub. */
#define ck_fails(cfg, prefix, sub)                                                              \
    do {                                                                                        \
        ml_error_clear();                                                                       \
        ml_config *c_ = (cfg);                                                                  \
        ck_assert_msg(c_ == NULL, "loaded although it should fail");                            \
        const char *e_ = ml_error();                                                            \
        ck_assert_msg(strncmp(e_, prefix, strlen(prefix)) == 0, "error '%s' lacks prefix '%s'", \
                      e_, prefix);                                                              \
        ck_assert_msg(strstr(e_, sub) != NULL, "error '%s' lacks '%s'", e_, sub);               \
        ck_assert_msg(!strchr(e_, '\n'), "error '%s' has a newline", e_);                       \
    } while (0)

START_TEST(test_minimal_defaults) {
    ml_config *c = load(FIX "good_minimal.yaml");
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_str_eq(ml_config_path(c), FIX "good_minimal.yaml");
    ck_assert_str_eq(ml_config_str(c, "experiment", NULL), "minimal");
    ck_assert_ptr_nonnull(strstr(ml_config_str(c, "script", NULL), "/scripts/train.lua"));
    ck_assert_int_eq(ml_config_str(c, "script", NULL)[0], '/'); /* the path rule: absolute, in moelab's tree */
    ck_assert_str_eq(ml_config_str(c, "data.dataset", NULL), "fashion_mnist");
    ck_assert_str_eq(ml_config_str(c, "data.path", NULL), "");
    ck_assert_int_eq(ml_config_int(c, "data.val_images", -1), 10000);
    ck_assert_int_eq(ml_config_int(c, "model.experts", -1), 4);
    ck_assert_int_eq(ml_config_len(c, "model.channels"), 4);
    ck_assert_int_eq(ml_config_int(c, "model.channels.3", -1), 256);
    ck_assert_int_eq(ml_config_int(c, "train.epochs", -1), 10);
    ck_assert_int_eq(ml_config_int(c, "train.batch_size", -1), 64);
    ck_assert_double_eq(ml_config_float(c, "optim.lr", -1), 0.001);
    ck_assert_double_eq(ml_config_float(c, "optim.eps", -1), 1e-8);
    ck_assert_double_eq(ml_config_float(c, "health.active_threshold", -1), 0.1);
    ck_assert_str_eq(ml_config_str(c, "optim.name", NULL), "adam");
    ck_assert_str_eq(ml_config_str(c, "router.name", NULL), "softmax_topk");
    ck_assert_str_eq(ml_config_str(c, "schedule.name", NULL), "fixed");
    ck_assert_int_eq(ml_config_len(c, "losses"), 0);
    ck_assert_int_eq(ml_config_len(c, "plugin_path"), 0);
    ck_assert_int_eq(ml_config_len(c, "lua.allow_read"), 0);
    /* the default router's options are filled in */
    ck_assert_int_eq(ml_config_int(c, "router.k", -1), 2);
    ck_assert_int_eq(ml_config_bool(c, "router.normalize", -1), 1);
    ck_assert_str_eq(ml_config_str(c, "router.capacity", NULL), "none");
    /* fallbacks for paths outside the tree and for wrong types */
    ck_assert_int_eq(ml_config_int(c, "train.nope", 77), 77);
    ck_assert_int_eq(ml_config_int(c, "experiment", 5), 5);
    ck_assert_int_eq(ml_config_len(c, "train"), -1);
    ck_assert_ptr_null(ml_config_str(c, "train", NULL));
    /* resolved order follows the schema and base is absent */
    const ml_cfg_node *root = ml_config_root(c);
    ck_assert_int_eq(ml_cfg_node_kind(root), ML_CFG_MAP);
    ck_assert_str_eq(ml_cfg_node_key(ml_cfg_node_at(root, 0)), "experiment");
    ck_assert_str_eq(ml_cfg_node_key(ml_cfg_node_at(root, 1)), "script");
    ck_assert_ptr_null(ml_config_get(c, "base"));
    ml_config_free(c);
    ml_config_free(NULL);
}
END_TEST

START_TEST(test_full_and_tree) {
    ml_config *c = load(FIX "good_full.yaml");
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_str_eq(ml_config_str(c, "plugin_path.1", NULL), "/opt/moe plugins");
    ck_assert_int_eq(ml_config_int(c, "params.warmup_epochs", 0), 20);
    ck_assert_int_eq(ml_config_int(c, "params.note", -1), -1); /* quoted stays a string */
    ck_assert_str_eq(ml_config_str(c, "params.note", NULL), "42");
    ck_assert_double_eq(ml_config_float(c, "params.schedule.1", 0), 5e-4);
    ck_assert_str_eq(ml_config_str(c, "params.nested.b.1", NULL), "y");
    ck_assert_int_eq(ml_config_len(c, "model.channels"), 2);
    ck_assert_int_eq(ml_config_len(c, "losses"), 2);
    ck_assert_str_eq(ml_config_str(c, "losses.0.name", NULL), "switch");
    ck_assert_double_eq(ml_config_float(c, "losses.0.coef", 0), 1e-5);
    ck_assert_double_eq(ml_config_float(c, "losses.1.coef", 0), 0.001);
    ck_assert_str_eq(ml_config_str(c, "losses.1.mode", NULL), "sum");
    ck_assert_int_eq(ml_config_int(c, "schedule.target", 0), 16);
    ck_assert_int_eq(ml_config_int(c, "schedule.every", 0), 1);
    ck_assert_double_eq(ml_config_float(c, "router.noise", -1), 0.5);

    /* plugin options in option-table order */
    ml_optval v[4];
    ck_assert_int_eq(ml_config_plugin_options(c, "router", &fakes[0], v), ML_OK);
    ck_assert_int_eq(v[0].i, 2);
    ck_assert_double_eq(v[0].f, 2.0);
    ck_assert_double_eq(v[1].f, 0.5);
    ck_assert_int_eq(v[2].i, 1);
    ck_assert_int_eq(v[3].i, 0);
    ck_assert_str_eq(v[3].s, "none");
    ck_assert_int_eq(ml_config_plugin_options(c, "losses.1", &fakes[3], v), ML_OK);
    ck_assert_int_eq(v[0].i, 1);
    ck_assert_str_eq(v[0].s, "sum");
    ck_assert_int_eq(ml_config_plugin_options(c, "router", &fakes[1], v), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "noisy_topk"));
    ck_assert_int_eq(ml_config_plugin_options(c, "losses.7", &fakes[3], v), ML_ERR);

    /* tree access: router section = name, then options in table order */
    const ml_cfg_node *r = ml_config_get(c, "router");
    ck_assert_int_eq(ml_cfg_node_len(r), 5);
    ck_assert_str_eq(ml_cfg_node_key(ml_cfg_node_at(r, 0)), "name");
    ck_assert_str_eq(ml_cfg_node_key(ml_cfg_node_at(r, 1)), "k");
    ck_assert_str_eq(ml_cfg_node_key(ml_cfg_node_at(r, 4)), "capacity");
    ck_assert_ptr_null(ml_cfg_node_at(r, 5));
    const ml_cfg_node *ls = ml_config_get(c, "losses");
    ck_assert_int_eq(ml_cfg_node_kind(ls), ML_CFG_SEQ);
    ck_assert_ptr_null(ml_cfg_node_key(ml_cfg_node_at(ls, 0)));
    const ml_cfg_node *note = ml_config_get(c, "params.note");
    ck_assert_int_eq(ml_cfg_node_is_quoted(note), 1);
    ck_assert_str_eq(ml_cfg_node_text(note), "42");
    int line, col;
    ck_assert_str_eq(ml_cfg_node_source(note, &line, &col), FIX "good_full.yaml");
    ck_assert_int_eq(line, 6);
    ck_assert_int_eq(col, 9);
    ck_assert_int_eq(ml_cfg_node_is_quoted(ml_config_get(c, "params.warmup_epochs")), 0);
    /* schema strings come out quoted, numbers canonical */
    ck_assert_int_eq(ml_cfg_node_is_quoted(ml_config_get(c, "results.run_id")), 1);
    ck_assert_str_eq(ml_config_str(c, "losses.0.coef", NULL), "1e-05");
    ck_assert_str_eq(ml_config_str(c, "optim.weight_decay", NULL), "0.0");
    ml_config_free(c);
}
END_TEST

START_TEST(test_unknown_key) {
    ck_fails(load(FIX "bad_unknown_key.yaml"), FIX "bad_unknown_key.yaml:7:3: ",
             "unknown key 'epoch' in 'train' (did you mean 'epochs'?)");
    ck_fails(load(FIX "bad_unknown_top.yaml"), FIX "bad_unknown_top.yaml:6:1: ",
             "unknown key 'optimizer' (did you mean 'optim'?)");
}
END_TEST

START_TEST(test_duplicate_key) {
    ck_fails(load(FIX "bad_duplicate.yaml"), FIX "bad_duplicate.yaml:9:3: ",
             "duplicate key 'epochs' (first defined at 7:3)");
}
END_TEST

START_TEST(test_wrong_type) {
    ck_fails(load(FIX "bad_type.yaml"), FIX "bad_type.yaml:7:11: ",
             "train.epochs: expected an integer, got 'abc'");
    ck_fails(load(FIX "bad_type_quoted.yaml"), FIX "bad_type_quoted.yaml:7:11: ",
             "expected an integer, got \"3\" (quoted, so a string)");
    ck_fails(load(FIX "bad_type_float_int.yaml"), FIX "bad_type_float_int.yaml:7:11: ",
             "expected an integer, got '1e3' (hint:");
    ck_fails(load(FIX "bad_enum.yaml"), FIX "bad_enum.yaml:3:12: ",
             "data.dataset: expected one of fashion_mnist|synthetic|cifar10|image_folder|"
             "image_mask_folder|camouflage, got 'fashion_mnst' (did you mean 'fashion_mnist'?)");
    ck_fails(load(FIX "bad_bool.yaml"), FIX "bad_bool.yaml:7:14: ",
             "router.normalize: expected true or false, got 'yes'");
    ck_fails(load(FIX "bad_kind.yaml"), FIX "bad_kind.yaml:6:8: ",
             "train: expected a mapping, got a list");
    ck_fails(load(FIX "bad_top_list.yaml"), FIX "bad_top_list.yaml:1:1: ",
             "the top level must be a mapping, got a list");
}
END_TEST

START_TEST(test_out_of_range) {
    ck_fails(load(FIX "bad_range.yaml"), FIX "bad_range.yaml:7:15: ",
             "train.batch_size must be in [1, 1000000], got 0");
    ck_fails(load(FIX "bad_range_open.yaml"), FIX "bad_range_open.yaml:7:7: ",
             "optim.lr must be in (0, 10], got 0");
    ck_fails(load(FIX "bad_list_item.yaml"), FIX "bad_list_item.yaml:6:18: ",
             "model.channels.1 must be in [1, 65536], got -1");
    ck_fails(load_ov(FIX "good_minimal.yaml", "optim.weight_decay=-1"),
             "override 'optim.weight_decay=-1': ", "optim.weight_decay must be >= 0, got -1");
}
END_TEST

START_TEST(test_missing_required) {
    ck_fails(load(FIX "bad_missing.yaml"), FIX "bad_missing.yaml:2:1: ",
             "missing required key 'dataset' in 'data'");
    ck_fails(load(FIX "bad_missing_top.yaml"), FIX "bad_missing_top.yaml:1:1: ",
             "missing required key 'experiment'");
    ck_fails(load(FIX "bad_loss_noname.yaml"), FIX "bad_loss_noname.yaml:7:5: ",
             "missing required key 'name' in 'losses.0'");
}
END_TEST

START_TEST(test_plugin_options) {
    ck_fails(load(FIX "bad_plugin_option.yaml"), FIX "bad_plugin_option.yaml:8:3: ",
             "unknown option 'kk' for router plugin 'softmax_topk' in 'router' (did you mean 'k'?)");
    ck_fails(load(FIX "bad_plugin_option_range.yaml"), FIX "bad_plugin_option_range.yaml:7:6: ",
             "router.k must be in [1, 64], got 99");
    ck_fails(load(FIX "bad_loss_option.yaml"), FIX "bad_loss_option.yaml:9:5: ",
             "unknown option 'mdoe' for loss plugin 'z_loss' in 'losses.1' (did you mean 'mode'?)");
}
END_TEST

START_TEST(test_plugin_not_found) {
    ck_fails(load(FIX "bad_plugin_name.yaml"), FIX "bad_plugin_name.yaml:7:9: ",
             "no router plugin named 'nope_router' (searched: fake)");
    ck_fails(load_ov(FIX "good_minimal.yaml", "schedule.name=grow"),
             "override 'schedule.name=grow': ", "no schedule plugin named 'grow'");
}
END_TEST

START_TEST(test_alias_refused) {
    ck_fails(load(FIX "bad_alias.yaml"), FIX "bad_alias.yaml:4:8: ", "aliases are not supported");
}
END_TEST

START_TEST(test_syntax_error) {
    ck_fails(load(FIX "bad_syntax.yaml"), FIX "bad_syntax.yaml:4:2: ", "did not find expected key");
    ck_fails(load(FIX "bad_tab.yaml"), FIX "bad_tab.yaml:3:1: ", "tabs");
}
END_TEST

START_TEST(test_missing_file) {
    ck_fails(load(FIX "no_such_file.yaml"), FIX "no_such_file.yaml: cannot open: ",
             "No such file or directory");
    ck_fails(load(FIX "bad_base_missing.yaml"), FIX "bad_base_missing.yaml:2:7: base: ",
             FIX "no_such_base.yaml: cannot open: No such file");
}
END_TEST

START_TEST(test_nulls_tags_documents) {
    ml_config *c = load(FIX "good_nulls.yaml");
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_str_eq(ml_config_str(c, "data.path", NULL), "");
    ck_assert_int_eq(ml_config_int(c, "train.epochs", 0), 10);
    ck_assert_str_eq(ml_config_str(c, "optim.name", NULL), "adam");
    ck_assert_int_eq(ml_cfg_node_is_quoted(ml_config_get(c, "params.tag")), 1);
    ck_assert_int_eq(ml_config_int(c, "params.tag", -1), -1);
    ml_config_free(c);
    ck_fails(load(FIX "bad_two_docs.yaml"), FIX "bad_two_docs.yaml:2:1: ",
             "multiple documents are not supported");
    ck_fails(load("tests/fixtures/configs"), "tests/fixtures/configs: cannot read: ", "directory");
    ck_fails(load_ov(FIX "good_minimal.yaml", "model.experts=!!int 3"), "override 'model.experts=!!int 3': ",
             "tags are not supported");
}
END_TEST

START_TEST(test_overrides) {
    const char *ov[] = {"train.epochs=3",     "losses.0.coef=1e-4", "router.k=1",
                        "params.lr_list=[1, 2]", "data.image_size=32", "losses.1.name=z_loss",
                        "results.run_id=\"007\""};
    ml_config *c = ml_config_load(FIX "good_full.yaml", ov, 7, fake_find, NULL);
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_int_eq(ml_config_int(c, "train.epochs", 0), 3);
    ck_assert_double_eq(ml_config_float(c, "losses.0.coef", 0), 1e-4);
    ck_assert_int_eq(ml_config_int(c, "router.k", 0), 1);
    ck_assert_int_eq(ml_config_len(c, "params.lr_list"), 2);
    ck_assert_int_eq(ml_config_int(c, "data.image_size", 0), 32);
    ck_assert_str_eq(ml_config_str(c, "losses.1.name", NULL), "z_loss");
    ck_assert_str_eq(ml_config_str(c, "results.run_id", NULL), "007");
    ck_assert_str_eq(ml_cfg_node_source(ml_config_get(c, "train.epochs"), NULL, NULL),
                     "override 'train.epochs=3'");
    ml_config_free(c);

    /* appending a list item, creating a missing section */
    const char *ov2[] = {"losses.0.name=switch", "losses.1.name=z_loss", "losses.1.mode=sum"};
    c = ml_config_load(FIX "good_minimal.yaml", ov2, 3, fake_find, NULL);
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_int_eq(ml_config_len(c, "losses"), 2);
    ck_assert_double_eq(ml_config_float(c, "losses.1.coef", 0), 1.0);
    ml_config_free(c);

    /* changing the router: its options come from the new plugin */
    c = load_ov(FIX "good_minimal.yaml", "router.name=noisy_topk");
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_double_eq(ml_config_float(c, "router.noise_std", 0), 1.0);
    ck_assert_ptr_null(ml_config_get(c, "router.capacity"));
    ml_config_free(c);
    ck_fails(load_ov(FIX "good_router_capacity.yaml", "router.name=noisy_topk"),
             FIX "good_router_capacity.yaml:8:3: ",
             "unknown option 'capacity' for router plugin 'noisy_topk'");

    ck_fails(load_ov(FIX "good_minimal.yaml", "train.epoch=3"), "override 'train.epoch=3': ",
             "unknown key 'epoch' in 'train' (did you mean 'epochs'?)");
    ck_fails(load_ov(FIX "good_minimal.yaml", "train.x=1"), "override 'train.x=1': ",
             "unknown key 'x' in 'train' (valid keys: epochs, batch_size, seed, threads, eval_every, nonfinite)");
    ck_fails(load_ov(FIX "good_minimal.yaml", "train.epochs=abc"), "override 'train.epochs=abc': ",
             "train.epochs: expected an integer, got 'abc'");
    ck_fails(load_ov(FIX "good_minimal.yaml", "router.kk=1"), "override 'router.kk=1': ",
             "unknown option 'kk' for router plugin 'softmax_topk' in 'router' (did you mean 'k'?)");
    ck_fails(load_ov(FIX "good_minimal.yaml", "train.epochs"), "override 'train.epochs': ",
             "expected KEY=VALUE");
    ck_fails(load_ov(FIX "good_minimal.yaml", "train..epochs=1"), "override 'train..epochs=1': ",
             "empty key component");
    ck_fails(load_ov(FIX "good_full.yaml", "losses.5.coef=1"), "override 'losses.5.coef=1': ",
             "index 5 out of range for 'losses' (2 items)");
    ck_fails(load_ov(FIX "good_full.yaml", "experiment.x=1"), "override 'experiment.x=1': ",
             "'experiment' is a single value, not a section");
    ck_fails(load_ov(FIX "good_full.yaml", "base=x.yaml"), "override 'base=x.yaml': ",
             "base can only be set in a config file");
    ck_fails(load_ov(FIX "good_full.yaml", "train.epochs=[1"), "override 'train.epochs=[1': ",
             "invalid YAML value");
    ck_fails(load_ov(FIX "good_full.yaml", "params.x=*a"), "override 'params.x=*a': ",
             "aliases are not supported");
}
END_TEST

START_TEST(test_base_merge) {
    ml_config *c = load(FIX "good_child.yaml");
    ck_assert_msg(c, "%s", ml_error());
    ck_assert_str_eq(ml_config_str(c, "experiment", NULL), "child");
    ck_assert_int_eq(ml_config_int(c, "data.val_images", 0), 5000);    /* from base */
    ck_assert_int_eq(ml_config_int(c, "model.experts", 0), 8);         /* from base */
    ck_assert_int_eq(ml_config_int(c, "train.epochs", 0), 5);          /* child wins */
    ck_assert_int_eq(ml_config_int(c, "train.batch_size", 0), 128);    /* merged map */
    ck_assert_int_eq(ml_config_int(c, "router.k", 0), 1);              /* deep merge */
    ck_assert_double_eq(ml_config_float(c, "router.noise", 0), 0.25);
    ck_assert_int_eq(ml_config_len(c, "losses"), 1);                   /* list replaced */
    ck_assert_str_eq(ml_config_str(c, "losses.0.name", NULL), "z_loss");
    ck_assert_ptr_null(ml_config_get(c, "base"));
    ck_assert_str_eq(ml_cfg_node_source(ml_config_get(c, "model.experts"), NULL, NULL),
                     FIX "good_base.yaml");
    ml_config_free(c);

    ck_fails(load(FIX "bad_child.yaml"), FIX "bad_child.yaml:4:3: ",
             "unknown key 'epohcs' in 'train' (did you mean 'epochs'?)");
    ck_fails(load(FIX "bad_child_of_bad.yaml"), FIX "bad_base_inner.yaml:6:3: ",
             "unknown key 'exprts' in 'model' (did you mean 'experts'?)");
    ck_fails(load(FIX "bad_base_cycle.yaml"), FIX "bad_base_cycle.yaml:1:7: ",
             "more than 8 levels of base configs");
}
END_TEST

START_TEST(test_write_roundtrip) {
    const char *dir = tu_tmpdir("config");
    ck_assert_ptr_nonnull(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    const char *files[] = {FIX "good_minimal.yaml", FIX "good_full.yaml", FIX "good_child.yaml"};
    for (int i = 0; i < 3; i++) {
        ml_config *a = load(files[i]);
        ck_assert_msg(a, "%s", ml_error());
        ck_assert_int_eq(ml_config_write(a, path), ML_OK);
        ml_config *b = load(path);
        ck_assert_msg(b, "%s: %s", files[i], ml_error());
        ck_assert_str_eq(ml_config_yaml(a), ml_config_yaml(b));
        ck_assert_uint_eq(ml_config_hash(a), ml_config_hash(b));
        ck_assert_int_eq(ml_cfg_node_is_quoted(ml_config_get(b, "experiment")), 1);
        /* the Lua-visible tree keeps quoting through the round trip */
        if (i == 1) {
            ck_assert_int_eq(ml_cfg_node_is_quoted(ml_config_get(b, "params.note")), 1);
            ck_assert_int_eq(ml_config_int(b, "params.warmup_epochs", 0), 20);
        }
        ml_config_free(a);
        ml_config_free(b);
    }
    /* without a find callback, the resolved config still loads (plugin options unchecked) */
    ml_config *d = ml_config_load(path, NULL, 0, NULL, NULL);
    ck_assert_msg(d, "%s", ml_error());
    ml_config_free(d);
    /* a different value gives a different hash */
    ml_config *x = load(FIX "good_minimal.yaml");
    ml_config *y = load_ov(FIX "good_minimal.yaml", "train.seed=2");
    ck_assert_uint_ne(ml_config_hash(x), ml_config_hash(y));
    ml_config_free(x);
    ml_config_free(y);
    x = load(FIX "good_minimal.yaml");
    ck_assert_int_eq(ml_config_write(x, "/nonexistent/dir/c.yaml"), ML_ERR);
    ml_config_free(x);
    ck_assert_ptr_nonnull(strstr(ml_error(), "/nonexistent/dir/c.yaml: cannot open for writing"));
    unlink(path);
    rmdir(dir);
}
END_TEST

/* optim.groups: a list of mappings with required keys, unique names, patterns checked, at
   most 32 groups; lr and weight_decay stay absent (they follow optim.*) when not given, and
   a config without groups resolves without the key (its text and hash as before). */
START_TEST(test_optim_groups) {
    ml_config *c = load(FIX "good_groups.yaml");
    ck_assert_msg(c != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_config_str(c, "optim.name", ""), "adamw");
    ck_assert_int_eq(ml_config_len(c, "optim.groups"), 2);
    ck_assert_str_eq(ml_config_str(c, "optim.groups.0.match", ""), "enc.*");
    ck_assert_double_eq(ml_config_float(c, "optim.groups.0.lr", 0), 1e-4);
    ck_assert_int_eq(ml_config_bool(c, "optim.groups.0.frozen", 0), 1);
    ck_assert_int_eq(ml_config_bool(c, "optim.groups.1.frozen", 1), 0);
    ck_assert_ptr_null(ml_config_get(c, "optim.groups.1.lr"));
    ck_assert_ptr_null(ml_config_get(c, "optim.groups.0.weight_decay"));
    ck_assert_double_eq(ml_config_float(c, "optim.groups.1.weight_decay", 1), 0);
    ml_config_free(c);
    c = load(FIX "good_minimal.yaml");
    ck_assert_ptr_null(ml_config_get(c, "optim.groups"));
    ck_assert_ptr_null(strstr(ml_config_yaml(c), "groups"));
    ml_config_free(c);
    ck_fails(load(FIX "bad_group_twice.yaml"), FIX "bad_group_twice.yaml:9:14: ",
             "optim.groups.1.name: 'enc' is used twice (first at 8:14)");
    ck_fails(load(FIX "bad_group_glob.yaml"), FIX "bad_group_glob.yaml:9:14: ",
             "optim.groups.0.match: pattern 'enc.[fc': '[' is not closed");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.groups.0.name=a b"), "override 'optim.groups.0.name=a b': ",
             "optim.groups.0.name: expected 1..63 letters, digits, '_' or '-', got 'a b'");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.groups.2.name=x"), "override 'optim.groups.2.name=x': ",
             "missing required key 'match' in 'optim.groups.2'");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.groups.0.lr=0"), "override 'optim.groups.0.lr=0': ",
             "optim.groups.0.lr must be in (0, 10], got 0");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.groups.1.frozen=yes"), "override 'optim.groups.1.frozen=yes': ",
             "optim.groups.1.frozen: expected true or false");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.name=adam_w"), "override 'optim.name=adam_w': ", "(did you mean 'adamw'?)");
    /* optim.idle_experts: dense (the default) or lazy */
    ck_fails(load(FIX "bad_idle_experts.yaml"), FIX "bad_idle_experts.yaml:8:17: ",
             "optim.idle_experts: expected one of dense|lazy, got 'sparse'");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.idle_experts=lazzy"), "override 'optim.idle_experts=lazzy': ",
             "optim.idle_experts: expected one of dense|lazy, got 'lazzy' (did you mean 'lazy'?)");
    ck_fails(load_ov(FIX "good_groups.yaml", "optim.idle_experts=1"), "override 'optim.idle_experts=1': ",
             "expected one of dense|lazy");
    c = load(FIX "good_groups.yaml"); /* absent: dense, and no key in the text (hash as before) */
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_null(ml_config_get(c, "optim.idle_experts"));
    ck_assert_ptr_null(strstr(ml_config_yaml(c), "idle_experts"));
    ml_config_free(c);
    c = load_ov(FIX "good_groups.yaml", "optim.idle_experts=lazy");
    ck_assert_msg(c != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_config_str(c, "optim.idle_experts", ""), "lazy");
    ml_config_free(c);
    char many[4096] = "optim.groups=[";
    for (int i = 0; i < 33; i++) {
        size_t k = strlen(many);
        snprintf(many + k, sizeof many - k, "%s{name: g%d, match: x}", i ? "," : "", i);
    }
    strcat(many, "]");
    ck_fails(load_ov(FIX "good_minimal.yaml", many), "override 'optim.groups=", "optim.groups: at most 32 items, got 33");
    ml_scalar_spec sp;
    ck_assert_int_eq(ml_config_key_spec("optim.lr", &sp), ML_OK);
    ck_assert_int_eq(sp.type, ML_SC_FLOAT);
    ck_assert_double_eq(sp.max, 10);
    ck_assert_int_eq(sp.flags, ML_SC_LO_OPEN);
    ck_assert_int_eq(ml_config_key_spec("optim.groups.*.weight_decay", &sp), ML_OK);
    ck_assert_int_eq(ml_config_key_spec("optim", &sp), ML_ERR);
}
END_TEST

/* docs/configs.md holds ml_config_schema_markdown() between two markers. */
START_TEST(test_docs_match_schema) {
    char *want = ml_config_schema_markdown();
    ck_assert_ptr_nonnull(want);
    FILE *f = fopen("docs/configs.md", "rb");
    ck_assert_msg(f, "docs/configs.md missing");
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    fclose(f);
    doc[n] = 0;
    const char *begin = "<!-- schema:begin (generated by ml_config_schema_markdown) -->\n";
    char *a = strstr(doc, begin), *b = strstr(doc, "<!-- schema:end -->");
    ck_assert_msg(a && b, "docs/configs.md lacks the schema markers");
    a += strlen(begin);
    *b = 0;
    if (strcmp(a, want)) {
        const char *out = tu_path("%s/tests/configs-schema.md", tu_build());
        FILE *g = fopen(out, "wb");
        if (g) {
            fputs(want, g);
            fclose(g);
        }
        ck_abort_msg("docs/configs.md is stale: replace its schema section with %s", out);
    }
    free(want);
}
END_TEST

/* One path rule: relative paths are relative to the file that names them (a base file's to
   the base file), a command-line override's to the working directory, then moelab's tree;
   the resolved config holds absolute paths; a missing script names the places tried. */
static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(test_path_rule) {
    char dir[256], sub[300], p[400], want[PATH_MAX + 64], cwd[512];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("paths"));
    snprintf(sub, sizeof sub, "%s/sub", dir);
    ck_assert_int_eq(mkdir(sub, 0777), 0);
    snprintf(p, sizeof p, "%s/loop.lua", sub);
    put(p, "-- a script\n");
    snprintf(p, sizeof p, "%s/base.yaml", sub);
    put(p, "experiment: e\nscript: loop.lua\ndata: {dataset: synthetic}\nmodel: {type: mlp}\n"
           "plugin_path: [my_plugins]\nlua: {allow_read: [../nothing_here]}\n");
    snprintf(p, sizeof p, "%s/top.yaml", dir);
    put(p, "base: sub/base.yaml\n");
    ml_config *c = ml_config_load(p, NULL, 0, NULL, NULL);
    ck_assert_msg(c != NULL, "%s", ml_error());
    char real[PATH_MAX];
    ck_assert_ptr_nonnull(realpath(sub, real));
    snprintf(want, sizeof want, "%s/loop.lua", real);
    ck_assert_str_eq(ml_config_str(c, "script", NULL), want); /* the base file's directory */
    snprintf(want, sizeof want, "%s/my_plugins", real);
    ck_assert_str_eq(ml_config_str(c, "plugin_path.0", NULL), want);
    snprintf(want, sizeof want, "%s/../nothing_here", real);
    ck_assert_str_eq(ml_config_str(c, "lua.allow_read.0", NULL), want);
    ck_assert_ptr_nonnull(strstr(ml_config_yaml(c), want));
    ml_config_free(c);
    /* an override is relative to the working directory */
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(sub), 0);
    char top[400];
    snprintf(top, sizeof top, "%s/top.yaml", dir);
    c = ml_config_load(top, (const char *[]){"script=loop.lua"}, 1, NULL, NULL);
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_msg(c != NULL, "%s", ml_error());
    snprintf(want, sizeof want, "%s/loop.lua", real);
    ck_assert_str_eq(ml_config_str(c, "script", NULL), want);
    ml_config_free(c);
    /* moelab's tree: scripts/train.lua named from anywhere */
    c = ml_config_load(top, (const char *[]){"script=scripts/train.lua"}, 1, NULL, NULL);
    ck_assert_msg(c != NULL, "%s", ml_error());
    ck_assert_ptr_nonnull(strstr(ml_config_str(c, "script", NULL), "/scripts/train.lua"));
    ck_assert_int_eq(access(ml_config_str(c, "script", NULL), R_OK), 0);
    ml_config_free(c);
    /* missing: both places named, at the value's position */
    snprintf(p, sizeof p, "%s/bad.yaml", dir);
    put(p, "base: sub/base.yaml\nscript: nowhere.lua\n");
    ck_assert_ptr_null(ml_config_load(p, NULL, 0, NULL, NULL));
    ck_assert_msg(strstr(ml_error(), "bad.yaml:2:9: script: 'nowhere.lua' not found (tried ") &&
                      strstr(ml_error(), "/nowhere.lua and "),
                  "%s", ml_error());
    tu_rm_rf(dir);
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *t = tcase_create("config");
    tcase_add_test(t, test_minimal_defaults);
    tcase_add_test(t, test_full_and_tree);
    tcase_add_test(t, test_unknown_key);
    tcase_add_test(t, test_duplicate_key);
    tcase_add_test(t, test_wrong_type);
    tcase_add_test(t, test_out_of_range);
    tcase_add_test(t, test_missing_required);
    tcase_add_test(t, test_plugin_options);
    tcase_add_test(t, test_plugin_not_found);
    tcase_add_test(t, test_alias_refused);
    tcase_add_test(t, test_syntax_error);
    tcase_add_test(t, test_missing_file);
    tcase_add_test(t, test_nulls_tags_documents);
    tcase_add_test(t, test_overrides);
    tcase_add_test(t, test_base_merge);
    tcase_add_test(t, test_write_roundtrip);
    tcase_add_test(t, test_optim_groups);
    tcase_add_test(t, test_docs_match_schema);
    tcase_add_test(t, test_path_rule);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(config_suite()); }
