/*
 * bad_magic.c - a test module whose descriptor has the wrong magic number.
 * Everything else is valid, so the loader must refuse it for the magic
 * alone, naming the file and both values.
 */
#include <helios.h>

static const helios_module bad_magic_module = {
    .magic = 0x4e4f5045u, /* "NOPE", not HELIOS_MODULE_MAGIC */
    .abi_major = HELIOS_ABI_MAJOR,
    .abi_minor = HELIOS_ABI_MINOR,
    .struct_size = sizeof(helios_module),
    .name = "bad_magic",
    .version = "0.0.0",
    .build_sig = HELIOS_BUILD_SIGNATURE,
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &bad_magic_module;
}
