/*
 * check_camouflage.c — segmentation data: the synthetic camouflage generator (determinism
 * by seed and sample, independent of threads; masks; balanced habitats whose textures
 * differ measurably; difficulty shrinking the object-vs-background gap monotonically and
 * moving nothing else; speed), masks through the split and the batcher, and real COD
 * folders (image_mask_folder) on the fixture in tests/fixtures/cod/: shapes, mask values,
 * resizing, labels, and every broken case's error naming its file. Also writes a contact
 * sheet of generated images and masks, <build>/camouflage/sheet.png, for a human to look at.
 */
#include "testutil.h"
#include "base/common.h"
#include "data/camouflage.h"
#include "data/data.h"

#include <omp.h>
#include <sys/stat.h>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#define COD "tests/fixtures/cod"

/* ------------------------------------------------------------------ helpers --- */

static ml_camo_cfg camo(uint64_t seed, int size, double d) {
    ml_camo_cfg c;
    ck_assert_msg(ml_camo_cfg_init(&c, seed, size, d, NULL, 0) == ML_OK, "%s", ml_error());
    return c;
}

/* Statistics of the pixels of one region (mask == want) of a (3, S, S) image: mean
 * colour, standard deviation of luminance and high-frequency energy (mean absolute
 * difference of luminance to the right and lower neighbours, over pixels whose neighbours
 * are in the same region, so the outline does not count). */
typedef struct region {
    double mean[3], std, hf;
    int64_t n;
} region;

static float lum(const float *rgb, size_t plane, size_t p) {
    return 0.299f * rgb[p] + 0.587f * rgb[plane + p] + 0.114f * rgb[2 * plane + p];
}

static void region_stats(const float *rgb, const float *mask, int S, int want, region *r) {
    size_t plane = (size_t)S * S;
    double s[3] = {0}, l = 0, l2 = 0, hf = 0;
    int64_t n = 0, nh = 0;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            size_t p = (size_t)y * S + x;
            if (mask && (mask[p] != 0) != want) continue;
            for (int c = 0; c < 3; c++) s[c] += rgb[c * plane + p];
            double v = lum(rgb, plane, p);
            l += v;
            l2 += v * v;
            n++;
            if (x + 1 < S && y + 1 < S &&
                (!mask || ((mask[p + 1] != 0) == want && (mask[p + S] != 0) == want))) {
                hf += fabs(v - lum(rgb, plane, p + 1)) + fabs(v - lum(rgb, plane, p + S));
                nh++;
            }
        }
    for (int c = 0; c < 3; c++) r->mean[c] = n ? s[c] / n : 0;
    double m = n ? l / n : 0;
    r->std = n ? sqrt(fmax(0, l2 / n - m * m)) : 0;
    r->hf = nh ? hf / nh : 0;
    r->n = n;
}

/* How far the object's statistics are from the background's. */
static double region_gap(const region *o, const region *b) {
    return fabs(o->mean[0] - b->mean[0]) + fabs(o->mean[1] - b->mean[1]) +
           fabs(o->mean[2] - b->mean[2]) + fabs(o->std - b->std) + fabs(o->hf - b->hf);
}

/* ----------------------------------------------------------------- generator --- */

START_TEST(t_camo_deterministic) {
    enum { S = 48, N = 30 };
    size_t isz = 3 * S * S, msz = S * S;
    float *a = malloc(N * isz * sizeof *a), *am = malloc(N * msz * sizeof *am);
    float *b = malloc(isz * sizeof *b), *bm = malloc(msz * sizeof *bm);
    ml_camo_cfg c = camo(5, S, 0.5);
    for (int i = 0; i < N; i++) ck_assert_int_eq(ml_camo_sample(&c, i, a + i * isz, am + i * msz), i % 3);
    /* any sample alone, in any order, gives the same bytes */
    for (int i = N - 1; i >= 0; i -= 7) {
        ck_assert_int_eq(ml_camo_sample(&c, i, b, bm), i % 3);
        ck_assert_mem_eq(b, a + i * isz, isz * sizeof *b);
        ck_assert_mem_eq(bm, am + i * msz, msz * sizeof *bm);
    }
    /* another seed or another index: another image */
    ml_camo_cfg c2 = camo(6, S, 0.5);
    ml_camo_sample(&c2, 4, b, bm);
    ck_assert_int_ne(memcmp(b, a + 4 * isz, isz * sizeof *b), 0);
    ck_assert_int_ne(memcmp(a + 4 * isz, a + 7 * isz, isz * sizeof *b), 0);
    free(a);
    free(am);
    free(b);
    free(bm);

    /* a loaded dataset does not depend on the thread count */
    ml_data_cfg dc = {.dataset = "camouflage", .train_images = 90, .val_images = 30,
                      .image_size = S, .difficulty = 0.7, .seed = 11};
    ml_dataset t1, v1, t2, v2;
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    ck_assert_msg(ml_data_load(&dc, &t1, &v1) == ML_OK, "%s", ml_error());
    omp_set_num_threads(4);
    ck_assert_msg(ml_data_load(&dc, &t2, &v2) == ML_OK, "%s", ml_error());
    omp_set_num_threads(threads);
    ck_assert_mem_eq(t1.x, t2.x, (size_t)t1.n * isz * sizeof(float));
    ck_assert_mem_eq(t1.mask, t2.mask, (size_t)t1.n * msz * sizeof(float));
    ck_assert_mem_eq(v1.x, v2.x, (size_t)v1.n * isz * sizeof(float));
    ck_assert_mem_eq(v1.mask, v2.mask, (size_t)v1.n * msz * sizeof(float));
    ml_dataset_free(&t1);
    ml_dataset_free(&v1);
    ml_dataset_free(&t2);
    ml_dataset_free(&v2);
}
END_TEST

