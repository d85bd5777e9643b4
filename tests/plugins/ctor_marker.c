/*
 * ctor_marker.c — test plugin: good_router.c (included below: top-1 softmax router over
 * x W^T, gate = prob) under another name, with a constructor that leaves a marker file.
 * The sandbox test (check_sandbox) checks that a script handing moelab.router() a path to a
 * copy of this file never gets it dlopen'ed: the constructor runs at dlopen, before any
 * host check could refuse it.
 */
#include <stdio.h>
#include <stdlib.h>

__attribute__((constructor)) static void leave_marker(void) {
    const char *p = getenv("MOELAB_CTOR_MARKER");
    FILE *f = p && *p ? fopen(p, "w") : NULL;
    if (f) fclose(f);
}

#define ROUTER_NAME "ctor_marker"
#define ROUTER_DOC "writes $MOELAB_CTOR_MARKER when dlopen runs its constructor"
#include "good_router.c"
