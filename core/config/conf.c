/*
 * conf.c - the YAML configuration tree (see conf.h).
 *
 * Each file is parsed with libyaml's event API into a tree of its own, checked
 * on its own (duplicate keys, aliases, tags, several documents), and merged
 * into the root only when it is clean, so a broken file never leaves half of
 * itself behind. Nodes, strings and error messages all come from the tree's
 * arena, which hx_conf_tree_free releases in one go.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/conf.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

enum {
    ARENA_BLOCK = 16 * 1024,     /* bytes per arena block */
    MAX_DEPTH = 64,              /* nesting cap: keeps recursion bounded */
    PATH_MAX_LEN = 512,          /* key path in messages, truncated beyond */
    SHOWN_VALUE = 48,            /* value bytes quoted in messages */
    HINT_KEY_MAX = 64,           /* longer keys get no "did you mean" */
    MAX_FILE = 16 * 1024 * 1024, /* one configuration file */
    ALLOWED_LIST = 256,          /* "allowed keys: ..." list in messages */
};

/* ---- arena ---- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[]; /* max_align_t keeps every allocation aligned */
} arena_block;

struct hx_conf_tree {
    arena_block *blocks;
    hx_conf_node *root;
    const char **errors; /* messages live in the arena; the array is malloc'd */
    size_t nerrors, errcap;
    int lost_errors; /* out of memory while recording: reported as one more */
};

static void *arena_alloc(hx_conf_tree *t, size_t size)
{
    const size_t align = _Alignof(max_align_t);
    if (size > SIZE_MAX / 2)
        return NULL;
    size = size == 0 ? align : (size + align - 1) & ~(align - 1);

    arena_block *b = t->blocks;
    if (b == NULL || b->cap - b->used < size) {
        int big = size > ARENA_BLOCK / 4;
        size_t cap = big ? size : ARENA_BLOCK;
        arena_block *nb = malloc(sizeof(*nb) + cap);
        if (nb == NULL)
            return NULL;
        nb->used = 0;
        nb->cap = cap;
        /* A big allocation gets a block of its own, kept behind the current
         * one so the space left in the current block is still used. */
        if (big && b != NULL) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            t->blocks = nb;
        }
        b = nb;
    }
    void *p = (unsigned char *)b->data + b->used;
    b->used += size;
    return p;
}

