/*
 * null_desc.c - a test module whose entry refuses to load by returning
 * NULL (after logging why, as module.h asks).
 */
#include <helios.h>

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    api->log(HELIOS_LOG_ERROR, "null_desc", "refusing to load (test module)");
    return NULL;
}
