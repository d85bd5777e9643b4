/*
 * top_p — dynamic routing: each sample takes the fewest experts whose probability mass
 * reaches a threshold p.
 *
 * Source: Q. Huang, Z. An, N. Zhuang, M. Tao, C. Zhang, Y. Jin, K. Xu, L. Chen, S. Huang,
 * Y. Feng, "Harder Tasks Need More Experts: Dynamic Routing in MoE Models", arXiv 2403.07652
 * (ACL 2024), the method's "Top-p Routing" (the threshold rule) and "Dynamic Loss"; reference code
 * github.com/ZhenweiAn/Dynamic_MoE, modeling/modeling_moe.py
 * (`top_p_sampling_batched_all_sequence`, `SwitchMLP.forward`):
 *
 *   P = softmax(x Wᵀ)                                   (B, N), no bias (nn.Linear(bias=False))
 *   sort P[b, :] descending: P_(1) ≥ P_(2) ≥ ...        (ties to the lower index)
 *   t_b = min { t : Σ_{j ≤ t} P_(j) ≥ p },  capped at max_k
 *   experts(b) = the t_b most probable;   gate = P[b, e]   (the paper: no renormalisation)
 *
 * The paper's reference code keeps the first expert where the cumulative sum exceeds p
 * strictly (cumsum > p); the paper writes ≥. They differ only where a cumulative sum equals
 * p exactly; this router follows the paper (≥), with the sums in double. When rounding keeps
 * the total mass just below p = 1, every expert is taken (so does the reference code, whose
 * mask is then empty).
 *
 * Options beyond the paper: max_k caps t_b (0: no cap), renormalize divides the gates by
 * their sum (then gates are the softmax over the selected logits, ml_aux_topk_gates).
 *
 * The paper's training adds a "dynamic loss" L_d = −Σ_i P_i log P_i per token (with a small
 * coefficient β) that lowers the routing entropy, since without it the router learns flat
 * distributions that select many experts; it is the `entropy` loss plugin with `goal: lower`
 * (the reference repository holds inference code only, without the loss). The paper's
 * balancing term α L_b is the Switch `load_balance` loss.
 *
 * Router metric: experts_per_sample = n_disp / B, in training and evaluation forwards
 * (metrics.csv moe<L>_experts_per_sample and val_moe<L>_experts_per_sample).
 */
#include <stdio.h>

#include "moelab/plugin_aux.h"

enum { OPT_P, OPT_MAX_K, OPT_RENORM, NUM_OPTS };

/* all three may change while the router runs (Lua exp.moe[i].router:set{p = 0.6}) */
static const ml_option options[NUM_OPTS] = {
    [OPT_P] = {"p", ML_OPT_FLOAT, "0.4", 0, 1, NULL,
               "probability mass the selected experts must reach (Huang et al. 2024 use 0.4)", ML_OPTF_RUNTIME},
    [OPT_MAX_K] = {"max_k", ML_OPT_INT, "0", 0, 4096, NULL,
                   "at most this many experts per sample; 0: no cap", ML_OPTF_RUNTIME},
    [OPT_RENORM] = {"renormalize", ML_OPT_BOOL, "false", 0, -1, NULL,
                    "divide the gates by their sum (the paper does not)", ML_OPTF_RUNTIME},
};

enum { P_W, NUM_PARAMS };

typedef struct topp {
    const ml_host *host;
    int D, max_k, renorm;
    double p;
    ml_aux_buf sel; /* (N) int32: one sample's selection */
    ml_aux_buf g;   /* (N) float: one sample's renormalised gates */
    ml_aux_buf dz;  /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp;  /* (B, N) backward: dL/dprob */
} topp;

static void set_options(topp *s, const ml_optval *o) {
    s->p = o[OPT_P].f;
    s->max_k = (int)o[OPT_MAX_K].i;
    s->renorm = (int)o[OPT_RENORM].i;
}

/* --------------------------------------------------------------------- api */

