/* source.c — the ml_data_src every file format fills (data/source.h). */
#include "data/source.h"

#include <stdlib.h>
#include <string.h>

void ml_data_src_free(ml_data_src *s) {
    if (!s) return;
    for (int64_t i = 0; i < s->n; i++) {
        if (s->files) free(s->files[i]);
        if (s->mask_files) free(s->mask_files[i]);
    }
    if (s->class_names)
        for (int k = 0; k < s->num_classes; k++) free(s->class_names[k]);
    free(s->files);
    free(s->mask_files);
    free(s->class_names);
    free(s->state);
    free(s->y);
    free(s->u8);
    free(s->f32);
    memset(s, 0, sizeof *s);
}
