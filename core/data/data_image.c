/*
 * data_image.c — folders of images: dir/<class>/<file>.{png,jpg,jpeg,bmp}, one class per
 * subdirectory (sorted by name → label), files sorted by name; and camouflaged-object
 * datasets in the COD layout, dir/Imgs/<stem>.jpg with binary masks dir/GT/<stem>.png.
 * Listing (and, for masks, checking every header) happens at load; pixels are decoded
 * (stb_image, see data_stb.c) only for the samples the split keeps.
 */
#include "data/data.h"
#include "data/source.h"
#include "base/common.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>


typedef struct str_list {
    char **v;
    size_t n, cap;
} str_list;

static int list_push(str_list *l, const char *s) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) return ml_errorf("out of memory listing images");
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = ml_strdup(s))) return ML_ERR;
    l->n++;
    return ML_OK;
}

static void list_free(str_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot || name[0] == '.') return 0;
    return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") ||
           !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".bmp");
}

/* Names in dir (no hidden entries) that are directories (want_dir) or image files; sorted. */
static int list_dir(const char *dir, int want_dir, str_list *out) {
    DIR *d = opendir(dir);
    if (!d) return ml_errorf("image_folder: %s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = ML_OK;
    char full[4096];
    while (rc == ML_OK && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (!want_dir && !is_image_name(e->d_name)) continue;
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        if (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode))
            rc = list_push(out, e->d_name);
    }
    closedir(d);
    if (rc == ML_OK && out->n) qsort(out->v, out->n, sizeof *out->v, cmp_str);
    return rc;
}

static int folder_read(const ml_data_src *s, int64_t i, float *x, float *mask, int report);

int ml_data_src_folder(ml_data_src *s, const char *dir, int channels, int size) {
    memset(s, 0, sizeof *s);
    if (channels != 1 && channels != 3)
        return ml_errorf("image_folder: channels %d, expected 1 or 3", channels);
    str_list classes = {0}, files = {0};
    int32_t *y = NULL;
    size_t ycap = 0;
    int rc = list_dir(dir, 1, &classes);
    if (rc == ML_OK && classes.n == 0)
        rc = ml_errorf("image_folder: %s: no class subdirectories, expected "
                       "%s/<class>/<image>.png|jpg|jpeg|bmp",
                       dir, dir);
    char sub[4096], full[8192];
    for (size_t c = 0; rc == ML_OK && c < classes.n; c++) {
        str_list names = {0};
        snprintf(sub, sizeof sub, "%s/%s", dir, classes.v[c]);
        rc = list_dir(sub, 0, &names);
        if (rc == ML_OK && names.n == 0)
            ml_log(ML_LOG_WARN, "image_folder: %s: no images; class %zu (%s) will be empty",
                   sub, c, classes.v[c]);
        for (size_t i = 0; rc == ML_OK && i < names.n; i++) {
            snprintf(full, sizeof full, "%s/%s", sub, names.v[i]);
            rc = list_push(&files, full);
            if (rc == ML_OK && files.n > ycap) {
                ycap = files.cap;
                int32_t *ny = realloc(y, ycap * sizeof *y);
                if (!ny) rc = ml_errorf("out of memory listing images");
                else y = ny;
            }
            if (rc == ML_OK) y[files.n - 1] = (int32_t)c;
        }
        list_free(&names);
    }
    if (rc == ML_OK && files.n == 0)
        rc = ml_errorf("image_folder: %s: no .png, .jpg, .jpeg or .bmp files in its %zu class "
                       "subdirectories",
                       dir, classes.n);
    if (rc == ML_OK && files.n > INT32_MAX) rc = ml_errorf("image_folder: %s: too many images", dir);
    int w0 = 0, h0 = 0;
    if (rc == ML_OK && size == 0) {
        /* native size: headers only, every file, so the check does not depend on the split */
        for (size_t i = 0; rc == ML_OK && i < files.n; i++) {
            int w, h;
            if (!ml_data_stb_info(files.v[i], &w, &h))
                rc = ml_errorf("%s: cannot read image: %s", files.v[i], ml_data_stb_reason());
            else if (i == 0) {
                w0 = w;
                h0 = h;
            } else if (w != w0 || h != h0)
                rc = ml_errorf("%s: %d x %d pixels, expected %d x %d like %s (set "
                               "data.image_size to resize all images)",
                               files.v[i], w, h, w0, h0, files.v[0]);
        }
    }
    int num_classes = (int)classes.n;
    if (rc != ML_OK) {
        list_free(&classes);
        list_free(&files);
        free(y);
        return rc;
    }
    s->n = (int64_t)files.n;
    s->C = channels;
    s->H = size ? size : h0;
    s->W = size ? size : w0;
    s->num_classes = num_classes;
    s->y = y;
    s->files = files.v; /* ownership moves to s; n is s->n */
    s->class_names = classes.v;
    s->resize = size != 0;
    s->read = folder_read;
    return ML_OK;
}

