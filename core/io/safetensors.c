/* safetensors.c — safetensors writer and validating reader (see safetensors.h). */
#include "io/safetensors.h"
#include "base/common.h"
#include "base/json.h"
#include "base/file.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <zlib.h>

/* The reference implementation refuses headers above 100 MB; so do we. */
#define ST_HEADER_MAX 100000000ULL
#define ST_DIM_MAX (INT64_C(1) << 40)

typedef struct st_entry {
    char *name;
    int ndim;
    int64_t shape[ML_ST_MAX_DIMS];
    float *data;        /* owned, 64-byte aligned copy in host byte order */
    uint64_t begin, end; /* byte offsets in the data section */
} st_entry;

struct ml_st_file {
    int n;
    st_entry *t;
    int nmeta;
    char **mkeys, **mvals;
};

static int host_is_le(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static uint32_t bswap32(uint32_t x) {
    return (x >> 24) | ((x >> 8) & 0xff00) | ((x << 8) & 0xff0000) | (x << 24);
}

/* Copies n floats to little-endian bytes at dst (or back: the swap is its own inverse). */
static void copy_le(void *dst, const void *src, size_t n) {
    memcpy(dst, src, n * 4);
    if (host_is_le()) return;
    uint32_t *w = dst;
    for (size_t i = 0; i < n; i++) w[i] = bswap32(w[i]);
}

/* zlib's crc32 continued over n bytes (in chunks: its length argument is 32-bit). */
static uLong crc_more(uLong c, const unsigned char *p, uint64_t n) {
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return c;
}

/*
 * crc_more over the concatenation of iov[0..n), cut into spans of at least CRC_SPAN_MIN bytes
 * (at most CRC_MAX_SPANS) that the OpenMP threads share and whose CRCs crc32_combine joins:
 * after the write itself, the checksum is the largest cost of writing (and of opening) a
 * checkpoint of many experts. The same value as one crc_more over all of it.
 */
#define CRC_SPAN_MIN ((uint64_t)4 << 20)
#define CRC_MAX_SPANS 16

static uLong crc_pieces(uLong c, const struct iovec *iov, int n) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    uint64_t spans = total / CRC_SPAN_MIN;
    if (spans > CRC_MAX_SPANS) spans = CRC_MAX_SPANS;
    if (spans <= 1) {
        for (int i = 0; i < n; i++) c = crc_more(c, iov[i].iov_base, iov[i].iov_len);
        return c;
    }
    int T = (int)spans;
    uLong part[CRC_MAX_SPANS];
    uint64_t len[CRC_MAX_SPANS];
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < T; t++) {
        uint64_t lo = total / (uint64_t)T * (uint64_t)t, hi = t == T - 1 ? total : lo + total / (uint64_t)T;
        uLong pc = crc32(0L, Z_NULL, 0);
        uint64_t at = 0; /* where iov[i] starts in the concatenation */
        for (int i = 0; i < n && at < hi; at += iov[i].iov_len, i++) {
            uint64_t a = lo > at ? lo : at, b = hi < at + iov[i].iov_len ? hi : at + iov[i].iov_len;
            if (a < b) pc = crc_more(pc, (const unsigned char *)iov[i].iov_base + (a - at), b - a);
        }
        part[t] = pc;
        len[t] = hi - lo;
    }
    for (int t = 0; t < T; t++) c = crc32_combine(c, part[t], (z_off_t)len[t]);
    return c;
}

static uint32_t crc_of(const unsigned char *p, uint64_t n) { return (uint32_t)crc_more(crc32(0L, Z_NULL, 0), p, n); }

/* The checksum's 8 hex digits sit at this byte offset of every file moelab writes: right
 * after the length prefix and `{"__metadata__":{"checksum":"`. */
#define ST_CRC_PREFIX "{\"__metadata__\":{\"checksum\":\""
#define ST_CRC_AT (8 + sizeof ST_CRC_PREFIX - 1)

