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
#include "data/data.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"

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

/* ------------------------------------------------------------- PNG writing */

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBIW_MALLOC(n) malloc(n)
#define STBIW_REALLOC(p, n) realloc(p, n)
#define STBIW_FREE(p) free(p)
#include <stb/stb_image_write.h>

static void to_strbuf(void *ctx, void *data, int size) { ml_strbuf_put(ctx, data, (size_t)size); }

int ml_image_write_png(const char *path, int w, int h, int channels, const uint8_t *px) {
    if (w < 1 || h < 1 || channels < 1 || channels > 4)
        return ml_errorf("%s: cannot write a %dx%dx%d image as PNG", path, w, h, channels);
    ml_strbuf b = {0};
    if (!stbi_write_png_to_func(to_strbuf, &b, w, h, channels, px, w * channels) || b.oom) {
        ml_strbuf_free(&b);
        return ml_errorf("%s: PNG encoding failed", path);
    }
    int rc = ml_write_file_atomic(path, b.buf, b.len);
    ml_strbuf_free(&b);
    return rc;
}
