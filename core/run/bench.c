/* bench.c — training-step benchmarks: the SRNN model of ../shared/bench/torch_srnn_ref.py,
 * the camouflage segmentation model (model.type cod) of bench/torch_cod_ref.py and the
 * demo's MLP MoE autoencoder of bench/torch_mlp_moe_ref.py, each the same work as its
 * PyTorch peer. */
#include "run/bench.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/crash.h"
#include "model/model.h"
#include "nn/optim.h"
#include "nn/ops.h"
#include "plugin/loader.h"
#include "plugin/loss_host.h"
#include "plugin/options.h"

typedef enum { BENCH_SRNN, BENCH_COD, BENCH_MLP } bench_model;

typedef struct bench_opts {
    bench_model model; /* --model */
    int H, W, C, B, E, K, S, T;
    int image_set;     /* --image given */
    ml_optim_idle idle; /* --idle-experts (mlp) */
} bench_opts;

static int parse(int argc, char **argv, bench_opts *o) {
    *o = (bench_opts){BENCH_SRNN, 64, 64, 3, 0, 0, 2, 0, 1, 0, ML_OPTIM_IDLE_DENSE};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *dst = NULL;
        if (!strcmp(a, "--model")) {
            if (!v || (strcmp(v, "srnn") && strcmp(v, "cod") && strcmp(v, "mlp")))
                return ml_errorf("bench: --model expects srnn, cod or mlp, got '%s'", v ? v : "");
            o->model = !strcmp(v, "cod") ? BENCH_COD : !strcmp(v, "mlp") ? BENCH_MLP : BENCH_SRNN;
            i++;
            continue;
        }
        if (!strcmp(a, "--idle-experts")) {
            int idle = v ? ml_optim_idle_from_name(v) : -1;
            if (idle < 0) return ml_errorf("bench: --idle-experts expects dense or lazy, got '%s'", v ? v : "");
            o->idle = (ml_optim_idle)idle;
            i++;
            continue;
        }
        if (!strcmp(a, "--image")) {
            if (!v || sscanf(v, "%dx%dx%d", &o->H, &o->W, &o->C) != 3 || o->H < 16 || o->W < 16 || o->C < 1 ||
                o->H % 16 || o->W % 16)
                return ml_errorf("bench: --image expects HxWxC with H and W multiples of 16, got '%s'", v ? v : "");
            o->image_set = 1;
            i++;
            continue;
        }
        if (!strcmp(a, "--batch")) dst = &o->B;
        else if (!strcmp(a, "--experts")) dst = &o->E;
        else if (!strcmp(a, "--top-k")) dst = &o->K;
        else if (!strcmp(a, "--steps")) dst = &o->S;
        else if (!strcmp(a, "--threads")) dst = &o->T;
        else return ml_errorf("bench: unknown option '%s'", a);
        char *end;
        long x = v ? strtol(v, &end, 10) : 0;
        if (!v || *end || x < 1 || x > 1000000) return ml_errorf("bench: %s expects a positive integer, got '%s'", a, v ? v : "");
        *dst = (int)x;
        i++;
    }
    /* the defaults of each model's peer: srnn batch 64 with 16 experts, cod batch 16 with 6,
       mlp (the demo's model, Fashion-MNIST's 28x28x1 images) batch 64 with 4 */
    const int cod = o->model == BENCH_COD, mlp = o->model == BENCH_MLP;
    if (mlp && o->image_set) return ml_errorf("bench: --model mlp takes 28x28x1 images (the demo's); no --image");
    if (mlp) o->H = o->W = 28, o->C = 1;
    if (!o->B) o->B = cod ? 16 : 64;
    if (!o->E) o->E = cod ? 6 : mlp ? 4 : 16;
    if (!o->S) o->S = mlp ? 200 : 10;
    if (o->K > o->E) return ml_errorf("bench: --top-k %d exceeds --experts %d", o->K, o->E);
    if (cod && o->B < 2) return ml_errorf("bench: --model cod needs --batch >= 2 (batch norm in training)");
    return ML_OK;
}

