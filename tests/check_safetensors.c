/* check_safetensors.c — round trip, byte layout, corrupt files, failed writes. */
#include "testutil.h"
#include "base/common.h"
#include "base/json.h"
#include "base/strbuf.h"
#include "io/safetensors.h"

#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char g_dir[256];

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void setup(void) {
    const char *d = tu_tmpdir("st");
    ck_assert_ptr_nonnull(d);
    snprintf(g_dir, sizeof g_dir, "%s", d);
}

static void teardown(void) { nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static const char *tmp_path(const char *name) {
    static char p[2][512];
    static int k;
    k ^= 1;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    b[*n] = 0;
    return b;
}

static void spit(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* A file from a header text and data bytes, as another writer would make it. */
static void craft(const char *path, const char *header, const void *data, size_t n) {
    size_t h = strlen(header);
    unsigned char *b = calloc(1, 8 + h + n + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    if (n) memcpy(b + 8 + h, data, n);
    spit(path, b, 8 + h + n);
    free(b);
}

/* Expects ml_st_open(path) to fail with an error containing want. */
static void expect_error(const char *path, const char *want) {
    ml_st_file *f = ml_st_open(path);
    ck_assert_msg(f == NULL, "%s opened, expected error '%s'", path, want);
    ck_assert_msg(strstr(ml_error(), want) != NULL, "error '%s' lacks '%s'", ml_error(), want);
    ck_assert_msg(strstr(ml_error(), path) != NULL, "error '%s' does not name the file", ml_error());
    ck_assert_ptr_null(strchr(ml_error(), '\n'));
}

/* The standard test checkpoint: four tensors and two metadata entries. */
static float g_w[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 65504};
static float g_bias[4] = {0.25f, 0.5f, 0.75f, 1};
static float g_s[1] = {42};

static int write_standard(const char *path) {
    ml_st_tensor t[4] = {
        {"moe0.w1", 2, {2, 3}, g_w},
        {"moe0.router.bias \"q\"", 1, {4}, g_bias},
        {"scalar", 0, {0}, g_s},
        {"empty", 2, {0, 5}, NULL},
    };
    const char *mk[] = {"format", "epoch"}, *mv[] = {"moelab-1", "7"};
    return ml_st_write(path, t, 4, mk, mv, 2);
}

START_TEST(round_trip) {
    const char *p = tmp_path("ckpt.safetensors");
    ck_assert_msg(write_standard(p) == ML_OK, "%s", ml_error());
    ml_st_file *f = ml_st_open(p);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert_int_eq(ml_st_count(f), 4);
    ck_assert_str_eq(ml_st_name(f, 0), "moe0.w1");
    ck_assert_str_eq(ml_st_name(f, 1), "moe0.router.bias \"q\"");
    ck_assert_ptr_null(ml_st_name(f, 4));
    int nd;
    int64_t sh[4];
    const float *w = ml_st_get(f, "moe0.w1", &nd, sh);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(nd, 2);
    ck_assert_int_eq(sh[0], 2);
    ck_assert_int_eq(sh[1], 3);
    ck_assert_int_eq(memcmp(w, g_w, sizeof g_w), 0); /* bitwise, -0 and denormal-ish included */
    ck_assert_uint_eq((uintptr_t)w % 64, 0);
    const float *b = ml_st_get(f, "moe0.router.bias \"q\"", &nd, sh);
    ck_assert_int_eq(nd, 1);
    ck_assert_int_eq(memcmp(b, g_bias, sizeof g_bias), 0);
    const float *s = ml_st_get(f, "scalar", &nd, sh);
    ck_assert_int_eq(nd, 0);
    ck_assert(s[0] == 42);
    ck_assert_ptr_nonnull(ml_st_get(f, "empty", &nd, sh));
    ck_assert_int_eq(sh[0], 0);
    ck_assert_int_eq(sh[1], 5);
    ck_assert_ptr_null(ml_st_get(f, "missing", NULL, NULL));
    ck_assert_str_eq(ml_st_meta(f, "format"), "moelab-1");
    ck_assert_str_eq(ml_st_meta(f, "epoch"), "7");
    ck_assert_int_eq((int)strlen(ml_st_meta(f, "checksum")), 8);
    ck_assert_ptr_null(ml_st_meta(f, "nope"));
    ml_st_close(f);
    ml_st_close(NULL);
    ck_assert_int_ne(access(tmp_path("ckpt.safetensors.tmp"), F_OK), 0);
}
END_TEST

START_TEST(byte_layout) {
    /* One tensor [1, -2]: the bytes are checked by hand against the format. */
    const char *p = tmp_path("a.safetensors");
    float v[2] = {1.0f, -2.0f};
    ml_st_tensor t = {"a", 1, {2}, v};
    ck_assert_int_eq(ml_st_write(p, &t, 1, NULL, NULL, 0), ML_OK);
    size_t n;
    unsigned char *b = slurp(p, &n);
    static const unsigned char data[8] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0};
    char header[256];
    const char *head = "{\"__metadata__\":{\"checksum\":\"";
    int hl = snprintf(header, sizeof header,
                      "%s%s\",\"checksum_covers\":\"file\"},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                      head, "00000000");
    size_t padded = ((size_t)hl + 7) / 8 * 8;
    ck_assert_uint_eq(n, 8 + padded + 8);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | b[i]; /* little-endian u64 */
    ck_assert_uint_eq(len, padded);
    /* The checksum: CRC32 of every byte of the file but its own 8 digits. */
    size_t at = 8 + strlen(head);
    char digits[9];
    memcpy(digits, b + at, 8);
    digits[8] = 0;
    uLong c = crc32(crc32(0L, Z_NULL, 0), b, (uInt)at);
    c = crc32(c, b + at + 8, (uInt)(n - at - 8));
    char want[16];
    snprintf(want, sizeof want, "%08lx", c);
    ck_assert_str_eq(digits, want);
    memcpy(b + at, "00000000", 8);
    ck_assert_int_eq(memcmp(b + 8, header, (size_t)hl), 0);
    for (size_t i = 8 + (size_t)hl; i < 8 + padded; i++) ck_assert_int_eq(b[i], ' ');
    ck_assert_int_eq(memcmp(b + 8 + padded, data, 8), 0);
    free(b);

    /* A file as the reference writer makes it (no checksum, header order unlike data
     * order, no metadata) reads when the caller allows files without a checksum. */
    float two[2] = {5, 6};
    craft(p, "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]}}  ", two, 8);
    expect_error(p, "metadata has no 'checksum'");
    ml_st_file *f = ml_st_open_flags(p, ML_ST_ALLOW_NO_CHECKSUM);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert(ml_st_get(f, "a", NULL, NULL)[0] == 5);
    ck_assert(ml_st_get(f, "b", NULL, NULL)[0] == 6);
    ck_assert_ptr_null(ml_st_meta(f, "checksum"));
    ml_st_close(f);

    /* A file of moelab before checkpoint format 2: its checksum covers the data only. */
    char legacy[256];
    snprintf(legacy, sizeof legacy,
             "{\"__metadata__\":{\"checksum\":\"%08lx\"},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
             crc32(crc32(0L, Z_NULL, 0), (const Bytef *)two, 8));
    craft(p, legacy, two, 8);
    f = ml_st_open(p);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ml_st_close(f);
    unsigned char *lb = slurp(p, &n);
    lb[n - 1] ^= 0x80;
    spit(p, lb, n);
    free(lb);
    expect_error(p, "checksum mismatch (file is corrupt): header says");
}
END_TEST

START_TEST(corrupt_files) {
    const char *good = tmp_path("good.safetensors");
    ck_assert_int_eq(write_standard(good), ML_OK);
    size_t n;
    unsigned char *b = slurp(good, &n);
    const char *p = tmp_path("bad.safetensors");

    spit(p, b, 5);
    expect_error(p, "file is 5 bytes, too short");

    spit(p, b, n - 4); /* truncated data: the last tensor's offsets run past the end */
    expect_error(p, "outside the data section");

    spit(p, b, 40); /* truncated inside the header */
    expect_error(p, "header length field points past the end of the file (40 bytes)");

    unsigned char *c = malloc(n);
    memcpy(c, b, n);
    uint64_t big = 9999999;
    for (int i = 0; i < 8; i++) c[i] = (unsigned char)(big >> (8 * i));
    spit(p, c, n);
    expect_error(p, "not a safetensors file, or truncated");
    ck_assert_ptr_null(strstr(ml_error(), "9999999"));
    for (int i = 0; i < 8; i++) c[i] = 0xff;
    spit(p, c, n);
    expect_error(p, "not a safetensors file, or truncated");

    memcpy(c, b, n);
    char *colon = memchr(c + 8, ':', n - 8);
    *colon = ';';
    spit(p, c, n);
    expect_error(p, "header is not valid JSON: expected ':' at byte");

    memcpy(c, b, n);
    c[n - 3] ^= 0x01; /* one bit of tensor data */
    spit(p, c, n);
    expect_error(p, "checksum mismatch (file is corrupt)");

    /* The header is covered too: one changed digit of a metadata value ("7" -> "8"), and
     * of a shape in a way that keeps the file self-consistent. */
    memcpy(c, b, n);
    char *ep = memmem(c + 8, n - 8, "\"epoch\":\"7\"", 11);
    ck_assert_ptr_nonnull(ep);
    ep[9] = '8';
    spit(p, c, n);
    expect_error(p, "checksum mismatch (file is corrupt)");
    memcpy(c, b, n);
    char *sh = memmem(c + 8, n - 8, "\"shape\":[2,3]", 13);
    ck_assert_ptr_nonnull(sh);
    sh[9] = '3', sh[11] = '2';
    spit(p, c, n);
    expect_error(p, "checksum mismatch (file is corrupt)");

    /* Removing the checksum (spaces keep the length) and flipping a data bit is refused:
     * the checksum is required. */
    memcpy(c, b, n);
    char *ck = memmem(c + 8, n - 8, "\"checksum\"", 10);
    char *covers = memmem(c + 8, n - 8, "\"checksum_covers\":\"file\",", 25);
    ck_assert_ptr_nonnull(ck);
    ck_assert_ptr_nonnull(covers);
    memset(ck, ' ', (size_t)(covers + 25 - ck)); /* {   "format":... */
    c[n - 3] ^= 0x01;
    spit(p, c, n);
    expect_error(p, "metadata has no 'checksum'");
    free(c);
    free(b);

    /* A file that is not safetensors at all (a script may name /etc/shadow): the error
     * quotes none of its bytes, not even its first 8 as a number. */
    const char *secret = "root:$6$Zq9sEcReT$abcdefghijklmnop:19000:0:99999:7:::\n";
    spit(p, secret, strlen(secret));
    expect_error(p, "not a safetensors file");
    uint64_t as_len = 0;
    for (int i = 7; i >= 0; i--) as_len = as_len << 8 | (unsigned char)secret[i];
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)as_len);
    ck_assert_ptr_null(strstr(ml_error(), num));
    ck_assert_ptr_null(strstr(ml_error(), "root"));
    unsigned char small[16] = {4, 0, 0, 0, 0, 0, 0, 0, 'r', 'o', 'o', 't'};
    spit(p, small, 12); /* a plausible length, but no JSON header */
    expect_error(p, "not a safetensors file");
    ck_assert_ptr_null(strstr(ml_error(), "root"));

    float d[4] = {1, 2, 3, 4};
    craft(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", d, 16);
    expect_error(p, "tensors 'a' and 'b' overlap (data_offsets [0,12] and [8,16])");
    craft(p, "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", d, 4);
    expect_error(p, "tensor 'a': dtype \"F16\" is not supported");
    craft(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d, 8);
    expect_error(p, "data_offsets span 8 bytes, shape [3] of F32 needs 12");
    craft(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", d, 4);
    expect_error(p, "shape has 5 dimensions");
    craft(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", d, 4);
    expect_error(p, "shape[0] is not a non-negative integer");
    craft(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", d, 4);
    expect_error(p, "lacks \"data_offsets\"");
    craft(p, "{\"__metadata__\":{\"epoch\":7}}", d, 0);
    expect_error(p, "__metadata__ value of 'epoch' is not a string");
    craft(p, "{\"__metadata__\":{\"checksum\":\"xyz\"}}", d, 0);
    expect_error(p, "metadata checksum 'xyz' is not 8 hex digits");
    craft(p, "{\"__metadata__\":{\"checksum\":\"00000000\",\"checksum_covers\":\"header\"}}", d, 0);
    expect_error(p, "checksum_covers is 'header', expected 'file'");
    craft(p, "{\"__metadata__\":{\"checksum_covers\":\"file\",\"checksum\":\"00000000\"}}", d, 0);
    expect_error(p, "the checksum is not the header's first entry");
    craft(p, "[1,2]", d, 0);
    expect_error(p, "not a safetensors file");
    craft(p, "{\"a\":{},\"a\":{}}", d, 0);
    expect_error(p, "duplicate object key");
    expect_error(tmp_path("missing.safetensors"), "cannot open");
    expect_error(g_dir, "not a regular file");
}
END_TEST

/* The file at path still has exactly the bytes of `before`. */
static void assert_unchanged(const char *path, const unsigned char *before, size_t n) {
    size_t m;
    unsigned char *now = slurp(path, &m);
    ck_assert_ptr_nonnull(now);
    ck_assert_uint_eq(m, n);
    ck_assert_int_eq(memcmp(now, before, n), 0);
    free(now);
    ml_st_file *f = ml_st_open(path);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ml_st_close(f);
}

START_TEST(failed_write_keeps_old_file) {
    char p[512], tmp[520];
    snprintf(p, sizeof p, "%s", tmp_path("ckpt.safetensors"));
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    ck_assert_int_eq(write_standard(p), ML_OK);
    size_t n;
    unsigned char *before = slurp(p, &n);
    float big[4096] = {0};
    ml_st_tensor t = {"big", 1, {4096}, big};

    /* The temporary file cannot be created. */
    ck_assert_int_eq(mkdir(tmp, 0777), 0);
    ck_assert_int_eq(ml_st_write(p, &t, 1, NULL, NULL, 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "cannot create temporary file"));
    assert_unchanged(p, before, n);
    ck_assert_int_eq(rmdir(tmp), 0);

    /* The disk fills up mid-write (file size limit; SIGXFSZ ignored so write fails). */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1000;
    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = ml_st_write(p, &t, 1, NULL, NULL, 0);
    setrlimit(RLIMIT_FSIZE, &old);
    ck_assert_int_eq(rc, ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "write failed"));
    ck_assert_ptr_nonnull(strstr(ml_error(), "previous file, if any, is untouched"));
    assert_unchanged(p, before, n);
    ck_assert_int_ne(access(tmp, F_OK), 0);

    /* The directory is not writable (meaningless as root, who may write anyway). */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(g_dir, 0555), 0);
        ck_assert_int_eq(ml_st_write(p, &t, 1, NULL, NULL, 0), ML_ERR);
        chmod(g_dir, 0755);
        assert_unchanged(p, before, n);
    }

    /* The path is a directory: the rename fails, the directory stays. */
    const char *d = tmp_path("dir.safetensors");
    ck_assert_int_eq(mkdir(d, 0777), 0);
    ck_assert_int_eq(ml_st_write(d, &t, 1, NULL, NULL, 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "dir.safetensors: rename failed"));
    struct stat st;
    ck_assert(stat(d, &st) == 0 && S_ISDIR(st.st_mode));

    /* Bad arguments are refused before anything is touched. */
    ml_st_tensor two[2] = {{"x", 1, {1}, big}, {"x", 1, {1}, big}};
    ck_assert_int_eq(ml_st_write(p, two, 2, NULL, NULL, 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "tensor 'x' given twice"));
    const char *mk[] = {"checksum"}, *mv[] = {"0"};
    ck_assert_int_eq(ml_st_write(p, &t, 1, mk, mv, 1), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "'checksum' is reserved"));
    ml_st_tensor five = {"f", 5, {1, 1, 1, 1}, big};
    ck_assert_int_eq(ml_st_write(p, &five, 1, NULL, NULL, 0), ML_ERR);
    ml_st_tensor notutf8 = {"bad\xff", 1, {1}, big};
    ck_assert_int_eq(ml_st_write(p, &notutf8, 1, NULL, NULL, 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "UTF-8"));
    /* metadata so large that no reader would accept the header: refused at write time */
    size_t hn = 100000001;
    char *huge = malloc(hn + 1);
    memset(huge, 'x', hn);
    huge[hn] = 0;
    const char *hk[] = {"state"}, *hv[] = {huge};
    ck_assert_int_eq(ml_st_write(p, &t, 1, hk, hv, 1), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "more than the 100000000 a reader accepts"));
    free(huge);
    assert_unchanged(p, before, n);
    free(before);
}
END_TEST

