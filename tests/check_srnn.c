/* check_srnn.c — the SRNN U-Net autoencoder net: tensor shapes and parameter counts against
 * PyTorch's model (bench/torch_srnn_ref.py), finite-difference gradients of every tensor,
 * batch norm's train/eval modes, determinism. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "model/net.h"
#include "nn/params.h"
#include "testutil.h"

typedef struct fixture {
    ml_params P, S;
    void *net;
    int C, H, W, D, B;
    float *x, *z, *xhat, *dxhat, *dz;
    float *c, *d; /* loss weights: L = sum c xhat + sum d z */
} fixture;

static void fx_open(fixture *f, int C, int H, int W, const int *ch, int D, int B, uint64_t seed) {
    memset(f, 0, sizeof *f);
    ml_params_init(&f->P, 1);
    ml_params_init(&f->S, 0);
    ml_net_shape s = {.C = C, .H = H, .W = W, .latent = D, .channels = ch, .n_channels = 4};
    f->net = ml_net_srnn.create(&s, &f->P, &f->S);
    ck_assert_msg(f->net != NULL, "%s", ml_error());
    ml_rng rng;
    ml_rng_seed(&rng, seed);
    ck_assert_int_eq(ml_params_commit(&f->P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&f->S, &rng), ML_OK);
    ck_assert_int_eq(ml_net_srnn.reserve(f->net, B), ML_OK);
    f->C = C, f->H = H, f->W = W, f->D = D, f->B = B;
    const size_t nx = (size_t)B * C * H * W, nz = (size_t)B * D;
    f->x = ml_alloc_floats(nx);
    f->xhat = ml_alloc_floats(nx);
    f->dxhat = ml_alloc_floats(nx);
    f->c = ml_alloc_floats(nx);
    f->z = ml_alloc_floats(nz);
    f->dz = ml_alloc_floats(nz);
    f->d = ml_alloc_floats(nz);
    ck_assert(f->x && f->xhat && f->dxhat && f->c && f->z && f->dz && f->d);
    tu_fill(f->x, nx, 1, 0, 1);
    tu_fill(f->c, nx, 2, -1, 1);
    tu_fill(f->d, nz, 3, -1, 1);
}

static void fx_close(fixture *f) {
    ml_net_srnn.free(f->net);
    ml_params_free(&f->P);
    ml_params_free(&f->S);
    free(f->x);
    free(f->xhat);
    free(f->dxhat);
    free(f->c);
    free(f->z);
    free(f->dz);
    free(f->d);
}

static void fx_forward(fixture *f, int training) {
    ck_assert_int_eq(ml_net_srnn.encode(f->net, f->x, f->B, training, f->z), ML_OK);
    ck_assert_int_eq(ml_net_srnn.decode(f->net, f->z, f->B, training, f->xhat), ML_OK);
}

/* Gradients of L = sum c xhat + sum d z, with z passed straight to the decoder. */
static void fx_backward(fixture *f) {
    const size_t nx = (size_t)f->B * f->C * f->H * f->W, nz = (size_t)f->B * f->D;
    memcpy(f->dxhat, f->c, nx * sizeof(float));
    memcpy(f->dz, f->d, nz * sizeof(float));
    ml_params_zero_grad(&f->P);
    ck_assert_int_eq(ml_net_srnn.decode_backward(f->net, f->dxhat, f->dz), ML_OK);
    ck_assert_int_eq(ml_net_srnn.encode_backward(f->net, f->dz), ML_OK);
}

static double fx_loss(void *ctx) {
    fixture *f = ctx;
    fx_forward(f, 1);
    const size_t nx = (size_t)f->B * f->C * f->H * f->W, nz = (size_t)f->B * f->D;
    double L = 0;
    for (size_t i = 0; i < nx; i++) L += (double)f->c[i] * f->xhat[i];
    for (size_t i = 0; i < nz; i++) L += (double)f->d[i] * f->z[i];
    return L;
}

static const int def_ch[4] = {32, 64, 128, 256};