/* Best of several timed runs of a large square sgemm, GFLOP/s. */
static double sgemm_peak(void) {
    const int n = 1536;
    float *a = ml_alloc_floats((size_t)n * n), *b = ml_alloc_floats((size_t)n * n), *c = ml_alloc_floats((size_t)n * n);
    if (!a || !b || !c) return 0;
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 0.5f;
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = ml_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double g = 2.0 * n * n * n / (ml_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

static int bench_srnn(bench_opts o) {
    const ml_plugin *router = ml_plugin_load(ML_PLUGIN_ROUTER, "saturation");
    const ml_plugin *lb = router ? ml_plugin_load(ML_PLUGIN_LOSS, "load_balance") : NULL;
    if (!router || !lb) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
        return ML_EXIT_RUNTIME;
    }
    ml_optval ropt[ML_MAX_OPTIONS];
    if (ml_option_defaults(router, ropt)) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
        return ML_EXIT_RUNTIME;
    }
    for (int i = 0; i < router->num_options; i++)
        if (!strcmp(router->options[i].name, "k")) ropt[i].i = o.K, ropt[i].f = o.K;
    static const int channels[4] = {32, 64, 128, 256};
    ml_model_cfg mc = {.type = "srnn", .C = o.C, .H = o.H, .W = o.W, .latent = 128, .hidden = 256,
                       .expert_hidden = 256, .experts = o.E, .moe_layers = 1, .channels = channels,
                       .n_channels = 4, .router = router, .router_opt = ropt, .seed = 0};
    ml_model *m = ml_model_new(&mc, NULL);
    ml_loss_inst loss;
    memset(&loss, 0, sizeof loss);
    if (!m || ml_loss_inst_init(&loss, lb, NULL, 0, 1, o.E, &m->S, "moe0.loss0.")) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
        ml_loss_inst_release(&loss);
        ml_model_free(m);
        return ML_EXIT_RUNTIME;
    }
    ml_optim opt = {.kind = ML_OPTIM_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    size_t n = (size_t)o.B * o.C * o.H * o.W;
    float *x = ml_alloc_floats(n);
    int32_t *ids = ml_calloc((size_t)o.B, sizeof(int32_t));
    ml_rng rng;
    ml_rng_seed(&rng, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)ml_rng_uniform(&rng);
    for (int b = 0; b < o.B; b++) ids[b] = b;
    double t0 = 0;
    int rc = 0;
    for (int s = 0; s < o.S + 2 && !rc; s++) {
        if (s == 2) t0 = ml_now(); /* two warm-up steps, as the PyTorch peer */
        ml_params_zero_grad(&m->P);
        rc = ml_model_forward(m, x, NULL, o.B, 1, ids, NULL, 0);
        ml_routing_record rec;
        ml_moe_record(m->moe[0], &rec);
        double v;
        if (!rc) rc = ml_loss_inst_eval(&loss, &rec, 0.1f, m->moe[0]->dlogits, m->moe[0]->dprob, m->moe[0]->dgate_loss, &v);
        if (!rc) rc = ml_model_backward(m);
        if (!rc) ml_optim_step(&opt, &m->P);
    }
    double dt = ml_now() - t0;
    if (rc) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
    } else {
        /* useful work: the nets' convolutions and linears, plus k experts per sample (fwd + 2x bwd) */
        double D = 128, Hh = 256;
        double flops = ml_model_net_flops(m) + 3.0 * o.K * 2.0 * (2 * D * Hh) + 3.0 * 2.0 * D * o.E;
        double ips = o.S * o.B / dt;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double peak = sgemm_peak();
        printf("srnn_step image=%dx%dx%d batch=%d experts=%d threads=%d img_per_s=%.1f ms_per_step=%.1f "
               "gflops=%.1f sgemm_peak_gflops=%.1f peak_rss_mb=%.0f\n",
               o.H, o.W, o.C, o.B, o.E, o.T, ips, dt / o.S * 1e3, flops * ips / 1e9, peak, ru.ru_maxrss / 1024.0);
    }
    ml_loss_inst_release(&loss);
    ml_model_free(m);
    free(x);
    free(ids);
    return rc ? ML_EXIT_RUNTIME : 0;
}

/* the benches' softmax_topk router at top-k with its defaults otherwise, and the load-balance
   loss; 1 (after one line on stderr) when a plugin cannot be loaded */
static int topk_router(int k, const ml_plugin **router, const ml_plugin **lbp, ml_optval *ropt) {
    *router = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    *lbp = *router ? ml_plugin_load(ML_PLUGIN_LOSS, "load_balance") : NULL;
    if (!*router || !*lbp || ml_option_defaults(*router, ropt)) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
        return 1;
    }
    for (int i = 0; i < (*router)->num_options; i++)
        if (!strcmp((*router)->options[i].name, "k")) ropt[i].i = k, ropt[i].f = k;
    return 0;
}

