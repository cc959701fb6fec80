/*
 * module_loader.c - dlopen, ABI checks, and module instances.
 *
 * Every refusal names the file and says what was expected, because the
 * person reading it is usually an operator who dropped in a module built
 * elsewhere.
 */
#include "config/module_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"

static const helios_host_api *host_api;

void hx_modules_set_host(const helios_host_api *api) { host_api = api; }

typedef const helios_module *(*hx_entry_fn)(const helios_host_api *api);

static int valid_module_name(const char *name)
{
    if (name == NULL || *name == '\0' || strlen(name) > 64)
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    return 1;
}

/* A hook table pointer is only there if the module's descriptor is large
 * enough to contain the field; older minors may end earlier. */
#define DESC_HAS(d, field)                                                                    \
    ((d)->struct_size >= offsetof(helios_module, field) + sizeof((d)->field))

static int check_descriptor(const helios_module *d, const char *path, const char *name, char *err,
                            size_t errlen)
{
    if (d->magic != HELIOS_MODULE_MAGIC) {
        snprintf(err, errlen,
                 "%s: not a heliosd module descriptor (magic 0x%08x, expected 0x%08x)", path,
                 d->magic, HELIOS_MODULE_MAGIC);
        return -1;
    }
    if (d->abi_major != HELIOS_ABI_MAJOR) {
        snprintf(err, errlen,
                 "%s: built for plugin ABI %u.%u, but this heliosd provides ABI %d.%d "
                 "(major versions must match); rebuild the module against this SDK",
                 path, d->abi_major, d->abi_minor, HELIOS_ABI_MAJOR, HELIOS_ABI_MINOR);
        return -1;
    }
    if (d->abi_minor > HELIOS_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: built for plugin ABI %u.%u, newer than this heliosd's ABI %d.%d; "
                 "upgrade heliosd or rebuild the module against this SDK",
                 path, d->abi_major, d->abi_minor, HELIOS_ABI_MAJOR, HELIOS_ABI_MINOR);
        return -1;
    }
    if (d->struct_size < offsetof(helios_module, build_sig) + sizeof(d->build_sig)) {
        snprintf(err, errlen, "%s: descriptor too small (%u bytes) for ABI %u.%u", path,
                 d->struct_size, d->abi_major, d->abi_minor);
        return -1;
    }
    if (d->build_sig == NULL || strcmp(d->build_sig, HELIOS_BUILD_SIGNATURE) != 0) {
        snprintf(err, errlen,
                 "%s: build signature '%s' does not match heliosd's '%s' "
                 "(pointer size, TLS library and sanitizer build must agree)",
                 path, d->build_sig ? d->build_sig : "(null)", HELIOS_BUILD_SIGNATURE);
        return -1;
    }
    if (d->name == NULL || strcmp(d->name, name) != 0) {
        snprintf(err, errlen, "%s: module calls itself '%s', expected '%s' (the file name)", path,
                 d->name ? d->name : "(null)", name);
        return -1;
    }
    return 0;
}

/*
 * A module linked against a sanitizer runtime aborts a process without one
 * from inside dlopen(), before we could name the file. Read its DT_NEEDED
 * entries first. Returns the offending library name, or NULL.
 */
