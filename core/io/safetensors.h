/*
 * safetensors.h — checkpoints in the safetensors format, readable by
 * safetensors.torch.load_file() without glue.
 *
 * Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header
 * length N; N bytes of JSON, {"<name>": {"dtype": "F32", "shape": [...],
 * "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value", ...}}, padded with
 * spaces to a multiple of 8; then the raw little-endian tensor data, offsets relative to
 * its start. moelab writes F32 only, tensors packed in the order given, and adds two
 * metadata entries, first in the header: "checksum", the zlib CRC32 as 8 lowercase hex
 * digits of the whole file except those 8 digits (length prefix, header with every name,
 * shape, offset and metadata value, padding, data), and "checksum_covers": "file".
 * Files of moelab before checkpoint format 2 lack "checksum_covers"; their checksum covers
 * the data section only, and they are still read.
 *
 * Ownership: ml_st_open() returns an owned file (ml_st_close; NULL is a no-op). Names,
 * metadata strings and data pointers it hands out are borrowed from it, valid until
 * ml_st_close(). Tensors given to ml_st_write() are borrowed for the call.
 */
#ifndef MOELAB_SAFETENSORS_H
#define MOELAB_SAFETENSORS_H

#include <stdint.h>

#define ML_ST_MAX_DIMS 4

typedef struct ml_st_tensor {
    const char *name;
    int ndim;                        /* 0 (scalar) .. ML_ST_MAX_DIMS */
    int64_t shape[ML_ST_MAX_DIMS];
    const float *data;               /* (prod(shape)) row-major */
} ml_st_tensor;

/*
 * Writes path atomically (ml_write_file_atomic_iov: "<path>.tmp", fsync, rename, fsync of
 * the directory): a failure leaves any existing file untouched. The data is written straight
 * from t[i].data (one writev, no copy of the tensors; the checksum is computed over the
 * same memory first), so it must not change during the call. Names must be non-empty,
 * unique and not "__metadata__"; metadata keys unique and not "checksum" (added here).
 */
int ml_st_write(const char *path, const ml_st_tensor *t, int n, const char *const *meta_keys,
                const char *const *meta_values, int n_meta);

typedef struct ml_st_file ml_st_file;

/*
 * Reads the whole file and validates it: header length within the file, header a strict
 * JSON object, dtype F32 only, at most 4 dimensions, offsets inside the data section,
 * matching the shape and not overlapping, metadata values strings, and the checksum
 * (required). Errors are one line naming the path and what was wrong, e.g.
 * "ckpt.safetensors: checksum mismatch (file is corrupt): header says ..., the file has ...".
 */
ml_st_file *ml_st_open(const char *path);
/* ml_st_open with flags: ML_ST_ALLOW_NO_CHECKSUM reads a file without "checksum" (as other
 * writers make them); ml_st_open requires it. Error messages never quote bytes of a file
 * that does not first prove to be safetensors (the file may be any file at all). */
#define ML_ST_ALLOW_NO_CHECKSUM 1
ml_st_file *ml_st_open_flags(const char *path, int flags);
int ml_st_count(const ml_st_file *f);
const char *ml_st_name(const ml_st_file *f, int i); /* in header order; NULL out of range */
/* Tensor by name, or NULL if absent; ndim/shape (room for 4) filled when not NULL. */
const float *ml_st_get(const ml_st_file *f, const char *name, int *ndim, int64_t *shape);
const char *ml_st_meta(const ml_st_file *f, const char *key); /* NULL if absent */
void ml_st_close(ml_st_file *f);

#endif
