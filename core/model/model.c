/* model.c — an MoE network and its task loss (model.h). */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "nn/segloss.h"

/* soft IoU / Dice smoothing, in pixels (segloss.h): 1, as F3Net, PraNet and SINet-v2 */
#define ML_SEG_SMOOTH 1.0f

static const ml_net_ops *net_for(const char *type) {
    if (strcmp(type, "mlp") == 0) return &ml_net_mlp;
    if (strcmp(type, "srnn") == 0) return &ml_net_srnn;
    if (strcmp(type, "cod") == 0) return &ml_net_cod;
    return NULL;
}

ml_model *ml_model_new(const ml_model_cfg *cfg, const int *experts_per_layer) {
    ml_model *m = ml_calloc(1, sizeof *m);
    if (!m) return NULL;
    ml_params_init(&m->P, 1);
    ml_params_init(&m->S, 0);
    ml_rng_seed(&m->init_rng, cfg->seed);
    m->ops = net_for(cfg->type);
    if (!m->ops) {
        ml_errorf("model type '%s' is unknown, expected mlp, srnn or cod", cfg->type);
        goto fail;
    }
    ml_net_shape shape = {cfg->C, cfg->H, cfg->W, cfg->latent, cfg->hidden, cfg->channels, cfg->n_channels,
                          cfg->expert_kinds, cfg->n_kinds};
    m->net = m->ops->create(&shape, &m->P, &m->S);
    if (!m->net) goto fail;
    m->seg = m->ops->forward != NULL;
    m->D = cfg->latent;
    m->Din = cfg->C * cfg->H * cfg->W;
    m->Dout = m->seg ? m->ops->out_per_pixel * cfg->H * cfg->W : m->Din;
    m->w_bce = cfg->w_bce, m->w_iou = cfg->w_iou, m->w_dice = cfg->w_dice;
    if (m->seg) { /* the net says where its MoE layers sit and what they route */
        int C, HW;
        const ml_expert_kind *kind;
        const void *kcfg;
        for (m->L = 0; m->ops->spatial(m->net, m->L, &C, &HW, &kind, &kcfg) == 0;) m->L++;
    } else {
        m->L = cfg->moe_layers;
    }
    m->moe = ml_calloc((size_t)m->L, sizeof *m->moe);
    m->z = ml_calloc((size_t)m->L + 1, sizeof *m->z);
    m->dz = ml_calloc((size_t)m->L + 1, sizeof *m->dz);
    if (!m->moe || !m->z || !m->dz) goto fail;
    for (int l = 0; l < m->L; l++) {
        int n = experts_per_layer ? experts_per_layer[l] : cfg->experts;
        if (m->seg) {
            int C, HW;
            const ml_expert_kind *kind;
            const void *kcfg;
            m->ops->spatial(m->net, l, &C, &HW, &kind, &kcfg);
            m->moe[l] = ml_moe_new_spatial(l, C, HW, n, kind, kcfg, cfg->router, cfg->router_opt, &m->P, &m->S, cfg->seed);
        } else {
            m->moe[l] = ml_moe_new(l, m->D, cfg->expert_hidden, n, cfg->router, cfg->router_opt, &m->P, &m->S, cfg->seed);
        }
        if (!m->moe[l]) goto fail;
    }
    if (ml_params_commit(&m->P, &m->init_rng) || ml_params_commit(&m->S, &m->init_rng)) goto fail;
    return m;
fail:
    ml_model_free(m);
    return NULL;
}

static void free_acts(ml_model *m) {
    for (int l = 0; l <= m->L; l++) {
        if (m->z) free(m->z[l]);
        if (m->dz) free(m->dz[l]);
    }
    free(m->xhat);
    free(m->dxhat);
    m->xhat = m->dxhat = NULL;
    m->cap_B = 0;
}

void ml_model_free(ml_model *m) {
    if (!m) return;
    if (m->z && m->dz) free_acts(m);
    for (int l = 0; m->moe && l < m->L; l++) ml_moe_free(m->moe[l]);
    free(m->moe);
    free(m->z);
    free(m->dz);
    if (m->net) m->ops->free(m->net);
    ml_params_free(&m->P);
    ml_params_free(&m->S);
    free(m);
}