static const char *needs_sanitizer(const char *path, char *lib, size_t liblen)
{
#if defined(__SANITIZE_ADDRESS__)
    (void)path;
    (void)lib;
    (void)liblen;
    return NULL; /* an ASan heliosd carries the runtime itself */
#else
    const char *found = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return NULL;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_shoff == 0 || eh->e_shentsize != sizeof(Elf64_Shdr) ||
        eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) > size)
        goto out;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(m + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum && !found; i++) {
        if (sh[i].sh_type != SHT_DYNAMIC || sh[i].sh_link >= eh->e_shnum)
            continue;
        const Elf64_Shdr *str = &sh[sh[i].sh_link];
        if (sh[i].sh_offset + sh[i].sh_size > size || str->sh_offset + str->sh_size > size)
            goto out;
        const Elf64_Dyn *d = (const Elf64_Dyn *)(m + sh[i].sh_offset);
        size_t n = sh[i].sh_size / sizeof(Elf64_Dyn);
        for (size_t k = 0; k < n && d[k].d_tag != DT_NULL; k++) {
            if (d[k].d_tag != DT_NEEDED || d[k].d_un.d_val >= str->sh_size)
                continue;
            const char *name = (const char *)(m + str->sh_offset + d[k].d_un.d_val);
            size_t max = str->sh_size - d[k].d_un.d_val;
            if (strnlen(name, max) == max)
                continue;
            if (strncmp(name, "libasan.so", 10) == 0 || strncmp(name, "libubsan.so", 11) == 0 ||
                strncmp(name, "libclang_rt.", 12) == 0) {
                snprintf(lib, liblen, "%s", name);
                found = lib;
                break;
            }
        }
    }
out:
    munmap((void *)m, size);
    return found;
#endif
}

hx_module *hx_module_load(hx_modreg *reg, const char *dir, const char *name, char *err,
                          size_t errlen)
{
    for (hx_module *m = reg->head; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;

    if (!valid_module_name(name)) {
        snprintf(err, errlen, "invalid module name '%s' (expected [a-z0-9_]+)", name);
        return NULL;
    }
    /* DIR may list several directories joined by ':' (a `module_path`
     * list, config.c): the first that has NAME.so wins */
    char path[PATH_MAX];
    struct stat st;
    int found = 0, err_no = ENOENT;
    for (const char *p = dir; p && !found;) {
        const char *e = strchr(p, ':');
        int dl = (int)(e ? (size_t)(e - p) : strlen(p));
        if (snprintf(path, sizeof(path), "%.*s/%s.so", dl, p, name) >= (int)sizeof(path)) {
            snprintf(err, errlen, "module path too long: %.*s/%s.so", dl, p, name);
            return NULL;
        }
        if (stat(path, &st) == 0)
            found = 1;
        else if (p == dir)
            err_no = errno;
        p = e ? e + 1 : NULL;
    }
    if (!found) {
        const char *e = strchr(dir, ':');
        int dl = (int)(e ? (size_t)(e - dir) : strlen(dir));
        snprintf(err, errlen, "module '%s' not found: %.*s/%s.so: %s (module director%s: %s)", name,
                 dl, dir, name, strerror(err_no), e ? "ies, searched in order" : "y", dir);
        return NULL;
    }

    char san[128];
    if (needs_sanitizer(path, san, sizeof(san))) {
        snprintf(err, errlen,
                 "%s: built with a sanitizer runtime (%s) but this heliosd is not "
                 "(build signature '%s'); rebuild the module without -fsanitize or use an "
                 "ASan heliosd",
                 path, san, HELIOS_BUILD_SIGNATURE);
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(err, errlen, "%s: cannot load: %s", path, dlerror());
        return NULL;
    }
    hx_entry_fn entry;
    /* POSIX-sanctioned way to turn dlsym's object pointer into a function
     * pointer without a cast between the two. */
    *(void **)(&entry) = dlsym(h, "helios_module_init");
    if (entry == NULL) {
        snprintf(err, errlen, "%s: no entry symbol 'helios_module_init' (is it a heliosd module?)",
                 path);
        dlclose(h);
        return NULL;
    }
    const helios_module *d = entry(host_api);
    if (d == NULL) {
        snprintf(err, errlen, "%s: helios_module_init returned NULL (the module refused to load)",
                 path);
        dlclose(h);
        return NULL;
    }
    if (check_descriptor(d, path, name, err, errlen) != 0) {
        dlclose(h);
        return NULL;
    }

    hx_module *m = calloc(1, sizeof(*m));
    if (m == NULL || (m->name = strdup(name)) == NULL || (m->path = strdup(path)) == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        if (m) {
            free(m->name);
            free(m);
        }
        dlclose(h);
        return NULL;
    }
    /* every hook table starts with its size; ABI 1.0 sizes are the floor */
    struct {
        const void *t;
        size_t min;
        const char *what;
    } tables[] = {
        {DESC_HAS(d, filter) ? d->filter : NULL, sizeof(helios_filter_hooks), "filter"},
        /* on_done was appended in 1.1 */
        {DESC_HAS(d, handler) ? d->handler : NULL, offsetof(helios_handler_hooks, on_done),
         "handler"},
        {DESC_HAS(d, balancer) ? d->balancer : NULL,
         offsetof(helios_balancer_hooks, on_attempt_end), "balancer"},
        {DESC_HAS(d, service) ? d->service : NULL, sizeof(helios_service_hooks), "service"},
        {DESC_HAS(d, health) ? d->health : NULL, sizeof(helios_health_hooks), "health"},
    };
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        if (tables[i].t && *(const uint32_t *)tables[i].t < tables[i].min) {
            snprintf(err, errlen, "%s: %s hook table has size %u, ABI %d.%d needs at least %zu",
                     path, tables[i].what, *(const uint32_t *)tables[i].t, HELIOS_ABI_MAJOR,
                     HELIOS_ABI_MINOR, tables[i].min);
            free(m->name);
            free(m->path);
            free(m);
            dlclose(h);
            return NULL;
        }
    }
    m->handle = h;
    m->desc = d;
    m->filter = DESC_HAS(d, filter) ? d->filter : NULL;
    m->handler = DESC_HAS(d, handler) ? d->handler : NULL;
    m->balancer = DESC_HAS(d, balancer) ? d->balancer : NULL;
    m->service = DESC_HAS(d, service) ? d->service : NULL;
    m->health = DESC_HAS(d, health) ? d->health : NULL;
    m->commands = DESC_HAS(d, commands) ? d->commands : NULL;

    hx_module **tail = &reg->head;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;
    reg->count++;
    hx_info("loaded module %s %s (ABI %u.%u) from %s", name, d->version ? d->version : "?",
            d->abi_major, d->abi_minor, path);
    return m;
}

