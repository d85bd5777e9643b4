/*
 * data.c — the data module's front: choosing a source by name, the seeded train/validation
 * split, conversion to float with padding or resampling, the synthetic set, and the
 * deterministic batcher. File formats live in data_files.c and data_image.c, the
 * camouflage generator in camouflage.c.
 */
#include "data/data.h"
#include "data/camouflage.h"
#include "data/source.h"
#include "base/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Salts keep the split, the synthetic data and the batch order on separate RNG streams
 * even when they share one seed. */
#define SALT_SPLIT 0x5eed5a17c0ffee01ULL
#define SALT_SYNTH 0x5eed5a17c0ffee02ULL
#define SALT_BATCH 0x5eed5a17c0ffee03ULL
#define GOLDEN 0x9e3779b97f4a7c15ULL

enum { SYNTH_N = 4096, SYNTH_DIM = 64, SYNTH_CLASSES = 8, SYNTH_RANK = 8, MAX_SIZE = 4096 };

const char *ml_data_default_path(const char *dataset) {
    if (!dataset) return NULL;
    if (!strcmp(dataset, "fashion_mnist")) return "/usr/share/datasets/fashion-mnist";
    if (!strcmp(dataset, "cifar10")) return "data/cifar-10-batches-bin";
    return NULL;
}

