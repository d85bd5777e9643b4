/* scalar.c — the scalar rules of configs, plugin options and Lua settings (scalar.h). */
#include "base/scalar.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"

void ml_scalar_fmt_num(double v, char *buf, size_t size) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

int ml_scalar_parse_int(const char *s, int64_t *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (*p < '0' || *p > '9') return ML_ERR;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return ML_ERR;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno) return ML_ERR;
    *out = v;
    return ML_OK;
}

int ml_scalar_parse_float(const char *s, double *out) {
    char *end;
    if (!*s || strchr(" \t\n", *s)) return ML_ERR;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || !isfinite(v) || errno == ERANGE) return ML_ERR;
    /* strtod also reads hex floats; settings mean decimals */
    if (strchr(s, 'x') || strchr(s, 'X')) return ML_ERR;
    *out = v;
    return ML_OK;
}

int ml_scalar_parse_bool(const char *s, int *out) {
    if (!strcmp(s, "true")) *out = 1;
    else if (!strcmp(s, "false")) *out = 0;
    else return ML_ERR;
    return ML_OK;
}

int ml_scalar_choice(const char *choices, const char *word) {
    size_t wl = strlen(word);
    int i = 0;
    for (const char *p = choices; p && *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == wl && !strncmp(p, word, wl)) return i;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

void ml_scalar_fmt_range(const ml_scalar_spec *s, char *buf, size_t size) {
    char a[40], b[40];
    ml_scalar_fmt_num(s->min, a, sizeof a);
    ml_scalar_fmt_num(s->max, b, sizeof b);
    int has_lo = isfinite(s->min), has_hi = isfinite(s->max);
    if (has_lo && has_hi)
        snprintf(buf, size, "%c%s, %s%c", s->flags & ML_SC_LO_OPEN ? '(' : '[', a, b,
                 s->flags & ML_SC_HI_OPEN ? ')' : ']');
    else if (has_lo)
        snprintf(buf, size, "%s %s", s->flags & ML_SC_LO_OPEN ? ">" : ">=", a);
    else if (has_hi)
        snprintf(buf, size, "%s %s", s->flags & ML_SC_HI_OPEN ? "<" : "<=", b);
    else
        buf[0] = 0;
}

const char *ml_scalar_article(int type) {
    switch (type) {
    case ML_SC_INT: return "an integer";
    case ML_SC_FLOAT: return "a number";
    case ML_SC_BOOL: return "true or false";
    case ML_SC_ENUM: return "one of";
    default: return "a string";
    }
}

static void put_canon(char *canon, size_t cap, const char *t) {
    if (canon && cap) snprintf(canon, cap, "%s", t);
}

int ml_scalar_check(const ml_scalar_spec *s, const char *text, int quoted, ml_scalar_value *out,
                    char *canon, size_t canon_cap) {
    ml_scalar_value v = {0, 0};
    if (!text) text = "";
    char got[200];
    snprintf(got, sizeof got, quoted ? "\"%s\" (quoted, so a string)" : "'%s'", text);
    switch (s->type) {
    case ML_SC_STR:
        put_canon(canon, canon_cap, text);
        if (out) *out = v;
        return ML_SC_OK;
    case ML_SC_ENUM: {
        int idx = quoted ? -1 : ml_scalar_choice(s->choices, text);
        if (idx < 0) {
            ml_errorf("expected one of %s, got %s", s->choices ? s->choices : "(none)", got);
            return ML_SC_BAD_TYPE;
        }
        v.i = idx;
        v.f = idx;
        put_canon(canon, canon_cap, text);
        if (out) *out = v;
        return ML_SC_OK;
    }
    case ML_SC_BOOL: {
        int b = 0;
        if (quoted || ml_scalar_parse_bool(text, &b)) {
            ml_errorf("expected true or false, got %s", got);
            return ML_SC_BAD_TYPE;
        }
        v.i = b;
        v.f = b;
        put_canon(canon, canon_cap, text);
        if (out) *out = v;
        return ML_SC_OK;
    }
    case ML_SC_INT:
    case ML_SC_FLOAT:
        break;
    default:
        ml_errorf("unknown value type %d", s->type);
        return ML_SC_BAD_TYPE;
    }
    double x;
    char num[48];
    if (s->type == ML_SC_INT) {
        int64_t i;
        if (quoted || ml_scalar_parse_int(text, &i)) {
            const char *hint = !quoted && !ml_scalar_parse_float(text, &x) && x == floor(x) && fabs(x) < 1e18
                                   ? " (hint: write integers without '.' or exponent)" : "";
            ml_errorf("expected an integer, got %s%s", got, hint);
            return ML_SC_BAD_TYPE;
        }
        x = (double)i;
        v.i = i;
        v.f = x;
        snprintf(num, sizeof num, "%lld", (long long)i);
    } else {
        if (quoted || ml_scalar_parse_float(text, &x)) {
            ml_errorf("expected a number, got %s", got);
            return ML_SC_BAD_TYPE;
        }
        v.f = x;
        v.i = fabs(x) < 9.2e18 ? (int64_t)x : (x < 0 ? INT64_MIN : INT64_MAX);
        ml_scalar_fmt_num(x, num, sizeof num);
        if (!strpbrk(num, ".e")) strcat(num, ".0");
    }
    int low = isfinite(s->min) && (s->flags & ML_SC_LO_OPEN ? x <= s->min : x < s->min);
    int high = isfinite(s->max) && (s->flags & ML_SC_HI_OPEN ? x >= s->max : x > s->max);
    if (low || high) {
        char range[100];
        ml_scalar_fmt_range(s, range, sizeof range);
        int both = isfinite(s->min) && isfinite(s->max);
        ml_errorf("must be %s%s, got %s", both ? "in " : "", range, text);
        return ML_SC_BAD_RANGE;
    }
    put_canon(canon, canon_cap, num);
    if (out) *out = v;
    return ML_SC_OK;
}
