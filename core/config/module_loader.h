/*
 * module_loader.h - loading module .so files and creating module instances.
 *
 * Modules are loaded once per process (the registry outlives generations)
 * and never unloaded while heliosd runs: a generation that is still draining
 * may call into any module it used. Main thread only.
 */
#ifndef HX_MODULE_LOADER_H
#define HX_MODULE_LOADER_H

#include <helios.h>

#include "config/conf.h"

/* Which hook table an instance is used through. */
typedef enum hx_kind {
    HX_KIND_FILTER,
    HX_KIND_HANDLER,
    HX_KIND_BALANCER,
    HX_KIND_SERVICE, /* `modules:` entries may be services, filters or both */
    HX_KIND_ANY,
} hx_kind;

typedef struct hx_module {
    char *name;          /* "round_robin" */
    char *path;          /* absolute path of the .so */
    void *handle;        /* dlopen handle */
    const helios_module *desc;
    /* Hook tables, or NULL when absent or not covered by struct_size. */
    const helios_filter_hooks *filter;
    const helios_handler_hooks *handler;
    const helios_balancer_hooks *balancer;
    const helios_service_hooks *service;
    const helios_health_hooks *health;
    const helios_command *commands; /* ABI 1.2; NULL when absent */
    struct hx_module *next;
} hx_module;

typedef struct hx_modreg {
    hx_module *head; /* in load order */
    size_t count;
} hx_modreg;

/* One configured use of a module. */
typedef struct hx_instance {
    hx_module *mod;
    const hx_conf_node *node;  /* the `{module:, config:}` node (for messages) */
    void *cfg;                 /* from config_new */
    unsigned slot;             /* index in the generation's instance array */
    int started;               /* service kind: start() succeeded (main.c) */
} hx_instance;

/*
 * Loads DIR/NAME.so unless NAME is already loaded, then checks the entry
 * symbol and descriptor. On refusal returns NULL and writes a message naming
 * the file and what is wrong (missing file, dlopen error, no entry symbol,
 * NULL descriptor, bad magic, ABI major/minor, struct size, build signature,
 * name mismatch) into ERR.
 */
hx_module *hx_module_load(hx_modreg *reg, const char *dir, const char *name, char *err,
                          size_t errlen);
void hx_modreg_free(hx_modreg *reg); /* dlclose all; process exit only */

/*
 * `heliosd NAME ...`: loads the modules of DIR (every *.so, in lexical
 * order, with hx_module_load's checks) into REG until one lists the command
 * NAME, and returns that entry (its module in *MOD). Returns NULL when none
 * does; REG then holds every module of DIR that loaded, and ERR the
 * refusals, one per line (empty when there were none).
 */
const helios_command *hx_module_command(hx_modreg *reg, const char *dir, const char *name,
                                        hx_module **mod, char *err, size_t errlen);

/*
 * Parses a module reference NODE - either a scalar "NAME" or a map
 * {module: NAME, config: {...}} - loads the module, checks it implements
 * KIND, and runs its config_new. Errors go to NODE's tree. Returns NULL on
 * error. The instance is freed with hx_instance_free (runs config_free).
 */
hx_instance *hx_instance_new(hx_modreg *reg, const char *dir, const hx_conf_node *node,
                             hx_kind kind, unsigned slot);
/* Same with the module given by NAME and no `config:`; errors are reported
 * at AT (e.g. an upstream without `balancer:` gets round_robin). */
hx_instance *hx_instance_new_named(hx_modreg *reg, const char *dir, const char *name,
                                   const hx_conf_node *at, hx_kind kind, unsigned slot);
void hx_instance_free(hx_instance *inst);

/* The `module:` node of the instance whose config_new is running (main
 * thread), or NULL: where conf_error(NULL, ...) points. */
const hx_conf_node *hx_instance_current_node(void);

/* The host API table given to every module's entry point: the runtime's
 * (runtime/host_api.c), set once before any module loads. */
void hx_modules_set_host(const helios_host_api *api);

#endif
