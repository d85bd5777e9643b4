/* check_ops.c — dense kernels (finite differences), parameter blocks, optimizers, and the
 * finite-difference check itself (nn/gradcheck.h: kinks told from wrong gradients). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/gradcheck.h"
#include "nn/ops.h"
#include "nn/optim.h"
#include "nn/params.h"
#include "testutil.h"

enum { B = 5, IN = 7, OUT = 4 };

typedef struct lin_ctx { float x[B * IN], w[OUT * IN], b[OUT], c[B * OUT]; int act; } lin_ctx;

/* L = sum c * act(x W^T + b), act = none / relu / sigmoid */
static double lin_loss(void *p) {
    lin_ctx *k = p;
    float y[B * OUT];
    ml_linear_forward(y, k->x, k->w, k->b, B, IN, OUT);
    if (k->act == 1) ml_relu_forward(y, y, B * OUT);
    if (k->act == 2) ml_sigmoid_forward(y, y, B * OUT);
    double s = 0;
    for (int i = 0; i < B * OUT; i++) s += (double)k->c[i] * y[i];
    return s;
}

static void lin_grads(lin_ctx *k, float *dx, float *dw, float *db) {
    float y[B * OUT], dy[B * OUT];
    ml_linear_forward(y, k->x, k->w, k->b, B, IN, OUT);
    memcpy(dy, k->c, sizeof dy);
    if (k->act) {
        float pre[B * OUT], d2[B * OUT] = {0};
        memcpy(pre, y, sizeof pre);
        if (k->act == 1) {
            ml_relu_forward(y, pre, B * OUT);
            ml_relu_backward(d2, dy, y, B * OUT);
        } else {
            ml_sigmoid_forward(y, pre, B * OUT);
            ml_sigmoid_backward(d2, dy, y, B * OUT);
        }
        memcpy(dy, d2, sizeof dy);
    }
    memset(dx, 0, sizeof(float) * B * IN);
    memset(dw, 0, sizeof(float) * OUT * IN);
    memset(db, 0, sizeof(float) * OUT);
    ml_linear_backward(dx, dw, db, dy, k->x, k->w, B, IN, OUT);
}

START_TEST(linear_gradients) {
    for (int act = 0; act < 3; act++) {
        lin_ctx k;
        tu_fill(k.x, B * IN, 1, -1, 1);
        tu_fill(k.w, OUT * IN, 2, -1, 1);
        tu_fill(k.b, OUT, 3, -0.5f, 0.5f);
        tu_fill(k.c, B * OUT, 4, -1, 1);
        k.act = act;
        float dx[B * IN], dw[OUT * IN], db[OUT];
        lin_grads(&k, dx, dw, db);
        ck_assert_double_lt(tu_gradcheck(lin_loss, &k, k.x, dx, B * IN, 100, 1e-3), TU_GC_TOL);
        ck_assert_double_lt(tu_gradcheck(lin_loss, &k, k.w, dw, OUT * IN, 100, 1e-3), TU_GC_TOL);
        ck_assert_double_lt(tu_gradcheck(lin_loss, &k, k.b, db, OUT, 100, 1e-3), TU_GC_TOL);
    }
}
END_TEST

START_TEST(linear_forward_by_hand) {
    float x[2] = {1, 2}, w[4] = {1, 0, 3, -1}, b[2] = {0.5f, 0}, y[2];
    ml_linear_forward(y, x, w, b, 1, 2, 2);
    ck_assert_float_eq(y[0], 1.5f);
    ck_assert_float_eq(y[1], 1.0f);
    float dx[2] = {10, 10}, dw[4] = {0}, db[2] = {0}, dy[2] = {1, 2};
    ml_linear_backward(dx, dw, db, dy, x, w, 1, 2, 2);
    ck_assert_float_eq(dx[0], 10 + 1 + 6); /* accumulates */
    ck_assert_float_eq(dx[1], 10 + 0 - 2);
    ck_assert_float_eq(dw[2], 2);
    ck_assert_float_eq(db[1], 2);
}
END_TEST

/* ml_linear_backward_set overwrites dw and db with exactly what zeroing them and accumulating
   gives, and still accumulates dx; for 1 row (the experts' usual) up to 70 (BLAS's other kernels) */