START_TEST(t_camo_masks_and_values) {
    enum { S = 64, N = 600 };
    float *x = malloc(3 * S * S * sizeof *x), *m = malloc(S * S * sizeof *m);
    ml_camo_cfg c = camo(1, S, 0.5);
    int64_t lo = S * S, hi = 0;
    for (int i = 0; i < N; i++) {
        ml_camo_sample(&c, i, x, m);
        int64_t on = 0;
        for (int p = 0; p < S * S; p++) {
            ck_assert(m[p] == 0.0f || m[p] == 1.0f);
            on += m[p] == 1.0f;
        }
        /* never empty, never the whole image: 2% .. 45% */
        ck_assert_int_ge(on, (int64_t)ceil(0.02 * S * S));
        ck_assert_int_le(on, (int64_t)(0.45 * S * S));
        lo = on < lo ? on : lo;
        hi = on > hi ? on : hi;
        for (int p = 0; p < 3 * S * S; p++) ck_assert(x[p] >= 0.0f && x[p] <= 1.0f);
    }
    fprintf(stderr, "check_camouflage: object area %.1f%% .. %.1f%% of the image over %d samples\n",
            100.0 * lo / (S * S), 100.0 * hi / (S * S), N);
    /* sizes vary: some small objects, some large */
    ck_assert_int_lt(lo, S * S / 16);
    ck_assert_int_gt(hi, S * S / 6);
    /* the mask may be NULL; no sample -1, no sample of a config not made by init */
    ck_assert_int_eq(ml_camo_sample(&c, 5, x, NULL), 2);
    ck_assert_int_eq(ml_camo_sample(&c, -1, x, m), -1);
    ml_camo_cfg zero = {0};
    ck_assert_int_eq(ml_camo_sample(&zero, 0, x, m), -1);
    free(x);
    free(m);
}
END_TEST

START_TEST(t_camo_habitats_differ) {
    enum { S = 64, N = 450 };
    float *x = malloc(3 * S * S * sizeof *x);
    ml_camo_cfg c = camo(2, S, 0.5);
    double f[3][5] = {{0}}; /* per habitat: mean R, G, B, std, hf */
    static double feat[N][5];
    for (int i = 0; i < N; i++) {
        ml_camo_sample(&c, i, x, NULL);
        region r;
        region_stats(x, NULL, S, 0, &r);
        double v[5] = {r.mean[0], r.mean[1], r.mean[2], r.std, r.hf};
        for (int k = 0; k < 5; k++) {
            feat[i][k] = v[k];
            f[i % 3][k] += v[k] / (N / 3);
        }
    }
    for (int h = 0; h < 3; h++)
        fprintf(stderr, "check_camouflage: %-10s mean RGB %.3f %.3f %.3f, luminance sd %.3f, "
                        "high-frequency energy %.4f\n",
                ml_camo_habitat_name(h), f[h][0], f[h][1], f[h][2], f[h][3], f[h][4]);
    const double *fo = f[ML_CAMO_FOLIAGE], *sa = f[ML_CAMO_SAND], *uw = f[ML_CAMO_UNDERWATER];
    /* foliage: green over blue, dark; sand: warm (R > G > B) and bright; underwater: blue
     * and green over red */
    ck_assert(fo[1] > 1.5 * fo[2] && fo[0] > fo[2]);
    ck_assert(sa[0] > sa[1] && sa[1] > sa[2] && sa[0] > 0.6);
    ck_assert(uw[2] > 2 * uw[0] && uw[1] > 2 * uw[0]);
    ck_assert(sa[0] + sa[1] + sa[2] > 1.5 * (fo[0] + fo[1] + fo[2]));
    /* texture: the caustics' thin lines carry the most high-frequency energy, foliage's
     * leaf edges more than sand's smooth dunes and ripples */
    ck_assert(uw[4] > 1.8 * fo[4]);
    ck_assert(fo[4] > 1.2 * sa[4]);
    /* measurably different: the nearest habitat mean (features scaled by their spread
     * across habitats) recovers the habitat of almost every image */
    double scale[5];
    for (int k = 0; k < 5; k++) {
        double m = (fo[k] + sa[k] + uw[k]) / 3, v = 0;
        for (int h = 0; h < 3; h++) v += (f[h][k] - m) * (f[h][k] - m);
        scale[k] = sqrt(v / 3) + 1e-9;
    }
    int right = 0;
    for (int i = 0; i < N; i++) {
        int best = -1;
        double bd = INFINITY;
        for (int h = 0; h < 3; h++) {
            double d = 0;
            for (int k = 0; k < 5; k++) d += pow((feat[i][k] - f[h][k]) / scale[k], 2);
            if (d < bd) bd = d, best = h;
        }
        right += best == i % 3;
    }
    fprintf(stderr, "check_camouflage: nearest habitat mean classifies %d of %d images\n", right, N);
    ck_assert_int_ge(right, N * 97 / 100);
    free(x);
}
END_TEST

