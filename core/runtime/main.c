/*
 * main.c - command line, startup, signals, reload and shutdown.
 *
 *   heliosd [-c PATH] [-m DIR]     run (in the foreground: a service
 *                                  manager or the shell owns the process)
 *   heliosd -t [-c PATH] [-m DIR]  validate and exit 0/1
 *   heliosd -s reload|stop|reopen|upgrade [-c PATH]
 *                                  signal the running heliosd (pid_file)
 *   heliosd -V                     versions and built-in directories
 *   heliosd COMMAND [-m DIR] ...   a module's command (ABI 1.2), e.g. the
 *                                  js module's `serve app.js`, `exec
 *                                  script.js`, `compile app.js -o app.qjsbc`
 *
 * Signals: SIGHUP reload, SIGTERM/SIGINT graceful stop, SIGUSR1 reopen
 * logs, SIGUSR2 binary upgrade (runtime/daemon.h).
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <llhttp.h>
#include <nghttp2/nghttp2ver.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>
#include <zlib.h>

#include "http/accesslog.h"
#include "config/config.h"
#include "runtime/control.h"
#include "runtime/state.h"
#include "runtime/daemon.h"
#include "base/log.h"
#include "config/module_loader.h"
#include "event/worker.h"
#include "runtime/runtime.h"


/* The directory of the running binary, resolved. 0 or -1. */
static int exe_dir(char *buf, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    if (strlen(exe) >= len)
        return -1;
    strcpy(buf, exe);
    return 0;
}

/* An installed directory as compiled in (HELIOS_INSTALL_*_DIR): absolute,
 * or relative to the installed heliosd's own directory, so that a tree
 * installed under any prefix finds its modules and configuration. */
static const char *installed_dir(const char *compiled, char buf[PATH_MAX])
{
    char dir[PATH_MAX];
    if (compiled[0] == '/' || exe_dir(dir, sizeof(dir)) != 0)
        return compiled;
    size_t dl = strlen(dir), cl = strlen(compiled);
    if (dl + 1 + cl >= PATH_MAX)
        return compiled;
    char joined[PATH_MAX];
    memcpy(joined, dir, dl);
    joined[dl] = '/';
    memcpy(joined + dl + 1, compiled, cl + 1);
    /* tidy (no "sbin/..") when it exists; as joined when it does not */
    if (realpath(joined, buf) == NULL)
        memcpy(buf, joined, dl + cl + 2);
    return buf;
}

static int in_build_tree(void)
{
    char dir[PATH_MAX], build[PATH_MAX];
    return exe_dir(dir, sizeof(dir)) == 0 && realpath(HELIOS_BUILD_DIR, build) &&
           strcmp(build, dir) == 0;
}

/* A binary run from the build tree uses the build's modules and the
 * source's conf.d/; an installed one what was installed with it. */
static const char *default_module_dir(void)
{
    static char path[PATH_MAX];
    if (in_build_tree())
        return HELIOS_BUILD_MODULE_DIR;
    return installed_dir(HELIOS_INSTALL_MODULE_DIR, path);
}

static const char *default_conf(void)
{
    static char path[PATH_MAX];
    if (in_build_tree())
        return HELIOS_SOURCE_CONF_DIR;
    return installed_dir(HELIOS_INSTALL_CONF_DIR, path);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: heliosd [-c PATH] [-m MODULE_DIR]        run in the foreground\n"
            "       heliosd -t [-c PATH] [-m MODULE_DIR]     check the configuration\n"
            "       heliosd -s SIGNAL [-c PATH]              signal the running heliosd\n"
            "       heliosd -V | -h\n"
            "       heliosd COMMAND [-m MODULE_DIR] [ARGS...]     a module's command; the js module's:\n"
            "       heliosd serve APP.js [-s] [--port 8080] [--ip ADDR] [--workers N]\n"
            "                     [--cert PATH --key PATH] [--alt-svc VALUE] [--no-probe] ...\n"
            "                                  serve a fetch handler, no YAML (serve --help)\n"
            "       heliosd exec SCRIPT.js [-s]  run a script once (fetch, timers, console), exit\n"
            "       heliosd build|compile SCRIPT.js [-o OUT.qjsbc]   QuickJS bytecode\n"
            "  -c, --config PATH       a directory (every *.yaml, lexical order, merged)\n"
            "                          or one file (default %s)\n"
            "  -m, --module-dir DIR    module directory (overrides module_path)\n"
            "  -t, --test              validate the configuration and that the log files\n"
            "                          can be opened; print every error, exit 0 or 1\n"
            "  -s, --signal SIGNAL     reload (SIGHUP), stop (SIGTERM), reopen (SIGUSR1) or\n"
            "                          upgrade (SIGUSR2), sent to the pid in pid_file\n"
            "  -V, --version           print versions and directories, exit\n"
            "  -h, --help              this help\n",
            default_conf());
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
    printf("module directory %s\n", default_module_dir());
    printf("configuration %s\n", default_conf());