static void expect_shape(const ml_params *p, const char *name, int ndim, int a, int b, int c, int d) {
    int h = ml_params_find(p, name);
    ck_assert_msg(h >= 0, "tensor %s missing", name);
    int want[4] = {a, b, c, d};
    ck_assert_int_eq(p->t[h].ndim, ndim);
    for (int i = 0; i < ndim; i++) ck_assert_int_eq(p->t[h].shape[i], want[i]);
}

/* PyTorch's Encoder + Decoder of torch_srnn_ref.py (sum of p.numel()):
 *   32x32x1 (h = w = 2):
 *     enc convs 320 + 18496 + 73856 + 295168, bn 2 (32+64+128+256) = 960, fc 1024*128+128
 *       = 520000; dec fc 128*1024+1024 = 132096, up 1048704 + 262208 + 65568 + 32800,
 *       out 32*9+1 = 289 -> 1541665; total 2061665
 *   64x64x3 (h = w = 4): conv1 3*32*9+32 = 896, enc fc 4096*128+128 = 524416 -> enc 913792;
 *     dec fc 128*4096+4096 = 528384, out 3*32*9+3 = 867 -> dec 1938531; total 2852323
 *   running stats (buffers): 2 (32+64+128+256) = 960 at both sizes. */
START_TEST(test_shapes_and_counts) {
    const struct { int C, H, W; size_t params; } cases[2] = {{1, 32, 32, 2061665}, {3, 64, 64, 2852323}};
    for (int k = 0; k < 2; k++) {
        fixture f;
        fx_open(&f, cases[k].C, cases[k].H, cases[k].W, def_ch, 128, 2, 7);
        ck_assert_uint_eq(ml_params_numel(&f.P), cases[k].params);
        ck_assert_uint_eq(ml_params_numel(&f.S), 960);
        const int h = cases[k].H / 16, w = cases[k].W / 16;
        expect_shape(&f.P, "enc.conv1.w", 4, 32, cases[k].C, 3, 3);
        expect_shape(&f.P, "enc.conv4.b", 1, 256, 0, 0, 0);
        expect_shape(&f.P, "enc.bn2.gamma", 1, 64, 0, 0, 0);
        expect_shape(&f.S, "enc.bn3.running_var", 1, 128, 0, 0, 0);
        expect_shape(&f.P, "enc.fc.w", 2, 128, 256 * h * w, 0, 0);
        expect_shape(&f.P, "dec.fc.w", 2, 256 * h * w, 128, 0, 0);
        expect_shape(&f.P, "dec.up1.w", 4, 512, 128, 4, 4);
        expect_shape(&f.P, "dec.up2.w", 4, 256, 64, 4, 4);
        expect_shape(&f.P, "dec.up3.w", 4, 128, 32, 4, 4);
        expect_shape(&f.P, "dec.up4.w", 4, 64, 32, 4, 4);
        expect_shape(&f.P, "dec.out.w", 4, cases[k].C, 32, 3, 3);
        /* init: gamma 1, beta 0, running var 1, convT bound 1/sqrt(O k k) */
        const float *g = ml_params_data(&f.P, ml_params_find(&f.P, "enc.bn1.gamma"));
        const float *bt = ml_params_data(&f.P, ml_params_find(&f.P, "enc.bn1.beta"));
        const float *rv = ml_params_data(&f.S, ml_params_find(&f.S, "enc.bn1.running_var"));
        ck_assert(g[0] == 1.0f && bt[0] == 0.0f && rv[5] == 1.0f);
        int hu = ml_params_find(&f.P, "dec.up1.w");
        const float *uw = ml_params_data(&f.P, hu);
        float mx = 0;
        for (size_t i = 0; i < f.P.t[hu].n; i++) mx = fmaxf(mx, fabsf(uw[i]));
        ck_assert(mx <= 1.0f / sqrtf(128 * 16) && mx > 0.9f / sqrtf(128 * 16));
        fx_forward(&f, 1);
        const size_t nx = (size_t)f.B * f.C * f.H * f.W;
        for (size_t i = 0; i < nx; i++) ck_assert(f.xhat[i] > 0 && f.xhat[i] < 1);
        for (int i = 0; i < f.B * f.D; i++) ck_assert(isfinite(f.z[i]));
        fx_backward(&f);
        ck_assert(ml_net_srnn.flops_per_sample(f.net) > 0);
        fx_close(&f);
    }
}
END_TEST

