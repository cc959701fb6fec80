/*
 * no_entry.c - a test module that exports a plausible but wrong entry name
 * and no helios_module_init: the loader must look up exactly that symbol
 * and refuse the file.
 */
#include <helios.h>

static const helios_module no_entry_module = {
    HELIOS_MODULE_HEADER("no_entry", "0.0.0"),
};

__attribute__((visibility("default"))) const helios_module *helios_init(const helios_host_api *api);

__attribute__((visibility("default"))) const helios_module *helios_init(const helios_host_api *api)
{
    (void)api;
    return &no_entry_module;
}
