/*
 * data_stb.c — the stb_image decoder (PNG, JPEG, BMP) compiled into the core with static
 * linkage, so the build needs no -lstb and nothing clashes with another copy; only the
 * three wrappers below leave this file.
 *
 * With STB_IMAGE_STATIC, Debian's stb_image 2.27 declares two functions static that it
 * never defines (stbi_set_unpremultiply_on_load_thread, and stbi_load_gif_from_memory when
 * GIF is left out). GCC reports that at the end of the file, so the warning is switched
 * off for this file only, which contains nothing but the library.
 */
#include "data/source.h"

#include <stdlib.h>

#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_MALLOC(n) malloc(n)
#define STBI_REALLOC(p, n) realloc(p, n)
#define STBI_FREE(p) free(p)
#include <stb/stb_image.h>

uint8_t *ml_data_stb_load(const char *path, int *w, int *h, int channels) {
    int comp;
    return stbi_load(path, w, h, &comp, channels);
}

int ml_data_stb_info(const char *path, int *w, int *h) {
    int comp;
    return stbi_info(path, w, h, &comp);
}

const char *ml_data_stb_reason(void) { return stbi_failure_reason(); }
