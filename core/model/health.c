/* health.c — routing-health accumulator and metrics (see health.h, docs/metrics.md). */
#include "model/health.h"
#include "base/common.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ml_health_acc {
    int N, C;
    int N0;              /* experts when the window's first batch came (0: none yet) */
    int64_t *slots;      /* (N) dispatched slots per expert */
    double *psum;        /* (N) summed probabilities */
    int64_t *joint;      /* (C, N) labelled samples by (label, top-1 expert); NULL when C == 0 */
    double ent_sum;      /* summed per-sample entropies, nats */
    int64_t samples, dropped, labelled;
};

ml_health_cfg ml_health_cfg_default(void) {
    ml_health_cfg c = {0.1, 0.5, 0.5, 0.5};
    return c;
}

ml_health_acc *ml_health_acc_new(int num_experts, int num_classes) {
    if (num_experts < 1) {
        ml_errorf("health: num_experts is %d, expected at least 1", num_experts);
        return NULL;
    }
    if (num_classes < 0) {
        ml_errorf("health: num_classes is %d, expected 0 (unlabelled) or more", num_classes);
        return NULL;
    }
    ml_health_acc *a = ml_calloc(1, sizeof *a);
    if (!a) return NULL;
    a->N = num_experts;
    a->C = num_classes;
    a->slots = ml_calloc((size_t)num_experts, sizeof *a->slots);
    a->psum = ml_calloc((size_t)num_experts, sizeof *a->psum);
    if (num_classes) a->joint = ml_calloc((size_t)num_classes * (size_t)num_experts, sizeof *a->joint);
    if (!a->slots || !a->psum || (num_classes && !a->joint)) {
        ml_health_acc_free(a);
        return NULL;
    }
    return a;
}

void ml_health_acc_free(ml_health_acc *a) {
    if (!a) return;
    free(a->slots);
    free(a->psum);
    free(a->joint);
    free(a);
}

int ml_health_acc_num_experts(const ml_health_acc *a) { return a ? a->N : 0; }

int ml_health_acc_joint(const ml_health_acc *a, const int64_t **joint, int *C, int *N) {
    if (!a || !a->C) return ML_ERR;
    *joint = a->joint;
    *C = a->C;
    *N = a->N;
    return ML_OK;
}

/* Replaces the accumulator's arrays with new ones (owned from now on). */
static void adopt(ml_health_acc *a, int64_t *slots, double *psum, int64_t *joint) {
    free(a->slots);
    free(a->psum);
    free(a->joint);
    a->slots = slots;
    a->psum = psum;
    a->joint = joint;
}

int ml_health_acc_resize(ml_health_acc *a, int num_experts) {
    if (num_experts < a->N)
        return ml_errorf("health: resize to %d experts, expected at least the current %d "
                         "(experts are only ever added)", num_experts, a->N);
    if (num_experts == a->N) return ML_OK;
    size_t n = (size_t)num_experts;
    int64_t *slots = ml_calloc(n, sizeof *slots);
    double *psum = ml_calloc(n, sizeof *psum);
    int64_t *joint = a->C ? ml_calloc((size_t)a->C * n, sizeof *joint) : NULL;
    if (!slots || !psum || (a->C && !joint)) {
        free(slots);
        free(psum);
        free(joint);
        return ml_error_prefix("health: resize to %d experts", num_experts);
    }
    memcpy(slots, a->slots, (size_t)a->N * sizeof *slots);
    memcpy(psum, a->psum, (size_t)a->N * sizeof *psum);
    for (int y = 0; y < a->C; y++)
        memcpy(joint + (size_t)y * n, a->joint + (size_t)y * (size_t)a->N, (size_t)a->N * sizeof *joint);
    adopt(a, slots, psum, joint);
    a->N = num_experts;
    return ML_OK;
}

int ml_health_acc_keep(ml_health_acc *a, const int *kept, int nkeep) {
    if (nkeep < 1 || nkeep > a->N) return ml_errorf("health: keep %d of %d experts", nkeep, a->N);
    for (int j = 0; j < nkeep; j++)
        if (kept[j] < 0 || kept[j] >= a->N || (j && kept[j] <= kept[j - 1]))
            return ml_errorf("health: the experts to keep must be ascending ids in 0..%d", a->N - 1);
    /* ascending, kept[j] >= j: compacting in place never overwrites a count still to move */
    for (int j = 0; j < nkeep; j++) {
        a->slots[j] = a->slots[kept[j]];
        a->psum[j] = a->psum[kept[j]];
    }
    for (int y = 0; y < a->C; y++) {
        int64_t *row = a->joint + (size_t)y * (size_t)a->N, *dst = a->joint + (size_t)y * (size_t)nkeep;
        for (int j = 0; j < nkeep; j++) dst[j] = row[kept[j]];
    }
    a->N = nkeep;
    if (a->N0 > nkeep) a->N0 = nkeep;
    return ML_OK;
}

