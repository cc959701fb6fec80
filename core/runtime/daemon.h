/*
 * daemon.h - what makes heliosd a service: the pid file, the privilege
 * drop, signalling a running instance (`heliosd -s`), notifications to
 * the service manager (sd_notify) and the binary upgrade (SIGUSR2).
 * Main thread only.
 */
#ifndef HX_DAEMON_H
#define HX_DAEMON_H

#include <stddef.h>
#include <sys/types.h>

#include "config/config.h"

/* Opens (creates) PATH while heliosd may still be root; its content is
 * left alone until hx_pidfile_commit. Returns a descriptor, or -1 with the
 * reason in ERR. */
int hx_pidfile_open(const char *path, char *err, size_t errlen);
/* Writes our pid into FD (once started: after a binary upgrade the file
 * names the new heliosd only when it serves) and closes it. */
int hx_pidfile_commit(int fd, const char *path, char *err, size_t errlen);
/* Removes PATH if it still holds our pid (after an upgrade it holds the
 * new heliosd's). */
void hx_pidfile_remove(const char *path);

/* `heliosd -s ACTION`: reload, stop, reopen or upgrade, sent to the pid in
 * the pid_file of the configuration at CONF. Messages on stderr; returns
 * the exit status. */
int hx_signal_running(const char *conf, const char *action);

/* Started as root with `user:`/`group:`: becomes that user and group,
 * keeping only CAP_NET_BIND_SERVICE (also ambient, for an upgrade's exec)
 * so a reload can still bind ports below 1024. Otherwise a no-op (with a
 * warning when the setting names someone else). 0, or -1 with ERR. */
int hx_drop_privileges(const hx_process_conf *p, char *err, size_t errlen);

/* Tells the service manager STATE ("READY=1", "RELOADING=1", ...) when
 * heliosd runs under systemd (NOTIFY_SOCKET) and was built with
 * libsystemd; a no-op otherwise. */
void hx_notify(const char *state);

/*
 * Binary upgrade. The running heliosd (the old one) starts the binary at
 * EXE with ARGV, the listening sockets in HELIOS_LISTEN_FDS (LISTEN_TEXT,
 * descriptors FDS) and HELIOS_UPGRADE_PARENT=<its pid>. Returns the new
 * process's pid, or -1 with ERR.
 */
pid_t hx_upgrade_spawn(const char *exe, char *const argv[], const char *listen_text, const int *fds,
                       size_t nfds, char *err, size_t errlen);
/* The new heliosd, once its workers accept on the inherited sockets: the
 * pid of the heliosd it replaces (from HELIOS_UPGRADE_PARENT), or 0 when
 * this start is not an upgrade. Clears the variables. */
pid_t hx_upgrade_parent(void);
/* The new heliosd: asks the old one to stop accepting and finish (SIGTERM),
 * then waits up to TIMEOUT_MS until it no longer holds its service
 * listeners (admin API, metrics), so the services can bind them again:
 * it waits for the old one's "services stopped" byte on the pipe it got. */
void hx_upgrade_take_over(pid_t old, unsigned timeout_ms);
/* The old heliosd: the upgrade is over for it, because its services are
 * stopped (the new one may bind their addresses) or the new one failed. */
void hx_upgrade_release(void);

#endif