START_TEST(linear_backward_set_equals_zeroed) {
    enum { MAXB = 70, I = 64, O = 128 };
    float *x = malloc(sizeof(float) * MAXB * I), *w = malloc(sizeof(float) * O * I), *dy = malloc(sizeof(float) * MAXB * O);
    float *dx1 = malloc(sizeof(float) * MAXB * I), *dx2 = malloc(sizeof(float) * MAXB * I);
    float *dw1 = malloc(sizeof(float) * O * I), *dw2 = malloc(sizeof(float) * O * I), db1[O], db2[O];
    ck_assert(x && w && dy && dx1 && dx2 && dw1 && dw2);
    tu_fill(x, MAXB * I, 5, -1, 1);
    tu_fill(w, O * I, 6, -1, 1);
    tu_fill(dy, MAXB * O, 7, -1, 1);
    const int rows[] = {1, 2, 3, 5, 17, 70};
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        const int n = rows[r];
        tu_fill(dx1, (size_t)n * I, 8, -1, 1);
        memcpy(dx2, dx1, sizeof(float) * n * I);
        memset(dw1, 0, sizeof(float) * O * I);
        memset(db1, 0, sizeof db1);
        tu_fill(dw2, O * I, 9, -1, 1); /* garbage, overwritten */
        tu_fill(db2, O, 10, -1, 1);
        ml_linear_backward(dx1, dw1, db1, dy, x, w, n, I, O);
        ml_linear_backward_set(dx2, dw2, db2, dy, x, w, n, I, O);
        ck_assert_mem_eq(dx1, dx2, sizeof(float) * n * I);
        for (int i = 0; i < O * I; i++) ck_assert_float_eq(dw1[i], dw2[i]);
        for (int i = 0; i < O; i++) ck_assert_float_eq(db1[i], db2[i]);
    }
    free(x), free(w), free(dy), free(dx1), free(dx2), free(dw1), free(dw2);
}
END_TEST

/* x, with every 7th element a zero of either sign: OpenBLAS's sums and the row kernel's must
   agree on the sign of a zero too */
static void fill_with_zeros(float *x, size_t n, unsigned seed) {
    tu_fill(x, n, seed, -1, 1);
    for (size_t i = seed % 7; i < n; i += 7) x[i] = i % 2 ? -0.0f : 0.0f;
}

/* sum |g| in double in 8 interleaved partial sums, element i in sum i mod 8, added
   ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)): the MoE layer's grad_mag (model/moe.c) */