void ml_health_acc_reset(ml_health_acc *a) {
    if (!a) return;
    memset(a->slots, 0, (size_t)a->N * sizeof *a->slots);
    memset(a->psum, 0, (size_t)a->N * sizeof *a->psum);
    if (a->joint) memset(a->joint, 0, (size_t)a->C * (size_t)a->N * sizeof *a->joint);
    a->ent_sum = 0;
    a->samples = a->dropped = a->labelled = 0;
    a->N0 = 0;
}

void ml_health_acc_add(ml_health_acc *a, const ml_routing_record *r, int n_dropped) {
    if (!a || !r || r->B <= 0 || r->N <= 0) return;
    if (r->N > a->N && ml_health_acc_resize(a, r->N) != ML_OK) {
        ml_log(ML_LOG_WARN, "%s; batch left out of routing health", ml_error());
        return;
    }
    const int N = r->N;
    if (!a->samples) a->N0 = a->N;
    for (int b = 0; b < r->B; b++) {
        const float *p = r->prob + (size_t)b * (size_t)N;
        /* Rows are meant to sum to 1 but carry float drift (the host accepts 1e-3): each row
           is normalised in double first, so H(p_b) and the mean row are those of the
           distributions, and I = H(mean) - mean H(p_b) stays exact near one-hot rows. */
        double s = 0;
        int top = 0;
        for (int e = 0; e < N; e++) {
            if (p[e] > 0) s += p[e]; /* negative noise ignored */
            if (p[e] > p[top]) top = e;
        }
        double h = 0, inv = s > 0 ? 1.0 / s : 0;
        for (int e = 0; e < N; e++) {
            double pe = p[e] > 0 ? p[e] * inv : 0;
            if (pe > 0) h -= pe * log(pe); /* 0·log 0 = 0 */
            a->psum[e] += pe;
        }
        a->ent_sum += h;
        if (a->C && r->label) {
            int32_t y = r->label[b];
            if (y >= 0 && y < a->C) {
                a->joint[(size_t)y * (size_t)a->N + (size_t)top]++;
                a->labelled++;
            }
        }
    }
    for (int k = 0; k < r->n_disp; k++) {
        int32_t e = r->disp_expert[k];
        if (e >= 0 && e < a->N) a->slots[e]++;
    }
    a->samples += r->B;
    a->dropped += n_dropped > 0 ? n_dropped : 0;
}

/* Entropy (nats) of a distribution given by non-negative weights w[0..n) summing to tot. */
static double entropy_w(const double *w, int n, double tot) {
    if (tot <= 0) return 0;
    double h = 0;
    for (int i = 0; i < n; i++)
        if (w[i] > 0) {
            double q = w[i] / tot;
            h -= q * log(q);
        }
    return h;
}

/* NMI(label; top-1 expert) with arithmetic-mean normalisation, as scikit-learn's default. */
static double nmi_from_joint(const ml_health_acc *a) {
    if (!a->C || a->labelled == 0) return NAN;
    const int C = a->C, N = a->N;
    double L = (double)a->labelled;
    double *py = calloc((size_t)C, sizeof *py), *pe = calloc((size_t)N, sizeof *pe);
    if (!py || !pe) {
        free(py);
        free(pe);
        return NAN;
    }
    for (int y = 0; y < C; y++)
        for (int e = 0; e < N; e++) {
            double c = (double)a->joint[(size_t)y * (size_t)N + (size_t)e];
            py[y] += c;
            pe[e] += c;
        }
    double hy = entropy_w(py, C, L), he = entropy_w(pe, N, L), mi = 0;
    for (int y = 0; y < C; y++)
        for (int e = 0; e < N; e++) {
            double c = (double)a->joint[(size_t)y * (size_t)N + (size_t)e];
            if (c > 0) mi += c / L * log(c * L / (py[y] * pe[e]));
        }
    free(py);
    free(pe);
    /* Both partitions trivial: identical, as scikit-learn says 1; one trivial: 0. */
    if (hy <= 0 && he <= 0) return 1.0;
    if (hy <= 0 || he <= 0) return 0.0;
    double nmi = 2.0 * mi / (hy + he);
    return nmi < 0 ? 0 : (nmi > 1 ? 1 : nmi);
}