/* Mean object-vs-background gap over n samples at difficulty d. */
static double mean_gap(double d, int n, int S, int habitat_only) {
    float *x = malloc(3 * (size_t)S * S * sizeof *x), *m = malloc((size_t)S * S * sizeof *m);
    ml_camo_cfg c = camo(3, S, d);
    double sum = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (habitat_only >= 0 && i % 3 != habitat_only) continue;
        ml_camo_sample(&c, i, x, m);
        region o, b;
        region_stats(x, m, S, 1, &o);
        region_stats(x, m, S, 0, &b);
        sum += region_gap(&o, &b);
        k++;
    }
    free(x);
    free(m);
    return sum / k;
}

START_TEST(t_camo_difficulty_monotone) {
    const double ds[] = {0, 0.25, 0.5, 0.75, 1};
    for (int h = -1; h < 3; h++) {
        double g[5];
        for (int k = 0; k < 5; k++) g[k] = mean_gap(ds[k], h < 0 ? 300 : 450, 64, h);
        fprintf(stderr, "check_camouflage: %-10s object-vs-background gap at difficulty 0, "
                        ".25, .5, .75, 1: %.4f %.4f %.4f %.4f %.4f\n",
                h < 0 ? "all" : ml_camo_habitat_name(h), g[0], g[1], g[2], g[3], g[4]);
        for (int k = 1; k < 5; k++) ck_assert_msg(g[k] < g[k - 1], "gap not decreasing at %g", ds[k]);
        ck_assert(g[0] > 3 * g[4]);
    }
}
END_TEST

START_TEST(t_camo_difficulty_moves_only_the_object) {
    enum { S = 40 };
    float *a = malloc(3 * S * S * sizeof *a), *am = malloc(S * S * sizeof *am);
    float *b = malloc(3 * S * S * sizeof *b), *bm = malloc(S * S * sizeof *bm);
    ml_camo_cfg c0 = camo(9, S, 0.1), c1 = camo(9, S, 0.95);
    for (int i = 0; i < 12; i++) {
        ml_camo_sample(&c0, i, a, am);
        ml_camo_sample(&c1, i, b, bm);
        ck_assert_mem_eq(am, bm, S * S * sizeof *am); /* same shape */
        int differ = 0;
        for (int p = 0; p < S * S; p++)
            for (int ch = 0; ch < 3; ch++) {
                if (am[p] == 0) ck_assert_float_eq(a[ch * S * S + p], b[ch * S * S + p]);
                else differ |= a[ch * S * S + p] != b[ch * S * S + p];
            }
        ck_assert(differ);
    }
    free(a);
    free(am);
    free(b);
    free(bm);
}
END_TEST