/*
 * The cod step of bench/torch_cod_ref.py: model.type cod at its defaults (channels 32, 64,
 * 128, 256; experts texture, frequency, edge, contrast, texture, frequency, ...), a
 * softmax_topk router per scale (top-k, renormalised gates), the task loss BCE + soft IoU
 * against a random binary mask, the Switch load-balance loss at 0.01 on each of the four
 * MoE layers, backward, Adam. Random images and masks, two warm-up steps.
 */
static int bench_cod(bench_opts o) {
    enum { L = 4 };
    static const char *const kinds[] = {"texture", "frequency", "edge", "contrast", "texture", "frequency"};
    static const int channels[L] = {32, 64, 128, 256};
    const ml_plugin *router, *lbp;
    ml_optval ropt[ML_MAX_OPTIONS];
    if (topk_router(o.K, &router, &lbp, ropt)) return ML_EXIT_RUNTIME;
    ml_model_cfg mc = {.type = "cod", .C = o.C, .H = o.H, .W = o.W, .experts = o.E, .channels = channels,
                       .n_channels = L, .router = router, .router_opt = ropt, .seed = 0, .expert_kinds = kinds,
                       .n_kinds = 6, .w_bce = 1, .w_iou = 1, .w_dice = 0};
    ml_model *m = ml_model_new(&mc, NULL);
    ml_loss_inst lb[L];
    memset(lb, 0, sizeof lb);
    int rc = m ? ML_OK : ML_ERR;
    for (int l = 0; l < L && !rc; l++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "moe%d.loss0.", l + 1);
        rc = ml_loss_inst_init(&lb[l], lbp, NULL, l, L, o.E, &m->S, prefix);
    }
    const size_t n = (size_t)o.B * o.C * o.H * o.W, nm = (size_t)o.B * o.H * o.W;
    float *x = ml_alloc_floats(n), *mask = ml_alloc_floats(nm);
    int32_t *ids = ml_calloc((size_t)o.B, sizeof(int32_t));
    if (!rc && (!x || !mask || !ids)) rc = ml_errorf("out of memory");
    ml_optim opt = {.kind = ML_OPTIM_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    double t0 = 0;
    if (!rc) {
        ml_rng rng;
        ml_rng_seed(&rng, 0);
        for (size_t i = 0; i < n; i++) x[i] = (float)ml_rng_uniform(&rng);
        for (size_t i = 0; i < nm; i++) mask[i] = ml_rng_uniform(&rng) < 0.5 ? 1.0f : 0.0f;
        for (int b = 0; b < o.B; b++) ids[b] = b;
    }
    for (int s = 0; s < o.S + 2 && !rc; s++) {
        if (s == 2) t0 = ml_now(); /* two warm-up steps, as the PyTorch peer */
        ml_params_zero_grad(&m->P);
        rc = ml_model_forward(m, x, mask, o.B, 1, ids, NULL, 0);
        for (int l = 0; l < L && !rc; l++) {
            ml_routing_record rec;
            ml_moe_record(m->moe[l], &rec);
            double v;
            rc = ml_loss_inst_eval(&lb[l], &rec, 0.01f, m->moe[l]->dlogits, m->moe[l]->dprob, m->moe[l]->dgate_loss, &v);
        }
        if (!rc) rc = ml_model_backward(m);
        if (!rc) ml_optim_step(&opt, &m->P);
    }
    double dt = ml_now() - t0;
    if (rc) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
    } else {
        /* useful work per image: the net's convolutions, and the experts the last step's
           routing chose (each expert kind counts its own convolutions, fwd + 2x bwd) */
        double flops = ml_model_net_flops(m) * o.B;
        for (int l = 0; l < L; l++) {
            const ml_moe *q = m->moe[l];
            for (int e = 0; e < q->N; e++)
                flops += (q->estart[e + 1] - q->estart[e]) * q->kind->flops(q->kst, q, e);
        }
        double ips = o.S * o.B / dt;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("cod_step image=%dx%dx%d batch=%d experts=%d top_k=%d threads=%d img_per_s=%.1f ms_per_step=%.1f "
               "gflops=%.1f peak_rss_mb=%.0f\n",
               o.H, o.W, o.C, o.B, o.E, o.K, o.T, ips, dt / o.S * 1e3, flops / o.B * ips / 1e9, ru.ru_maxrss / 1024.0);
    }
    for (int l = 0; l < L; l++) ml_loss_inst_release(&lb[l]);
    ml_model_free(m);
    free(x);
    free(mask);
    free(ids);
    return rc ? ML_EXIT_RUNTIME : 0;
}

