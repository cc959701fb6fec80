/*
 * router.h - path normalisation and route matching.
 */
#ifndef HX_ROUTER_H
#define HX_ROUTER_H

#include <stddef.h>

#include "config/config.h"

/*
 * Normalises the path of a request target for matching: percent-decodes
 * (except %2F, which stays "%2F" so it never becomes a separator), merges
 * repeated slashes and removes "." and ".." segments (".." never climbs
 * above the root). OUT must hold LEN+1 bytes. Returns the new length, or -1
 * for a malformed path (bad %-escape, %00, control bytes, no leading '/').
 */
long hx_path_normalize(const char *in, size_t len, char *out);

/* First route of G matching HOST (lower-case, no port), normalised PATH and
 * METHOD; NULL when none does (404). */
const hx_route *hx_route_match(const hx_gen *g, const char *host, size_t hlen, const char *path,
                               size_t plen, const char *method, size_t mlen);

#endif