/* CRC32 of the whole file except the 8 checksum digits at byte `at`: the length prefix,
 * the header (tensor names, shapes, offsets, every metadata value) and the data. */
static uint32_t file_crc(const unsigned char *p, uint64_t n, uint64_t at) {
    const struct iovec two[2] = {{(void *)p, at}, {(void *)(p + at + 8), n - at - 8}};
    return (uint32_t)crc_pieces(crc32(0L, Z_NULL, 0), two, 2);
}

/* Elements of a shape; -1 when a dimension is negative or the product is absurd. */
static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || shape[d] > ST_DIM_MAX) return -1;
        if (shape[d] && n > ST_DIM_MAX / shape[d]) return -1;
        n *= shape[d];
    }
    return n;
}

static void shape_text(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && o < cap; d++)
        o += (size_t)snprintf(out + o, cap - o, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (o < cap) snprintf(out + o, cap - o, "]");
}

/* ========================================================================= write */

static const ml_st_tensor *g_sort_t; /* for by_name; writes run on one thread */

static int by_name(const void *a, const void *b) {
    return strcmp(g_sort_t[*(const int *)a].name, g_sort_t[*(const int *)b].name);
}

/* The first name given twice, or NULL: sorted, then neighbours compared (n log n, for the
   thousands of tensors of a model with many experts). */
static const char *duplicate_name(const ml_st_tensor *t, int n, int *oom) {
    *oom = 0;
    if (n < 2) return NULL;
    int *ix = malloc((size_t)n * sizeof *ix);
    if (!ix) {
        *oom = 1;
        return NULL;
    }
    for (int i = 0; i < n; i++) ix[i] = i;
    g_sort_t = t;
    qsort(ix, (size_t)n, sizeof *ix, by_name);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (!strcmp(t[ix[i]].name, t[ix[i - 1]].name)) dup = t[ix[i]].name;
    free(ix);
    return dup;
}

/*
 * The file is written from where its parts are: the length prefix and header from one
 * buffer, each tensor's data straight from the caller's memory (pieces that follow each
 * other in memory, as a parameter block's tensors do, as one), with writev; the checksum is
 * computed over the same pieces first. No copy of the data is made (on a little-endian host;
 * a big-endian one converts the data into one buffer first).
 */