/* A model with many experts: thousands of tensors, more than writev takes at once (IOV_MAX),
 * from two buffers in alternation (pieces that do not follow each other in memory) and in
 * runs that do (merged into one piece): every byte lands where the header says, the
 * checksum holds, and a name given twice among them is still found. */
START_TEST(many_tensors) {
    enum { NT = 3000, PER = 3 };
    float *a = malloc(NT * PER * sizeof *a), *b = malloc(NT * PER * sizeof *b);
    ml_st_tensor *t = calloc(NT, sizeof *t);
    char (*names)[32] = calloc(NT, sizeof *names);
    ck_assert(a && b && t && names);
    for (int i = 0; i < NT * PER; i++) {
        a[i] = (float)i;
        b[i] = -(float)i - 0.5f;
    }
    for (int i = 0; i < NT; i++) {
        snprintf(names[i], sizeof names[i], "moe1.expert%d.w", i);
        t[i].name = names[i];
        t[i].ndim = 1;
        t[i].shape[0] = PER;
        /* tensors 0..999 contiguous in a, then a and b in turn */
        t[i].data = (i < 1000 || i % 2 == 0 ? a : b) + (size_t)i * PER;
    }
    const char *p = tmp_path("many.safetensors");
    ck_assert_msg(ml_st_write(p, t, NT, NULL, NULL, 0) == ML_OK, "%s", ml_error());
    ml_st_file *f = ml_st_open(p);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert_int_eq(ml_st_count(f), NT);
    for (int i = 0; i < NT; i++) {
        int nd;
        int64_t sh[4];
        const float *x = ml_st_get(f, names[i], &nd, sh);
        ck_assert_ptr_nonnull(x);
        ck_assert_int_eq(memcmp(x, t[i].data, PER * sizeof *x), 0);
    }
    ml_st_close(f);
    size_t n;
    unsigned char *before = slurp(p, &n);
    snprintf(names[NT - 7], sizeof names[NT - 7], "moe1.expert%d.w", 1234);
    ck_assert_int_eq(ml_st_write(p, t, NT, NULL, NULL, 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "tensor 'moe1.expert1234.w' given twice"));
    size_t n2;
    unsigned char *after = slurp(p, &n2);
    ck_assert(n == n2 && !memcmp(before, after, n));
    free(before);
    free(after);
    free(names);
    free(t);
    free(a);
    free(b);
}
END_TEST