static char *arena_strndup(hx_conf_tree *t, const char *s, size_t len)
{
    char *p = arena_alloc(t, len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

static char *arena_vprintf(hx_conf_tree *t, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static char *arena_vprintf(hx_conf_tree *t, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *p = arena_alloc(t, (size_t)n + 1);
    if (p != NULL)
        vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

static char *arena_printf(hx_conf_tree *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static char *arena_printf(hx_conf_tree *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = arena_vprintf(t, fmt, ap);
    va_end(ap);
    return p;
}

/* ---- tree and nodes ---- */

/* The public node plus what only this file needs. */
typedef struct conf_node {
    hx_conf_node pub;
    unsigned key_line, key_col; /* where the key was written; 0 when not in a map */
    size_t cap;                 /* allocated length of keys/items */
} conf_node;

static conf_node *priv(const hx_conf_node *n)
{
    return (conf_node *)n;
}

hx_conf_tree *hx_conf_tree_new(void)
{
    return calloc(1, sizeof(hx_conf_tree));
}

void hx_conf_tree_free(hx_conf_tree *t)
{
    if (t == NULL)
        return;
    arena_block *b = t->blocks;
    while (b != NULL) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(t->errors);
    free(t);
}

hx_conf_node *hx_conf_root(const hx_conf_tree *t)
{
    return t != NULL ? t->root : NULL;
}

const char *hx_conf_kind_name(hx_conf_kind k)
{
    switch (k) {
    case HX_CONF_NULL:
        return "null";
    case HX_CONF_SCALAR:
        return "scalar";
    case HX_CONF_MAP:
        return "map";
    case HX_CONF_SEQ:
        return "sequence";
    }
    return "unknown";
}

/* "a map", "an empty value": for "expected X, got Y" messages. */
static const char *a_kind(hx_conf_kind k)
{
    switch (k) {
    case HX_CONF_NULL:
        return "an empty value";
    case HX_CONF_SCALAR:
        return "a scalar";
    case HX_CONF_MAP:
        return "a map";
    case HX_CONF_SEQ:
        return "a sequence";
    }
    return "an unknown kind of node";
}

static hx_conf_node *node_new(hx_conf_tree *t, hx_conf_kind kind, const char *file,
                              const yaml_mark_t *mark, hx_conf_node *parent, const char *key,
                              size_t index)
{
    conf_node *c = arena_alloc(t, sizeof(*c));
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    hx_conf_node *n = &c->pub;
    n->kind = kind;
    n->tree = t;
    n->parent = parent;
    n->key = key;
    n->index = index;
    n->file = file;
    n->line = (unsigned)mark->line + 1;
    n->col = (unsigned)mark->column + 1;
    return n;
}

/* Appends ITEM (under KEY when N is a map); growth doubles, so the arena
 * space left behind by old arrays stays below what is in use. */
static int node_push(hx_conf_node *n, const char *key, hx_conf_node *item)
{
    conf_node *c = priv(n);
    if (n->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        if (cap > SIZE_MAX / sizeof(void *))
            return -1;
        hx_conf_node **items = arena_alloc(n->tree, cap * sizeof(*items));
        if (items == NULL)
            return -1;
        if (n->n > 0)
            memcpy(items, n->items, n->n * sizeof(*items));
        if (n->kind == HX_CONF_MAP) {
            const char **keys = arena_alloc(n->tree, cap * sizeof(*keys));
            if (keys == NULL)
                return -1;
            if (n->n > 0)
                memcpy(keys, n->keys, n->n * sizeof(*keys));
            n->keys = keys;
        }
        n->items = items;
        c->cap = cap;
    }
    if (n->kind == HX_CONF_MAP)
        n->keys[n->n] = key;
    n->items[n->n] = item;
    n->n++;
    return 0;
}

hx_conf_node *hx_conf_get(const hx_conf_node *map, const char *key)
{
    if (map == NULL || map->kind != HX_CONF_MAP || key == NULL)
        return NULL;
    for (size_t i = 0; i < map->n; i++) {
        if (strcmp(map->keys[i], key) == 0)
            return map->items[i];
    }
    return NULL;
}

/* ---- key paths ---- */

typedef struct sbuf {
    char *buf;
    size_t size, len; /* len < size whenever size > 0 */
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->size == 0)
        return;
    size_t room = b->size - 1 - b->len;
    if (n > room)
        n = room;
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Keys that would make the dotted path ambiguous are written ["like.this"]. */
static int key_is_plain(const char *k)
{
    if (*k == '\0')
        return 0;
    for (const char *p = k; *p; p++) {
        if (*p == '.' || *p == '[' || *p == ']' || *p == '"' || *p == ' ' ||
            (unsigned char)*p < 0x20)
            return 0;
    }
    return 1;
}

static void path_build(const hx_conf_node *n, sbuf *b)
{
    if (n->parent == NULL)
        return;
    path_build(n->parent, b);
    if (n->parent->kind == HX_CONF_SEQ) {
        char idx[32];
        snprintf(idx, sizeof(idx), "[%zu]", n->index);
        sb_puts(b, idx);
    } else if (n->key != NULL && key_is_plain(n->key)) {
        if (b->len > 0)
            sb_puts(b, ".");
        sb_puts(b, n->key);
    } else {
        sb_puts(b, "[\"");
        sb_puts(b, n->key != NULL ? n->key : "");
        sb_puts(b, "\"]");
    }
}

size_t hx_conf_path(const hx_conf_node *n, char *buf, size_t size)
{
    sbuf b = {buf, size, 0};
    if (size == 0)
        return 0;
    buf[0] = '\0';
    if (n != NULL)
        path_build(n, &b);
    return b.len;
}

/* ---- errors ---- */

static void push_error(hx_conf_tree *t, const char *msg)
{
    if (msg == NULL) {
        t->lost_errors = 1;
        return;
    }
    if (t->nerrors == t->errcap) {
        size_t cap = t->errcap ? t->errcap * 2 : 8;
        const char **e = realloc(t->errors, cap * sizeof(*e));
        if (e == NULL) {
            t->lost_errors = 1;
            return;
        }
        t->errors = e;
        t->errcap = cap;
    }
    t->errors[t->nerrors++] = msg;
}

/* "file:line:col: path: message", with the position given separately so a
 * key's own position can be used instead of its value's. */
static void verror_at(const hx_conf_node *n, unsigned line, unsigned col, const char *fmt,
                      va_list ap) __attribute__((format(printf, 4, 0)));
static void verror_at(const hx_conf_node *n, unsigned line, unsigned col, const char *fmt,
                      va_list ap)
{
    hx_conf_tree *t = n->tree;
    char path[PATH_MAX_LEN];
    hx_conf_path(n, path, sizeof(path));
    char *msg = arena_vprintf(t, fmt, ap);
    if (msg == NULL) {
        t->lost_errors = 1;
        return;
    }
    push_error(
        t, arena_printf(t, "%s:%u:%u: %s%s%s", n->file, line, col, path, path[0] ? ": " : "", msg));
}

void hx_conf_error(const hx_conf_node *n, const char *fmt, ...)
{
    if (n == NULL || n->tree == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    verror_at(n, n->line, n->col, fmt, ap);
    va_end(ap);
}

/* Same, at the position of N's key when it has one (unknown/duplicate keys). */
static void key_error(const hx_conf_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void key_error(const hx_conf_node *n, const char *fmt, ...)
{
    const conf_node *c = priv(n);
    va_list ap;
    va_start(ap, fmt);
    if (c->key_line != 0)
        verror_at(n, c->key_line, c->key_col, fmt, ap);
    else
        verror_at(n, n->line, n->col, fmt, ap);
    va_end(ap);
}

void hx_conf_error_plain(hx_conf_tree *t, const char *fmt, ...)
{
    if (t == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    push_error(t, arena_vprintf(t, fmt, ap));
    va_end(ap);
}

size_t hx_conf_error_count(const hx_conf_tree *t)
{
    if (t == NULL)
        return 0;
    return t->nerrors + (t->lost_errors ? 1 : 0);
}

const char *hx_conf_error_at(const hx_conf_tree *t, size_t i)
{
    if (t == NULL)
        return NULL;
    if (i < t->nerrors)
        return t->errors[i];
    if (i == t->nerrors && t->lost_errors)
        return "out of memory: some configuration errors could not be recorded";
    return NULL;
}

/* ---- parsing one file ---- */

typedef struct loader {
    hx_conf_tree *t;
    const char *file; /* arena copy shared by every node of the file */
    const char *buf;  /* the input, to turn a byte offset into line:col */
    size_t len;
    yaml_parser_t parser;
    int fatal; /* syntax error or out of memory: stop reading this file */
} loader;

static void oom(loader *L)
{
    if (!L->fatal)
        hx_conf_error_plain(L->t, "%s: out of memory while loading the configuration", L->file);
    L->fatal = 1;
}

static void syntax_error(loader *L)
{
    yaml_parser_t *p = &L->parser;
    if (p->error == YAML_MEMORY_ERROR) {
        oom(L);
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        /* Encoding problems carry a byte offset, not a mark. */
        unsigned line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < L->len; i++) {
            if (L->buf[i] == '\n') {
                line++;
                col = 1;
            } else if (((unsigned char)L->buf[i] & 0xC0) != 0x80) {
                col++;
            }
        }
        if (p->problem_value != -1)
            hx_conf_error_plain(
                L->t, "%s:%u:%u: invalid input: %s (byte 0x%02X); the file must be UTF-8 text",
                L->file, line, col, p->problem, (unsigned)p->problem_value);
        else
            hx_conf_error_plain(L->t, "%s:%u:%u: invalid input: %s; the file must be UTF-8 text",
                                L->file, line, col, p->problem);
        L->fatal = 1;
        return;
    }
    const char *problem = p->problem != NULL ? p->problem : "unknown error";
    if (p->context != NULL)
        hx_conf_error_plain(L->t, "%s:%zu:%zu: YAML syntax error: %s (%s at line %zu column %zu)",
                            L->file, p->problem_mark.line + 1, p->problem_mark.column + 1, problem,
                            p->context, p->context_mark.line + 1, p->context_mark.column + 1);
    else
        hx_conf_error_plain(L->t, "%s:%zu:%zu: YAML syntax error: %s", L->file,
                            p->problem_mark.line + 1, p->problem_mark.column + 1, problem);
    L->fatal = 1;
}

static int next_event(loader *L, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&L->parser, ev)) {
        syntax_error(L);
        return -1;
    }
    return 0;
}

/* "!!str" reads better than libyaml's expanded "tag:yaml.org,2002:str". */
static const char *show_tag(const yaml_char_t *tag, char *buf, size_t size)
{
    static const char core[] = "tag:yaml.org,2002:";
    const char *s = (const char *)tag;
    if (strncmp(s, core, sizeof(core) - 1) == 0)
        snprintf(buf, size, "!!%s", s + sizeof(core) - 1);
    else
        snprintf(buf, size, "%s", s);
    return buf;
}

/* Anchors and tags would make the file mean something other than what the
 * tree shows (shared nodes, typed values), so both are refused. */
static void check_props(const hx_conf_node *n, const yaml_char_t *anchor, const yaml_char_t *tag,
                        int at_key)
{
#define ANCHOR_MSG "anchors (&%s) are not supported; repeat the value where it is needed"
#define TAG_MSG "tags (%s) are not supported; write the plain value, quoted if it must be a string"
    char shown_tag[128];
    if (anchor != NULL && at_key)
        key_error(n, ANCHOR_MSG, (const char *)anchor);
    else if (anchor != NULL)
        hx_conf_error(n, ANCHOR_MSG, (const char *)anchor);
    if (tag != NULL && at_key)
        key_error(n, TAG_MSG, show_tag(tag, shown_tag, sizeof(shown_tag)));
    else if (tag != NULL)
        hx_conf_error(n, TAG_MSG, show_tag(tag, shown_tag, sizeof(shown_tag)));
#undef ANCHOR_MSG
#undef TAG_MSG
}

static int is_null_text(const char *s)
{
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static hx_conf_node *parse_node(loader *L, yaml_event_t *ev, hx_conf_node *parent, const char *key,
                                size_t index, unsigned depth);

static hx_conf_node *parse_scalar(loader *L, yaml_event_t *ev, hx_conf_node *parent,
                                  const char *key, size_t index)
{
    const char *value = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    /* Quoted and block (| >) scalars are written as text on purpose: they are
     * never null or booleans. */
    int quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    hx_conf_kind kind = !quoted && is_null_text(value) ? HX_CONF_NULL : HX_CONF_SCALAR;

    hx_conf_node *n = node_new(L->t, kind, L->file, &ev->start_mark, parent, key, index);
    char *copy = n != NULL ? arena_strndup(L->t, value, len) : NULL;
    if (copy == NULL) {
        oom(L);
        return NULL;
    }
    n->scalar = copy;
    n->scalar_len = len;
    n->quoted = quoted;
    check_props(n, ev->data.scalar.anchor, ev->data.scalar.tag, 0);
    if (memchr(value, '\0', len) != NULL)
        hx_conf_error(n, "the value contains a NUL character, which is not allowed");
    return n;
}

static int parse_seq(loader *L, hx_conf_node *n, unsigned depth)
{
    for (;;) {
        yaml_event_t ev;
        if (next_event(L, &ev) < 0)
            return -1;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        hx_conf_node *item = parse_node(L, &ev, n, NULL, n->n, depth + 1);
        if (item == NULL)
            return -1;
        if (node_push(n, NULL, item) < 0) {
            oom(L);
            return -1;
        }
    }
}

static int parse_map(loader *L, hx_conf_node *n, unsigned depth)
{
    for (;;) {
        yaml_event_t kev, vev;
        if (next_event(L, &kev) < 0)
            return -1;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }

        if (kev.type != YAML_SCALAR_EVENT) {
            /* A complex key ("? [a, b]") or an alias: consume it and its
             * value so later errors in the file are still found. */
            int complex = kev.type != YAML_ALIAS_EVENT;
            hx_conf_node *k = parse_node(L, &kev, n, "?", 0, depth + 1);
            if (k == NULL)
                return -1;
            if (complex)
                hx_conf_error(k, "%s cannot be used as a key; keys must be plain strings",
                              a_kind(k->kind));
            if (next_event(L, &vev) < 0 || parse_node(L, &vev, n, "?", 0, depth + 1) == NULL)
                return -1;
            continue;
        }

        const char *key =
            arena_strndup(L->t, (const char *)kev.data.scalar.value, kev.data.scalar.length);
        if (key == NULL) {
            yaml_event_delete(&kev);
            oom(L);
            return -1;
        }
        unsigned kline = (unsigned)kev.start_mark.line + 1;
        unsigned kcol = (unsigned)kev.start_mark.column + 1;
        yaml_char_t *kanchor = kev.data.scalar.anchor, *ktag = kev.data.scalar.tag;

        if (next_event(L, &vev) < 0) {
            yaml_event_delete(&kev);
            return -1;
        }
        hx_conf_node *v = parse_node(L, &vev, n, key, 0, depth + 1);
        if (v == NULL) {
            yaml_event_delete(&kev);
            return -1;
        }
        priv(v)->key_line = kline;
        priv(v)->key_col = kcol;
        check_props(v, kanchor, ktag, 1);
        yaml_event_delete(&kev);

        hx_conf_node *first = hx_conf_get(n, key);
        if (first != NULL) {
            key_error(v,
                      "duplicate key \"%s\"; it is already set at line %u column %u of this file",
                      key, priv(first)->key_line, priv(first)->key_col);
            continue;
        }
        if (node_push(n, key, v) < 0) {
            oom(L);
            return -1;
        }
    }
}

/* Takes ownership of EV; reads the events of a whole collection. Returns NULL
 * only when the file cannot be read further (L->fatal). */
static hx_conf_node *parse_node(loader *L, yaml_event_t *ev, hx_conf_node *parent, const char *key,
                                size_t index, unsigned depth)
{
    hx_conf_node *n = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n = parse_scalar(L, ev, parent, key, index);
        break;
    case YAML_ALIAS_EVENT:
        n = node_new(L->t, HX_CONF_NULL, L->file, &ev->start_mark, parent, key, index);
        if (n == NULL)
            oom(L);
        else
            hx_conf_error(n, "aliases (*%s) are not supported; write the value out in full",
                          (const char *)ev->data.alias.anchor);
        break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        n = node_new(L->t, is_map ? HX_CONF_MAP : HX_CONF_SEQ, L->file, &ev->start_mark, parent,
                     key, index);
        if (n == NULL) {
            oom(L);
            break;
        }
        if (is_map)
            check_props(n, ev->data.mapping_start.anchor, ev->data.mapping_start.tag, 0);
        else
            check_props(n, ev->data.sequence_start.anchor, ev->data.sequence_start.tag, 0);
        if (depth >= MAX_DEPTH) {
            hx_conf_error(n, "nesting is deeper than %d levels", MAX_DEPTH);
            L->fatal = 1;
            n = NULL;
            break;
        }
        yaml_event_delete(ev);
        if ((is_map ? parse_map(L, n, depth) : parse_seq(L, n, depth)) < 0)
            return NULL;
        return n;
    }
    default:
        hx_conf_error_plain(L->t, "%s:%zu:%zu: YAML syntax error: unexpected event %d", L->file,
                            ev->start_mark.line + 1, ev->start_mark.column + 1, (int)ev->type);
        L->fatal = 1;
        break;
    }
    yaml_event_delete(ev);
    return n;
}

/* Parses one file into *DOC (NULL when the file holds no document). */
static void parse_file(loader *L, hx_conf_node **doc)
{
    yaml_event_t ev;
    *doc = NULL;
    if (next_event(L, &ev) < 0)
        return;
    yaml_event_delete(&ev); /* STREAM-START */
    if (next_event(L, &ev) < 0)
        return;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        return;
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (next_event(L, &ev) < 0)
        return;
    *doc = parse_node(L, &ev, NULL, NULL, 0, 0);
    if (*doc == NULL || next_event(L, &ev) < 0)
        return;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if (next_event(L, &ev) < 0)
        return;
    if (ev.type == YAML_DOCUMENT_START_EVENT)
        hx_conf_error_plain(L->t,
                            "%s:%zu:%zu: a second YAML document starts here; only one document "
                            "per file is supported (split it into two files)",
                            L->file, ev.start_mark.line + 1, ev.start_mark.column + 1);
    yaml_event_delete(&ev);
}

/* ---- merging ---- */

static void replace(hx_conf_node **slot, hx_conf_node *src)
{
    hx_conf_node *dst = *slot;
    src->parent = dst->parent;
    src->key = dst->key;
    src->index = dst->index;
    *slot = src;
}

static void merge(hx_conf_node **slot, hx_conf_node *src);

static void merge_maps(hx_conf_node *dst, hx_conf_node *src)
{
    for (size_t i = 0; i < src->n; i++) {
        hx_conf_node *item = src->items[i];
        size_t j = 0;
        while (j < dst->n && strcmp(dst->keys[j], src->keys[i]) != 0)
            j++;
        if (j < dst->n) {
            merge(&dst->items[j], item);
            continue;
        }
        item->parent = dst;
        if (node_push(dst, src->keys[i], item) < 0)
            hx_conf_error_plain(dst->tree, "out of memory while merging the configuration");
    }
}

static void append_seq(hx_conf_node *dst, hx_conf_node *src)
{
    for (size_t i = 0; i < src->n; i++) {
        hx_conf_node *item = src->items[i];
        item->parent = dst;
        item->index = dst->n;
        if (node_push(dst, NULL, item) < 0)
            hx_conf_error_plain(dst->tree, "out of memory while merging the configuration");
    }
}

/*
 * Merges SRC (a later file) into *SLOT. An empty later value leaves a map or
 * sequence as it was (a file may list a section with every entry commented
 * out) and replaces a scalar; anything may fill an earlier empty value.
 */
static void merge(hx_conf_node **slot, hx_conf_node *src)
{
    hx_conf_node *dst = *slot;
    if (dst->kind == HX_CONF_MAP && src->kind == HX_CONF_MAP) {
        merge_maps(dst, src);
    } else if (dst->kind == HX_CONF_SEQ && src->kind == HX_CONF_SEQ) {
        append_seq(dst, src);
    } else if (src->kind == HX_CONF_NULL &&
               (dst->kind == HX_CONF_MAP || dst->kind == HX_CONF_SEQ)) {
        return;
    } else if (dst->kind == HX_CONF_NULL ||
               (dst->kind == HX_CONF_SCALAR &&
                (src->kind == HX_CONF_SCALAR || src->kind == HX_CONF_NULL))) {
        replace(slot, src);
    } else {
        hx_conf_error(src,
                      "this %s conflicts with the %s at %s:%u:%u; a later file may extend a map "
                      "or a sequence or replace a scalar, but not change its kind",
                      hx_conf_kind_name(src->kind), hx_conf_kind_name(dst->kind), dst->file,
                      dst->line, dst->col);
    }
}

int hx_conf_load_string(hx_conf_tree *t, const char *name, const char *yaml, size_t len)
{
    if (t == NULL)
        return -1;
    size_t before = hx_conf_error_count(t);
    if (name == NULL)
        name = "(string)";
    loader L = {.t = t, .buf = yaml, .len = len};
    L.file = arena_strndup(t, name, strlen(name));
    if (L.file == NULL || !yaml_parser_initialize(&L.parser)) {
        hx_conf_error_plain(t, "%s: out of memory while loading the configuration", name);
        return -1;
    }
    yaml_parser_set_input_string(&L.parser, (const unsigned char *)(yaml != NULL ? yaml : ""),
                                 yaml != NULL ? len : 0);
    hx_conf_node *doc = NULL;
    parse_file(&L, &doc);
    yaml_parser_delete(&L.parser);

    /* A file with any error is left out whole; "---" alone is an empty file. */
    if (hx_conf_error_count(t) == before && doc != NULL && doc->kind != HX_CONF_NULL) {
        if (t->root == NULL)
            t->root = doc;
        else
            merge(&t->root, doc);
    }
    return hx_conf_error_count(t) == before ? 0 : -1;
}

/* ---- files and directories ---- */

static void load_file(hx_conf_tree *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        hx_conf_error_plain(t, "%s: cannot open: %s", path, strerror(errno));
        return;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int err = 0;
    while (buf != NULL) {
        if (len == cap) {
            if (cap >= MAX_FILE) {
                hx_conf_error_plain(
                    t, "%s: file is larger than %d MiB, the cap for a configuration file", path,
                    MAX_FILE / (1024 * 1024));
                err = 1;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                hx_conf_error_plain(t, "%s: cannot read: %s", path, strerror(errno));
                err = 1;
            }
            break;
        }
    }
    fclose(f);
    if (buf == NULL)
        hx_conf_error_plain(t, "%s: out of memory while reading the file", path);
    else if (!err)
        hx_conf_load_string(t, path, buf, len);
    free(buf);
}

static int is_yaml_name(const char *name)
{
    size_t n = strlen(name);
    if (name[0] == '.')
        return 0;
    return (n > 5 && strcmp(name + n - 5, ".yaml") == 0) ||
           (n > 4 && strcmp(name + n - 4, ".yml") == 0);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_dir(hx_conf_tree *t, const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        hx_conf_error_plain(t, "%s: cannot open directory: %s", dir, strerror(errno));
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int failed = 0; /* 1: read error (reported), 2: out of memory */
    struct dirent *de;
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                hx_conf_error_plain(t, "%s: cannot read directory: %s", dir, strerror(errno));
                failed = 1;
            }
            break;
        }
        if (!is_yaml_name(de->d_name))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nn = realloc(names, ncap * sizeof(*nn));
            if (nn == NULL) {
                failed = 2;
                break;
            }
            names = nn;
            cap = ncap;
        }
        size_t len = strlen(de->d_name);
        names[n] = malloc(len + 1);
        if (names[n] == NULL) {
            failed = 2;
            break;
        }
        memcpy(names[n++], de->d_name, len + 1);
    }
    closedir(d);

    if (failed == 2)
        hx_conf_error_plain(t, "%s: out of memory while listing the directory", dir);
    if (!failed && n == 0)
        hx_conf_error_plain(
            t, "no *.yaml files in %s (*.yml files count too; hidden files are skipped)", dir);
    if (!failed && n > 0) {
        qsort(names, n, sizeof(*names), cmp_names);
        size_t dlen = strlen(dir);
        const char *sep = dlen > 0 && dir[dlen - 1] == '/' ? "" : "/";
        for (size_t i = 0; i < n; i++) {
            char *path = arena_printf(t, "%s%s%s", dir, sep, names[i]);
            if (path == NULL) {
                hx_conf_error_plain(t, "%s: out of memory while loading", dir);
                break;
            }
            load_file(t, path);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int hx_conf_load(hx_conf_tree *t, const char *path)
{
    if (t == NULL || path == NULL)
        return -1;
    size_t before = hx_conf_error_count(t);
    struct stat st;
    if (stat(path, &st) != 0)
        hx_conf_error_plain(t, "%s: cannot open: %s", path, strerror(errno));
    else if (S_ISDIR(st.st_mode))
        load_dir(t, path);
    else
        load_file(t, path);
    return hx_conf_error_count(t) == before ? 0 : -1;
}

/* ---- check_keys ---- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[HINT_KEY_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const char *hx_conf_closest(const char *key, const char *const *allowed)
{
    const char *best = NULL;
    size_t best_d = 3, lk = strlen(key);
    if (lk > HINT_KEY_MAX)
        return NULL;
    for (size_t i = 0; allowed[i] != NULL; i++) {
        size_t la = strlen(allowed[i]);
        if (la > HINT_KEY_MAX || (la > lk ? la - lk : lk - la) > 2)
            continue;
        size_t d = edit_distance(key, allowed[i]);
        if (d < best_d) {
            best_d = d;
            best = allowed[i];
        }
    }
    return best;
}

int hx_conf_check_keys(const hx_conf_node *map, const char *const *allowed)
{
    static const char *const none[] = {NULL};
    if (map == NULL || map->kind == HX_CONF_NULL)
        return 0;
    if (map->kind != HX_CONF_MAP) {
        hx_conf_error(map, "expected a map, got %s", a_kind(map->kind));
        return 1;
    }
    if (allowed == NULL)
        allowed = none;

    int errors = 0;
    for (size_t i = 0; i < map->n; i++) {
        const char *key = map->keys[i];
        size_t j = 0;
        while (allowed[j] != NULL && strcmp(allowed[j], key) != 0)
            j++;
        if (allowed[j] != NULL)
            continue;
        errors++;
        const char *hint = hx_conf_closest(key, allowed);
        if (hint != NULL) {
            key_error(map->items[i], "unknown key \"%s\" (did you mean \"%s\"?)", key, hint);
            continue;
        }
        char list[ALLOWED_LIST];
        sbuf b = {list, sizeof(list), 0};
        list[0] = '\0';
        for (j = 0; allowed[j] != NULL; j++) {
            if (b.len + strlen(allowed[j]) + 6 >= sizeof(list)) {
                sb_puts(&b, ", ...");
                break;
            }
            if (j > 0)
                sb_puts(&b, ", ");
            sb_puts(&b, allowed[j]);
        }
        if (allowed[0] == NULL)
            key_error(map->items[i], "unknown key \"%s\"; no keys are allowed here", key);
        else
            key_error(map->items[i], "unknown key \"%s\"; allowed keys: %s", key, list);
    }
    return errors;
}

/* ---- value parsers ---- */

enum parse_result { PARSE_OK, PARSE_BAD, PARSE_NEGATIVE, PARSE_NO_UNIT, PARSE_OVERFLOW };

/* Reads decimal digits at *P into *V; returns the digit count, 0 if none.
 * Saturates at UINT64_MAX and sets *OVERFLOW. */
static size_t read_digits(const char **p, uint64_t *v, int *overflow)
{
    const char *s = *p;
    *v = 0;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        if (*v > (UINT64_MAX - d) / 10) {
            *overflow = 1;
            *v = UINT64_MAX;
        } else {
            *v = *v * 10 + d;
        }
        s++;
    }
    size_t n = (size_t)(s - *p);
    *p = s;
    return n;
}

static enum parse_result parse_duration(const char *s, uint64_t *out)
{
    /* Largest unit first: each may appear once, in this order ("1h30m"). */
    static const struct {
        const char *name;
        uint64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"ms", 1}, {"m", 60000}, {"s", 1000}};
    static const int rank[] = {0, 1, 4, 2, 3}; /* order of units[] by size */

    if (s == NULL || *s == '\0')
        return PARSE_BAD;
    if (*s == '-')
        return PARSE_NEGATIVE;
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return PARSE_OK;
    }
    uint64_t total = 0;
    int overflow = 0, next_rank = 0;
    const char *p = s;
    while (*p != '\0') {
        uint64_t v;
        if (read_digits(&p, &v, &overflow) == 0)
            return PARSE_BAD;
        if (*p == '\0')
            return PARSE_NO_UNIT;
        size_t u = 0, nunits = sizeof(units) / sizeof(units[0]);
        while (u < nunits && strncmp(p, units[u].name, strlen(units[u].name)) != 0)
            u++;
        if (u == nunits || rank[u] < next_rank)
            return PARSE_BAD;
        next_rank = rank[u] + 1;
        p += strlen(units[u].name);
        if (v > UINT64_MAX / units[u].ms)
            overflow = 1;
        else if (total > UINT64_MAX - v * units[u].ms)
            overflow = 1;
        else
            total += v * units[u].ms;
    }
    if (overflow)
        return PARSE_OVERFLOW;
    *out = total;
    return PARSE_OK;
}