START_TEST(t_camo_config_errors) {
    ml_camo_cfg c;
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 0, 0.5, NULL, 0), ML_OK);
    ck_assert_int_eq(c.size, 64);
    ck_assert_int_eq(c.n_habitats, 3);
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 8, 0.5, NULL, 0), ML_ERR);
    ck_assert_str_eq(ml_error(), "camouflage: image_size 8, expected 0 (= 64) or 16..256");
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 300, 0.5, NULL, 0), ML_ERR);
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 32, 1.5, NULL, 0), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "difficulty 1.5, expected 0 (obvious) .. 1"), "%s", ml_error());
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 32, NAN, NULL, 0), ML_ERR);
    const char *bad[] = {"sand", "jungle"}, *dup[] = {"sand", "foliage", "sand"};
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 32, 0.5, bad, 2), ML_ERR);
    ck_assert_str_eq(ml_error(), "camouflage: habitats: unknown habitat 'jungle', expected "
                                 "foliage, sand or underwater");
    ck_assert_int_eq(ml_camo_cfg_init(&c, 1, 32, 0.5, dup, 3), ML_ERR);
    ck_assert_str_eq(ml_error(), "camouflage: habitats: 'sand' is listed twice (items 0 and 2)");
    ck_assert_int_eq(ml_camo_habitat_parse("underwater"), ML_CAMO_UNDERWATER);
    ck_assert_int_eq(ml_camo_habitat_parse("Sand"), -1);
    ck_assert_ptr_null(ml_camo_habitat_name(3));
    /* through ml_data_load */
    ml_data_cfg dc = {.dataset = "camouflage", .val_images = 10, .difficulty = 0.5};
    ml_dataset tr, va;
    ck_assert_int_eq(ml_data_load(&dc, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "camouflage: train_images is 0") &&
                      strstr(ml_error(), "hint: set data.train_images"),
                  "%s", ml_error());
    dc.camouflage_samples = 10;
    ck_assert_int_eq(ml_data_load(&dc, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "val_images 10 leaves no training samples of the 10"), "%s",
                  ml_error());
    dc.val_path = "/tmp";
    ck_assert_int_eq(ml_data_load(&dc, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "camouflage: val_path is set, but only image_mask_folder"),
                  "%s", ml_error());
    ck_assert_ptr_null(tr.x);
}
END_TEST

START_TEST(t_camo_split_and_batches) {
    enum { S = 32 };
    const char *hab[] = {"underwater", "foliage"};
    ml_data_cfg dc = {.dataset = "camouflage", .camouflage_samples = 100, .train_images = 60,
                      .val_images = 30, .image_size = S, .difficulty = 0.3, .seed = 21,
                      .habitats = hab, .n_habitats = 2};
    ml_dataset tr, va;
    ck_assert_msg(ml_data_load(&dc, &tr, &va) == ML_OK, "%s", ml_error());
    ck_assert_str_eq(tr.name, "camouflage/train");
    ck_assert_int_eq(tr.n, 60);
    ck_assert_int_eq(va.n, 30);
    ck_assert_int_eq(tr.C, 3);
    ck_assert_int_eq(tr.H, S);
    ck_assert_int_eq(tr.W, S);
    ck_assert_int_eq(tr.num_classes, 2);
    ck_assert_ptr_nonnull(tr.mask);
    ck_assert_ptr_nonnull(va.mask);
    ck_assert_str_eq(tr.class_names[0], "underwater");
    ck_assert_str_eq(va.class_names[1], "foliage");
    /* every sample (image, mask, label) is the generator's sample of its index */
    ml_camo_cfg c;
    ck_assert_int_eq(ml_camo_cfg_init(&c, 21, S, 0.3, hab, 2), ML_OK);
    float x[3 * S * S], m[S * S];
    int seen[100] = {0}, count[2] = {0};
    const ml_dataset *sets[] = {&tr, &va};
    for (int k = 0; k < 2; k++)
        for (int64_t i = 0; i < sets[k]->n; i++) {
            const ml_dataset *d = sets[k];
            int32_t j = d->index[i];
            seen[j]++;
            ck_assert_int_eq(ml_camo_sample(&c, j, x, m), d->y[i]);
            ck_assert_int_eq(d->y[i], j % 2);
            ck_assert_mem_eq(x, d->x + i * 3 * S * S, sizeof x);
            ck_assert_mem_eq(m, d->mask + i * S * S, sizeof m);
            if (i) ck_assert_int_lt(d->index[i - 1], j);
            count[d->y[i]]++;
        }
    for (int j = 0; j < 100; j++) ck_assert_int_le(seen[j], 1);
    /* balanced habitats: the source alternates them, the splits keep about half each */
    ck_assert_int_ge(count[0], 35);
    ck_assert_int_ge(count[1], 35);
    /* a fixed camouflage_samples keeps the validation set when train_images changes */
    dc.train_images = 20;
    ml_dataset tr2, va2;
    ck_assert_int_eq(ml_data_load(&dc, &tr2, &va2), ML_OK);
    ck_assert_mem_eq(va2.index, va.index, 30 * sizeof(int32_t));
    ck_assert_mem_eq(va2.mask, va.mask, 30 * S * S * sizeof(float));

    /* the batcher serves masks with their images; next and next_masks share a position */
    ml_batcher *b = ml_batcher_new(&tr, 8, 1, 4);
    float bx[8 * 3 * S * S], bm[8 * S * S];
    int32_t by[8], ids[8];
    int served = 0, calls = 0, B;
    while ((B = calls++ % 3 == 1 ? ml_batcher_next(b, bx, by, ids)
                                  : ml_batcher_next_masks(b, bx, bm, by, ids)) > 0) {
        for (int i = 0; i < B; i++) {
            ck_assert_int_eq(ml_camo_sample(&c, ids[i], x, m), by[i]);
            ck_assert_mem_eq(x, bx + i * 3 * S * S, sizeof x);
            if ((calls - 1) % 3 != 1) ck_assert_mem_eq(m, bm + i * S * S, sizeof m);
        }
        served += B;
    }
    ck_assert_int_eq(served, 60);
    ml_batcher_free(b);
    /* a dataset without masks serves zero masks */
    ml_data_cfg sc = {.dataset = "synthetic", .synthetic_samples = 20, .synthetic_dim = 4,
                      .seed = 1};
    ml_dataset sy;
    ck_assert_int_eq(ml_data_load(&sc, &sy, NULL), ML_OK);
    ck_assert_ptr_null(sy.mask);
    ck_assert_ptr_null(sy.class_names);
    b = ml_batcher_new(&sy, 8, 0, 1);
    for (int i = 0; i < 8 * 4; i++) bm[i] = 7;
    ck_assert_int_eq(ml_batcher_next_masks(b, bx, bm, by, ids), 8);
    for (int i = 0; i < 8 * 4; i++) ck_assert_float_eq(bm[i], 0.0f);
    ml_batcher_free(b);
    ml_dataset *all[] = {&tr, &va, &tr2, &va2, &sy};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_dataset_free(all[i]);
    ck_assert_ptr_null(tr.mask);
    ck_assert_ptr_null(tr.class_names);
}
END_TEST