static int reserve(ml_model *m, int B) {
    if (B <= m->cap_B) return ML_OK;
    free_acts(m);
    for (int l = 0; !m->seg && l <= m->L; l++) {
        m->z[l] = ml_alloc_floats((size_t)B * m->D);
        m->dz[l] = ml_alloc_floats((size_t)B * m->D);
        if (!m->z[l] || !m->dz[l]) return ML_ERR;
    }
    m->xhat = ml_alloc_floats((size_t)B * m->Dout);
    m->dxhat = ml_alloc_floats((size_t)B * m->Dout);
    if (!m->xhat || !m->dxhat) return ML_ERR;
    m->cap_B = B;
    return m->ops->reserve(m->net, B);
}

int ml_model_forward_part(ml_model *m, const ml_comm *comm, const float *x, const float *target, int B,
                          int training, const int32_t *ids, const int32_t *labels, int num_classes) {
    if (comm && comm->size < 2) comm = NULL;
    const int off = comm ? ml_part_off(B, comm->size, comm->rank) : 0;
    const int Bl = comm ? ml_part_off(B, comm->size, comm->rank + 1) - off : B;
    if (reserve(m, Bl > 0 ? Bl : 1)) return ML_ERR;
    /* a net with batch norm sums its statistics over every process, each with its part: none
       may be empty (every process sees B and the size, so all of them stop here alike) */
    if (comm && (m->seg || m->ops->set_part) && B < comm->size)
        return ml_errorf("model: a batch of %d split over %d ranks leaves a rank no sample; hint: a "
                         "train.batch_size of at least the number of ranks", B, comm->size);
    for (int l = 0; l < m->L; l++)
        if (ml_moe_set_part(m->moe[l], comm, B)) return ML_ERR;
    if (m->ops->set_part) m->ops->set_part(m->net, comm, B);
    m->comm = comm;
    m->Bg = B;
    m->x = x + (size_t)off * m->Din;
    m->B = Bl;
    if (m->seg) {
        if (!target) return ml_errorf("model: a segmentation net needs a target mask");
        m->target = target + (size_t)off * m->Dout;
        if (m->ops->forward(m->net, m->moe, m->x, Bl, training, ids, labels, num_classes, m->xhat)) return ML_ERR;
        const int N = m->Dout;
        m->loss_bce = m->w_bce != 0 ? ml_bce_logits_forward(m->xhat, m->target, NULL, Bl, N) : 0;
        m->loss_iou = m->w_iou != 0 ? ml_soft_iou_forward(m->xhat, m->target, NULL, Bl, N, ML_SEG_SMOOTH) : 0;
        m->loss_dice = m->w_dice != 0 ? ml_soft_dice_forward(m->xhat, m->target, NULL, Bl, N, ML_SEG_SMOOTH) : 0;
    } else {
        m->target = m->x;
        if (Bl > 0 && m->ops->encode(m->net, m->x, Bl, training, m->z[0])) return ML_ERR;
        for (int l = 0; l < m->L; l++)
            if (ml_moe_forward(m->moe[l], m->z[l], m->z[l + 1], Bl, training, ids, labels, num_classes)) return ML_ERR;
        if (Bl > 0 && m->ops->decode(m->net, m->z[m->L], Bl, training, m->xhat)) return ML_ERR;
        m->task_loss = Bl > 0 ? ml_mse_forward(m->xhat, m->x, (size_t)Bl * m->Din) : 0;
    }
    if (comm) { /* the whole batch's losses: every part's mean, weighted by its samples */
        double v[4] = {m->task_loss * Bl, m->loss_bce * Bl, m->loss_iou * Bl, m->loss_dice * Bl};
        if (comm->sum_doubles(v, 4)) return ml_error_prefix("model: summing the task loss");
        m->task_loss = v[0] / B, m->loss_bce = v[1] / B, m->loss_iou = v[2] / B, m->loss_dice = v[3] / B;
    }
    if (m->seg) m->task_loss = m->w_bce * m->loss_bce + m->w_iou * m->loss_iou + m->w_dice * m->loss_dice;
    return ML_OK;
}

int ml_model_forward(ml_model *m, const float *x, const float *target, int B, int training, const int32_t *ids,
                     const int32_t *labels, int num_classes) {
    return ml_model_forward_part(m, NULL, x, target, B, training, ids, labels, num_classes);
}

