/*
 * abi10.c - a module built the way an ABI 1.0 module looks to the core: it
 * claims minor 0, its descriptor ends before `commands` (1.2) and its
 * handler table before `on_done` (1.1). The core must load it, serve it,
 * and never read the fields its sizes do not cover: `commands` is filled
 * in anyway, so a core that read it would offer `abi10-cmd`.
 */
#include <stddef.h>

#include <helios.h>

#define A10_BODY "abi 1.0\n"

static const helios_host_api *api;

static int a10_handle(helios_ctx *c)
{
    if (api->respond(c->req, 200, "text/plain", A10_BODY, sizeof(A10_BODY) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

static const helios_handler_hooks a10_handler_hooks = {
    .size = offsetof(helios_handler_hooks, on_done), /* 1.0 had no on_done */
    .handle = a10_handle,
};

static int a10_cmd(const helios_host_api *host, int argc, char **argv)
{
    (void)host;
    (void)argc;
    (void)argv;
    return 0;
}

static const helios_command a10_commands[] = {
    {"abi10-cmd", "must not be offered: past struct_size", a10_cmd},
    {NULL, NULL, NULL},
};

static const helios_module a10_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = 1,
    .abi_minor = 0,
    .struct_size = offsetof(helios_module, commands), /* the 1.0 and 1.1 descriptor */
    .name = "abi10",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
    .handler = &a10_handler_hooks,
    .commands = a10_commands,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &a10_module;
}