START_TEST(t_camo_speed) {
    /* 10 000 images of 64 x 64 on one core, then a load of 2 000 on every core */
    enum { S = 64, N = 10000 };
    float *x = malloc(3 * S * S * sizeof *x), *m = malloc(S * S * sizeof *m);
    ml_camo_cfg c = camo(1, S, 0.5);
    double t0 = ml_now();
    for (int i = 0; i < N; i++) ml_camo_sample(&c, i, x, m);
    double one = ml_now() - t0;
    free(x);
    free(m);
    ml_data_cfg dc = {.dataset = "camouflage", .train_images = 2000, .difficulty = 0.5, .seed = 1};
    ml_dataset tr;
    t0 = ml_now();
    ck_assert_int_eq(ml_data_load(&dc, &tr, NULL), ML_OK);
    double all = ml_now() - t0;
    fprintf(stderr, "check_camouflage: %d images of %d x %d in %.2f s on one core (%.0f images/s); "
                    "a load of 2000 in %.2f s on %d threads (%.0f images/s)\n",
            N, S, S, one, N / one, all, omp_get_max_threads(), 2000 / all);
    ml_dataset_free(&tr);
    /* seconds, not minutes, even on a busy machine (not under valgrind) */
    ck_assert_double_lt(one, getenv("MOELAB_UNDER_VALGRIND") ? 1200.0 : 20.0);
}
END_TEST

/* A contact sheet: per habitat two samples, at difficulty 0, .5, .9 and 1, image | mask. */
START_TEST(t_camo_png_sheet) {
    enum { S = 64, Z = 2, PAD = 3 };
    const double ds[] = {0, 0.5, 0.9, 1};
    int cols = 8, rows = 6, cw = S * Z + PAD, W = cols * cw, H = rows * cw;
    unsigned char *img = calloc((size_t)W * H * 3, 1);
    float x[3 * S * S], m[S * S];
    for (int d = 0; d < 4; d++) {
        ml_camo_cfg c = camo(7, S, ds[d]);
        for (int r = 0; r < rows; r++) {
            ml_camo_sample(&c, (r % 2) * 3 + r / 2, x, m);
            for (int y = 0; y < S * Z; y++)
                for (int xx = 0; xx < S * Z; xx++) {
                    int p = (y / Z) * S + xx / Z;
                    unsigned char *o = img + ((size_t)(r * cw + y) * W + 2 * d * cw + xx) * 3;
                    for (int ch = 0; ch < 3; ch++) {
                        o[ch] = (unsigned char)(x[ch * S * S + p] * 255 + 0.5f);
                        o[cw * 3 + ch] = m[p] ? 255 : 0;
                    }
                }
        }
    }
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/camouflage", tu_build());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/sheet.png", dir);
    ck_assert(stbi_write_png(path, W, H, 3, img, W * 3));
    fprintf(stderr, "check_camouflage: wrote %s (rows: foliage x2, sand x2, underwater x2; "
                    "columns: difficulty 0, .5, .9, 1, each image | mask)\n",
            path);
    free(img);
}
END_TEST

