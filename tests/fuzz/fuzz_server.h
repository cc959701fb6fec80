/*
 * fuzz_server.h - heliosd's connection code run in the harness's own
 * thread: a generation built from a fixed configuration (real modules from
 * the build tree), one worker attached to this thread (hx_worker_attach),
 * and each input sent on a fresh connection that the real accept hook took
 * from a socketpair. No threads, no listening socket, no timers fire: a
 * connection runs until it is quiet, then it is killed and freed.
 */
#ifndef HX_FUZZ_SERVER_H
#define HX_FUZZ_SERVER_H

#include <stddef.h>
#include <stdint.h>

/* Once per process: 0, or -1 with a message on stderr. */
int fz_server_start(void);

/* What came back on one connection. */
typedef struct fz_reply {
    uint8_t *data; /* malloc'd (free with fz_reply_free) */
    size_t len;
    int closed; /* the server closed the connection */
} fz_reply;

/* Sends PREFIX then IN on a new connection (then shuts down the write side
 * when HALF_CLOSE), runs the worker's loop until nothing moves, and
 * returns what the server wrote. The connection is gone afterwards. */
void fz_exchange(const uint8_t *prefix, size_t plen, const uint8_t *in, size_t n, int half_close,
                 fz_reply *out);
void fz_reply_free(fz_reply *r);

#endif