static enum parse_result parse_size(const char *s, uint64_t *out)
{
    if (s == NULL || *s == '\0')
        return PARSE_BAD;
    if (*s == '-')
        return PARSE_NEGATIVE;
    const char *p = s;
    uint64_t v;
    int overflow = 0;
    if (read_digits(&p, &v, &overflow) == 0)
        return PARSE_BAD;
    unsigned shift = 0;
    switch (*p) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    }
    if (shift != 0) {
        p++;
        if (strcmp(p, "B") != 0 && strcmp(p, "iB") != 0 && *p != '\0')
            return PARSE_BAD;
    } else if (strcmp(p, "B") != 0 && *p != '\0') {
        return PARSE_BAD;
    }
    if (overflow || v > (UINT64_MAX >> shift))
        return PARSE_OVERFLOW;
    *out = v << shift;
    return PARSE_OK;
}

int hx_parse_duration_ms(const char *s, uint64_t *out)
{
    uint64_t v;
    if (parse_duration(s, &v) != PARSE_OK)
        return -1;
    *out = v;
    return 0;
}

int hx_parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    if (parse_size(s, &v) != PARSE_OK)
        return -1;
    *out = v;
    return 0;
}

/* Strict decimal: optional sign, no leading zeros (0644 is not octal here,
 * and silently reading it as 644 would be worse than refusing it). */
