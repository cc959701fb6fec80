/*
 * admin_api.h - shared between the admin_api module's files.
 *
 *   admin_api.c     config_new/config_free, start/stop, the descriptor
 *   admin_auth.c    IP allow/deny lists and JWT bearer tokens
 *   admin_http.c    the libmicrohttpd server: request intake, body cap,
 *                   dispatch, JSON error replies, audit lines
 *   admin_routes.c  the endpoints, driving heliosd through the host API
 *
 * Threads: config_new/config_free and start/stop run on heliosd's main
 * thread; everything else runs on libmicrohttpd's threads (one per
 * connection). The config is immutable once start() returns, apart from
 * the fields marked atomic.
 */
#ifndef HELIOS_ADMIN_API_H
#define HELIOS_ADMIN_API_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include <helios.h>

#define AA_NAME "admin_api"
#define AA_VERSION "1.0.0"
#define AA_DEFAULT_LISTEN "127.0.0.1:9091"
#define AA_DEFAULT_MAX_BODY (64 * 1024)
#define AA_MAX_BODY_LIMIT (16 * 1024 * 1024)
#define AA_STOP_WAIT_MS 2000
#define AA_REALM "heliosd-admin"

extern const helios_host_api *aa_api;

/* ---- IP lists ---- */

typedef struct aa_cidr {
    int family;          /* AF_INET or AF_INET6 */
    unsigned char a[16]; /* network address, 4 or 16 bytes */
    unsigned bits;       /* prefix length */
} aa_cidr;

typedef struct aa_acl {
    aa_cidr *v;
    size_t n;
} aa_acl;

/* ---- auth ---- */

enum { AA_AUTH_NONE = 0, AA_AUTH_JWT = 1 };

typedef struct aa_auth {
    int mode;                /* AA_AUTH_NONE or AA_AUTH_JWT */
    const char *algorithm;   /* "HS256", "RS256" or "ES256" */
    int alg;                 /* the libjwt jwt_alg_t of ALGORITHM */
    unsigned char *key;      /* secret bytes or PEM text (malloc) */
    size_t keylen;
    const char *issuer;      /* NULL: not checked */
    const char *audience;    /* NULL: not checked */
    uint64_t leeway_s;       /* seconds allowed on exp/nbf */
    const char *scope_claim; /* "scope" by default */
} aa_auth;

/* What a verified request carries: who and what it may do. */
enum { AA_SCOPE_READ = 1, AA_SCOPE_WRITE = 2 };

typedef struct aa_principal {
    char sub[128]; /* the token's `sub`, "-" without one, "anonymous" with auth: none */
    unsigned scopes;
} aa_principal;

/* ---- the instance ---- */

typedef struct aa_config {
    /* from config_new */
    struct sockaddr_storage listen;
    socklen_t listen_len;
    char listen_text[128];
    aa_auth auth;
    aa_acl allow, deny;
    uint64_t max_body;
    char *audit_path; /* NULL: audit lines go to the error log only */
    int metrics_auth;
    const char *default_upstream; /* body `upstream` when omitted; NULL: the only one */

    /* from start() to stop() */
    struct MHD_Daemon *daemon;
    int audit_fd;
    pthread_mutex_t audit_lock; /* audit_fd swaps (one thread per connection) */
    atomic_int stopping;     /* stop() began: refuse reloads */
    atomic_long active;      /* requests between intake and completion */
    atomic_long fresh;       /* connections accepted, no request begun yet */
    pthread_mutex_t reload_lock; /* one ctl_reload per instance at a time */
    pthread_mutex_t quiesce_lock; /* aa_http_quiesce: main thread or a reload's thread */
    int quiesced;                 /* the daemon no longer accepts (under quiesce_lock) */
    uint32_t gen;                 /* the generation this instance started with */
} aa_config;

/* ---- admin_auth.c ---- */

/* Parses a CIDR ("10.0.0.0/8", "::1", "fd00::/8") into OUT; 0 or -1 with a
 * message in ERR. */
int aa_cidr_parse(const char *text, aa_cidr *out, char *err, size_t errlen);
/* 1 when the peer SA may talk to the API: not denied, and allowed (an
 * empty allow list allows all). IPv4-mapped IPv6 peers count as IPv4. */
