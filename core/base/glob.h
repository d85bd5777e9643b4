/*
 * glob.h — shell-style patterns on names (tensor names, parameter groups), as fnmatch(3)
 * without flags reads them: `*` any run of characters (dots and slashes included), `?` one
 * character, `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) one character of a set, `\c` the
 * character c. "enc.*" matches every encoder tensor, "moe1.expert*" every expert of layer 1.
 *
 * The matcher keeps one backtracking point (the last `*`), so it runs in O(len(pattern) ×
 * len(name)) whatever the pattern: one a script chose cannot stall the host as a recursive
 * fnmatch can with many stars. Character classes ([:digit:]) are not supported.
 */
#ifndef MOELAB_GLOB_H
#define MOELAB_GLOB_H

#include <stddef.h>

/* The longest pattern anyone may give (bytes, without the NUL). */
#define ML_GLOB_MAX 127

/* 1 when name matches pattern as a whole, else 0. A pattern ml_glob_check refuses matches
   as if its unclosed '[' were a literal character. */
int ml_glob_match(const char *pattern, const char *name);
/* ML_OK for a well-formed pattern of 1..ML_GLOB_MAX bytes; else ML_ERR with a message
   naming what is wrong ("pattern 'enc.[': '[' is not closed"). */
int ml_glob_check(const char *pattern);
/* 1 when pattern has any of * ? [ \ (it is a pattern, not a plain name). */
int ml_glob_is_pattern(const char *pattern);

#endif
