/* fuzz_cifar.c — libFuzzer entry for the cifar harness in targets.h (make fuzz). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fz_cifar(data, size); }
