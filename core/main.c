/*
 * main.c - command line, startup, signals, reload and shutdown.
 *
 *   heliosd -c PATH [-m DIR]     run
 *   heliosd -t -c PATH [-m DIR]  validate and exit 0/1
 *   heliosd -V                   versions
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <llhttp.h>
#include <nghttp2/nghttp2ver.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#include <zlib.h>

#include "accesslog.h"
#include "config.h"
#include "control.h"
#include "log.h"
#include "worker.h"

void hx_server_init_main(struct ev_loop *loop);

static void usage(FILE *f)
{
    fprintf(f, "usage: heliosd -c PATH [-m MODULE_DIR] [-t]\n"
               "       heliosd -V\n"
               "  -c PATH  configuration: a directory (every *.yaml, lexical order, merged)\n"
               "           or one file (default /etc/helios)\n"
               "  -m DIR   module directory (overrides module_path)\n"
               "  -t       validate the configuration, print every error, exit 0 or 1\n"
               "  -V       print versions and exit\n"
               "  -h       this help\n");
}

static void print_versions(void)
{
    printf("heliosd %s\n", HELIOS_VERSION);
    printf("plugin ABI %d.%d (build signature %s)\n", HELIOS_ABI_MAJOR, HELIOS_ABI_MINOR,
           HELIOS_BUILD_SIGNATURE);
    printf("libev %d.%d\n", ev_version_major(), ev_version_minor());
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR,
           LLHTTP_VERSION_PATCH);
    printf("nghttp2 %s\n", NGHTTP2_VERSION);
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION_STRING));
    printf("libyaml %s\n", yaml_get_version_string());
    printf("zlib %s\n", zlibVersion());
    printf("jansson %s\n", JANSSON_VERSION);
    printf("module directory %s\n", HELIOS_INSTALL_MODULE_DIR);
}

/* A binary run from the build tree uses the build's modules. */
static const char *default_module_dir(void)
{
    static char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char build[PATH_MAX];
            if (realpath(HELIOS_BUILD_DIR, build) && strcmp(build, exe) == 0)
                return HELIOS_BUILD_MODULE_DIR;
        }
    }
    return HELIOS_INSTALL_MODULE_DIR;
}

static void print_errors(hx_conf_tree *t)
{
    if (t == NULL) {
        fprintf(stderr, "heliosd: out of memory reading the configuration\n");
        return;
    }
    size_t n = hx_conf_error_count(t);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%s\n", hx_conf_error_at(t, i));
    fprintf(stderr, "heliosd: configuration has %zu error%s\n", n, n == 1 ? "" : "s");
}

static hx_gen *build(void)
{
    hx_conf_tree *tree = NULL;
    hx_gen *g = hx_gen_build(hx_srv.conf_path, hx_srv.module_override,
                             hx_srv.default_module_dir, &hx_srv.modreg, &tree);
    if (g == NULL) {
        if (tree) {
            size_t n = hx_conf_error_count(tree);
            for (size_t i = 0; i < n; i++)
                hx_error("%s", hx_conf_error_at(tree, i));
        }
        hx_conf_tree_free(tree);
    }
    return g;
}

static void service_start(hx_gen *g)
{
    for (size_t i = 0; i < g->ninstances; i++) {
        hx_instance *inst = g->instances[i];
        if (inst->mod->service && inst->mod->service->start &&
            inst->mod->service->start(inst->cfg) != 0)
            hx_error("module %s: service failed to start", inst->mod->name);
    }
}

static void service_stop(hx_gen *g)
{
    for (size_t i = g->ninstances; i-- > 0;) {
        hx_instance *inst = g->instances[i];
        if (inst->mod->service && inst->mod->service->stop)
            inst->mod->service->stop(inst->cfg);
    }
}

static void reload(void)
{
    hx_info("reloading configuration from %s", hx_srv.conf_path);
    /* runtime control calls (admin API) wait while the generation changes */
    hx_ctl_lock();
    hx_gen *g = build();
    if (g == NULL) {
        hx_srv.reload_failures++;
        hx_error("reload failed: the running configuration (generation %u) stays",
                 hx_srv.gen->id);
        hx_ctl_unlock();
        return;
    }
    if (hx_workers_switch(g) != 0) {
        hx_srv.reload_failures++;
        hx_error("reload failed: cannot open listeners; generation %u stays", hx_srv.gen->id);
        hx_gen_unref(g);
        hx_ctl_unlock();
        return;
    }
    hx_gen *old = hx_srv.gen;
    hx_srv.gen = g;
    /* Unlock before stopping services: a service's stop() joins its thread,
     * which may be waiting for this lock inside a ctl_* call. Control calls
     * made in between act on the new generation. */
    hx_ctl_unlock();
    /* services belong to a generation: stop the old ones, start the new */
    service_stop(old);
    hx_log_open(g->logging.level, g->logging.error_log);
    hx_accesslog_open(&g->logging);
    service_start(g);
    hx_gen_unref(old);
    hx_srv.reloads++;
    hx_info("configuration generation %u is live", g->id);
}

