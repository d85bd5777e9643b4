/* check_optim.c — the optimizers against torch's formulas (Adam, AdamW, SGD, one step by
 * hand), bitwise the same updates as the single loop over the block moelab had before
 * groups, parameter groups (first match wins, lr and weight decay per group, inherited
 * values), frozen tensors left exactly as they are, idle experts under optim.idle_experts: lazy
 * (left exactly, the rest as dense), and the glob matcher against fnmatch(3). */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/glob.h"
#include "run/experiment.h"
#include "nn/optim.h"
#include "nn/params.h"
#include "testutil.h"

/* A block of tensors with the given names and sizes, values and gradients from tu_fill. */
static void make_block(ml_params *p, int n, const char *const *names, const int *sizes, unsigned seed) {
    ml_params_init(p, 1);
    for (int i = 0; i < n; i++) ck_assert_int_eq(ml_params_declare(p, names[i], 1, &sizes[i], ML_INIT_ZEROS, 0, 0), i);
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    ck_assert_int_eq(ml_params_commit(p, &rng), ML_OK);
    for (int i = 0; i < n; i++) {
        tu_fill(ml_params_data(p, i), p->t[i].n, seed + (unsigned)i, -1, 1);
        tu_fill(ml_params_grad(p, i), p->t[i].n, seed + 100 + (unsigned)i, -0.5f, 0.5f);
    }
}

/* ---------------------------------------------------- one step, by torch's formulas */

/* torch.optim.Adam(weight_decay=wd), step t from moments m, v: returns the new p */
static double torch_adam(double p, double g, double *m, double *v, int t, double lr, double b1, double b2, double eps,
                         double wd, int decoupled) {
    if (decoupled) p *= 1 - lr * wd; /* AdamW: param.mul_(1 - lr * weight_decay) */
    else g += wd * p;                /* Adam: grad = grad.add(param, alpha=weight_decay) */
    *m = b1 * *m + (1 - b1) * g;
    *v = b2 * *v + (1 - b2) * g * g;
    double step_size = lr / (1 - pow(b1, t));
    double denom = sqrt(*v) / sqrt(1 - pow(b2, t)) + eps;
    return p - step_size * *m / denom;
}

static void adam_steps_by_hand(ml_optim_kind kind) {
    const char *names[] = {"w"};
    int sizes[] = {5};
    ml_params p;
    make_block(&p, 1, names, sizes, 7);
    ml_optim o = {.kind = kind, .lr = 0.01f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f, .weight_decay = 0.3f};
    double w[5], m[5] = {0}, v[5] = {0};
    for (int i = 0; i < 5; i++) w[i] = p.data[i];
    for (int t = 1; t <= 3; t++) {
        float *g = ml_params_grad(&p, 0);
        for (int i = 0; i < 5; i++) {
            g[i] = (float)(0.2 * (i - 2) + 0.1 * t);
            w[i] = torch_adam(w[i], g[i], &m[i], &v[i], t, 0.01, 0.8, 0.99, 1e-6, 0.3, kind == ML_OPTIM_ADAMW);
        }
        ml_optim_step(&o, &p);
        for (int i = 0; i < 5; i++) ck_assert_double_eq_tol(p.data[i], w[i], 2e-6);
        for (int i = 0; i < 5; i++) ck_assert_double_eq_tol(p.m[i], m[i], 1e-6);
    }
    ck_assert_int_eq(p.t[0].step, 3);
    ml_params_free(&p);
}

START_TEST(adam_one_step_by_hand) { adam_steps_by_hand(ML_OPTIM_ADAM); }
END_TEST

START_TEST(adamw_one_step_by_hand) { adam_steps_by_hand(ML_OPTIM_ADAMW); }
END_TEST

/* AdamW and Adam differ exactly by where the decay goes: with weight_decay 0 they agree
   bit for bit, with decay they do not. */