/* ------------------------------------------------------------ image_mask_folder --- */

static ml_data_cfg cod_cfg(const char *path, const char *val_path, int size) {
    ml_data_cfg c = {0};
    c.dataset = "image_mask_folder";
    c.path = path;
    c.val_path = val_path;
    c.image_size = size;
    c.val_images = 10000; /* the config's default: with val_path, "at most" */
    c.seed = 1;
    return c;
}

static int mask_sum(const ml_dataset *d, int64_t i) {
    int s = 0;
    for (int p = 0; p < d->H * d->W; p++) {
        float v = d->mask[i * d->H * d->W + p];
        ck_assert(v == 0.0f || v == 1.0f);
        s += v == 1.0f;
    }
    return s;
}

START_TEST(t_cod_train_and_test_folders) {
    ml_data_cfg c = cod_cfg(COD "/train", COD "/test", 8);
    ml_dataset tr, va;
    ck_assert_msg(ml_data_load(&c, &tr, &va) == ML_OK, "%s", ml_error());
    ck_assert_str_eq(tr.name, "image_mask_folder/train");
    ck_assert_int_eq(tr.n, 4); /* the orphan mask in train/GT is ignored */
    ck_assert_int_eq(va.n, 2);
    ck_assert_int_eq(tr.C, 3);
    ck_assert_int_eq(tr.H, 8);
    ck_assert_int_eq(tr.W, 8);
    ck_assert_int_eq(va.H, 8);
    /* COD10K super-classes from the names; the CAMO-style name is "unknown" */
    ck_assert_int_eq(tr.num_classes, 6);
    ck_assert_int_eq(va.num_classes, 6);
    const char *names[] = {"Aquatic", "Terrestrial", "Flying", "Amphibian", "Other", "unknown"};
    for (int k = 0; k < 6; k++) {
        ck_assert_str_eq(tr.class_names[k], names[k]);
        ck_assert_str_eq(va.class_names[k], names[k]);
    }
    /* files in name order: Crab, Cat, Bird (COD10K-...), camourflage_00012 */
    const int32_t want_y[] = {0, 1, 2, 5}, want_vy[] = {3, 4};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(tr.y[i], want_y[i]);
        ck_assert_int_eq(tr.index[i], i);
    }
    for (int i = 0; i < 2; i++) ck_assert_int_eq(va.y[i], want_vy[i]);
    /* the Cat (a PNG, exact): its 16 x 12 mask [4,10) x [3,8) shrinks to [2,5) x [2,5) when
     * a pixel is object where at least half of it is */
    const float *mk = tr.mask + 1 * 64;
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++)
            ck_assert_msg(mk[y * 8 + x] == (x >= 2 && x < 5 && y >= 2 && y < 5 ? 1.0f : 0.0f),
                          "mask (%d, %d)", y, x);
    /* its pixels: the object colour inside, the background outside */
    const float *px = tr.x + 1 * 3 * 64;
    ck_assert_float_eq_tol(px[0 * 64 + 3 * 8 + 3], 200 / 255.0f, 1e-5);
    ck_assert_float_eq_tol(px[1 * 64 + 3 * 8 + 3], 180 / 255.0f, 1e-5);
    ck_assert_float_eq_tol(px[2 * 64 + 7 * 8 + 7], 60 / 255.0f, 1e-5);
    /* the JPEG Crab: the same within JPEG's error, away from the edges */
    px = tr.x;
    ck_assert_float_eq_tol(px[0 * 64 + 3 * 8 + 3], 200 / 255.0f, 0.06);
    ck_assert_float_eq_tol(px[1 * 64 + 7 * 8 + 0], 120 / 255.0f, 0.06);
    /* Bird [0,8) x [0,6) of 16 x 12 → [0,4) x [0,4); camourflage [8,16) x [6,12) → [4,8) x [4,8) */
    ck_assert_int_eq(mask_sum(&tr, 2), 16);
    ck_assert_int_eq(mask_sum(&tr, 3), 16);
    /* test images are 20 x 16, mask [5,15) x [4,12): a rectangle of 4 x 4 at 8 x 8 */
    ck_assert_int_eq(mask_sum(&va, 0), 16);
    ck_assert_int_eq(mask_sum(&va, 1), 16);
    ml_dataset_free(&tr);
    ml_dataset_free(&va);

    /* train_images: a seeded subset; val_images: at most */
    c.train_images = 2;
    c.val_images = 1;
    ck_assert_msg(ml_data_load(&c, &tr, &va) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(tr.n, 2);
    ck_assert_int_eq(va.n, 1);
    ck_assert_int_lt(tr.index[0], tr.index[1]);
    ml_dataset_free(&tr);
    ml_dataset_free(&va);
    c.train_images = 5;
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "train_images 5 exceed the 4 images in " COD "/train"), "%s",
                  ml_error());
    c.train_images = 0;
    c.val_images = 0;
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_OK);
    ck_assert_int_eq(va.n, 0);
    ml_dataset_free(&tr);
    ml_dataset_free(&va);
    /* grey */
    c.channels = 1;
    ck_assert_int_eq(ml_data_load(&c, &tr, NULL), ML_OK);
    ck_assert_int_eq(tr.C, 1);
    ml_dataset_free(&tr);
}
END_TEST