void ml_health_free(ml_health *h) {
    if (!h) return;
    free(h->utilisation);
    free(h->importance);
    h->utilisation = h->importance = NULL;
}

int ml_health_compute(const ml_health_acc *a, const ml_health_cfg *cfg, ml_health *out) {
    if (!out) return ml_errorf("health: compute: out is NULL");
    memset(out, 0, sizeof *out);
    if (!a) return ml_errorf("health: compute: accumulator is NULL");
    ml_health_cfg c = cfg ? *cfg : ml_health_cfg_default();
    if (!(c.active_threshold >= 0) || !(c.collapse_active_fraction >= 0 && c.collapse_active_fraction <= 1) ||
        !(c.collapse_entropy >= 0 && c.collapse_entropy <= 1) || !(c.collapse_margin >= 0 && isfinite(c.collapse_margin)))
        return ml_errorf("health: config active_threshold=%g collapse_active_fraction=%g "
                         "collapse_entropy=%g collapse_margin=%g, expected >= 0, in [0, 1], in [0, 1] and >= 0",
                         c.active_threshold, c.collapse_active_fraction, c.collapse_entropy, c.collapse_margin);
    const int N = a->N;
    out->num_experts = N;
    out->utilisation = ml_calloc((size_t)N, sizeof(double));
    out->importance = ml_calloc((size_t)N, sizeof(double));
    if (!out->utilisation || !out->importance) {
        ml_health_free(out);
        return ml_error_prefix("health: compute");
    }
    int64_t slots = 0;
    for (int e = 0; e < N; e++) slots += a->slots[e];
    out->samples = a->samples;
    out->slots = slots;
    out->labelled = a->labelled;

    double umax = 0, var = 0, mean = 1.0 / N;
    for (int e = 0; e < N; e++) {
        double u = slots ? (double)a->slots[e] / (double)slots : 0;
        out->utilisation[e] = u;
        out->importance[e] = a->samples ? a->psum[e] / (double)a->samples : 0;
        if (u > umax) umax = u;
        var += (u - mean) * (u - mean);
        if (a->slots[e] == 0) out->dead++;
        if (slots && u >= c.active_threshold / N) out->active++;
    }
    out->cv = slots ? sqrt(var / N) / mean : NAN;
    int64_t routed = a->samples - a->dropped;
    out->slots_per_sample = routed > 0 ? (double)slots / (double)routed : 0;
    out->max_load_ratio = slots ? umax / mean - 1.0 : NAN;
    double hu = entropy_w(out->utilisation, N, slots ? 1.0 : 0.0);
    if (N == 1) out->marginal_entropy_norm = slots ? 1.0 : 0.0;
    else out->marginal_entropy_norm = hu / log((double)N);
    out->effective_experts = slots ? exp(hu) : 0;
    out->effective_norm = out->effective_experts / N;
    out->max_share = umax;
    out->kl_uniform = slots ? log((double)N) - hu : NAN;

    /* the rows were normalised as they came; the mean's total is 1 up to rounding */
    double imp_tot = 0;
    for (int e = 0; e < N; e++) imp_tot += out->importance[e];
    double h_mean = entropy_w(out->importance, N, imp_tot);
    out->mean_sample_entropy = a->samples ? a->ent_sum / (double)a->samples : 0;
    double mi = h_mean - out->mean_sample_entropy;
    out->mutual_info = a->samples && mi > 0 ? mi : 0; /* >= 0 by concavity; clip rounding */

    double lb = 0;
    for (int e = 0; e < N; e++) lb += out->utilisation[e] * out->importance[e];
    out->load_balance = N * lb;
    out->dropped_share = a->samples ? (double)a->dropped / (double)a->samples : 0;
    out->nmi_label = nmi_from_joint(a);
    /* With top-k routing every sample fills k different experts, so the load can never
       concentrate on fewer than k: total collapse (every sample on the same k experts) is
       effective_experts = k, active = k, H(u)/log N = log k / log N, which the two k = 1
       rules miss when k >= N/2 (N = 4, k = 2: active 2 is not < 2, entropy 0.5 is not
       < 0.5). The third rule measures against that floor: the load is spread over no more
       than k + margin experts' worth (k = slots per routed sample). Dense routing (k = N)
       cannot collapse in load and is never flagged by it. */
    double kbar = out->slots_per_sample;
    /* A layer that grew during the window is judged against the experts it had when the
       window began: the new ones could not yet have had their share. */
    const int Nw = a->N0 > 0 && a->N0 < N ? a->N0 : N;
    out->window_experts = Nw;
    double hnorm_w = Nw > 1 ? hu / log((double)Nw) : 1.0;
    out->collapsed = !slots || out->active < c.collapse_active_fraction * Nw || hnorm_w < c.collapse_entropy ||
                     (kbar + c.collapse_margin < Nw && out->effective_experts <= kbar + c.collapse_margin);
    return ML_OK;
}