int ml_st_write(const char *path, const ml_st_tensor *t, int n, const char *const *meta_keys,
                const char *const *meta_values, int n_meta) {
    if (n < 0 || n_meta < 0) return ml_errorf("%s: negative tensor or metadata count", path);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || !*nm) return ml_errorf("%s: tensor %d has no name", path, i);
        if (!strcmp(nm, "__metadata__")) return ml_errorf("%s: tensor name '__metadata__' is reserved", path);
        if (t[i].ndim < 0 || t[i].ndim > ML_ST_MAX_DIMS)
            return ml_errorf("%s: tensor '%s' has %d dimensions, expected 0 to %d", path, nm, t[i].ndim,
                             ML_ST_MAX_DIMS);
        int64_t ne = numel(t[i].ndim, t[i].shape);
        if (ne < 0) return ml_errorf("%s: tensor '%s' has a negative or too large shape", path, nm);
        if (ne > 0 && !t[i].data) return ml_errorf("%s: tensor '%s' has no data", path, nm);
        total += (uint64_t)ne * 4;
    }
    int oom;
    const char *dup = duplicate_name(t, n, &oom);
    if (oom) return ml_errorf("%s: out of memory checking %d tensor names", path, n);
    if (dup) return ml_errorf("%s: tensor '%s' given twice", path, dup);
    for (int i = 0; i < n_meta; i++) {
        if (!meta_keys[i] || !*meta_keys[i] || !meta_values[i])
            return ml_errorf("%s: metadata entry %d has no key or no value", path, i);
        if (!strcmp(meta_keys[i], "checksum") || !strcmp(meta_keys[i], "checksum_covers"))
            return ml_errorf("%s: metadata key '%s' is reserved (ml_st_write adds it)", path, meta_keys[i]);
        for (int k = 0; k < i; k++)
            if (!strcmp(meta_keys[i], meta_keys[k]))
                return ml_errorf("%s: metadata key '%s' given twice", path, meta_keys[i]);
    }
    if (total > SIZE_MAX / 2) return ml_errorf("%s: %llu bytes of tensor data is too much", path,
                                               (unsigned long long)total);
    /* Header: metadata first, as the reference writer does; the checksum is its first
     * member, written as a placeholder and filled in once the whole file is laid out. */
    ml_json meta, h;
    ml_json_begin(&meta);
    ml_json_str(&meta, "checksum", "00000000");
    ml_json_str(&meta, "checksum_covers", "file");
    for (int i = 0; i < n_meta; i++) ml_json_str(&meta, meta_keys[i], meta_values[i]);
    ml_json_begin(&h);
    ml_json_raw(&h, "__metadata__", ml_json_end(&meta));
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)numel(t[i].ndim, t[i].shape) * 4;
        char shape[256], offs[64];
        shape_text(shape, sizeof shape, t[i].ndim, t[i].shape);
        snprintf(offs, sizeof offs, "[%llu,%llu]", (unsigned long long)off, (unsigned long long)(off + bytes));
        ml_json e;
        ml_json_begin(&e);
        ml_json_str(&e, "dtype", "F32");
        ml_json_raw(&e, "shape", shape);
        ml_json_raw(&e, "data_offsets", offs);
        ml_json_raw(&h, t[i].name, ml_json_end(&e));
        ml_json_free(&e);
        off += bytes;
    }
    const char *hdr = ml_json_end(&h);
    ml_json_free(&meta);
    int rc = ML_ERR;
    unsigned char *head = NULL, *swapped = NULL;
    struct iovec *iov = NULL;
    if (!hdr) {
        ml_error_prefix("%s: building the header", path);
        goto done;
    }
    /* Never write what we could not read back: a header the reader would refuse as too
     * large (huge metadata), or one that is not valid JSON (a name that is not UTF-8). */
    if (h.b.len > ST_HEADER_MAX) {
        ml_errorf("%s: the header would be %zu bytes, more than the %llu a reader accepts (metadata too large)",
                  path, h.b.len, ST_HEADER_MAX);
        goto done;
    }
    ml_jv *check = ml_jv_parse(hdr, h.b.len);
    if (!check) {
        ml_error_prefix("%s: header would not be valid JSON (is every name UTF-8?)", path);
        goto done;
    }
    ml_jv_free(check);
    size_t hlen = (h.b.len + 7) & ~(size_t)7;
    head = malloc(8 + hlen);
    iov = malloc(((size_t)n + 1) * sizeof *iov);
    if (!head || !iov) {
        ml_errorf("%s: out of memory for the header of %zu bytes", path, hlen);
        goto done;
    }
    for (int b = 0; b < 8; b++) head[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    memcpy(head + 8, hdr, h.b.len);
    memset(head + 8 + h.b.len, ' ', hlen - h.b.len);
    int niov = 0;
    iov[niov++] = (struct iovec){head, 8 + hlen};
    if (host_is_le()) {
        for (int i = 0; i < n; i++) {
            size_t bytes = (size_t)numel(t[i].ndim, t[i].shape) * 4;
            if (!bytes) continue;
            struct iovec *last = &iov[niov - 1];
            if (niov > 1 && (const char *)last->iov_base + last->iov_len == (const char *)t[i].data) last->iov_len += bytes;
            else iov[niov++] = (struct iovec){(void *)t[i].data, bytes};
        }
    } else if (total) {
        if (!(swapped = malloc((size_t)total))) {
            ml_errorf("%s: out of memory for %llu bytes of tensor data", path, (unsigned long long)total);
            goto done;
        }
        off = 0;
        for (int i = 0; i < n; i++) {
            size_t ne = (size_t)numel(t[i].ndim, t[i].shape);
            if (ne) copy_le(swapped + off, t[i].data, ne);
            off += ne * 4;
        }
        iov[niov++] = (struct iovec){swapped, (size_t)total};
    }
    /* the checksum: every byte of the file but its own 8 digits, in file order */
    uLong c = crc_more(crc32(0L, Z_NULL, 0), head, ST_CRC_AT);
    c = crc_more(c, head + ST_CRC_AT + 8, 8 + hlen - ST_CRC_AT - 8);
    c = crc_pieces(c, iov + 1, niov - 1);
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", (uint32_t)c);
    memcpy(head + ST_CRC_AT, crc, 8);
    rc = ml_write_file_atomic_iov(path, iov, niov);
done:
    free(iov);
    free(head);
    free(swapped);
    ml_json_free(&h);
    return rc;
}

