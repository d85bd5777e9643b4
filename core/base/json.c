/* json.c — JSON builder and strict parser (see json.h). */
#include "base/json.h"
#include "base/common.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== builder */

static void jb_put(ml_json *j, const char *s, size_t n) {
    if (j->b.oom) return;
    ml_strbuf_put(&j->b, s, n);
    if (j->b.oom) ml_errorf("json: out of memory");
}

static void jb_puts(ml_json *j, const char *s) { jb_put(j, s, strlen(s)); }

void ml_json_append_string(ml_json *j, const char *s) {
    if (j->b.oom) return;
    ml_strbuf_json_string(&j->b, s);
    if (j->b.oom) ml_errorf("json: out of memory");
}

void ml_json_begin(ml_json *j) {
    memset(j, 0, sizeof *j);
    j->first = 1;
    jb_put(j, "{", 1);
}

static void jb_key(ml_json *j, const char *key) {
    if (!j->first) jb_put(j, ",", 1);
    j->first = 0;
    ml_json_append_string(j, key ? key : "");
    jb_put(j, ":", 1);
}

/* Shortest "%.*g" that reads back as the same double; integers without exponent. */
static void fmt_double(char *out, size_t cap, double v) {
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(out, cap, "%.0f", v);
        if (strcmp(out, "-0") == 0) snprintf(out, cap, "0");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

void ml_json_num(ml_json *j, const char *key, double v) {
    jb_key(j, key);
    if (!isfinite(v)) {
        jb_puts(j, "null");
        return;
    }
    char tmp[40];
    fmt_double(tmp, sizeof tmp, v);
    jb_puts(j, tmp);
}

void ml_json_int(ml_json *j, const char *key, int64_t v) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    jb_key(j, key);
    jb_puts(j, tmp);
}

void ml_json_str(ml_json *j, const char *key, const char *v) {
    jb_key(j, key);
    if (v) ml_json_append_string(j, v);
    else jb_puts(j, "null");
}

void ml_json_raw(ml_json *j, const char *key, const char *json) {
    jb_key(j, key);
    jb_puts(j, json && *json ? json : "null");
}

const char *ml_json_end(ml_json *j) {
    jb_put(j, "}", 1);
    return j->b.oom ? NULL : j->b.buf;
}

void ml_json_free(ml_json *j) {
    if (j) ml_strbuf_free(&j->b);
}

/* ========================================================================= parser */

#define JV_MAX_DEPTH 64

typedef struct jp {
    const unsigned char *s;
    size_t n, pos;
    int failed;
} jp;

static int jp_fail(jp *p, const char *what) {
    if (!p->failed) ml_errorf("%s at byte %zu", what, p->pos);
    p->failed = 1;
    return ML_ERR;
}