/* --------------------------------------------------- checkpoint text (resume) */

/* "N C samples dropped labelled ent_sum slots[N] psum[N] joint[C*N] N0", doubles as C99 hex
 * floats (%a) so a resumed epoch accumulates from exactly the same values. */
char *ml_health_acc_to_text(const ml_health_acc *a) {
    size_t cap = 144 + (size_t)a->N * 56 + (size_t)a->C * (size_t)a->N * 22, len = 0;
    char *s = ml_calloc(cap, 1);
    if (!s) return NULL;
    len += (size_t)snprintf(s + len, cap - len, "%d %d %" PRId64 " %" PRId64 " %" PRId64 " %a", a->N, a->C,
                            a->samples, a->dropped, a->labelled, a->ent_sum);
    for (int i = 0; i < a->N; i++) len += (size_t)snprintf(s + len, cap - len, " %" PRId64, a->slots[i]);
    for (int i = 0; i < a->N; i++) len += (size_t)snprintf(s + len, cap - len, " %a", a->psum[i]);
    for (size_t i = 0; i < (size_t)a->C * (size_t)a->N; i++)
        len += (size_t)snprintf(s + len, cap - len, " %" PRId64, a->joint[i]);
    len += (size_t)snprintf(s + len, cap - len, " %d", a->N0);
    return s;
}

static int next_i64(const char **p, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(*p, &end, 10);
    if (end == *p || errno || x < 0 || (*end && *end != ' ')) return 0;
    *v = x;
    *p = end;
    return 1;
}

static int next_f64(const char **p, double *v) {
    char *end;
    double x = strtod(*p, &end);
    if (end == *p || !isfinite(x) || (*end && *end != ' ')) return 0;
    *v = x;
    *p = end;
    return 1;
}

int ml_health_acc_from_text(ml_health_acc *a, const char *text) {
    const char *p = text;
    int64_t n, c, samples, dropped, labelled;
    double ent;
    if (!next_i64(&p, &n) || !next_i64(&p, &c) || n != a->N || c != a->C)
        return ml_errorf("health state: expected %d experts and %d classes", a->N, a->C);
    if (!next_i64(&p, &samples) || !next_i64(&p, &dropped) || !next_i64(&p, &labelled) || !next_f64(&p, &ent))
        return ml_errorf("health state: bad counters");
    int64_t *slots = ml_calloc((size_t)a->N, sizeof *slots);
    double *psum = ml_calloc((size_t)a->N, sizeof *psum);
    int64_t *joint = a->C ? ml_calloc((size_t)a->C * (size_t)a->N, sizeof *joint) : NULL;
    int ok = slots && psum && (!a->C || joint);
    for (int i = 0; ok && i < a->N; i++) ok = next_i64(&p, &slots[i]);
    for (int i = 0; ok && i < a->N; i++) ok = next_f64(&p, &psum[i]);
    for (size_t i = 0; ok && i < (size_t)a->C * (size_t)a->N; i++) ok = next_i64(&p, &joint[i]);
    int64_t n0 = samples ? a->N : 0; /* older checkpoints do not have it */
    if (ok && *p) ok = next_i64(&p, &n0) && n0 <= a->N && (n0 > 0 || !samples);
    if (!ok || *p) {
        free(slots);
        free(psum);
        free(joint);
        return ml_errorf("health state: expected %d slot counts, %d sums and %d label counts", a->N, a->N, a->C * a->N);
    }
    adopt(a, slots, psum, joint);
    a->samples = samples;
    a->dropped = dropped;
    a->labelled = labelled;
    a->ent_sum = ent;
    a->N0 = (int)n0;
    return ML_OK;
}
