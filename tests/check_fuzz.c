/*
 * check_fuzz.c — replays every input under tests/fuzz/corpus/<target>/ and
 * tests/fuzz/crashes/<target>/ through the fuzz harnesses (tests/fuzz/targets.h) on the
 * normal build: each reader must return (accepting or refusing the input) without crashing.
 * Under `make asan` the same replay also catches leaks and out-of-bounds reads. Crash
 * inputs are what `make fuzz` found; they stay here as regression tests after the fix.
 */
#include "testutil.h"
#include "fuzz/targets.h"

#include <dirent.h>
#include <sys/stat.h>

typedef int (*harness)(const uint8_t *, size_t);

/* Runs h on every regular file in dir; returns how many (0 when dir does not exist). */
static int replay_dir(const char *dir, harness h) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        uint8_t *buf = malloc((size_t)st.st_size + 1);
        ck_assert_ptr_nonnull(buf);
        ck_assert_uint_eq(fread(buf, 1, (size_t)st.st_size, f), (size_t)st.st_size);
        fclose(f);
        ck_assert_int_eq(h(buf, (size_t)st.st_size), 0);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static void replay(const char *target, harness h) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", target);
    int seeds = replay_dir(dir, h);
    /* the seed corpus is part of the repository: missing seeds mean a broken checkout */
    ck_assert_msg(seeds > 0, "no seed inputs in %s (run from the repository root)", dir);
    snprintf(dir, sizeof dir, "tests/fuzz/crashes/%s", target);
    replay_dir(dir, h);
}

START_TEST(t_replay_config) { replay("config", fz_config); }
END_TEST
START_TEST(t_replay_safetensors) { replay("safetensors", fz_safetensors); }
END_TEST
START_TEST(t_replay_idx) { replay("idx", fz_idx); }
END_TEST
START_TEST(t_replay_cifar) { replay("cifar", fz_cifar); }
END_TEST

/* The harnesses see what the readers see: a valid seed is accepted, a broken one refused. */
START_TEST(t_harness_reaches_readers) {
    static const uint8_t lab[] = {0, 0, 8, 1, 0, 0, 0, 2, 4, 5};
    const char *p = fz_write("train-idx-ubyte", lab, sizeof lab);
    uint32_t dims[3];
    uint8_t *data = NULL;
    ck_assert_int_eq(ml_data_idx_read(p, 2049, dims, &data), ML_OK);
    ck_assert_uint_eq(dims[0], 2);
    ck_assert_int_eq(data[1], 5);
    free(data);
    p = fz_write("train-idx-ubyte", lab, sizeof lab - 1);
    ck_assert_int_eq(ml_data_idx_read(p, 2049, dims, &data), ML_ERR);
    ck_assert_ptr_null(data);
}
END_TEST

int main(void) {
    Suite *s = suite_create("fuzz");
    TCase *tc = tcase_create("replay");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, t_replay_config);
    tcase_add_test(tc, t_replay_safetensors);
    tcase_add_test(tc, t_replay_idx);
    tcase_add_test(tc, t_replay_cifar);
    tcase_add_test(tc, t_harness_reaches_readers);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