void ml_dataset_free(ml_dataset *d) {
    if (!d) return;
    free(d->x);
    free(d->y);
    free(d->index);
    free(d->mask);
    if (d->class_names)
        for (int k = 0; k < d->num_classes; k++) free(d->class_names[k]);
    free(d->class_names);
    memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------- resampling --- */

/*
 * One axis of a separable resampler: output o reads taps (idx[o*T + t], wt[o*T + t]).
 * Enlarging: bilinear between the two nearest input centres (half-pixel aligned).
 * Shrinking: the average of the input cells covered by [o, o+1) * in/out, partial cells
 * weighted by their overlap — so a constant image stays constant and nothing aliases.
 */
static int taps_count(int in, int out) {
    return in <= out ? 2 : (int)ceil((double)in / out) + 1;
}

static void taps_build(int in, int out, int T, int32_t *idx, float *wt) {
    double scale = (double)in / out;
    for (int o = 0; o < out; o++) {
        int32_t *ix = idx + (size_t)o * T;
        float *w = wt + (size_t)o * T;
        for (int t = 0; t < T; t++) {
            ix[t] = 0;
            w[t] = 0;
        }
        if (in <= out) {
            double c = (o + 0.5) * scale - 0.5;
            if (c < 0) c = 0;
            if (c > in - 1) c = in - 1;
            int i0 = (int)c, i1 = i0 + 1 < in ? i0 + 1 : in - 1;
            double f = c - i0;
            ix[0] = i0;
            w[0] = (float)(1 - f);
            ix[1] = i1;
            w[1] = (float)f;
        } else {
            double a = o * scale, b = a + scale;
            int t = 0;
            for (int i = (int)a; i < in && i < b && t < T; i++, t++) {
                double lo = a > i ? a : i, hi = b < i + 1 ? b : i + 1;
                ix[t] = i;
                w[t] = (float)((hi - lo) / scale);
            }
        }
    }
}

void ml_data_resize(const float *src, int C, int H, int W, float *dst, int OH, int OW) {
    int TX = taps_count(W, OW), TY = taps_count(H, OH);
    /* small, bounded scratch: taps for both axes and one (H, OW) plane; on allocation
     * failure fall back to nearest neighbour rather than leave dst undefined */
    int32_t *ix = malloc((size_t)OW * TX * sizeof *ix), *iy = malloc((size_t)OH * TY * sizeof *iy);
    float *wx = malloc((size_t)OW * TX * sizeof *wx), *wy = malloc((size_t)OH * TY * sizeof *wy);
    float *tmp = malloc((size_t)H * OW * sizeof *tmp);
    if (!ix || !iy || !wx || !wy || !tmp) {
        for (int c = 0; c < C; c++)
            for (int y = 0; y < OH; y++)
                for (int x = 0; x < OW; x++)
                    dst[((size_t)c * OH + y) * OW + x] =
                        src[((size_t)c * H + (int)((int64_t)y * H / OH)) * W +
                            (int)((int64_t)x * W / OW)];
    } else {
        taps_build(W, OW, TX, ix, wx);
        taps_build(H, OH, TY, iy, wy);
        for (int c = 0; c < C; c++) {
            const float *s = src + (size_t)c * H * W;
            float *d = dst + (size_t)c * OH * OW;
            for (int y = 0; y < H; y++) /* rows: (H, W) → (H, OW) */
                for (int x = 0; x < OW; x++) {
                    float acc = 0;
                    for (int t = 0; t < TX; t++)
                        acc += wx[x * TX + t] * s[(size_t)y * W + ix[x * TX + t]];
                    tmp[(size_t)y * OW + x] = acc;
                }
            for (int y = 0; y < OH; y++) /* columns: (H, OW) → (OH, OW) */
                for (int x = 0; x < OW; x++) {
                    float acc = 0;
                    for (int t = 0; t < TY; t++)
                        acc += wy[y * TY + t] * tmp[(size_t)iy[y * TY + t] * OW + x];
                    d[(size_t)y * OW + x] = acc < 0 ? 0 : acc > 1 ? 1 : acc;
                }
        }
    }
    free(ix);
    free(iy);
    free(wx);
    free(wy);
    free(tmp);
}

/* Native (C, H, W) → (C, OH, OW): copy, centred zero padding, or resampling. dst is zeroed. */
static void fit_sample(const float *src, int C, int H, int W, float *dst, int OH, int OW) {
    if (H == OH && W == OW) {
        memcpy(dst, src, (size_t)C * H * W * sizeof *dst);
    } else if (H <= OH && W <= OW) {
        int top = (OH - H) / 2, left = (OW - W) / 2;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                memcpy(dst + ((size_t)c * OH + top + y) * OW + left, src + ((size_t)c * H + y) * W,
                       (size_t)W * sizeof *dst);
    } else {
        ml_data_resize(src, C, H, W, dst, OH, OW);
    }
}

/* -------------------------------------------------------------------- synthetic --- */

/*
 * Class k's samples are sigmoid(b + B (m_k + 0.35 e) + 0.05 e'), with B a random (D, r)
 * basis, m_k a random centre in r = min(8, D) dimensions and e, e' standard normal: a
 * low-dimensional, clustered manifold an autoencoder learns quickly. Sample i has class
 * i mod K, so classes are balanced.
 */
static int synth_make(ml_data_src *s, const ml_data_cfg *cfg) {
    memset(s, 0, sizeof *s);
    int64_t n = cfg->synthetic_samples ? cfg->synthetic_samples : SYNTH_N;
    int D = cfg->synthetic_dim ? cfg->synthetic_dim : SYNTH_DIM;
    int K = cfg->synthetic_classes ? cfg->synthetic_classes : SYNTH_CLASSES;
    if (n < 1 || n > INT32_MAX)
        return ml_errorf("synthetic: synthetic_samples %lld, expected 1..%d", (long long)n,
                         INT32_MAX);
    if (D < 1 || D > (1 << 20))
        return ml_errorf("synthetic: synthetic_dim %d, expected 1..%d", D, 1 << 20);
    if (K < 1 || K > 65536)
        return ml_errorf("synthetic: synthetic_classes %d, expected 1..65536", K);
    int r = D < SYNTH_RANK ? D : SYNTH_RANK;
    ml_rng rng;
    ml_rng_seed(&rng, cfg->seed ^ SALT_SYNTH);
    double *basis = ml_calloc((size_t)D * r, sizeof *basis);   /* (D, r) */
    double *centre = ml_calloc((size_t)K * r, sizeof *centre); /* (K, r) */
    double *bias = ml_calloc((size_t)D, sizeof *bias);         /* (D) */
    double *z = ml_calloc((size_t)r, sizeof *z);               /* (r) */
    s->f32 = ml_alloc_floats((size_t)n * D);
    s->y = ml_calloc((size_t)n, sizeof *s->y);
    if (!basis || !centre || !bias || !z || !s->f32 || !s->y) {
        free(basis);
        free(centre);
        free(bias);
        free(z);
        ml_data_src_free(s);
        return ML_ERR;
    }
    double bscale = 1.5 / sqrt((double)r);
    for (size_t i = 0; i < (size_t)D * r; i++) basis[i] = bscale * ml_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)K * r; i++) centre[i] = ml_rng_normal(&rng);
    for (int d = 0; d < D; d++) bias[d] = 0.5 * ml_rng_normal(&rng);
    for (int64_t i = 0; i < n; i++) {
        int k = (int)(i % K);
        for (int j = 0; j < r; j++) z[j] = centre[(size_t)k * r + j] + 0.35 * ml_rng_normal(&rng);
        float *x = s->f32 + (size_t)i * D;
        for (int d = 0; d < D; d++) {
            double a = bias[d] + 0.05 * ml_rng_normal(&rng);
            for (int j = 0; j < r; j++) a += basis[(size_t)d * r + j] * z[j];
            x[d] = (float)(1.0 / (1.0 + exp(-a)));
        }
        s->y[i] = k;
    }
    free(basis);
    free(centre);
    free(bias);
    free(z);
    s->n = n;
    s->C = 1;
    s->H = 1;
    s->W = D;
    s->num_classes = K;
    return ML_OK;
}

