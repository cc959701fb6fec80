/*
 * blockcache.h - a capped LIFO of equal-size malloc'd blocks.
 *
 * Idle connections give their buffers back and the next busy connection
 * takes them (nginx frees a keep-alive connection's request buffers the same
 * way), so memory follows the number of busy connections, not open ones,
 * while the request path still pays no malloc/free. One cache per worker
 * thread: no locking. The cap bounds what an idle server keeps.
 */
#ifndef HX_BLOCKCACHE_H
#define HX_BLOCKCACHE_H

#include <stdlib.h>

#define HX_BLOCKCACHE_MAX 64 /* blocks kept per cache */

typedef struct hx_blockcache {
    void *head; /* each free block starts with the pointer to the next */
    unsigned n;
} hx_blockcache;

/* A block of SIZE bytes (SIZE is the same for every call on BC), or NULL. */
static inline void *hx_blockcache_get(hx_blockcache *bc, size_t size)
{
    void *p = bc->head;
    if (p == NULL)
        return malloc(size);
    bc->head = *(void **)p;
    bc->n--;
    return p;
}

static inline void hx_blockcache_put(hx_blockcache *bc, void *p)
{
    if (bc->n >= HX_BLOCKCACHE_MAX) {
        free(p);
        return;
    }
    *(void **)p = bc->head;
    bc->head = p;
    bc->n++;
}

static inline void hx_blockcache_drain(hx_blockcache *bc)
{
    while (bc->head) {
        void *next = *(void **)bc->head;
        free(bc->head);
        bc->head = next;
    }
    bc->n = 0;
}

#endif