/* JSON objects with many keys (a checkpoint header has one per tensor): duplicates found
 * by hash past 32 keys, wherever they are; distinct keys all kept. */
START_TEST(json_many_keys) {
    for (int dup_at = -1; dup_at < 200; dup_at += 50) {
        ml_strbuf sb = {0};
        ml_strbuf_printf(&sb, "{");
        for (int i = 0; i < 200; i++) ml_strbuf_printf(&sb, "%s\"k%d\":%d", i ? "," : "", i, i);
        if (dup_at >= 0) ml_strbuf_printf(&sb, ",\"k%d\":0", dup_at);
        ml_strbuf_printf(&sb, "}");
        ck_assert(!sb.oom);
        ml_jv *v = ml_jv_parse(sb.buf, sb.len);
        if (dup_at >= 0) {
            ck_assert_ptr_null(v);
            ck_assert_ptr_nonnull(strstr(ml_error(), "duplicate object key"));
        } else {
            ck_assert_msg(v != NULL, "%s", ml_error());
            ck_assert_int_eq(v->n, 200);
            ck_assert_ptr_nonnull(ml_jv_get(v, "k0"));
            ck_assert_ptr_nonnull(ml_jv_get(v, "k199"));
        }
        ml_jv_free(v);
        free(sb.buf);
    }
}
END_TEST

