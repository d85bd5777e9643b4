/*
 * saturation — SRNN saturation routing: a linear router biased toward "hungry" experts.
 *
 * Source: the SRNN seed (../shared/seeds/srnn-saturation-routing.md, "The Math"):
 *
 *   grad_mag_i   = mean |dL/dθ| over expert i's parameters            (given by the host)
 *   saturation_i ← α · saturation_i + (1 − α) · g̃_i                    (EMA, α = saturation_ema)
 *   logits_i     = (x W^T + b)_i + β · (1 − saturation_i)              (β = capacity_bias)
 *   prob = softmax(logits);  top-k of prob; gates = prob at the top k, renormalised to sum 1
 *
 * New experts start at saturation 0.5 (the seed's "medium saturation"), so they get a bias
 * of β/2 over an expert whose saturation is 1.
 *
 * g̃ is grad_mag after the normalisation chosen by option `norm`:
 *   none  g̃_i = g_i                 (the seed's formula)
 *   max   g̃_i = g_i / max_j g_j
 *   mean  g̃_i = g_i / mean_j g_j
 * (0 when the divisor is 0). Caveat for `none`: raw gradient magnitudes are often ~1e-4,
 * so every saturation decays toward 0 and the bias becomes ≈ β for every expert — uniform,
 * which shifts all logits equally and changes nothing: the mechanism is inert. `max` and
 * `mean` keep the saturations on a scale of 1, so the bias stays discriminative.
 *
 * The bias is a constant in backward: no gradient flows into the saturation state, which
 * changes only in the ML_EV_AFTER_BACKWARD event. logits include the bias (what the
 * softmax saw); prob is the dense softmax the gates are cut from.
 */
#include <math.h>
#include <stdio.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_RENORM, OPT_NORM, OPT_EMA, OPT_BIAS, NUM_OPTS };
enum { NORM_NONE, NORM_MAX, NORM_MEAN };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "2", 1, 64, NULL,
               "experts per sample (clipped to the number of experts)"},
    [OPT_RENORM] = {"renormalize", ML_OPT_BOOL, "true", 1, 0, NULL,
                    "renormalise the top-k gates to sum 1 (else gate = prob)"},
    [OPT_NORM] = {"norm", ML_OPT_ENUM, "none", 1, 0, "none|max|mean",
                  "normalise grad_mag before the EMA (none: raw, as in SRNN; often inert)"},
    [OPT_EMA] = {"saturation_ema", ML_OPT_FLOAT, "0.9", 0, 1, NULL,
                 "EMA decay alpha of the saturation, in [0, 1)"},
    [OPT_BIAS] = {"capacity_bias", ML_OPT_FLOAT, "0.5", 0, 100, NULL,
                  "bias strength beta: logits += beta * (1 - saturation)"},
};

enum { P_W, P_B, NUM_PARAMS };
enum { S_SAT, NUM_STATES };

#define SAT_INIT 0.5f

typedef struct sat {
    const ml_host *host;
    int D, k, renorm, norm;
    float alpha, beta;
    ml_aux_buf dz; /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp; /* (B, N) backward: dL/dprob including gates that are probs */
} sat;

/* --------------------------------------------------------------------- api */

static void *sat_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "saturation: needs dim >= 1 and num_experts >= 1, got %d and %d",
                 init->dim, init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "saturation: option k must be in [1, 64], got %lld",
                 (long long)o[OPT_K].i);
        return NULL;
    }
    if (!(o[OPT_EMA].f >= 0 && o[OPT_EMA].f < 1)) {
        snprintf(err, ML_ERR_MAX, "saturation: option saturation_ema must be in [0, 1), got %g",
                 o[OPT_EMA].f);
        return NULL;
    }
    if (o[OPT_NORM].i < NORM_NONE || o[OPT_NORM].i > NORM_MEAN) {
        snprintf(err, ML_ERR_MAX, "saturation: option norm must be none|max|mean");
        return NULL;
    }
    sat *s = ml_aux_new(host, sizeof *s, "saturation", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->k = (int)o[OPT_K].i;
    s->renorm = (int)o[OPT_RENORM].i;
    s->norm = (int)o[OPT_NORM].i;
    s->alpha = (float)o[OPT_EMA].f;
    s->beta = (float)o[OPT_BIAS].f;
    return s;
}