/* ------------------------------------------------------------------------ split --- */

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Fills d with the source samples sel[0..m) at shape (C, OH, OW), with their masks. */
static int build_split(const ml_data_src *s, const int32_t *sel, int64_t m, int OH, int OW,
                       const char *name, ml_dataset *d) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    size_t in_sz = (size_t)s->C * s->H * s->W, out_sz = (size_t)s->C * OH * OW;
    size_t mask_sz = (size_t)OH * OW;
    d->n = m;
    d->C = s->C;
    d->H = OH;
    d->W = OW;
    d->num_classes = s->num_classes;
    d->x = ml_alloc_floats((size_t)m * out_sz);
    d->index = ml_calloc((size_t)m, sizeof *d->index);
    if (s->y) d->y = ml_calloc((size_t)m, sizeof *d->y);
    if (s->has_mask) d->mask = ml_alloc_floats(m * mask_sz > 0 ? m * mask_sz : 1);
    if (!d->x || !d->index || (s->y && !d->y) || (s->has_mask && !d->mask)) goto fail;
    if (s->class_names) {
        if (!(d->class_names = ml_calloc((size_t)s->num_classes, sizeof *d->class_names)))
            goto fail;
        for (int k = 0; k < s->num_classes; k++)
            if (!(d->class_names[k] = ml_strdup(s->class_names[k]))) goto fail;
    }
    for (int64_t i = 0; i < m; i++) {
        d->index[i] = sel[i];
        if (d->y) d->y[i] = s->y[sel[i]];
    }
    if (s->read) {
        /* readers deliver the final size (they resize image and mask together) */
        if (OH != s->H || OW != s->W) {
            ml_errorf("%s: internal: a reader of %d x %d asked for %d x %d", name, s->H, s->W,
                      OH, OW);
            goto fail;
        }
        /* decoding or generating dominates: in parallel, each sample into its own slot
         * (so the result does not depend on the thread count); the error reported is the
         * first failing sample's, whatever the thread timing */
        int64_t bad = m;
#pragma omp parallel for schedule(dynamic, 16)
        for (int64_t i = 0; i < m; i++) {
            float *mk = d->mask ? d->mask + (size_t)i * mask_sz : NULL;
            if (s->read(s, sel[i], d->x + (size_t)i * out_sz, mk, 0) != ML_OK) {
#pragma omp critical(ml_data_bad)
                if (i < bad) bad = i;
            }
        }
        if (bad < m) {
            float *mk = d->mask ? d->mask + (size_t)bad * mask_sz : NULL;
            if (s->read(s, sel[bad], d->x + (size_t)bad * out_sz, mk, 1) == ML_OK)
                ml_errorf("%s: reading failed, then succeeded on retry (is the file being "
                          "written?)",
                          s->files ? s->files[sel[bad]] : name);
            goto fail;
        }
        return ML_OK;
    }
    int same = OH == s->H && OW == s->W;
    float *tmp = same ? NULL : ml_alloc_floats(in_sz);
    if (!same && !tmp) goto fail;
    for (int64_t i = 0; i < m; i++) {
        float *dst = d->x + (size_t)i * out_sz, *nat = same ? dst : tmp;
        if (s->u8) {
            const uint8_t *p = s->u8 + (size_t)sel[i] * in_sz;
            for (size_t k = 0; k < in_sz; k++) nat[k] = p[k] * (1.0f / 255.0f);
        } else {
            memcpy(nat, s->f32 + (size_t)sel[i] * in_sz, in_sz * sizeof *nat);
        }
        if (!same) fit_sample(tmp, s->C, s->H, s->W, dst, OH, OW);
    }
    free(tmp);
    return ML_OK;
