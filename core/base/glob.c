/* glob.c — fnmatch-style patterns in linear time (glob.h). */
#include "base/glob.h"

#include <string.h>

#include "base/common.h"

/* The end of the bracket expression that opens at p ('['): the pointer past its ']', or
   NULL when it is not closed. A ']' right after '[', '[!' or '[^' is a member. */
static const char *bracket_end(const char *p) {
    const char *q = p + 1;
    if (*q == '!' || *q == '^') q++;
    if (*q == ']') q++;
    for (; *q; q++) {
        if (*q == '\\' && q[1]) q++;
        else if (*q == ']') return q + 1;
    }
    return NULL;
}

/* Whether c is in the set [p, end) (p at '[', end past its ']'). */
static int in_set(const char *p, const char *end, unsigned char c) {
    const char *q = p + 1, *stop = end - 1; /* stop: the closing ']' */
    int neg = *q == '!' || *q == '^';
    if (neg) q++;
    int hit = 0;
    while (q < stop) {
        unsigned char lo = (unsigned char)*q++;
        if (lo == '\\' && q < stop) lo = (unsigned char)*q++;
        unsigned char hi = lo;
        if (q + 1 < stop && *q == '-') { /* a range; a '-' right before ']' is a member */
            q++;
            hi = (unsigned char)*q++;
            if (hi == '\\' && q < stop) hi = (unsigned char)*q++;
        }
        if (c >= lo && c <= hi) hit = 1;
    }
    return hit != neg;
}

int ml_glob_match(const char *p, const char *s) {
    const char *star_p = NULL, *star_s = NULL;
    while (*s) {
        if (*p == '*') {
            while (*p == '*') p++;
            if (!*p) return 1;
            star_p = p;
            star_s = s;
            continue;
        }
        const char *next = p + 1, *end;
        int ok;
        if (*p == '?') ok = 1;
        else if (*p == '[' && (end = bracket_end(p))) ok = in_set(p, end, (unsigned char)*s), next = end;
        else if (*p == '\\' && p[1]) ok = p[1] == *s, next = p + 2;
        else ok = *p && *p == *s;
        if (ok) {
            p = next;
            s++;
            continue;
        }
        if (!star_p) return 0;
        p = star_p; /* the last star takes one more character */
        s = ++star_s;
    }
    while (*p == '*') p++;
    return !*p;
}

int ml_glob_check(const char *pattern) {
    size_t n = strlen(pattern);
    if (n == 0 || n > ML_GLOB_MAX)
        return ml_errorf("a pattern is 1..%d bytes, got %zu", ML_GLOB_MAX, n);
    for (const char *p = pattern; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return ml_errorf("pattern '%s': control characters are not allowed", pattern);
        if (*p == '\\') {
            if (!p[1]) return ml_errorf("pattern '%s' ends with '\\'", pattern);
            p++;
        } else if (*p == '[') {
            const char *end = bracket_end(p);
            if (!end) return ml_errorf("pattern '%s': '[' is not closed", pattern);
            for (const char *q = p; q < end - 1; q++)
                if (q[0] == '[' && q[1] == ':')
                    return ml_errorf("pattern '%s': character classes like [:digit:] are not supported (hint: [0-9])",
                                     pattern);
            p = end - 1;
        }
    }
    return ML_OK;
}

int ml_glob_is_pattern(const char *pattern) { return strpbrk(pattern, "*?[\\") != NULL; }
