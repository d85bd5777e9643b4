/* fuzz_idx.c — libFuzzer entry for the idx harness in targets.h (make fuzz). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fz_idx(data, size); }