START_TEST(test_bad_shapes) {
    ml_params P, S;
    ml_params_init(&P, 1);
    ml_params_init(&S, 0);
    ml_net_shape s = {.C = 1, .H = 24, .W = 32, .latent = 8, .channels = def_ch, .n_channels = 4};
    ck_assert_ptr_null(ml_net_srnn.create(&s, &P, &S));
    ck_assert_ptr_nonnull(strstr(ml_error(), "multiples of 16"));
    s.H = 32;
    s.n_channels = 3;
    ck_assert_ptr_null(ml_net_srnn.create(&s, &P, &S));
    ck_assert_ptr_nonnull(strstr(ml_error(), "channels"));
    ml_params_free(&P);
    ml_params_free(&S);
}
END_TEST

/* ml_gc_fn: the fixture's loss (BN in training mode recomputes the batch statistics). */
static double fx_loss_fn(void *ctx) { return fx_loss(ctx); }

/* Every tensor, a few elements each, on a tiny net; BN in training mode, so each evaluation
 * recomputes the batch statistics as the analytic gradient assumes. The encoder's conv
 * biases feed batch norm, which removes any per-channel shift: their gradient must be 0.
 * _i 0: 16 x 16 images (every up block on the general path); 1: 32 x 32, where the last up
 * block is the Winograd form and computes the output conv's input gradient in its gather
 * (ml_convt2d_backward_cat_next) */
START_TEST(test_gradients) {
    static const int ch[4] = {2, 3, 4, 5};
    fixture f;
    fx_open(&f, 1, 16 << _i, 16 << _i, ch, 6, 3, 11);
    fx_forward(&f, 1);
    fx_backward(&f);
    int bad_all = 0, checked = 0;
    /* the policy's scale: the largest gradient of the check, over every tensor */
    const double scale = ml_gc_scale(f.P.grad, f.P.total);
    for (int t = 0; t < f.P.count; t++) {
        const ml_tensor *T = &f.P.t[t];
        const float *g = ml_params_grad(&f.P, t);
        double gmax = 0;
        for (size_t i = 0; i < T->n; i++) gmax = fmax(gmax, fabs(g[i]));
        if (!strncmp(T->name, "enc.conv", 8) && strstr(T->name, ".b")) {
            ck_assert_msg(gmax < 1e-4, "%s: gradient %g through batch norm, expected 0", T->name, gmax);
            continue;
        }
        /* a transposed conv's bias shifts every pixel of a channel right before a ReLU, so
         * some pixel crosses its kink at any usable step; its gradient is the same
         * bias_backward as dec.out.b's (checked here) and check_conv covers it */
        if (!strncmp(T->name, "dec.up", 6) && strstr(T->name, ".b")) continue;
        ck_assert_msg(gmax > 0, "%s has a zero gradient", T->name);
        /* the one policy (nn/gradcheck.h), with its allowance for a deep ReLU net in float:
           entries next to a ReLU kink, told from wrong gradients by their one-sided
           differences (policy kinks), and one entry of eight besides (curvature or float
           noise at every step: enc.conv1.w has one in the -O2 build, 0.0149, its one-sided
           quotients far apart at every step); at most a quarter of a tensor's entries off
           in all, and 1 in 25 over the check, kinks included */
        ml_gc_policy pol = ml_gc_default();
        pol.max_entries = T->n < 8 ? (int)T->n : 8;
        pol.max_outliers = pol.max_entries >= 4;
        pol.kinks = 1;
        ml_gc_result r;
        int ok = ml_gradcheck(&pol, fx_loss_fn, &f, ml_params_data(&f.P, t), T->n, g, scale, &r);
        ck_assert_msg(ok, "%s: %d of %d points off, worst relative error %g (at %zu: %g vs %g)", T->name, r.outliers,
                      r.checked, r.worst, r.index, r.analytic, r.numeric);
        ck_assert_msg((r.outliers + r.kinks) * 4 <= r.checked, "%s: %d of %d points off, %d of them at a kink", T->name,
                      r.outliers + r.kinks, r.checked, r.kinks);
        bad_all += r.outliers + r.kinks;
        checked += r.checked;
    }
    ck_assert_msg(bad_all * 25 <= checked, "%d of %d points off", bad_all, checked);
    fx_close(&f);
}
END_TEST

