/* check_health.c — routing-health metrics on hand-computed cases. */
#include "testutil.h"
#include "base/common.h"
#include "model/health.h"

#define EPS 1e-9

/* A batch built by hand: B samples, N experts, one dispatch slot per sample unless dropped. */
typedef struct batch {
    int B, N;
    float prob[64 * 8];
    float logits[64 * 8];
    int32_t ds[64 * 8], de[64 * 8];
    float dg[64 * 8];
    int n_disp;
    int32_t label[64];
} batch;

static void batch_init(batch *t, int B, int N) {
    memset(t, 0, sizeof *t);
    t->B = B;
    t->N = N;
}

static void batch_onehot(batch *t, int b, int e) {
    for (int k = 0; k < t->N; k++) t->prob[b * t->N + k] = k == e ? 1.0f : 0.0f;
}

static void batch_uniform(batch *t, int b) {
    for (int k = 0; k < t->N; k++) t->prob[b * t->N + k] = 1.0f / (float)t->N;
}

static void batch_dispatch(batch *t, int b, int e) {
    t->ds[t->n_disp] = b;
    t->de[t->n_disp] = e;
    t->dg[t->n_disp] = 1.0f;
    t->n_disp++;
}

static ml_routing_record batch_record(const batch *t, int labelled, int num_classes) {
    ml_routing_record r = {.size = sizeof r, .B = t->B, .N = t->N, .logits = t->logits, .prob = t->prob,
                           .disp_sample = t->ds, .disp_expert = t->de, .disp_gate = t->dg,
                           .n_disp = t->n_disp, .label = labelled ? t->label : NULL,
                           .num_classes = num_classes};
    return r;
}

static void compute(ml_health_acc *a, ml_health *h) {
    ck_assert_msg(ml_health_compute(a, NULL, h) == ML_OK, "%s", ml_error());
}