#ifdef HELIOS_HAVE_SYSTEMD
    printf("systemd notify: yes\n");
#else
    printf("systemd notify: no (built without libsystemd)\n");
#endif
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

/* Builds a generation from the configuration; errors go to the log and,
 * when ERR is given, into it one per line (ctl_reload reports them). */
static hx_gen *build(char *err, size_t errlen)
{
    hx_conf_tree *tree = NULL;
    hx_gen *g = hx_gen_build(hx_srv.conf_path, hx_srv.module_override,
                             hx_srv.default_module_dir, &hx_srv.modreg, &tree);
    if (g == NULL) {
        size_t used = 0;
        if (err && errlen)
            err[0] = '\0';
        if (tree) {
            size_t n = hx_conf_error_count(tree);
            for (size_t i = 0; i < n; i++) {
                hx_error("%s", hx_conf_error_at(tree, i));
                if (err && used + 1 < errlen) {
                    int k = snprintf(err + used, errlen - used, "%s%s", used ? "\n" : "",
                                     hx_conf_error_at(tree, i));
                    if (k > 0)
                        used += (size_t)k < errlen - used ? (size_t)k : errlen - used - 1;
                }
            }
        } else if (err && errlen) {
            snprintf(err, errlen, "out of memory reading the configuration");
        }
        hx_conf_tree_free(tree);
    }
    return g;
}

/* Starts G's services in slot order. Returns the number that failed. */
static int service_start(hx_gen *g)
{
    int failed = 0;
    for (size_t i = 0; i < g->ninstances; i++) {
        hx_instance *inst = g->instances[i];
        if (!inst->mod->service || !inst->mod->service->start)
            continue;
        if (inst->mod->service->start(inst->cfg) != 0) {
            hx_error("module %s: service failed to start", inst->mod->name);
            failed++;
        } else {
            inst->started = 1;
        }
    }
    return failed;
}

static void service_stop(hx_gen *g)
{
    for (size_t i = g->ninstances; i-- > 0;) {
        hx_instance *inst = g->instances[i];
        /* only what started: a failed start() cleaned up after itself */
        if (inst->mod->service && inst->mod->service->stop && inst->started)
            inst->mod->service->stop(inst->cfg);
        inst->started = 0;
    }
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static int same_process_conf(const hx_process_conf *a, const hx_process_conf *b)
{
    return same_str(a->user, b->user) && same_str(a->group, b->group) &&
           same_str(a->pid_file, b->pid_file);
}

static int reload_generation(char *err, size_t errlen);

/* Lifts the verdicts a reload carried over that no module confirmed
 * (runtime/state.c); one timer, re-armed by every reload. */
static ev_timer carry_timer;
static unsigned carry_gen;

static void carry_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
    if (hx_srv.gen && hx_srv.gen->id == carry_gen)
        hx_state_expire_carried(hx_srv.gen);
}

/* Returns 0 when the new generation is live, -1 when the old one stays
 * (reasons in ERR when given). The service manager sees RELOADING=1, then
 * READY=1 either way. */
static int reload(char *err, size_t errlen)
{
    hx_notify("RELOADING=1\nSTATUS=reloading");
    int rc = reload_generation(err, errlen);
    hx_notify(rc == 0 ? "READY=1\nSTATUS=serving" : "READY=1\nSTATUS=serving (reload refused)");
    return rc;
}