/*
 * Decodes path into dst (C, OH, OW): C channels, resampled when resize is set, else the
 * file must be OH x OW. *w, *h receive the native size.
 */
static int image_read(const char *path, int C, int OH, int OW, int resize, float *dst,
                      int report, int *w, int *h) {
    uint8_t *px = ml_data_stb_load(path, w, h, C);
    if (!px)
        return report ? ml_errorf("%s: cannot decode image: %s", path, ml_data_stb_reason())
                      : ML_ERR;
    if (!resize && (*w != OW || *h != OH)) {
        free(px);
        return report ? ml_errorf("%s: %d x %d pixels, expected %d x %d", path, *w, *h, OW, OH)
                      : ML_ERR;
    }
    size_t plane = (size_t)*w * *h;
    float *chw = (*w == OW && *h == OH) ? dst : malloc((size_t)C * plane * sizeof *chw);
    if (!chw) {
        free(px);
        return report ? ml_errorf("%s: out of memory for %d x %d pixels", path, *w, *h) : ML_ERR;
    }
    /* interleaved (H, W, C) bytes → planar (C, H, W) floats */
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < C; c++) chw[(size_t)c * plane + p] = px[p * (size_t)C + c] / 255.0f;
    free(px);
    if (chw != dst) {
        ml_data_resize(chw, C, *h, *w, dst, OH, OW);
        free(chw);
    }
    return ML_OK;
}

static int folder_read(const ml_data_src *s, int64_t i, float *x, float *mask, int report) {
    (void)mask;
    int w, h;
    return image_read(s->files[i], s->C, s->H, s->W, s->resize, x, report, &w, &h);
}

/* --------------------------------------------------------- image_mask_folder --- */

/*
 * Masks: COD ground truth is 0 or 255. A pixel is object when its value is >= 128. Values
 * strictly between MASK_LO and MASK_HI count as intermediate; up to MASK_MAX_PCT percent
 * of them are accepted (anti-aliased edges, a resaved JPEG-like file), more mean the file
 * is not a binary mask (a photo, a soft prediction map) and it is refused.
 */
enum { MASK_LO = 25, MASK_HI = 230, MASK_THRESHOLD = 128, MASK_MAX_PCT = 2 };

static const char *const IMG_DIRS[] = {"Imgs", "Image", "Images"};
static const char *const GT_DIRS[] = {"GT", "GT_Object"};

/* COD10K's super-classes, in the order of their numbers in the file names. */
static const char *const COD10K_CLASSES[] = {"Aquatic", "Terrestrial", "Flying", "Amphibian",
                                             "Other"};
enum { COD10K_N = 5 };

