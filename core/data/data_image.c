/*
 * data_image.c — folders of images: dir/<class>/<file>.{png,jpg,jpeg,bmp}, one class per
 * subdirectory (sorted by name → label), files sorted by name. Listing happens at load;
 * pixels are decoded (stb_image, see data_stb.c) only for the samples the split keeps.
 */
#include "data/data.h"
#include "data/source.h"
#include "base/common.h"

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
    list_free(&classes);
    if (rc != ML_OK) {
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
    s->resize = size != 0;
    return ML_OK;
}

int ml_data_src_folder_read(const ml_data_src *s, int64_t i, float *dst, int report) {
    const char *path = s->files[i];
    int w, h;
    uint8_t *px = ml_data_stb_load(path, &w, &h, s->C);
    if (!px)
        return report ? ml_errorf("%s: cannot decode image: %s", path, ml_data_stb_reason())
                      : ML_ERR;
    if (!s->resize && (w != s->W || h != s->H)) {
        free(px);
        return report ? ml_errorf("%s: %d x %d pixels, expected %d x %d", path, w, h, s->W, s->H)
                      : ML_ERR;
    }
    int C = s->C;
    size_t plane = (size_t)w * h;
    float *chw = (w == s->W && h == s->H) ? dst : malloc((size_t)C * plane * sizeof *chw);
    if (!chw) {
        free(px);
        return report ? ml_errorf("%s: out of memory for %d x %d pixels", path, w, h) : ML_ERR;
    }
    /* interleaved (H, W, C) bytes → planar (C, H, W) floats */
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < C; c++) chw[(size_t)c * plane + p] = px[p * (size_t)C + c] / 255.0f;
    free(px);
    if (chw != dst) {
        ml_data_resize(chw, C, h, w, dst, s->H, s->W);
        free(chw);
    }
    return ML_OK;
}
