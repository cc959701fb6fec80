/*
 * fuzz_http2.c - the HTTP/2 server session (core/http/http2.c on nghttp2):
 * a connection that opened with the h2c prior-knowledge preface and an
 * empty SETTINGS frame, then the fuzz input as frames (fuzz_server.h).
 *
 * Input: the first byte picks whether the client half-closes after
 * sending; the rest follows the preface.
 * Checked: what came back is whole HTTP/2 frames: the server's SETTINGS
 * first; known types with their fixed sizes; stream ids odd (answers to
 * client streams) where a stream is named and 0 where none may be; header
 * blocks in one HEADERS + CONTINUATION chain that decode with HPACK and
 * start with a valid :status; nothing on a stream after its END_STREAM or
 * RST_STREAM; nothing after GOAWAY but frames of streams it kept.
 */
#include <nghttp2/nghttp2.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_server.h"

#define MAX_TRACKED 4096 /* streams remembered for the after-end checks */

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                 "\x00\x00\x00\x04\x00\x00\x00\x00\x00";

typedef struct frames_state {
    nghttp2_hd_inflater *inf;
    uint8_t *block; /* header block being collected */
    size_t blen, bcap;
    uint32_t block_stream; /* 0: none */
    int block_end_stream;
    uint8_t ended[MAX_TRACKED / 2]; /* odd stream ids: ended or reset */
    int goaway;
    uint32_t goaway_last;
} frames_state;

/* The ended flag of odd stream ID, or NULL past the tracked ones. */
static uint8_t *ended_slot(frames_state *s, uint32_t id)
{
    return id / 2 < MAX_TRACKED / 2 ? &s->ended[id / 2] : NULL;
}

static void decode_block(frames_state *s)
{
    const uint8_t *in = s->block;
    size_t left = s->blen;
    int first = 1;
    for (;;) {
        nghttp2_nv nv;
        int flags = 0;
        ssize_t k = nghttp2_hd_inflate_hd2(s->inf, &nv, &flags, in, left, 1);
        FZ_CHECK(k >= 0, "a response header block does not decode: %s", nghttp2_strerror((int)k));
        in += k;
        left -= (size_t)k;
        if (flags & NGHTTP2_HD_INFLATE_EMIT) {
            if (first) {
                /* trailers (gRPC-like) carry no :status; a local answer has none */
                FZ_CHECK(nv.namelen == 7 && memcmp(nv.name, ":status", 7) == 0 &&
                             nv.valuelen == 3 && nv.value[0] >= '1' && nv.value[0] <= '5',
                         "a response header block does not start with :status");
                first = 0;
            } else {
                FZ_CHECK(nv.namelen > 0 && nv.name[0] != ':', "a pseudo-header after :status");
                for (size_t i = 0; i < nv.namelen; i++)
                    FZ_CHECK(!(nv.name[i] >= 'A' && nv.name[i] <= 'Z'), "an upper-case field name");
            }
        }
        if (flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(s->inf);
            break;
        }
        if (k == 0 && left == 0)
            break;
    }
    FZ_CHECK(!first, "an empty response header block");
    s->blen = 0;
}

static void block_append(frames_state *s, const uint8_t *p, size_t n)
{
    if (s->blen + n > s->bcap) {
        size_t c = s->bcap ? s->bcap * 2 : 4096;
        while (c < s->blen + n)
            c *= 2;
        uint8_t *nb = realloc(s->block, c);
        if (nb == NULL)
            abort();
        s->block = nb;
        s->bcap = c;
    }
    memcpy(s->block + s->blen, p, n);
    s->blen += n;
}

