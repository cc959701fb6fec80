/*
 * fuzz_config.c - the configuration: YAML loading (core/config/conf.c:
 * libyaml events to the tree, duplicate keys, anchors and tags refused,
 * file:line:col errors), the merge of several files, and the schema
 * (core/config/config.c: every section, upstreams, routes and matchers)
 * with module instances created through the real loader from the build's
 * modules (their config_new runs; nothing starts).
 *
 * Input: YAML; a line "#---" splits it into the files of a configuration
 * directory (00.yaml, 01.yaml, ... merged in that order), at most 4.
 * Checked: a generation is built or the errors say why (at least one
 * error, each "file:line:col: ..." or a plain message, none empty); the
 * tree and the generation are freed (LeakSanitizer).
 * The module directory is always the build's (-m): the input cannot make
 * heliosd dlopen anything else.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "config/config.h"
#include "event/worker.h"
#include "fuzz.h"
#include "runtime/runtime.h"

#define MAX_FILES 4

static char dir[64];

static int setup(void)
{
    if (dir[0])
        return 0;
    hx_runtime_wire();
    hx_log_open(HELIOS_LOG_ERROR, "/dev/null");
    /* a tmpfs when there is one: four small writes per input */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/hx-fuzz-config-XXXXXX", base);
    if (mkdtemp(dir) == NULL) {
        dir[0] = '\0';
        return -1;
    }
    return 0;
}

static void write_file(int i, const uint8_t *p, size_t n)
{
    char path[96];
    snprintf(path, sizeof(path), "%s/%02d.yaml", dir, i);
    FILE *f = fopen(path, "wb");
    FZ_CHECK(f != NULL, "cannot write %s", path);
    if (n)
        FZ_CHECK(fwrite(p, 1, n, f) == n, "short write to %s", path);
    fclose(f);
}

static void remove_files(void)
{
    for (int i = 0; i < MAX_FILES; i++) {
        char path[96];
        snprintf(path, sizeof(path), "%s/%02d.yaml", dir, i);
        unlink(path);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FZ_CHECK(setup() == 0, "cannot create a temporary directory");
    remove_files();
    int nfiles = 0;
    const uint8_t *p = data, *end = data + size;
    while (nfiles < MAX_FILES - 1) {
        const uint8_t *cut = NULL;
        for (const uint8_t *q = p; q + 5 <= end; q++)
            if (memcmp(q, "\n#---", 5) == 0) {
                cut = q;
                break;
            }
        if (cut == NULL)
            break;
        write_file(nfiles++, p, (size_t)(cut + 1 - p));
        p = cut + 5;
    }
    write_file(nfiles++, p, (size_t)(end - p));

    hx_conf_tree *tree = NULL;
    hx_gen *g =
        hx_gen_build(dir, HELIOS_BUILD_MODULE_DIR, HELIOS_BUILD_MODULE_DIR, &hx_srv.modreg, &tree);
    if (g != NULL) {
        FZ_CHECK(tree == NULL, "a generation and an error tree");
        FZ_CHECK(g->nlisteners > 0 && g->nroutes > 0, "a generation without listeners or routes");
        hx_gen_unref(g);
    } else {
        FZ_CHECK(tree != NULL, "no generation and no error list");
        size_t n = hx_conf_error_count(tree);
        FZ_CHECK(n > 0, "no generation, but no error either");
        for (size_t i = 0; i < n; i++) {
            const char *e = hx_conf_error_at(tree, i);
            FZ_CHECK(e != NULL && e[0] != '\0', "an empty error message");
        }
        hx_conf_tree_free(tree);
    }
    remove_files();
    return 0;
}