START_TEST(adamw_is_adam_without_decay) {
    const char *names[] = {"a", "b"};
    int sizes[] = {33, 70000};
    ml_params p, q;
    make_block(&p, 2, names, sizes, 3);
    make_block(&q, 2, names, sizes, 3);
    ml_optim a = {.kind = ML_OPTIM_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    ml_optim w = a;
    w.kind = ML_OPTIM_ADAMW;
    ml_optim_step(&a, &p);
    ml_optim_step(&w, &q);
    ck_assert_int_eq(memcmp(p.data, q.data, p.total * sizeof(float)), 0);
    a.weight_decay = w.weight_decay = 0.5f;
    ml_optim_step(&a, &p);
    ml_optim_step(&w, &q);
    ck_assert_int_ne(memcmp(p.data, q.data, p.total * sizeof(float)), 0);
    ml_params_free(&p);
    ml_params_free(&q);
}
END_TEST

/* torch.optim.SGD(momentum=mu, weight_decay=wd): g += wd p; buf = mu buf + g (buf = g at
   the first step, which is the same from buf = 0); p -= lr buf */
START_TEST(sgd_one_step_by_hand) {
    const char *names[] = {"w"};
    int sizes[] = {4};
    ml_params p;
    make_block(&p, 1, names, sizes, 11);
    ml_optim o = {.kind = ML_OPTIM_SGD, .lr = 0.1f, .weight_decay = 0.01f, .momentum = 0.9f};
    double w[4], buf[4] = {0};
    for (int i = 0; i < 4; i++) w[i] = p.data[i];
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < 4; i++) {
            double g = p.grad[i] + 0.01 * w[i];
            buf[i] = 0.9 * buf[i] + g;
            w[i] -= 0.1 * buf[i];
        }
        ml_optim_step(&o, &p);
        for (int i = 0; i < 4; i++) ck_assert_double_eq_tol(p.data[i], w[i], 1e-6);
    }
    ck_assert_int_eq(p.t[0].step, 0); /* SGD keeps no bias-correction count */
    ml_params_free(&p);
}
END_TEST

/* -------------------------------------------- bitwise what the single loop computed */

/* ml_optim_step as it was before per-tensor settings (one loop over the block). */
static void old_step(ml_optim *o, ml_params *p) {
    float *w = p->data, *g = p->grad, *m = p->m, *v = p->v;
    const float wd = o->weight_decay, lr = o->lr;
    o->t++;
    if (o->kind == ML_OPTIM_SGD) {
        const float mu = o->momentum;
        for (size_t i = 0; i < p->total; i++) {
            float gi = g[i] + wd * w[i];
            if (mu > 0) {
                m[i] = mu * m[i] + gi;
                gi = m[i];
            }
            w[i] -= lr * gi;
        }
        return;
    }
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    for (int k = 0; k < p->count; k++) {
        ml_tensor *t = &p->t[k];
        t->step++;
        const float c1 = 1.0f - (float)pow(b1, (double)t->step);
        const float c2 = 1.0f - (float)pow(b2, (double)t->step);
        const float step = lr / c1, rc2 = 1.0f / sqrtf(c2);
        float *tw = w + t->off, *tg = g + t->off, *tm = m + t->off, *tv = v + t->off;
        const size_t tn = t->n;
#pragma omp parallel for schedule(static) if (tn > 65536)
        for (size_t i = 0; i < tn; i++) {
            float gi = tg[i] + wd * tw[i];
            tm[i] = b1 * tm[i] + (1.0f - b1) * gi;
            tv[i] = b2 * tv[i] + (1.0f - b2) * gi * gi;
            tw[i] -= step * tm[i] / (sqrtf(tv[i]) * rc2 + eps);
        }
    }
}