START_TEST(t_cod_native_split_and_batches) {
    /* one folder at native size, the validation split held out of it */
    ml_data_cfg c = cod_cfg(COD "/train", NULL, 0);
    c.val_images = 1;
    c.seed = 3;
    ml_dataset tr, va;
    ck_assert_msg(ml_data_load(&c, &tr, &va) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(tr.n, 3);
    ck_assert_int_eq(va.n, 1);
    ck_assert_int_eq(tr.H, 12);
    ck_assert_int_eq(tr.W, 16);
    /* each mask goes with its file: Crab 30 pixels minus the soft one at 100 (another at
     * 200 counts), Cat 30, Bird 48, camourflage 48 */
    const int want[] = {29, 30, 48, 48};
    for (int64_t i = 0; i < tr.n; i++) ck_assert_int_eq(mask_sum(&tr, i), want[tr.index[i]]);
    ck_assert_int_eq(mask_sum(&va, 0), want[va.index[0]]);
    /* the batcher: rows of x, mask, y and ids belong together */
    ml_batcher *b = ml_batcher_new(&tr, 2, 1, 9);
    float x[2 * 3 * 192], m[2 * 192];
    int32_t y[2], ids[2];
    int B, n = 0;
    while ((B = ml_batcher_next_masks(b, x, m, y, ids)) > 0)
        for (int i = 0; i < B; i++, n++) {
            int64_t row = -1;
            for (int64_t r = 0; r < tr.n; r++)
                if (tr.index[r] == ids[i]) row = r;
            ck_assert_int_ge(row, 0);
            ck_assert_mem_eq(x + i * 3 * 192, tr.x + row * 3 * 192, 3 * 192 * sizeof(float));
            ck_assert_mem_eq(m + i * 192, tr.mask + row * 192, 192 * sizeof(float));
            ck_assert_int_eq(y[i], tr.y[row]);
        }
    ck_assert_int_eq(n, 3);
    ml_batcher_free(b);
    ml_dataset_free(&tr);
    ml_dataset_free(&va);
    /* native size with folders of two sizes: named, with the hint */
    c = cod_cfg(COD "/train", COD "/test", 0);
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_str_eq(ml_error(), COD "/test/Imgs/COD10K-CAM-4-Amphibian-67-Frog-4707.jpg: 20 x 16 "
                                     "pixels, expected 16 x 12 like " COD "/train/Imgs/"
                                     "COD10K-CAM-1-Aquatic-3-Crab-32.jpg (set data.image_size "
                                     "to resize all images)");
}
END_TEST

static void expect_cod_error(const char *dir, const char *want) {
    ml_data_cfg c = cod_cfg(dir, NULL, 8);
    c.val_images = 0;
    ml_dataset tr, va;
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), want), "expected '%s' in '%s'", want, ml_error());
    ck_assert_ptr_null(tr.x);
    ck_assert_ptr_null(tr.mask);
}

