/*
 * arena.h - per-request memory, freed in one go.
 *
 * The first block lives inside the request allocation and is reused by the
 * next request on the same connection; bigger needs chain more blocks.
 */
#ifndef HX_ARENA_H
#define HX_ARENA_H

#include <stddef.h>

typedef struct hx_arena_block {
    struct hx_arena_block *next;
    size_t used, cap;
    _Alignas(16) char data[];
} hx_arena_block;

typedef struct hx_arena {
    hx_arena_block *head;  /* current block */
    hx_arena_block *first; /* embedded block, never freed here */
    size_t total;          /* bytes handed out, for caps */
} hx_arena;

void hx_arena_init(hx_arena *a, hx_arena_block *first, size_t first_cap);
/* SIZE bytes, 16-aligned, or NULL out of memory. */
void *hx_arena_alloc_slow(hx_arena *a, size_t size);
/* The same, inlined while the current block has room (the usual case: a
 * request's header copies are ten of these or more). */
static inline void *hx_arena_alloc(hx_arena *a, size_t size)
{
    hx_arena_block *b = a->head;
    if (size - 1 < 4096) { /* 1..4096: no rounding overflow, never 0 */
        size_t s = (size + 15) & ~(size_t)15;
        if (b->cap - b->used >= s) {
            void *p = b->data + b->used;
            b->used += s;
            a->total += s;
            return p;
        }
    }
    return hx_arena_alloc_slow(a, size);
}
char *hx_arena_strndup(hx_arena *a, const char *s, size_t n);
/* Frees extra blocks and empties the first one. */
void hx_arena_reset(hx_arena *a);

#endif
