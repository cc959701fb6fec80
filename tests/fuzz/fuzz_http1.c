/*
 * fuzz_http1.c - HTTP/1.1 requests in, responses out: the head validator,
 * llhttp (strict mode), chunked and length framing, pipelining, the body
 * discard after an early answer, and the h2c first-line sniff, all in
 * core/http/http1.c driven through a real connection (fuzz_server.h).
 *
 * Input: the first byte picks whether the client half-closes after
 * sending; the rest is what it sends.
 * Checked: whatever came back is a sequence of well-formed HTTP/1.1
 * responses (status line, header lines, framing that adds up), possibly
 * after interim 100 Continue, and nothing follows a response that said
 * "Connection: close".
 */
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "fuzz_server.h"

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static const uint8_t *find(const uint8_t *p, const uint8_t *end, const char *s)
{
    size_t n = strlen(s);
    for (; p + n <= end; p++)
        if (memcmp(p, s, n) == 0)
            return p;
    return NULL;
}

/* Length of a chunked body at P (up to END), or -1 if malformed/cut. */
static long chunked_len(const uint8_t *p, const uint8_t *end)
{
    const uint8_t *start = p;
    for (;;) {
        unsigned long size = 0;
        int digits = 0;
        while (p < end && strchr("0123456789abcdefABCDEF", *p) && *p) {
            size = size * 16 + (unsigned long)(*p <= '9' ? *p - '0' : (*p | 32) - 'a' + 10);
            p++;
            if (++digits > 8)
                return -1;
        }
        if (digits == 0 || end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return -1;
        p += 2;
        if (size == 0)
            break;
        if ((unsigned long)(end - p) < size + 2 || p[size] != '\r' || p[size + 1] != '\n')
            return -1;
        p += size + 2;
    }
    /* no trailers from a local answer: the last CRLF */
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return -1;
    return (long)(p + 2 - start);
}

static void check_responses(const uint8_t *p, size_t len)
{
    if (len == 0)
        return; /* closed without an answer (p may be NULL) */
    const uint8_t *end = p + len;
    int closing = 0;
    while (p < end) {
        FZ_CHECK(!closing, "bytes after a 'Connection: close' response");
        FZ_CHECK(end - p >= 12 && memcmp(p, "HTTP/1.1 ", 9) == 0 && p[9] >= '1' && p[9] <= '5' &&
                     p[10] >= '0' && p[10] <= '9' && p[11] >= '0' && p[11] <= '9',
                 "not a status line: %.40s", (const char *)p);
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        const uint8_t *head_end = find(p, end, "\r\n\r\n");
        FZ_CHECK(head_end != NULL, "response head cut off");
        const uint8_t *line = find(p, head_end + 2, "\r\n") + 2;
        long clen = -1;
        int chunked = 0;
        while (line < head_end + 2) {
            const uint8_t *eol = find(line, head_end + 2, "\r\n");
            const uint8_t *q = line;
            while (q < eol && is_tchar(*q))
                q++;
            FZ_CHECK(q > line && q < eol && *q == ':', "bad header line: %.*s", (int)(eol - line),
                     (const char *)line);
            for (const uint8_t *v = q + 1; v < eol; v++)
                FZ_CHECK(*v == '\t' || (*v >= 0x20 && *v != 0x7f) || *v >= 0x80,
                         "control byte in a header value");
            size_t nlen = (size_t)(q - line);
            const char *val = (const char *)q + 1;
            while (*val == ' ')
                val++;
            size_t vlen = (size_t)((const char *)eol - val);
            if (nlen == 14 && strncasecmp((const char *)line, "content-length", 14) == 0) {
                FZ_CHECK(clen < 0, "two Content-Length headers");
                clen = strtol(val, NULL, 10);
            } else if (nlen == 17 &&
                       strncasecmp((const char *)line, "transfer-encoding", 17) == 0) {
                chunked = vlen == 7 && strncasecmp(val, "chunked", 7) == 0;
            } else if (nlen == 10 && strncasecmp((const char *)line, "connection", 10) == 0) {
                closing = vlen == 5 && strncasecmp(val, "close", 5) == 0;
            }
            line = eol + 2;
        }
        FZ_CHECK(!(chunked && clen >= 0), "both Content-Length and chunked");
        p = head_end + 4;
        if (status < 200 || status == 204 || status == 304) {
            FZ_CHECK(status != 100 || !closing, "100 Continue with Connection: close");
            continue;
        }
        if (chunked) {
            long k = chunked_len(p, end);
            FZ_CHECK(k >= 0, "malformed chunked response body");
            p += k;
        } else if (clen >= 0) {
            /* the answer to HEAD has the length of a body it does not carry */
            int head_reply = (end - p >= 9 && memcmp(p, "HTTP/1.1 ", 9) == 0) || p == end;
            if (!head_reply || clen == 0) {
                FZ_CHECK(end - p >= clen, "response body shorter than its Content-Length");
                p += clen;
            }
        } else {
            FZ_CHECK(closing, "a response without framing that does not close");
            p = end;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FZ_CHECK(fz_server_start() == 0, "the fuzz server did not start");
    if (size == 0)
        return 0;
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /* the listener takes h2c: after the preface it is fuzz_http2's */
    int h2 = size - 1 >= sizeof(preface) - 1 && memcmp(data + 1, preface, sizeof(preface) - 1) == 0;
    fz_reply r;
    fz_exchange(NULL, 0, data + 1, size - 1, data[0] & 1, &r);
    if (!h2)
        check_responses(r.data, r.len);
    fz_reply_free(&r);
    return 0;
}
