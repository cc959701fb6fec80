/*
 * wire.c - connects the layers' upward tables at start-up (runtime.h).
 */
#include "runtime/runtime.h"

#include "config/module_loader.h"
#include "event/worker.h"
#include "http/conn.h"
#include "proxy/upstream.h"
#include "runtime/state.h"

void hx_runtime_wire(void)
{
    hx_modules_set_host(&hx_host_api);
    hx_gen_set_free_hook(hx_state_gen_freed);
    hx_proxy_register(&hx_upstream_proxy);
    hx_worker_set_hooks(&(hx_worker_hooks){
        .accept = hx_conn_accept,
        .conns_shutdown = hx_conns_shutdown,
        .conns_kill = hx_conns_kill,
        .backend_init = hx_backend_pools_init,
        .gen_close = hx_pools_close_gen,
    });
}