void hx_modreg_free(hx_modreg *reg)
{
    hx_module *m = reg->head;
    while (m) {
        hx_module *next = m->next;
        /* Sanitizer builds keep modules mapped so leak reports can still
         * symbolise frames inside them. */
#if !defined(__SANITIZE_ADDRESS__)
        dlclose(m->handle);
#endif
        free(m->name);
        free(m->path);
        free(m);
        m = next;
    }
    reg->head = NULL;
    reg->count = 0;
}

static int is_so(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 3 && strcmp(e->d_name + n - 3, ".so") == 0;
}

const helios_command *hx_module_command(hx_modreg *reg, const char *dir, const char *name,
                                        hx_module **mod, char *err, size_t errlen)
{
    struct dirent **ents;
    size_t used = 0;
    err[0] = '\0';
    int n = scandir(dir, &ents, is_so, alphasort);
    if (n < 0) {
        snprintf(err, errlen, "cannot read the module directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    const helios_command *found = NULL;
    for (int i = 0; i < n; i++) {
        char mname[256], why[1024];
        size_t len = strlen(ents[i]->d_name) - 3;
        hx_module *m = NULL;
        if (!found && len < sizeof(mname)) {
            memcpy(mname, ents[i]->d_name, len);
            mname[len] = '\0';
            m = hx_module_load(reg, dir, mname, why, sizeof(why));
            if (m == NULL && used + 1 < errlen) {
                int k = snprintf(err + used, errlen - used, "%s%s", used ? "\n" : "", why);
                used += k > 0 && (size_t)k < errlen - used ? (size_t)k : errlen - used - 1;
            }
        }
        for (const helios_command *c = m ? m->commands : NULL; c && c->name && !found; c++) {
            if (c->run && strcmp(c->name, name) == 0) {
                found = c;
                *mod = m;
            }
        }
        free(ents[i]);
    }
    free(ents);
    return found;
}

static const char *kind_name(hx_kind k)
{
    switch (k) {
    case HX_KIND_FILTER: return "filter";
    case HX_KIND_HANDLER: return "handler";
    case HX_KIND_BALANCER: return "balancer";
    case HX_KIND_SERVICE: return "service";
    default: return "global module (filter, service or health)";
    }
}

static int has_kind(const hx_module *m, hx_kind k)
{
    switch (k) {
    case HX_KIND_FILTER: return m->filter != NULL;
    case HX_KIND_HANDLER: return m->handler != NULL && m->handler->handle != NULL;
    case HX_KIND_BALANCER: return m->balancer != NULL && m->balancer->pick != NULL;
    case HX_KIND_SERVICE: return m->service != NULL;
    default: /* `modules:` entries: something the core calls without a route */
        return m->filter != NULL || m->service != NULL || m->health != NULL;
    }
}

static const hx_conf_node *current_node;

const hx_conf_node *hx_instance_current_node(void) { return current_node; }

static hx_instance *instance_create(hx_modreg *reg, const char *dir, const char *name,
                                    const hx_conf_node *at, const hx_conf_node *config,
                                    hx_kind kind, unsigned slot)
{
    char err[1024];
    hx_module *m = hx_module_load(reg, dir, name, err, sizeof(err));
    if (m == NULL) {
        hx_conf_error(at, "%s", err);
        return NULL;
    }
    if (!has_kind(m, kind)) {
        hx_conf_error(at, "module '%s' cannot be used as a %s (it does not implement that kind)",
                      name, kind_name(kind));
        return NULL;
    }
    hx_instance *inst = calloc(1, sizeof(*inst));
    if (inst == NULL) {
        hx_conf_error(at, "out of memory");
        return NULL;
    }
    inst->mod = m;
    inst->node = at;
    inst->slot = slot;
    if (m->desc->config_new) {
        size_t before = hx_conf_error_count(at->tree);
        current_node = at;
        int rc = m->desc->config_new((const helios_conf *)config, &inst->cfg);
        current_node = NULL;
        if (rc != 0) {
            if (hx_conf_error_count(at->tree) == before)
                hx_conf_error(config ? config : at, "module '%s' rejected its configuration",
                              name);
            free(inst);
            return NULL;
        }
    } else if (config != NULL && config->kind != HX_CONF_NULL) {
        hx_conf_error(config, "module '%s' takes no configuration", name);
        free(inst);
        return NULL;
    }
    return inst;
}

hx_instance *hx_instance_new(hx_modreg *reg, const char *dir, const hx_conf_node *node,
                             hx_kind kind, unsigned slot)
{
    if (node->kind == HX_CONF_SCALAR)
        return instance_create(reg, dir, node->scalar, node, NULL, kind, slot);
    if (node->kind != HX_CONF_MAP) {
        hx_conf_error(node, "expected a module name or a map {module: NAME, config: {...}}, "
                            "got a %s",
                      hx_conf_kind_name(node->kind));
        return NULL;
    }
    static const char *const keys[] = {"module", "config", NULL};
    if (hx_conf_check_keys(node, keys) != 0)
        return NULL;
    const char *name;
    if (hx_conf_str_req(node, "module", &name) != 1)
        return NULL;
    const hx_conf_node *mn = hx_conf_get(node, "module");
    return instance_create(reg, dir, name, mn, hx_conf_get(node, "config"), kind, slot);
}

hx_instance *hx_instance_new_named(hx_modreg *reg, const char *dir, const char *name,
                                   const hx_conf_node *at, hx_kind kind, unsigned slot)
{
    return instance_create(reg, dir, name, at, NULL, kind, slot);
}

void hx_instance_free(hx_instance *inst)
{
    if (inst == NULL)
        return;
    if (inst->mod->desc->config_free && inst->cfg)
        inst->mod->desc->config_free(inst->cfg);
    free(inst);
}