static void same_as_before(ml_optim_kind kind, float wd, float mu) {
    const char *names[] = {"enc.w", "enc.b", "moe1.expert0.w1", "big"};
    int sizes[] = {100, 7, 513, 70001};
    ml_params p, q;
    make_block(&p, 4, names, sizes, 5);
    make_block(&q, 4, names, sizes, 5);
    ml_optim a = {.kind = kind, .lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = wd,
                  .momentum = mu};
    ml_optim b = a;
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < 4; i++) {
            tu_fill(ml_params_grad(&p, i), p.t[i].n, 50u + (unsigned)(s * 4 + i), -2, 2);
            memcpy(ml_params_grad(&q, i), ml_params_grad(&p, i), p.t[i].n * sizeof(float));
        }
        ml_optim_step(&a, &p);
        old_step(&b, &q);
    }
    ck_assert_int_eq(memcmp(p.data, q.data, p.total * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(p.m, q.m, p.total * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(p.v, q.v, p.total * sizeof(float)), 0);
    ck_assert_int_eq(a.t, b.t);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(p.t[i].step, q.t[i].step);
    ml_params_free(&p);
    ml_params_free(&q);
}

START_TEST(adam_bitwise_unchanged) {
    same_as_before(ML_OPTIM_ADAM, 0, 0);
    same_as_before(ML_OPTIM_ADAM, 0.01f, 0);
}
END_TEST

START_TEST(sgd_bitwise_unchanged) {
    same_as_before(ML_OPTIM_SGD, 0, 0);
    same_as_before(ML_OPTIM_SGD, 1e-3f, 0.9f);
}
END_TEST

/* ------------------------------------------------------------ idle experts, lazy */

/* optim.idle_experts: lazy. After one step in which every tensor had a gradient, expert 1
   is idle (the MoE layer's mark, a zero gradient) for three steps: lazy leaves its values,
   moments and step count bit for bit as they were, and updates the others exactly as dense
   does; dense moves the idle expert (moments decay, momentum, weight decay). Then expert 1 is
   used again: lazy's bias correction goes on from its own step count. Adam, AdamW, SGD. */
START_TEST(lazy_leaves_idle_experts_exactly) {
    const char *names[] = {"enc.w", "moe1.expert0.w1", "moe1.expert1.w1", "moe1.expert1.b1"};
    int sizes[] = {70001, 33, 33, 5};
    for (int kind = 0; kind < 3; kind++) {
        ml_params d, l;
        make_block(&d, 4, names, sizes, 21);
        make_block(&l, 4, names, sizes, 21);
        ml_optim od = {.kind = (ml_optim_kind)kind, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                       .weight_decay = 0.1f, .momentum = 0.5f};
        ml_optim ol = od;
        ol.idle = ML_OPTIM_IDLE_LAZY;
        ml_optim_step(&od, &d);
        ml_optim_step(&ol, &l);
        size_t bytes = l.total * sizeof(float);
        ck_assert_int_eq(memcmp(d.data, l.data, bytes), 0);
        float *d0 = malloc(bytes), *m0 = malloc(bytes), *v0 = malloc(bytes);
        memcpy(d0, l.data, bytes), memcpy(m0, l.m, bytes), memcpy(v0, l.v, bytes);
        int64_t s2 = l.t[2].step, s3 = l.t[3].step;
        for (int s = 0; s < 3; s++) {
            for (int i = 0; i < 4; i++) {
                ml_params *b[2] = {&d, &l};
                for (int j = 0; j < 2; j++) {
                    b[j]->t[i].idle = i >= 2;
                    if (i >= 2) memset(ml_params_grad(b[j], i), 0, b[j]->t[i].n * sizeof(float));
                    else tu_fill(ml_params_grad(b[j], i), b[j]->t[i].n, 300u + (unsigned)(s * 4 + i), -1, 1);
                }
            }
            ml_optim_step(&od, &d);
            ml_optim_step(&ol, &l);
        }
        for (int h = 2; h < 4; h++) {
            size_t off = l.t[h].off, n = l.t[h].n * sizeof(float);
            ck_assert_int_eq(memcmp(d0 + off, l.data + off, n), 0);
            ck_assert_int_eq(memcmp(m0 + off, l.m + off, n), 0);
            ck_assert_int_eq(memcmp(v0 + off, l.v + off, n), 0);
            ck_assert_int_ne(memcmp(d0 + off, d.data + off, n), 0); /* dense moved it */
        }
        ck_assert_int_eq(l.t[2].step, s2);
        ck_assert_int_eq(l.t[3].step, s3);
        ck_assert_int_eq(d.t[2].step, kind == ML_OPTIM_SGD ? 0 : s2 + 3);
        ck_assert_int_eq(ol.t, od.t); /* the global count goes on in both */
        for (int h = 0; h < 2; h++) {
            size_t off = l.t[h].off, n = l.t[h].n * sizeof(float);
            ck_assert_int_eq(memcmp(d.data + off, l.data + off, n), 0);
            ck_assert_int_eq(memcmp(d.m + off, l.m + off, n), 0);
            ck_assert_int_eq(memcmp(d.v + off, l.v + off, n), 0);
            ck_assert_int_eq(d.t[h].step, l.t[h].step);
        }
        /* used again: one update, bias-corrected by its own count (2 for adam, adamw) */
        if (kind != ML_OPTIM_SGD) {
            l.t[2].idle = 0;
            float *g = ml_params_grad(&l, 2), *w = ml_params_data(&l, 2), *m = l.m + l.t[2].off, *v = l.v + l.t[2].off;
            tu_fill(g, 33, 77, -1, 1);
            double want[33];
            for (int i = 0; i < 33; i++) {
                double mm = m[i], vv = v[i];
                want[i] = torch_adam(w[i], g[i], &mm, &vv, 2, 1e-2, 0.9, 0.999, 1e-8, 0.1, kind == ML_OPTIM_ADAMW);
            }
            ml_optim_step(&ol, &l);
            ck_assert_int_eq(l.t[2].step, 2);
            for (int i = 0; i < 33; i++) ck_assert_double_eq_tol(w[i], want[i], 2e-6);
        }
        free(d0), free(m0), free(v0);
        ml_params_free(&d);
        ml_params_free(&l);
    }
}
END_TEST

/* With no tensor idle (every expert got samples every step), lazy is dense, bit for bit. */
START_TEST(lazy_is_dense_when_nothing_is_idle) {
    const char *names[] = {"enc.w", "moe1.expert0.w1", "moe1.expert1.w1", "big"};
    int sizes[] = {100, 513, 513, 70001};
    for (int kind = 0; kind < 3; kind++) {
        ml_params d, l;
        make_block(&d, 4, names, sizes, 31);
        make_block(&l, 4, names, sizes, 31);
        ml_optim od = {.kind = (ml_optim_kind)kind, .lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                       .weight_decay = 0.01f, .momentum = 0.9f};
        ml_optim ol = od;
        ol.idle = ML_OPTIM_IDLE_LAZY;
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i < 4; i++) {
                tu_fill(ml_params_grad(&d, i), d.t[i].n, 90u + (unsigned)(s * 4 + i), -2, 2);
                memcpy(ml_params_grad(&l, i), ml_params_grad(&d, i), d.t[i].n * sizeof(float));
            }
            ml_optim_step(&od, &d);
            ml_optim_step(&ol, &l);
        }
        size_t bytes = d.total * sizeof(float);
        ck_assert_int_eq(memcmp(d.data, l.data, bytes), 0);
        ck_assert_int_eq(memcmp(d.m, l.m, bytes), 0);
        ck_assert_int_eq(memcmp(d.v, l.v, bytes), 0);
        ml_params_free(&d);
        ml_params_free(&l);
    }
}
END_TEST

