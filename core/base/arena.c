#include "base/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void hx_arena_init(hx_arena *a, hx_arena_block *first, size_t first_cap)
{
    first->next = NULL;
    first->used = 0;
    first->cap = first_cap;
    a->head = a->first = first;
    a->total = 0;
}

void *hx_arena_alloc_slow(hx_arena *a, size_t size)
{
    if (size > SIZE_MAX - sizeof(hx_arena_block) - 16)
        return NULL; /* rounding or the block header would wrap */
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    hx_arena_block *b = a->head;
    if (b->cap - b->used < size) {
        size_t cap = size > 8192 ? size : 8192;
        hx_arena_block *nb = malloc(sizeof(*nb) + cap);
        if (nb == NULL)
            return NULL;
        nb->cap = cap;
        nb->used = 0;
        nb->next = a->head;
        a->head = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += size;
    a->total += size;
    return p;
}

char *hx_arena_strndup(hx_arena *a, const char *s, size_t n)
{
    char *p = hx_arena_alloc(a, n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

void hx_arena_reset(hx_arena *a)
{
    hx_arena_block *b = a->head;
    while (b && b != a->first) {
        hx_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = a->first;
    a->first->used = 0;
    a->first->next = NULL;
    a->total = 0;
}
