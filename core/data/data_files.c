/*
 * data_files.c — binary dataset formats: IDX (Fashion-MNIST, gzip or plain, via zlib) and
 * CIFAR-10's binary batches. Each fills an ml_data_src with every training sample as bytes.
 */
#include "data/source.h"
#include "base/common.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FMNIST_HINT "hint: install Debian's dataset-fashion-mnist package (make deps does)"
#define CIFAR_HINT                                                                         \
    "hint: download the binary version (cifar-10-binary.tar.gz) from "                    \
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and set data.path to "       \
    "its cifar-10-batches-bin directory"

enum { IDX_MAGIC_IMAGES = 2051, IDX_MAGIC_LABELS = 2049, CIFAR_RECORD = 1 + 3072 };

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---------------------------------------------------------------------------- IDX --- */

/*
 * A byte stream over a plain or gzip file. zlib's inflate is driven directly rather than
 * through gzread because gzread silently drops data after the last gzip member and reads a
 * non-gzip file as plain bytes: here a gzip file must be gzip to its last byte, every
 * member's CRC-32 and length trailer is checked, and a stream cut short is an error.
 */
typedef struct zin {
    FILE *f;
    const char *path;
    int gz;                 /* gzip data (magic 1f 8b); else plain bytes */
    int zinit;              /* z initialised */
    int member_done;        /* the current gzip member ended (trailer checked) */
    int eof;                /* the file has no more bytes */
    int64_t fsize;          /* file size in bytes (regular files) */
    uint64_t members;       /* gzip members completed */
    z_stream z;
    unsigned char in[1 << 16];
} zin;

static int zin_open(zin *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    int not_regular;
    if (!(r->f = ml_open_regular(path, &not_regular)))
        return not_regular
                   ? ml_errorf("%s: not a regular file, expected an IDX file (gzip or plain)", path)
                   : ml_errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(r->f), &st) != 0) {
        fclose(r->f);
        r->f = NULL;
        return ml_errorf("%s: cannot stat: %s", path, strerror(errno));
    }
    r->fsize = st.st_size;
    size_t n = fread(r->in, 1, sizeof r->in, r->f);
    r->z.next_in = r->in;
    r->z.avail_in = (uInt)n;
    if (n < sizeof r->in) r->eof = 1;
    size_t len = strlen(path);
    int named_gz = len > 3 && !strcmp(path + len - 3, ".gz");
    r->gz = n >= 2 && r->in[0] == 0x1f && r->in[1] == 0x8b;
    if (named_gz && !r->gz) {
        fclose(r->f);
        r->f = NULL;
        return ml_errorf("%s: not gzip data (the file starts with %s, expected the gzip "
                         "magic 1f 8b)", path, n < 2 ? "fewer than 2 bytes" : "other bytes");
    }
    if (r->gz) {
        /* 16 + 15: a gzip wrapper only, with its CRC-32 and ISIZE trailer checked */
        if (inflateInit2(&r->z, 16 + 15) != Z_OK) {
            fclose(r->f);
            r->f = NULL;
            return ml_errorf("%s: cannot initialise zlib", path);
        }
        r->zinit = 1;
    }
    return ML_OK;
}

static void zin_close(zin *r) {
    if (r->zinit) inflateEnd(&r->z);
    if (r->f) fclose(r->f);
    r->f = NULL;
    r->zinit = 0;
}

static int zin_fill(zin *r) {
    if (r->z.avail_in || r->eof) return ML_OK;
    size_t n = fread(r->in, 1, sizeof r->in, r->f);
    if (n == 0 && ferror(r->f)) return ml_errorf("%s: cannot read: %s", r->path, strerror(errno));
    if (n < sizeof r->in) r->eof = 1;
    r->z.next_in = r->in;
    r->z.avail_in = (uInt)n;
    return ML_OK;
}

