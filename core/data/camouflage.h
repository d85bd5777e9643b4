/*
 * camouflage.h — a synthetic camouflaged-object dataset (`data.dataset: camouflage`): RGB
 * images of one habitat's texture with one object whose texture comes from the SAME
 * habitat, with statistics that differ from the background's by an amount set by
 * `difficulty`; each sample comes with its binary object mask and its habitat label.
 *
 * Three habitats stand in for the COD seed's forest / desert / underwater scenes:
 *   foliage     multi-scale high-frequency blobs (leaves and the dark gaps between them)
 *               in greens and browns;
 *   sand        smooth low-frequency fields with warped ripples, tans and yellows;
 *   underwater  blue-green water with caustics: the bright network where a warped sum of
 *               three sinusoids is near zero, over a depth gradient.
 * docs/data.md gives every formula.
 *
 * Sample i is a pure function of (seed, i, size, difficulty, habitats): any sample can be
 * regenerated alone, on any thread, in any order, with the same bytes. Its label is
 * i mod n_habitats (so labels are balanced) and its habitat is habitat[label]. Everything
 * but the object's texture parameters is independent of difficulty: the same (seed, i)
 * at two difficulties has the same background, the same object shape and the same
 * texture noise, and only the object-vs-background statistics gap differs.
 *
 * Ownership: nothing here allocates what the caller must free; ml_camo_sample uses a
 * scratch block of its own for the duration of the call.
 * Errors: ml_camo_cfg_init returns ML_OK / ML_ERR with ml_error() naming the bad value.
 */
#ifndef MOELAB_DATA_CAMOUFLAGE_H
#define MOELAB_DATA_CAMOUFLAGE_H

#include <stdint.h>

enum { ML_CAMO_FOLIAGE, ML_CAMO_SAND, ML_CAMO_UNDERWATER, ML_CAMO_HABITATS };
enum { ML_CAMO_MIN_SIZE = 16, ML_CAMO_MAX_SIZE = 256, ML_CAMO_DEFAULT_SIZE = 64 };

typedef struct ml_camo_cfg {
    uint64_t seed;
    int size;                      /* S: images are (3, S, S), masks (1, S, S) */
    double difficulty;             /* 0 = obvious object .. 1 = object statistics equal
                                      the background's (only the realisation differs) */
    int n_habitats;                /* 1..ML_CAMO_HABITATS */
    int habitat[ML_CAMO_HABITATS]; /* habitat of label k (ML_CAMO_*), all distinct */
} ml_camo_cfg;

/* "foliage", "sand", "underwater"; NULL when h is not a habitat. */
const char *ml_camo_habitat_name(int h);
/* ML_CAMO_* for a name, -1 when unknown. */
int ml_camo_habitat_parse(const char *name);

/*
 * Fills *c and checks it: size 0 = ML_CAMO_DEFAULT_SIZE, else ML_CAMO_MIN_SIZE..
 * ML_CAMO_MAX_SIZE; difficulty in [0, 1]; names (n of them, NULL or n = 0 = all three
 * in the order foliage, sand, underwater) distinct habitat names, label k = names[k].
 */
int ml_camo_cfg_init(ml_camo_cfg *c, uint64_t seed, int size, double difficulty,
                     const char *const *names, int n);

/*
 * Generates sample `index` (>= 0) of c: rgb (3, S, S) planar, values in [0, 1]; mask
 * (1, S, S) with 1 on the object and 0 elsewhere (NULL: not wanted). The object covers
 * between 2% and 45% of the image. c must come from ml_camo_cfg_init. Returns the label in
 * [0, c->n_habitats), or -1 when index < 0, c is not a valid config or the scratch block
 * cannot be allocated (no error message is set, so threads may call it; the caller
 * reports). Thread-safe.
 */
int ml_camo_sample(const ml_camo_cfg *c, int64_t index, float *rgb, float *mask);

#endif
