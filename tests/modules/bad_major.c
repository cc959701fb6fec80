/*
 * bad_major.c - a test module built "for the next ABI major": the loader
 * must refuse it (majors must match) and print both versions.
 */
#include <helios.h>

static const helios_module bad_major_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = HELIOS_ABI_MAJOR + 1,
    .abi_minor = HELIOS_ABI_MINOR,
    .struct_size = sizeof(helios_module),
    .name = "bad_major",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &bad_major_module;
}