static double sum_abs8(const float *g, size_t n) {
    double a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += fabsf(g[i + l]);
    for (int l = 0; i < n; i++, l++) a[l] += fabsf(g[i]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* ml_linear_backward_set_pf gives ml_linear_backward_set's bits: in the row kernel's shapes
   (1 to 8 rows, In a multiple of 16 up to 256; on this machine when
   ml_linear_backward_rows_max() says so) and in those it leaves to BLAS, dx not zero,
   with and without prefetch streams (which change no result); where the row kernel runs it
   gives dw's |dw| sum, sum_abs8's bits, and nowhere else */
START_TEST(linear_backward_set_pf_same_bits) {
    static const int shapes[][2] = {{64, 128}, {128, 64}, {16, 3}, {32, 256}, {256, 32}, {48, 80}, {20, 16}, {512, 8}};
    enum { MAXB = 12, MAXIO = 512 * 32 };
    float *dy = malloc(sizeof(float) * MAXB * 256), *x = malloc(sizeof(float) * MAXB * 512);
    float *w = malloc(sizeof(float) * MAXIO), *dx1 = malloc(sizeof(float) * MAXB * 512);
    float *dx2 = malloc(sizeof(float) * MAXB * 512), *dw1 = malloc(sizeof(float) * MAXIO);
    float *dw2 = malloc(sizeof(float) * MAXIO), *other = malloc(sizeof(float) * MAXIO), db1[256], db2[256];
    ck_assert(dy && x && w && dx1 && dx2 && dw1 && dw2 && other);
#if defined(__AVX512F__)
    if (!ml_linear_backward_rows_max())
        fprintf(stderr, "check_ops: note: the row kernel of ml_linear_backward_set_pf is off here (OpenBLAS adds "
                        "in another order): only its fallback is tested\n");
#endif
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int In = shapes[k][0], Out = shapes[k][1];
        for (int n = 1; n <= MAXB; n++)
            for (int pf = 0; pf <= 1; pf++) {
                const unsigned seed = (unsigned)(100 * k + 2 * n + pf);
                fill_with_zeros(dy, (size_t)n * Out, seed);
                fill_with_zeros(x, (size_t)n * In, seed + 1);
                fill_with_zeros(w, (size_t)Out * In, seed + 2);
                fill_with_zeros(dx1, (size_t)n * In, seed + 3);
                if (pf) /* magnitudes from 2^-30 to 2^30: sums in double round, so their order shows */
                    for (int i = 0; i < n * Out || i < n * In; i++) {
                        if (i < n * Out) dy[i] = ldexpf(dy[i], (int)((unsigned)i * 37u % 61u) - 30);
                        if (i < n * In) x[i] = ldexpf(x[i], (int)((unsigned)i * 53u % 61u) - 30);
                    }
                memcpy(dx2, dx1, sizeof(float) * n * In);
                tu_fill(dw2, (size_t)Out * In, seed + 4, -1, 1); /* garbage, overwritten */
                tu_fill(db2, (size_t)Out, seed + 5, -1, 1);
                ml_pf rd, wr;
                ml_pf_init(&rd, 0), ml_pf_init(&wr, 1);
                ml_pf_add(&rd, w, sizeof(float) * Out * In), ml_pf_add(&rd, other, sizeof(float) * MAXIO);
                ml_pf_add(&wr, dw2, sizeof(float) * Out * In), ml_pf_add(&wr, other, sizeof(float) * MAXIO);
                ml_linear_backward_set(dx1, dw1, db1, dy, x, w, n, In, Out);
                double sum = -1;
                const int got = ml_linear_backward_set_pf(dx2, dw2, db2, dy, x, w, n, In, Out, pf ? &rd : NULL,
                                                          pf ? &wr : NULL, n % 3 ? &sum : NULL);
                const int rows = ml_linear_backward_rows_max() >= n && In % 16 == 0 && In <= 256;
                ck_assert_int_eq(got, rows && n % 3);
                if (got) {
                    const double want = sum_abs8(dw1, (size_t)Out * In);
                    ck_assert_msg(!memcmp(&sum, &want, sizeof sum), "|dw| sum %.17g, expected %.17g, In %d Out %d rows %d",
                                  sum, want, In, Out, n);
                }
                ck_assert_msg(!memcmp(dx1, dx2, sizeof(float) * n * In), "dx, In %d Out %d rows %d", In, Out, n);
                ck_assert_msg(!memcmp(dw1, dw2, sizeof(float) * Out * In), "dw, In %d Out %d rows %d", In, Out, n);
                ck_assert_msg(!memcmp(db1, db2, sizeof(float) * Out), "db, In %d Out %d rows %d", In, Out, n);
            }
    }
    free(dy), free(x), free(w), free(dx1), free(dx2), free(dw1), free(dw2), free(other);
}
END_TEST

/* the gradients of ml_linear_backward_set_pf, by finite differences, in the row kernel's
   shape (3 rows, In 32) */
enum { PB = 3, PIN = 32, POUT = 5 };
typedef struct pf_ctx { float x[PB * PIN], w[POUT * PIN], b[POUT], c[PB * POUT]; } pf_ctx;

static double pf_loss(void *p) {
    pf_ctx *k = p;
    float y[PB * POUT];
    ml_linear_forward(y, k->x, k->w, k->b, PB, PIN, POUT);
    double s = 0;
    for (int i = 0; i < PB * POUT; i++) s += (double)k->c[i] * y[i];
    return s;
}

START_TEST(linear_backward_set_pf_gradients) {
    pf_ctx k;
    tu_fill(k.x, PB * PIN, 11, -1, 1);
    tu_fill(k.w, POUT * PIN, 12, -1, 1);
    tu_fill(k.b, POUT, 13, -0.5f, 0.5f);
    tu_fill(k.c, PB * POUT, 14, -1, 1);
    float dx[PB * PIN] = {0}, dw[POUT * PIN], db[POUT], other[64];
    ml_pf rd, wr;
    ml_pf_init(&rd, 0), ml_pf_init(&wr, 1);
    ml_pf_add(&rd, other, sizeof other), ml_pf_add(&wr, other, sizeof other);
    ml_linear_backward_set_pf(dx, dw, db, k.c, k.x, k.w, PB, PIN, POUT, &rd, &wr, NULL);
    ck_assert_double_lt(tu_gradcheck(pf_loss, &k, k.x, dx, PB * PIN, 100, 1e-3), TU_GC_TOL);
    ck_assert_double_lt(tu_gradcheck(pf_loss, &k, k.w, dw, POUT * PIN, 100, 1e-3), TU_GC_TOL);
    ck_assert_double_lt(tu_gradcheck(pf_loss, &k, k.b, db, POUT, 100, 1e-3), TU_GC_TOL);
}
END_TEST

/* a prefetch stream goes through its spans in order, a 64-byte line at a time, and stops at
   the end of the last; spans past ML_PF_SPANS are dropped */
START_TEST(pf_stream_walks_spans) {
    static char a[200], b[64], c[8];
    ml_pf s;
    ml_pf_init(&s, 1);
    ml_pf_add(&s, a, sizeof a), ml_pf_add(&s, NULL, 64), ml_pf_add(&s, b, sizeof b), ml_pf_add(&s, c, 0);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.write, 1);
    ml_pf_advance(&s, 3);
    ck_assert_int_eq(s.i, 0);
    ck_assert_uint_eq(s.at, 192);
    ml_pf_advance(&s, 1); /* the last, partial line of a */
    ck_assert_int_eq(s.i, 1);
    ck_assert_uint_eq(s.at, 0);
    ml_pf_advance(&s, 5);
    ck_assert_int_eq(s.i, 2);
    ml_pf_advance(&s, 5); /* past the end: nothing */
    ck_assert_int_eq(s.i, 2);
    for (int i = 0; i < ML_PF_SPANS + 2; i++) ml_pf_add(&s, b, sizeof b);
    ck_assert_int_eq(s.n, ML_PF_SPANS);
}
END_TEST