/* A checkpoint large enough for its checksum to be computed in spans shared by threads
 * (pieces that straddle the spans' borders): the digits are zlib's CRC32 of the file computed
 * in one pass, and a flipped byte far into the data is caught on opening. */
START_TEST(large_file_checksum) {
    enum { NT = 7, PER = (3 << 20) / 4 + 5 }; /* 7 tensors of a little over 3 MB: 21 MB */
    float *a = malloc((size_t)NT * PER * sizeof *a), *b = malloc((size_t)NT * PER * sizeof *b);
    ck_assert(a && b);
    for (size_t i = 0; i < (size_t)NT * PER; i++) {
        a[i] = (float)(i % 1000003) * 0.5f;
        b[i] = -(float)(i % 999983);
    }
    ml_st_tensor t[NT];
    char names[NT][16];
    for (int i = 0; i < NT; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        t[i] = (ml_st_tensor){names[i], 1, {PER}, (i % 3 ? a : b) + (size_t)i * PER};
    }
    const char *p = tmp_path("large.safetensors");
    ck_assert_msg(ml_st_write(p, t, NT, NULL, NULL, 0) == ML_OK, "%s", ml_error());
    size_t n;
    unsigned char *f = slurp(p, &n);
    size_t at = 8 + strlen("{\"__metadata__\":{\"checksum\":\"");
    char digits[9], want[16];
    memcpy(digits, f + at, 8);
    digits[8] = 0;
    uLong c = crc32(crc32(0L, Z_NULL, 0), f, (uInt)at);
    c = crc32(c, f + at + 8, (uInt)(n - at - 8));
    snprintf(want, sizeof want, "%08lx", c);
    ck_assert_str_eq(digits, want);
    ml_st_file *sf = ml_st_open(p);
    ck_assert_msg(sf != NULL, "%s", ml_error());
    for (int i = 0; i < NT; i++) {
        const float *x = ml_st_get(sf, names[i], NULL, NULL);
        ck_assert_ptr_nonnull(x);
        ck_assert_int_eq(memcmp(x, t[i].data, (size_t)PER * 4), 0);
    }
    ml_st_close(sf);
    f[n - 12345] ^= 1;
    spit(p, f, n);
    expect_error(p, "checksum");
    free(f);
    free(a);
    free(b);
}
END_TEST

static Suite *st_suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, byte_layout);
    tcase_add_test(tc, corrupt_files);
    tcase_add_test(tc, failed_write_keeps_old_file);
    tcase_add_test(tc, many_tensors);
    tcase_add_test(tc, json_many_keys);
    tcase_add_test(tc, large_file_checksum);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(st_suite()); }