/* Zeroing and the finite check over the used tensors: idle tensors are skipped (their
   gradients are zero by the layer's contract), the others and their padding are covered. */
START_TEST(zero_and_check_only_the_used) {
    const char *names[] = {"a", "moe1.expert0.w1", "moe1.expert1.w1", "b"};
    int sizes[] = {17, 9, 40, 3};
    ml_params p;
    make_block(&p, 4, names, sizes, 41);
    p.t[1].idle = 1;
    float keep = ml_params_grad(&p, 1)[0];
    ml_params_zero_grad_used(&p);
    for (int h = 0; h < 4; h++)
        for (size_t j = 0; j < p.t[h].n; j++)
            if (h != 1) ck_assert_float_eq(ml_params_grad(&p, h)[j], 0.0f);
    ck_assert_float_eq(ml_params_grad(&p, 1)[0], keep); /* not touched */
    ck_assert(ml_params_grad_finite_used(&p));
    ml_params_grad(&p, 1)[3] = NAN; /* in an idle tensor: not looked at */
    ck_assert(ml_params_grad_finite_used(&p));
    ck_assert(!ml_params_grad_finite(&p));
    ml_params_grad(&p, 3)[2] = INFINITY;
    ck_assert(!ml_params_grad_finite_used(&p));
    ml_params_free(&p);
}
END_TEST

