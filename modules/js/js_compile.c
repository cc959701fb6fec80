/*
 * js_compile.c - from a script file to QuickJS bytecode: at config_new
 * (source or .qjsbc), and `heliosd compile` (a module command, ABI 1.2).
 *
 * A .qjsbc file is JS_BC_MAGIC, the QuickJS version, a NUL, then
 * JS_WriteObject bytecode; bytecode from another QuickJS version is
 * refused by name, and any other is checked by loading it once.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "js_internal.h"

#define JS_BC_MAGIC "HXJSBC\x01\n"
#define JS_BC_MAGIC_LEN 8

/* ------------------------------------------------------------------ */
/* compiling                                                           */

/* 1 when SRC looks like an ES module: a line starting with `export`, or
 * with `import` not followed by `(` or `.` (dynamic import, import.meta). */
static int js_is_module(const char *src, size_t len)
{
    if (JS_DetectModule(src, len))
        return 1;
    for (size_t i = 0; i < len;) {
        while (i < len && (src[i] == ' ' || src[i] == '\t'))
            i++;
        if (len - i > 7 && memcmp(src + i, "export", 6) == 0 && strchr(" \t{*", src[i + 6]) != NULL)
            return 1;
        if (len - i > 7 && memcmp(src + i, "import", 6) == 0 &&
            strchr(" \t{*\"'", src[i + 6]) != NULL)
            return 1;
        while (i < len && src[i] != '\n')
            i++;
        i++;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* imports                                                             */

/* Module names are kept as written: the script is registered under its
 * configured path, and the glue that reads its default export imports it by
 * that name (QuickJS's default would rewrite "./worker.js" to "worker.js"
 * and miss it). */
static char *js_module_normalize(JSContext *ctx, const char *base, const char *name, void *opaque)
{
    (void)base;
    (void)opaque;
    return js_strdup(ctx, name);
}

/* node:buffer exports Buffer (and a default object holding it): the class
 * prelude.js made for this context (undefined in the compile-only runtime,
 * which never runs the module). */
static int js_node_buffer_init(JSContext *ctx, JSModuleDef *m)
{
    js_worker *ws = JS_GetContextOpaque(ctx);
    JSValue b = ws ? JS_DupValue(ctx, ws->buffer) : JS_UNDEFINED;
    JSValue def = JS_NewObject(ctx);
    if (JS_IsException(def)) {
        JS_FreeValue(ctx, b);
        return -1;
    }
    JS_SetPropertyStr(ctx, def, "Buffer", JS_DupValue(ctx, b));
    JS_SetPropertyStr(ctx, def, "kMaxLength", JS_NewInt32(ctx, 0x7fffffff));
    if (JS_SetModuleExport(ctx, m, "Buffer", b) != 0 ||
        JS_SetModuleExport(ctx, m, "kMaxLength", JS_NewInt32(ctx, 0x7fffffff)) != 0 ||
        JS_SetModuleExport(ctx, m, "default", def) != 0)
        return -1;
    return 0;
}

static JSModuleDef *js_module_load(JSContext *ctx, const char *name, void *opaque)
{
    (void)opaque;
    if (strcmp(name, "node:buffer") == 0 || strcmp(name, "buffer") == 0) {
        JSModuleDef *m = JS_NewCModule(ctx, name, js_node_buffer_init);
        if (m == NULL || JS_AddModuleExport(ctx, m, "Buffer") != 0 ||
            JS_AddModuleExport(ctx, m, "kMaxLength") != 0 ||
            JS_AddModuleExport(ctx, m, "default") != 0)
            return NULL;
        return m;
    }
    JS_ThrowReferenceError(ctx,
                           "cannot import '%s': imports are not supported (the script must be "
                           "one file; node:buffer is the only module provided)",
                           name);
    return NULL;
}

void js_module_loader_install(JSRuntime *rt)
{
    JS_SetModuleLoaderFunc(rt, js_module_normalize, js_module_load, NULL);
}

/* "file:line: message" of the pending exception (a SyntaxError from the
 * parser carries its position in the first "    at" line of its stack). */
static void js_compile_error(JSContext *ctx, const char *path, char *err, size_t errlen)
{
    JSValue e = JS_GetException(ctx);
    const char *msg = JS_ToCString(ctx, e);
    long line = 0;
    JSValue st = JS_GetPropertyStr(ctx, e, "stack");
    const char *stack = JS_IsString(st) ? JS_ToCString(ctx, st) : NULL;
    if (stack) {
        /* "SyntaxError: message\n    at /path/app.js:3\n" */
        const char *at = strstr(stack, "\n    at ");
        if (at)
            at += 5;
        const char *nl = at ? strchr(at, '\n') : NULL;
        const char *end = nl ? nl : (at ? at + strlen(at) : NULL);
        if (at) {
            const char *c = end;
            while (c > at && c[-1] >= '0' && c[-1] <= '9')
                c--;
            if (c > at && c[-1] == ':')
                line = strtol(c, NULL, 10);
        }
    }
    if (line > 0)
        snprintf(err, errlen, "%s:%ld: %s", path, line, msg ? msg : "syntax error");
    else
        snprintf(err, errlen, "%s: %s", path, msg ? msg : "cannot compile");
    JS_FreeCString(ctx, stack);
    JS_FreeCString(ctx, msg);
    JS_FreeValue(ctx, st);
    JS_FreeValue(ctx, e);
}

/* Compiles SRC (NUL-terminated, LEN bytes) named PATH into malloc'd
 * bytecode: an ES module when it looks like one, unless SCRIPT_ONLY (the
 * `-s` of serve/exec, `mode: script`: a classic script, no module
 * resolution). Returns 0, or -1 with "file:line: message" in ERR. */
static int js_compile(const char *path, const char *src, size_t len, int script_only, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen)
{
    JSRuntime *rt = JS_NewRuntime();
    if (rt)
        js_module_loader_install(rt);
    JSContext *ctx = rt ? JS_NewContext(rt) : NULL;
    int rc = -1;
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: cannot create a JavaScript runtime (out of memory)", path);
        goto done;
    }
    size_t plen = strlen(path);
    int module = !script_only &&
                 (js_is_module(src, len) || (plen > 4 && strcmp(path + plen - 4, ".mjs") == 0));
    JSValue obj =
        JS_Eval(ctx, src, len, path,
                (module ? JS_EVAL_TYPE_MODULE : JS_EVAL_TYPE_GLOBAL) | JS_EVAL_FLAG_COMPILE_ONLY);
    if (JS_IsException(obj)) {
        js_compile_error(ctx, path, err, errlen);
        goto done;
    }
    size_t n;
    uint8_t *bc = JS_WriteObject(ctx, &n, obj, JS_WRITE_OBJ_BYTECODE);
    JS_FreeValue(ctx, obj);
    if (bc == NULL) {
        snprintf(err, errlen, "%s: cannot serialise the bytecode", path);
        JS_FreeValue(ctx, JS_GetException(ctx));
        goto done;
    }
    *out = malloc(n);
    if (*out == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
    } else {
        memcpy(*out, bc, n);
        *outlen = n;
        rc = 0;
    }
    js_free(ctx, bc);
done:
    if (ctx)
        JS_FreeContext(ctx);
    if (rt)
        JS_FreeRuntime(rt);
    return rc;
}

/* Checks that BC loads (a .qjsbc from another QuickJS would not). */
static int js_check_bytecode(const char *path, const uint8_t *bc, size_t len, char *err,
                             size_t errlen)
{
    JSRuntime *rt = JS_NewRuntime();
    JSContext *ctx = rt ? JS_NewContext(rt) : NULL;
    int rc = -1;
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: cannot create a JavaScript runtime", path);
    } else {
        JSValue obj = JS_ReadObject(ctx, bc, len, JS_READ_OBJ_BYTECODE);
        if (JS_IsException(obj)) {
            js_compile_error(ctx, path, err, errlen);
        } else {
            JS_FreeValue(ctx, obj);
            rc = 0;
        }
    }
    if (ctx)
        JS_FreeContext(ctx);
    if (rt)
        JS_FreeRuntime(rt);
    return rc;
}