static int reload_generation(char *err, size_t errlen)
{
    hx_info("reloading configuration from %s", hx_srv.conf_path);
    /* runtime control calls (admin API) wait while the generation changes */
    hx_ctl_lock();
    hx_gen *g = build(err, errlen);
    if (g == NULL) {
        hx_srv.reload_failures++;
        hx_error("reload failed: the running configuration (generation %u) stays",
                 hx_srv.gen->id);
        hx_ctl_unlock();
        return -1;
    }
    /* admin changes go on top of the files before any worker sees G */
    hx_state_apply(g, hx_srv.gen, err, errlen);
    if (!same_process_conf(&g->process, &hx_srv.gen->process))
        hx_warn("user, group and pid_file take effect at a restart; the running ones stay");
    if (hx_workers_switch(g) != 0) {
        hx_srv.reload_failures++;
        hx_error("reload failed: cannot open listeners; generation %u stays", hx_srv.gen->id);
        if (err && errlen)
            snprintf(err, errlen, "cannot open the listeners of the new configuration "
                                  "(see the error log)");
        hx_gen_unref(g);
        hx_ctl_unlock();
        return -1;
    }
    hx_gen *old = hx_srv.gen;
    hx_srv.gen = g;
    atomic_store(&hx_srv.gen_id, g->id);
    hx_srv.reloads++;
    /* Unlock before stopping services: a service's stop() joins its thread,
     * which may be waiting for this lock inside a ctl_* call. Control calls
     * made in between act on the new generation. */
    hx_ctl_unlock();
    /* a service thread waiting in ctl_reload gets its answer now, before
     * its own service is stopped below */
    pthread_mutex_lock(&hx_srv.reload_lock);
    if (hx_srv.reload_wanted && !hx_srv.reload_done) {
        hx_srv.reload_rc = 0;
        hx_srv.reload_gen = g->id;
        hx_srv.reload_done = 1;
        pthread_cond_broadcast(&hx_srv.reload_cond);
    }
    /* from here until the new services run, a ctl_reload must not wait for
     * main: main may be joining the very thread that asks (service stop) */
    hx_srv.services_switching = 1;
    pthread_mutex_unlock(&hx_srv.reload_lock);
    /* services belong to a generation: stop the old ones, start the new */
    service_stop(old);
    hx_log_open(g->logging.level, g->logging.error_log);
    hx_log_set_json(g->logging.error_format == HX_LOG_FMT_JSON);
    hx_accesslog_open(&g->logging);
    int failed = service_start(g);
    if (failed)
        hx_error("generation %u runs without %d service%s that failed to start (see above); "
                 "fix the configuration and reload",
                 g->id, failed, failed == 1 ? "" : "s");
    pthread_mutex_lock(&hx_srv.reload_lock);
    hx_srv.services_switching = 0;
    pthread_mutex_unlock(&hx_srv.reload_lock);
    hx_gen_unref(old);
    carry_gen = g->id;
    ev_timer_stop(hx_srv.loop, &carry_timer);
    ev_timer_init(&carry_timer, carry_timer_cb, HX_CARRY_GRACE_S, 0.);
    ev_timer_start(hx_srv.loop, &carry_timer);
    hx_info("configuration generation %u is live", g->id);
    return 0;
}

/* Main thread: a service thread asked for a reload (ctl_reload). */
static void reload_async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)a;
    (void)revents;
    pthread_mutex_lock(&hx_srv.reload_lock);
    int wanted = hx_srv.reload_wanted && !hx_srv.reload_done;
    pthread_mutex_unlock(&hx_srv.reload_lock);
    if (!wanted)
        return;
    char err[sizeof(hx_srv.reload_err)];
    if (reload(err, sizeof(err)) != 0) {
        pthread_mutex_lock(&hx_srv.reload_lock);
        hx_srv.reload_rc = -1;
        snprintf(hx_srv.reload_err, sizeof(hx_srv.reload_err), "%s", err);
        hx_srv.reload_done = 1;
        pthread_cond_broadcast(&hx_srv.reload_cond);
        pthread_mutex_unlock(&hx_srv.reload_lock);
    }
}

/* Host API ctl_reload: any thread but main and the workers. One reload
 * request at a time; a second caller waits for the first to finish. */
