/*
 * daemon.c - the pid file, the privilege drop, `heliosd -s`, sd_notify and
 * the binary upgrade's process hand-over (daemon.h).
 *
 * Rules kept here:
 *   - heliosd never forks to the background: the service manager (or the
 *     shell) owns the process, and Type=notify tells systemd when it is
 *     ready. The one fork is the binary upgrade's, which execs at once.
 *   - Between fork and exec the child runs only async-signal-safe calls
 *     (the parent has threads): everything it needs is built before fork.
 */
#include "runtime/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef HELIOS_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "base/log.h"

/* ---- pid file ---- */

int hx_pidfile_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        snprintf(err, errlen, "pid_file %s: %s", path, strerror(errno));
    return fd;
}

int hx_pidfile_commit(int fd, const char *path, char *err, size_t errlen)
{
    char text[32];
    int n = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
    int rc = 0;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
        snprintf(err, errlen, "pid_file %s: %s", path, strerror(errno));
        rc = -1;
    }
    close(fd);
    return rc;
}

/* The pid in PATH, or -1 with the reason in ERR. */
static long pidfile_read(const char *path, char *err, size_t errlen)
{
    char text[32] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "pid_file %s: %s%s", path, strerror(errno),
                 errno == ENOENT ? " (is heliosd running?)" : "");
        return -1;
    }
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    char *end = NULL;
    long pid = n > 0 ? strtol(text, &end, 10) : 0;
    if (pid <= 1 || end == text || (*end != '\n' && *end != '\0')) {
        snprintf(err, errlen, "pid_file %s: does not hold a process id", path);
        return -1;
    }
    return pid;
}

void hx_pidfile_remove(const char *path)
{
    char err[256];
    if (path && pidfile_read(path, err, sizeof(err)) == (long)getpid())
        unlink(path);
}

/* ---- heliosd -s ---- */

int hx_signal_running(const char *conf, const char *action)
{
    static const struct {
        const char *name;
        int sig;
    } actions[] = {
        {"reload", SIGHUP}, {"stop", SIGTERM}, {"reopen", SIGUSR1}, {"upgrade", SIGUSR2}};
    int sig = 0;
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        if (strcmp(action, actions[i].name) == 0)
            sig = actions[i].sig;
    if (sig == 0) {
        fprintf(stderr, "heliosd: -s %s: expected reload, stop, reopen or upgrade\n", action);
        return 2;
    }
    char err[1024];
    char *path = hx_config_pid_file(conf, err, sizeof(err));
    if (path == NULL) {
        fprintf(stderr, "heliosd: -s %s: %s\n", action, err);
        return 1;
    }
    long pid = pidfile_read(path, err, sizeof(err));
    int rc = 1;
    if (pid < 0)
        fprintf(stderr, "heliosd: -s %s: %s\n", action, err);
    else if (kill((pid_t)pid, sig) != 0)
        fprintf(stderr, "heliosd: -s %s: process %ld (from %s): %s%s\n", action, pid, path,
                strerror(errno),
                errno == ESRCH ? " (a stale pid file: heliosd is not running)" : "");
    else
        rc = 0;
    free(path);
    return rc;
}

/* ---- privileges ---- */

