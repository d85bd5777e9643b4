/* segrun.c — segmentation metrics, predictions and label routing in evaluation (segrun.h). */
#include "run/segrun.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"
#include "data/data.h"
#include "io/results.h"
#include "run/experiment.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ml_segrun_init(ml_experiment *e) {
    ml_segrun *s = &e->seg;
    memset(s, 0, sizeof *s);
    if (!e->model->seg) return ML_OK;
    ml_segm_opts o = ml_segm_opts_default();
    o.minmax = ml_config_bool(e->cfg, "seg.minmax", 0);
    s->predictions = (int)ml_config_int(e->cfg, "seg.predictions", 8);
    if (s->predictions < 0) s->predictions = 0;
    if (!(s->acc = ml_segm_acc_new(&o))) return ML_ERR;
    return ML_OK;
}

void ml_segrun_free(ml_experiment *e) {
    ml_segrun *s = &e->seg;
    ml_segm_acc_free(s->acc);
    free(s->prob);
    free(s->rows);
    free(s->slots);
    memset(s, 0, sizeof *s);
}

static void rows_put(ml_segrun *s, const char *t) {
    size_t n = strlen(t);
    if (s->rows_len + n + 1 > s->rows_cap) {
        size_t cap = (s->rows_len + n + 1) * 2;
        char *r = realloc(s->rows, cap);
        if (!r) return; /* the rows file then misses lines; the metrics do not depend on it */
        s->rows = r;
        s->rows_cap = cap;
    }
    memcpy(s->rows + s->rows_len, t, n + 1);
    s->rows_len += n;
}

int ml_segrun_begin(ml_experiment *e) {
    ml_segrun *s = &e->seg;
    if (!s->acc) return ML_OK;
    ml_segm_acc_reset(s->acc);
    s->seen = 0;
    s->rows_len = 0;
    if (s->rows) s->rows[0] = 0;
    /* label x expert dispatch counts, sized for the layers' experts now */
    int C = e->val.num_classes, N = 0;
    for (int l = 0; l < e->model->L; l++)
        if (e->model->moe[l]->N > N) N = e->model->moe[l]->N;
    free(s->slots);
    s->slots = NULL;
    s->slots_C = C, s->slots_N = N;
    if (C > 0 && !(s->slots = ml_calloc((size_t)e->model->L * C * N, sizeof *s->slots))) return ML_ERR;
    char dir[ML_PATH_MAX];
    if (e->res && s->predictions > 0 && (ml_results_path(e->res, "predictions", dir, sizeof dir) || ml_mkdir_p(dir)))
        return ML_ERR;
    return ML_OK;
}

static uint8_t byte(float v) { return (uint8_t)(v <= 0 ? 0 : v >= 1 ? 255 : (int)(v * 255.0f + 0.5f)); }

/* predictions/NNNN_<what>.png of one (c, H, W) map in [0, 1] */
static int write_png(const ml_experiment *e, int64_t i, const char *what, const float *map, int c, int H, int W) {
    char path[ML_PATH_MAX];
    if (ml_results_path(e->res, "predictions", path, sizeof path - 64)) return ML_ERR;
    size_t n = strlen(path);
    snprintf(path + n, sizeof path - n, "/%04" PRId64 "_%s.png", i, what);
    uint8_t *px = malloc((size_t)H * W * c);
    if (!px) return ml_errorf("out of memory");
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int k = 0; k < c; k++) px[((size_t)y * W + x) * c + k] = byte(map[((size_t)k * H + y) * W + x]);
    int rc = ml_image_write_png(path, W, H, c, px);
    free(px);
    return rc;
}