int aa_acl_permits(const aa_config *c, const struct sockaddr *sa);
/* Reads the key file for the configured algorithm; 0 or -1 with ERR. */
int aa_auth_load_key(aa_auth *a, const char *path, char *err, size_t errlen);
/* Verifies an Authorization header value. Returns 0 and fills WHO, or -1
 * with a reason in WHY (for the 401 body and WWW-Authenticate). */
int aa_auth_check(const aa_auth *a, const char *authorization, aa_principal *who, char *why,
                  size_t whylen);
/* Decodes base64url (no padding needed) into a malloc'd NUL-terminated
 * buffer; NULL on bad input. */
unsigned char *aa_b64url_decode(const char *s, size_t n, size_t *outlen);

/* ---- admin_http.c ---- */

struct MHD_Connection;

/* One request being answered: what the routes see. */
typedef struct aa_req {
    aa_config *cfg;
    struct MHD_Connection *conn;
    const char *method;
    const char *path;
    json_t *body;          /* parsed JSON body, or NULL when empty */
    aa_principal who;
    char peer[64];         /* text form of the client address */
    /* the answer the route sets */
    int status;
    json_t *reply;         /* owned; NULL for text replies */
    char *text;            /* owned text body (GET /metrics) */
    size_t textlen;
    const char *content_type;
    const char *allow;     /* Allow header for 405 */
    char upstream[256];    /* the upstream a body names or implies */
    char address[256];     /* a body's address, "http://" taken off */
} aa_req;

int aa_http_start(aa_config *c);
void aa_http_stop(aa_config *c);
/* Stops accepting (once; any thread): the listening socket is parked for
 * the next generation's instance when it claims the same address, else
 * closed (D76). stop() calls it; so does POST /v1/reload once its reload
 * succeeded, so that the client's next connection waits for the new
 * instance instead of reaching this one. */
void aa_http_quiesce(aa_config *c);
/* The listener's address is wanted by C (config_new) / no longer
 * (config_free); aa_http_drop_kept closes a socket parked for C's address
 * when C cannot start. */
void aa_listen_claim(aa_config *c);
void aa_listen_unclaim(aa_config *c);
void aa_http_drop_kept(aa_config *c);

/* Sets the reply to {"error": {"status": S, "message": ...}}; returns S. */
int aa_fail(aa_req *q, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sets a JSON reply (steals OBJ); returns STATUS. */
int aa_ok(aa_req *q, int status, json_t *obj);

/* ---- admin_routes.c ---- */

/* Route table lookups. */
typedef int (*aa_handler)(aa_req *q, const char *a1, const char *a2);

typedef struct aa_match {
    aa_handler fn;     /* NULL: no route for the method (see allow) */
    char allow[128];   /* methods the path accepts, for Allow */
    int is_public;     /* no auth needed (GET /v1/health) */
    int is_metrics;    /* GET /metrics: public unless metrics_auth */
    int write;         /* needs the write scope */
    char a1[256], a2[256];
} aa_match;

/* Finds the route for METHOD PATH; returns 0 with M filled (fn may be
 * NULL for a wrong method), or -1 for an unknown path. */
int aa_route(const char *method, const char *path, aa_match *m);
/* Converts a config node to JSON with secrets redacted. */
json_t *aa_conf_to_json(const helios_conf *n, const char *key);

/* ---- admin_http.c: the request path without libmicrohttpd ---- */

/* A request's checks before its body: peer SA against the IP lists, the
 * route of Q's method and path into M, the Authorization value AUTHZ (may
 * be NULL) and the scope, the Content-Length value (may be NULL) against
 * max_body. Returns 1 when Q holds the answer already (WWW gets the
 * WWW-Authenticate value of a 401), 0 to go on with the body. No I/O:
 * tests/fuzz calls it directly. */
int aa_req_check(aa_req *q, aa_match *m, const struct sockaddr *sa, const char *authz,
                 const char *content_length, char *www, size_t wwwlen);
/* Parses BODY (LEN bytes; none is no body) as JSON and runs M's endpoint;
 * the answer is in Q. */
void aa_req_run(aa_req *q, aa_match *m, const char *body, size_t len);

#endif