int hx_drop_privileges(const hx_process_conf *p, char *err, size_t errlen)
{
    if (p->user == NULL && p->group == NULL)
        return 0;
    if (geteuid() != 0) {
        if ((p->user && p->uid != geteuid()) || (p->group && p->gid != getegid()))
            hx_warn("user/group: ignored: heliosd was not started as root (it runs as uid %u, "
                    "gid %u)",
                    (unsigned)geteuid(), (unsigned)getegid());
        return 0;
    }
    gid_t gid = p->gid;
    if (p->user ? initgroups(p->user, gid) != 0 : setgroups(1, &gid) != 0) {
        snprintf(err, errlen, "cannot set the supplementary groups: %s", strerror(errno));
        return -1;
    }
    if (setresgid(gid, gid, gid) != 0) {
        snprintf(err, errlen, "group %s: setresgid(%u): %s", p->group ? p->group : p->user,
                 (unsigned)gid, strerror(errno));
        return -1;
    }
    if (p->user == NULL) {
        hx_info("running with group %s (gid %u)", p->group, (unsigned)gid);
        return 0;
    }
    /* Keep CAP_NET_BIND_SERVICE through the uid change (this thread's; the
     * workers never bind): a reload may add a listener on port 80. */
    prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
    if (setresuid(p->uid, p->uid, p->uid) != 0) {
        snprintf(err, errlen, "user %s: setresuid(%u): %s", p->user, (unsigned)p->uid,
                 strerror(errno));
        return -1;
    }
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct caps[2];
    memset(caps, 0, sizeof(caps));
    caps[0].effective = caps[0].permitted = caps[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
    int kept = syscall(SYS_capset, &hdr, caps) == 0 &&
               prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == 0;
    hx_info("running as user %s (uid %u), group gid %u%s", p->user, (unsigned)p->uid, (unsigned)gid,
            kept ? ", with CAP_NET_BIND_SERVICE" : "");
    return 0;
}

/* ---- service manager ---- */

void hx_notify(const char *state)
{
#ifdef HELIOS_HAVE_SYSTEMD
    /* MAINPID: after a binary upgrade the new process is the service's */
    sd_notifyf(0, "%s\nMAINPID=%ld", state, (long)getpid());
#else
    (void)state;
#endif
}

/* ---- binary upgrade ---- */

#define HX_ENV_LISTEN "HELIOS_LISTEN_FDS"
#define HX_ENV_PARENT "HELIOS_UPGRADE_PARENT"
#define HX_ENV_PIPE "HELIOS_UPGRADE_FD"

/* old side: the write end the new heliosd waits on; -1 when none */
static int handover_wr = -1;
/* new side: the read end, from HELIOS_UPGRADE_FD */
static int handover_rd = -1;

extern char **environ;

pid_t hx_upgrade_spawn(const char *exe, char *const argv[], const char *listen_text, const int *fds,
                       size_t nfds, char *err, size_t errlen)
{
    if (handover_wr >= 0) {
        snprintf(err, errlen, "an upgrade is already in progress");
        return -1;
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    /* the child's environment: ours without stale upgrade variables */
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 4, sizeof(char *));
    size_t llen = strlen(HX_ENV_LISTEN) + strlen(listen_text) + 2;
    char *lenv = malloc(llen), penv[64], fenv[64];
    if (env == NULL || lenv == NULL) {
        free(env);
        free(lenv);
        close(pfd[0]);
        close(pfd[1]);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(lenv, llen, "%s=%s", HX_ENV_LISTEN, listen_text);
    snprintf(penv, sizeof(penv), "%s=%ld", HX_ENV_PARENT, (long)getpid());
    snprintf(fenv, sizeof(fenv), "%s=%d", HX_ENV_PIPE, pfd[0]);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "HELIOS_LISTEN_FDS=", 18) != 0 &&
            strncmp(environ[i], "HELIOS_UPGRADE_", 15) != 0)
            env[k++] = environ[i];
    env[k++] = lenv;
    env[k++] = penv;
    env[k++] = fenv;
    env[k] = NULL;

    pid_t pid = fork();
    if (pid == 0) {
        /* async-signal-safe only from here */
        for (size_t i = 0; i < nfds; i++)
            fcntl(fds[i], F_SETFD, 0);
        fcntl(pfd[0], F_SETFD, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(exe, argv, env);
        _exit(127);
    }
    int e = errno;
    free(env);
    free(lenv);
    close(pfd[0]);
    if (pid < 0) {
        close(pfd[1]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -1;
    }
    handover_wr = pfd[1];
    return pid;
}

pid_t hx_upgrade_parent(void)
{
    const char *p = getenv(HX_ENV_PARENT), *f = getenv(HX_ENV_PIPE);
    long pid = p ? strtol(p, NULL, 10) : 0;
    handover_rd = f ? (int)strtol(f, NULL, 10) : -1;
    if (handover_rd >= 0)
        fcntl(handover_rd, F_SETFD, FD_CLOEXEC);
    unsetenv(HX_ENV_LISTEN);
    unsetenv(HX_ENV_PARENT);
    unsetenv(HX_ENV_PIPE);
    return pid > 1 ? (pid_t)pid : 0;
}

void hx_upgrade_take_over(pid_t old, unsigned timeout_ms)
{
    if (kill(old, SIGTERM) != 0)
        hx_warn("binary upgrade: cannot signal the old heliosd (pid %ld): %s", (long)old,
                strerror(errno));
    if (handover_rd < 0)
        return;
    /* EOF (or a byte) once its services stopped, or when it is gone */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long spent = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        if (spent >= (long)timeout_ms) {
            hx_warn("binary upgrade: the old heliosd (pid %ld) did not stop its services "
                    "within %u ms; starting ours anyway",
                    (long)old, timeout_ms);
            break;
        }
        struct pollfd pf = {.fd = handover_rd, .events = POLLIN};
        int r = poll(&pf, 1, (int)(timeout_ms - (unsigned)spent));
        if (r < 0 && errno == EINTR)
            continue;
        char c;
        if (r > 0 && read(handover_rd, &c, 1) < 0 && errno == EINTR)
            continue;
        break;
    }
    close(handover_rd);
    handover_rd = -1;
}

void hx_upgrade_release(void)
{
    if (handover_wr >= 0) {
        close(handover_wr);
        handover_wr = -1;
    }
}