/* Reads up to len bytes into buf; *got < len only at the end of the data. */
static int zin_read(zin *r, unsigned char *buf, size_t len, size_t *got) {
    *got = 0;
    while (*got < len) {
        if (zin_fill(r)) return ML_ERR;
        if (!r->gz) {
            size_t k = r->z.avail_in < len - *got ? r->z.avail_in : len - *got;
            if (k == 0) return ML_OK;
            memcpy(buf + *got, r->z.next_in, k);
            r->z.next_in += k;
            r->z.avail_in -= (uInt)k;
            *got += k;
            continue;
        }
        if (r->member_done) {
            if (r->z.avail_in == 0) return ML_OK; /* the end of the file after a whole member */
            /* gzip allows concatenated members; anything else after one is refused below */
            if (r->z.next_in[0] != 0x1f)
                return ml_errorf("%s: %lld bytes of trailing data after the end of the gzip "
                                 "stream, expected the end of the file",
                                 r->path, (long long)(r->fsize - (int64_t)r->z.total_in));
            uLong total = r->z.total_in;
            inflateReset(&r->z);
            r->z.total_in = total;
            r->member_done = 0;
        }
        size_t want = len - *got;
        r->z.next_out = buf + *got;
        r->z.avail_out = want > (1u << 30) ? 1u << 30 : (uInt)want;
        uInt before = r->z.avail_out;
        int zr = inflate(&r->z, Z_NO_FLUSH);
        *got += before - r->z.avail_out;
        if (zr == Z_STREAM_END) {
            r->member_done = 1;
            r->members++;
            continue;
        }
        if (zr == Z_BUF_ERROR && r->z.avail_in == 0 && r->eof)
            return ml_errorf("%s: truncated gzip stream (the file ends inside compressed data "
                             "after %lld bytes), expected a complete gzip file",
                             r->path, (long long)r->fsize);
        if (zr != Z_OK && zr != Z_BUF_ERROR)
            return ml_errorf("%s: corrupt gzip data (zlib: %s) near compressed byte %lld",
                             r->path, r->z.msg ? r->z.msg : zError(zr),
                             (long long)r->z.total_in);
        if (zr == Z_BUF_ERROR && r->z.avail_in == 0 && !r->eof) continue;
    }
    return ML_OK;
}

/* Reads exactly len bytes; the error says how many were expected and how many came. */
static int zin_read_exact(zin *r, void *buf, size_t len, const char *what) {
    size_t got;
    if (zin_read(r, buf, len, &got)) return ML_ERR;
    if (got < len)
        return ml_errorf("%s: truncated: expected %zu bytes of %s, found %zu", r->path, len,
                         what, got);
    return ML_OK;
}

/* After the data the header announced: the file (and its gzip stream) must end here. */
static int zin_expect_end(zin *r, const char *what) {
    unsigned char extra[4096];
    size_t got, more = 0;
    do {
        if (zin_read(r, extra, sizeof extra, &got)) return ML_ERR;
        more += got;
    } while (got == sizeof extra && more < ((size_t)1 << 20));
    if (more)
        return ml_errorf("%s: %s%zu bytes after the %s, expected the end of the file "
                         "(the header's sizes do not match the data)",
                         r->path, more >= ((size_t)1 << 20) ? "at least " : "", more, what);
    if (r->gz && !r->member_done)
        return ml_errorf("%s: the gzip stream does not end, expected a complete gzip file",
                         r->path);
    return ML_OK;
}

