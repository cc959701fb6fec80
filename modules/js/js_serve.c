/*
 * js_serve.c - `heliosd serve app.js [options]`: one JavaScript file served
 * without a YAML file (a command of the module's descriptor, ABI 1.2).
 *
 * The command writes the configuration it implies (a listener, the js
 * handler on every path, timeouts, logs, and the headers filter for
 * --alt-svc) into an anonymous memory file (memfd) and replaces itself with
 * heliosd run on that file (`heliosd -c /proc/self/fd/N -m DIR`). So a
 * served file is an ordinary configuration generation: the same checks,
 * the same reload (SIGHUP reads the memfd again and recompiles the script),
 * graceful stop, binary upgrade (the descriptor survives exec) and logs.
 * No file is left behind. docs/decisions.md D59 says why this way.
 * `--print-config` prints the configuration instead: a starting point for
 * a YAML file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "js_internal.h"

static const char js_serve_usage[] =
    "usage: heliosd serve SCRIPT.js [-s] [--port 8080] [--ip ADDR] [--workers N|auto]\n"
    "                     [--policy power-of-two|round-robin|least-loaded|reuseport]\n"
    "                     [--cert PATH --key PATH] [--alt-svc VALUE]\n"
    "                     [--shutdown-timeout 60] [--no-probe] [--print-config]\n"
    "Serves SCRIPT.js's fetch handler on every path, no YAML file needed.\n"
    "  -s                    a classic script, never an ES module (no module resolution)\n"
    "  --port N              TCP port (default 8080)\n"
    "  --ip ADDR             address to listen on (default 0.0.0.0; [::1] or ::1 for IPv6)\n"
    "  --workers N|auto      worker threads (default auto: one per core)\n"
    "  --policy NAME         how connections are spread over the workers\n"
    "  --cert PATH --key PATH  TLS (PEM files), HTTP/2 and HTTP/1.1 offered by ALPN\n"
    "  --alt-svc VALUE       an Alt-Svc header on every response\n"
    "  --shutdown-timeout S  seconds a graceful stop waits for requests in flight (default 60)\n"
    "  --no-probe            no static-response probe: every request runs the handler\n"
    "  --print-config        print the configuration this would run, and exit\n"
    "SIGHUP reloads the script; SIGTERM or Ctrl-C stops gracefully.\n";

typedef struct js_serve_opts {
    const char *script, *ip, *workers, *policy, *cert, *key, *alt_svc, *shutdown;
    long port;
    int script_only, no_probe, print;
} js_serve_opts;

/* --name VALUE or --name=VALUE: the value, advancing *I; NULL if absent. */
static const char *js_opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] == '\0' && *i + 1 < argc)
        return argv[++*i];
    return NULL;
}

__attribute__((format(printf, 1, 2))) static int js_serve_bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("heliosd serve: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(heliosd serve --help)\n", stderr);
    va_end(ap);
    return 2;
}

/* The policy names of a listener's `dispatch:` key: --policy round-robin
 * is dispatch: round_robin. 0, or -1 for an unknown name. */
static int js_policy_name(const char *in, char *out, size_t size)
{
    static const char *const names[] = {"reuseport", "round_robin", "least_loaded", "power_of_two",
                                        NULL};
    size_t n = strlen(in);
    if (n >= size)
        return -1;
    for (size_t i = 0; i <= n; i++)
        out[i] = in[i] == '-' ? '_' : in[i];
    for (size_t i = 0; names[i]; i++)
        if (strcmp(out, names[i]) == 0)
            return 0;
    return -1;
}

static int js_serve_parse(int argc, char **argv, js_serve_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->port = 8080;
    o->ip = "0.0.0.0";
    o->workers = "auto";
    o->shutdown = "60";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(js_serve_usage, stdout);
            return 1;
        } else if (strcmp(a, "-s") == 0) {
            o->script_only = 1;
        } else if (strcmp(a, "--no-probe") == 0) {
            o->no_probe = 1;
        } else if (strcmp(a, "--print-config") == 0) {
            o->print = 1;
        } else if ((v = js_opt_value(argc, argv, &i, "--port")) != NULL) {
            char *end;
            errno = 0;
            o->port = strtol(v, &end, 10);
            if (errno || *end || end == v || o->port < 1 || o->port > 65535)
                return js_serve_bad("--port %s: a TCP port from 1 to 65535", v);
        } else if ((v = js_opt_value(argc, argv, &i, "--ip")) != NULL) {
            o->ip = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--workers")) != NULL) {
            char *end;
            long n = strtol(v, &end, 10);
            if (strcmp(v, "auto") != 0 && (*end || end == v || n < 1 || n > 1024))
                return js_serve_bad("--workers %s: auto or a number from 1 to 1024", v);
            o->workers = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--policy")) != NULL) {
            o->policy = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--cert")) != NULL) {
            o->cert = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--key")) != NULL) {
            o->key = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--alt-svc")) != NULL) {
            o->alt_svc = v;
        } else if ((v = js_opt_value(argc, argv, &i, "--shutdown-timeout")) != NULL) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || end == v || n < 0 || n > 86400)
                return js_serve_bad("--shutdown-timeout %s: seconds, from 0 to 86400", v);
            o->shutdown = v;
        } else if (a[0] == '-') {
            return js_serve_bad("unknown option or missing value: '%s'", a);
        } else if (o->script != NULL) {
            return js_serve_bad("one script only ('%s', then '%s')", o->script, a);
        } else {
            o->script = a;
        }
    }
    if (o->script == NULL)
        return js_serve_bad("which script? heliosd serve SCRIPT.js");
    if ((o->cert == NULL) != (o->key == NULL))
        return js_serve_bad("--cert and --key go together (a PEM certificate chain and its key)");
    if (o->alt_svc && strpbrk(o->alt_svc, "\r\n") != NULL)
        return js_serve_bad("--alt-svc: the value may not contain CR or LF");
    if (o->alt_svc && o->alt_svc[0] == '\0')
        return js_serve_bad("--alt-svc: an empty value");
    return 0;
}

