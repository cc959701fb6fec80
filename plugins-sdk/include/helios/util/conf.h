/*
 * helios/util/conf.h - configuration parsers several modules share.
 *
 * Header-only and not part of the ABI: every function is static inline and
 * works through the host API the module was given.
 */
#ifndef HELIOS_UTIL_CONF_H
#define HELIOS_UTIL_CONF_H

#include <stdint.h>
#include <stdlib.h>

#include "../host.h"

/* Parses CONF's `statuses:` (a list of 5xx codes) into STATUSES, where
 * statuses[s - 500] = 1 means status S counts as a failure. Absent: 502,
 * 503 and 504. Each bad item is reported with api->conf_error. Returns 0,
 * or -1 after an error. */
static inline int helios_conf_statuses_5xx(const helios_host_api *api, const helios_conf *conf,
                                           uint8_t statuses[100])
{
    const helios_conf *list = api->conf_get(conf, "statuses");
    if (list == NULL) {
        statuses[2] = statuses[3] = statuses[4] = 1; /* 502, 503, 504 */
        return 0;
    }
    if (api->conf_kind(list) != HELIOS_CONF_SEQ) {
        api->conf_error(list, "expected a list of 5xx status codes, e.g. [500, 502, 503, 504]");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < api->conf_len(list); i++) {
        const helios_conf *item = api->conf_at(list, i);
        const char *s = api->conf_scalar(item);
        char *end = NULL;
        long v = s ? strtol(s, &end, 10) : 0;
        if (s == NULL || *s == '\0' || *end != '\0' || v < 500 || v > 599) {
            api->conf_error(item, "expected a status code between 500 and 599, got %s%s%s",
                            s ? "\"" : "", s ? s : "a non-scalar", s ? "\"" : "");
            bad = 1;
            continue;
        }
        statuses[v - 500] = 1;
    }
    return bad ? -1 : 0;
}

#endif
