/*
 * source.h — internal to the data layer (data.c, data_files.c, data_image.c,
 * camouflage.c): a "source" is every sample of a dataset's training files (or of a
 * generator) before the train/validation split: in memory at native resolution, or read
 * on demand at the size asked for. File formats and generators fill one; data.c splits
 * and converts it. Not part of the public API.
 */
#ifndef MOELAB_DATA_SOURCE_H
#define MOELAB_DATA_SOURCE_H

#include <stdint.h>

typedef struct ml_data_src ml_data_src;
struct ml_data_src {
    int64_t n;          /* samples in the files */
    int C, H, W;        /* shape of every sample as the source delivers it */
    int num_classes;    /* 0 when unlabelled */
    int32_t *y;         /* (n) or NULL (owned) */
    char **class_names; /* (num_classes) label names, or NULL (owned) */
    int has_mask;       /* samples come with a (1, H, W) mask in {0, 1} (read only) */
    /* exactly one way of getting pixels: */
    uint8_t *u8;        /* (n, C, H, W) bytes, 255 = 1.0 (owned), or */
    float *f32;         /* (n, C, H, W) already in [0, 1] (owned), or */
    /* on demand: sample i into x (C, H, W) and, when has_mask, mask (1, H, W), both at the
     * source's H x W. Called from several threads at once; sets ml_error only when report
     * is set, so the caller repeats the first failure with report 1. */
    int (*read)(const ml_data_src *s, int64_t i, float *x, float *mask, int report);
    void *state;        /* the reader's own data (owned, free()) */
    char **files;       /* (n) image paths of the folder readers (owned) */
    char **mask_files;  /* (n) mask paths of image_mask_folder (owned) */
    int resize;         /* files: resize each to H x W (else all must be H x W already) */
};

/* Fashion-MNIST / MNIST: train-{images-idx3,labels-idx1}-ubyte[.gz] in dir. */
int ml_data_src_idx(ml_data_src *s, const char *dir);
/* CIFAR-10 binary: data_batch_{1..5}.bin in dir. */
int ml_data_src_cifar(ml_data_src *s, const char *dir);
/* One CIFAR-10 binary batch file (the fuzz target's entry). */
int ml_data_src_cifar_file(ml_data_src *s, const char *path);

#define ML_IDX_MAX_DIMS 3
/*
 * One IDX file of unsigned bytes, gzip or plain, whose magic must be `magic` (2051: images
 * n x rows x cols; 2049: labels n). Fills dims[0..magic & 0xff) and *data (owned, free());
 * the whole file is checked: magic, dimensions (n <= INT32_MAX, sides <= 4096), exactly the
 * bytes the header announces, a gzip stream complete with valid CRC-32 and length and
 * nothing after it. On error *data is NULL and the message names the file.
 */
int ml_data_idx_read(const char *path, uint32_t magic, uint32_t *dims, uint8_t **data);
/* dir/<class>/<name>.{png,jpg,jpeg,bmp}; size 0 = native (all equal) else resized to size. */
int ml_data_src_folder(ml_data_src *s, const char *dir, int channels, int size);
/*
 * COD layout (docs/data.md): dir/Imgs/<stem>.{jpg,jpeg,png,bmp} with masks
 * dir/GT/<stem>.png. With val_dir, *val gets that folder (labels are assigned over both
 * folders together, so they agree); else val is untouched. Every image and mask header
 * is checked here (missing mask, size mismatch, unreadable file); the pixels, and the
 * check that a mask is binary, come with read.
 */
int ml_data_src_mask_folder(ml_data_src *s, ml_data_src *val, const char *dir,
                            const char *val_dir, int channels, int size);
void ml_data_src_free(ml_data_src *s);

struct ml_camo_cfg;
/* The camouflage generator as a source of n samples (camouflage.c); reads generate. */
int ml_data_src_camouflage(ml_data_src *s, const struct ml_camo_cfg *c, int64_t n);

/* stb_image behind a thin wrapper (data_stb.c): interleaved (h, w, channels) bytes, free(). */
uint8_t *ml_data_stb_load(const char *path, int *w, int *h, int channels);
int ml_data_stb_info(const char *path, int *w, int *h);
const char *ml_data_stb_reason(void);

#endif