int ml_data_idx_read(const char *path, uint32_t magic, uint32_t *dims, uint8_t **data) {
    *data = NULL;
    int ndim = (int)(magic & 0xff);
    if (magic >> 8 != 0x08 || ndim < 1 || ndim > ML_IDX_MAX_DIMS)
        return ml_errorf("%s: ml_data_idx_read: unsupported magic %u", path, magic);
    zin *r = malloc(sizeof *r);
    if (!r) return ml_errorf("%s: out of memory", path);
    if (zin_open(r, path)) {
        free(r);
        return ML_ERR;
    }
    unsigned char h[4 + 4 * ML_IDX_MAX_DIMS];
    size_t hlen = 4 + 4 * (size_t)ndim, bytes = 1;
    const char *kind = ndim == 1 ? "IDX labels" : "IDX images";
    char what[160];
    int rc = zin_read_exact(r, h, hlen, ndim == 1 ? "IDX label header" : "IDX image header");
    if (rc == ML_OK && be32(h) != magic)
        rc = ml_errorf("%s: bad magic %u, expected %u (%s)", path, be32(h), magic, kind);
    for (int d = 0; rc == ML_OK && d < ndim; d++) {
        dims[d] = be32(h + 4 + 4 * d);
        /* n at most INT32_MAX; an image side at most 4096 */
        uint32_t cap = d == 0 ? INT32_MAX : 4096;
        if (dims[d] == 0 || dims[d] > cap)
            rc = ml_errorf("%s: implausible header: dimension %d is %u, expected 1..%u (%s)",
                           path, d + 1, dims[d], cap, kind);
        else if (__builtin_mul_overflow(bytes, (size_t)dims[d], &bytes))
            rc = ml_errorf("%s: implausible header: the dimensions overflow (%s)", path, kind);
    }
    if (rc == ML_OK) {
        if (ndim == 3)
            snprintf(what, sizeof what, "pixels (%u images of %u x %u)", dims[0], dims[1],
                     dims[2]);
        else snprintf(what, sizeof what, "labels (%u)", dims[0]);
        /* never allocate what the file cannot hold: plain files must be exactly header +
         * data; deflate expands at most 1032:1 */
        if (!r->gz && (uint64_t)r->fsize != hlen + (uint64_t)bytes)
            rc = ml_errorf("%s: %lld bytes, expected %zu (a %zu-byte header and %s)", path,
                           (long long)r->fsize, hlen + bytes, hlen, what);
        else if (r->gz && (uint64_t)bytes > (uint64_t)r->fsize * 1032u + 1024u)
            rc = ml_errorf("%s: the header announces %zu bytes of %s but a gzip file of %lld "
                           "bytes holds at most %llu",
                           path, bytes, what, (long long)r->fsize,
                           (unsigned long long)r->fsize * 1032u + 1024u);
    }
    if (rc == ML_OK) {
        *data = ml_calloc(bytes, 1);
        rc = *data ? zin_read_exact(r, *data, bytes, what) : ML_ERR;
    }
    if (rc == ML_OK) rc = zin_expect_end(r, what);
    zin_close(r);
    free(r);
    if (rc != ML_OK) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

/*
 * Finds dir/name.gz or else dir/name; path receives the file found. ML_ERR with an error
 * naming both candidates when neither exists.
 */
static int idx_find(const char *dir, const char *name, char *path, size_t cap) {
    struct stat st;
    snprintf(path, cap, "%s/%s.gz", dir, name);
    if (stat(path, &st) == 0) return ML_OK;
    int err = errno;
    snprintf(path, cap, "%s/%s", dir, name);
    if (stat(path, &st) == 0) return ML_OK;
    snprintf(path, cap, "%s/%s.gz", dir, name);
    return ml_errorf("%s: cannot open (%s; nor %s without .gz); " FMNIST_HINT, path,
                     strerror(err ? err : ENOENT), name);
}

int ml_data_src_idx(ml_data_src *s, const char *dir) {
    memset(s, 0, sizeof *s);
    if (!ml_is_dir(dir))
        return ml_errorf("fashion_mnist: %s: no such directory; " FMNIST_HINT, dir);
    char images[4096], labels[4096];
    uint32_t idim[3], ldim[1];
    uint8_t *lab = NULL;
    int rc = idx_find(dir, "train-images-idx3-ubyte", images, sizeof images);
    if (rc == ML_OK) rc = ml_data_idx_read(images, IDX_MAGIC_IMAGES, idim, &s->u8);
    if (rc == ML_OK) rc = idx_find(dir, "train-labels-idx1-ubyte", labels, sizeof labels);
    if (rc == ML_OK) rc = ml_data_idx_read(labels, IDX_MAGIC_LABELS, ldim, &lab);
    if (rc == ML_OK && ldim[0] != idim[0])
        rc = ml_errorf("%s: %u labels, expected %u to match the images in %s", labels, ldim[0],
                       idim[0], images);
    if (rc == ML_OK) {
        s->n = idim[0];
        s->C = 1;
        s->H = (int)idim[1];
        s->W = (int)idim[2];
        s->num_classes = 10;
        s->y = ml_calloc((size_t)s->n, sizeof *s->y);
        if (!s->y) rc = ML_ERR;
    }
    for (int64_t i = 0; rc == ML_OK && i < s->n; i++) {
        if (lab[i] > 9)
            rc = ml_errorf("%s: label %d at sample %lld, expected 0..9", labels, lab[i],
                           (long long)i);
        else s->y[i] = lab[i];
    }
    free(lab);
    if (rc != ML_OK) ml_data_src_free(s);
    return rc;
}

/* ------------------------------------------------------------------------- CIFAR-10 --- */

/* The records of one batch file; its size is re-checked on the open file (no race with a
 * stat of the name). */
static int cifar_open(const char *path, FILE **fp, int64_t *records) {
    int not_regular;
    FILE *f = ml_open_regular(path, &not_regular);
    if (!f)
        return not_regular
                   ? ml_errorf("%s: not a regular file, expected a CIFAR-10 binary batch", path)
                   : ml_errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return ml_errorf("%s: cannot stat: %s", path, strerror(errno));
    }
    if (st.st_size == 0 || st.st_size % CIFAR_RECORD != 0) {
        fclose(f);
        return ml_errorf("%s: size %lld bytes, expected a non-zero multiple of %d "
                         "(1 label byte + 3072 pixel bytes per record)",
                         path, (long long)st.st_size, CIFAR_RECORD);
    }
    *records = st.st_size / CIFAR_RECORD;
    *fp = f;
    return ML_OK;
}