START_TEST(t_cod_errors) {
    const char *B = COD "/broken";
    char want[1024];
    snprintf(want, sizeof want, "%s/missing_mask/Imgs/b.png: no mask %s/missing_mask/GT/b.png "
                                "(every image needs a ground-truth mask of the same name)",
             B, B);
    expect_cod_error(COD "/broken/missing_mask", want);
    snprintf(want, sizeof want, "%s/size_mismatch/GT/a.png: mask is 12 x 12 pixels, its image "
                                "%s/size_mismatch/Imgs/a.png is 16 x 12",
             B, B);
    expect_cod_error(COD "/broken/size_mismatch", want);
    snprintf(want, sizeof want, "%s/non_binary/GT/a.png: not a binary mask: ", B);
    expect_cod_error(COD "/broken/non_binary", want);
    expect_cod_error(COD "/broken/non_binary", "expected 0 (background) or 255 (object) with at "
                                               "most 2% intermediate values");
    snprintf(want, sizeof want, "%s/bad_image/Imgs/a.jpg: cannot read image: ", B);
    expect_cod_error(COD "/broken/bad_image", want);
    snprintf(want, sizeof want, "%s/jpg_mask/Imgs/a.png: no mask %s/jpg_mask/GT/a.png (found "
                                "a.jpg, expected a PNG: masks must be lossless)",
             B, B);
    expect_cod_error(COD "/broken/jpg_mask", want);
    snprintf(want, sizeof want, "image_mask_folder: %s/no_gt: no GT/ folder (nor GT_Object/), "
                                "expected %s/no_gt/Imgs/<name>.jpg with masks %s/no_gt/GT/<name>.png",
             B, B, B);
    expect_cod_error(COD "/broken/no_gt", want);
    expect_cod_error(COD "/broken/nonexistent", "image_mask_folder: " COD "/broken/nonexistent: "
                                                "cannot open directory: No such file or directory");
    expect_cod_error(COD "/broken", "image_mask_folder: " COD "/broken: no Imgs/ folder (nor "
                                    "Image/ or Images/)");
    /* a broken validation folder is named too */
    ml_data_cfg c = cod_cfg(COD "/train", COD "/broken/non_binary", 8);
    ml_dataset tr, va;
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "broken/non_binary/GT/a.png: not a binary mask"), "%s",
                  ml_error());
    /* path is required; val_path belongs to this dataset only */
    c = cod_cfg(NULL, NULL, 8);
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "image_mask_folder: data.path is required"), "%s", ml_error());
    c = cod_cfg(COD "/train", COD "/test", 8);
    c.dataset = "image_folder";
    ck_assert_int_eq(ml_data_load(&c, &tr, &va), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "image_folder: val_path is set, but only image_mask_folder"),
                  "%s", ml_error());
}
END_TEST

START_TEST(t_cod_unlabelled) {
    /* no COD10K names: unlabelled (y NULL, the batcher serves zeros) */
    const char *d = tu_tmpdir("cod");
    ck_assert_ptr_nonnull(d);
    char dir[256];
    snprintf(dir, sizeof dir, "%s", d);
    ck_assert_int_eq(tu_sh("mkdir -p %s/Imgs %s/GT && cp " COD "/train/Imgs/camourflage_00012.jpg "
                           "%s/Imgs/ && cp " COD "/train/GT/camourflage_00012.png %s/GT/",
                           dir, dir, dir, dir),
                     0);
    ml_data_cfg c = cod_cfg(dir, NULL, 8);
    c.val_images = 0;
    ml_dataset tr;
    ck_assert_msg(ml_data_load(&c, &tr, NULL) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(tr.n, 1);
    ck_assert_int_eq(tr.num_classes, 0);
    ck_assert_ptr_null(tr.y);
    ck_assert_ptr_null(tr.class_names);
    ck_assert_int_eq(mask_sum(&tr, 0), 16);
    ml_dataset_free(&tr);
    /* COD10K-v3's own layout: Image/ and GT_Object/ */
    ck_assert_int_eq(tu_sh("mv %s/Imgs %s/Image && mv %s/GT %s/GT_Object", dir, dir, dir, dir), 0);
    ck_assert_msg(ml_data_load(&c, &tr, NULL) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(tr.n, 1);
    ml_dataset_free(&tr);
    tu_rm_rf(dir);
}
END_TEST

static Suite *camo_suite(void) {
    Suite *s = suite_create("camouflage");
    TCase *gen = tcase_create("generator");
    tcase_add_test(gen, t_camo_deterministic);
    tcase_add_test(gen, t_camo_masks_and_values);
    tcase_add_test(gen, t_camo_habitats_differ);
    tcase_add_test(gen, t_camo_difficulty_monotone);
    tcase_add_test(gen, t_camo_difficulty_moves_only_the_object);
    tcase_add_test(gen, t_camo_config_errors);
    tcase_add_test(gen, t_camo_split_and_batches);
    tcase_add_test(gen, t_camo_png_sheet);
    tcase_set_timeout(gen, 120);
    suite_add_tcase(s, gen);
    TCase *speed = tcase_create("speed");
    tcase_add_test(speed, t_camo_speed);
    tcase_set_timeout(speed, 300);
    suite_add_tcase(s, speed);
    TCase *cod = tcase_create("cod");
    tcase_add_test(cod, t_cod_train_and_test_folders);
    tcase_add_test(cod, t_cod_native_split_and_batches);
    tcase_add_test(cod, t_cod_errors);
    tcase_add_test(cod, t_cod_unlabelled);
    suite_add_tcase(s, cod);
    return s;
}

int main(void) { return tu_run(camo_suite()); }