fail:
    ml_dataset_free(d);
    return ML_ERR;
}

/* A seeded choice of k of n samples (all when k == n), ascending; owned, free(). */
static int32_t *pick(int64_t n, int64_t k, uint64_t seed) {
    int32_t *perm = ml_calloc((size_t)(n > 0 ? n : 1), sizeof *perm);
    if (!perm) return NULL;
    for (int64_t i = 0; i < n; i++) perm[i] = (int32_t)i;
    if (k < n) {
        ml_rng rng;
        ml_rng_seed(&rng, seed ^ SALT_SPLIT);
        ml_rng_shuffle(&rng, perm, (size_t)n);
        qsort(perm, (size_t)k, sizeof *perm, cmp_i32);
    }
    return perm;
}

/* The camouflage generator's source: the config checked, n from the counts. */
static int camo_source(ml_data_src *s, const ml_data_cfg *cfg) {
    memset(s, 0, sizeof *s);
    ml_camo_cfg cc;
    if (ml_camo_cfg_init(&cc, cfg->seed, cfg->image_size, cfg->difficulty, cfg->habitats,
                         cfg->n_habitats))
        return ML_ERR;
    int64_t n = cfg->camouflage_samples;
    if (n == 0) {
        if (cfg->train_images == 0)
            return ml_errorf("camouflage: train_images is 0 (\"all available\"), but a "
                             "generator has no natural size; hint: set data.train_images "
                             "(and data.val_images), or data.camouflage_samples");
        n = cfg->train_images + cfg->val_images;
    }
    return ml_data_src_camouflage(s, &cc, n);
}