static void sig_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)revents;
    switch (s->signum) {
    case SIGHUP:
        reload();
        break;
    case SIGUSR1:
        hx_log_reopen();
        hx_accesslog_reopen();
        hx_info("log files reopened");
        break;
    default:
        hx_info("received %s, stopping", s->signum == SIGINT ? "SIGINT" : "SIGTERM");
        hx_srv.stopping = 1;
        ev_break(loop, EVBREAK_ALL);
    }
}

int main(int argc, char **argv)
{
    const char *conf = "/etc/helios";
    int test = 0, opt;
    hx_srv.module_override = NULL;
    while ((opt = getopt(argc, argv, "c:m:tVh")) != -1) {
        switch (opt) {
        case 'c': conf = optarg; break;
        case 'm': hx_srv.module_override = optarg; break;
        case 't': test = 1; break;
        case 'V': print_versions(); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "heliosd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (hx_srv.module_override) {
        struct stat st;
        if (stat(hx_srv.module_override, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "heliosd: -m %s: not a directory\n", hx_srv.module_override);
            return 1;
        }
    }
    hx_srv.conf_path = conf;
    hx_srv.default_module_dir = default_module_dir();

    /* -t prints errors plainly; a running server logs them */
    if (test) {
        hx_log_open(HELIOS_LOG_WARN, NULL);
        hx_conf_tree *tree = NULL;
        hx_gen *g = hx_gen_build(conf, hx_srv.module_override, hx_srv.default_module_dir,
                                 &hx_srv.modreg, &tree);
        int rc = 0;
        if (g == NULL) {
            print_errors(tree);
            hx_conf_tree_free(tree);
            rc = 1;
        } else {
            printf("configuration OK: %s (%zu listener%s, %zu route%s, %zu upstream%s, "
                   "%zu module instance%s)\n",
                   conf, g->nlisteners, g->nlisteners == 1 ? "" : "s", g->nroutes,
                   g->nroutes == 1 ? "" : "s", g->nupstreams, g->nupstreams == 1 ? "" : "s",
                   g->ninstances, g->ninstances == 1 ? "" : "s");
            hx_gen_unref(g);
        }
        hx_modreg_free(&hx_srv.modreg);
        return rc;
    }

    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    if (loop == NULL) {
        fprintf(stderr, "heliosd: cannot initialise libev\n");
        return 1;
    }
    hx_server_init_main(loop);
    /* Watch signals before anything can be observed from outside (the
     * listeners): a SIGHUP or SIGTERM right after startup must not take
     * the default action and kill the process. */
    ev_signal sigs[4];
    int signums[4] = {SIGHUP, SIGTERM, SIGINT, SIGUSR1};
    for (int i = 0; i < 4; i++) {
        ev_signal_init(&sigs[i], sig_cb, signums[i]);
        ev_signal_start(loop, &sigs[i]);
    }
    hx_gen *g = build();
    if (g == NULL) {
        fprintf(stderr, "heliosd: not starting: invalid configuration\n");
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    if (hx_log_open(g->logging.level, g->logging.error_log) != 0) {
        fprintf(stderr, "heliosd: error_log %s: %s\n", g->logging.error_log, strerror(errno));
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    if (hx_accesslog_open(&g->logging) != 0) {
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    hx_srv.gen = g;
    /* workers inherit a mask with our signals blocked: only main gets them */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    int started = hx_workers_start(g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started != 0) {
        hx_error("not starting: workers could not be started");
        hx_workers_stop(0);
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    service_start(g);
    hx_info("heliosd %s started: %u worker%s, generation %u, modules from %s", HELIOS_VERSION,
            g->workers, g->workers == 1 ? "" : "s", g->id, g->module_dir);

    ev_run(loop, 0);

    uint64_t grace = hx_srv.gen->timeouts.shutdown_ms;
    service_stop(hx_srv.gen);
    hx_workers_stop(grace);
    for (int i = 0; i < 4; i++)
        ev_signal_stop(loop, &sigs[i]);
    hx_gen_unref(hx_srv.gen);
    hx_srv.gen = NULL;
    hx_modreg_free(&hx_srv.modreg);
    hx_accesslog_close();
    hx_info("stopped");
    hx_log_close();
    ev_loop_destroy(loop);
    return 0;
}
