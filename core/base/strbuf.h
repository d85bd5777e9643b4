/*
 * strbuf.h — the one growable text buffer of the core (CSV files, JSON lines and objects,
 * the rendered YAML config, exp.state). Appends never fail loudly: when memory runs out
 * the buffer frees what it holds, sets `oom` and ignores every later append, so a caller
 * builds a whole text and checks once at the end.
 *
 * Ownership: an ml_strbuf is embedded by its user, zero-initialised ({0}) before the first
 * append; ml_strbuf_free releases it, ml_strbuf_take hands the text over.
 */
#ifndef MOELAB_STRBUF_H
#define MOELAB_STRBUF_H

#include <stddef.h>
#include "base/common.h"

typedef struct ml_strbuf {
    char *buf;  /* NUL-terminated text; NULL before the first append and after oom */
    size_t len; /* bytes before the NUL */
    size_t cap; /* bytes allocated */
    int oom;    /* an append ran out of memory: buf was freed, later appends are ignored */
} ml_strbuf;

void ml_strbuf_put(ml_strbuf *b, const char *s, size_t n);
void ml_strbuf_puts(ml_strbuf *b, const char *s);
void ml_strbuf_printf(ml_strbuf *b, const char *fmt, ...) ML_PRINTF(2, 3);
/* Appends s as a JSON string: quoted, with ", \ and control characters escaped. */
void ml_strbuf_json_string(ml_strbuf *b, const char *s);
/* Forgets the text but keeps the allocation (len = 0, buf = ""); clears nothing after oom. */
void ml_strbuf_clear(ml_strbuf *b);
/* The text, owned by the caller (free()); "" when nothing was appended; NULL after oom.
   The buffer is empty afterwards. */
char *ml_strbuf_take(ml_strbuf *b);
void ml_strbuf_free(ml_strbuf *b);

#endif
