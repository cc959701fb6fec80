/*
 * abi12.c - a balancer built the way an ABI 1.2 module looks to the core:
 * it claims minor 2 and its balancer table ends before on_attempt_end
 * (1.3). The core must load it, balance with it, give its pick a NULL
 * rstate as 1.2 promised, and never call on_attempt_end, which is filled
 * in anyway (past the table's size) and logs "BUG" if it ever runs.
 */
#include <stddef.h>

#include <helios.h>

static const helios_host_api *api;

static int a12_pick(helios_ctx *c, const helios_backends *bs, const helios_tried *tried)
{
    if (c->rstate != NULL)
        api->log(HELIOS_LOG_WARN, "abi12", "BUG: a 1.2 pick got a per-attempt slot");
    for (size_t i = 0; i < api->backends_count(bs); i++)
        if (api->backend_usable(api->backends_at(bs, i)) && !api->tried_has(tried, i))
            return (int)i;
    return -1;
}

static void a12_attempt_end(helios_ctx *c, const helios_attempt *a)
{
    (void)c;
    (void)a;
    api->log(HELIOS_LOG_WARN, "abi12", "BUG: on_attempt_end read past a 1.2 table");
}

static const helios_balancer_hooks a12_balancer = {
    .size = offsetof(helios_balancer_hooks, on_attempt_end), /* the 1.2 table */
    .pick = a12_pick,
    .on_attempt_end = a12_attempt_end,
};

static const helios_module a12_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = 1,
    .abi_minor = 2,
    .struct_size = sizeof(helios_module), /* 1.2 appended commands; 1.3 nothing */
    .name = "abi12",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
    .balancer = &a12_balancer,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &a12_module;
}
