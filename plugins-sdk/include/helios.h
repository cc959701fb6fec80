/*
 * helios.h - the heliosd plugin SDK, all of it.
 *
 *   helios/types.h   ABI version, return codes, buffers, opaque handles
 *   helios/module.h  the module descriptor and hook tables (module -> core)
 *   helios/host.h    the host API function table (core -> module)
 *
 * See plugins-sdk/docs/module-guide.md for a walk-through.
 */
#ifndef HELIOS_H
#define HELIOS_H

#include <stddef.h>

#include "helios/types.h"
#include "helios/module.h"
#include "helios/host.h"

#endif