/* A stale gradient (ml_tensor.grad_stale: left to the MoE layer, reads as zero) is zero to every
   optimizer, dense or lazy, whatever its memory holds: the same bits as a zeroed gradient,
   for tensors longer than the optimizer's pieces of zeros too; zeroing marks only the
   zero_later tensors not idle stale. */
START_TEST(stale_gradients_read_as_zero) {
    const char *names[] = {"a", "moe1.expert0.w1", "moe1.expert1.w1", "b"};
    int sizes[] = {17, 9000, 40, 3};
    for (int kind = 0; kind < 3; kind++)
        for (int idle = 0; idle < 2; idle++) {
            ml_params z, s;
            make_block(&z, 4, names, sizes, 43);
            make_block(&s, 4, names, sizes, 43);
            ml_optim o = {.kind = (ml_optim_kind)kind, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                          .weight_decay = 0.1f, .momentum = 0.9f, .idle = (ml_optim_idle)idle};
            ml_optim o2 = o;
            for (int h = 1; h <= 2; h++) s.t[h].zero_later = 1;
            s.t[2].idle = z.t[2].idle = 1; /* expert 1 idle, expert 0 used */
            ml_params_zero_grad_used(&s);
            ck_assert_int_eq(s.t[1].grad_stale, 1);
            ck_assert_int_eq(s.t[2].grad_stale, 0);
            s.t[2].grad_stale = 1; /* an idle expert's gradient left stale by an earlier step */
            for (int h = 1; h <= 2; h++) tu_fill(ml_params_grad(&s, h), s.t[h].n, 7, -1e30f, 1e30f);
            ml_params_grad(&s, 1)[5] = NAN;
            ml_params_zero_grad(&z);
            for (int r = 0; r < 2; r++) {
                ml_optim_step(&o, &z);
                ml_optim_step(&o2, &s);
            }
            size_t bytes = z.total * sizeof(float);
            ck_assert_int_eq(memcmp(z.data, s.data, bytes), 0);
            ck_assert_int_eq(memcmp(z.m, s.m, bytes), 0);
            if (kind != ML_OPTIM_SGD) ck_assert_int_eq(memcmp(z.v, s.v, bytes), 0);
            ml_params_free(&z);
            ml_params_free(&s);
        }
}
END_TEST

/* ------------------------------------------------------------------ groups, freezing */