static int main_ctl_reload(uint32_t *gen, char *err, size_t errlen)
{
    static pthread_mutex_t one_at_a_time = PTHREAD_MUTEX_INITIALIZER;
    if (pthread_equal(pthread_self(), hx_srv.main_thread) || hx_worker_self() != NULL) {
        if (err && errlen)
            snprintf(err, errlen, "ctl_reload called from the main thread or a worker");
        return -1;
    }
    pthread_mutex_lock(&one_at_a_time);
    pthread_mutex_lock(&hx_srv.reload_lock);
    if (hx_srv.stopping) {
        pthread_mutex_unlock(&hx_srv.reload_lock);
        pthread_mutex_unlock(&one_at_a_time);
        if (err && errlen)
            snprintf(err, errlen, "heliosd is stopping");
        return -1;
    }
    if (hx_srv.services_switching) {
        /* a reload has just built a new generation from the same files and
         * is replacing the services (maybe the caller's own): that reload
         * is this one's answer */
        uint32_t id = atomic_load(&hx_srv.gen_id);
        pthread_mutex_unlock(&hx_srv.reload_lock);
        pthread_mutex_unlock(&one_at_a_time);
        if (gen)
            *gen = id;
        return 0;
    }
    hx_srv.reload_wanted = 1;
    hx_srv.reload_done = 0;
    ev_async_send(hx_srv.loop, &hx_srv.reload_async);
    while (!hx_srv.reload_done)
        pthread_cond_wait(&hx_srv.reload_cond, &hx_srv.reload_lock);
    int rc = hx_srv.reload_rc;
    if (rc == 0 && gen)
        *gen = hx_srv.reload_gen;
    if (rc != 0 && err && errlen)
        snprintf(err, errlen, "%s", hx_srv.reload_err);
    hx_srv.reload_wanted = 0;
    pthread_mutex_unlock(&hx_srv.reload_lock);
    pthread_mutex_unlock(&one_at_a_time);
    return rc;
}

/* ---- binary upgrade (SIGUSR2) ---- */

static char self_exe[PATH_MAX]; /* this binary's path at start: the file an upgrade replaced */
static char **self_argv;
static pid_t upgrade_pid;  /* the new heliosd while an upgrade runs */
static int handed_over;    /* stopping because the new heliosd took over */
static ev_child upgrade_watch;

static void upgrade_child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    (void)revents;
    ev_child_stop(loop, w);
    if (!handed_over)
        hx_error("binary upgrade failed: the new heliosd (pid %d) exited with %s %d before "
                 "taking over; this one (pid %ld) keeps serving",
                 w->rpid, WIFSIGNALED(w->rstatus) ? "signal" : "status",
                 WIFSIGNALED(w->rstatus) ? WTERMSIG(w->rstatus) : WEXITSTATUS(w->rstatus),
                 (long)getpid());
    upgrade_pid = 0;
    hx_upgrade_release();
}

static void upgrade_start(struct ev_loop *loop)
{
    if (upgrade_pid > 0) {
        hx_warn("binary upgrade: one is already running (pid %d)", upgrade_pid);
        return;
    }
    char text[16384], err[256];
    int fds[4096];
    int n = hx_listeners_export(text, sizeof(text), fds, sizeof(fds) / sizeof(fds[0]));
    if (n < 0) {
        hx_error("binary upgrade: too many listening sockets to hand over");
        return;
    }
    pid_t pid = hx_upgrade_spawn(self_exe, self_argv, text, fds, (size_t)n, err, sizeof(err));
    if (pid < 0) {
        hx_error("binary upgrade: cannot start %s: %s", self_exe, err);
        return;
    }
    upgrade_pid = pid;
    ev_child_init(&upgrade_watch, upgrade_child_cb, pid, 0);
    ev_child_start(loop, &upgrade_watch);
    hx_info("binary upgrade: started %s (pid %d) with %d listening socket%s; this heliosd "
            "stops accepting once it has taken over",
            self_exe, pid, n, n == 1 ? "" : "s");
}

