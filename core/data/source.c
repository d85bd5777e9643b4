/* source.c — the ml_data_src every file format fills (data/source.h). */
#include "data/source.h"

#include <stdlib.h>
#include <string.h>

void ml_data_src_free(ml_data_src *s) {
    if (!s) return;
    if (s->files)
        for (int64_t i = 0; i < s->n; i++) free(s->files[i]);
    free(s->files);
    free(s->y);
    free(s->u8);
    free(s->f32);
    memset(s, 0, sizeof *s);
}