/* Reads records into u8 (records, 3072) and y; the file must end after them. */
static int cifar_read(FILE *f, const char *path, int64_t records, uint8_t *u8, int32_t *y) {
    unsigned char rec[CIFAR_RECORD];
    for (int64_t r = 0; r < records; r++) {
        if (fread(rec, 1, CIFAR_RECORD, f) != CIFAR_RECORD)
            return ml_errorf("%s: short read at record %lld, expected %lld records", path,
                             (long long)r, (long long)records);
        if (rec[0] > 9)
            return ml_errorf("%s: label %d at record %lld, expected 0..9", path, rec[0],
                             (long long)r);
        y[r] = rec[0];
        /* the record's R, G, B planes of 32 x 32 are already (C, H, W) */
        memcpy(u8 + (size_t)r * 3072, rec + 1, 3072);
    }
    if (fgetc(f) != EOF)
        return ml_errorf("%s: the file grew while being read, expected %lld records", path,
                         (long long)records);
    return ML_OK;
}

static void cifar_shape(ml_data_src *s, int64_t n) {
    s->n = n;
    s->C = 3;
    s->H = 32;
    s->W = 32;
    s->num_classes = 10;
}

int ml_data_src_cifar_file(ml_data_src *s, const char *path) {
    memset(s, 0, sizeof *s);
    FILE *f;
    int64_t records;
    if (cifar_open(path, &f, &records)) return ML_ERR;
    int rc = records > INT32_MAX ? ml_errorf("%s: too many records", path) : ML_OK;
    if (rc == ML_OK) {
        cifar_shape(s, records);
        s->u8 = ml_calloc((size_t)records * 3072, 1);
        s->y = ml_calloc((size_t)records, sizeof *s->y);
        rc = s->u8 && s->y ? cifar_read(f, path, records, s->u8, s->y) : ML_ERR;
    }
    fclose(f);
    if (rc != ML_OK) ml_data_src_free(s);
    return rc;
}

int ml_data_src_cifar(ml_data_src *s, const char *dir) {
    memset(s, 0, sizeof *s);
    if (!ml_is_dir(dir)) return ml_errorf("cifar10: %s: no such directory; " CIFAR_HINT, dir);
    char path[5][4096];
    FILE *f[5] = {0};
    int64_t records[5] = {0}, total = 0;
    int rc = ML_OK;
    for (int k = 0; rc == ML_OK && k < 5; k++) {
        snprintf(path[k], sizeof path[k], "%s/data_batch_%d.bin", dir, k + 1);
        struct stat st;
        if (stat(path[k], &st) != 0) continue; /* missing batches are skipped */
        rc = cifar_open(path[k], &f[k], &records[k]);
        total += records[k];
    }
    if (rc == ML_OK && total == 0)
        rc = ml_errorf("cifar10: %s: no data_batch_1.bin .. data_batch_5.bin found; "
                       CIFAR_HINT, dir);
    if (rc == ML_OK && total > INT32_MAX) rc = ml_errorf("cifar10: %s: too many records", dir);
    if (rc == ML_OK) {
        cifar_shape(s, total);
        s->u8 = ml_calloc((size_t)total * 3072, 1);
        s->y = ml_calloc((size_t)total, sizeof *s->y);
        if (!s->u8 || !s->y) rc = ML_ERR;
    }
    for (int k = 0, at = 0; rc == ML_OK && k < 5; at += (int)records[k], k++)
        if (f[k]) rc = cifar_read(f[k], path[k], records[k], s->u8 + (size_t)at * 3072, s->y + at);
    for (int k = 0; k < 5; k++)
        if (f[k]) fclose(f[k]);
    if (rc != ML_OK) ml_data_src_free(s);
    return rc;
}
