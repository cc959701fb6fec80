/*
 * fuzz_server.c - see fuzz_server.h.
 */
#include "fuzz_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "config/config.h"
#include "event/worker.h"
#include "http/conn.h"
#include "runtime/runtime.h"

/* Routes that answer locally (no upstream: nothing here may wait on the
 * network) through real modules: static_response, the headers filter with
 * variables, size_limit. Small limits so the fuzzer reaches them. */
static const char fz_config[] =
    "workers: 1\n"
    "listeners:\n"
    "  - address: 127.0.0.1:9\n" /* never bound: connections come from socketpairs */
    "limits:\n"
    "  max_request_line: 1k\n"
    "  max_header_size: 4k\n"
    "  max_headers: 32\n"
    "  max_request_body: 64k\n"
    "http2:\n"
    "  max_concurrent_streams: 16\n"
    "  max_control_frames: 200\n"
    "  max_resets: 20\n"
    "  max_continuations: 8\n"
    "logging:\n"
    "  level: error\n"
    "routes:\n"
    "  - name: static\n"
    "    match: {prefix: /static}\n"
    "    handler: {module: static_response, config: {status: 200, body: \"hello static\\n\"}}\n"
    "  - name: vars\n"
    "    match: {host: vars.test}\n"
    "    filters:\n"
    "      - module: headers\n"
    "        config:\n"
    "          request: {set: {X-Client: \"$client_ip via $host\"}}\n"
    "          response: {add: {X-Route: \"${route}/$scheme\", X-Id: \"$request_id\"}}\n"
    "    handler: {module: static_response, config: {status: 201, body: \"vars\\n\"}}\n"
    "  - name: small\n"
    "    match: {prefix: /small, methods: [POST, PUT]}\n"
    "    filters:\n"
    "      - {module: size_limit, config: {max_request_body: 100}}\n"
    "    handler: {module: static_response, config: {status: 200, body: \"\"}}\n"
    "  - name: root\n"
    "    match: {prefix: /}\n"
    "    handler:\n"
    "      module: static_response\n"
    "      config: {status: 404, body: \"not here\\n\", headers: {X-A: \"1\"}}\n";

static hx_worker fz_worker;
static hx_lsock fz_ls;
static int fz_started;

int fz_server_start(void)
{
    if (fz_started)
        return 0;
    hx_runtime_wire();
    hx_log_open(HELIOS_LOG_ERROR, "/dev/null");
    char dir[] = "/tmp/hx-fuzz-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return -1;
    }
    char path[64];
    snprintf(path, sizeof(path), "%s/fuzz.yaml", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL || fwrite(fz_config, 1, sizeof(fz_config) - 1, f) != sizeof(fz_config) - 1) {
        perror(path);
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    hx_conf_tree *tree = NULL;
    hx_gen *g =
        hx_gen_build(path, HELIOS_BUILD_MODULE_DIR, HELIOS_BUILD_MODULE_DIR, &hx_srv.modreg, &tree);
    unlink(path);
    rmdir(dir);
    if (g == NULL) {
        for (size_t i = 0; tree && i < hx_conf_error_count(tree); i++)
            fprintf(stderr, "fuzz config: %s\n", hx_conf_error_at(tree, i));
        hx_conf_tree_free(tree);
        return -1;
    }
    hx_srv.gen = g;
    fz_worker.loop = ev_loop_new(EVFLAG_AUTO);
    hx_srv.workers = &fz_worker;
    hx_srv.nworkers = 1;
    if (fz_worker.loop == NULL || hx_worker_attach(&fz_worker, g) != 0) {
        fprintf(stderr, "fuzz: cannot start the worker\n");
        return -1;
    }
    fz_ls.fd = -1;
    fz_ls.key = "fuzz";
    fz_ls.conf = g->listeners[0];
    fz_ls.w = &fz_worker;
    fz_started = 1;
    return 0;
}

static void reply_append(fz_reply *r, size_t *cap, const uint8_t *p, size_t n)
{
    if (r->len + n > *cap) {
        size_t c = *cap ? *cap : 16384;
        while (c < r->len + n)
            c *= 2;
        uint8_t *nd = realloc(r->data, c);
        if (nd == NULL)
            abort(); /* the harness's own memory: not a finding in heliosd */
        r->data = nd;
        *cap = c;
    }
    memcpy(r->data + r->len, p, n);
    r->len += n;
}

void fz_exchange(const uint8_t *prefix, size_t plen, const uint8_t *in, size_t n, int half_close,
                 fz_reply *out)
{
    memset(out, 0, sizeof(*out));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    hx_conn_accept(&fz_ls, sv[0], (struct sockaddr *)&peer, sizeof(peer));

    size_t cap = 0, sent = 0, total = plen + n;
    int shut = 0, idle = 0;
    uint8_t buf[65536];
    /* quiet: three turns of the loop with nothing sent, read or written */
    for (int turn = 0; turn < 100000 && idle < 3; turn++) {
        int moved = 0;
        if (sent < total) {
            const uint8_t *p = sent < plen ? prefix + sent : in + (sent - plen);
            size_t left = sent < plen ? plen - sent : total - sent;
            ssize_t k = send(sv[1], p, left, MSG_NOSIGNAL);
            if (k > 0) {
                sent += (size_t)k;
                moved = 1;
            } else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                sent = total; /* the server closed its side */
            }
        } else if (half_close && !shut) {
            shutdown(sv[1], SHUT_WR);
            shut = moved = 1;
        }
        ev_run(fz_worker.loop, EVRUN_NOWAIT);
        for (;;) {
            ssize_t k = recv(sv[1], buf, sizeof(buf), 0);
            if (k > 0) {
                reply_append(out, &cap, buf, (size_t)k);
                moved = 1;
                continue;
            }
            if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                out->closed = 1;
            break;
        }
        if (out->closed)
            break;
        idle = moved ? 0 : idle + 1;
    }
    close(sv[1]);
    /* whatever is still open (waiting for more bytes, or for a timer that
     * never fires here) ends the way a stopping worker ends it */
    ev_run(fz_worker.loop, EVRUN_NOWAIT);
    hx_conns_kill(&fz_worker);
    if (getenv("HX_FUZZ_VERBOSE")) /* what came back, for writing seeds */
        fprintf(stderr, "--- %zu bytes back%s:\n%.*s\n", out->len, out->closed ? ", closed" : "",
                (int)out->len, (const char *)out->data);
}

void fz_reply_free(fz_reply *r)
{
    free(r->data);
    r->data = NULL;
    r->len = 0;
}