/* A split batch: the gradients summed over the processes, then the routers' AFTER_BACKWARD. */
static int sum_grads(ml_model *m) {
    const ml_comm *comm = m->comm;
    /* the routers' gradients are already the whole batch's on every process (ml_moe_set_part):
       rank 0's alone go into the sum */
    if (comm->rank != 0)
        for (int l = 0; l < m->L; l++) {
            const ml_tensor_set *ps = &m->moe[l]->router.param;
            for (int i = 0; i < ps->n; i++) {
                const ml_tensor *t = &m->P.t[ps->handle[i]];
                memset(m->P.grad + t->off, 0, t->n * sizeof(float));
            }
        }
    if (comm->sum_floats(m->P.grad, m->P.total)) return ml_error_prefix("model: summing the gradients");
    for (int l = 0; l < m->L; l++)
        if (ml_moe_after_backward(m->moe[l])) return ML_ERR;
    return ML_OK;
}

int ml_model_backward(ml_model *m) {
    const int B = m->B;
    /* each part's loss is a mean over its own samples: weighted by its share of the batch,
       the parts' gradients sum to the whole batch's */
    const float scale = m->comm ? (float)B / (float)m->Bg : 1.0f;
    if (m->seg) {
        memset(m->dxhat, 0, (size_t)B * m->Dout * sizeof(float));
        const int N = m->Dout;
        if (m->w_bce != 0) ml_bce_logits_backward(m->dxhat, m->xhat, m->target, NULL, B, N, m->w_bce * scale);
        if (m->w_iou != 0) ml_soft_iou_backward(m->dxhat, m->xhat, m->target, NULL, B, N, ML_SEG_SMOOTH, m->w_iou * scale);
        if (m->w_dice != 0) ml_soft_dice_backward(m->dxhat, m->xhat, m->target, NULL, B, N, ML_SEG_SMOOTH, m->w_dice * scale);
        if (m->ops->backward(m->net, m->moe, m->dxhat)) return ML_ERR;
        return m->comm ? sum_grads(m) : ML_OK;
    }
    /* dxhat written, in blocks on all threads (3 MB at 64x64x3, batch 64) */
    if (B > 0) ml_mse_backward_set(m->dxhat, m->xhat, m->x, (size_t)B * m->Din, scale);
    for (int l = 0; l <= m->L; l++) memset(m->dz[l], 0, (size_t)B * m->D * sizeof(float));
    if (B > 0 && m->ops->decode_backward(m->net, m->dxhat, m->dz[m->L])) return ML_ERR;
    for (int l = m->L - 1; l >= 0; l--)
        if (ml_moe_backward(m->moe[l], m->dz[l + 1], m->dz[l])) return ML_ERR;
    if (B > 0 && m->ops->encode_backward(m->net, m->dz[0])) return ML_ERR;
    return m->comm ? sum_grads(m) : ML_OK;
}

int ml_model_grow_begin(ml_model *m, int layer, int n, const int *variant) {
    if (layer < 0 || layer >= m->L) return ml_errorf("add_experts: layer %d does not exist (model has %d)", layer + 1, m->L);
    if (n < 1) return ml_errorf("add_experts: n = %d, expected >= 1", n);
    return ml_moe_grow_declare(m->moe[layer], n, variant);
}

int ml_model_grow_commit(ml_model *m) {
    return ml_params_commit(&m->P, &m->init_rng) || ml_params_commit(&m->S, &m->init_rng) ? ML_ERR : ML_OK;
}

int ml_model_grow_end(ml_model *m, int layer, int old_n) {
    if (ml_model_grow_commit(m)) return ML_ERR;
    return ml_moe_grow_finish(m->moe[layer], old_n);
}

int ml_model_add_experts(ml_model *m, int layer, int n) {
    int old = layer >= 0 && layer < m->L ? m->moe[layer]->N : 0;
    if (ml_model_grow_begin(m, layer, n, NULL)) return ML_ERR;
    return ml_model_grow_end(m, layer, old);
}

int ml_model_remove_begin(ml_model *m, int layer, const int *kept, int nkeep) {
    if (layer < 0 || layer >= m->L)
        return ml_errorf("remove_experts: layer %d does not exist (model has %d)", layer + 1, m->L);
    return ml_moe_remove_declare(m->moe[layer], kept, nkeep);
}

int ml_model_remove_end(ml_model *m, int layer, const int *kept, int old_n) {
    if (ml_model_grow_commit(m)) return ML_ERR;
    return ml_moe_remove_finish(m->moe[layer], kept, old_n);
}

double ml_model_net_flops(const ml_model *m) { return m->ops->flops_per_sample(m->net); }
