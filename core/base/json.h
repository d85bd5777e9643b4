/*
 * json.h — the little JSON moelab needs: an append-only builder for the lines and
 * objects it writes (events.jsonl, summary.json) and a strict parser for what it reads
 * back (safetensors headers, caller-supplied JSON fragments that must not corrupt a file).
 *
 * Builder ownership: an ml_json owns its buffer; ml_json_end() returns a pointer into it,
 * valid until ml_json_free(). When memory runs out the builder stops appending, frees its
 * buffer and ml_json_end() returns NULL (the error is set with ml_errorf).
 *
 * Parser ownership: ml_jv_parse() returns an owned tree; free it with ml_jv_free().
 * Every string, array and object below the root belongs to the root.
 */
#ifndef MOELAB_JSON_H
#define MOELAB_JSON_H

#include <stddef.h>
#include <stdint.h>
#include "base/strbuf.h"

/* ------------------------------------------------------------------------ builder */

typedef struct ml_json {
    ml_strbuf b; /* the text so far */
    int first;   /* no member written yet */
} ml_json;

void ml_json_begin(ml_json *j);                                 /* "{" */
void ml_json_num(ml_json *j, const char *key, double v);        /* NaN/Inf -> null; integers exact */
void ml_json_int(ml_json *j, const char *key, int64_t v);
void ml_json_str(ml_json *j, const char *key, const char *v);   /* escaped; NULL -> null */
void ml_json_raw(ml_json *j, const char *key, const char *json); /* nested value, as given */
const char *ml_json_end(ml_json *j);                             /* "}", returns buf or NULL */
void ml_json_free(ml_json *j);

/* Appends s as a quoted, escaped JSON string to j (no key, no comma). */
void ml_json_append_string(ml_json *j, const char *s);

/* ------------------------------------------------------------------------- parser */

typedef enum ml_jv_type {
    ML_JV_NULL = 0,
    ML_JV_BOOL = 1,
    ML_JV_NUM = 2,
    ML_JV_STR = 3,
    ML_JV_ARR = 4,
    ML_JV_OBJ = 5
} ml_jv_type;

typedef struct ml_jv {
    ml_jv_type type;
    int boolean;          /* BOOL */
    double num;           /* NUM */
    int is_int;           /* NUM written without fraction or exponent and fits int64 */
    int64_t i;            /* NUM when is_int */
    char *str;            /* STR: NUL-terminated UTF-8 (\u0000 is refused) */
    int n;                /* ARR/OBJ: number of items */
    struct ml_jv *items;  /* ARR/OBJ: (n) values */
    char **keys;          /* OBJ: (n) keys, unique */
    size_t offset;        /* byte offset of the value in the text */
} ml_jv;

/*
 * Parses text[0..n) as one JSON value (RFC 8259; whitespace around it allowed; nesting
 * at most 64 deep; duplicate object keys and invalid UTF-8 refused). On failure returns
 * NULL and sets an error "<what> at byte <offset>".
 */
ml_jv *ml_jv_parse(const char *text, size_t n);
void ml_jv_free(ml_jv *v);
/* Member of an object by key, or NULL (also when v is not an object). */
const ml_jv *ml_jv_get(const ml_jv *v, const char *key);
/* Appends v as compact JSON text (numbers round-trip: integers exact, reals %.17g). */
void ml_jv_write(const ml_jv *v, ml_strbuf *b);

#endif
