/*
 * sha256.h — SHA-256 (FIPS 180-4), for provenance: the digest of each plugin file a run
 * loaded goes into summary.json, so a result can be tied to the exact code that made it.
 */
#ifndef MOELAB_SHA256_H
#define MOELAB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct ml_sha256 {
    uint32_t h[8];
    uint64_t len;        /* bytes hashed so far */
    unsigned char buf[64];
    size_t used;         /* bytes waiting in buf */
} ml_sha256;

void ml_sha256_init(ml_sha256 *s);
void ml_sha256_update(ml_sha256 *s, const void *data, size_t n);
void ml_sha256_final(ml_sha256 *s, unsigned char out[32]);
/* The digest of a whole file as 64 lowercase hex digits + NUL; ML_OK or ML_ERR naming it. */
int ml_sha256_file(const char *path, char hex[65]);

#endif
