/*
 * subreq.c - a test-only handler for the core's handler-body and
 * subrequest API (ABI 1.1). Query keys:
 *
 *   to=A,B,-     upstreams to call ("-" = the route's own upstream), at once
 *   path=/echo   target of every subrequest (default /)
 *   method=POST  method of every subrequest (default GET)
 *   body=1       read the client's body first and send it with each one
 *   cancel=head  cancel each subrequest in on_head
 *   hdr=1        add "X-Sub: yes" to each subrequest
 *
 * Answers 200 text/plain once all are done, one line per subrequest in
 * call order: "NAME STATUS BACKEND LEN SUM" (LEN body bytes, SUM a byte
 * sum), "NAME error STATUS REASON", "NAME cancelled", or "NAME refused
 * MESSAGE" when subreq_new refused. Then "body LEN" for the client body
 * it read (with body=1). The state lives in malloc'd memory freed in
 * on_done, which also records that it ran (GET /_subreq/done counts).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <helios.h>

static const helios_host_api *api;
static _Atomic unsigned long done_calls;

#define MAXSUB 8

/* Formats into a temporary first: the line and the name live in the same
 * struct, which GCC's -Wrestrict cannot tell apart. */
#define SET_LINE(c, ...)                                                          \
    do {                                                                          \
        char tmp_[sizeof((c)->line)];                                             \
        snprintf(tmp_, sizeof(tmp_), __VA_ARGS__);                                \
        memcpy((c)->line, tmp_, sizeof(tmp_));                                    \
    } while (0)

typedef struct call {
    struct st *st;
    char name[64];
    helios_subreq *s;
    int status;
    char backend[64];
    size_t len;
    unsigned long sum;
    char line[300];
    int finished;
} call;

typedef struct st {
    helios_request *r;
    call calls[MAXSUB];
    int ncalls, pending;
    char path[256], method[16];
    int cancel_head, hdr;
    char *body;
    size_t body_len, body_cap;
    int use_body;
    int answered;
} st;

static void query_get(helios_buf q, const char *key, char *out, size_t size)
{
    out[0] = '\0';
    size_t kl = strlen(key);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
            size_t n = (size_t)(e - p - kl - 1);
            if (n >= size)
                n = size - 1;
            memcpy(out, p + kl + 1, n);
            out[n] = '\0';
            return;
        }
        p = amp ? amp + 1 : NULL;
    }
}

static void finish_if_done(st *s)
{
    if (s->pending > 0 || s->answered)
        return;
    s->answered = 1;
    char out[MAXSUB * 320 + 64];
    size_t o = 0;
    for (int i = 0; i < s->ncalls; i++)
        o += (size_t)snprintf(out + o, sizeof(out) - o, "%s\n", s->calls[i].line);
    if (s->use_body)
        o += (size_t)snprintf(out + o, sizeof(out) - o, "body %zu\n", s->body_len);
    api->respond(s->r, 200, "text/plain", out, o);
    api->resume(s->r, HELIOS_RESPONDED);
}

static void on_head(void *arg, helios_subreq *sr)
{
    call *c = arg;
    c->status = api->subreq_status(sr);
    size_t n = api->subreq_header_count(sr);
    for (size_t i = 0; i < n; i++) {
        helios_buf k, v;
        api->subreq_header_at(sr, i, &k, &v);
        if (k.len == 9 && strncasecmp(k.ptr, "x-backend", 9) == 0)
            snprintf(c->backend, sizeof(c->backend), "%.*s", (int)v.len, v.ptr);
    }
    if (c->st->cancel_head) {
        api->subreq_cancel(sr);
        SET_LINE(c, "%s cancelled", c->name);
        c->finished = 1;
        c->st->pending--;
        finish_if_done(c->st);
    }
}

static void on_body(void *arg, helios_subreq *sr, helios_buf chunk, int last)
{
    (void)sr;
    call *c = arg;
    c->len += chunk.len;
    for (size_t i = 0; i < chunk.len; i++)
        c->sum += (unsigned char)chunk.ptr[i];
    if (last) {
        SET_LINE(c, "%s %d %s %zu %lu", c->name, c->status,
                 c->backend[0] ? c->backend : "-", c->len, c->sum);
        c->finished = 1;
        c->st->pending--;
        finish_if_done(c->st);
    }
}

