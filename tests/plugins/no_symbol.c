/* no_symbol.c — test plugin: a shared object without the `moelab_plugin` symbol. */
#include "moelab/plugin.h"

ML_EXPORT int moelab_plugin_v0 = 1;
