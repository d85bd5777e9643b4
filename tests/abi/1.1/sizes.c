/*
 * FROZEN ABI 1.1 FIXTURE — the sizes of ABI 1.1's structs as the frozen header defines
 * them, exported for tests/check_abi.c, which compares them with what today's host believes
 * ABI 1.1 was (ml_abi_size_1_1). Not a plugin: it exports no descriptor.
 */
#include <stddef.h>

#include "moelab/plugin.h"

typedef struct abi_size {
    const char *name;
    size_t size;
} abi_size;

ML_EXPORT const abi_size moelab_abi_1_1_sizes[] = {
    {"ml_plugin", sizeof(ml_plugin)},
    {"ml_option", sizeof(ml_option)},
    {"ml_optval", sizeof(ml_optval)},
    {"ml_tensor_decl", sizeof(ml_tensor_decl)},
    {"ml_router_api", sizeof(ml_router_api)},
    {"ml_loss_api", sizeof(ml_loss_api)},
    {"ml_schedule_api", sizeof(ml_schedule_api)},
    {"ml_host", sizeof(ml_host)},
    {"ml_route", sizeof(ml_route)},
    {"ml_router_event", sizeof(ml_router_event)},
    {"ml_routing_record", sizeof(ml_routing_record)},
    {"ml_loss_init", sizeof(ml_loss_init)},
    {"ml_progress", sizeof(ml_progress)},
    {"ml_layer_health", sizeof(ml_layer_health)},
    {"ml_loss_eval", sizeof(ml_loss_eval)},
    {NULL, 0},
};