static void sig_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)revents;
    switch (s->signum) {
    case SIGHUP:
        reload(NULL, 0);
        break;
    case SIGUSR1:
        hx_log_reopen();
        hx_accesslog_reopen();
        hx_info("log files reopened");
        break;
    case SIGUSR2:
        upgrade_start(loop);
        break;
    default:
        /* a SIGTERM while the new binary of an upgrade runs is its take-over */
        handed_over = upgrade_pid > 0 && kill(upgrade_pid, 0) == 0;
        if (handed_over)
            hx_info("binary upgrade: pid %d took over; finishing the requests in flight, "
                    "then exiting",
                    upgrade_pid);
        else
            hx_info("received %s, stopping", s->signum == SIGINT ? "SIGINT" : "SIGTERM");
        pthread_mutex_lock(&hx_srv.reload_lock);
        hx_srv.stopping = 1;
        /* a service thread waiting in ctl_reload must not wait forever */
        if (hx_srv.reload_wanted && !hx_srv.reload_done) {
            hx_srv.reload_rc = -1;
            snprintf(hx_srv.reload_err, sizeof(hx_srv.reload_err), "heliosd is stopping");
            hx_srv.reload_done = 1;
            pthread_cond_broadcast(&hx_srv.reload_cond);
        }
        pthread_mutex_unlock(&hx_srv.reload_lock);
        ev_break(loop, EVBREAK_ALL);
    }
}

/* -m DIR must name a directory; says so on stderr when it does not. */
static int module_dir_ok(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return 1;
    fprintf(stderr, "heliosd: -m %s: not a directory\n", dir);
    return 0;
}

/*
 * `heliosd NAME [-m DIR] ARGS...`: a command a module registers in its
 * descriptor (helios_command, ABI 1.2), such as the js module's `compile`:
 * the core has no JavaScript engine. No configuration is read; the modules
 * of the module directory are loaded until one lists NAME.
 */
static int command_main(int argc, char **argv)
{
    const char *dir = NULL;
    char **args = calloc((size_t)argc + 1, sizeof(char *));
    if (args == NULL)
        return 1;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
            dir = argv[++i];
            continue;
        }
        args[n++] = argv[i];
    }
    if (dir != NULL && !module_dir_ok(dir)) {
        free(args);
        return 1;
    }
    if (dir == NULL)
        dir = default_module_dir();
    hx_log_open(HELIOS_LOG_WARN, NULL);
    hx_modreg reg = {0};
    hx_module *m = NULL;
    char err[4096];
    const helios_command *c = hx_module_command(&reg, dir, args[0], &m, err, sizeof(err));
    int rc = 2;
    if (c != NULL) {
        rc = c->run(&hx_host_api, n, args);
        if (rc < 0 || rc > 125)
            rc = 1;
    } else {
        fprintf(stderr, "heliosd: unknown command '%s'\n", args[0]);
        fprintf(stderr, "commands of the modules in %s:\n", dir);
        int listed = 0;
        for (hx_module *k = reg.head; k; k = k->next)
            for (const helios_command *e = k->commands; e && e->name; e++, listed++)
                fprintf(stderr, "  %-16s %s (module %s)\n", e->name, e->summary ? e->summary : "",
                        k->name);
        if (!listed)
            fprintf(stderr, "  (none)\n");
        if (err[0])
            fprintf(stderr, "modules that could not be loaded:\n%s\n", err);
        fprintf(stderr, "server options: heliosd -h\n");
    }
    hx_modreg_free(&reg);
    free(args);
    return rc;
}

/* A log file the configuration names: an existing one must open for
 * appending; a missing one must be creatable (its directory writable). -t
 * creates nothing, so a check run as root leaves no root-owned file that
 * the service's own user could not open. 0, or -1 with a line on stderr. */
static int log_file_ok(const char *key, const char *path)
{
    if (path == NULL)
        return 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    int e = errno;
    if (e == ENOENT) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof(dir), ".");
        if (access(dir, W_OK | X_OK) == 0)
            return 0;
        e = errno;
        fprintf(stderr, "heliosd: %s: %s: cannot create it in %s: %s\n", key, path, dir,
                strerror(e));
        return -1;
    }
    fprintf(stderr, "heliosd: %s: %s: %s\n", key, path, strerror(e));
    return -1;
}