static enum parse_result parse_int(const char *s, long long *out)
{
    const char *p = s;
    int neg = 0;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (p[0] == '0' && p[1] != '\0')
        return PARSE_BAD;
    uint64_t v;
    int overflow = 0;
    if (read_digits(&p, &v, &overflow) == 0 || *p != '\0')
        return PARSE_BAD;
    if (overflow || v > (uint64_t)LLONG_MAX + (neg ? 1u : 0u))
        return PARSE_OVERFLOW;
    if (neg)
        *out = v == (uint64_t)LLONG_MAX + 1u ? LLONG_MIN : -(long long)v;
    else
        *out = (long long)v;
    return PARSE_OK;
}

/* "\"heavy\"" or "a map": what the user wrote, kept short and printable. */
static const char *shown(const hx_conf_node *n, char *buf, size_t size)
{
    if (n->kind != HX_CONF_SCALAR) {
        snprintf(buf, size, "%s", a_kind(n->kind));
        return buf;
    }
    sbuf b = {buf, size, 0};
    buf[0] = '\0';
    sb_puts(&b, "\"");
    size_t i;
    for (i = 0; i < n->scalar_len && i < SHOWN_VALUE; i++) {
        char c = (unsigned char)n->scalar[i] < 0x20 ? '?' : n->scalar[i];
        sb_put(&b, &c, 1);
    }
    sb_puts(&b, i < n->scalar_len ? "...\"" : "\"");
    return buf;
}

