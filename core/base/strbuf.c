/* strbuf.c — the growable text buffer (strbuf.h). */
#include "base/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ml_strbuf_put(ml_strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (n > (size_t)-1 / 2 - b->len - 1) {
        ml_strbuf_free(b);
        b->oom = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            ml_strbuf_free(b);
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    if (n) memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

void ml_strbuf_puts(ml_strbuf *b, const char *s) { ml_strbuf_put(b, s, strlen(s)); }

void ml_strbuf_printf(ml_strbuf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        ml_strbuf_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        ml_strbuf_free(b);
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ml_strbuf_put(b, big, (size_t)n);
    free(big);
}

void ml_strbuf_json_string(ml_strbuf *b, const char *s) {
    ml_strbuf_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s, *run = p;
    for (;; p++) {
        if (*p && *p >= 0x20 && *p != 0x7f && *p != '"' && *p != '\\') continue;
        /* the run of characters that need no escape, in one append */
        if (p > run) ml_strbuf_put(b, (const char *)run, (size_t)(p - run));
        if (!*p) break;
        char esc[8];
        switch (*p) {
        case '"': ml_strbuf_put(b, "\\\"", 2); break;
        case '\\': ml_strbuf_put(b, "\\\\", 2); break;
        case '\n': ml_strbuf_put(b, "\\n", 2); break;
        case '\r': ml_strbuf_put(b, "\\r", 2); break;
        case '\t': ml_strbuf_put(b, "\\t", 2); break;
        case '\b': ml_strbuf_put(b, "\\b", 2); break;
        case '\f': ml_strbuf_put(b, "\\f", 2); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            ml_strbuf_put(b, esc, 6);
        }
        run = p + 1;
    }
    ml_strbuf_put(b, "\"", 1);
}

void ml_strbuf_clear(ml_strbuf *b) {
    if (b->oom) return;
    b->len = 0;
    if (b->buf) b->buf[0] = 0;
}

char *ml_strbuf_take(ml_strbuf *b) {
    if (b->oom) return NULL;
    if (!b->buf) ml_strbuf_put(b, "", 0);
    char *t = b->buf;
    b->buf = NULL;
    b->len = b->cap = 0;
    return t;
}

void ml_strbuf_free(ml_strbuf *b) {
    if (!b) return;
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
}
