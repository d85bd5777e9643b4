/*
 * data.h — datasets and batching: loads Fashion-MNIST (IDX), CIFAR-10 (binary), folders
 * of images, camouflaged-object segmentation data (a synthetic generator with habitats,
 * and real COD datasets in their Imgs/GT layout) and a synthetic clustered set into float
 * tensors in [0, 1], splits the training files into train/validation deterministically by
 * seed, and serves them in mini-batches whose order depends only on (seed, epoch), so
 * runs resume exactly.
 *
 * Segmentation: datasets "camouflage" and "image_mask_folder" carry a per-pixel mask
 * (n, 1, H, W) in {0, 1} beside the images, and y is then the habitat (camouflage) or the
 * COD10K super-class (image_mask_folder). Every step that touches an image touches its
 * mask the same way: the split keeps image, mask, label and index together, resizing
 * resamples the mask by the same geometry and thresholds it at 0.5 (a pixel is object when
 * at least half of it is), and ml_batcher_next_masks serves masks with their images.
 * Datasets without masks have mask == NULL.
 *
 * Ownership: ml_data_load fills caller-provided ml_dataset structs whose buffers it owns;
 * release them with ml_dataset_free. ml_batcher_new returns an owned batcher (free with
 * ml_batcher_free) that borrows its dataset: the dataset must outlive the batcher.
 * Errors: functions returning int give ML_OK / ML_ERR and set ml_error(); messages name
 * the file and what was expected versus found.
 *
 * Shape letters: n samples, C channels, H height, W width, B batch.
 */
#ifndef MOELAB_DATA_H
#define MOELAB_DATA_H

#include <stdint.h>

typedef struct ml_dataset {
    char name[64];      /* "<dataset>/train" or "<dataset>/val" */
    int64_t n;          /* samples */
    int C, H, W;        /* image shape; vector data: C=1, H=1, W=dim */
    float *x;           /* (n, C, H, W) row-major, values in [0, 1] (owned) */
    int32_t *y;         /* (n) class labels in [0, num_classes), or NULL (owned) */
    int num_classes;    /* 0 when unlabelled */
    int32_t *index;     /* (n) index of each sample in its source files (for hash routing),
                           ascending: a split keeps file order (owned); for camouflage the
                           generator's sample number, so ml_camo_sample regenerates it */
    float *mask;        /* (n, 1, H, W) segmentation target: 1 = object, 0 = background;
                           NULL for datasets without masks (owned) */
    char **class_names; /* (num_classes) the labels' names ("foliage", "Aquatic", the
                           class folder), or NULL when unknown (owned) */
} ml_dataset;

typedef struct ml_data_cfg {
    const char *dataset;    /* "fashion_mnist" | "synthetic" | "cifar10" | "image_folder" |
                               "camouflage" | "image_mask_folder" */
    const char *path;       /* "" or NULL = default for the dataset (see ml_data_default_path) */
    int64_t train_images;   /* 0 = all available after the validation split */
    int64_t val_images;     /* held out from the training files; with val_path: at most
                               this many of the validation folder's images */
    int image_size;         /* 0 = native (camouflage: 64); else S x S: IDX and CIFAR images
                               smaller in both sides are centred in zeros, everything else
                               (image files, masks with their images) is resampled; camouflage
                               generates at S (16..256); ignored by "synthetic" */
    int64_t synthetic_samples; int synthetic_dim; int synthetic_classes; /* 0 = 4096, 64, 8 */
    uint64_t seed;          /* drives the split and the generated data */
    int channels;           /* image_folder, image_mask_folder: 0 or 3 = RGB (grey
                               replicated), 1 = grey */
    /* image_mask_folder */
    const char *val_path;   /* a second folder (the test set) for validation; "" or NULL =
                               hold val_images out of path like the other datasets */
    /* camouflage */
    int64_t camouflage_samples;  /* samples the split draws from; 0 = train_images +
                                    val_images (then train_images must be > 0) */
    double difficulty;           /* 0 = obvious object .. 1 = same statistics as the
                                    background (the config's default is 0.5) */
    const char *const *habitats; /* names from foliage, sand, underwater: label k is
                                    habitats[k]; NULL or n_habitats 0 = all three */
    int n_habitats;
} ml_data_cfg;

/*
 * Loads cfg->dataset and splits it: a permutation of the training files seeded by
 * cfg->seed puts the first val_images samples in *val, then the next train_images (all
 * the rest when 0) in *train; each split keeps file order. val may be NULL (the held-out
 * samples are still excluded from train, so train does not depend on whether val is
 * asked for). image_mask_folder with val_path: *train is train_images of path (all when
 * 0; a seeded subset, in file order, otherwise) and *val at most val_images of val_path
 * (a seeded subset when fewer than the folder holds). On failure both structs are left
 * zeroed.
 */
int ml_data_load(const ml_data_cfg *cfg, ml_dataset *train, ml_dataset *val);
/* Frees the buffers and zeroes the struct; NULL-safe. */
void ml_dataset_free(ml_dataset *d);
/* The directory used when cfg->path is empty; NULL for datasets without files. */
const char *ml_data_default_path(const char *dataset);

/*
 * Resamples one (C, H, W) image to (C, OH, OW): bilinear when enlarging, area average
 * when shrinking (per axis, separable); results clamped to [0, 1]. src and dst must not
 * overlap.
 */
void ml_data_resize(const float *src, int C, int H, int W, float *dst, int OH, int OW);

/* Writes px (h, w, channels) bytes, rows top to bottom, as a PNG file, atomically (temp file,
   rename); channels 1 (grey), 3 (RGB) or 4. ML_ERR names the path. */
int ml_image_write_png(const char *path, int w, int h, int channels, const uint8_t *px);

/* Deterministic batching: an epoch order shuffled by (seed, epoch). */
typedef struct ml_batcher ml_batcher;   /* owned; ml_batcher_free */

/* NULL (with ml_error) when batch_size < 1. Starts at epoch 1, position 0. */
ml_batcher *ml_batcher_new(const ml_dataset *d, int batch_size, int shuffle, uint64_t seed);
void ml_batcher_free(ml_batcher *b);
/* epoch from 1; the order depends only on seed and epoch (identity when !shuffle). */
void ml_batcher_begin_epoch(ml_batcher *b, int epoch);
/*
 * Next batch: copies samples into x (B, C, H, W) with room for batch_size samples, labels
 * into y (may be NULL; zeros when the dataset is unlabelled), the samples' source-file
 * indices (d->index) into ids (may be NULL); returns the batch's size B (the last batch
 * may be short), 0 at epoch end.
 */
int ml_batcher_next(ml_batcher *b, float *x, int32_t *y, int32_t *ids);
/*
 * ml_batcher_next that also copies the samples' masks into mask (B, 1, H, W) with room
 * for batch_size masks (may be NULL; zeros when the dataset has no masks — check
 * d->mask when a model needs them). Row i of x, mask, y and ids is the same sample.
 * Both calls advance the same position: they may be mixed within an epoch.
 */
int ml_batcher_next_masks(ml_batcher *b, float *x, float *mask, int32_t *y, int32_t *ids);
/* Samples served this epoch (for resuming). */
int64_t ml_batcher_position(const ml_batcher *b);
/* Continues the current epoch after `position` samples (clamped to [0, n]). */
void ml_batcher_seek(ml_batcher *b, int64_t position);
/* Batches per epoch, counting a short last one. */
int64_t ml_batcher_batches(const ml_batcher *b);
int ml_batcher_epoch(const ml_batcher *b);

#endif