/* ========================================================================== read */

void ml_st_close(ml_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->t[i].name);
        free(f->t[i].data);
    }
    free(f->t);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->mkeys[i]);
        free(f->mvals[i]);
    }
    free(f->mkeys);
    free(f->mvals);
    free(f);
}

static unsigned char *read_all(const char *path, uint64_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ml_errorf("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) < 0 || !S_ISREG(st.st_mode)) {
        ml_errorf("%s: not a regular file", path);
        fclose(fp);
        return NULL;
    }
    unsigned char *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        ml_errorf("%s: out of memory reading %lld bytes", path, (long long)st.st_size);
        fclose(fp);
        return NULL;
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, fp);
    int err = ferror(fp);
    fclose(fp);
    if (err || got != (size_t)st.st_size) {
        ml_errorf("%s: read %zu of %lld bytes", path, got, (long long)st.st_size);
        free(buf);
        return NULL;
    }
    *size = (uint64_t)st.st_size;
    return buf;
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Fills e from the header entry v; data is copied later. */
static int parse_entry(const char *path, const char *name, const ml_jv *v, uint64_t data_size, st_entry *e) {
    if (v->type != ML_JV_OBJ) return ml_errorf("%s: tensor '%s': header entry is not an object", path, name);
    const ml_jv *dt = ml_jv_get(v, "dtype"), *sh = ml_jv_get(v, "shape"), *of = ml_jv_get(v, "data_offsets");
    if (!dt || !sh || !of)
        return ml_errorf("%s: tensor '%s': header entry lacks %s", path, name,
                         !dt ? "\"dtype\"" : !sh ? "\"shape\"" : "\"data_offsets\"");
    if (dt->type != ML_JV_STR || strcmp(dt->str, "F32"))
        return ml_errorf("%s: tensor '%s': dtype %s%s%s is not supported (moelab reads F32 only)", path, name,
                         dt->type == ML_JV_STR ? "\"" : "", dt->type == ML_JV_STR ? dt->str : "(not a string)",
                         dt->type == ML_JV_STR ? "\"" : "");
    if (sh->type != ML_JV_ARR) return ml_errorf("%s: tensor '%s': shape is not an array", path, name);
    if (sh->n > ML_ST_MAX_DIMS)
        return ml_errorf("%s: tensor '%s': shape has %d dimensions, at most %d supported", path, name, sh->n,
                         ML_ST_MAX_DIMS);
    e->ndim = sh->n;
    for (int d = 0; d < sh->n; d++) {
        if (sh->items[d].type != ML_JV_NUM || !sh->items[d].is_int || sh->items[d].i < 0)
            return ml_errorf("%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        e->shape[d] = sh->items[d].i;
    }
    int64_t ne = numel(e->ndim, e->shape);
    if (ne < 0) return ml_errorf("%s: tensor '%s': shape is too large", path, name);
    if (of->type != ML_JV_ARR || of->n != 2 || of->items[0].type != ML_JV_NUM || !of->items[0].is_int ||
        of->items[1].type != ML_JV_NUM || !of->items[1].is_int || of->items[0].i < 0 || of->items[1].i < 0)
        return ml_errorf("%s: tensor '%s': data_offsets is not [begin, end] of non-negative integers", path, name);
    e->begin = (uint64_t)of->items[0].i;
    e->end = (uint64_t)of->items[1].i;
    if (e->begin > e->end || e->end > data_size)
        return ml_errorf("%s: tensor '%s': data_offsets [%llu,%llu] outside the data section of %llu bytes",
                         path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                         (unsigned long long)data_size);
    if (e->end - e->begin != (uint64_t)ne * 4) {
        char s[256];
        shape_text(s, sizeof s, e->ndim, e->shape);
        return ml_errorf("%s: tensor '%s': data_offsets span %llu bytes, shape %s of F32 needs %llu", path, name,
                         (unsigned long long)(e->end - e->begin), s, (unsigned long long)ne * 4);
    }
    return ML_OK;
}

/*
 * The checksum: required unless flags allow its absence. "checksum_covers": "file" (every
 * file written since checkpoint format 2) = CRC32 of the whole file but the 8 digits, which
 * must sit at ST_CRC_AT; absent = an older moelab file whose CRC covers the data only.
 */
static int check_crc(const char *path, const ml_st_file *f, const unsigned char *buf, uint64_t size,
                     const unsigned char *data, uint64_t data_size, int flags) {
    const char *want = ml_st_meta(f, "checksum"), *covers = ml_st_meta(f, "checksum_covers");
    if (!want) {
        if (flags & ML_ST_ALLOW_NO_CHECKSUM) return ML_OK;
        return ml_errorf("%s: metadata has no 'checksum' (every moelab checkpoint has one): the file was "
                         "altered or not written by moelab", path);
    }
    char *end = NULL;
    unsigned long v = strtoul(want, &end, 16);
    if (strlen(want) != 8 || *end || !isxdigit((unsigned char)want[0]))
        return ml_errorf("%s: metadata checksum '%s' is not 8 hex digits", path, want);
    uint32_t have;
    if (covers) {
        if (strcmp(covers, "file") != 0)
            return ml_errorf("%s: metadata checksum_covers is '%s', expected 'file'", path, covers);
        if (size < ST_CRC_AT + 8 || memcmp(buf + 8, ST_CRC_PREFIX, sizeof ST_CRC_PREFIX - 1) != 0)
            return ml_errorf("%s: the checksum is not the header's first entry (file is corrupt)", path);
        have = file_crc(buf, size, ST_CRC_AT);
    } else {
        have = crc_of(data, data_size);
    }
    if ((uint32_t)v != have)
        return ml_errorf("%s: checksum mismatch (file is corrupt): header says %s, the %s has %08x", path, want,
                         covers ? "file" : "data", have);
    return ML_OK;
}

ml_st_file *ml_st_open(const char *path) { return ml_st_open_flags(path, 0); }

ml_st_file *ml_st_open_flags(const char *path, int flags) {
    uint64_t size = 0;
    unsigned char *buf = read_all(path, &size);
    if (!buf) return NULL;
    ml_st_file *f = NULL;
    ml_jv *root = NULL;
    st_entry **order = NULL;
    if (size < 8) {
        ml_errorf("%s: file is %llu bytes, too short for a safetensors header length (8 bytes)", path,
                  (unsigned long long)size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int b = 7; b >= 0; b--) hlen = (hlen << 8) | buf[b];
    /* The messages below never print the bytes they read: the file may be anything (a
     * script may name /etc/shadow), and its first 8 bytes as a number would leak them. */
    if (hlen > size - 8) {
        ml_errorf("%s: not a safetensors file, or truncated: its header length field points past the end "
                  "of the file (%llu bytes)", path, (unsigned long long)size);
        goto fail;
    }
    if (hlen > ST_HEADER_MAX || hlen < 2 || buf[8] != '{') {
        ml_errorf("%s: not a safetensors file: expected an 8-byte header length and a JSON header of 2 to "
                  "%llu bytes starting with '{'", path, ST_HEADER_MAX);
        goto fail;
    }
    root = ml_jv_parse((const char *)buf + 8, (size_t)hlen);
    if (!root) {
        ml_error_prefix("%s: header is not valid JSON", path);
        goto fail;
    }
    if (root->type != ML_JV_OBJ) {
        ml_errorf("%s: header is not a JSON object", path);
        goto fail;
    }
    const unsigned char *data = buf + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    f = ml_calloc(1, sizeof *f);
    if (!f) goto fail;
    f->t = ml_calloc((size_t)root->n, sizeof *f->t);
    order = ml_calloc((size_t)root->n, sizeof *order);
    if (!f->t || !order) goto fail;
    const ml_jv *meta = NULL;
    for (int i = 0; i < root->n; i++) {
        const char *name = root->keys[i];
        if (!strcmp(name, "__metadata__")) {
            meta = &root->items[i];
            continue;
        }
        st_entry *e = &f->t[f->n];
        if (parse_entry(path, name, &root->items[i], data_size, e)) goto fail;
        if (!(e->name = ml_strdup(name))) goto fail;
        order[f->n] = e;
        f->n++;
    }
    /* Non-overlapping. */
    qsort(order, (size_t)f->n, sizeof *order, cmp_begin);
    /* Sorted by begin: with no overlap so far, the previous non-empty tensor ends last. */
    const st_entry *a = NULL;
    for (int i = 0; i < f->n; i++) {
        const st_entry *b = order[i];
        if (b->end == b->begin) continue; /* empty tensors occupy no bytes */
        if (a && b->begin < a->end) {
            ml_errorf("%s: tensors '%s' and '%s' overlap (data_offsets [%llu,%llu] and [%llu,%llu])", path,
                      a->name, b->name, (unsigned long long)a->begin, (unsigned long long)a->end,
                      (unsigned long long)b->begin, (unsigned long long)b->end);
            goto fail;
        }
        a = b;
    }
    if (meta) {
        if (meta->type != ML_JV_OBJ) {
            ml_errorf("%s: __metadata__ is not an object", path);
            goto fail;
        }
        f->mkeys = ml_calloc((size_t)meta->n, sizeof *f->mkeys);
        f->mvals = ml_calloc((size_t)meta->n, sizeof *f->mvals);
        if (!f->mkeys || !f->mvals) goto fail;
        for (int i = 0; i < meta->n; i++) {
            if (meta->items[i].type != ML_JV_STR) {
                ml_errorf("%s: __metadata__ value of '%s' is not a string", path, meta->keys[i]);
                goto fail;
            }
            f->mkeys[i] = ml_strdup(meta->keys[i]);
            f->mvals[i] = ml_strdup(meta->items[i].str);
            f->nmeta++;
            if (!f->mkeys[i] || !f->mvals[i]) goto fail;
        }
    }
    if (check_crc(path, f, buf, size, data, data_size, flags)) goto fail;
    for (int i = 0; i < f->n; i++) {
        st_entry *e = &f->t[i];
        size_t ne = (size_t)((e->end - e->begin) / 4);
        if (!(e->data = ml_alloc_floats(ne))) goto fail;
        if (ne) copy_le(e->data, data + e->begin, ne);
    }
    free(order);
    ml_jv_free(root);
    free(buf);
    return f;
fail:
    free(order);
    ml_jv_free(root);
    ml_st_close(f);
    free(buf);
    return NULL;
}

int ml_st_count(const ml_st_file *f) { return f ? f->n : 0; }

const char *ml_st_name(const ml_st_file *f, int i) {
    return f && i >= 0 && i < f->n ? f->t[i].name : NULL;
}

const float *ml_st_get(const ml_st_file *f, const char *name, int *ndim, int64_t *shape) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->n; i++) {
        const st_entry *e = &f->t[i];
        if (strcmp(e->name, name)) continue;
        if (ndim) *ndim = e->ndim;
        if (shape)
            for (int d = 0; d < e->ndim; d++) shape[d] = e->shape[d];
        return e->data;
    }
    return NULL;
}

const char *ml_st_meta(const ml_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->mkeys[i], key)) return f->mvals[i];
    return NULL;
}