enum { SHOWN_BUF = SHOWN_VALUE + 32 };

int hx_conf_node_int(const hx_conf_node *n, long long min, long long max, long long *out)
{
    if (n == NULL || n->kind == HX_CONF_NULL)
        return 0;
    long long v = 0;
    enum parse_result r = n->kind == HX_CONF_SCALAR ? parse_int(n->scalar, &v) : PARSE_BAD;
    if (r == PARSE_OK && v >= min && v <= max) {
        *out = v;
        return 1;
    }
    char expect[96], got[SHOWN_BUF];
    if (min == LLONG_MIN && max == LLONG_MAX)
        snprintf(expect, sizeof(expect), "an integer");
    else if (max == LLONG_MAX)
        snprintf(expect, sizeof(expect), "an integer of at least %lld", min);
    else if (min == LLONG_MIN)
        snprintf(expect, sizeof(expect), "an integer of at most %lld", max);
    else
        snprintf(expect, sizeof(expect), "an integer between %lld and %lld", min, max);
    hx_conf_error(n, "expected %s, got %s", expect, shown(n, got, sizeof(got)));
    return -1;
}

int hx_conf_node_bool(const hx_conf_node *n, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    if (n == NULL || n->kind == HX_CONF_NULL)
        return 0;
    if (n->kind == HX_CONF_SCALAR) {
        for (size_t i = 0; i < 3; i++) {
            int v;
            if (strcasecmp(n->scalar, yes[i]) == 0)
                v = 1;
            else if (strcasecmp(n->scalar, no[i]) == 0)
                v = 0;
            else
                continue;
            if (n->quoted) {
                hx_conf_error(n,
                              "expected true or false without quotes, got the quoted string "
                              "\"%s\"; remove the quotes",
                              n->scalar);
                return -1;
            }
            *out = v;
            return 1;
        }
    }
    char got[SHOWN_BUF];
    hx_conf_error(n, "expected true or false (or yes/no, on/off), got %s",
                  shown(n, got, sizeof(got)));
    return -1;
}