typedef struct mse_ctx { float a[12], t[12]; } mse_ctx;
static double mse_loss(void *p) {
    mse_ctx *k = p;
    return ml_mse_forward(k->a, k->t, 12);
}

START_TEST(mse_gradient) {
    mse_ctx k;
    tu_fill(k.a, 12, 5, 0, 1);
    tu_fill(k.t, 12, 6, 0, 1);
    float da[12] = {0};
    ml_mse_backward(da, k.a, k.t, 12, 1.0f);
    ck_assert_double_lt(tu_gradcheck(mse_loss, &k, k.a, da, 12, 12, 1e-3), TU_GC_TOL);
    float a[2] = {1, 3}, t[2] = {0, 1};
    ck_assert_double_eq_tol(ml_mse_forward(a, t, 2), 2.5, 1e-12);
}
END_TEST

/* ml_mse_forward against a long double reference over 3 blocks and a part, over more than 256
   blocks (two groups) and under one block, with the same bits on 1 and 2 threads; and a sum
   whose value depends on the lanes */
START_TEST(mse_forward_blocked) {
    const size_t ns[3] = {3 * 16384 + 5, 257 * 16384 + 3, 7};
    const int saved = omp_get_max_threads();
    for (int c = 0; c < 3; c++) {
        const size_t n = ns[c];
        float *a = malloc(n * sizeof *a), *t = malloc(n * sizeof *t);
        ck_assert(a && t);
        tu_fill(a, n, 21, -2, 2);
        tu_fill(t, n, 22, -1, 1);
        long double r = 0;
        for (size_t i = 0; i < n; i++) r += ((long double)a[i] - t[i]) * ((long double)a[i] - t[i]);
        r /= (long double)n;
        double got[2];
        for (int nt = 1; nt <= 2; nt++) {
            omp_set_num_threads(nt);
            got[nt - 1] = ml_mse_forward(a, t, n);
            omp_set_num_threads(saved);
        }
        ck_assert(memcmp(&got[0], &got[1], sizeof got[0]) == 0);
        ck_assert_double_eq_tol(got[0], (double)r, 1e-12 * (double)r);
        free(a), free(t);
    }
    /* the lanes: 1e8^2 = 1e16 (spacing 2 in double) in lane 0 with 1 (element 8) stays 1e16;
       lane 1 holds 1 + 1 (elements 1 and 9); in lane order the sum is 1e16 + 2, where a
       sequential sum (or 16 lanes) loses every 1 and gives 1e16 */
    float a[17] = {0}, t[17] = {0};
    a[0] = 1e8f;
    a[1] = a[8] = a[9] = 1.0f;
    ck_assert(ml_mse_forward(a, t, 17) == (1e16 + 2.0) / 17.0);
}
END_TEST

