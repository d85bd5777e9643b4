/*
 * targets.h — the fuzz harnesses, shared by the libFuzzer binaries (tests/fuzz/fuzz_*.c,
 * built by `make fuzz`) and by check_fuzz, which replays the seed corpus and every crash
 * input ever found through the normal build. Each harness writes the input to a file (the
 * readers take paths) and runs one reader on it; the reader may accept or refuse the
 * input, it must not crash, leak or read out of bounds.
 * Header-only; every function is static.
 */
#ifndef MOELAB_FUZZ_TARGETS_H
#define MOELAB_FUZZ_TARGETS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "base/common.h"
#include "io/config.h"
#include "data/source.h"
#include "io/safetensors.h"

static char fz_dirname[128];
static const char *const fz_names[] = {"config.yaml", "ckpt.safetensors", "train-idx-ubyte",
                                       "train-idx-ubyte.gz", "data_batch_1.bin"};

static inline void fz_cleanup(void) {
    char path[256];
    for (size_t i = 0; i < sizeof fz_names / sizeof *fz_names; i++) {
        snprintf(path, sizeof path, "%s/%s", fz_dirname, fz_names[i]);
        unlink(path);
    }
    rmdir(fz_dirname);
}

/* A private directory per process (on tmpfs when there is one), made once, removed at exit. */
static inline const char *fz_dir(void) {
    if (!fz_dirname[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fz_dirname, sizeof fz_dirname, "%s/moelab-fuzz-XXXXXX", base);
        if (!mkdtemp(fz_dirname)) abort();
        atexit(fz_cleanup);
    }
    return fz_dirname;
}

/* Writes data to <dir>/<name> and returns the path (static buffer). */
static inline const char *fz_write(const char *name, const uint8_t *data, size_t size) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
    return path;
}

/* YAML config loader: the input is the config file (a relative base: stays in the dir). */
static inline int fz_config(const uint8_t *data, size_t size) {
    const char *path = fz_write("config.yaml", data, size);
    ml_config *c = ml_config_load(path, NULL, 0, NULL, NULL);
    if (c) {
        /* the resolved tree and the getters on what the schema promises */
        (void)ml_config_yaml(c);
        (void)ml_config_int(c, "train.epochs", 0);
        (void)ml_config_str(c, "data.dataset", "");
        (void)ml_config_len(c, "losses");
    }
    ml_config_free(c);
    return 0;
}

/* safetensors reader: open, then touch every tensor and its data. */
static inline void fz_st_read(const char *path);

/*
 * The input as given, and again with its checksum made right: the checksum covers the
 * whole file, so almost every mutation would otherwise stop at the CRC check and never
 * reach the header parser, the offset and shape checks or the metadata.
 */
static inline int fz_safetensors(const uint8_t *data, size_t size) {
    fz_st_read(fz_write("ckpt.safetensors", data, size));
    static const char prefix[] = "{\"__metadata__\":{\"checksum\":\"";
    size_t at = 8 + sizeof prefix - 1;
    if (size < at + 8 || memcmp(data + 8, prefix, sizeof prefix - 1) != 0) return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, fixed, (uInt)at);
    c = crc32(c, fixed + at + 8, (uInt)(size - at - 8));
    char hex[9];
    snprintf(hex, sizeof hex, "%08lx", c & 0xffffffffUL);
    memcpy(fixed + at, hex, 8);
    fz_st_read(fz_write("ckpt.safetensors", fixed, size));
    free(fixed);
    return 0;
}

static inline void fz_st_read(const char *path) {
    ml_st_file *f = ml_st_open(path);
    if (f) {
        volatile float sink = 0;
        for (int i = 0; i < ml_st_count(f); i++) {
            const char *name = ml_st_name(f, i);
            int ndim = 0;
            int64_t shape[ML_ST_MAX_DIMS] = {0};
            const float *x = name ? ml_st_get(f, name, &ndim, shape) : NULL;
            if (!x) continue;
            int64_t n = 1;
            for (int d = 0; d < ndim; d++) n *= shape[d];
            for (int64_t k = 0; k < n; k++) sink += x[k];
        }
        (void)ml_st_meta(f, "format_version");
        (void)ml_st_meta(f, "checksum");
        (void)sink;
    }
    ml_st_close(f);
}

static inline void fz_idx_file(const char *path) {
    uint32_t dims[ML_IDX_MAX_DIMS];
    uint8_t *px = NULL;
    if (ml_data_idx_read(path, 2051, dims, &px) == ML_OK) {
        /* every byte the header announced is there */
        volatile uint8_t sink = px[(size_t)dims[0] * dims[1] * dims[2] - 1];
        (void)sink;
    }
    free(px);
    px = NULL;
    if (ml_data_idx_read(path, 2049, dims, &px) == ML_OK) {
        volatile uint8_t sink = px[dims[0] - 1];
        (void)sink;
    }
    free(px);
}

/*
 * IDX reader: the input as an image file and as a label file (gzip or plain), then the
 * input gzip-compressed into a .gz file, so the IDX checks behind a valid gzip stream (CRC
 * and all) are reached too, not only the gzip decoder's refusals.
 */
static inline int fz_idx(const uint8_t *data, size_t size) {
    fz_idx_file(fz_write("train-idx-ubyte", data, size));
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 1, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY) != Z_OK) abort();
    uLong cap = deflateBound(&z, (uLong)size) + 32;
    uint8_t *gz = malloc(cap);
    if (!gz) abort();
    z.next_in = (Bytef *)(uintptr_t)data;
    z.avail_in = (uInt)size;
    z.next_out = gz;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) abort();
    size_t n = z.total_out;
    deflateEnd(&z);
    fz_idx_file(fz_write("train-idx-ubyte.gz", gz, n));
    free(gz);
    return 0;
}

/* CIFAR-10 reader: the input as one binary batch file. */
static inline int fz_cifar(const uint8_t *data, size_t size) {
    const char *path = fz_write("data_batch_1.bin", data, size);
    ml_data_src s;
    if (ml_data_src_cifar_file(&s, path) == ML_OK) {
        volatile uint8_t sink = s.u8[(size_t)s.n * 3072 - 1];
        (void)sink;
    }
    ml_data_src_free(&s);
    return 0;
}

#endif