int hx_conf_node_duration_ms(const hx_conf_node *n, uint64_t *out)
{
    if (n == NULL || n->kind == HX_CONF_NULL)
        return 0;
    uint64_t v = 0;
    enum parse_result r = n->kind == HX_CONF_SCALAR ? parse_duration(n->scalar, &v) : PARSE_BAD;
    if (r == PARSE_OK) {
        *out = v;
        return 1;
    }
    char got[SHOWN_BUF];
    const char *why = r == PARSE_NO_UNIT    ? " (a number needs a unit: ms, s, m, h or d)"
                      : r == PARSE_NEGATIVE ? " (durations cannot be negative)"
                      : r == PARSE_OVERFLOW ? " (too large)"
                                            : "";
    hx_conf_error(n, "expected a duration such as 250ms, 10s, 5m, 1h30m, 1d or 0, got %s%s",
                  shown(n, got, sizeof(got)), why);
    return -1;
}

int hx_conf_node_size(const hx_conf_node *n, uint64_t *out)
{
    if (n == NULL || n->kind == HX_CONF_NULL)
        return 0;
    uint64_t v = 0;
    enum parse_result r = n->kind == HX_CONF_SCALAR ? parse_size(n->scalar, &v) : PARSE_BAD;
    if (r == PARSE_OK) {
        *out = v;
        return 1;
    }
    char got[SHOWN_BUF];
    const char *why = r == PARSE_NEGATIVE   ? " (sizes cannot be negative)"
                      : r == PARSE_OVERFLOW ? " (too large)"
                                            : "";
    hx_conf_error(n,
                  "expected a size in bytes such as 512, 64k, 16M or 1G (k, m, g are powers of "
                  "1024), got %s%s",
                  shown(n, got, sizeof(got)), why);
    return -1;
}