START_TEST(balanced_and_specialised) {
    /* N=4, each sample certain of one expert, experts used equally. */
    batch t;
    batch_init(&t, 8, 4);
    for (int b = 0; b < 8; b++) {
        batch_onehot(&t, b, b % 4);
        batch_dispatch(&t, b, b % 4);
    }
    ml_health_acc *a = ml_health_acc_new(4, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_int_eq(h.num_experts, 4);
    for (int e = 0; e < 4; e++) {
        ck_assert_double_eq_tol(h.utilisation[e], 0.25, EPS);
        ck_assert_double_eq_tol(h.importance[e], 0.25, EPS);
    }
    ck_assert_double_eq_tol(h.cv, 0, EPS);
    ck_assert_int_eq(h.active, 4);
    ck_assert_int_eq(h.dead, 0);
    ck_assert_double_eq_tol(h.marginal_entropy_norm, 1, EPS);
    ck_assert_double_eq_tol(h.mean_sample_entropy, 0, EPS); /* 0·log 0 = 0, not NaN */
    ck_assert_double_eq_tol(h.mutual_info, log(4.0), 1e-6); /* confident and specialised */
    ck_assert_double_eq_tol(h.max_load_ratio, 0, EPS);
    ck_assert_double_eq_tol(h.load_balance, 1, 1e-6);
    ck_assert_double_eq_tol(h.dropped_share, 0, EPS);
    ck_assert(isnan(h.nmi_label));
    ck_assert_int_eq(h.collapsed, 0);
    ck_assert_int_eq(h.samples, 8);
    ck_assert_int_eq(h.slots, 8);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(total_collapse) {
    batch t;
    batch_init(&t, 8, 4);
    for (int b = 0; b < 8; b++) {
        batch_onehot(&t, b, 0);
        batch_dispatch(&t, b, 0);
    }
    ml_health_acc *a = ml_health_acc_new(4, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_int_eq(h.active, 1);
    ck_assert_int_eq(h.dead, 3);
    ck_assert_double_eq_tol(h.marginal_entropy_norm, 0, EPS);
    ck_assert_int_eq(h.collapsed, 1);
    ck_assert_double_eq_tol(h.load_balance, 4, 1e-6); /* N: the loss is at its maximum */
    ck_assert_double_eq_tol(h.cv, sqrt(3.0), 1e-9);   /* std((1,0,0,0)) / (1/4) */
    ck_assert_double_eq_tol(h.max_load_ratio, 3, EPS);
    ck_assert_double_eq_tol(h.mutual_info, 0, 1e-9);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(uniform_undecided_router) {
    /* Probabilities uniform: the Switch value is 1 whatever the dispatch does —
     * here it even sends everything to one expert (collapsed), and the value still says 1. */
    batch t;
    batch_init(&t, 16, 4);
    for (int b = 0; b < 16; b++) {
        batch_uniform(&t, b);
        batch_dispatch(&t, b, 0);
    }
    ml_health_acc *a = ml_health_acc_new(4, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_double_eq_tol(h.load_balance, 1, 1e-6);
    ck_assert_double_eq_tol(h.mutual_info, 0, 1e-6);
    ck_assert_double_eq_tol(h.mean_sample_entropy, log(4.0), 1e-6);
    ck_assert_int_eq(h.collapsed, 1);
    ml_health_free(&h);

    /* Same probabilities, dispatch spread evenly: balanced, still no specialisation. */
    batch_init(&t, 16, 4);
    for (int b = 0; b < 16; b++) {
        batch_uniform(&t, b);
        batch_dispatch(&t, b, b % 4);
    }
    ml_health_acc_reset(a);
    r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    ck_assert_double_eq_tol(h.load_balance, 1, 1e-6);
    ck_assert_double_eq_tol(h.mutual_info, 0, 1e-6);
    ck_assert_double_eq_tol(h.marginal_entropy_norm, 1, 1e-9);
    ck_assert_int_eq(h.collapsed, 0);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(mutual_info_partial) {
    /* Two samples, N=2: p = (0.9, 0.1) and (0.1, 0.9). Mean p is uniform, so
     * I = log 2 - H(0.9, 0.1). */
    batch t;
    batch_init(&t, 2, 2);
    t.prob[0] = 0.9f, t.prob[1] = 0.1f, t.prob[2] = 0.1f, t.prob[3] = 0.9f;
    batch_dispatch(&t, 0, 0);
    batch_dispatch(&t, 1, 1);
    ml_health_acc *a = ml_health_acc_new(2, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    double h09 = -(0.9 * log(0.9) + 0.1 * log(0.1));
    ck_assert_double_eq_tol(h.mean_sample_entropy, h09, 1e-6);
    ck_assert_double_eq_tol(h.mutual_info, log(2.0) - h09, 1e-6);
    ck_assert_double_eq_tol(h.load_balance, 1, 1e-6);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(nmi_bijective_and_independent) {
    /* Expert = a permutation of the label: NMI 1. */
    static const int perm[4] = {2, 0, 3, 1};
    batch t;
    batch_init(&t, 16, 4);
    for (int b = 0; b < 16; b++) {
        t.label[b] = b % 4;
        batch_onehot(&t, b, perm[b % 4]);
        batch_dispatch(&t, b, perm[b % 4]);
    }
    ml_health_acc *a = ml_health_acc_new(4, 4);
    ml_routing_record r = batch_record(&t, 1, 4);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_double_eq_tol(h.nmi_label, 1, 1e-9);
    ck_assert_int_eq(h.labelled, 16);
    ml_health_free(&h);
    ml_health_acc_free(a);

    /* Label and expert independent (every pair equally often): NMI 0. */
    batch_init(&t, 16, 4);
    for (int b = 0; b < 16; b++) {
        t.label[b] = b % 4;
        batch_onehot(&t, b, (b / 4) % 4);
        batch_dispatch(&t, b, (b / 4) % 4);
    }
    a = ml_health_acc_new(4, 4);
    r = batch_record(&t, 1, 4);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    ck_assert_double_eq_tol(h.nmi_label, 0, 1e-9);
    ml_health_free(&h);

    /* Top-1 is the argmax of the row, lowest index on ties; a batch without labels
     * adds nothing to NMI. */
    ml_health_acc_reset(a);
    batch_init(&t, 4, 4);
    for (int b = 0; b < 4; b++) {
        batch_uniform(&t, b);
        t.label[b] = b;
        batch_dispatch(&t, b, b);
    }
    r = batch_record(&t, 1, 4);
    ml_health_acc_add(a, &r, 0);
    r = batch_record(&t, 0, 4);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    ck_assert_int_eq(h.labelled, 4);
    ck_assert_double_eq_tol(h.nmi_label, 0, 1e-9); /* all top-1 = expert 0: H(E) = 0 */
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(nmi_partial_matches_formula) {
    /* 2 labels x 2 experts, counts [[3,1],[1,3]]: I = sum p log(p/(py pe)). */
    batch t;
    batch_init(&t, 8, 2);
    static const int y[8] = {0, 0, 0, 0, 1, 1, 1, 1}, e[8] = {0, 0, 0, 1, 1, 1, 1, 0};
    for (int b = 0; b < 8; b++) {
        t.label[b] = y[b];
        batch_onehot(&t, b, e[b]);
        batch_dispatch(&t, b, e[b]);
    }
    ml_health_acc *a = ml_health_acc_new(2, 2);
    ml_routing_record r = batch_record(&t, 1, 2);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    double mi = 2 * (3.0 / 8) * log((3.0 / 8) / 0.25) + 2 * (1.0 / 8) * log((1.0 / 8) / 0.25);
    ck_assert_double_eq_tol(h.nmi_label, 2 * mi / (2 * log(2.0)), 1e-9);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(resize_keeps_counts) {
    batch t;
    batch_init(&t, 4, 2);
    for (int b = 0; b < 4; b++) {
        batch_onehot(&t, b, b % 2);
        batch_dispatch(&t, b, b % 2);
        t.label[b] = b % 2;
    }
    ml_health_acc *a = ml_health_acc_new(2, 2);
    ml_routing_record r = batch_record(&t, 1, 2);
    ml_health_acc_add(a, &r, 0);
    ck_assert_int_eq(ml_health_acc_resize(a, 4), ML_OK);
    ck_assert_int_eq(ml_health_acc_num_experts(a), 4);
    ck_assert_int_eq(ml_health_acc_resize(a, 3), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "at least the current 4"));

    ml_health h;
    compute(a, &h);
    ck_assert_int_eq(h.num_experts, 4);
    ck_assert_double_eq_tol(h.utilisation[0], 0.5, EPS);
    ck_assert_double_eq_tol(h.utilisation[1], 0.5, EPS);
    ck_assert_double_eq_tol(h.utilisation[2], 0, EPS);
    ck_assert_int_eq(h.dead, 2);
    ck_assert_double_eq_tol(h.nmi_label, 1, 1e-9);
    ml_health_free(&h);

    /* A batch routed over the 4 experts after the growth. */
    batch_init(&t, 4, 4);
    for (int b = 0; b < 4; b++) {
        batch_onehot(&t, b, 2 + b % 2);
        batch_dispatch(&t, b, 2 + b % 2);
    }
    r = batch_record(&t, 0, 2);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    for (int e = 0; e < 4; e++) ck_assert_double_eq_tol(h.utilisation[e], 0.25, EPS);
    for (int e = 0; e < 4; e++) ck_assert_double_eq_tol(h.importance[e], 0.25, EPS);
    ck_assert_int_eq(h.samples, 8);
    ml_health_free(&h);

    /* A record wider than the accumulator grows it by itself. */
    batch_init(&t, 2, 6);
    batch_onehot(&t, 0, 5), batch_dispatch(&t, 0, 5);
    batch_onehot(&t, 1, 4), batch_dispatch(&t, 1, 4);
    r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ck_assert_int_eq(ml_health_acc_num_experts(a), 6);
    compute(a, &h);
    ck_assert_double_eq_tol(h.utilisation[0], 0.2, EPS);
    ck_assert_double_eq_tol(h.utilisation[5], 0.1, EPS);
    ck_assert_double_eq_tol(h.importance[5], 0.1, EPS);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(dropped_share) {
    batch t;
    batch_init(&t, 8, 2);
    for (int b = 0; b < 8; b++) {
        batch_onehot(&t, b, b % 2);
        if (b < 5) batch_dispatch(&t, b, b % 2); /* samples 5..7 dropped by capacity */
    }
    ml_health_acc *a = ml_health_acc_new(2, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 3);
    ml_health h;
    compute(a, &h);
    ck_assert_double_eq_tol(h.dropped_share, 3.0 / 8, EPS);
    ck_assert_double_eq_tol(h.utilisation[0], 3.0 / 5, EPS);
    ck_assert_double_eq_tol(h.importance[0], 0.5, EPS);
    ml_health_free(&h);
    ml_health_acc_add(a, &r, 1);
    compute(a, &h);
    ck_assert_double_eq_tol(h.dropped_share, 4.0 / 16, EPS);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(edge_cases) {
    /* One expert: entropy_norm 1 by definition, not collapsed. */
    batch t;
    batch_init(&t, 3, 1);
    for (int b = 0; b < 3; b++) batch_onehot(&t, b, 0), batch_dispatch(&t, b, 0);
    ml_health_acc *a = ml_health_acc_new(1, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_double_eq_tol(h.marginal_entropy_norm, 1, EPS);
    ck_assert_int_eq(h.collapsed, 0);
    ck_assert_double_eq_tol(h.load_balance, 1, 1e-6);
    ml_health_free(&h);

    /* Empty window: no crash, no slots -> undefined ratios are NaN. */
    ml_health_acc_reset(a);
    compute(a, &h);
    ck_assert_int_eq(h.samples, 0);
    ck_assert(isnan(h.cv));
    ck_assert_int_eq(h.dead, 1);
    ml_health_free(&h);
    ml_health_free(NULL);
    ml_health_acc_free(a);
    ml_health_acc_free(NULL);

    /* Bad arguments name what was expected. */
    ck_assert_ptr_null(ml_health_acc_new(0, 0));
    ck_assert_ptr_nonnull(strstr(ml_error(), "expected at least 1"));
    a = ml_health_acc_new(2, 0);
    ml_health_cfg cfg = ml_health_cfg_default();
    ck_assert_double_eq(cfg.active_threshold, 0.1);
    cfg.collapse_entropy = 2;
    ck_assert_int_eq(ml_health_compute(a, &cfg, &h), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "collapse_entropy=2"));
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

/* Every sample on the same k experts (the seed's "always same 2 experts"), with top-k
   dispatch: collapsed at N = 4/k = 2 (which the k = 1 rules miss: active 2 is not < 2 and
   H(u)/log N is exactly 0.5), N = 6/k = 2 and N = 8/k = 1; balanced top-k is not. */
static void topk_case(int N, int k, int collapse, ml_health *h) {
    batch t;
    batch_init(&t, 48, N);
    for (int b = 0; b < t.B; b++) {
        int first = collapse ? 0 : (b * k) % N; /* balanced: consecutive blocks of k */
        for (int e = 0; e < N; e++) t.prob[b * N + e] = 0.1f / (float)(N - k);
        for (int j = 0; j < k; j++) {
            int e = (first + j) % N;
            t.prob[b * N + e] = 0.9f / (float)k;
            batch_dispatch(&t, b, e);
        }
    }
    ml_health_acc *a = ml_health_acc_new(N, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    compute(a, h);
    ml_health_acc_free(a);
}

START_TEST(topk_collapse_flag) {
    static const int cases[][2] = {{4, 2}, {6, 2}, {8, 1}, {8, 2}, {3, 2}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int N = cases[i][0], k = cases[i][1];
        ml_health h;
        topk_case(N, k, 1, &h);
        ck_assert_double_eq_tol(h.slots_per_sample, k, EPS);
        ck_assert_double_eq_tol(h.effective_experts, k, 1e-9);   /* the top-k collapse endpoint */
        ck_assert_int_eq(h.active, k);
        ck_assert_double_eq_tol(h.cv, sqrt((double)N / k - 1), 1e-9);
        ck_assert_double_eq_tol(h.marginal_entropy_norm, log((double)k) / log((double)N), 1e-9);
        ck_assert_msg(h.collapsed, "N=%d k=%d: every sample on the same %d experts is not flagged", N, k, k);
        ck_assert_double_eq_tol(h.max_share, 1.0 / k, 1e-12);
        ck_assert_double_eq_tol(h.kl_uniform, log((double)N / k), 1e-9);
        ck_assert_double_eq_tol(h.effective_norm, (double)k / N, 1e-9);
        ml_health_free(&h);
        topk_case(N, k, 0, &h);
        ck_assert_double_eq_tol(h.effective_experts, N, 1e-9);
        ck_assert_int_eq(h.active, N);
        ck_assert_msg(!h.collapsed, "N=%d k=%d: balanced top-k flagged as collapsed", N, k);
        ck_assert_double_eq_tol(h.max_share, 1.0 / N, 1e-12);
        ck_assert_double_eq_tol(h.kl_uniform, 0, 1e-9);
        ck_assert_double_eq_tol(h.effective_norm, 1, 1e-9);
        ml_health_free(&h);
    }
    /* the N = 4/k = 2 collapse: the first two rules alone (margin 0) do not see it */
    ml_health h;
    topk_case(4, 2, 1, &h);
    ml_health_free(&h);
    batch t;
    batch_init(&t, 8, 4);
    for (int b = 0; b < 8; b++) {
        batch_uniform(&t, b);
        batch_dispatch(&t, b, 0);
        batch_dispatch(&t, b, 1);
    }
    ml_health_acc *a = ml_health_acc_new(4, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health_cfg c = ml_health_cfg_default();
    c.collapse_margin = 0;
    ck_assert(ml_health_compute(a, &c, &h) == ML_OK);
    ck_assert_int_eq(h.active, 2);
    ck_assert_double_eq_tol(h.marginal_entropy_norm, 0.5, 1e-12);
    ck_assert_int_eq(h.collapsed, 1); /* effective experts 2 <= k + 0 */
    ml_health_free(&h);
    c.collapse_margin = -1;
    ck_assert(ml_health_compute(a, &c, &h) == ML_ERR);
    ml_health_acc_free(a);
    /* dense routing (k = N) is never a load collapse */
    batch_init(&t, 8, 3);
    for (int b = 0; b < 8; b++) {
        batch_onehot(&t, b, 0);
        for (int e = 0; e < 3; e++) batch_dispatch(&t, b, e);
    }
    a = ml_health_acc_new(3, 0);
    r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    ck_assert_double_eq_tol(h.effective_experts, 3, 1e-9);
    ck_assert_int_eq(h.collapsed, 0);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

/* Rows that do not sum to exactly 1 (float drift, which the host accepts up to 1e-3) are
   normalised before they count: near one-hot routing, the mutual information equals the
   one of the normalised rows to 1e-12 (the mean alone normalised was 1.9e-4 off). */
/* A top-2 layer grown 2 -> 3 at the window's last batch is judged against its 2 experts:
   the new one could not have had its share yet. The same load with 3 experts from the
   window's start is a collapse onto two of them. */
START_TEST(growth_window_judged_by_start_experts) {
    batch t;
    ml_health_acc *a = ml_health_acc_new(2, 0);
    for (int rep = 0; rep < 2; rep++) {
        int N = rep ? 3 : 2;
        batch_init(&t, 16, N);
        for (int b = 0; b < 16; b++) {
            for (int e = 0; e < N; e++) t.prob[b * N + e] = e < 2 ? 0.5f : 0.0f;
            batch_dispatch(&t, b, 0);
            batch_dispatch(&t, b, 1);
        }
        ml_routing_record r = batch_record(&t, 0, 0);
        ml_health_acc_add(a, &r, 0);
    }
    ml_health h;
    compute(a, &h);
    ck_assert_int_eq(h.num_experts, 3);
    ck_assert_int_eq(h.window_experts, 2);
    ck_assert_int_eq(h.collapsed, 0);
    ml_health_free(&h);
    /* the window state survives a checkpoint */
    char *txt = ml_health_acc_to_text(a);
    ml_health_acc *b2 = ml_health_acc_new(3, 0);
    ck_assert(ml_health_acc_from_text(b2, txt) == ML_OK);
    compute(b2, &h);
    ck_assert_int_eq(h.window_experts, 2);
    ml_health_free(&h);
    free(txt);
    ml_health_acc_reset(a);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    compute(a, &h);
    ck_assert_int_eq(h.window_experts, 3);
    ck_assert_int_eq(h.collapsed, 1);
    ml_health_free(&h);
    ml_health_acc_free(a);
    ml_health_acc_free(b2);
}
END_TEST

START_TEST(mutual_info_rows_normalised) {
    batch t, u;
    batch_init(&t, 16, 4);
    batch_init(&u, 16, 4);
    for (int b = 0; b < 16; b++) {
        for (int e = 0; e < 4; e++) {
            float v = e == b % 4 ? 0.9995f : 1e-4f;
            t.prob[b * 4 + e] = v * (1.0f + 4e-4f); /* rows sum to 1.0004 */
            u.prob[b * 4 + e] = v;
        }
        batch_dispatch(&t, b, b % 4);
        batch_dispatch(&u, b, b % 4);
    }
    /* the reference: the exact normalised rows, in double */
    double hrow = 0, r0 = 0.9995 / 0.9998, r1 = 1e-4 / 0.9998;
    hrow = -(r0 * log(r0) + 3 * r1 * log(r1));
    double mi_ref = log(4.0) - hrow;
    ml_health_acc *a = ml_health_acc_new(4, 0);
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_msg(fabs(h.mutual_info - mi_ref) < 1e-6 * mi_ref, "mi %.10g, expected %.10g", h.mutual_info, mi_ref);
    ck_assert_double_eq_tol(h.mean_sample_entropy, hrow, 1e-6 * hrow);
    double isum = 0;
    for (int e = 0; e < 4; e++) isum += h.importance[e];
    ck_assert_double_eq_tol(isum, 1.0, 1e-12);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

START_TEST(active_threshold) {
    /* Utilisation (0.7, 0.28, 0.02): with threshold 0.1/N = 0.0333 expert 2 is inactive. */
    ml_health_acc *a = ml_health_acc_new(3, 0);
    batch t;
    batch_init(&t, 50, 3);
    for (int b = 0; b < 50; b++) {
        int e = b < 35 ? 0 : (b < 49 ? 1 : 2);
        batch_onehot(&t, b, e);
        batch_dispatch(&t, b, e);
    }
    ml_routing_record r = batch_record(&t, 0, 0);
    ml_health_acc_add(a, &r, 0);
    ml_health h;
    compute(a, &h);
    ck_assert_int_eq(h.active, 2);
    ck_assert_int_eq(h.dead, 0);
    ck_assert_int_eq(h.collapsed, 0); /* 2 >= 0.5·3, entropy_norm ≈ 0.62 */
    ml_health_cfg cfg = ml_health_cfg_default();
    cfg.collapse_entropy = 0.8;
    ml_health_free(&h);
    ck_assert_int_eq(ml_health_compute(a, &cfg, &h), ML_OK);
    ck_assert_int_eq(h.collapsed, 1);
    ml_health_free(&h);
    ml_health_acc_free(a);
}
END_TEST

static Suite *health_suite(void) {
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, balanced_and_specialised);
    tcase_add_test(tc, total_collapse);
    tcase_add_test(tc, uniform_undecided_router);
    tcase_add_test(tc, mutual_info_partial);
    tcase_add_test(tc, nmi_bijective_and_independent);
    tcase_add_test(tc, nmi_partial_matches_formula);
    tcase_add_test(tc, resize_keeps_counts);
    tcase_add_test(tc, dropped_share);
    tcase_add_test(tc, edge_cases);
    tcase_add_test(tc, active_threshold);
    tcase_add_test(tc, topk_collapse_flag);
    tcase_add_test(tc, mutual_info_rows_normalised);
    tcase_add_test(tc, growth_window_judged_by_start_experts);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(health_suite()); }
