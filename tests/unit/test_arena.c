/*
 * test_arena.c - the per-request arena (core/base/arena.c): 16-byte aligned
 * slices, an embedded first block that is used first and survives a reset,
 * growth into heap blocks (8 KiB, or the size of a larger request), strndup.
 *
 * Blocks beyond the first are only observable through addresses; whether a
 * reset frees them is checked by the sanitizer build (LeakSanitizer fails
 * the test at exit if one is lost).
 */
#include "base/arena.h"

#include "hx_test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_CAP 256

/* The first block, as a request embeds it: a header and FIRST_CAP bytes. */
static hx_arena_block *first_block(void)
{
    hx_arena_block *b = malloc(sizeof(*b) + FIRST_CAP);
    if (b == NULL) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    return b;
}

static int in_first(const hx_arena_block *first, const void *p, size_t size)
{
    const char *c = p;
    return c >= first->data && c + size <= first->data + FIRST_CAP;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

HX_TEST(slices_are_16_byte_aligned_and_rounded_up)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    static const size_t sizes[] = {1, 3, 15, 16, 17, 31, 33, 7};
    char *prev = NULL;
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char *p = hx_arena_alloc(&a, sizes[i]);
        HX_CHECK(p != NULL);
        HX_CHECK(aligned16(p));
        HX_CHECK(in_first(first, p, sizes[i]));
        if (prev)
            HX_CHECK(p > prev); /* no overlap: the previous slice ends before */
        total += (sizes[i] + 15) & ~(size_t)15;
        prev = p;
    }
    HX_CHECK_UINT_EQ(a.total, total);
    HX_CHECK_UINT_EQ(first->used, total);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(zero_bytes_is_still_a_distinct_slice)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    char *p = hx_arena_alloc(&a, 0);
    char *q = hx_arena_alloc(&a, 0);
    HX_CHECK(p != NULL && q != NULL);
    HX_CHECK(p != q);
    HX_CHECK_UINT_EQ(a.total, 32);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(the_embedded_block_is_used_first)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    char *p = hx_arena_alloc(&a, FIRST_CAP); /* exactly fills it */
    HX_CHECK(p == first->data);
    HX_CHECK(a.head == first);
    HX_CHECK_UINT_EQ(first->used, FIRST_CAP);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(growth_chains_a_heap_block_and_keeps_earlier_slices)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    char *one = hx_arena_alloc(&a, 200);
    memset(one, 'a', 200);
    char *second = hx_arena_alloc(&a, 100); /* 208 + 112 > 256: a new block */
    HX_CHECK(second != NULL);
    HX_CHECK(aligned16(second));
    HX_CHECK(!in_first(first, second, 1));
    HX_CHECK(a.head != first);
    HX_CHECK(a.head->next == first);
    HX_CHECK_UINT_EQ(a.head->cap, 8192); /* the minimum heap block */
    HX_CHECK(a.first == first);
    memset(second, 'b', 100);
    /* small slices keep coming from the new block until it is full */
    char *third = hx_arena_alloc(&a, 16);
    HX_CHECK(third == second + 112);
    int intact = 1;
    for (int i = 0; i < 200; i++)
        intact &= one[i] == 'a';
    HX_CHECK(intact);
    HX_CHECK_UINT_EQ(a.total, 208 + 112 + 16);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(many_blocks_keep_every_slice_intact)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    enum { N = 2000, SIZE = 40 }; /* ~100 KiB: a dozen heap blocks */
    static unsigned char *slices[N];
    for (int i = 0; i < N; i++) {
        slices[i] = hx_arena_alloc(&a, SIZE);
        if (slices[i] == NULL)
            break;
        memset(slices[i], i & 0xff, SIZE);
    }
    HX_CHECK(slices[N - 1] != NULL);
    int intact = slices[N - 1] != NULL;
    for (int i = 0; intact && i < N; i++)
        for (int j = 0; j < SIZE; j++)
            intact &= slices[i][j] == (i & 0xff);
    HX_CHECK(intact);
    size_t blocks = 0;
    for (hx_arena_block *b = a.head; b; b = b->next)
        blocks++;
    HX_CHECK(blocks > 10);
    HX_CHECK_UINT_EQ(a.total, (size_t)N * 48);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(a_large_request_gets_a_block_of_its_own_size)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    size_t big = 100000 + 3;
    char *p = hx_arena_alloc(&a, big);
    HX_CHECK(p != NULL);
    if (p != NULL) {
        HX_CHECK(aligned16(p));
        HX_CHECK_UINT_EQ(a.head->cap, (big + 15) & ~(size_t)15);
        memset(p, 0x5a, big); /* all of it is writable (checked under ASan) */
        HX_CHECK(p[big - 1] == 0x5a);
        /* the block is full: the next slice starts another one */
        char *q = hx_arena_alloc(&a, 16);
        HX_CHECK(q != NULL && (q < p || q >= p + big));
    }
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(sizes_that_would_wrap_are_refused)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    HX_CHECK(hx_arena_alloc(&a, SIZE_MAX) == NULL);
    HX_CHECK(hx_arena_alloc(&a, SIZE_MAX - 15) == NULL);
    HX_CHECK(hx_arena_alloc(&a, SIZE_MAX - 16) == NULL);
    HX_CHECK(hx_arena_alloc(&a, SIZE_MAX - sizeof(hx_arena_block)) == NULL);
    char *p = hx_arena_alloc(&a, 32); /* the arena still works */
    HX_CHECK(p != NULL);
    hx_arena_reset(&a);
    free(first);
}