static int test_main(const char *conf)
{
    hx_log_open(HELIOS_LOG_WARN, NULL);
    hx_conf_tree *tree = NULL;
    hx_gen *g = hx_gen_build(conf, hx_srv.module_override, hx_srv.default_module_dir,
                             &hx_srv.modreg, &tree);
    int rc = 0;
    char state[4200] = "";
    if (g == NULL) {
        print_errors(tree);
        hx_conf_tree_free(tree);
        rc = 1;
    } else {
        if (log_file_ok("logging.error_log", g->logging.error_log) != 0 ||
            log_file_ok("logging.access_log",
                        g->logging.access_enabled ? g->logging.access_log : NULL) != 0 ||
            hx_state_check(g, state, sizeof(state)) != 0)
            rc = 1;
        else
            printf("configuration OK: %s (%zu listener%s, %zu route%s, %zu upstream%s, "
                   "%zu module instance%s)\n%s\n",
                   conf, g->nlisteners, g->nlisteners == 1 ? "" : "s", g->nroutes,
                   g->nroutes == 1 ? "" : "s", g->nupstreams, g->nupstreams == 1 ? "" : "s",
                   g->ninstances, g->ninstances == 1 ? "" : "s", state);
        hx_gen_unref(g);
    }
    hx_modreg_free(&hx_srv.modreg);
    return rc;
}