static void jp_ws(jp *p) {
    while (p->pos < p->n) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static void jv_clear(ml_jv *v) {
    if (v->type == ML_JV_STR) free(v->str);
    if (v->type == ML_JV_ARR || v->type == ML_JV_OBJ) {
        for (int i = 0; i < v->n; i++) {
            jv_clear(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof *v);
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int jp_hex4(jp *p, unsigned *out) {
    if (p->pos + 4 > p->n) return jp_fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->pos + k]);
        if (h < 0) return jp_fail(p, "bad hex digit in \\u escape");
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return ML_OK;
}

/* Length of the valid UTF-8 sequence starting at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned cp = c & (0x3f >> (len - 1));
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a string at p->pos (which is '"') into a new NUL-terminated buffer. */
static int jp_string(jp *p, char **out) {
    p->pos++; /* opening quote */
    size_t start = p->pos;
    /* Decoded text is never longer than the source. */
    size_t end = start;
    while (end < p->n && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    char *buf = malloc((end > p->n ? p->n : end) - start + 1);
    if (!buf) return jp_fail(p, "out of memory");
    size_t o = 0;
    for (;;) {
        if (p->pos >= p->n) {
            free(buf);
            return jp_fail(p, "unterminated string");
        }
        unsigned char c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            free(buf);
            return jp_fail(p, "control character in string");
        }
        if (c == '\\') {
            if (p->pos + 1 >= p->n) {
                free(buf);
                return jp_fail(p, "unterminated string");
            }
            unsigned char e = p->s[p->pos + 1];
            p->pos += 2;
            switch (e) {
            case '"': buf[o++] = '"'; break;
            case '\\': buf[o++] = '\\'; break;
            case '/': buf[o++] = '/'; break;
            case 'b': buf[o++] = '\b'; break;
            case 'f': buf[o++] = '\f'; break;
            case 'n': buf[o++] = '\n'; break;
            case 'r': buf[o++] = '\r'; break;
            case 't': buf[o++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (jp_hex4(p, &cp)) { free(buf); return ML_ERR; }
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    free(buf);
                    return jp_fail(p, "lone low surrogate in \\u escape");
                }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (p->pos + 2 > p->n || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        free(buf);
                        return jp_fail(p, "high surrogate without low surrogate");
                    }
                    p->pos += 2;
                    if (jp_hex4(p, &lo)) { free(buf); return ML_ERR; }
                    if (lo < 0xdc00 || lo > 0xdfff) {
                        free(buf);
                        return jp_fail(p, "high surrogate without low surrogate");
                    }
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                if (cp == 0) {
                    free(buf);
                    return jp_fail(p, "\\u0000 in string is not supported");
                }
                /* An escape is at least 6 source bytes, its UTF-8 at most 4. */
                o += put_utf8(buf + o, cp);
                break;
            }
            default:
                free(buf);
                p->pos -= 1;
                return jp_fail(p, "bad escape in string");
            }
            continue;
        }
        size_t len = utf8_len(p->s + p->pos, p->n - p->pos);
        if (!len) {
            free(buf);
            return jp_fail(p, "invalid UTF-8 in string");
        }
        memcpy(buf + o, p->s + p->pos, len);
        o += len;
        p->pos += len;
    }
    buf[o] = 0;
    *out = buf;
    return ML_OK;
}

static int jp_number(jp *p, ml_jv *v) {
    size_t start = p->pos;
    int is_int = 1;
    if (p->pos < p->n && p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') return jp_fail(p, "bad number");
    if (p->s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            return jp_fail(p, "leading zero in number");
    } else {
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        is_int = 0;
        p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return jp_fail(p, "digit expected after '.'");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return jp_fail(p, "digit expected in exponent");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    char tmp[64];
    size_t len = p->pos - start;
    if (len >= sizeof tmp) {
        p->pos = start;
        return jp_fail(p, "number too long");
    }
    memcpy(tmp, p->s + start, len);
    tmp[len] = 0;
    v->type = ML_JV_NUM;
    v->num = strtod(tmp, NULL);
    if (is_int) {
        errno = 0;
        long long ll = strtoll(tmp, NULL, 10);
        if (errno != ERANGE) {
            v->is_int = 1;
            v->i = ll;
        }
    }
    return ML_OK;
}

static int jp_value(jp *p, ml_jv *v, int depth);

static int jp_push(jp *p, ml_jv *v, int *cap, int with_keys) {
    if (v->n < *cap) return ML_OK;
    int nc = *cap ? *cap * 2 : 4;
    ml_jv *items = realloc(v->items, (size_t)nc * sizeof *items);
    if (!items) return jp_fail(p, "out of memory");
    v->items = items;
    if (with_keys) {
        char **keys = realloc(v->keys, (size_t)nc * sizeof *keys);
        if (!keys) return jp_fail(p, "out of memory");
        v->keys = keys;
    }
    *cap = nc;
    return ML_OK;
}

/* The keys of a large object, by hash (open addressing, slots hold index + 1), so that
   duplicate keys are found in linear time: a checkpoint's header has one key per tensor,
   thousands with many experts. Small objects compare keys one by one. */
typedef struct keyset {
    int *slot;
    size_t cap; /* a power of two, at least twice the keys */
} keyset;

static size_t key_hash(const char *k) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *k; k++) h = (h ^ (unsigned char)*k) * 0x100000001b3ULL;
    return (size_t)(h ^ (h >> 29));
}

/* The index of key among keys[0..n) (all of them in the set), or -1 after adding it as
   keys[n]; -2 when out of memory. */
static int keyset_find_add(keyset *ks, char *const *keys, int n, const char *key) {
    if ((size_t)(n + 1) * 2 > ks->cap) { /* grow and re-insert keys[0..n) */
        size_t cap = ks->cap ? ks->cap * 2 : 128;
        while ((size_t)(n + 1) * 2 > cap) cap *= 2;
        int *slot = calloc(cap, sizeof *slot);
        if (!slot) return -2;
        for (int i = 0; i < n; i++) {
            size_t j = key_hash(keys[i]) & (cap - 1);
            while (slot[j]) j = (j + 1) & (cap - 1);
            slot[j] = i + 1;
        }
        free(ks->slot);
        ks->slot = slot;
        ks->cap = cap;
    }
    size_t j = key_hash(key) & (ks->cap - 1);
    for (; ks->slot[j]; j = (j + 1) & (ks->cap - 1))
        if (!strcmp(keys[ks->slot[j] - 1], key)) return ks->slot[j] - 1;
    ks->slot[j] = n + 1; /* key becomes keys[n] */
    return -1;
}

static int jp_container_in(jp *p, ml_jv *v, int depth, int is_obj, keyset *ks);

static int jp_container(jp *p, ml_jv *v, int depth, int is_obj) {
    keyset ks = {0};
    int rc = jp_container_in(p, v, depth, is_obj, &ks);
    free(ks.slot);
    return rc;
}

static int jp_container_in(jp *p, ml_jv *v, int depth, int is_obj, keyset *ks) {
    if (depth >= JV_MAX_DEPTH) return jp_fail(p, "nesting deeper than 64");
    v->type = is_obj ? ML_JV_OBJ : ML_JV_ARR;
    int cap = 0;
    char close = is_obj ? '}' : ']';
    p->pos++;
    jp_ws(p);
    if (p->pos < p->n && p->s[p->pos] == (unsigned char)close) {
        p->pos++;
        return ML_OK;
    }
    for (;;) {
        if (jp_push(p, v, &cap, is_obj)) return ML_ERR;
        char *key = NULL;
        if (is_obj) {
            jp_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != '"') return jp_fail(p, "expected '\"' (object key)");
            size_t kpos = p->pos;
            if (jp_string(p, &key)) return ML_ERR;
            int dup = -1;
            if (v->n < 32) {
                for (int i = 0; i < v->n && dup < 0; i++)
                    if (strcmp(v->keys[i], key) == 0) dup = i;
            } else {
                dup = keyset_find_add(ks, v->keys, v->n, key);
            }
            if (dup == -2) {
                free(key);
                return jp_fail(p, "out of memory");
            }
            if (dup >= 0) {
                free(key);
                p->pos = kpos;
                return jp_fail(p, "duplicate object key");
            }
            jp_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') {
                free(key);
                return jp_fail(p, "expected ':'");
            }
            p->pos++;
        }
        ml_jv *item = &v->items[v->n];
        memset(item, 0, sizeof *item);
        if (is_obj) v->keys[v->n] = key;
        v->n++;
        if (jp_value(p, item, depth + 1)) return ML_ERR;
        jp_ws(p);
        if (p->pos >= p->n) return jp_fail(p, is_obj ? "unterminated object" : "unterminated array");
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == (unsigned char)close) {
            p->pos++;
            return ML_OK;
        }
        return jp_fail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int jp_literal(jp *p, const char *word) {
    size_t n = strlen(word);
    if (p->pos + n > p->n || memcmp(p->s + p->pos, word, n) != 0) return jp_fail(p, "unexpected character");
    p->pos += n;
    return ML_OK;
}