static void on_error(void *arg, helios_subreq *sr, int status, const char *reason)
{
    (void)sr;
    call *c = arg;
    SET_LINE(c, "%s error %d %s", c->name, status, reason);
    c->finished = 1;
    c->st->pending--;
    finish_if_done(c->st);
}

static const helios_subreq_cb cbs = {
    .size = sizeof(helios_subreq_cb), .on_head = on_head, .on_body = on_body, .on_error = on_error};

static void start_all(st *s, helios_worker *w)
{
    for (int i = 0; i < s->ncalls; i++) {
        call *c = &s->calls[i];
        char err[200];
        const char *up = strcmp(c->name, "-") == 0 ? NULL : c->name;
        c->s = api->subreq_new(w, s->r, up, s->method, s->path, err, sizeof(err));
        if (c->s == NULL) {
            SET_LINE(c, "%s refused %s", c->name, err);
            continue;
        }
        if (s->hdr)
            api->subreq_header_add(c->s, "X-Sub", "yes");
        s->pending++;
        if (api->subreq_send(c->s, s->body, s->body_len, &cbs, c) != 0) {
            SET_LINE(c, "%s refused send", c->name);
            s->pending--;
        }
    }
    finish_if_done(s);
}

typedef struct body_arg {
    st *s;
    helios_worker *w;
} body_arg;

static void on_data(void *arg, helios_buf chunk, int last, int error)
{
    st *s = arg;
    if (error)
        return; /* the request is ending: on_done frees */
    if (s->body_len + chunk.len > s->body_cap) {
        size_t cap = (s->body_len + chunk.len) * 2 + 1024;
        char *nb = realloc(s->body, cap);
        if (nb == NULL)
            return;
        s->body = nb;
        s->body_cap = cap;
    }
    if (chunk.len) {
        memcpy(s->body + s->body_len, chunk.ptr, chunk.len);
        s->body_len += chunk.len;
    }
    if (last)
        start_all(s, api->req_worker(s->r));
}

static int sr_handle(helios_ctx *ctx)
{
    helios_request *r = ctx->req;
    helios_buf path = api->req_path(r);
    if (path.len == 13 && memcmp(path.ptr, "/_subreq/done", 13) == 0) {
        char b[32];
        int n = snprintf(b, sizeof(b), "%lu\n", (unsigned long)atomic_load(&done_calls));
        api->respond(r, 200, "text/plain", b, (size_t)n);
        return HELIOS_RESPONDED;
    }
    st *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return HELIOS_ERROR;
    *ctx->rstate = s;
    s->r = r;
    helios_buf q = api->req_query(r);
    char to[256], v[16];
    query_get(q, "to", to, sizeof(to));
    query_get(q, "path", s->path, sizeof(s->path));
    if (!s->path[0])
        strcpy(s->path, "/");
    query_get(q, "method", s->method, sizeof(s->method));
    if (!s->method[0])
        strcpy(s->method, "GET");
    query_get(q, "cancel", v, sizeof(v));
    s->cancel_head = strcmp(v, "head") == 0;
    query_get(q, "hdr", v, sizeof(v));
    s->hdr = v[0] == '1';
    query_get(q, "body", v, sizeof(v));
    s->use_body = v[0] == '1';
    char *save = NULL;
    for (char *tok = strtok_r(to, ",", &save); tok && s->ncalls < MAXSUB;
         tok = strtok_r(NULL, ",", &save)) {
        call *c = &s->calls[s->ncalls++];
        c->st = s;
        snprintf(c->name, sizeof(c->name), "%s", tok);
    }
    if (s->use_body) {
        if (api->req_body_read(r, on_data, s) != 0)
            return HELIOS_ERROR;
        return HELIOS_PAUSE;
    }
    start_all(s, ctx->worker);
    if (s->answered) {
        /* everything was refused synchronously: answered already, but we
         * must not resume from inside handle */
        return HELIOS_RESPONDED;
    }
    return HELIOS_PAUSE;
}

static void sr_done(helios_ctx *ctx)
{
    atomic_fetch_add(&done_calls, 1);
    st *s = *ctx->rstate;
    if (s == NULL)
        return;
    /* subrequests still open are cancelled by the core after this */
    free(s->body);
    free(s);
    *ctx->rstate = NULL;
}

static const helios_handler_hooks hooks = {
    .size = sizeof(helios_handler_hooks), .handle = sr_handle, .on_done = sr_done};

static const helios_module desc = {
    HELIOS_MODULE_HEADER("subreq", "test"),
    .handler = &hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *a)
{
    api = a;
    return &desc;
}