int ml_data_load(const ml_data_cfg *cfg, ml_dataset *train, ml_dataset *val) {
    if (train) memset(train, 0, sizeof *train);
    if (val) memset(val, 0, sizeof *val);
    if (!cfg || !train) return ml_errorf("data: load needs a config and a train dataset");
    const char *ds = cfg->dataset ? cfg->dataset : "";
    const char *path = cfg->path && *cfg->path ? cfg->path : ml_data_default_path(ds);
    const char *vpath = cfg->val_path && *cfg->val_path ? cfg->val_path : NULL;
    if (cfg->val_images < 0 || cfg->train_images < 0)
        return ml_errorf("%s: train_images %lld, val_images %lld, expected >= 0", ds,
                         (long long)cfg->train_images, (long long)cfg->val_images);
    if (cfg->image_size < 0 || cfg->image_size > MAX_SIZE)
        return ml_errorf("%s: image_size %d, expected 0 (native) or 1..%d", ds,
                         cfg->image_size, MAX_SIZE);
    if (vpath && strcmp(ds, "image_mask_folder") != 0)
        return ml_errorf("%s: val_path is set, but only image_mask_folder reads a separate "
                         "validation folder (the others hold val_images out of their files)",
                         ds);
    if (cfg->camouflage_samples < 0)
        return ml_errorf("%s: camouflage_samples %lld, expected >= 0", ds,
                         (long long)cfg->camouflage_samples);
    ml_data_src src, vsrc;
    memset(&vsrc, 0, sizeof vsrc);
    int rc, is_synth = 0;
    if (!strcmp(ds, "fashion_mnist")) {
        rc = ml_data_src_idx(&src, path);
    } else if (!strcmp(ds, "cifar10")) {
        rc = ml_data_src_cifar(&src, path);
    } else if (!strcmp(ds, "image_folder")) {
        if (!path) return ml_errorf("image_folder: data.path is required (the directory "
                                    "holding one subdirectory per class)");
        rc = ml_data_src_folder(&src, path, cfg->channels ? cfg->channels : 3, cfg->image_size);
    } else if (!strcmp(ds, "image_mask_folder")) {
        if (!path) return ml_errorf("image_mask_folder: data.path is required (the directory "
                                    "holding Imgs/ and GT/)");
        rc = ml_data_src_mask_folder(&src, vpath ? &vsrc : NULL, path, vpath,
                                     cfg->channels ? cfg->channels : 3, cfg->image_size);
    } else if (!strcmp(ds, "camouflage")) {
        rc = camo_source(&src, cfg);
        path = "(generated)";
    } else if (!strcmp(ds, "synthetic")) {
        rc = synth_make(&src, cfg);
        is_synth = 1;
        path = "(generated)";
    } else {
        return ml_errorf("data: unknown dataset '%s', expected fashion_mnist, cifar10, "
                         "image_folder, image_mask_folder, camouflage or synthetic",
                         ds);
    }
    if (rc != ML_OK) return rc;

    int S = is_synth ? 0 : cfg->image_size;
    int OH = S ? S : src.H, OW = S ? S : src.W;
    char name[64];
    if (vpath) {
        /* two folders: train from path, validation from val_path, neither held out of
         * the other */
        if (cfg->train_images > src.n) {
            ml_errorf("%s: train_images %lld exceed the %lld images in %s", ds,
                      (long long)cfg->train_images, (long long)src.n, path);
            ml_data_src_free(&src);
            ml_data_src_free(&vsrc);
            return ML_ERR;
        }
        int64_t ntrain = cfg->train_images ? cfg->train_images : src.n;
        int64_t nval = cfg->val_images < vsrc.n ? cfg->val_images : vsrc.n;
        int32_t *tsel = pick(src.n, ntrain, cfg->seed), *vsel = pick(vsrc.n, nval, cfg->seed);
        rc = tsel && vsel ? ML_OK : ML_ERR;
        snprintf(name, sizeof name, "%s/train", ds);
        if (rc == ML_OK) rc = build_split(&src, tsel, ntrain, OH, OW, name, train);
        if (rc == ML_OK && val) {
            snprintf(name, sizeof name, "%s/val", ds);
            rc = build_split(&vsrc, vsel, nval, OH, OW, name, val);
            if (rc != ML_OK) ml_dataset_free(train);
        }
        free(tsel);
        free(vsel);
        ml_data_src_free(&src);
        ml_data_src_free(&vsrc);
        return rc;
    }

    int64_t n = src.n, nval = cfg->val_images;
    if (nval >= n) {
        ml_data_src_free(&src);
        return ml_errorf("%s: val_images %lld leaves no training samples of the %lld in %s", ds,
                         (long long)nval, (long long)n, path);
    }
    if (cfg->train_images > n - nval) {
        ml_data_src_free(&src);
        return ml_errorf("%s: train_images %lld + val_images %lld exceed the %lld samples in "
                         "%s",
                         ds, (long long)cfg->train_images, (long long)nval, (long long)n, path);
    }
    int64_t ntrain = cfg->train_images ? cfg->train_images : n - nval;
    int32_t *perm = ml_calloc((size_t)n, sizeof *perm);
    if (!perm) {
        ml_data_src_free(&src);
        return ML_ERR;
    }
    for (int64_t i = 0; i < n; i++) perm[i] = (int32_t)i;
    ml_rng rng;
    ml_rng_seed(&rng, cfg->seed ^ SALT_SPLIT);
    ml_rng_shuffle(&rng, perm, (size_t)n);
    /* each split in file order: reproducible listings, and sequential reads stay local */
    qsort(perm, (size_t)nval, sizeof *perm, cmp_i32);
    qsort(perm + nval, (size_t)ntrain, sizeof *perm, cmp_i32);

    snprintf(name, sizeof name, "%s/train", ds);
    rc = build_split(&src, perm + nval, ntrain, OH, OW, name, train);
    if (rc == ML_OK && val) {
        snprintf(name, sizeof name, "%s/val", ds);
        rc = build_split(&src, perm, nval, OH, OW, name, val);
        if (rc != ML_OK) ml_dataset_free(train);
    }
    free(perm);
    ml_data_src_free(&src);
    return rc;
}

