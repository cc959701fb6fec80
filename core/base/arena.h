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
void *hx_arena_alloc(hx_arena *a, size_t size);
char *hx_arena_strndup(hx_arena *a, const char *s, size_t n);
/* Frees extra blocks and empties the first one. */
void hx_arena_reset(hx_arena *a);

#endif
