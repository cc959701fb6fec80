/*
 * cmd.c - a test module with command-line commands (ABI 1.2), so tests can
 * check that `heliosd NAME ARGS...` finds a module's command, hands it its
 * arguments (without `-m DIR`) and exits with what it returns.
 *
 *   heliosd cmd-echo ARGS...   prints "argc=N", then "argv[i]=ARG" per line,
 *                              and logs one warning through api->log
 *   heliosd cmd-exit N         returns N (heliosd exits 1 outside 0..125)
 */
#include <stdio.h>
#include <stdlib.h>

#include <helios.h>

static int cmd_echo(const helios_host_api *api, int argc, char **argv)
{
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    if (argv[argc] != NULL)
        printf("argv[argc] is not NULL\n");
    api->log(HELIOS_LOG_WARN, "cmd", "warning from a command");
    return 0;
}

static int cmd_exit(const helios_host_api *api, int argc, char **argv)
{
    (void)api;
    if (argc != 2) {
        fprintf(stderr, "usage: heliosd cmd-exit N\n");
        return 2;
    }
    return atoi(argv[1]);
}

static const helios_command cmd_commands[] = {
    {"cmd-echo", "print the arguments (test module)", cmd_echo},
    {"cmd-exit", "exit with the given status (test module)", cmd_exit},
    {NULL, NULL, NULL},
};

static const helios_module cmd_module = {
    HELIOS_MODULE_HEADER("cmd", "0.0.0"),
    .commands = cmd_commands,
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &cmd_module;
}
