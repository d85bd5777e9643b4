/*
 * file.h — the file helpers every layer above base/ shares: whole-file reads, atomic
 * whole-file writes (temp file in the same directory, fsync, rename, fsync of the
 * directory), mkdir -p, opening a path only when it is a regular file, copying and
 * removing a directory tree.
 *
 * Errors: functions returning int give ML_OK or ML_ERR after ml_errorf() naming the path
 * and the step that failed.
 */
#ifndef MOELAB_FILE_H
#define MOELAB_FILE_H

#include <stddef.h>
#include <stdio.h>

#define ML_PATH_MAX 4096

/*
 * Writes data[0..n) to path atomically: "<path>.tmp" in the same directory, fsync,
 * rename over path, fsync the directory. On failure the temp file is removed and any
 * existing file at path is untouched; the error names the path and the step that failed.
 */
int ml_write_file_atomic(const char *path, const void *data, size_t n);
/* The same for the concatenation of the n pieces (struct iovec from <sys/uio.h>): written
   straight from where they are, with writev, no copy into one buffer (checkpoints). */
struct iovec;
int ml_write_file_atomic_iov(const char *path, const struct iovec *iov, int n);
/* Creates path and its missing parents (0777 before umask); existing directories are fine. */
int ml_mkdir_p(const char *path);
/* 1 when path names a directory (following symlinks). */
int ml_is_dir(const char *path);
/*
 * Opens path for reading only if it is a regular file. O_NONBLOCK keeps the open of a FIFO
 * from waiting for a writer; fstat on the descriptor leaves no window for a swap. NULL with
 * errno set (cannot open) or with *not_regular set.
 */
FILE *ml_open_regular(const char *path, int *not_regular);
/*
 * Reads the whole file into *text (owned, free(); NUL-terminated, *len bytes before the
 * NUL). Refuses files larger than max bytes with "<path>: larger than <max> bytes".
 */
int ml_read_file(const char *path, size_t max, char **text, size_t *len);
/* Copies the directory src, its regular files and subdirectories (symlinks and anything else
   are skipped), to dst, which must not exist. */
int ml_copy_tree(const char *src, const char *dst);
/* Removes path and everything under it (symlinks themselves, never what they point to). */
int ml_remove_tree(const char *path);

#endif
