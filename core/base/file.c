/* file.c — whole-file reads, atomic whole-file writes, directories, regular-file opens. */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base/common.h"


/* writev of iov[0..n), IOV_MAX pieces per call, resumed after short writes. */
static int writev_all(int fd, const struct iovec *iov, int n) {
    struct iovec cur[IOV_MAX];
    int i = 0;
    size_t skip = 0; /* bytes of iov[i] already written */
    while (i < n) {
        int k = 0;
        size_t want = 0;
        for (int j = i; j < n && k < IOV_MAX; j++, k++) {
            cur[k] = iov[j];
            if (j == i) {
                cur[k].iov_base = (char *)cur[k].iov_base + skip;
                cur[k].iov_len -= skip;
            }
            want += cur[k].iov_len;
        }
        ssize_t w = writev(fd, cur, k);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0 && want > 0) {
            errno = EIO;
            return -1;
        }
        size_t left = (size_t)w;
        while (i < n && left >= iov[i].iov_len - skip) {
            left -= iov[i].iov_len - skip;
            skip = 0;
            i++;
        }
        skip += left;
    }
    return 0;
}

static int write_all(int fd, const void *data, size_t n) {
    struct iovec one = {(void *)data, n};
    return writev_all(fd, &one, 1);
}

static void dir_of(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else if (slash == path) snprintf(out, cap, "/");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    /* Some file systems refuse fsync on directories; the rename is still done. */
    if (rc < 0 && (errno == EINVAL || errno == EBADF)) rc = 0;
    close(fd);
    return rc;
}

int ml_write_file_atomic_iov(const char *path, const struct iovec *iov, int n) {
    char tmp[ML_PATH_MAX + 8], dir[ML_PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return ml_errorf("%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return ml_errorf("%s: cannot create temporary file %s: %s", path, tmp, strerror(errno));
    const char *step = NULL;
    if (writev_all(fd, iov, n) < 0) step = "write";
    else if (fsync(fd) < 0) step = "fsync";
    int err = errno;
    if (close(fd) < 0 && !step) {
        step = "close";
        err = errno;
    }
    if (!step && rename(tmp, path) < 0) {
        step = "rename";
        err = errno;
    }
    if (step) {
        unlink(tmp);
        return ml_errorf("%s: %s failed: %s (the previous file, if any, is untouched)", path, step,
                         strerror(err));
    }
    dir_of(path, dir, sizeof dir);
    if (fsync_dir(dir) < 0)
        return ml_errorf("%s: written, but fsync of directory %s failed: %s", path, dir, strerror(errno));
    return ML_OK;
}

int ml_write_file_atomic(const char *path, const void *data, size_t n) {
    struct iovec one = {(void *)data, n};
    return ml_write_file_atomic_iov(path, &one, 1);
}

int ml_mkdir_p(const char *path) {
    char buf[ML_PATH_MAX];
    if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf)
        return ml_errorf("%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) < 0 && errno != EEXIST)
                return ml_errorf("cannot create directory %s: %s", buf, strerror(errno));
            struct stat st;
            if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
                return ml_errorf("cannot create directory %s: a file of that name exists", buf);
            *p = c;
            if (!c) break;
        }
    }
    return ML_OK;
}

int ml_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

FILE *ml_open_regular(const char *path, int *not_regular) {
    *not_regular = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *not_regular = 1;
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) close(fd);
    return f;
}

int ml_read_file(const char *path, size_t max, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ml_errorf("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    int rc = ML_OK;
    while (buf) {
        if (n == cap) {
            if (cap >= max) {
                rc = ml_errorf("%s: larger than %zu bytes", path, max);
                break;
            }
            char *b = realloc(buf, (cap *= 2) + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) {
            if (ferror(f)) rc = ml_errorf("%s: cannot read: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!buf) return ml_errorf("out of memory reading %s", path);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return ML_OK;
}

/* ---------------------------------------------------------------- trees */

static int copy_file(const char *src, const char *dst) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return ml_errorf("%s: cannot open: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (out < 0) {
        close(in);
        return ml_errorf("%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    ssize_t n;
    int rc = ML_OK;
    while ((n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 || write_all(out, buf, (size_t)n)) {
            rc = ml_errorf("copying %s to %s: %s", src, dst, strerror(errno));
            break;
        }
    }
    close(in);
    if (close(out) && !rc) rc = ml_errorf("%s: %s", dst, strerror(errno));
    return rc;
}

static int copy_tree(const char *src, const char *dst, int depth) {
    if (depth > 32) return ml_errorf("%s: directories nested deeper than 32", src);
    if (mkdir(dst, 0777) && errno != EEXIST) return ml_errorf("%s: cannot create: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return ml_errorf("%s: cannot open: %s", src, strerror(errno));
    struct dirent *de;
    int rc = ML_OK;
    while (!rc && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char a[ML_PATH_MAX], b[ML_PATH_MAX];
        if ((size_t)snprintf(a, sizeof a, "%s/%s", src, de->d_name) >= sizeof a ||
            (size_t)snprintf(b, sizeof b, "%s/%s", dst, de->d_name) >= sizeof b) {
            rc = ml_errorf("%s/%s: path too long", src, de->d_name);
            break;
        }
        struct stat st;
        if (lstat(a, &st)) rc = ml_errorf("%s: %s", a, strerror(errno));
        else if (S_ISDIR(st.st_mode)) rc = copy_tree(a, b, depth + 1);
        else if (S_ISREG(st.st_mode)) rc = copy_file(a, b);
    }
    closedir(d);
    return rc;
}

int ml_copy_tree(const char *src, const char *dst) {
    struct stat st;
    if (stat(src, &st) || !S_ISDIR(st.st_mode)) return ml_errorf("%s: not a directory", src);
    if (!lstat(dst, &st)) return ml_errorf("%s: exists already (copying %s)", dst, src);
    return copy_tree(src, dst, 0);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path) ? -1 : 0;
}

int ml_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return errno == ENOENT ? ML_OK : ml_errorf("%s: %s", path, strerror(errno));
    if (nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS)) return ml_errorf("%s: cannot remove: %s", path, strerror(errno));
    return ML_OK;
}