/* ---- getters on a map's key ----
 * Each stores the default first, so *OUT holds it after a -1 as well. */

int hx_conf_str(const hx_conf_node *map, const char *key, const char *def, const char **out)
{
    *out = def;
    const hx_conf_node *n = hx_conf_get(map, key);
    if (n == NULL || n->kind == HX_CONF_NULL)
        return 0;
    if (n->kind != HX_CONF_SCALAR) {
        hx_conf_error(n, "expected a string, got %s", a_kind(n->kind));
        return -1;
    }
    *out = n->scalar;
    return 1;
}

/* A NULL MAP has no tree to record in: the caller, which holds the parent
 * node, reports the missing section itself. */
int hx_conf_str_req(const hx_conf_node *map, const char *key, const char **out)
{
    int r = hx_conf_str(map, key, NULL, out);
    if (r != 0)
        return r;
    const hx_conf_node *n = hx_conf_get(map, key);
    if (n != NULL)
        hx_conf_error(n, "a value is required here");
    else if (map != NULL && (map->kind == HX_CONF_MAP || map->kind == HX_CONF_NULL))
        hx_conf_error(map, "missing required key \"%s\"", key);
    else if (map != NULL)
        hx_conf_error(map, "expected a map with the required key \"%s\", got %s", key,
                      a_kind(map->kind));
    return -1;
}

int hx_conf_int(const hx_conf_node *map, const char *key, long long def, long long min,
                long long max, long long *out)
{
    *out = def;
    return hx_conf_node_int(hx_conf_get(map, key), min, max, out);
}

int hx_conf_bool(const hx_conf_node *map, const char *key, int def, int *out)
{
    *out = def;
    return hx_conf_node_bool(hx_conf_get(map, key), out);
}

int hx_conf_duration_ms(const hx_conf_node *map, const char *key, uint64_t def, uint64_t *out)
{
    *out = def;
    return hx_conf_node_duration_ms(hx_conf_get(map, key), out);
}

int hx_conf_size(const hx_conf_node *map, const char *key, uint64_t def, uint64_t *out)
{
    *out = def;
    return hx_conf_node_size(hx_conf_get(map, key), out);
}
