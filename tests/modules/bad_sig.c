/*
 * bad_sig.c - a test module with a foreign build signature (32-bit,
 * GnuTLS): the ABI version matches, but struct layouts would not, so the
 * loader must refuse it and print both signatures.
 */
#include <helios.h>

static const helios_module bad_sig_module = {
    .magic = HELIOS_MODULE_MAGIC,
    .abi_major = HELIOS_ABI_MAJOR,
    .abi_minor = HELIOS_ABI_MINOR,
    .struct_size = sizeof(helios_module),
    .name = "bad_sig",
    .version = "0.0.0",
    .build_sig = "ilp32-gnutls-nosan",
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &bad_sig_module;
}
