/*
 * helios/util/listen_keep.h - a service's own listening socket kept
 * across a configuration reload.
 *
 * Header-only helpers, not part of the ABI (nothing here crosses the
 * module boundary; every function is static inline). A reload stops the
 * old generation's services, then starts the new one's; a service that
 * closes its listening socket in stop() and binds again in start() refuses
 * connections in between. Instead:
 *
 *   config_new   helios_listen_claim(&reg, cfg, addr)   this config wants ADDR
 *   config_free  helios_listen_unclaim(&reg, cfg)       (closes an orphan socket)
 *   stop         helios_listen_park(&reg, cfg, addr, fd) with the socket the
 *                server stopped accepting on (libmicrohttpd: MHD_quiesce_daemon):
 *                kept when another config claims ADDR (the new generation's,
 *                built before the old one stops), closed otherwise
 *   start        fd = helios_listen_take(&reg, addr)    -1: bind as usual;
 *                else serve on FD (MHD_OPTION_LISTEN_SOCKET), close it on failure
 *
 * While the socket is parked the kernel queues connections in its backlog:
 * they are served, late by the time the switch takes, never refused. The
 * old server must still answer what it accepted before it stopped: the
 * requests it is answering, and the connections it accepted whose request
 * has not begun yet (counted with helios_listen_conn_*: libmicrohttpd's
 * MHD_OPTION_NOTIFY_CONNECTION and MHD_CONNECTION_INFO_SOCKET_CONTEXT);
 * helios_listen_drain waits for both, bounded.
 * REG is
 * one static helios_listen_keep per module (the .so stays loaded across
 * reloads), initialised with HELIOS_LISTEN_KEEP_INIT; every call locks it,
 * so any thread may call.
 */
#ifndef HELIOS_UTIL_LISTEN_KEEP_H
#define HELIOS_UTIL_LISTEN_KEEP_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HELIOS_LISTEN_KEEP_MAX 8 /* configs alive at once: old, new, one being checked */

typedef struct helios_listen_keep {
    pthread_mutex_t lock;
    struct {
        const void *owner; /* NULL: free slot */
        struct sockaddr_storage addr;
    } claim[HELIOS_LISTEN_KEEP_MAX];
    struct {
        int used;
        int fd;
        struct sockaddr_storage addr;
    } parked[HELIOS_LISTEN_KEEP_MAX];
} helios_listen_keep;

#define HELIOS_LISTEN_KEEP_INIT {.lock = PTHREAD_MUTEX_INITIALIZER}

/* 1 when A and B are the same family, address and port. */
static inline int helios_listen_same(const struct sockaddr_storage *a,
                                     const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
               x->sin6_scope_id == y->sin6_scope_id;
    }
    return 0;
}

/* OWNER (a config) will listen on ADDR. 0, or -1 when the table is full
 * (then OWNER's socket is simply not handed over). */
static inline int helios_listen_claim(helios_listen_keep *k, const void *owner,
                                      const struct sockaddr_storage *addr)
{
    int rc = -1;
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
        if (k->claim[i].owner == NULL) {
            k->claim[i].owner = owner;
            k->claim[i].addr = *addr;
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&k->lock);
    return rc;
}

/* Under the lock: 1 when a config other than NOT claims ADDR. */
static inline int helios_listen_claimed_(const helios_listen_keep *k, const void *not,
                                         const struct sockaddr_storage *addr)
{
    for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
        if (k->claim[i].owner != NULL && k->claim[i].owner != not &&
            helios_listen_same(&k->claim[i].addr, addr))
            return 1;
    return 0;
}

/* OWNER is going away; a parked socket no config claims any more (its
 * successor was freed without starting) is closed. */
static inline void helios_listen_unclaim(helios_listen_keep *k, const void *owner)
{
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
        if (k->claim[i].owner == owner)
            k->claim[i].owner = NULL;
    for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
        if (k->parked[i].used && !helios_listen_claimed_(k, NULL, &k->parked[i].addr)) {
            close(k->parked[i].fd);
            k->parked[i].used = 0;
        }
    pthread_mutex_unlock(&k->lock);
}

/* OWNER stopped accepting on FD, bound to ADDR: kept for the config that
 * claims ADDR next (returns 1), or closed (returns 0: nobody wants it, the
 * address changed or the module was removed, or the table is full). */
static inline int helios_listen_park(helios_listen_keep *k, const void *owner,
                                     const struct sockaddr_storage *addr, int fd)
{
    int kept = 0;
    pthread_mutex_lock(&k->lock);
    if (helios_listen_claimed_(k, owner, addr)) {
        for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
            if (k->parked[i].used && helios_listen_same(&k->parked[i].addr, addr)) {
                close(k->parked[i].fd); /* cannot happen: one socket per address */
                k->parked[i].used = 0;
            }
        for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX && !kept; i++)
            if (!k->parked[i].used) {
                k->parked[i].used = 1;
                k->parked[i].fd = fd;
                k->parked[i].addr = *addr;
                kept = 1;
            }
    }
    if (!kept)
        close(fd);
    pthread_mutex_unlock(&k->lock);
    return kept;
}

/* The socket parked for ADDR, now the caller's; -1 when none. */
static inline int helios_listen_take(helios_listen_keep *k, const struct sockaddr_storage *addr)
{
    int fd = -1;
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < HELIOS_LISTEN_KEEP_MAX; i++)
        if (k->parked[i].used && helios_listen_same(&k->parked[i].addr, addr)) {
            fd = k->parked[i].fd;
            k->parked[i].used = 0;
            break;
        }
    pthread_mutex_unlock(&k->lock);
    return fd;
}

/* A connection was accepted: *CTX (the connection's own pointer) marks it
 * fresh, and FRESH counts it until its first request begins. */
static inline void helios_listen_conn_open(atomic_long *fresh, void **ctx)
{
    atomic_int *mark = malloc(sizeof(*mark));
    if (mark != NULL) {
        atomic_init(mark, 1);
        atomic_fetch_add(fresh, 1);
    }
    *ctx = mark; /* NULL (no memory): not counted */
}

/* A request began on the connection of CTX. */
static inline void helios_listen_conn_used(atomic_long *fresh, void *ctx)
{
    if (ctx != NULL && atomic_exchange((atomic_int *)ctx, 0))
        atomic_fetch_sub(fresh, 1);
}

/* Waits, up to MAX_MS, until ACTIVE (requests being answered) and FRESH
 * are both 0; returns what is left of their sum. For stop(), after the
 * quiesce and before the server is stopped. */
static inline long helios_listen_drain(atomic_long *active, atomic_long *fresh, int max_ms)
{
    struct timespec step = {0, 5 * 1000 * 1000};
    for (int waited = 0; atomic_load(active) + atomic_load(fresh) > 0 && waited < max_ms;
         waited += 5)
        nanosleep(&step, NULL);
    return atomic_load(active) + atomic_load(fresh);
}

/* The connection of *CTX closed. */
static inline void helios_listen_conn_closed(atomic_long *fresh, void **ctx)
{
    helios_listen_conn_used(fresh, *ctx);
    free(*ctx);
    *ctx = NULL;
}

#endif