HX_TEST(reset_keeps_the_first_block_and_starts_over)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    char *p0 = hx_arena_alloc(&a, 64);
    for (int i = 0; i < 10; i++)
        HX_CHECK(hx_arena_alloc(&a, 5000) != NULL); /* several heap blocks */
    hx_arena_reset(&a);
    HX_CHECK(a.head == first);
    HX_CHECK(a.first == first);
    HX_CHECK(first->next == NULL);
    HX_CHECK_UINT_EQ(first->used, 0);
    HX_CHECK_UINT_EQ(first->cap, FIRST_CAP);
    HX_CHECK_UINT_EQ(a.total, 0);
    /* the next request on the connection gets the same memory back */
    HX_CHECK(hx_arena_alloc(&a, 64) == p0);
    hx_arena_reset(&a);
    hx_arena_reset(&a); /* twice is harmless */
    HX_CHECK(a.head == first);
    free(first);
}

HX_TEST(an_empty_first_block_grows_at_once)
{
    hx_arena_block none; /* cap 0: every slice comes from the heap */
    hx_arena a;
    hx_arena_init(&a, &none, 0);
    char *p = hx_arena_alloc(&a, 1);
    HX_CHECK(p != NULL);
    HX_CHECK(a.head != &none && a.head->next == &none);
    hx_arena_reset(&a);
    HX_CHECK(a.head == &none);
}

HX_TEST(strndup_copies_n_bytes_and_terminates)
{
    hx_arena_block *first = first_block();
    hx_arena a;
    hx_arena_init(&a, first, FIRST_CAP);
    char *s = hx_arena_strndup(&a, "hello, world", 5);
    HX_CHECK_STR_EQ(s, "hello");
    HX_CHECK(aligned16(s));
    char *empty = hx_arena_strndup(&a, "ignored", 0);
    HX_CHECK_STR_EQ(empty, "");
    char *nul = hx_arena_strndup(&a, "a\0b", 3); /* n bytes, whatever they are */
    HX_CHECK(nul != NULL && memcmp(nul, "a\0b", 4) == 0);
    /* a string longer than the first block lands in a heap block, whole */
    char src[1000];
    memset(src, 'x', sizeof(src));
    char *longs = hx_arena_strndup(&a, src, sizeof(src));
    HX_CHECK(longs != NULL && !in_first(first, longs, 1));
    HX_CHECK(longs != NULL && strlen(longs) == sizeof(src));
    HX_CHECK_STR_EQ(s, "hello"); /* earlier strings untouched */
    hx_arena_reset(&a);
    free(first);
}

int main(void)
{
    HX_RUN(slices_are_16_byte_aligned_and_rounded_up);
    HX_RUN(zero_bytes_is_still_a_distinct_slice);
    HX_RUN(the_embedded_block_is_used_first);
    HX_RUN(growth_chains_a_heap_block_and_keeps_earlier_slices);
    HX_RUN(many_blocks_keep_every_slice_intact);
    HX_RUN(a_large_request_gets_a_block_of_its_own_size);
    HX_RUN(sizes_that_would_wrap_are_refused);
    HX_RUN(reset_keeps_the_first_block_and_starts_over);
    HX_RUN(an_empty_first_block_grows_at_once);
    HX_RUN(strndup_copies_n_bytes_and_terminates);
    return hx_test_summary();
}