static int jp_value(jp *p, ml_jv *v, int depth) {
    jp_ws(p);
    if (p->pos >= p->n) return jp_fail(p, "unexpected end of text");
    v->offset = p->pos;
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{': return jp_container(p, v, depth, 1);
    case '[': return jp_container(p, v, depth, 0);
    case '"':
        v->type = ML_JV_STR;
        return jp_string(p, &v->str);
    case 't':
        v->type = ML_JV_BOOL;
        v->boolean = 1;
        return jp_literal(p, "true");
    case 'f':
        v->type = ML_JV_BOOL;
        return jp_literal(p, "false");
    case 'n':
        v->type = ML_JV_NULL;
        return jp_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return jp_number(p, v);
        return jp_fail(p, "unexpected character");
    }
}

ml_jv *ml_jv_parse(const char *text, size_t n) {
    ml_jv *v = ml_calloc(1, sizeof *v);
    if (!v) return NULL;
    jp p = {(const unsigned char *)text, n, 0, 0};
    if (jp_value(&p, v, 0) == ML_OK) {
        jp_ws(&p);
        if (p.pos != p.n) jp_fail(&p, "trailing characters after the value");
    }
    if (p.failed) {
        ml_jv_free(v);
        return NULL;
    }
    return v;
}

void ml_jv_free(ml_jv *v) {
    if (!v) return;
    jv_clear(v);
    free(v);
}

const ml_jv *ml_jv_get(const ml_jv *v, const char *key) {
    if (!v || v->type != ML_JV_OBJ) return NULL;
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0) return &v->items[i];
    return NULL;
}

void ml_jv_write(const ml_jv *v, ml_strbuf *b) {
    char num[40];
    switch (v->type) {
    case ML_JV_NULL: ml_strbuf_puts(b, "null"); break;
    case ML_JV_BOOL: ml_strbuf_puts(b, v->boolean ? "true" : "false"); break;
    case ML_JV_NUM:
        if (v->is_int) snprintf(num, sizeof num, "%" PRId64, v->i);
        else snprintf(num, sizeof num, "%.17g", v->num);
        ml_strbuf_puts(b, num);
        break;
    case ML_JV_STR: ml_strbuf_json_string(b, v->str); break;
    case ML_JV_ARR:
    case ML_JV_OBJ:
        ml_strbuf_puts(b, v->type == ML_JV_ARR ? "[" : "{");
        for (int i = 0; i < v->n; i++) {
            if (i) ml_strbuf_puts(b, ",");
            if (v->type == ML_JV_OBJ) {
                ml_strbuf_json_string(b, v->keys[i]);
                ml_strbuf_puts(b, ":");
            }
            ml_jv_write(&v->items[i], b);
        }
        ml_strbuf_puts(b, v->type == ML_JV_ARR ? "]" : "}");
        break;
    }
}