/* S as a YAML double-quoted scalar. */
static void js_yq(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* PATH made absolute (the configuration lives in /proc/self/fd, so its
 * relative paths would be relative to that). 0, or -1 with a message. */
static int js_abs(const char *what, const char *path, char out[PATH_MAX])
{
    if (realpath(path, out) != NULL)
        return 0;
    fprintf(stderr, "heliosd serve: %s %s: %s\n", what, path, strerror(errno));
    return -1;
}

static void js_serve_write(FILE *f, const js_serve_opts *o, const char *script, const char *cert,
                           const char *key, const char *policy)
{
    fprintf(f, "# heliosd serve %s\n", o->script);
    fprintf(f, "workers: %s\n", o->workers);
    fputs("listeners:\n  - name: serve\n    address: ", f);
    char addr[300];
    int v6 = strchr(o->ip, ':') != NULL && o->ip[0] != '[';
    snprintf(addr, sizeof(addr), "%s%s%s:%ld", v6 ? "[" : "", o->ip, v6 ? "]" : "", o->port);
    js_yq(f, addr);
    fputc('\n', f);
    if (policy[0] != '\0') /* else the listener's default (reuseport, D63) */
        fprintf(f, "    dispatch: %s\n", policy);
    if (cert) {
        fputs("    tls:\n      alpn: [h2, http/1.1]\n      certificates:\n        - cert: ", f);
        js_yq(f, cert);
        fputs("\n          key: ", f);
        js_yq(f, key);
        fputc('\n', f);
    }
    fprintf(f, "timeouts:\n  shutdown: %ss\n", o->shutdown);
    fputs("logging:\n  level: info\n  error_log: stderr\n  access_log: stdout\n", f);
    if (o->alt_svc) {
        fputs("modules:\n  - module: headers\n    config:\n      response:\n        set:\n"
              "          Alt-Svc: ",
              f);
        js_yq(f, o->alt_svc);
        fputc('\n', f);
    }
    fputs("routes:\n  - name: app\n    match: {prefix: /}\n    handler:\n      module: js\n"
          "      config:\n        script: ",
          f);
    js_yq(f, script);
    fputc('\n', f);
    if (o->script_only)
        fputs("        mode: script\n", f);
    if (o->no_probe)
        fputs("        probe: false\n", f);
}

/* The directory js.so was loaded from: the module directory to run with. */
static int js_module_dir(char out[PATH_MAX])
{
    Dl_info info;
    if (dladdr((void *)js_serve_command, &info) == 0 || info.dli_fname == NULL ||
        realpath(info.dli_fname, out) == NULL)
        return -1;
    char *slash = strrchr(out, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    return 0;
}

int js_serve_command(const helios_host_api *api, int argc, char **argv)
{
    (void)api;
    js_serve_opts o;
    int rc = js_serve_parse(argc, argv, &o);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    char policy[32] = "";
    if (o.policy && js_policy_name(o.policy, policy, sizeof(policy)) != 0)
        return js_serve_bad("--policy %s: one of power-of-two, round-robin, least-loaded, "
                            "reuseport",
                            o.policy);
    char script[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], mdir[PATH_MAX];
    if (js_abs("script", o.script, script) != 0 ||
        (o.cert && (js_abs("--cert", o.cert, cert) != 0 || js_abs("--key", o.key, key) != 0)))
        return 1;
    if (o.print) {
        js_serve_write(stdout, &o, script, o.cert ? cert : NULL, o.key ? key : NULL, policy);
        return 0;
    }
    if (js_module_dir(mdir) != 0) {
        fprintf(stderr, "heliosd serve: cannot tell which directory js.so was loaded from\n");
        return 1;
    }
    /* no MFD_CLOEXEC: heliosd, exec'd below, reads it at start and reload */
    int fd = memfd_create("heliosd-serve.yaml", 0);
    FILE *f = fd >= 0 ? fdopen(dup(fd), "w") : NULL;
    if (f == NULL) {
        fprintf(stderr, "heliosd serve: cannot create the configuration in memory: %s\n",
                strerror(errno));
        return 1;
    }
    js_serve_write(f, &o, script, o.cert ? cert : NULL, o.key ? key : NULL, policy);
    if (fclose(f) != 0) {
        fprintf(stderr, "heliosd serve: cannot write the configuration: %s\n", strerror(errno));
        return 1;
    }
    char conf[64];
    snprintf(conf, sizeof(conf), "/proc/self/fd/%d", fd);
    fprintf(stderr, "heliosd serve: %s on %s://%s%s%s:%ld/\n", o.script, o.cert ? "https" : "http",
            strchr(o.ip, ':') && o.ip[0] != '[' ? "[" : "", o.ip,
            strchr(o.ip, ':') && o.ip[0] != '[' ? "]" : "", o.port);
    fflush(stderr);
    char *args[] = {"heliosd", "-c", conf, "-m", mdir, NULL};
    execv("/proc/self/exe", args);
    fprintf(stderr, "heliosd serve: cannot run heliosd: %s\n", strerror(errno));
    return 1;
}