/* ml_mse_backward_set: the same bits as zeroing da and ml_mse_backward, over garbage, on 1
   and 2 threads, for a length of 3 blocks and a part (and a short one, 1 block) */
START_TEST(mse_backward_set) {
    const size_t ns[2] = {3 * 16384 + 5, 11};
    const int saved = omp_get_max_threads();
    for (int c = 0; c < 2; c++) {
        const size_t n = ns[c];
        float *a = malloc(n * sizeof *a), *t = malloc(n * sizeof *t), *d0 = malloc(n * sizeof *d0),
              *d1 = malloc(n * sizeof *d1);
        ck_assert(a && t && d0 && d1);
        tu_fill(a, n, 7, 0, 1);
        tu_fill(t, n, 8, 0, 1);
        memcpy(t, a, 5 * sizeof *t); /* exact zeros in the gradient */
        memset(d0, 0, n * sizeof *d0);
        ml_mse_backward(d0, a, t, n, 0.75f);
        for (int nt = 1; nt <= 2; nt++) {
            tu_fill(d1, n, 9 + nt, -3, 3);
            omp_set_num_threads(nt);
            ml_mse_backward_set(d1, a, t, n, 0.75f);
            omp_set_num_threads(saved);
            ck_assert(memcmp(d0, d1, n * sizeof *d0) == 0);
        }
        free(a), free(t), free(d0), free(d1);
    }
}
END_TEST

START_TEST(params_growth_keeps_values) {
    ml_params p;
    ml_params_init(&p, 1);
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    int s1[2] = {3, 4}, s2[1] = {5};
    int a = ml_params_declare(&p, "a", 2, s1, ML_INIT_UNIFORM_FANIN, 0, 4);
    int b = ml_params_declare(&p, "b", 1, s2, ML_INIT_CONST, 0.5f, 0);
    ck_assert_int_ge(a, 0);
    ck_assert_int_eq(ml_params_declare(&p, "a", 1, s2, ML_INIT_ZEROS, 0, 0), ML_ERR);
    ck_assert_int_eq(ml_params_commit(&p, &rng), ML_OK);
    ck_assert_uint_eq(ml_params_data(&p, a) - p.data, 0);
    ck_assert_uint_eq((ml_params_data(&p, b) - p.data) % 16, 0);
    float old[12];
    memcpy(old, ml_params_data(&p, a), sizeof old);
    for (int i = 0; i < 12; i++) {
        ck_assert_float_le(fabsf(old[i]), 0.5f);
        ml_params_grad(&p, a)[i] = 1;
        p.m[p.t[a].off + i] = 7;
    }
    ck_assert_int_eq(ml_params_grow(&p, a, 5), ML_OK);
    int s3[1] = {2};
    int c = ml_params_declare(&p, "c", 1, s3, ML_INIT_ZEROS, 0, 0);
    ck_assert_int_eq(ml_params_commit(&p, &rng), ML_OK);
    ck_assert_int_eq(memcmp(old, ml_params_data(&p, a), sizeof old), 0);
    for (int i = 0; i < 12; i++) ck_assert_float_eq(p.m[p.t[a].off + i], 7);
    for (int i = 12; i < 20; i++) {
        ck_assert_float_eq(p.m[p.t[a].off + i], 0);
        ck_assert_float_ne(ml_params_data(&p, a)[i], 0); /* new rows initialised */
    }
    ck_assert_float_eq(ml_params_data(&p, b)[4], 0.5f);
    ck_assert_float_eq(ml_params_data(&p, c)[1], 0);
    ck_assert_int_eq(ml_params_grow(&p, a, 2), ML_ERR); /* no shrinking */
    ml_params_free(&p);
}
END_TEST

