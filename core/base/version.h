/*
 * version.h — what this build of moelab is, for provenance (summary.json, `moelab
 * version`). ml_build_commit and ml_build_flags are defined in a file the Makefile
 * generates at every build (tools/gen-version.sh -> build/gen/version.c), so they always
 * describe the binary they are in.
 */
#ifndef MOELAB_VERSION_H
#define MOELAB_VERSION_H

#define ML_VERSION "0.2.0"

/* The git commit the build came from (40 hex digits, "-dirty" when the tree had changes to
   tracked files), or "unknown" outside a git checkout. */
const char *ml_build_commit(void);
/* The compiler and its flags. */
const char *ml_build_flags(void);

#endif