static void sat_destroy(void *self) {
    sat *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int sat_params(void *self, ml_tensor_decl *out, int cap) {
    sat *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    out[P_B] = ml_aux_linear_decl("b", 1, s->D);
    return NUM_PARAMS;
}

static int sat_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    if (cap < NUM_STATES) return -1;
    out[S_SAT] = (ml_tensor_decl){"saturation", 1, 0, 1, ML_INIT_CONST, SAT_INIT, 0, 1};
    return NUM_STATES;
}

static int sat_forward(void *self, ml_route *r, char *err) {
    sat *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "saturation: forward with B=%d D=%d N=%d, router was made for D=%d",
                 B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    const float *satv = r->state[S_SAT];
    float *z = r->logits;
    ml_aux_linear(h, r->x, r->param[P_W], r->param[P_B], B, D, N, z);
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) z[(size_t)b * N + n] += s->beta * (1.0f - satv[n]);
    int k = s->k < N ? s->k : N;
    int32_t sel[64];
    float gs[64];
    ml_aux_softmax(z, r->prob, B, N);
    for (int b = 0; b < B; b++) {
        const float *zb = z + (size_t)b * N, *pb = r->prob + (size_t)b * N;
        ml_aux_topk(zb, N, k, sel);
        /* prob restricted to the top k and renormalised = softmax over their logits */
        if (s->renorm) ml_aux_topk_gates(zb, sel, k, gs);
        else
            for (int j = 0; j < k; j++) gs[j] = pb[sel[j]];
        for (int j = 0; j < k; j++) ml_aux_dispatch(r, b, sel[j], gs[j]);
    }
    return 0;
}

static int sat_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    sat *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, k = s->k < N ? s->k : N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "saturation: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_softmax_router_bwd(r, g, s->renorm ? k : 0, dz, dp);
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], r->grad[P_B], g->dx);
    return 0;
}

static int sat_event(void *self, const ml_router_event *ev, char *err) {
    sat *s = self;
    int N = ev->num_experts;
    float *satv = ev->state[S_SAT];
    if (ev->kind == ML_EV_EXPERTS_ADDED) {
        /* The host initialised the new rows from the declaration already; restating the
         * seed's rule here keeps it true whatever the host did. */
        for (int n = ev->old_num_experts; n < N; n++)
            if (n >= 0) satv[n] = SAT_INIT;
        return 0;
    }
    if (ev->kind != ML_EV_AFTER_BACKWARD) return 0;
    if (!ev->grad_mag) {
        snprintf(err, ML_ERR_MAX, "saturation: AFTER_BACKWARD event without grad_mag");
        return -1;
    }
    double scale = 1.0;
    if (s->norm != NORM_NONE) {
        double mx = 0, sum = 0;
        for (int n = 0; n < N; n++) {
            double gm = ev->grad_mag[n];
            if (gm > mx) mx = gm;
            sum += gm;
        }
        double div = s->norm == NORM_MAX ? mx : sum / N;
        scale = div > 0 && isfinite(div) ? 1.0 / div : 0.0;
    }
    for (int n = 0; n < N; n++) {
        double gt = (double)ev->grad_mag[n] * scale;
        if (!isfinite(gt)) gt = 0;
        satv[n] = (float)(s->alpha * (double)satv[n] + (1.0 - s->alpha) * gt);
    }
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), sat_create, sat_destroy, sat_params, sat_states,
    sat_forward, sat_backward, sat_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "saturation",
    "1.0",
    "SRNN saturation routing: linear top-k router biased by beta*(1 - EMA of expert gradient magnitude)",
    options,
    NUM_OPTS,
    &api,
};