static void check_frames(const uint8_t *p, size_t len)
{
    if (len == 0)
        return; /* p may be NULL */
    frames_state s = {0};
    FZ_CHECK(nghttp2_hd_inflate_new(&s.inf) == 0, "out of memory");
    const uint8_t *end = p + len;
    int n = 0;
    while (p < end) {
        FZ_CHECK(end - p >= 9, "a frame header cut off");
        uint32_t flen = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        uint8_t type = p[3], flags = p[4];
        uint32_t sid = ((uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8]);
        FZ_CHECK((sid & 0x80000000u) == 0, "the reserved bit is set");
        FZ_CHECK(flen <= 16384, "a frame over the default max frame size (%u)", flen);
        FZ_CHECK((size_t)(end - p) >= 9 + flen, "a frame cut off");
        const uint8_t *pl = p + 9;
        p += 9 + flen;
        FZ_CHECK(n++ > 0 || (type == NGHTTP2_SETTINGS && !(flags & NGHTTP2_FLAG_ACK)),
                 "the first frame is not the server's SETTINGS");
        FZ_CHECK(s.block_stream == 0 || type == NGHTTP2_CONTINUATION,
                 "a frame inside a header block");
        uint8_t *done = sid && (sid & 1) ? ended_slot(&s, sid) : NULL;
        switch (type) {
        case NGHTTP2_DATA:
            FZ_CHECK(sid != 0 && (sid & 1), "DATA on stream %u", sid);
            FZ_CHECK(!(flags & NGHTTP2_FLAG_PADDED), "padded DATA from the server");
            FZ_CHECK(done == NULL || !*done, "DATA after the stream ended");
            if (done && (flags & NGHTTP2_FLAG_END_STREAM))
                *done = 1;
            break;
        case NGHTTP2_HEADERS:
            FZ_CHECK(sid != 0 && (sid & 1), "HEADERS on stream %u", sid);
            FZ_CHECK(!(flags & (NGHTTP2_FLAG_PADDED | NGHTTP2_FLAG_PRIORITY)),
                     "padded or prioritised HEADERS from the server");
            FZ_CHECK(done == NULL || !*done, "HEADERS after the stream ended");
            block_append(&s, pl, flen);
            s.block_end_stream = (flags & NGHTTP2_FLAG_END_STREAM) != 0;
            if (flags & NGHTTP2_FLAG_END_HEADERS) {
                decode_block(&s);
                if (done && s.block_end_stream)
                    *done = 1;
            } else {
                s.block_stream = sid;
            }
            break;
        case NGHTTP2_CONTINUATION:
            FZ_CHECK(s.block_stream != 0 && sid == s.block_stream, "a stray CONTINUATION");
            block_append(&s, pl, flen);
            if (flags & NGHTTP2_FLAG_END_HEADERS) {
                decode_block(&s);
                if (done && s.block_end_stream)
                    *done = 1;
                s.block_stream = 0;
            }
            break;
        case NGHTTP2_PRIORITY: FZ_CHECK(0, "PRIORITY from the server"); break;
        case NGHTTP2_RST_STREAM:
            FZ_CHECK(sid != 0 && flen == 4, "RST_STREAM of %u bytes on stream %u", flen, sid);
            if (done)
                *done = 1;
            break;
        case NGHTTP2_SETTINGS:
            FZ_CHECK(sid == 0 && flen % 6 == 0, "SETTINGS of %u bytes on stream %u", flen, sid);
            FZ_CHECK(!(flags & NGHTTP2_FLAG_ACK) || flen == 0, "a SETTINGS ACK with a payload");
            break;
        case NGHTTP2_PUSH_PROMISE: FZ_CHECK(0, "PUSH_PROMISE from the server"); break;
        case NGHTTP2_PING:
            FZ_CHECK(sid == 0 && flen == 8, "PING of %u bytes on stream %u", flen, sid);
            break;
        case NGHTTP2_GOAWAY:
            FZ_CHECK(sid == 0 && flen >= 8, "GOAWAY of %u bytes on stream %u", flen, sid);
            {
                uint32_t last =
                    ((uint32_t)pl[0] << 24 | (uint32_t)pl[1] << 16 | (uint32_t)pl[2] << 8 | pl[3]) &
                    0x7fffffffu;
                FZ_CHECK(!s.goaway || last <= s.goaway_last, "a later GOAWAY raised its last id");
                s.goaway = 1;
                s.goaway_last = last;
            }
            break;
        case NGHTTP2_WINDOW_UPDATE: FZ_CHECK(flen == 4, "WINDOW_UPDATE of %u bytes", flen); break;
        default: FZ_CHECK(0, "unknown frame type %u from the server", type);
        }
        if (s.goaway && sid != 0 && type != NGHTTP2_WINDOW_UPDATE)
            FZ_CHECK(sid <= s.goaway_last, "a frame on stream %u after GOAWAY(last %u)", sid,
                     s.goaway_last);
    }
    FZ_CHECK(s.block_stream == 0, "a header block left open at the end");
    nghttp2_hd_inflate_del(s.inf);
    free(s.block);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FZ_CHECK(fz_server_start() == 0, "the fuzz server did not start");
    if (size == 0)
        return 0;
    fz_reply r;
    fz_exchange(preface, sizeof(preface) - 1, data + 1, size - 1, data[0] & 1, &r);
    check_frames(r.data, r.len);
    fz_reply_free(&r);
    return 0;
}
