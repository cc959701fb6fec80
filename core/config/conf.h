/*
 * conf.h - the YAML configuration tree.
 *
 * Every node keeps the file, line and column it came from, so any error can
 * name the exact place. A tree owns all its nodes and strings; it also owns
 * the error list that every check on its nodes appends to, so a module's
 * config_new (through the host API) and the core's validator report errors
 * the same way: "file:line:col: key.path: message".
 *
 * Main thread only. Trees are immutable once loaded; the running generation
 * keeps its tree alive for as long as any module config refers to it.
 */
#ifndef HX_CONF_H
#define HX_CONF_H

#include <stddef.h>
#include <stdint.h>

typedef enum hx_conf_kind {
    HX_CONF_NULL = 0, /* "~", "null" or an empty value */
    HX_CONF_SCALAR,
    HX_CONF_MAP,
    HX_CONF_SEQ,
} hx_conf_kind;

typedef struct hx_conf_tree hx_conf_tree;
typedef struct hx_conf_node hx_conf_node;

struct hx_conf_node {
    hx_conf_kind kind;
    hx_conf_tree *tree;   /* owner: arena and error list */
    hx_conf_node *parent; /* NULL for the root */
    const char *key;      /* key in the parent map, or NULL in a sequence */
    size_t index;         /* index in the parent sequence */
    const char *file;     /* path as given on the command line + name */
    unsigned line, col;   /* 1-based */
    const char *scalar;   /* HX_CONF_SCALAR: NUL-terminated value */
    size_t scalar_len;
    int quoted;           /* scalar was quoted ('x' or "x"): never a null/bool */
    size_t n;             /* MAP: pairs; SEQ: items */
    const char **keys;    /* MAP: keys[i] belongs to items[i] */
    hx_conf_node **items; /* MAP values, or SEQ items */
};

/* Creates an empty tree (root is NULL until a file is loaded). */
hx_conf_tree *hx_conf_tree_new(void);
void hx_conf_tree_free(hx_conf_tree *t);
hx_conf_node *hx_conf_root(const hx_conf_tree *t);

/*
 * Loads PATH into T: a directory means every "*.yaml" and "*.yml" file in it
 * (not recursive, hidden files skipped) in lexical (strcmp) order; a file
 * means that file. Each document is merged into the root: maps merge key by
 * key, sequences append, a later scalar replaces an earlier one; a kind
 * conflict (say a map where a sequence was) is an error naming both places.
 * Within one file a duplicate key is an error; anchors/aliases, tags and
 * multi-document files are refused with a clear message. An empty file is
 * fine. Returns 0, or -1 with errors recorded in T.
 */
int hx_conf_load(hx_conf_tree *t, const char *path);
/* Same, from a memory buffer; NAME is used as the file name in messages. */
int hx_conf_load_string(hx_conf_tree *t, const char *name, const char *yaml, size_t len);

/* Error list. hx_conf_error formats "file:line:col: path: message". */
void hx_conf_error(const hx_conf_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* An error that has no node (e.g. cannot open a directory). */
void hx_conf_error_plain(hx_conf_tree *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
size_t hx_conf_error_count(const hx_conf_tree *t);
const char *hx_conf_error_at(const hx_conf_tree *t, size_t i);

/* "upstreams.api.backends[2].weight"; "" for the root. Returns strlen. */
size_t hx_conf_path(const hx_conf_node *n, char *buf, size_t size);

/* Navigation. Lookups return NULL when N is not a map or has no such key. */
hx_conf_node *hx_conf_get(const hx_conf_node *map, const char *key);
const char *hx_conf_kind_name(hx_conf_kind k); /* "map", "sequence", ... */

/*
 * Rejects keys of MAP not in ALLOWED (NULL-terminated): one error per unknown
 * key, at the key's node, with a "did you mean" hint when one allowed key is
 * within edit distance 2. Also errors if MAP is not a map (unless NULL, which
 * is fine and means "no keys"). Returns the number of errors added.
 */
int hx_conf_check_keys(const hx_conf_node *map, const char *const *allowed);
/* The word of ALLOWED (NULL-terminated) closest to WORD within edit
 * distance 2, the first one on a tie; NULL when none is that close. For
 * "did you mean" hints on keys and on enumerated values. */
const char *hx_conf_closest(const char *word, const char *const *allowed);

/*
 * Typed getters on MAP's KEY. Each returns 1 when the key is present and
 * valid (result stored), 0 when it is absent or null (default stored), and
 * -1 after recording an error (wrong type, out of range, malformed). MAP may
 * be NULL (treated as empty). required variants record "missing required
 * key" and return -1 when absent.
 */
int hx_conf_str(const hx_conf_node *map, const char *key, const char *def, const char **out);
int hx_conf_str_req(const hx_conf_node *map, const char *key, const char **out);
int hx_conf_int(const hx_conf_node *map, const char *key, long long def,
                long long min, long long max, long long *out);
int hx_conf_bool(const hx_conf_node *map, const char *key, int def, int *out);
/* "250ms", "10s", "5m", "2h", "1d", combinations "1m30s"; "0" means 0;
 * any other number without a unit is an error. */
int hx_conf_duration_ms(const hx_conf_node *map, const char *key, uint64_t def, uint64_t *out);
/* "512", "64k"/"64K"/"64KB"/"64KiB", "1m"/"1M", "1g"/"1G": powers of 1024. */
int hx_conf_size(const hx_conf_node *map, const char *key, uint64_t def, uint64_t *out);

/* The same parsers on a scalar node itself (used for sequence items). */
int hx_conf_node_int(const hx_conf_node *n, long long min, long long max, long long *out);
int hx_conf_node_bool(const hx_conf_node *n, int *out);
int hx_conf_node_duration_ms(const hx_conf_node *n, uint64_t *out);
int hx_conf_node_size(const hx_conf_node *n, uint64_t *out);
/* Plain string parsers shared with the CLI and tests: 0 ok, -1 malformed. */
int hx_parse_duration_ms(const char *s, uint64_t *out);
int hx_parse_size(const char *s, uint64_t *out);

#endif
