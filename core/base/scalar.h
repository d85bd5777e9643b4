/*
 * scalar.h — the rules every scalar setting of moelab is read by: YAML config keys, plugin
 * options from YAML, Lua (router:set, moelab.router) and the command line (a.b=value). One
 * implementation, so that a value one door accepts no other door refuses.
 *
 *   int    optional sign and decimal digits only ("2"; not "2.0", "1e3" or "0x10")
 *   float  a finite decimal number ("0.5", "1e-3"; not "nan", "inf" or hex)
 *   bool   true | false (YAML 1.2 core schema; not yes/no/on/off)
 *   enum   one word of the choices "a|b|c", exactly
 *   string anything
 * A quoted scalar ("2" in YAML, a Lua string) is a string: it passes only as an enum
 * choice or a string. Ranges are inclusive unless a bound is marked open.
 */
#ifndef MOELAB_SCALAR_H
#define MOELAB_SCALAR_H

#include <stddef.h>
#include <stdint.h>

enum { ML_SC_STR = 1, ML_SC_INT, ML_SC_FLOAT, ML_SC_BOOL, ML_SC_ENUM };
enum { ML_SC_LO_OPEN = 1, ML_SC_HI_OPEN = 2 };

typedef struct ml_scalar_spec {
    int type;            /* ML_SC_* */
    double min, max;     /* INT and FLOAT; -INFINITY / INFINITY: no bound */
    int flags;           /* ML_SC_LO_OPEN | ML_SC_HI_OPEN */
    const char *choices; /* ENUM: "a|b|c" */
} ml_scalar_spec;

typedef struct ml_scalar_value {
    int64_t i;  /* INT; BOOL 0/1; ENUM index */
    double f;   /* FLOAT (also set for INT and BOOL) */
} ml_scalar_value;

/* What ml_scalar_check found wrong. */
enum { ML_SC_OK = 0, ML_SC_BAD_TYPE = 1, ML_SC_BAD_RANGE = 2 };

/*
 * Checks text against spec. Returns ML_SC_OK, or ML_SC_BAD_TYPE with ml_error()
 * "expected an integer, got '2.0' (hint: write integers without '.' or exponent)", or
 * ML_SC_BAD_RANGE with "must be in [1, 64], got 100". Callers prefix the key:
 * "<key>: <message>" for a type, "<key> <message>" for a range. out and canon may be NULL;
 * canon receives the canonical text (int in decimal, float as the shortest text that reads
 * back the same, with ".0" when integral; others as given).
 */
int ml_scalar_check(const ml_scalar_spec *s, const char *text, int quoted, ml_scalar_value *out,
                    char *canon, size_t canon_cap);

/* The parsers behind it: ML_OK / ML_ERR, no message. */
int ml_scalar_parse_int(const char *s, int64_t *out);
int ml_scalar_parse_float(const char *s, double *out);
int ml_scalar_parse_bool(const char *s, int *out);
/* Index of word in "a|b|c", or -1. */
int ml_scalar_choice(const char *choices, const char *word);
/* Shortest %g text that reads back as the same double. */
void ml_scalar_fmt_num(double v, char *buf, size_t size);
/* "[1, 64]", ">= 0", "(0, 10]", or "" for no range. */
void ml_scalar_fmt_range(const ml_scalar_spec *s, char *buf, size_t size);
/* "an integer", "a number", "true or false", "one of", "a string". */
const char *ml_scalar_article(int type);

#endif
