/*
 * buf.h - a growable byte queue: append at the end, consume from the front.
 * Every user states its own cap; the buffer itself only grows on request.
 */
#ifndef HX_BUF_H
#define HX_BUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct hx_buf {
    char *data;
    size_t off; /* first unconsumed byte */
    size_t len; /* end of data */
    size_t cap;
} hx_buf;

static inline size_t hx_buf_size(const hx_buf *b) { return b->len - b->off; }
/* An empty buffer may have no storage yet: NULL then (NULL + 0 is undefined). */
static inline char *hx_buf_head(const hx_buf *b) { return b->data ? b->data + b->off : NULL; }

/* Makes room for N more bytes at the end; 0 or -1 (out of memory). */
static inline int hx_buf_reserve(hx_buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    if (b->off > 0) { /* compact before growing */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n)
            return 0;
    }
    size_t want = b->cap ? b->cap : 4096;
    while (want - b->len < n)
        want *= 2;
    char *p = realloc(b->data, want);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = want;
    return 0;
}

/* memcpy for the short pieces of heads (names, values, addresses): up to
 * 16 bytes with two overlapping loads and stores and no call, longer ones
 * by memcpy. */
static inline void hx_copy_ends(unsigned char *d, const unsigned char *s, size_t n, size_t k)
{
    uint64_t a, b; /* K (4 or 8) bytes from each end; they overlap when N < 2K */
    memcpy(&a, s, k);
    memcpy(&b, s + n - k, k);
    memcpy(d, &a, k);
    memcpy(d + n - k, &b, k);
}

static inline void hx_copy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n > 16) {
        memcpy(d, s, n);
    } else if (n >= 8) {
        hx_copy_ends(d, s, n, 8);
    } else if (n >= 4) {
        hx_copy_ends(d, s, n, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

static inline int hx_buf_append(hx_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (hx_buf_reserve(b, n) != 0)
        return -1;
    hx_copy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static inline void hx_buf_consume(hx_buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

/* Decimal / hex digits of V into OUT (no NUL); returns the length. The
 * response path formats numbers per request, without printf. */
static inline size_t hx_u64_dec(char *out, unsigned long long v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static inline size_t hx_u64_hex(char *out, unsigned long long v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static inline void hx_buf_reset(hx_buf *b) { b->off = b->len = 0; }

/* Gives memory back when a big transfer left a big buffer behind. */
static inline void hx_buf_shrink(hx_buf *b, size_t keep)
{
    if (b->cap > keep && hx_buf_size(b) == 0) {
        free(b->data);
        b->data = NULL;
        b->cap = b->off = b->len = 0;
    }
}

static inline void hx_buf_free(hx_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

#endif
