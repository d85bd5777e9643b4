/*
 * data_files.c — binary dataset formats: IDX (Fashion-MNIST, gzip or plain, via zlib) and
 * CIFAR-10's binary batches. Each fills an ml_data_src with every training sample as bytes.
 */
#include "data_impl.h"
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define FMNIST_HINT "hint: install Debian's dataset-fashion-mnist package (make deps does)"
#define CIFAR_HINT                                                                         \
    "hint: download the binary version (cifar-10-binary.tar.gz) from "                    \
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and set data.path to "       \
    "its cifar-10-batches-bin directory"

enum { IDX_MAGIC_IMAGES = 2051, IDX_MAGIC_LABELS = 2049, CIFAR_RECORD = 1 + 3072 };

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---------------------------------------------------------------------------- IDX --- */

/*
 * Opens dir/name.gz or else dir/name (gzread reads plain files unchanged); path receives
 * the file opened. NULL with an error naming both candidates when neither exists.
 */
static gzFile idx_open(const char *dir, const char *name, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s.gz", dir, name);
    gzFile f = gzopen(path, "rb");
    if (f) return f;
    snprintf(path, cap, "%s/%s", dir, name);
    f = gzopen(path, "rb");
    if (f) return f;
    snprintf(path, cap, "%s/%s.gz", dir, name);
    ml_errorf("%s: cannot open (%s; nor %s without .gz); " FMNIST_HINT, path,
              strerror(errno ? errno : ENOENT), name);
    return NULL;
}