static int mask_read(const ml_data_src *s, int64_t i, float *x, float *mask, int report) {
    int w, h, mw, mh;
    if (image_read(s->files[i], s->C, s->H, s->W, s->resize, x, report, &w, &h)) return ML_ERR;
    const char *mp = s->mask_files[i];
    uint8_t *px = ml_data_stb_load(mp, &mw, &mh, 1);
    if (!px)
        return report ? ml_errorf("%s: cannot decode mask: %s", mp, ml_data_stb_reason())
                      : ML_ERR;
    int rc = ML_OK;
    size_t np = (size_t)mw * mh, mid = 0;
    if (mw != w || mh != h) {
        rc = report ? ml_errorf("%s: mask is %d x %d pixels, its image %s is %d x %d", mp, mw,
                                mh, s->files[i], w, h)
                    : ML_ERR;
    } else {
        for (size_t p = 0; p < np; p++) mid += px[p] > MASK_LO && px[p] < MASK_HI;
        if (mid * 100 > np * MASK_MAX_PCT)
            rc = report ? ml_errorf("%s: not a binary mask: %.1f%% of its pixels are between %d "
                                    "and %d, expected 0 (background) or 255 (object) with at "
                                    "most %d%% intermediate values",
                                    mp, 100.0 * mid / np, MASK_LO + 1, MASK_HI - 1, MASK_MAX_PCT)
                        : ML_ERR;
    }
    if (rc == ML_OK && w == s->W && h == s->H) {
        for (size_t p = 0; p < np; p++) mask[p] = px[p] >= MASK_THRESHOLD ? 1.0f : 0.0f;
    } else if (rc == ML_OK) {
        /* the image's geometry (area when shrinking, bilinear when enlarging), then object
         * where at least half of the pixel is */
        float *bin = malloc(np * sizeof *bin);
        if (!bin) {
            free(px);
            return report ? ml_errorf("%s: out of memory for %d x %d pixels", mp, mw, mh)
                          : ML_ERR;
        }
        for (size_t p = 0; p < np; p++) bin[p] = px[p] >= MASK_THRESHOLD ? 1.0f : 0.0f;
        ml_data_resize(bin, 1, mh, mw, mask, s->H, s->W);
        for (size_t p = 0; p < (size_t)s->H * s->W; p++) mask[p] = mask[p] >= 0.5f - 1e-5f;
        free(bin);
    }
    free(px);
    return rc;
}