START_TEST(groups_first_match_wins) {
    const char *names[] = {"enc.fc1.w", "enc.fc1.b", "moe1.expert0.w1", "moe1.expert1.w1", "moe1.router.w", "dec.w"};
    int sizes[] = {6, 2, 8, 8, 4, 3};
    ml_params p;
    make_block(&p, 6, names, sizes, 9);
    ml_optim o = {.kind = ML_OPTIM_ADAMW, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    ck_assert_int_eq(ml_optim_add_group(&o, "enc_b", "enc.*.b", 1e-4f, 0, 0), ML_OK);
    ck_assert_int_eq(ml_optim_add_group(&o, "enc", "enc.*", 1e-3f, NAN, 0), ML_OK);
    ck_assert_int_eq(ml_optim_add_group(&o, "experts", "moe1.expert*", NAN, 0.5f, 0), ML_OK);
    ck_assert_int_eq(ml_optim_add_group(&o, "enc", "x", 1, 0, 0), ML_ERR); /* twice */
    ck_assert_int_eq(ml_optim_add_group(&o, "bad name", "x", 1, 0, 0), ML_ERR);
    ck_assert_int_eq(ml_optim_add_group(&o, "bad_glob", "enc.[", 1, 0, 0), ML_ERR);
    ml_optim_place(&o, &p);
    const int want[] = {1, 0, 2, 2, -1, -1};
    for (int i = 0; i < 6; i++) ck_assert_int_eq(p.t[i].group, want[i]);
    ck_assert_float_eq(ml_optim_tensor_lr(&o, &p.t[0]), 1e-3f);
    ck_assert_float_eq(ml_optim_tensor_wd(&o, &p.t[0]), 0.1f); /* NAN: the base value, also later */
    ck_assert_float_eq(ml_optim_tensor_lr(&o, &p.t[1]), 1e-4f);
    ck_assert_float_eq(ml_optim_tensor_wd(&o, &p.t[1]), 0);
    ck_assert_float_eq(ml_optim_tensor_lr(&o, &p.t[2]), 1e-2f);
    ck_assert_float_eq(ml_optim_tensor_wd(&o, &p.t[2]), 0.5f);
    o.lr = 2e-2f;
    o.weight_decay = 0.2f;
    ck_assert_float_eq(ml_optim_tensor_lr(&o, &p.t[2]), 2e-2f);
    ck_assert_float_eq(ml_optim_tensor_wd(&o, &p.t[0]), 0.2f);
    /* a group's update is the base update with its settings */
    ml_params q;
    make_block(&q, 6, names, sizes, 9);
    ml_optim_step(&o, &p);
    ml_optim b = {.kind = ML_OPTIM_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.2f};
    ml_optim_step(&b, &q);
    ck_assert_int_eq(memcmp(ml_params_data(&p, 0), ml_params_data(&q, 0), 6 * sizeof(float)), 0);
    ck_assert_int_ne(memcmp(ml_params_data(&p, 4), ml_params_data(&q, 4), 4 * sizeof(float)), 0);
    ml_params_free(&p);
    ml_params_free(&q);
}
END_TEST

START_TEST(frozen_tensors_stay_exactly) {
    const char *names[] = {"enc.w", "moe1.expert0.w1", "moe1.expert1.w1"};
    int sizes[] = {70000, 9, 9};
    for (int kind = 0; kind < 3; kind++) {
        ml_params p;
        make_block(&p, 3, names, sizes, 13);
        ml_optim o = {.kind = (ml_optim_kind)kind, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                      .weight_decay = 0.1f, .momentum = 0.5f};
        ck_assert_int_eq(ml_optim_add_group(&o, "backbone", "enc.*", NAN, NAN, 1), ML_OK);
        ml_optim_place(&o, &p);
        ck_assert_int_eq(p.t[0].frozen, 1);
        ml_optim_step(&o, &p); /* moments become non-zero for the experts */
        /* freeze expert 0 by pattern: values, moments and steps stay, the others move */
        int changed;
        ck_assert_int_eq(ml_optim_set_frozen(&o, &p, -1, "moe1.expert0.*", 1, &changed), 1);
        ck_assert_int_eq(changed, 1);
        size_t bytes = p.total * sizeof(float);
        float *d0 = malloc(bytes), *m0 = malloc(bytes), *v0 = malloc(bytes);
        memcpy(d0, p.data, bytes), memcpy(m0, p.m, bytes), memcpy(v0, p.v, bytes);
        int64_t s0 = p.t[0].step, s1 = p.t[1].step, s2 = p.t[2].step;
        ml_optim_step(&o, &p);
        ml_optim_step(&o, &p);
        for (int h = 0; h < 2; h++) {
            size_t off = p.t[h].off, n = p.t[h].n * sizeof(float);
            ck_assert_int_eq(memcmp(d0 + off, p.data + off, n), 0);
            ck_assert_int_eq(memcmp(m0 + off, p.m + off, n), 0);
            ck_assert_int_eq(memcmp(v0 + off, p.v + off, n), 0);
        }
        ck_assert_int_eq(p.t[0].step, s0);
        ck_assert_int_eq(p.t[1].step, s1);
        ck_assert_int_eq(p.t[2].step, kind == ML_OPTIM_SGD ? s2 : s2 + 2);
        ck_assert_int_ne(memcmp(d0 + p.t[2].off, p.data + p.t[2].off, 9 * sizeof(float)), 0);
        /* unfreezing the group: it trains again, its step count goes on from where it was */
        ck_assert_int_eq(ml_optim_set_frozen(&o, &p, 0, NULL, 0, &changed), 1);
        ck_assert_int_eq(changed, 1);
        ml_optim_step(&o, &p);
        ck_assert_int_ne(memcmp(d0, p.data, 16 * sizeof(float)), 0);
        ck_assert_int_eq(p.t[0].step, kind == ML_OPTIM_SGD ? 0 : s0 + 1);
        free(d0), free(m0), free(v0);
        ml_params_free(&p);
    }
}
END_TEST

/* Tensors declared later (experts added) join the group their names match and take its
   frozen flag; a pattern freeze covers only the tensors that existed when it was made. */
START_TEST(new_tensors_join_groups) {
    const char *names[] = {"enc.w", "moe1.expert0.w1"};
    int sizes[] = {4, 4};
    ml_params p;
    make_block(&p, 2, names, sizes, 17);
    ml_optim o = {.kind = ML_OPTIM_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    ck_assert_int_eq(ml_optim_add_group(&o, "experts", "moe1.expert*", 1e-3f, NAN, 0), ML_OK);
    ml_optim_place(&o, &p);
    ck_assert_int_eq(ml_optim_set_frozen(&o, &p, -1, "moe1.*", 1, NULL), 1);
    int s[1] = {4};
    int h = ml_params_declare(&p, "moe1.expert1.w1", 1, s, ML_INIT_ZEROS, 0, 0);
    ml_rng rng;
    ml_rng_seed(&rng, 2);
    ck_assert_int_eq(ml_params_commit(&p, &rng), ML_OK);
    ml_optim_place(&o, &p);
    ck_assert_int_eq(p.t[h].group, 0);
    ck_assert_int_eq(p.t[h].frozen, 0);
    ck_assert_int_eq(p.t[1].frozen, 1); /* placing again changes nothing already placed */
    ck_assert_int_eq(ml_optim_set_frozen(&o, &p, 0, NULL, 1, NULL), 2);
    int h2 = ml_params_declare(&p, "moe1.expert2.w1", 1, s, ML_INIT_ZEROS, 0, 0);
    ck_assert_int_eq(ml_params_commit(&p, &rng), ML_OK);
    ml_optim_place(&o, &p);
    ck_assert_int_eq(p.t[h2].frozen, 1);
    ml_params_free(&p);
}
END_TEST

/* A run with optim.groups: the frozen backbone stays exactly as initialised through an
   epoch, the other group trains with its own settings, and experts added later join the
   group their names match. */
START_TEST(groups_in_a_run) {
    setenv("MOELAB_PLUGIN_PATH", tu_path("%s/plugins", tu_build()), 1);
    const char *ov[] = {"optim.name=adamw", "optim.weight_decay=0.1",
                        "optim.groups=[{name: backbone, match: 'enc.*', frozen: true}, "
                        "{name: experts, match: 'moe1.expert*', lr: 0.01}]"};
    int code;
    ml_experiment *e = ml_exp_new("tests/fixtures/run/synth.yaml", ov, 3, &code);
    ck_assert_msg(e != NULL, "%s", ml_error());
    ml_params *P = &e->model->P;
    int enc = ml_params_find(P, "enc.fc1.w"), ex = ml_params_find(P, "moe1.expert0.w1");
    ck_assert_int_ge(enc, 0);
    ck_assert_int_eq(P->t[enc].group, 0);
    ck_assert_int_eq(P->t[enc].frozen, 1);
    ck_assert_int_eq(P->t[ex].group, 1);
    ck_assert_float_eq(ml_optim_tensor_lr(&e->opt, &P->t[ex]), 0.01f);
    size_t n = P->t[enc].n;
    float *w0 = malloc(n * sizeof(float));
    memcpy(w0, ml_params_data(P, enc), n * sizeof(float));
    float x0 = ml_params_data(P, ex)[0];
    ml_epoch_stats st;
    ck_assert_msg(ml_exp_train_epoch(e, NULL, NULL, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(memcmp(w0, ml_params_data(P, enc), n * sizeof(float)), 0);
    for (size_t i = 0; i < n; i++) ck_assert_float_eq(P->m[P->t[enc].off + i], 0);
    ck_assert_int_eq(P->t[enc].step, 0);
    ck_assert_float_ne(ml_params_data(P, ex)[0], x0);
    ck_assert_int_eq(P->t[ex].step, st.steps);
    ck_assert_int_eq(ml_exp_add_experts(e, 0, 1, "test"), ML_OK);
    int nx = ml_params_find(P, "moe1.expert4.w1");
    ck_assert_int_ge(nx, 0);
    ck_assert_int_eq(P->t[nx].group, 1);
    ck_assert_int_eq(P->t[nx].frozen, 0);
    free(w0);
    ml_exp_free(e);
}
END_TEST

/* ------------------------------------------------------------------------- glob */

START_TEST(glob_matches_like_fnmatch) {
    static const char *const pats[] = {
        "enc.*", "moe1.expert*", "*", "*.w", "moe?.expert1.*", "moe[12].*", "moe[!1].*", "moe[^1].*", "*expert[0-3].w?",
        "enc.fc1.w", "enc.fc1.b", "[]]x", "[a-]*", "*[-]*", "\\*x", "a\\?b", "**w1", "*.expert*.*", "moe1.router.*",
        "e*c*f*1*", "[e-f]nc.*", "?", "x*", "*1", "moe1.expert1?.w1", "[a-z]*[0-9]", "enc.fc1.w*"};
    static const char *const names[] = {"enc.fc1.w", "enc.fc1.b", "moe1.expert0.w1", "moe1.expert10.w1", "moe2.expert3.b2",
                                        "moe1.router.w", "dec.out.w", "]x", "*x", "a?b", "-", "x", "w1", "enc.fc1.w1",
                                        "fnc.a", ""};
    for (size_t i = 0; i < sizeof pats / sizeof *pats; i++)
        for (size_t j = 0; j < sizeof names / sizeof *names; j++)
            ck_assert_msg(ml_glob_match(pats[i], names[j]) == (fnmatch(pats[i], names[j], 0) == 0),
                          "'%s' on '%s': fnmatch says %d", pats[i], names[j], fnmatch(pats[i], names[j], 0) == 0);
    ck_assert_int_eq(ml_glob_check("enc.*"), ML_OK);
    ck_assert_int_eq(ml_glob_check(""), ML_ERR);
    ck_assert_int_eq(ml_glob_check("enc.["), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "'[' is not closed"), "%s", ml_error());
    ck_assert_int_eq(ml_glob_check("a\\"), ML_ERR);
    ck_assert_int_eq(ml_glob_check("[[:digit:]]"), ML_ERR);
    ck_assert_int_eq(ml_glob_check("a\tb"), ML_ERR);
    char longp[ML_GLOB_MAX + 2];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    ck_assert_int_eq(ml_glob_check(longp), ML_ERR);
    longp[ML_GLOB_MAX] = 0;
    ck_assert_int_eq(ml_glob_check(longp), ML_OK);
}
END_TEST

/* Many stars against a long name that almost matches: fnmatch backtracks for each star,
   this matcher keeps one backtracking point. */
START_TEST(glob_is_linear) {
    char pat[ML_GLOB_MAX + 1] = "", name[96];
    for (int i = 0; i < 40; i++) strcat(pat, "*a");
    strcat(pat, "*b");
    memset(name, 'a', 95);
    name[95] = 0;
    clock_t t0 = clock();
    int hits = 0;
    for (int i = 0; i < 20000; i++) hits += ml_glob_match(pat, name);
    double s = (double)(clock() - t0) / CLOCKS_PER_SEC;
    ck_assert_int_eq(hits, 0);
    ck_assert_msg(s < 2.0, "20000 matches took %.2f s", s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *t = tcase_create("optim");
    tcase_add_test(t, adam_one_step_by_hand);
    tcase_add_test(t, adamw_one_step_by_hand);
    tcase_add_test(t, adamw_is_adam_without_decay);
    tcase_add_test(t, sgd_one_step_by_hand);
    tcase_add_test(t, adam_bitwise_unchanged);
    tcase_add_test(t, sgd_bitwise_unchanged);
    tcase_add_test(t, lazy_leaves_idle_experts_exactly);
    tcase_add_test(t, lazy_is_dense_when_nothing_is_idle);
    tcase_add_test(t, zero_and_check_only_the_used);
    tcase_add_test(t, groups_first_match_wins);
    tcase_add_test(t, frozen_tensors_stay_exactly);
    tcase_add_test(t, new_tensors_join_groups);
    tcase_add_test(t, groups_in_a_run);
    tcase_add_test(t, glob_matches_like_fnmatch);
    tcase_add_test(t, glob_is_linear);
    tcase_add_test(t, stale_gradients_read_as_zero);
    suite_add_tcase(s, t);
    return tu_run(s);
}