/* Reads exactly len bytes; the error says how many were expected and how many came. */
static int gz_read_exact(gzFile f, const char *path, void *buf, size_t len, const char *what) {
    size_t got = 0;
    while (got < len) {
        size_t left = len - got;
        unsigned chunk = left > (1u << 30) ? 1u << 30 : (unsigned)left;
        int r = gzread(f, (unsigned char *)buf + got, chunk);
        if (r < 0) {
            int code;
            const char *msg = gzerror(f, &code);
            return ml_errorf("%s: truncated or corrupt (%s): expected %zu bytes of %s, "
                             "read %zu",
                             path, msg, len, what, got);
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    if (got < len)
        return ml_errorf("%s: truncated: expected %zu bytes of %s, found %zu", path, len, what,
                         got);
    return ML_OK;
}

static int idx_read_images(const char *dir, ml_data_src *s, char *path, size_t cap) {
    gzFile f = idx_open(dir, "train-images-idx3-ubyte", path, cap);
    if (!f) return ML_ERR;
    gzbuffer(f, 1 << 18);
    unsigned char h[16];
    int rc = gz_read_exact(f, path, h, sizeof h, "IDX image header");
    if (rc == ML_OK && be32(h) != IDX_MAGIC_IMAGES)
        rc = ml_errorf("%s: bad magic %u, expected %d (IDX images)", path, be32(h),
                       IDX_MAGIC_IMAGES);
    uint32_t n = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
    if (rc == ML_OK && (n == 0 || n > INT32_MAX || rows == 0 || rows > 4096 || cols == 0 ||
                        cols > 4096))
        rc = ml_errorf("%s: implausible header: %u images of %u x %u, expected 1..%d images "
                       "of at most 4096 x 4096",
                       path, n, rows, cols, INT32_MAX);
    if (rc == ML_OK) {
        size_t bytes = (size_t)n * rows * cols;
        char what[96];
        snprintf(what, sizeof what, "pixels (%u images of %u x %u)", n, rows, cols);
        s->u8 = ml_calloc(bytes, 1);
        rc = s->u8 ? gz_read_exact(f, path, s->u8, bytes, what) : ML_ERR;
    }
    gzclose(f);
    if (rc != ML_OK) return rc;
    s->n = n;
    s->C = 1;
    s->H = (int)rows;
    s->W = (int)cols;
    return ML_OK;
}

static int idx_read_labels(const char *dir, ml_data_src *s, const char *images, char *path,
                           size_t cap) {
    gzFile f = idx_open(dir, "train-labels-idx1-ubyte", path, cap);
    if (!f) return ML_ERR;
    unsigned char h[8];
    int rc = gz_read_exact(f, path, h, sizeof h, "IDX label header");
    if (rc == ML_OK && be32(h) != IDX_MAGIC_LABELS)
        rc = ml_errorf("%s: bad magic %u, expected %d (IDX labels)", path, be32(h),
                       IDX_MAGIC_LABELS);
    if (rc == ML_OK && be32(h + 4) != (uint64_t)s->n)
        rc = ml_errorf("%s: %u labels, expected %lld to match the images in %s", path,
                       be32(h + 4), (long long)s->n, images);
    unsigned char *lab = NULL;
    if (rc == ML_OK) {
        lab = ml_calloc((size_t)s->n, 1);
        s->y = ml_calloc((size_t)s->n, sizeof *s->y);
        if (!lab || !s->y) rc = ML_ERR;
        else rc = gz_read_exact(f, path, lab, (size_t)s->n, "labels");
    }
    for (int64_t i = 0; rc == ML_OK && i < s->n; i++) {
        if (lab[i] > 9)
            rc = ml_errorf("%s: label %d at sample %lld, expected 0..9", path, lab[i],
                           (long long)i);
        else s->y[i] = lab[i];
    }
    free(lab);
    gzclose(f);
    s->num_classes = 10;
    return rc;
}

int ml_data_src_idx(ml_data_src *s, const char *dir) {
    memset(s, 0, sizeof *s);
    if (!is_dir(dir))
        return ml_errorf("fashion_mnist: %s: no such directory; " FMNIST_HINT, dir);
    char images[4096], labels[4096];
    if (idx_read_images(dir, s, images, sizeof images) != ML_OK ||
        idx_read_labels(dir, s, images, labels, sizeof labels) != ML_OK) {
        ml_data_src_free(s);
        return ML_ERR;
    }
    return ML_OK;
}

/* ------------------------------------------------------------------------- CIFAR-10 --- */

int ml_data_src_cifar(ml_data_src *s, const char *dir) {
    memset(s, 0, sizeof *s);
    if (!is_dir(dir)) return ml_errorf("cifar10: %s: no such directory; " CIFAR_HINT, dir);
    char path[5][4096];
    int64_t records[5] = {0}, total = 0;
    for (int k = 0; k < 5; k++) {
        snprintf(path[k], sizeof path[k], "%s/data_batch_%d.bin", dir, k + 1);
        struct stat st;
        if (stat(path[k], &st) != 0) continue;
        if (st.st_size == 0 || st.st_size % CIFAR_RECORD != 0)
            return ml_errorf("%s: size %lld bytes, expected a non-zero multiple of %d "
                             "(1 label byte + 3072 pixel bytes per record)",
                             path[k], (long long)st.st_size, CIFAR_RECORD);
        records[k] = st.st_size / CIFAR_RECORD;
        total += records[k];
    }
    if (total == 0)
        return ml_errorf("cifar10: %s: no data_batch_1.bin .. data_batch_5.bin found; "
                         CIFAR_HINT, dir);
    if (total > INT32_MAX) return ml_errorf("cifar10: %s: too many records", dir);
    s->n = total;
    s->C = 3;
    s->H = 32;
    s->W = 32;
    s->num_classes = 10;
    s->u8 = ml_calloc((size_t)total * 3072, 1);
    s->y = ml_calloc((size_t)total, sizeof *s->y);
    unsigned char *rec = ml_calloc(CIFAR_RECORD, 1);
    int rc = s->u8 && s->y && rec ? ML_OK : ML_ERR;
    int64_t at = 0;
    for (int k = 0; rc == ML_OK && k < 5; k++) {
        if (!records[k]) continue;
        FILE *f = fopen(path[k], "rb");
        if (!f) {
            rc = ml_errorf("%s: cannot open: %s", path[k], strerror(errno));
            break;
        }
        for (int64_t r = 0; rc == ML_OK && r < records[k]; r++, at++) {
            if (fread(rec, 1, CIFAR_RECORD, f) != CIFAR_RECORD)
                rc = ml_errorf("%s: short read at record %lld, expected %lld records",
                               path[k], (long long)r, (long long)records[k]);
            else if (rec[0] > 9)
                rc = ml_errorf("%s: label %d at record %lld, expected 0..9", path[k], rec[0],
                               (long long)r);
            else {
                s->y[at] = rec[0];
                /* the record's R, G, B planes of 32 x 32 are already (C, H, W) */
                memcpy(s->u8 + (size_t)at * 3072, rec + 1, 3072);
            }
        }
        fclose(f);
    }
    free(rec);
    if (rc != ML_OK) ml_data_src_free(s);
    return rc;
}