int ml_segrun_batch(ml_experiment *e, int B, const float *x, const float *mask, const int32_t *labels,
                    const int32_t *ids) {
    ml_segrun *s = &e->seg;
    if (!s->acc) return ML_OK;
    const ml_model *m = e->model;
    const int H = e->val.H, W = e->val.W, HW = H * W, C = e->val.C;
    float *p = realloc(s->prob, (size_t)B * HW * sizeof *p);
    if (!p) return ml_errorf("evaluate: out of memory");
    s->prob = p;
    for (size_t i = 0; i < (size_t)B * HW; i++) p[i] = 1.0f / (1.0f + expf(-m->xhat[i]));
    ml_segm *img = ml_calloc((size_t)B, sizeof *img);
    if (!img) return ML_ERR;
    if (ml_segm_acc_add_batch(s->acc, p, mask, B, H, W, img)) {
        free(img);
        return ml_error_prefix("evaluate: segmentation metrics");
    }
    /* the experts each layer dispatched each image to, and the label x expert slots */
    ml_strbuf row = {0};
    for (int b = 0; b < B; b++) {
        int64_t i = s->seen + b;
        const char *name = labels && e->val.class_names && labels[b] >= 0 && labels[b] < e->val.num_classes
                               ? e->val.class_names[labels[b]]
                               : "";
        ml_strbuf_clear(&row);
        ml_strbuf_printf(&row, "%d,%" PRId64 ",%d,%d,%s,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g", e->epoch, i, ids ? ids[b] : -1,
                         labels ? labels[b] : -1, name, img[b].iou, img[b].dice, img[b].mae, img[b].s_measure,
                         img[b].e_mean, img[b].e_adaptive, img[b].wfm);
        for (int l = 0; l < m->L; l++) {
            ml_routing_record r;
            ml_moe_record(m->moe[l], &r);
            ml_strbuf_puts(&row, ",");
            int first = 1;
            for (int t = 0; t < r.n_disp; t++)
                if (r.disp_sample[t] == b) {
                    ml_strbuf_printf(&row, "%s%d", first ? "" : ";", r.disp_expert[t]);
                    first = 0;
                }
        }
        ml_strbuf_puts(&row, "\n");
        if (row.buf) rows_put(s, row.buf);
        if (i < (int64_t)s->predictions && e->res) {
            const float *xb = x + (size_t)b * C * HW;
            if (write_png(e, i, "image", xb, C == 3 ? 3 : 1, H, W) ||
                write_png(e, i, "gt", mask + (size_t)b * HW, 1, H, W) || write_png(e, i, "pred", p + (size_t)b * HW, 1, H, W)) {
                ml_strbuf_free(&row);
                free(img);
                return ML_ERR;
            }
        }
    }
    ml_strbuf_free(&row);
    free(img);
    if (s->slots && labels)
        for (int l = 0; l < m->L; l++) {
            ml_routing_record r;
            ml_moe_record(m->moe[l], &r);
            for (int t = 0; t < r.n_disp; t++) {
                int y = labels[r.disp_sample[t]], x_ = r.disp_expert[t];
                if (y >= 0 && y < s->slots_C && x_ >= 0 && x_ < s->slots_N)
                    s->slots[((size_t)l * s->slots_C + y) * s->slots_N + x_]++;
            }
        }
    s->seen += B;
    return ML_OK;
}

int ml_segrun_end(ml_experiment *e) {
    ml_segrun *s = &e->seg;
    if (!s->acc) return ML_OK;
    if (ml_segm_compute(s->acc, &s->last)) return ml_error_prefix("evaluate: segmentation metrics");
    const ml_segm *g = &s->last;
    struct { const char *k; double v; } cols[] = {{"val_iou", g->iou},         {"val_dice", g->dice},
                                                  {"val_mae", g->mae},         {"val_s", g->s_measure},
                                                  {"val_e_mean", g->e_mean},   {"val_e_max", g->e_max},
                                                  {"val_e_adaptive", g->e_adaptive}, {"val_wf", g->wfm}};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
        if (ml_exp_log(e, cols[i].k, cols[i].v)) return ML_ERR;
    if (!e->res) return ML_OK;
    /* predictions/metrics.csv: every validation image of this evaluation */
    char dir[ML_PATH_MAX], path[ML_PATH_MAX + 32];
    if (ml_results_path(e->res, "predictions", dir, sizeof dir) || ml_mkdir_p(dir)) return ML_ERR;
    ml_strbuf b = {0};
    ml_strbuf_puts(&b, "epoch,image,index,label,label_name,iou,dice,mae,s,e_mean,e_adaptive,wf");
    for (int l = 0; l < e->model->L; l++) ml_strbuf_printf(&b, ",moe%d_experts", l + 1);
    ml_strbuf_puts(&b, "\n");
    if (s->rows) ml_strbuf_puts(&b, s->rows);
    if (b.oom) return ml_errorf("evaluate: out of memory writing predictions/metrics.csv");
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    int rc = ml_write_file_atomic(path, b.buf, b.len);
    ml_strbuf_free(&b);
    if (rc) return ML_ERR;
    /* routing_labels.csv: the share of each label's dispatch slots per expert */
    if (!s->slots) return ML_OK;
    ml_strbuf t = {0};
    for (int l = 0; l < e->model->L; l++)
        for (int y = 0; y < s->slots_C; y++) {
            const int64_t *row = s->slots + ((size_t)l * s->slots_C + y) * s->slots_N;
            int64_t tot = 0;
            for (int x = 0; x < s->slots_N; x++) tot += row[x];
            const char *name = e->val.class_names ? e->val.class_names[y] : "";
            for (int x = 0; x < e->model->moe[l]->N && x < s->slots_N; x++)
                ml_strbuf_printf(&t, "%d,val,%d,%d,%s,%d,%" PRId64 ",%.9g\n", e->epoch, l + 1, y, name, x, row[x],
                                 tot ? (double)row[x] / (double)tot : NAN);
        }
    if (t.oom) return ml_errorf("evaluate: out of memory writing routing_labels.csv");
    rc = t.buf ? ml_results_append(e->res, "routing_labels.csv",
                                   "epoch,split,layer,label,label_name,expert,slots,share\n", t.buf)
               : ML_OK;
    ml_strbuf_free(&t);
    return rc;
}
