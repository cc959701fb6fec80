/*
 * newer_minor.c - a test module claiming a newer ABI minor than the core:
 * it might call host functions the core lacks, so the loader must refuse
 * it and print both versions.
 */
#include <helios.h>

static const helios_module newer_minor_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = HELIOS_ABI_MAJOR,
    .abi_minor = HELIOS_ABI_MINOR + 1,
    .struct_size = sizeof(helios_module),
    .name = "newer_minor",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &newer_minor_module;
}