/* dir/<the first of names that is a directory> into out; ML_ERR naming what was tried. */
static int find_sub(const char *dir, const char *const *names, int n, char *out, size_t cap) {
    struct stat st;
    if (stat(dir, &st) != 0)
        return ml_errorf("image_mask_folder: %s: cannot open directory: %s", dir,
                         strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ml_errorf("image_mask_folder: %s: not a directory, expected a folder holding "
                         "Imgs/ and GT/",
                         dir);
    for (int k = 0; k < n; k++) {
        snprintf(out, cap, "%s/%s", dir, names[k]);
        if (stat(out, &st) == 0 && S_ISDIR(st.st_mode)) return ML_OK;
    }
    return ml_errorf("image_mask_folder: %s: no %s/ folder (nor %s/%s%s%s), expected "
                     "%s/Imgs/<name>.jpg with masks %s/GT/<name>.png",
                     dir, names[0], names[1], n > 2 ? " or " : "", n > 2 ? names[2] : "",
                     n > 2 ? "/" : "", dir, dir);
}

static size_t stem_len(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

/* The super-class of a COD10K file name (COD10K-CAM-1-Aquatic-3-Crab-32.jpg, also
 * NonCAM), by its word, or -1. */
static int cod10k_class(const char *name) {
    const char *p;
    if (!strncmp(name, "COD10K-CAM-", 11)) p = name + 11;
    else if (!strncmp(name, "COD10K-NonCAM-", 14)) p = name + 14;
    else return -1;
    if (!isdigit((unsigned char)*p)) return -1;
    while (isdigit((unsigned char)*p)) p++;
    if (*p++ != '-') return -1;
    for (int k = 0; k < COD10K_N; k++) {
        size_t len = strlen(COD10K_CLASSES[k]);
        if (!strncmp(p, COD10K_CLASSES[k], len) && p[len] == '-') return k;
    }
    return -1;
}

typedef struct pair_list {
    str_list img, mask; /* full paths, in the images' name order */
    int w0, h0;         /* native size of img.v[0] */
} pair_list;

/* Index of name in the sorted list l, or l->n. */
static size_t list_find(const str_list *l, const char *name) {
    char *const *hit = l->n ? bsearch(&name, l->v, l->n, sizeof *l->v, cmp_str) : NULL;
    return hit ? (size_t)(hit - l->v) : l->n;
}

/*
 * Lists dir's images and their masks and checks every header: a mask for each image,
 * readable, of the image's size; with size 0 every image must have the size of `ref`'s
 * first (ref may be out itself).
 */
static int list_pairs(const char *dir, int size, pair_list *out, const pair_list *ref) {
    char idir[4096], gdir[4096], ip[8192], mp[8192];
    str_list names = {0}, gt = {0};
    char *used = NULL;
    int rc = find_sub(dir, IMG_DIRS, 3, idir, sizeof idir);
    if (rc == ML_OK) rc = find_sub(dir, GT_DIRS, 2, gdir, sizeof gdir);
    if (rc == ML_OK) rc = list_dir(idir, 0, &names);
    if (rc == ML_OK) rc = list_dir(gdir, 0, &gt);
    if (rc == ML_OK && names.n == 0)
        rc = ml_errorf("image_mask_folder: %s: no .jpg, .jpeg, .png or .bmp images", idir);
    if (rc == ML_OK && names.n > INT32_MAX)
        rc = ml_errorf("image_mask_folder: %s: too many images", idir);
    if (rc == ML_OK && !(used = ml_calloc(gt.n ? gt.n : 1, 1))) rc = ML_ERR;
    for (size_t i = 0; rc == ML_OK && i < names.n; i++) {
        const char *name = names.v[i];
        size_t sl = stem_len(name);
        snprintf(ip, sizeof ip, "%s/%s", idir, name);
        /* names sharing a stem are adjacent in sorted order */
        if (i > 0 && stem_len(names.v[i - 1]) == sl && !strncmp(names.v[i - 1], name, sl)) {
            rc = ml_errorf("%s: another image has the same name, %s/%s: expected one image per "
                           "mask",
                           ip, idir, names.v[i - 1]);
            break;
        }
        /* the mask: <stem>.png (or .PNG; any other case of the extension by a scan) */
        snprintf(mp, sizeof mp, "%.*s.png", (int)sl, name);
        size_t found = list_find(&gt, mp);
        if (found == gt.n) {
            snprintf(mp, sizeof mp, "%.*s.PNG", (int)sl, name);
            found = list_find(&gt, mp);
        }
        for (size_t j = 0; j < gt.n && found == gt.n; j++)
            if (stem_len(gt.v[j]) == sl && !strncmp(gt.v[j], name, sl) &&
                !strcasecmp(gt.v[j] + sl, ".png"))
                found = j;
        if (found == gt.n) {
            const char *other = NULL;
            for (size_t j = 0; j < gt.n && !other; j++)
                if (stem_len(gt.v[j]) == sl && !strncmp(gt.v[j], name, sl)) other = gt.v[j];
            if (other)
                rc = ml_errorf("%s: no mask %s/%.*s.png (found %s, expected a PNG: masks "
                               "must be lossless)",
                               ip, gdir, (int)sl, name, other);
            else
                rc = ml_errorf("%s: no mask %s/%.*s.png (every image needs a ground-truth "
                               "mask of the same name)",
                               ip, gdir, (int)sl, name);
            break;
        }
        used[found] = 1;
        snprintf(mp, sizeof mp, "%s/%s", gdir, gt.v[found]);
        int w, h, mw, mh;
        if (!ml_data_stb_info(ip, &w, &h))
            rc = ml_errorf("%s: cannot read image: %s", ip, ml_data_stb_reason());
        else if (!ml_data_stb_info(mp, &mw, &mh))
            rc = ml_errorf("%s: cannot read mask: %s", mp, ml_data_stb_reason());
        else if (mw != w || mh != h)
            rc = ml_errorf("%s: mask is %d x %d pixels, its image %s is %d x %d", mp, mw, mh,
                           ip, w, h);
        else if (size == 0 && (ref ? ref : out)->img.n) {
            const pair_list *r = ref ? ref : out;
            if (w != r->w0 || h != r->h0)
                rc = ml_errorf("%s: %d x %d pixels, expected %d x %d like %s (set "
                               "data.image_size to resize all images)",
                               ip, w, h, r->w0, r->h0, r->img.v[0]);
        }
        if (rc == ML_OK && out->img.n == 0) {
            out->w0 = w;
            out->h0 = h;
        }
        if (rc == ML_OK) rc = list_push(&out->img, ip);
        if (rc == ML_OK) rc = list_push(&out->mask, mp);
    }
    if (rc == ML_OK) {
        size_t orphans = 0, first = 0;
        for (size_t j = 0; j < gt.n; j++)
            if (!used[j] && !orphans++) first = j;
        if (orphans)
            ml_log(ML_LOG_WARN, "image_mask_folder: %s: %zu mask%s without an image, ignored "
                   "(first: %s)", gdir, orphans, orphans == 1 ? "" : "s", gt.v[first]);
    }
    free(used);
    list_free(&names);
    list_free(&gt);
    return rc;
}

/* Fills s from a listing (moved into s) with labels y (moved too). */
static void pairs_to_src(ml_data_src *s, pair_list *l, int channels, int size, int32_t *y,
                         int num_classes, char **class_names) {
    s->n = (int64_t)l->img.n;
    s->C = channels;
    s->H = size ? size : l->h0;
    s->W = size ? size : l->w0;
    s->num_classes = num_classes;
    s->y = y;
    s->class_names = class_names;
    s->files = l->img.v;
    s->mask_files = l->mask.v;
    s->resize = size != 0;
    s->has_mask = 1;
    s->read = mask_read;
    memset(l, 0, sizeof *l);
}

/*
 * Labels: the COD10K super-class of each name (cod10k_class). When no name in either
 * folder has one the data is unlabelled; when some lack one, those get a sixth class
 * "unknown". Deciding over both folders makes train and validation agree.
 */
static int assign_labels(pair_list *const *lists, int n_lists, int32_t **ys, int *num_classes,
                         char ***names) {
    size_t matched = 0, unmatched = 0;
    for (int l = 0; l < n_lists; l++)
        for (size_t i = 0; i < lists[l]->img.n; i++) {
            const char *base = strrchr(lists[l]->img.v[i], '/');
            if (cod10k_class(base ? base + 1 : lists[l]->img.v[i]) >= 0) matched++;
            else unmatched++;
        }
    *num_classes = 0;
    *names = NULL;
    for (int l = 0; l < n_lists; l++) ys[l] = NULL;
    if (!matched) return ML_OK;
    int K = unmatched ? COD10K_N + 1 : COD10K_N;
    char **nm = ml_calloc((size_t)K, sizeof *nm);
    if (!nm) return ML_ERR;
    for (int k = 0; k < K; k++)
        if (!(nm[k] = ml_strdup(k < COD10K_N ? COD10K_CLASSES[k] : "unknown"))) goto fail;
    for (int l = 0; l < n_lists; l++) {
        if (!(ys[l] = ml_calloc(lists[l]->img.n, sizeof *ys[l]))) goto fail;
        for (size_t i = 0; i < lists[l]->img.n; i++) {
            const char *base = strrchr(lists[l]->img.v[i], '/');
            int k = cod10k_class(base ? base + 1 : lists[l]->img.v[i]);
            ys[l][i] = k >= 0 ? k : COD10K_N;
        }
    }
    *num_classes = K;
    *names = nm;
    return ML_OK;
fail:
    for (int k = 0; k < K; k++) free(nm[k]);
    free(nm);
    for (int l = 0; l < n_lists; l++) {
        free(ys[l]);
        ys[l] = NULL;
    }
    return ML_ERR;
}

int ml_data_src_mask_folder(ml_data_src *s, ml_data_src *val, const char *dir,
                            const char *val_dir, int channels, int size) {
    memset(s, 0, sizeof *s);
    if (val) memset(val, 0, sizeof *val);
    if (channels != 1 && channels != 3)
        return ml_errorf("image_mask_folder: channels %d, expected 1 or 3", channels);
    pair_list tl = {0}, vl = {0};
    pair_list *lists[2] = {&tl, &vl};
    int32_t *ys[2] = {NULL, NULL};
    char **names = NULL;
    int K = 0, two = val && val_dir;
    int rc = list_pairs(dir, size, &tl, NULL);
    if (rc == ML_OK && two) rc = list_pairs(val_dir, size, &vl, &tl);
    if (rc == ML_OK) rc = assign_labels(lists, two ? 2 : 1, ys, &K, &names);
    char **vnames = NULL;
    if (rc == ML_OK && two && names) {
        if (!(vnames = ml_calloc((size_t)K, sizeof *vnames))) rc = ML_ERR;
        for (int k = 0; rc == ML_OK && k < K; k++)
            if (!(vnames[k] = ml_strdup(names[k]))) rc = ML_ERR;
    }
    if (rc != ML_OK) {
        for (int k = 0; names && k < K; k++) free(names[k]);
        for (int k = 0; vnames && k < K; k++) free(vnames[k]);
        free(names);
        free(vnames);
        free(ys[0]);
        free(ys[1]);
        list_free(&tl.img);
        list_free(&tl.mask);
        list_free(&vl.img);
        list_free(&vl.mask);
        return rc;
    }
    pairs_to_src(s, &tl, channels, size, ys[0], K, names);
    if (two) {
        pairs_to_src(val, &vl, channels, size, ys[1], K, vnames);
        if (!size) { /* both folders had to match tl's first image */
            val->H = s->H;
            val->W = s->W;
        }
    }
    return ML_OK;
}