/* Reads the regular file PATH (at most JS_SCRIPT_MAX bytes), NUL-terminated. */
static char *js_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)JS_SCRIPT_MAX) {
        snprintf(err, errlen, "cannot use '%s': %s", path,
                 S_ISREG(st.st_mode) ? "over 16 MiB" : "not a regular file");
        close(fd);
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n == cap) {
        snprintf(err, errlen, "'%s' changed while it was read", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int js_has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* The .qjsbc header: magic, the QuickJS version, NUL. */
static size_t js_bc_header(char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s%s", JS_BC_MAGIC, HX_QJS_VERSION);
    return (size_t)n + 1;
}

/* Loads PATH (source, or .qjsbc) into bytecode (SCRIPT_ONLY: js_compile). */
int js_load_script(const char *path, int script_only, uint8_t **bc, size_t *bclen, char *err,
                   size_t errlen)
{
    size_t len;
    char *src = js_read_file(path, &len, err, errlen);
    if (src == NULL)
        return -1;
    int rc;
    if (js_has_suffix(path, ".qjsbc")) {
        char hdr[64];
        size_t hl = js_bc_header(hdr, sizeof(hdr));
        if (len < hl || memcmp(src, hdr, JS_BC_MAGIC_LEN) != 0) {
            snprintf(err, errlen,
                     "%s: not a heliosd bytecode file (write one with "
                     "`heliosd compile app.js -o app.qjsbc`)",
                     path);
            rc = -1;
        } else if (memcmp(src, hdr, hl) != 0) {
            snprintf(err, errlen,
                     "%s: compiled for another QuickJS version (this heliosd runs "
                     "%s): compile it again",
                     path, HX_QJS_VERSION);
            rc = -1;
        } else if ((rc = js_check_bytecode(path, (uint8_t *)src + hl, len - hl, err, errlen)) ==
                   0) {
            *bc = malloc(len - hl);
            if (*bc == NULL) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
            } else {
                memcpy(*bc, src + hl, len - hl);
                *bclen = len - hl;
            }
        }
    } else {
        rc = js_compile(path, src, len, script_only, bc, bclen, err, errlen);
    }
    free(src);
    return rc;
}

/* `heliosd compile app.js -o app.qjsbc` (and `build`, its alias): a
 * command of the module's descriptor (helios_command: main thread, no
 * configuration loaded). */
int js_compile_command(const helios_host_api *api, int argc, char **argv)
{
    (void)api;
    const char *in = NULL, *out = NULL;
    int script_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "-s") == 0) {
            script_only = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: heliosd %s SCRIPT.js [-s] [-o OUT.qjsbc]\n"
                   "Compiles a js module script to QuickJS %s bytecode; configure the .qjsbc "
                   "file as the module's script to skip parsing at (re)load.\n"
                   "  -s  a classic script, never an ES module (no module resolution)\n",
                   argv[0], HX_QJS_VERSION);
            return 0;
        } else if (argv[i][0] == '-' || in != NULL) {
            fprintf(stderr,
                    "heliosd %s: unexpected argument '%s'\n"
                    "usage: heliosd %s SCRIPT.js [-s] [-o OUT.qjsbc]\n",
                    argv[0], argv[i], argv[0]);
            return 2;
        } else {
            in = argv[i];
        }
    }
    if (in == NULL) {
        fprintf(stderr, "usage: heliosd %s SCRIPT.js [-s] [-o OUT.qjsbc]\n", argv[0]);
        return 2;
    }
    char outbuf[PATH_MAX];
    if (out == NULL) {
        size_t n = strlen(in);
        const char *dot = strrchr(in, '.');
        size_t stem = dot && !strchr(dot, '/') ? (size_t)(dot - in) : n;
        if (stem + 7 >= sizeof(outbuf)) {
            fprintf(stderr, "heliosd compile: path too long\n");
            return 2;
        }
        memcpy(outbuf, in, stem);
        memcpy(outbuf + stem, ".qjsbc", 7);
        out = outbuf;
    }
    char err[1024];
    size_t len;
    char *src = js_read_file(in, &len, err, sizeof(err));
    if (src == NULL) {
        fprintf(stderr, "heliosd compile: %s\n", err);
        return 1;
    }
    uint8_t *bc = NULL;
    size_t bclen = 0;
    int rc = js_compile(in, src, len, script_only, &bc, &bclen, err, sizeof(err));
    free(src);
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char hdr[64], tmp[PATH_MAX + 16];
    size_t hl = js_bc_header(hdr, sizeof(hdr));
    snprintf(tmp, sizeof(tmp), "%s.tmp%ld", out, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(hdr, 1, hl, f) == hl && fwrite(bc, 1, bclen, f) == bclen;
    if (f && fclose(f) != 0)
        ok = 0;
    free(bc);
    if (!ok || rename(tmp, out) != 0) {
        fprintf(stderr, "heliosd compile: cannot write '%s': %s\n", out, strerror(errno));
        unlink(tmp);
        return 1;
    }
    printf("%s: %zu bytes of bytecode (QuickJS %s)\n", out, bclen + hl, HX_QJS_VERSION);
    return 0;
}