START_TEST(test_eval_mode) {
    static const int ch[4] = {4, 4, 8, 8};
    fixture f;
    fx_open(&f, 2, 32, 16, ch, 5, 4, 3);
    const size_t nx = (size_t)f.B * f.C * f.H * f.W, per = nx / f.B;
    float *train = ml_alloc_floats(nx), *ev = ml_alloc_floats(nx), *one = ml_alloc_floats(per);
    const int hm = ml_params_find(&f.S, "enc.bn2.running_mean");
    const float *rm = ml_params_data(&f.S, hm);
    ck_assert(rm[0] == 0.0f);
    fx_forward(&f, 1); /* updates the running statistics */
    memcpy(train, f.xhat, nx * sizeof(float));
    ck_assert(rm[0] != 0.0f);
    float rm0 = rm[0];
    fx_forward(&f, 0);
    memcpy(ev, f.xhat, nx * sizeof(float));
    ck_assert(rm[0] == rm0); /* eval leaves them alone */
    double diff = 0;
    for (size_t i = 0; i < nx; i++) diff = fmax(diff, fabs(train[i] - ev[i]));
    ck_assert(diff > 1e-4);
    /* eval output of a sample does not depend on the rest of the batch */
    float z1[8];
    ck_assert_int_eq(ml_net_srnn.encode(f.net, f.x + 2 * per, 1, 0, z1), ML_OK);
    ck_assert_int_eq(ml_net_srnn.decode(f.net, z1, 1, 0, one), ML_OK);
    for (size_t i = 0; i < per; i++) ck_assert(fabsf(one[i] - ev[2 * per + i]) < 1e-5f);
    /* backward after an eval forward is refused */
    ck_assert_int_eq(ml_net_srnn.decode_backward(f.net, f.c, f.dz), ML_ERR);
    free(train);
    free(ev);
    free(one);
    fx_close(&f);
}
END_TEST

START_TEST(test_determinism) {
    fixture a, b;
    fx_open(&a, 3, 32, 32, def_ch, 16, 5, 42);
    fx_open(&b, 3, 32, 32, def_ch, 16, 5, 42);
    fx_forward(&a, 1);
    fx_backward(&a);
    fx_forward(&b, 1);
    fx_backward(&b);
    const size_t nx = (size_t)a.B * a.C * a.H * a.W;
    ck_assert(memcmp(a.xhat, b.xhat, nx * sizeof(float)) == 0);
    ck_assert(memcmp(a.z, b.z, (size_t)a.B * a.D * sizeof(float)) == 0);
    ck_assert(memcmp(a.dz, b.dz, (size_t)a.B * a.D * sizeof(float)) == 0);
    ck_assert_uint_eq(a.P.total, b.P.total);
    ck_assert(memcmp(a.P.grad, b.P.grad, a.P.total * sizeof(float)) == 0);
    ck_assert(memcmp(a.S.data, b.S.data, a.S.total * sizeof(float)) == 0);
    fx_close(&a);
    fx_close(&b);
}
END_TEST

static Suite *srnn_suite(void) {
    Suite *s = suite_create("srnn");
    TCase *tc = tcase_create("net");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_shapes_and_counts);
    tcase_add_test(tc, test_bad_shapes);
    tcase_add_loop_test(tc, test_gradients, 0, 2);
    tcase_add_test(tc, test_eval_mode);
    tcase_add_test(tc, test_determinism);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(srnn_suite()); }