START_TEST(adam_matches_formula) {
    ml_params p;
    ml_params_init(&p, 1);
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    int s[1] = {1};
    int h = ml_params_declare(&p, "w", 1, s, ML_INIT_CONST, 1.0f, 0);
    ml_params_commit(&p, &rng);
    ml_optim o = {.kind = ML_OPTIM_ADAM, .lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    double w = 1, m = 0, v = 0;
    for (int t = 1; t <= 3; t++) {
        double g = 0.5 * t;
        ml_params_grad(&p, h)[0] = (float)g;
        ml_optim_step(&o, &p);
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        w -= 0.1 * (m / (1 - pow(0.9, t))) / (sqrt(v / (1 - pow(0.999, t))) + 1e-8);
        ck_assert_double_eq_tol(ml_params_data(&p, h)[0], w, 1e-5);
    }
    /* a tensor added later starts its own bias correction */
    int h2 = ml_params_declare(&p, "w2", 1, s, ML_INIT_CONST, 1.0f, 0);
    ml_params_commit(&p, &rng);
    ml_params_zero_grad(&p);
    ml_params_grad(&p, h2)[0] = 2.0f;
    ml_optim_step(&o, &p);
    ck_assert_double_eq_tol(ml_params_data(&p, h2)[0], 1 - 0.1, 1e-5); /* first Adam step moves by lr */
    ml_params_free(&p);
}
END_TEST

START_TEST(sgd_momentum) {
    ml_params p;
    ml_params_init(&p, 1);
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    int s[1] = {1};
    int h = ml_params_declare(&p, "w", 1, s, ML_INIT_ZEROS, 0, 0);
    ml_params_commit(&p, &rng);
    ml_optim o = {.kind = ML_OPTIM_SGD, .lr = 0.1f, .momentum = 0.5f};
    ml_params_grad(&p, h)[0] = 1;
    ml_optim_step(&o, &p);
    ml_optim_step(&o, &p);
    ck_assert_double_eq_tol(ml_params_data(&p, h)[0], -0.1 - 0.15, 1e-6);
    ml_params_free(&p);
}
END_TEST

START_TEST(rng_is_deterministic) {
    ml_rng a, b;
    ml_rng_seed(&a, 42);
    ml_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(ml_rng_u64(&a), ml_rng_u64(&b));
    double s = 0, s2 = 0;
    for (int i = 0; i < 20000; i++) {
        double z = ml_rng_normal(&a);
        s += z;
        s2 += z * z;
    }
    ck_assert_double_lt(fabs(s / 20000), 0.03);
    ck_assert_double_lt(fabs(s2 / 20000 - 1), 0.05);
}
END_TEST

/* ------------------------------------------------- the gradient check: kinks (gradcheck.h) */

/* f(x) = sum_i g_i x_i + q x_i^2 / 2 + c_i relu(x_i - k_i) + w sin(3 x_i), in double from the
 * float x: a kink at k_i, placed by the test at a distance d_i from the base point x_i. */
enum { KN = 8 };
typedef struct kink_ctx { float x[KN]; double g[KN], c[KN], k[KN], q, w; } kink_ctx;

static double kink_f(void *p) {
    const kink_ctx *k = p;
    double s = 0;
    for (int i = 0; i < KN; i++) {
        const double x = k->x[i];
        s += k->g[i] * x + 0.5 * k->q * x * x + k->c[i] * fmax(0, x - k->k[i]) + k->w * sin(3 * x);
    }
    return s;
}

/* The base points, slopes g (|g| >= 0.5, so no gradient is near 0) and jumps of slope c
 * (1.5, the sign of g: neither piece's slope is near 0); the kink of entry i at x_i + d_i
 * with d_i = (i odd ? -1 : 1) * dist * (1 + i / 8): left of the base point for odd i (x_i on
 * the right piece, whose slope has c), right of it for even i. */
static void kink_open(kink_ctx *k, double dist, double w) {
    tu_fill(k->x, KN, 71, -0.5f, 0.5f);
    for (int i = 0; i < KN; i++) {
        k->g[i] = (i % 3 ? 1 : -1) * (0.5 + 0.1 * i);
        k->c[i] = copysign(1.5, k->g[i]);
        k->k[i] = (double)k->x[i] + (i % 2 ? -1 : 1) * dist * (1 + i / 8.0);
    }
    k->q = 0.5;
    k->w = w;
}

/* the derivative of the piece x lies on (right: 1), or of the other piece (right: 0) */
static void kink_grad(const kink_ctx *k, float *a, int right) {
    for (int i = 0; i < KN; i++) {
        const double x = k->x[i];
        const int on_right = x > k->k[i];
        a[i] = (float)(k->g[i] + k->q * x + 3 * k->w * cos(3 * x) + (on_right == right ? k->c[i] : 0));
    }
}

static ml_gc_result kink_check(kink_ctx *k, const float *a, int kinks, int *ok) {
    ml_gc_policy p = ml_gc_default();
    p.kinks = kinks;
    ml_gc_result r;
    memset(&r, 0xff, sizeof r);
    *ok = ml_gradcheck(&p, kink_f, k, k->x, KN, a, ml_gc_scale(a, KN), &r);
    return r;
}

/* A kink within 1e-5 to 1.9e-5 of each base point, below the smallest step (eps/64 = 1.6e-4):
 * every central difference straddles it and is off; the one-sided quotients on the kink-free
 * side give the gradient, so with kinks on every entry is a kink and the tensor passes. */
START_TEST(gradcheck_kink_accepted) {
    kink_ctx k;
    kink_open(&k, 1e-5, 0);
    float a[KN];
    kink_grad(&k, a, 1);
    int ok;
    ml_gc_result r = kink_check(&k, a, 0, &ok);
    ck_assert_msg(!ok && r.outliers == KN && r.kinks == 0, "without kinks: %d outliers of %d", r.outliers, r.checked);
    r = kink_check(&k, a, 1, &ok);
    ck_assert_msg(ok && r.checked == KN && r.kinks == KN && r.outliers == 0 && r.worst == 0,
                  "with kinks: ok %d, %d kinks, %d outliers of %d, worst %g", ok, r.kinks, r.outliers, r.checked, r.worst);
    /* the same with curvature on both sides (a sine over the quadratic) */
    kink_open(&k, 1e-5, 0.3);
    kink_grad(&k, a, 1);
    r = kink_check(&k, a, 1, &ok);
    ck_assert_msg(ok && r.kinks == KN && r.outliers == 0, "curved: %d kinks, %d outliers", r.kinks, r.outliers);
}
END_TEST

/* Wrong gradients next to the same kinks: scaled by 1.1, sign flipped, or the slope of the
 * other piece where the kink (1e-3 away) lies between the steps: outliers, never kinks. */
START_TEST(gradcheck_kink_wrong_rejected) {
    kink_ctx k;
    float a[KN];
    int ok;
    for (int w = 0; w < 2; w++) {
        kink_open(&k, 1e-5, 0.3 * w);
        for (int plant = 0; plant < 2; plant++) {
            kink_grad(&k, a, 1);
            for (int i = 0; i < KN; i++) a[i] *= plant ? -1.0f : 1.1f;
            ml_gc_result r = kink_check(&k, a, 1, &ok);
            ck_assert_msg(!ok && r.outliers == KN && r.kinks == 0, "%s: %d outliers, %d kinks of %d",
                          plant ? "sign flipped" : "scaled by 1.1", r.outliers, r.kinks, r.checked);
        }
        kink_open(&k, 1e-3, 0.3 * w);
        kink_grad(&k, a, 0);
        ml_gc_result r = kink_check(&k, a, 1, &ok);
        ck_assert_msg(!ok && r.outliers == KN && r.kinks == 0, "the other piece's slope: %d outliers, %d kinks of %d",
                      r.outliers, r.kinks, r.checked);
        /* a value the kink's side meets at one step by chance: its one-sided quotient at
           eps/4 (every kink 1e-3 away: the quotients at eps and eps/16 differ from it, and
           so do the central differences) */
        kink_open(&k, 1e-3, 0.3 * w);
        for (int i = 0; i < KN; i++) {
            const float x0 = k.x[i];
            k.k[i] = (double)x0 + (i % 2 ? -1e-3 : 1e-3);
            const double f0 = kink_f(&k);
            k.x[i] = (float)(x0 + (i % 2 ? -1 : 1) * ml_gc_default().eps / 4);
            const double xs = k.x[i], fs = kink_f(&k);
            k.x[i] = x0;
            a[i] = (float)((fs - f0) / (xs - x0));
        }
        r = kink_check(&k, a, 1, &ok);
        ck_assert_msg(!ok && r.outliers == KN && r.kinks == 0, "a chance match at one step: %d outliers, %d kinks of %d",
                      r.outliers, r.kinks, r.checked);
        /* and the right one there passes without a kink (the smaller steps miss it) */
        kink_grad(&k, a, 1);
        r = kink_check(&k, a, 1, &ok);
        ck_assert_msg(ok && r.outliers == 0 && r.kinks == 0, "1e-3 away: %d outliers, %d kinks", r.outliers, r.kinks);
    }
    /* The limit of resolution: the other piece's slope with the kink 1e-5 away, closer than
     * any step, is a one-sided derivative at every step the check can take; it is accepted,
     * but as a kink, which callers bound (gradcheck.c) */
    kink_open(&k, 1e-5, 0);
    kink_grad(&k, a, 0);
    ml_gc_result r = kink_check(&k, a, 1, &ok);
    ck_assert_msg(r.kinks == KN && r.outliers == 0, "unresolvable: %d kinks, %d outliers", r.kinks, r.outliers);
}
END_TEST

/* A smooth f (no kink within any step): kinks on or off give the same result, bit for bit,
 * right or planted wrong. */
START_TEST(gradcheck_smooth_unaffected) {
    kink_ctx k;
    kink_open(&k, 1, 0.3); /* kinks 1 to 1.9 away: beyond eps */
    float a[KN];
    for (int plant = 0; plant < 2; plant++) {
        kink_grad(&k, a, 1);
        if (plant) a[3] *= 1.1f, a[6] = -a[6];
        int ok0, ok1;
        ml_gc_result r0 = kink_check(&k, a, 0, &ok0), r1 = kink_check(&k, a, 1, &ok1);
        ck_assert(ok0 == ok1 && ok0 == !plant);
        ck_assert_int_eq(r1.kinks, 0);
        ck_assert_int_eq(r0.kinks, 0);
        ck_assert_int_eq(r1.outliers, plant ? 2 : 0);
        ck_assert(!memcmp(&r0, &r1, sizeof r0));
    }
    ck_assert_int_eq(ml_gc_default().kinks, 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops");
    TCase *t = tcase_create("ops");
    tcase_add_test(t, linear_gradients);
    tcase_add_test(t, linear_forward_by_hand);
    tcase_add_test(t, linear_backward_set_equals_zeroed);
    tcase_add_test(t, linear_backward_set_pf_same_bits);
    tcase_add_test(t, linear_backward_set_pf_gradients);
    tcase_add_test(t, pf_stream_walks_spans);
    tcase_add_test(t, mse_gradient);
    tcase_add_test(t, mse_backward_set);
    tcase_add_test(t, mse_forward_blocked);
    tcase_add_test(t, params_growth_keeps_values);
    tcase_add_test(t, adam_matches_formula);
    tcase_add_test(t, sgd_momentum);
    tcase_add_test(t, rng_is_deterministic);
    tcase_add_test(t, gradcheck_kink_accepted);
    tcase_add_test(t, gradcheck_kink_wrong_rejected);
    tcase_add_test(t, gradcheck_smooth_unaffected);
    suite_add_tcase(s, t);
    return tu_run(s);
}