/*
 * The demo's model (configs/demo.yaml) of bench/torch_mlp_moe_ref.py: model.type mlp, 28x28x1
 * images, encoder 784 -> 256 -> 64, one MoE layer on the 64-float latent (E residual-MLP
 * experts 64 -> 128 -> 64, a softmax_topk router, top-k), decoder 64 -> 256 -> 784 ->
 * sigmoid; MSE + 0.01 x the load-balance loss, backward, Adam (lr 1e-3) with idle experts
 * dense or lazy. The step is the training loop's: gradients zeroed where the last step left
 * them, the non-finite check. Random images in [0, 1), a fresh batch each step from a pool of
 * 16; two warm-up steps. Also reports the mean number of experts a step used.
 */
static int bench_mlp(bench_opts o) {
    enum { POOL = 16 };
    const ml_plugin *router, *lbp;
    ml_optval ropt[ML_MAX_OPTIONS];
    if (topk_router(o.K, &router, &lbp, ropt)) return ML_EXIT_RUNTIME;
    ml_model_cfg mc = {.type = "mlp", .C = 1, .H = 28, .W = 28, .latent = 64, .hidden = 256, .expert_hidden = 128,
                       .experts = o.E, .moe_layers = 1, .router = router, .router_opt = ropt, .seed = 0};
    ml_model *m = ml_model_new(&mc, NULL);
    ml_loss_inst lb;
    memset(&lb, 0, sizeof lb);
    int rc = m ? ml_loss_inst_init(&lb, lbp, NULL, 0, 1, o.E, &m->S, "moe1.loss0.") : ML_ERR;
    const size_t per = (size_t)o.B * 28 * 28;
    float *x = rc ? NULL : ml_alloc_floats(per * POOL);
    int32_t *ids = rc ? NULL : ml_calloc((size_t)o.B, sizeof(int32_t));
    if (!rc && (!x || !ids)) rc = ML_ERR;
    ml_optim opt = {.kind = ML_OPTIM_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .idle = o.idle};
    double t0 = 0, used = 0;
    if (!rc) {
        ml_rng rng;
        ml_rng_seed(&rng, 0);
        for (size_t i = 0; i < per * POOL; i++) x[i] = (float)ml_rng_uniform(&rng);
        for (int b = 0; b < o.B; b++) ids[b] = b;
    }
    for (int s = 0; s < o.S + 2 && !rc; s++) {
        if (s == 2) t0 = ml_now(); /* two warm-up steps, as the PyTorch peer */
        ml_params_zero_grad_used(&m->P);
        rc = ml_model_forward(m, x + per * (size_t)(s % POOL), NULL, o.B, 1, ids, NULL, 0);
        ml_routing_record rec;
        ml_moe_record(m->moe[0], &rec);
        double v;
        if (!rc) rc = ml_loss_inst_eval(&lb, &rec, 0.01f, m->moe[0]->dlogits, m->moe[0]->dprob, m->moe[0]->dgate_loss, &v);
        if (!rc) rc = ml_model_backward(m);
        if (!rc && !ml_params_grad_finite_used(&m->P)) rc = ml_errorf("non-finite gradient");
        if (!rc) ml_optim_step(&opt, &m->P);
        if (!rc && s >= 2)
            for (int e = 0; e < m->moe[0]->N; e++) used += m->moe[0]->estart[e + 1] > m->moe[0]->estart[e];
    }
    double dt = ml_now() - t0;
    if (rc) {
        fprintf(stderr, "moelab: bench: %s\n", ml_error());
    } else {
        double ips = o.S * o.B / dt;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("mlp_step batch=%d experts=%d top_k=%d idle=%s threads=%d img_per_s=%.1f ms_per_step=%.3f "
               "experts_used=%.1f peak_rss_mb=%.0f\n",
               o.B, o.E, o.K, ml_optim_idle_name(o.idle), o.T, ips, dt / o.S * 1e3, used / o.S, ru.ru_maxrss / 1024.0);
    }
    ml_loss_inst_release(&lb);
    ml_model_free(m);
    free(x);
    free(ids);
    return rc ? ML_EXIT_RUNTIME : 0;
}

int ml_bench_main(int argc, char **argv) {
    bench_opts o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "moelab: %s\n", ml_error());
        return ML_EXIT_USAGE;
    }
    openblas_set_num_threads(o.T);
    omp_set_num_threads(o.T);
    return o.model == BENCH_COD ? bench_cod(o) : o.model == BENCH_MLP ? bench_mlp(o) : bench_srnn(o);
}
