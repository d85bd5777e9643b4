/*
 * net_mlp.c — the dense autoencoder: x -> Linear(Din, hidden) -> ReLU -> Linear(hidden, D) = z,
 * z -> Linear(D, hidden) -> ReLU -> Linear(hidden, Din) -> sigmoid = x̂.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/net.h"
#include "nn/ops.h"

typedef struct mlp {
    ml_params *P;
    int Din, Hd, D, cap_B, B;
    int e1w, e1b, e2w, e2b, d1w, d1b, d2w, d2b; /* handles */
    const float *x;   /* (B, Din) borrowed */
    float *h1;        /* (B, Hd) encoder hidden, post-ReLU */
    float *z;         /* (B, D)  decoder input copy */
    float *h2;        /* (B, Hd) decoder hidden, post-ReLU */
    float *xhat;      /* (B, Din) borrowed output */
    float *dh;        /* (B, Hd) scratch */
    float *dpre;      /* (B, Din) scratch */
} mlp;

static int lin(ml_params *P, const char *name, int out, int in, int *w, int *b) {
    char n[ML_TENSOR_NAME_MAX];
    int sw[2] = {out, in}, sb[1] = {out};
    snprintf(n, sizeof n, "%s.w", name);
    if ((*w = ml_params_declare(P, n, 2, sw, ML_INIT_UNIFORM_FANIN, 0, in)) < 0) return ML_ERR;
    snprintf(n, sizeof n, "%s.b", name);
    if ((*b = ml_params_declare(P, n, 1, sb, ML_INIT_UNIFORM_FANIN, 0, in)) < 0) return ML_ERR;
    return ML_OK;
}

static void mlp_free(void *net) {
    mlp *m = net;
    if (!m) return;
    free(m->h1);
    free(m->z);
    free(m->h2);
    free(m->dh);
    free(m->dpre);
    free(m);
}

static void *mlp_create(const ml_net_shape *s, ml_params *P, ml_params *S) {
    (void)S;
    mlp *m = ml_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->P = P;
    m->Din = s->C * s->H * s->W;
    m->Hd = s->hidden;
    m->D = s->latent;
    if (lin(P, "enc.fc1", m->Hd, m->Din, &m->e1w, &m->e1b) || lin(P, "enc.fc2", m->D, m->Hd, &m->e2w, &m->e2b) ||
        lin(P, "dec.fc1", m->Hd, m->D, &m->d1w, &m->d1b) || lin(P, "dec.fc2", m->Din, m->Hd, &m->d2w, &m->d2b)) {
        mlp_free(m);
        return NULL;
    }
    return m;
}

static int mlp_reserve(void *net, int B) {
    mlp *m = net;
    if (B <= m->cap_B) return ML_OK;
    free(m->h1);
    free(m->z);
    free(m->h2);
    free(m->dh);
    free(m->dpre);
    m->h1 = ml_alloc_floats((size_t)B * m->Hd);
    m->z = ml_alloc_floats((size_t)B * m->D);
    m->h2 = ml_alloc_floats((size_t)B * m->Hd);
    m->dh = ml_alloc_floats((size_t)B * m->Hd);
    m->dpre = ml_alloc_floats((size_t)B * m->Din);
    if (!m->h1 || !m->z || !m->h2 || !m->dh || !m->dpre) return ML_ERR;
    m->cap_B = B;
    return ML_OK;
}

#define W(h) ml_params_data(m->P, m->h)
#define G(h) ml_params_grad(m->P, m->h)

static int mlp_encode(void *net, const float *x, int B, int training, float *z) {
    (void)training;
    mlp *m = net;
    m->x = x;
    m->B = B;
    ml_linear_forward(m->h1, x, W(e1w), W(e1b), B, m->Din, m->Hd);
    ml_relu_forward(m->h1, m->h1, (size_t)B * m->Hd);
    ml_linear_forward(z, m->h1, W(e2w), W(e2b), B, m->Hd, m->D);
    return ML_OK;
}

static int mlp_decode(void *net, const float *z, int B, int training, float *xhat) {
    (void)training;
    mlp *m = net;
    memcpy(m->z, z, (size_t)B * m->D * sizeof(float));
    ml_linear_forward(m->h2, z, W(d1w), W(d1b), B, m->D, m->Hd);
    ml_relu_forward(m->h2, m->h2, (size_t)B * m->Hd);
    ml_linear_forward(xhat, m->h2, W(d2w), W(d2b), B, m->Hd, m->Din);
    ml_sigmoid_forward(xhat, xhat, (size_t)B * m->Din);
    m->xhat = xhat;
    return ML_OK;
}

static int mlp_decode_backward(void *net, const float *dxhat, float *dz) {
    mlp *m = net;
    const int B = m->B;
    memset(m->dpre, 0, (size_t)B * m->Din * sizeof(float));
    ml_sigmoid_backward(m->dpre, dxhat, m->xhat, (size_t)B * m->Din);
    memset(m->dh, 0, (size_t)B * m->Hd * sizeof(float));
    ml_linear_backward(m->dh, G(d2w), G(d2b), m->dpre, m->h2, W(d2w), B, m->Hd, m->Din);
    for (size_t i = 0; i < (size_t)B * m->Hd; i++)
        if (m->h2[i] <= 0) m->dh[i] = 0;
    ml_linear_backward(dz, G(d1w), G(d1b), m->dh, m->z, W(d1w), B, m->D, m->Hd);
    return ML_OK;
}

static int mlp_encode_backward(void *net, const float *dz) {
    mlp *m = net;
    const int B = m->B;
    memset(m->dh, 0, (size_t)B * m->Hd * sizeof(float));
    ml_linear_backward(m->dh, G(e2w), G(e2b), dz, m->h1, W(e2w), B, m->Hd, m->D);
    for (size_t i = 0; i < (size_t)B * m->Hd; i++)
        if (m->h1[i] <= 0) m->dh[i] = 0;
    ml_linear_backward(NULL, G(e1w), G(e1b), m->dh, m->x, W(e1w), B, m->Din, m->Hd);
    return ML_OK;
}

static double mlp_flops(void *net) {
    mlp *m = net;
    double macs = 2.0 * ((double)m->Din * m->Hd + (double)m->Hd * m->D);
    return 2.0 * macs * 3.0; /* forward + backward (≈ 2x forward) */
}

const ml_net_ops ml_net_mlp = {.type = "mlp", .create = mlp_create, .free = mlp_free, .reserve = mlp_reserve,
                               .encode = mlp_encode, .decode = mlp_decode, .decode_backward = mlp_decode_backward,
                               .encode_backward = mlp_encode_backward, .flops_per_sample = mlp_flops};
