/*
 * fuzz_headers.c - the headers module's value compiler (modules/headers/
 * headers.c: `$name`, `${name}`, `$$`, lone `$`, unknown names, CR/LF
 * refused) and the expansion a request would get, compiled together with
 * the module's source so its static functions run as they are.
 *
 * Input: a header value template (NUL-terminated here: YAML values carry
 * no NUL).
 * Checked against a reference written here from the documented rules:
 * compile succeeds exactly when the reference accepts the template, and
 * the expansion, with a fixed value for every variable, is the reference's
 * byte for byte; a template without variables or `$$` is kept as is.
 */
#include HX_HEADERS_C

#include "fuzz.h"

static void fz_conf_error(const helios_conf *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fz_conf_error(const helios_conf *n, const char *fmt, ...)
{
    (void)n;
    (void)fmt;
}

static void *fz_req_alloc(helios_request *r, size_t size)
{
    (void)r;
    return malloc(size);
}

static helios_host_api fz_host = {
    .size = sizeof(helios_host_api),
    .conf_error = fz_conf_error,
    .req_alloc = fz_req_alloc,
};

/* Each variable's value in the expansion: its own name in brackets. */
static void fill_vars(hd_vars *vars)
{
    static char text[HD_LAST + 1][40];
    memset(vars, 0, sizeof(*vars));
    for (int k = HD_CLIENT_IP; k <= HD_LAST; k++) {
        snprintf(text[k], sizeof(text[k]), "<%s>", hd_var_names[k]);
        vars->v[k] = (helios_buf){text[k], strlen(text[k])};
    }
}

/* The documented rules, independently: returns the expansion (malloc'd)
 * or NULL when the template is refused. */
static char *reference(const char *t)
{
    if (strpbrk(t, "\r\n"))
        return NULL;
    size_t cap = strlen(t) * 24 + 1, o = 0;
    char *out = malloc(cap);
    FZ_CHECK(out != NULL, "out of memory");
    for (size_t i = 0; t[i];) {
        if (t[i] != '$') {
            out[o++] = t[i++];
            continue;
        }
        if (t[i + 1] == '$') {
            out[o++] = '$';
            i += 2;
            continue;
        }
        int braced = t[i + 1] == '{';
        size_t s = i + 1 + (size_t)braced, e = s;
        while (hd_is_ident((unsigned char)t[e]))
            e++;
        if (e == s || (braced && t[e] != '}')) {
            if (braced) {
                free(out);
                return NULL;
            }
            out[o++] = t[i++];
            continue;
        }
        int kind = -1;
        for (int k = HD_CLIENT_IP; k <= HD_LAST; k++)
            if (strlen(hd_var_names[k]) == e - s && memcmp(t + s, hd_var_names[k], e - s) == 0)
                kind = k;
        if (kind < 0) {
            free(out);
            return NULL;
        }
        o += (size_t)sprintf(out + o, "<%s>", hd_var_names[kind]);
        i = e + (size_t)braced;
    }
    out[o] = '\0';
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (api == NULL)
        helios_module_init(&fz_host);
    char *text = strndup((const char *)data, size);
    FZ_CHECK(text != NULL, "out of memory");
    char *want = reference(text);
    hd_value v;
    int rc = hd_compile(NULL, text, &v);
    FZ_CHECK((rc == 0) == (want != NULL), "compile says %d, the rules say %s for '%s'", rc,
             want ? "accept" : "refuse", text);
    if (rc == 0) {
        hd_vars vars;
        fill_vars(&vars);
        const char *got = v.constant ? v.constant : hd_expand(NULL, &v, &vars);
        FZ_CHECK(got != NULL, "no expansion");
        FZ_CHECK(strcmp(got, want) == 0, "'%s' expands to '%s', not '%s'", text, got, want);
        if (v.constant)
            FZ_CHECK(v.constant == text, "a constant that is not the text itself");
        else
            free((void *)got);
    }
    free(v.pieces);
    free(want);
    free(text);
    return 0;
}