static void *tp_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "top_p: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (!(o[OPT_P].f >= 0 && o[OPT_P].f <= 1)) {
        snprintf(err, ML_ERR_MAX, "top_p: option p must be in [0, 1], got %g", o[OPT_P].f);
        return NULL;
    }
    if (o[OPT_MAX_K].i < 0) {
        snprintf(err, ML_ERR_MAX, "top_p: option max_k must be >= 0, got %lld", (long long)o[OPT_MAX_K].i);
        return NULL;
    }
    topp *s = ml_aux_new(host, sizeof *s, "top_p", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    set_options(s, o);
    return s;
}

static void tp_destroy(void *self) {
    topp *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->sel);
    ml_aux_buf_free(h, &s->g);
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int tp_params(void *self, ml_tensor_decl *out, int cap) {
    topp *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    return NUM_PARAMS;
}

static int tp_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int tp_forward(void *self, ml_route *r, char *err) {
    topp *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "top_p: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    int32_t *sel = ml_aux_buf_get(h, &s->sel, (size_t)N * sizeof(int32_t));
    float *g = ml_aux_buf_get(h, &s->g, (size_t)N * sizeof(float));
    if (!sel || !g) {
        snprintf(err, ML_ERR_MAX, "top_p: out of memory for N=%d", N);
        return -1;
    }
    int cap = s->max_k > 0 && s->max_k < N ? s->max_k : N;
    ml_aux_linear(h, r->x, r->param[P_W], NULL, B, D, N, r->logits);
    ml_aux_softmax(r->logits, r->prob, B, N);
    for (int b = 0; b < B; b++) {
        const float *z = r->logits + (size_t)b * N, *pb = r->prob + (size_t)b * N;
        /* the next most probable expert, one at a time (ml_aux_topk's order: by logits,
           ties to the lower index), until the mass reaches p */
        double mass = 0;
        int t = 0;
        while (t < cap && (t == 0 || mass < s->p)) {
            int best = -1;
            for (int i = 0; i < N; i++)
                if ((t == 0 || ml_aux_ranks_before(z, sel[t - 1], i)) && (best < 0 || ml_aux_ranks_before(z, i, best)))
                    best = i;
            sel[t++] = best;
            mass += pb[best];
        }
        if (s->renorm) ml_aux_topk_gates(z, sel, t, g);
        for (int j = 0; j < t; j++) ml_aux_dispatch(r, b, sel[j], s->renorm ? g[j] : pb[sel[j]]);
    }
    r->metric(r->metric_ctx, "experts_per_sample", (double)r->n_disp / B);
    return 0;
}

static int tp_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    topp *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "top_p: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    if (!s->renorm) {
        ml_aux_softmax_router_bwd(r, g, 0, dz, dp); /* gates are prob */
    } else {
        /* each sample's t_b triples are contiguous and in sample order: the renormalised
           gates' backward per sample, then prob's softmax Jacobian and dlogits */
        ml_route_grad ng = *g;
        ng.dgate = NULL;
        ml_aux_softmax_router_bwd(r, &ng, 0, dz, dp);
        for (int t0 = 0; g->dgate && t0 < r->n_disp;) {
            int b = r->disp_sample[t0], t1 = t0;
            while (t1 < r->n_disp && r->disp_sample[t1] == b) t1++;
            ml_aux_topk_gates_bwd(r->disp_gate + t0, g->dgate + t0, r->disp_expert + t0, t1 - t0,
                                  dz + (size_t)b * N);
            t0 = t1;
        }
    }
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], NULL, g->dx);
    return 0;
}

static int tp_event(void *self, const ml_router_event *ev, char *err) {
    topp *s = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) set_options(s, ev->opt);
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), tp_create, tp_destroy, tp_params, tp_states, tp_forward, tp_backward, tp_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "top_p",
    "1.0",
    "dynamic top-p routing: the fewest most probable experts whose softmax mass reaches p (Huang et al. 2024)",
    options,
    NUM_OPTS,
    &api,
};
