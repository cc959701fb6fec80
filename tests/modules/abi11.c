/*
 * abi11.c - a module built the way an ABI 1.1 module looks to the core: it
 * claims minor 1, its descriptor ends before `commands` (1.2), and it reads
 * request facts with the 1.1 size of helios_req_stats (before the fields
 * 1.3 appended). As a handler it uses the 1.1 on_done hook; as a filter in
 * the global chain it counts on_log calls, which a 1.1 module gets for
 * routed requests only (1.3 added unrouted ones, for 1.3 modules).
 *
 * GET /  answers "abi 1.1 N" where N is the number of on_log calls seen on
 * this worker before the request; the handler also checks that req_stats
 * wrote nothing past the 1.1 struct (a sentinel after it) and that on_done
 * ran for the previous request. Any broken promise is logged as "BUG".
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <helios.h>

static const helios_host_api *api;

/* per process: tests run one worker */
static unsigned a11_logs, a11_handled, a11_done;

#define A11_STATS_SIZE offsetof(helios_req_stats, upstream_ttfb_us)

static int a11_handle(helios_ctx *c)
{
    struct {
        helios_req_stats st;
        unsigned char after[sizeof(helios_req_stats)];
    } s;
    memset(&s, 0xa5, sizeof(s));
    s.st.size = A11_STATS_SIZE;
    if (api->req_stats(c->req, &s.st) != 0)
        api->log(HELIOS_LOG_WARN, "abi11", "BUG: req_stats refused a 1.1-sized struct");
    const unsigned char *tail = (const unsigned char *)&s.st + A11_STATS_SIZE;
    for (size_t i = 0; i < sizeof(s.st) - A11_STATS_SIZE; i++)
        if (tail[i] != 0xa5) {
            api->log(HELIOS_LOG_WARN, "abi11", "BUG: req_stats wrote past a 1.1 struct");
            break;
        }
    if (a11_done != a11_handled)
        api->log(HELIOS_LOG_WARN, "abi11", "BUG: on_done did not run for every request");
    a11_handled++;
    char body[64];
    int n = snprintf(body, sizeof(body), "abi 1.1 %u\n", a11_logs);
    if (api->respond(c->req, 200, "text/plain", body, (size_t)n) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

static void a11_done_hook(helios_ctx *c)
{
    (void)c;
    a11_done++;
}

static void a11_log(helios_ctx *c)
{
    if (api->req_route(c->req) == NULL)
        api->log(HELIOS_LOG_WARN, "abi11", "BUG: no route name");
    a11_logs++;
}

/* the 1.1 tables: every hook 1.1 had, sizes as 1.1 built them */
static const helios_handler_hooks a11_handler_hooks = {
    .size = sizeof(helios_handler_hooks),
    .handle = a11_handle,
    .on_done = a11_done_hook,
};

static const helios_filter_hooks a11_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_log = a11_log,
};

static const helios_module a11_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = 1,
    .abi_minor = 1,
    .struct_size = offsetof(helios_module, commands), /* the 1.0 and 1.1 descriptor */
    .name = "abi11",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
    .handler = &a11_handler_hooks,
    .filter = &a11_filter_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &a11_module;
}