int main(int argc, char **argv)
{
    hx_runtime_wire(); /* before anything loads a module */
    if (argc > 1 && argv[1][0] != '-')
        return command_main(argc - 1, argv + 1);
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"module-dir", required_argument, NULL, 'm'},
        {"test", no_argument, NULL, 't'},         {"signal", required_argument, NULL, 's'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *conf = default_conf(), *action = NULL;
    int test = 0, opt;
    hx_srv.module_override = NULL;
    while ((opt = getopt_long(argc, argv, "c:m:ts:Vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': conf = optarg; break;
        case 'm': hx_srv.module_override = optarg; break;
        case 't': test = 1; break;
        case 's': action = optarg; break;
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
    if (action)
        return hx_signal_running(conf, action);
    if (hx_srv.module_override && !module_dir_ok(hx_srv.module_override))
        return 1;
    hx_srv.conf_path = conf;
    hx_srv.default_module_dir = default_module_dir();
    if (test)
        return test_main(conf);

    /* a failed start says why on stderr too, even with a log file */
    hx_log_errors_to_stderr(1);
    self_argv = argv;
    if (realpath("/proc/self/exe", self_exe) == NULL)
        snprintf(self_exe, sizeof(self_exe), "%s", argv[0]);
    signal(SIGPIPE, SIG_IGN);
    /* every connection costs a descriptor, a proxied one two: use what the
     * hard limit allows (nginx's worker_rlimit_nofile, automatic) */
    struct rlimit nof;
    if (getrlimit(RLIMIT_NOFILE, &nof) == 0 && nof.rlim_cur < nof.rlim_max) {
        nof.rlim_cur = nof.rlim_max > 1048576 ? 1048576 : nof.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nof);
    }
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    if (loop == NULL) {
        fprintf(stderr, "heliosd: cannot initialise libev\n");
        return 1;
    }
    hx_server_init_main(loop);
    hx_srv.main_thread = pthread_self();
    hx_ctl_reload_impl = main_ctl_reload;
    pthread_mutex_init(&hx_srv.reload_lock, NULL);
    pthread_cond_init(&hx_srv.reload_cond, NULL);
    ev_async_init(&hx_srv.reload_async, reload_async_cb);
    ev_async_start(loop, &hx_srv.reload_async);
    /* Watch signals before anything can be observed from outside (the
     * listeners): a SIGHUP or SIGTERM right after startup must not take
     * the default action and kill the process. */
    enum { NSIGS = 5 };
    ev_signal sigs[NSIGS];
    int signums[NSIGS] = {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (int i = 0; i < NSIGS; i++) {
        ev_signal_init(&sigs[i], sig_cb, signums[i]);
        ev_signal_start(loop, &sigs[i]);
    }
    hx_gen *g = build(NULL, 0);
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
    hx_log_set_json(g->logging.error_format == HX_LOG_FMT_JSON);
    if (hx_accesslog_open(&g->logging) != 0) {
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    char err[512];
    /* the admin API's persisted changes, before any worker takes G */
    hx_ctl_lock();
    int st_rc = hx_state_apply(g, NULL, err, sizeof(err));
    hx_ctl_unlock();
    if (st_rc != 0) {
        hx_error("not starting: %s", err);
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    int pidfd = -1;
    /* the first generation's: a reload does not move it */
    char *pid_file = g->process.pid_file ? strdup(g->process.pid_file) : NULL;
    if (pid_file && (pidfd = hx_pidfile_open(pid_file, err, sizeof(err))) < 0) {
        hx_error("not starting: %s", err);
        free(pid_file);
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    hx_state_export_init();
    hx_srv.gen = g;
    atomic_store(&hx_srv.gen_id, g->id);
    hx_srv.start_time = (uint64_t)time(NULL);
    /* workers inherit a mask with our signals blocked: only main gets them */
    sigset_t set, old;
    sigemptyset(&set);
    for (int i = 0; i < NSIGS; i++)
        sigaddset(&set, signums[i]);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    /* a binary upgrade's sockets: taken by hx_workers_start, the rest
     * closed right after (nothing may return in between: they are heap) */
    hx_listeners_inherit(getenv("HELIOS_LISTEN_FDS"));
    pid_t upgrade_parent = hx_upgrade_parent(); /* clears the variables */
    int started = hx_workers_start(g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    hx_listeners_inherited_close();
    /* listeners are bound: from here on, the configured user */
    if (started == 0 && hx_drop_privileges(&g->process, err, sizeof(err)) != 0) {
        hx_error("not starting: %s", err);
        started = -1;
    }
    if (started != 0) {
        hx_error("not starting: workers could not be started");
        hx_workers_stop(0);
        if (pidfd >= 0)
            close(pidfd);
        free(pid_file);
        hx_gen_unref(g);
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    /* the heliosd we replace stops accepting, then frees its service
     * addresses (admin API, metrics) for ours */
    if (upgrade_parent > 0) {
        /* under systemd this process becomes the main one (MAINPID) before
         * the old one may exit, or the service would be seen as stopped */
        hx_notify("STATUS=binary upgrade: taking over");
        hx_upgrade_take_over(upgrade_parent, 10000);
    }
    if (service_start(g) != 0) {
        /* like a listener that cannot bind: refuse to run half-configured */
        hx_error("not starting: a module service failed to start");
        service_stop(g);
        hx_workers_stop(0);
        if (pidfd >= 0)
            close(pidfd);
        free(pid_file);
        hx_gen_unref(g);
        hx_srv.gen = NULL;
        hx_modreg_free(&hx_srv.modreg);
        return 1;
    }
    if (pidfd >= 0 && hx_pidfile_commit(pidfd, pid_file, err, sizeof(err)) != 0)
        hx_warn("%s (heliosd -s cannot find this process)", err);
    hx_info("heliosd %s started: %u worker%s, generation %u, modules from %s%s", HELIOS_VERSION,
            g->workers, g->workers == 1 ? "" : "s", g->id, g->module_dir,
            upgrade_parent > 0 ? " (binary upgrade: took over the listening sockets)" : "");
    hx_log_errors_to_stderr(0);
    hx_notify("READY=1\nSTATUS=serving");

    ev_run(loop, 0);

    if (!handed_over)
        hx_notify("STOPPING=1");
    uint64_t grace = hx_srv.gen->timeouts.shutdown_ms;
    service_stop(hx_srv.gen);
    hx_upgrade_release();
    hx_workers_stop(grace);
    for (int i = 0; i < NSIGS; i++)
        ev_signal_stop(loop, &sigs[i]);
    ev_child_stop(loop, &upgrade_watch);
    ev_async_stop(loop, &hx_srv.reload_async);
    /* after a take-over the file is the new heliosd's, written or not yet */
    if (!handed_over)
        hx_pidfile_remove(pid_file);
    free(pid_file);
    hx_gen_unref(hx_srv.gen);
    hx_srv.gen = NULL;
    hx_modreg_free(&hx_srv.modreg);
    hx_accesslog_close();
    hx_info("stopped");
    hx_log_close();
    ev_loop_destroy(loop);
    return 0;
}