/* ---------------------------------------------------------------------- batcher --- */

struct ml_batcher {
    const ml_dataset *d; /* borrowed */
    int batch_size;
    int shuffle;
    uint64_t seed;
    int epoch;
    int64_t pos;     /* samples served this epoch */
    int32_t *order;  /* (n) dataset rows in this epoch's order */
};

ml_batcher *ml_batcher_new(const ml_dataset *d, int batch_size, int shuffle, uint64_t seed) {
    if (!d) {
        ml_errorf("batcher: no dataset");
        return NULL;
    }
    if (batch_size < 1) {
        ml_errorf("batcher: batch_size %d, expected >= 1", batch_size);
        return NULL;
    }
    ml_batcher *b = ml_calloc(1, sizeof *b);
    if (!b) return NULL;
    b->order = ml_calloc((size_t)(d->n > 0 ? d->n : 1), sizeof *b->order);
    if (!b->order) {
        free(b);
        return NULL;
    }
    b->d = d;
    b->batch_size = batch_size;
    b->shuffle = shuffle;
    b->seed = seed;
    ml_batcher_begin_epoch(b, 1);
    return b;
}

void ml_batcher_free(ml_batcher *b) {
    if (!b) return;
    free(b->order);
    free(b);
}

void ml_batcher_begin_epoch(ml_batcher *b, int epoch) {
    int64_t n = b->d->n;
    for (int64_t i = 0; i < n; i++) b->order[i] = (int32_t)i;
    if (b->shuffle && n > 1) {
        ml_rng rng;
        ml_rng_seed(&rng, (b->seed ^ SALT_BATCH) * GOLDEN + (uint64_t)(uint32_t)epoch);
        ml_rng_shuffle(&rng, b->order, (size_t)n);
    }
    b->epoch = epoch;
    b->pos = 0;
}

int ml_batcher_next_masks(ml_batcher *b, float *x, float *mask, int32_t *y, int32_t *ids) {
    const ml_dataset *d = b->d;
    int64_t left = d->n - b->pos;
    int m = left < b->batch_size ? (int)left : b->batch_size;
    if (m <= 0) return 0;
    size_t sz = (size_t)d->C * d->H * d->W, msz = (size_t)d->H * d->W;
    for (int i = 0; i < m; i++) {
        int32_t j = b->order[b->pos + i];
        if (x) memcpy(x + (size_t)i * sz, d->x + (size_t)j * sz, sz * sizeof *x);
        if (mask && d->mask) memcpy(mask + (size_t)i * msz, d->mask + (size_t)j * msz, msz * sizeof *mask);
        else if (mask) memset(mask + (size_t)i * msz, 0, msz * sizeof *mask);
        if (y) y[i] = d->y ? d->y[j] : 0;
        if (ids) ids[i] = d->index ? d->index[j] : j;
    }
    b->pos += m;
    return m;
}

int ml_batcher_next(ml_batcher *b, float *x, int32_t *y, int32_t *ids) {
    return ml_batcher_next_masks(b, x, NULL, y, ids);
}

int64_t ml_batcher_position(const ml_batcher *b) { return b->pos; }

void ml_batcher_seek(ml_batcher *b, int64_t position) {
    b->pos = position < 0 ? 0 : position > b->d->n ? b->d->n : position;
}

int64_t ml_batcher_batches(const ml_batcher *b) {
    return (b->d->n + b->batch_size - 1) / b->batch_size;
}

int ml_batcher_epoch(const ml_batcher *b) { return b->epoch; }
