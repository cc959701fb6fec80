/*
 * test_conf.c - the YAML configuration tree: loading, merging, refusals,
 * error messages and every typed getter.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/conf.h"
#include "hx_test.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---- */

static hx_conf_tree *load(const char *yaml, int *rc)
{
    hx_conf_tree *t = hx_conf_tree_new();
    int r = hx_conf_load_string(t, "t.yaml", yaml, strlen(yaml));
    if (rc != NULL)
        *rc = r;
    return t;
}

/* The tree of YAML, which must load cleanly. */
static hx_conf_tree *load_ok(const char *yaml)
{
    int rc;
    hx_conf_tree *t = load(yaml, &rc);
    HX_CHECK_INT_EQ(rc, 0);
    HX_CHECK_INT_EQ(hx_conf_error_count(t), 0);
    for (size_t i = 0; i < hx_conf_error_count(t); i++)
        fprintf(stderr, "  unexpected error: %s\n", hx_conf_error_at(t, i));
    return t;
}

static const char *last_error(const hx_conf_tree *t)
{
    size_t n = hx_conf_error_count(t);
    return n > 0 ? hx_conf_error_at(t, n - 1) : "";
}

/* Lookups that cannot crash a failing test: a missing key or item is a
 * failed check and yields an empty stand-in node owned by no tree. */
static hx_conf_node missing_node;

#define get(map, key) get_at_(map, key, __LINE__)
static hx_conf_node *get_at_(const hx_conf_node *map, const char *key, int line)
{
    hx_conf_node *n = hx_conf_get(map, key);
    if (n == NULL) {
        hx_test_checks_failed++;
        fprintf(stderr, "%s:%d: %s: no key \"%s\"\n", __FILE__, line, hx_test_name, key);
        memset(&missing_node, 0, sizeof(missing_node));
        return &missing_node;
    }
    return n;
}

#define item(seq, i) item_at_(seq, i, __LINE__)
static hx_conf_node *item_at_(const hx_conf_node *seq, size_t i, int line)
{
    if (seq == NULL || (seq->kind != HX_CONF_SEQ && seq->kind != HX_CONF_MAP) || i >= seq->n) {
        hx_test_checks_failed++;
        fprintf(stderr, "%s:%d: %s: no item %zu\n", __FILE__, line, hx_test_name, i);
        memset(&missing_node, 0, sizeof(missing_node));
        return &missing_node;
    }
    return seq->items[i];
}

static char tmp_root[] = "/tmp/hx_test_conf_XXXXXX";

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    HX_CHECK(f != NULL);
    if (f == NULL)
        return;
    fputs(text, f);
    fclose(f);
}

/* A fresh empty directory under the test's temporary root. */
static const char *make_dir(const char *name, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", tmp_root, name);
    HX_CHECK(mkdir(buf, 0700) == 0);
    return buf;
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* ---- loading and positions ---- */

static const char api_yaml[] = "server:\n"
                               "  listen: \":8080\"\n"
                               "  workers: 4\n"
                               "upstreams:\n"
                               "  api:\n"
                               "    backends:\n"
                               "      - addr: 10.0.0.1:80\n"
                               "        weight: 5\n"
                               "      - addr: 10.0.0.2:80\n"
                               "      - addr: 10.0.0.3:80\n"
                               "        weight: heavy\n";

HX_TEST(load_string_builds_tree_with_file_line_col)
{
    hx_conf_tree *t = load_ok(api_yaml);
    hx_conf_node *root = hx_conf_root(t);
    HX_CHECK(root != NULL);
    if (root == NULL)
        goto out;
    HX_CHECK_INT_EQ(root->kind, HX_CONF_MAP);
    HX_CHECK_UINT_EQ(root->n, 2);
    HX_CHECK_STR_EQ(root->keys[0], "server");
    HX_CHECK_STR_EQ(root->keys[1], "upstreams");
    HX_CHECK(root->parent == NULL);

    hx_conf_node *workers = get(get(root, "server"), "workers");
    HX_CHECK(workers != NULL);
    HX_CHECK_INT_EQ(workers->kind, HX_CONF_SCALAR);
    HX_CHECK_STR_EQ(workers->scalar, "4");
    HX_CHECK_UINT_EQ(workers->scalar_len, 1);
    HX_CHECK_STR_EQ(workers->file, "t.yaml");
    HX_CHECK_UINT_EQ(workers->line, 3);
    HX_CHECK_UINT_EQ(workers->col, 12);
    HX_CHECK_STR_EQ(workers->key, "workers");
    HX_CHECK(workers->tree == t);
    HX_CHECK(workers->parent == get(root, "server"));

    hx_conf_node *listen = get(get(root, "server"), "listen");
    HX_CHECK(listen != NULL && listen->quoted);
    HX_CHECK(!workers->quoted);

    hx_conf_node *backends = get(get(get(root, "upstreams"), "api"), "backends");
    HX_CHECK(backends != NULL && backends->kind == HX_CONF_SEQ);
    HX_CHECK_UINT_EQ(backends->n, 3);
    HX_CHECK(backends->keys == NULL);
    hx_conf_node *b2 = item(backends, 2);
    HX_CHECK_UINT_EQ(b2->index, 2);
    HX_CHECK(b2->key == NULL);
    HX_CHECK(b2->parent == backends);
    HX_CHECK_UINT_EQ(b2->line, 10);
    HX_CHECK_UINT_EQ(b2->col, 9);

    HX_CHECK(hx_conf_get(b2, "nope") == NULL);
    HX_CHECK(hx_conf_get(backends, "addr") == NULL); /* not a map */
    HX_CHECK(hx_conf_get(NULL, "addr") == NULL);
out:
    hx_conf_tree_free(t);
}

HX_TEST(int_error_names_file_line_col_path_range_and_value)
{
    hx_conf_tree *t = load_ok(api_yaml);
    hx_conf_node *backends = get(get(get(hx_conf_root(t), "upstreams"), "api"), "backends");
    long long w = -7;
    HX_CHECK_INT_EQ(hx_conf_int(item(backends, 0), "weight", 1, 1, 1000, &w), 1);
    HX_CHECK_INT_EQ(w, 5);
    HX_CHECK_INT_EQ(hx_conf_int(item(backends, 1), "weight", 1, 1, 1000, &w), 0);
    HX_CHECK_INT_EQ(w, 1);
    HX_CHECK_INT_EQ(hx_conf_int(item(backends, 2), "weight", 1, 1, 1000, &w), -1);
    HX_CHECK_INT_EQ(hx_conf_error_count(t), 1);
    HX_CHECK_STR_EQ(hx_conf_error_at(t, 0),
                    "t.yaml:11:17: upstreams.api.backends[2].weight: expected an integer "
                    "between 1 and 1000, got \"heavy\"");
    HX_CHECK(hx_conf_error_at(t, 1) == NULL);
    hx_conf_tree_free(t);
}

HX_TEST(null_forms_and_quoted_scalars)
{
    hx_conf_tree *t = load_ok("a:\nb: ~\nc: null\nd: \"null\"\ne: ''\nf: NULL\ng: |\n  text\n");
    hx_conf_node *r = hx_conf_root(t);
    HX_CHECK_INT_EQ(get(r, "a")->kind, HX_CONF_NULL);
    HX_CHECK_INT_EQ(get(r, "b")->kind, HX_CONF_NULL);
    HX_CHECK_INT_EQ(get(r, "c")->kind, HX_CONF_NULL);
    HX_CHECK_INT_EQ(get(r, "f")->kind, HX_CONF_NULL);
    hx_conf_node *d = get(r, "d");
    HX_CHECK_INT_EQ(d->kind, HX_CONF_SCALAR);
    HX_CHECK(d->quoted);
    HX_CHECK_STR_EQ(d->scalar, "null");
    hx_conf_node *e = get(r, "e");
    HX_CHECK_INT_EQ(e->kind, HX_CONF_SCALAR);
    HX_CHECK_UINT_EQ(e->scalar_len, 0);
    hx_conf_node *g = get(r, "g");
    HX_CHECK_INT_EQ(g->kind, HX_CONF_SCALAR);
    HX_CHECK_STR_EQ(g->scalar, "text\n");
    hx_conf_tree_free(t);
}

HX_TEST(empty_inputs_are_fine_and_leave_no_root)
{
    const char *inputs[] = {"", "# only a comment\n", "---\n", "\n\n"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        hx_conf_tree *t = load_ok(inputs[i]);
        HX_CHECK(hx_conf_root(t) == NULL);
        hx_conf_tree_free(t);
    }
    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK(hx_conf_root(t) == NULL);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);
    HX_CHECK(hx_conf_error_at(t, 0) == NULL);
    hx_conf_tree_free(t);
    hx_conf_tree_free(NULL);
}

/* ---- key paths ---- */

HX_TEST(paths_show_keys_and_sequence_indexes)
{
    hx_conf_tree *t = load_ok("- a: 1\n- b:\n    - x\n    - y: {\"dotted.key\": 1}\n");
    hx_conf_node *r = hx_conf_root(t);
    char buf[128];
    HX_CHECK_UINT_EQ(hx_conf_path(r, buf, sizeof(buf)), 0);
    HX_CHECK_STR_EQ(buf, "");
    hx_conf_node *a = get(item(r, 0), "a");
    HX_CHECK_UINT_EQ(hx_conf_path(a, buf, sizeof(buf)), strlen("[0].a"));
    HX_CHECK_STR_EQ(buf, "[0].a");
    hx_conf_node *b = get(item(r, 1), "b");
    hx_conf_path(item(b, 1), buf, sizeof(buf));
    HX_CHECK_STR_EQ(buf, "[1].b[1]");
    hx_conf_node *dotted = get(get(item(b, 1), "y"), "dotted.key");
    HX_CHECK(dotted != NULL);
    hx_conf_path(dotted, buf, sizeof(buf));
    HX_CHECK_STR_EQ(buf, "[1].b[1].y[\"dotted.key\"]");

    /* A short buffer truncates but stays terminated; size 0 writes nothing. */
    char small[5];
    HX_CHECK_UINT_EQ(hx_conf_path(dotted, small, sizeof(small)), 4);
    HX_CHECK_STR_EQ(small, "[1].");
    buf[0] = 'Z';
    HX_CHECK_UINT_EQ(hx_conf_path(dotted, buf, 0), 0);
    HX_CHECK(buf[0] == 'Z');
    HX_CHECK_UINT_EQ(hx_conf_path(NULL, buf, sizeof(buf)), 0);
    HX_CHECK_STR_EQ(buf, "");
    hx_conf_tree_free(t);
}

HX_TEST(error_formats_position_and_path_and_plain)
{
    hx_conf_tree *t = load_ok("a:\n  b: 1\n");
    hx_conf_error(hx_conf_root(t), "root says %d", 42);
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:1:1: root says 42");
    hx_conf_error(get(get(hx_conf_root(t), "a"), "b"), "bad %s", "b");
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:2:6: a.b: bad b");
    hx_conf_error_plain(t, "%s: cannot open: %s", "/x", "No such file or directory");
    HX_CHECK_STR_EQ(last_error(t), "/x: cannot open: No such file or directory");
    hx_conf_error(NULL, "ignored");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 3);
    hx_conf_tree_free(t);
}

HX_TEST(kind_names)
{
    HX_CHECK_STR_EQ(hx_conf_kind_name(HX_CONF_NULL), "null");
    HX_CHECK_STR_EQ(hx_conf_kind_name(HX_CONF_SCALAR), "scalar");
    HX_CHECK_STR_EQ(hx_conf_kind_name(HX_CONF_MAP), "map");
    HX_CHECK_STR_EQ(hx_conf_kind_name(HX_CONF_SEQ), "sequence");
}

/* ---- refusals within one file ---- */

HX_TEST(duplicate_key_is_an_error_at_the_second_key)
{
    int rc;
    hx_conf_tree *t = load("a: 1\nb: 2\na: 3\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:3:1: a: duplicate key \"a\"");
    HX_CHECK_STR_CONTAINS(last_error(t), "line 1 column 1");
    HX_CHECK(hx_conf_root(t) == NULL); /* a broken file is not merged */
    hx_conf_tree_free(t);

    t = load("x:\n  y: 1\n  z: 2\n  y: 3\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:4:3: x.y: duplicate key \"y\"");
    HX_CHECK_STR_CONTAINS(last_error(t), "line 2 column 3");
    hx_conf_tree_free(t);

    /* Same key in different maps is fine. */
    t = load_ok("a: {k: 1}\nb: {k: 2}\n");
    hx_conf_tree_free(t);
}

HX_TEST(aliases_anchors_and_merge_keys_are_refused)
{
    int rc;
    hx_conf_tree *t = load("a: &x 1\nb: *x\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "t.yaml:1:4: a: anchors (&x) are not supported");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "t.yaml:2:4: b: aliases (*x) are not supported");
    HX_CHECK(hx_conf_root(t) == NULL);
    hx_conf_tree_free(t);

    t = load("base: &b {x: 1}\nother:\n  <<: *b\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "aliases (*b)");
    hx_conf_tree_free(t);
}

HX_TEST(tags_are_refused)
{
    int rc;
    hx_conf_tree *t = load("a: !!str 5\nb: !custom x\nc: !!map {}\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 3);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "t.yaml:1:4: a: tags (!!str) are not supported");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "b: tags (!custom)");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 2), "c: tags (!!map)");
    hx_conf_tree_free(t);
}

HX_TEST(multi_document_file_is_refused)
{
    int rc;
    hx_conf_tree *t = load("a: 1\n---\nb: 2\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:2:1: a second YAML document starts here");
    HX_CHECK(hx_conf_root(t) == NULL);
    hx_conf_tree_free(t);

    /* One explicit document is fine. */
    t = load_ok("---\na: 1\n...\n");
    HX_CHECK(hx_conf_get(hx_conf_root(t), "a") != NULL);
    hx_conf_tree_free(t);
}

HX_TEST(syntax_error_uses_libyaml_problem_and_mark)
{
    int rc;
    hx_conf_tree *t = load("a: b: c\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_EQ(
        last_error(t),
        "t.yaml:1:5: YAML syntax error: mapping values are not allowed in this context");
    hx_conf_tree_free(t);

    t = load("ok: 1\nlist: [1, 2\nb: 3\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:3:2: YAML syntax error: did not find expected");
    HX_CHECK_STR_CONTAINS(last_error(t), "flow sequence at line 2 column 7");
    HX_CHECK(hx_conf_root(t) == NULL);
    hx_conf_tree_free(t);

    t = load("a: 'unterminated\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:2:1: YAML syntax error: found unexpected end");
    hx_conf_tree_free(t);
}

HX_TEST(invalid_utf8_and_nul_are_refused_with_position)
{
    int rc;
    hx_conf_tree *t = load("a: 1\nb: \xff\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:2:4: invalid input");
    HX_CHECK_STR_CONTAINS(last_error(t), "UTF-8");
    hx_conf_tree_free(t);

    t = load("a: \"x\\0y\"\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:1:4: a: the value contains a NUL character");
    hx_conf_tree_free(t);
}

HX_TEST(complex_keys_are_refused_and_parsing_goes_on)
{
    int rc;
    hx_conf_tree *t = load("? [a, b]\n: 1\nc: *nope\n", &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "a sequence cannot be used as a key");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "t.yaml:3:4: c: aliases (*nope)");
    hx_conf_tree_free(t);
}

HX_TEST(nesting_deeper_than_the_cap_is_refused)
{
    char deep[200], ok[100];
    memset(deep, '[', 70);
    memset(deep + 70, ']', 70);
    deep[140] = '\0';
    int rc;
    hx_conf_tree *t = load(deep, &rc);
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "nesting is deeper than 64 levels");
    hx_conf_tree_free(t);

    memset(ok, '[', 40);
    memset(ok + 40, ']', 40);
    ok[80] = '\0';
    t = load_ok(ok);
    hx_conf_tree_free(t);
}

/* ---- merging ---- */

HX_TEST(merging_two_strings_follows_the_rules)
{
    hx_conf_tree *t = hx_conf_tree_new();
    const char *a = "server:\n  workers: 4\n  name: one\nroutes:\n  - r1\n  - r2\nlog:\n";
    const char *b = "server:\n  name: two\n  extra: yes\nroutes:\n  - r3\nlog:\n  level: info\n";
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "a.yaml", a, strlen(a)), 0);
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "b.yaml", b, strlen(b)), 0);
    hx_conf_node *r = hx_conf_root(t);
    hx_conf_node *server = get(r, "server");
    HX_CHECK_UINT_EQ(server->n, 3);
    HX_CHECK_STR_EQ(get(server, "workers")->scalar, "4");
    hx_conf_node *name = get(server, "name");
    HX_CHECK_STR_EQ(name->scalar, "two");
    HX_CHECK_STR_EQ(name->file, "b.yaml");
    HX_CHECK(name->parent == server);
    HX_CHECK_STR_EQ(name->key, "name");
    hx_conf_node *extra = get(server, "extra");
    HX_CHECK(extra != NULL && extra->parent == server);

    hx_conf_node *routes = get(r, "routes");
    HX_CHECK_UINT_EQ(routes->n, 3);
    HX_CHECK_STR_EQ(item(routes, 2)->scalar, "r3");
    HX_CHECK_UINT_EQ(item(routes, 2)->index, 2);
    HX_CHECK(item(routes, 2)->parent == routes);
    char path[64];
    hx_conf_path(item(routes, 2), path, sizeof(path));
    HX_CHECK_STR_EQ(path, "routes[2]");

    /* An earlier empty value is filled by a later map. */
    hx_conf_node *log = get(r, "log");
    HX_CHECK_INT_EQ(log->kind, HX_CONF_MAP);
    HX_CHECK(log->parent == r);
    hx_conf_path(get(log, "level"), path, sizeof(path));
    HX_CHECK_STR_EQ(path, "log.level");

    /* A later empty value leaves a map or sequence alone, replaces a scalar. */
    const char *c = "routes:\nserver:\n  name:\n";
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "c.yaml", c, strlen(c)), 0);
    HX_CHECK_UINT_EQ(get(r, "routes")->n, 3);
    HX_CHECK_INT_EQ(get(server, "name")->kind, HX_CONF_NULL);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);
    hx_conf_tree_free(t);
}

HX_TEST(merge_kind_conflict_names_both_places)
{
    hx_conf_tree *t = hx_conf_tree_new();
    const char *a = "listen:\n  a: 1\nname: x\n";
    const char *b = "listen:\n  - 1\nname:\n  nested: 1\n";
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "conf.d/a.yaml", a, strlen(a)), 0);
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "conf.d/b.yaml", b, strlen(b)), -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "conf.d/b.yaml:2:3: listen: this sequence");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "the map at conf.d/a.yaml:2:3");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "conf.d/b.yaml:4:3: name: this map");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "the scalar at conf.d/a.yaml:3:7");
    /* The earlier values stay. */
    HX_CHECK_INT_EQ(get(hx_conf_root(t), "listen")->kind, HX_CONF_MAP);
    hx_conf_tree_free(t);
}

HX_TEST(load_dir_merges_yaml_files_in_strcmp_order)
{
    char dir[300];
    make_dir("merge", dir, sizeof(dir));
    write_file(dir, "10-base.yaml",
               "server:\n  workers: 2\n  name: base\nupstreams:\n  api:\n    backends:\n"
               "      - addr: a:1\n      - addr: b:1\n");
    write_file(dir, "20-more.yml",
               "upstreams:\n  api:\n    backends:\n      - addr: c:1\n"
               "        weight: heavy\n");
    /* "9" sorts after "20" with strcmp: this file is read last. */
    write_file(dir, "9-last.yaml", "server:\n  name: nine\n");
    write_file(dir, ".hidden.yaml", "this: [is: broken\n");
    write_file(dir, "notes.txt", "not: [yaml\n");
    write_file(dir, "x.yaml.bak", "not: [yaml\n");

    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), 0);
    for (size_t i = 0; i < hx_conf_error_count(t); i++)
        fprintf(stderr, "  unexpected error: %s\n", hx_conf_error_at(t, i));
    hx_conf_node *r = hx_conf_root(t);
    hx_conf_node *server = get(r, "server");
    HX_CHECK_STR_EQ(get(server, "workers")->scalar, "2");
    hx_conf_node *name = get(server, "name");
    HX_CHECK_STR_EQ(name->scalar, "nine");

    char expect[700];
    snprintf(expect, sizeof(expect), "%s/9-last.yaml", dir);
    HX_CHECK_STR_EQ(name->file, expect);

    hx_conf_node *backends = get(get(get(r, "upstreams"), "api"), "backends");
    HX_CHECK_UINT_EQ(backends->n, 3);
    long long w;
    HX_CHECK_INT_EQ(hx_conf_int(item(backends, 2), "weight", 1, 1, 1000, &w), -1);
    snprintf(expect, sizeof(expect),
             "%s/20-more.yml:5:17: upstreams.api.backends[2].weight: expected an integer between "
             "1 and 1000, got \"heavy\"",
             dir);
    HX_CHECK_STR_EQ(last_error(t), expect);
    hx_conf_tree_free(t);

    /* A trailing slash does not double the separator. */
    char slash[310];
    snprintf(slash, sizeof(slash), "%s/", dir);
    t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, slash), 0);
    snprintf(expect, sizeof(expect), "%s/9-last.yaml", dir);
    HX_CHECK_STR_EQ(get(get(hx_conf_root(t), "server"), "name")->file, expect);
    hx_conf_tree_free(t);

    /* A single file loads alone, under its own name. */
    snprintf(expect, sizeof(expect), "%s/10-base.yaml", dir);
    t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, expect), 0);
    name = get(get(hx_conf_root(t), "server"), "name");
    HX_CHECK_STR_EQ(name->scalar, "base");
    HX_CHECK_STR_EQ(name->file, expect);
    hx_conf_tree_free(t);
}

HX_TEST(load_dir_kind_conflict_mentions_both_files)
{
    char dir[300], a[700], b[700];
    make_dir("conflict", dir, sizeof(dir));
    write_file(dir, "a.yaml", "routes:\n  - one\n");
    write_file(dir, "b.yaml", "routes:\n  one: 1\n");
    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 1);
    snprintf(a, sizeof(a), "%s/a.yaml:2:3", dir);
    snprintf(b, sizeof(b), "%s/b.yaml:2:3: routes: this map conflicts with the sequence", dir);
    HX_CHECK_STR_CONTAINS(last_error(t), a);
    HX_CHECK_STR_CONTAINS(last_error(t), b);
    hx_conf_tree_free(t);
}

HX_TEST(load_dir_reports_every_broken_file_and_skips_them)
{
    char dir[300], expect[700];
    make_dir("broken", dir, sizeof(dir));
    write_file(dir, "1.yaml", "a: 1\na: 2\n");
    write_file(dir, "2.yaml", "b: [\n");
    write_file(dir, "3.yaml", "c: 3\n");
    write_file(dir, "4.yaml", "");
    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    snprintf(expect, sizeof(expect), "%s/1.yaml:2:1: a: duplicate key", dir);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), expect);
    snprintf(expect, sizeof(expect), "%s/2.yaml:2:1: YAML syntax error", dir);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), expect);
    hx_conf_node *r = hx_conf_root(t);
    HX_CHECK(hx_conf_get(r, "a") == NULL);
    HX_CHECK(hx_conf_get(r, "c") != NULL);
    hx_conf_tree_free(t);
}

HX_TEST(load_reports_missing_path_and_empty_directory)
{
    char dir[300], path[700];
    hx_conf_tree *t = hx_conf_tree_new();
    snprintf(path, sizeof(path), "%s/does-not-exist", tmp_root);
    HX_CHECK_INT_EQ(hx_conf_load(t, path), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), path);
    HX_CHECK_STR_CONTAINS(last_error(t), "No such file or directory");

    make_dir("empty", dir, sizeof(dir));
    write_file(dir, ".hidden.yaml", "a: 1\n");
    write_file(dir, "readme.txt", "a: 1\n");
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), -1);
    snprintf(path, sizeof(path), "no *.yaml files in %s", dir);
    HX_CHECK_STR_CONTAINS(last_error(t), path);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);

    /* A later good load returns 0 even though the tree holds older errors. */
    write_file(dir, "ok.yaml", "a: 1\n");
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), 0);
    HX_CHECK(hx_conf_get(hx_conf_root(t), "a") != NULL);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    hx_conf_tree_free(t);
}

HX_TEST(load_reports_files_that_cannot_be_read)
{
    char dir[300], path[700];
    make_dir("unreadable", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/a-dangling.yaml", dir);
    HX_CHECK(symlink("/nonexistent/target.yaml", path) == 0);
    snprintf(path, sizeof(path), "%s/b-dir.yaml", dir);
    HX_CHECK(mkdir(path, 0700) == 0);
    write_file(dir, "c-secret.yaml", "a: 1\n");
    write_file(dir, "d-good.yaml", "good: 1\n");
    snprintf(path, sizeof(path), "%s/c-secret.yaml", dir);
    HX_CHECK(chmod(path, 0) == 0);
    int root = geteuid() == 0; /* root reads the file despite its mode */

    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load(t, dir), -1);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), root ? 2 : 3);
    snprintf(path, sizeof(path), "%s/a-dangling.yaml: cannot open: No such file or directory", dir);
    HX_CHECK_STR_EQ(hx_conf_error_at(t, 0), path);
    snprintf(path, sizeof(path), "%s/b-dir.yaml: cannot read: Is a directory", dir);
    HX_CHECK_STR_EQ(hx_conf_error_at(t, 1), path);
    if (!root) {
        snprintf(path, sizeof(path), "%s/c-secret.yaml: cannot open: Permission denied", dir);
        HX_CHECK_STR_EQ(hx_conf_error_at(t, 2), path);
    }
    HX_CHECK(hx_conf_get(hx_conf_root(t), "good") != NULL);
    hx_conf_tree_free(t);
}

/* ---- check_keys ---- */

HX_TEST(check_keys_reports_unknown_keys_at_the_key_with_a_hint)
{
    static const char *const allowed[] = {"addr", "weight", "max_fails", NULL};
    hx_conf_tree *t = load_ok("addr: x\nweigth: 3\nbogus_option: 1\n");
    HX_CHECK_INT_EQ(hx_conf_check_keys(hx_conf_root(t), allowed), 2);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    HX_CHECK_STR_EQ(hx_conf_error_at(t, 0),
                    "t.yaml:2:1: weigth: unknown key \"weigth\" (did you mean \"weight\"?)");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "t.yaml:3:1: bogus_option: unknown key");
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 1), "allowed keys: addr, weight, max_fails");
    HX_CHECK(strstr(hx_conf_error_at(t, 1), "did you mean") == NULL);
    hx_conf_tree_free(t);
}

HX_TEST(check_keys_hint_needs_distance_two_or_less)
{
    static const char *const allowed[] = {"timeout", "retries", NULL};
    /* Distances: 2 (swap), 3, 1, 3. */
    hx_conf_tree *t = load_ok("timeotu: 1\ntimexxxx: 1\nretrie: 2\nretry: 2\n");
    HX_CHECK_INT_EQ(hx_conf_check_keys(hx_conf_root(t), allowed), 4);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "did you mean \"timeout\"");
    HX_CHECK(strstr(hx_conf_error_at(t, 1), "did you mean") == NULL);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 2), "did you mean \"retries\"");
    HX_CHECK(strstr(hx_conf_error_at(t, 3), "did you mean") == NULL);
    hx_conf_tree_free(t);
}

HX_TEST(check_keys_accepts_known_keys_null_and_rejects_non_maps)
{
    static const char *const allowed[] = {"a", "b", NULL};
    static const char *const none[] = {NULL};
    hx_conf_tree *t = load_ok("m: {a: 1, b: 2}\nn:\ns: [1]\nv: text\ne: {}\n");
    hx_conf_node *r = hx_conf_root(t);
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "m"), allowed), 0);
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "n"), allowed), 0);
    HX_CHECK_INT_EQ(hx_conf_check_keys(NULL, allowed), 0);
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "e"), none), 0);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "s"), allowed), 1);
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:3:4: s: expected a map, got a sequence");
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "v"), allowed), 1);
    HX_CHECK_STR_CONTAINS(last_error(t), "v: expected a map, got a scalar");
    HX_CHECK_INT_EQ(hx_conf_check_keys(get(r, "m"), none), 2);
    HX_CHECK_STR_CONTAINS(last_error(t), "no keys are allowed here");
    hx_conf_tree_free(t);
}

/* ---- getters ---- */

HX_TEST(str_getter_ok_absent_null_bad)
{
    hx_conf_tree *t = load_ok("s: hello\nq: \"42\"\nn: ~\nm: {a: 1}\nl: [1]\n");
    hx_conf_node *r = hx_conf_root(t);
    const char *v = NULL;
    HX_CHECK_INT_EQ(hx_conf_str(r, "s", "def", &v), 1);
    HX_CHECK_STR_EQ(v, "hello");
    HX_CHECK_INT_EQ(hx_conf_str(r, "q", "def", &v), 1);
    HX_CHECK_STR_EQ(v, "42");
    HX_CHECK_INT_EQ(hx_conf_str(r, "absent", "def", &v), 0);
    HX_CHECK_STR_EQ(v, "def");
    HX_CHECK_INT_EQ(hx_conf_str(r, "n", "def", &v), 0);
    HX_CHECK_STR_EQ(v, "def");
    HX_CHECK_INT_EQ(hx_conf_str(NULL, "s", "def", &v), 0);
    HX_CHECK_STR_EQ(v, "def");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);
    HX_CHECK_INT_EQ(hx_conf_str(r, "m", "def", &v), -1);
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:4:4: m: expected a string, got a map");
    HX_CHECK_INT_EQ(hx_conf_str(r, "l", "def", &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "l: expected a string, got a sequence");
    hx_conf_tree_free(t);
}

HX_TEST(str_req_getter_records_missing_key)
{
    hx_conf_tree *t = load_ok("up:\n  name: api\n  empty:\n");
    hx_conf_node *up = get(hx_conf_root(t), "up");
    const char *v = NULL;
    HX_CHECK_INT_EQ(hx_conf_str_req(up, "name", &v), 1);
    HX_CHECK_STR_EQ(v, "api");
    HX_CHECK_INT_EQ(hx_conf_str_req(up, "addr", &v), -1);
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:2:3: up: missing required key \"addr\"");
    HX_CHECK_INT_EQ(hx_conf_str_req(up, "empty", &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "up.empty: a value is required");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 2);
    hx_conf_tree_free(t);
}

HX_TEST(int_getter_ok_absent_and_bad)
{
    hx_conf_tree *t =
        load_ok("a: 42\nb: -5\nc: \"7\"\nd: 0\ne: abc\nf: 1.5\ng: 0x10\nh: 010\n"
                "i: 2000\nj: 99999999999999999999\nk: [1]\nl:\nm: +3\nn: 9223372036854775807\n"
                "o: -9223372036854775808\np: \" 1\"\n");
    hx_conf_node *r = hx_conf_root(t);
    long long v = 0;
    HX_CHECK_INT_EQ(hx_conf_int(r, "a", 1, 0, 100, &v), 1);
    HX_CHECK_INT_EQ(v, 42);
    HX_CHECK_INT_EQ(hx_conf_int(r, "b", 1, -10, 10, &v), 1);
    HX_CHECK_INT_EQ(v, -5);
    HX_CHECK_INT_EQ(hx_conf_int(r, "c", 1, 0, 10, &v), 1);
    HX_CHECK_INT_EQ(v, 7);
    HX_CHECK_INT_EQ(hx_conf_int(r, "d", 1, 0, 10, &v), 1);
    HX_CHECK_INT_EQ(v, 0);
    HX_CHECK_INT_EQ(hx_conf_int(r, "m", 1, 0, 10, &v), 1);
    HX_CHECK_INT_EQ(v, 3);
    HX_CHECK_INT_EQ(hx_conf_int(r, "n", 1, LLONG_MIN, LLONG_MAX, &v), 1);
    HX_CHECK_INT_EQ(v, LLONG_MAX);
    HX_CHECK_INT_EQ(hx_conf_int(r, "o", 1, LLONG_MIN, LLONG_MAX, &v), 1);
    HX_CHECK(v == LLONG_MIN);
    HX_CHECK_INT_EQ(hx_conf_int(r, "absent", 9, 0, 10, &v), 0);
    HX_CHECK_INT_EQ(v, 9);
    HX_CHECK_INT_EQ(hx_conf_int(r, "l", 8, 0, 10, &v), 0);
    HX_CHECK_INT_EQ(v, 8);
    HX_CHECK_INT_EQ(hx_conf_int(NULL, "a", 6, 0, 10, &v), 0);
    HX_CHECK_INT_EQ(v, 6);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);

    const char *bad[] = {"e", "f", "g", "h", "p"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 123;
        HX_CHECK_INT_EQ(hx_conf_int(r, bad[i], 5, 0, 100, &v), -1);
        HX_CHECK_INT_EQ(v, 5); /* the default is left on failure */
        HX_CHECK_STR_CONTAINS(last_error(t), "expected an integer between 0 and 100, got \"");
    }
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 0), "t.yaml:5:4: e: expected an integer between "
                                                  "0 and 100, got \"abc\"");
    HX_CHECK_INT_EQ(hx_conf_int(r, "i", 1, 1, 1000, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "i: expected an integer between 1 and 1000, got \"2000\"");
    HX_CHECK_INT_EQ(hx_conf_int(r, "b", 1, 0, 1000, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got \"-5\"");
    HX_CHECK_INT_EQ(hx_conf_int(r, "j", 1, LLONG_MIN, LLONG_MAX, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "j: expected an integer, got \"99999999999999999999\"");
    HX_CHECK_INT_EQ(hx_conf_int(r, "a", 1, 50, LLONG_MAX, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "expected an integer of at least 50, got \"42\"");
    HX_CHECK_INT_EQ(hx_conf_int(r, "a", 1, LLONG_MIN, 10, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "expected an integer of at most 10");
    HX_CHECK_INT_EQ(hx_conf_int(r, "k", 1, 0, 10, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "k: expected an integer between 0 and 10, got a sequence");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 11);
    hx_conf_tree_free(t);
}

HX_TEST(bool_getter_accepts_plain_words_only)
{
    hx_conf_tree *t = load_ok("t1: true\nt2: yes\nt3: on\nt4: True\nf1: false\nf2: no\nf3: off\n"
                              "f4: OFF\nq: \"true\"\nx: maybe\nn: 1\nm: {}\ne:\n");
    hx_conf_node *r = hx_conf_root(t);
    const char *yes[] = {"t1", "t2", "t3", "t4"};
    const char *no[] = {"f1", "f2", "f3", "f4"};
    for (size_t i = 0; i < 4; i++) {
        int v = 0;
        HX_CHECK_INT_EQ(hx_conf_bool(r, yes[i], 0, &v), 1);
        HX_CHECK_INT_EQ(v, 1);
        v = 1;
        HX_CHECK_INT_EQ(hx_conf_bool(r, no[i], 1, &v), 1);
        HX_CHECK_INT_EQ(v, 0);
    }
    int v = -1;
    HX_CHECK_INT_EQ(hx_conf_bool(r, "absent", 1, &v), 0);
    HX_CHECK_INT_EQ(v, 1);
    HX_CHECK_INT_EQ(hx_conf_bool(r, "e", 0, &v), 0);
    HX_CHECK_INT_EQ(v, 0);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);

    HX_CHECK_INT_EQ(hx_conf_bool(r, "q", 0, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:9:4: q: expected true or false without quotes");
    HX_CHECK_INT_EQ(hx_conf_bool(r, "x", 0, &v), -1);
    HX_CHECK_STR_EQ(last_error(t),
                    "t.yaml:10:4: x: expected true or false (or yes/no, on/off), got \"maybe\"");
    HX_CHECK_INT_EQ(hx_conf_bool(r, "n", 0, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got \"1\"");
    HX_CHECK_INT_EQ(hx_conf_bool(r, "m", 0, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got a map");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 4);
    hx_conf_tree_free(t);
}

HX_TEST(duration_getter_ok_absent_and_bad)
{
    hx_conf_tree *t = load_ok("a: 250ms\nb: 1m30s\nc: 0\nd: 10\ne: -5s\nf: soon\ng: {}\n"
                              "h: 99999999999999999999d\ni:\n");
    hx_conf_node *r = hx_conf_root(t);
    uint64_t v = 0;
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "a", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 250);
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "b", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 90000);
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "c", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 0);
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "absent", 7, &v), 0);
    HX_CHECK_UINT_EQ(v, 7);
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "i", 8, &v), 0);
    HX_CHECK_UINT_EQ(v, 8);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);

    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "d", 7, &v), -1);
    HX_CHECK_UINT_EQ(v, 7);
    HX_CHECK_STR_CONTAINS(last_error(t), "t.yaml:4:4: d: expected a duration such as 250ms");
    HX_CHECK_STR_CONTAINS(last_error(t), "got \"10\" (a number needs a unit");
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "e", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "cannot be negative");
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "f", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got \"soon\"");
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "g", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got a map");
    HX_CHECK_INT_EQ(hx_conf_duration_ms(r, "h", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "(too large)");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 5);
    hx_conf_tree_free(t);
}

HX_TEST(size_getter_ok_absent_and_bad)
{
    hx_conf_tree *t = load_ok("a: 512\nb: 64k\nc: 1MiB\nd: lots\ne: -1k\nf: 17179869184G\n"
                              "g: [1]\nh: ~\n");
    hx_conf_node *r = hx_conf_root(t);
    uint64_t v = 0;
    HX_CHECK_INT_EQ(hx_conf_size(r, "a", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 512);
    HX_CHECK_INT_EQ(hx_conf_size(r, "b", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 65536);
    HX_CHECK_INT_EQ(hx_conf_size(r, "c", 7, &v), 1);
    HX_CHECK_UINT_EQ(v, 1048576);
    HX_CHECK_INT_EQ(hx_conf_size(r, "absent", 7, &v), 0);
    HX_CHECK_UINT_EQ(v, 7);
    HX_CHECK_INT_EQ(hx_conf_size(r, "h", 9, &v), 0);
    HX_CHECK_UINT_EQ(v, 9);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 0);

    HX_CHECK_INT_EQ(hx_conf_size(r, "d", 7, &v), -1);
    HX_CHECK_UINT_EQ(v, 7);
    HX_CHECK_STR_EQ(last_error(t), "t.yaml:4:4: d: expected a size in bytes such as 512, 64k, 16M "
                                   "or 1G (k, m, g are powers of 1024), got \"lots\"");
    HX_CHECK_INT_EQ(hx_conf_size(r, "e", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "cannot be negative");
    HX_CHECK_INT_EQ(hx_conf_size(r, "f", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "(too large)");
    HX_CHECK_INT_EQ(hx_conf_size(r, "g", 7, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "got a sequence");
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 4);
    hx_conf_tree_free(t);
}

HX_TEST(node_parsers_work_on_sequence_items)
{
    hx_conf_tree *t = load_ok("ints: [1, 2, x]\nbools: [yes, off, 'no']\ndurs: [1s, 2]\n"
                              "sizes: [1k, 1q]\nnulls: [~]\n");
    hx_conf_node *r = hx_conf_root(t);
    hx_conf_node *ints = get(r, "ints");
    long long iv = 0;
    HX_CHECK_INT_EQ(hx_conf_node_int(item(ints, 1), 0, 10, &iv), 1);
    HX_CHECK_INT_EQ(iv, 2);
    HX_CHECK_INT_EQ(hx_conf_node_int(item(ints, 2), 0, 10, &iv), -1);
    HX_CHECK_STR_EQ(last_error(t),
                    "t.yaml:1:14: ints[2]: expected an integer between 0 and 10, got \"x\"");
    HX_CHECK_INT_EQ(iv, 2);

    hx_conf_node *bools = get(r, "bools");
    int bv = -1;
    HX_CHECK_INT_EQ(hx_conf_node_bool(item(bools, 0), &bv), 1);
    HX_CHECK_INT_EQ(bv, 1);
    HX_CHECK_INT_EQ(hx_conf_node_bool(item(bools, 1), &bv), 1);
    HX_CHECK_INT_EQ(bv, 0);
    HX_CHECK_INT_EQ(hx_conf_node_bool(item(bools, 2), &bv), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "bools[2]: expected true or false without quotes");

    hx_conf_node *durs = get(r, "durs");
    uint64_t uv = 0;
    HX_CHECK_INT_EQ(hx_conf_node_duration_ms(item(durs, 0), &uv), 1);
    HX_CHECK_UINT_EQ(uv, 1000);
    HX_CHECK_INT_EQ(hx_conf_node_duration_ms(item(durs, 1), &uv), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "durs[1]: expected a duration");

    hx_conf_node *sizes = get(r, "sizes");
    HX_CHECK_INT_EQ(hx_conf_node_size(item(sizes, 0), &uv), 1);
    HX_CHECK_UINT_EQ(uv, 1024);
    HX_CHECK_INT_EQ(hx_conf_node_size(item(sizes, 1), &uv), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "sizes[1]: expected a size");

    hx_conf_node *nul = item(get(r, "nulls"), 0);
    uv = 77;
    HX_CHECK_INT_EQ(hx_conf_node_size(nul, &uv), 0);
    HX_CHECK_INT_EQ(hx_conf_node_duration_ms(nul, &uv), 0);
    HX_CHECK_INT_EQ(hx_conf_node_int(nul, 0, 1, &iv), 0);
    HX_CHECK_INT_EQ(hx_conf_node_bool(nul, &bv), 0);
    HX_CHECK_INT_EQ(hx_conf_node_size(NULL, &uv), 0);
    HX_CHECK_UINT_EQ(uv, 77);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 4);
    hx_conf_tree_free(t);
}

HX_TEST(long_values_are_shortened_in_messages)
{
    char yaml[300];
    snprintf(yaml, sizeof(yaml), "n: %0200d\n", 7);
    yaml[3] = 'x'; /* not a number, 200 characters long */
    hx_conf_tree *t = load_ok(yaml);
    long long v;
    HX_CHECK_INT_EQ(hx_conf_int(hx_conf_root(t), "n", 0, 0, 1, &v), -1);
    HX_CHECK_STR_CONTAINS(last_error(t), "...\"");
    HX_CHECK(strlen(last_error(t)) < 150);
    hx_conf_tree_free(t);
}

/* ---- plain parsers ---- */

HX_TEST(parse_duration_accepts_units_and_combinations)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
        {"0", 0},
        {"0s", 0},
        {"0ms", 0},
        {"250ms", 250},
        {"10s", 10000},
        {"5m", 300000},
        {"2h", 7200000},
        {"1d", 86400000},
        {"1m30s", 90000},
        {"1h30m", 5400000},
        {"1d2h3m4s5ms", 93784005},
        {"90s", 90000},
        {"1s500ms", 1500},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"213503982334d14h", 18446744073708000000ull},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 12345;
        int rc = hx_parse_duration_ms(ok[i].s, &v);
        if (rc != 0 || v != ok[i].ms)
            fprintf(stderr, "  duration \"%s\"\n", ok[i].s);
        HX_CHECK_INT_EQ(rc, 0);
        HX_CHECK_UINT_EQ(v, ok[i].ms);
    }
}

HX_TEST(parse_duration_rejects_bare_numbers_negatives_garbage_overflow)
{
    static const char *const bad[] = {
        "",
        "10",
        "00",
        "-1s",
        "-0",
        "+1s",
        "1.5s",
        "1s1m",
        "1s1s",
        "30s1m",
        "1x",
        "s",
        "1m30",
        " 1s",
        "1s ",
        "1S",
        "1 s",
        "ms",
        "1msx",
        "18446744073709551616ms",
        "213503982335d",
        "213503982334d15h",
        "99999999999999999999999s",
        "1h-1m",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 4242;
        int rc = hx_parse_duration_ms(bad[i], &v);
        if (rc != -1)
            fprintf(stderr, "  accepted duration \"%s\"\n", bad[i]);
        HX_CHECK_INT_EQ(rc, -1);
        HX_CHECK_UINT_EQ(v, 4242); /* untouched on error */
    }
    uint64_t v;
    HX_CHECK_INT_EQ(hx_parse_duration_ms(NULL, &v), -1);
}

HX_TEST(parse_size_accepts_suffixes_as_powers_of_1024)
{
    static const struct {
        const char *s;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"512B", 512},
        {"64k", 65536},
        {"64K", 65536},
        {"64KB", 65536},
        {"64KiB", 65536},
        {"64kB", 65536},
        {"1m", 1048576},
        {"1M", 1048576},
        {"1MB", 1048576},
        {"1MiB", 1048576},
        {"1g", 1073741824},
        {"1G", 1073741824},
        {"2GiB", 2147483648ull},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183G", 17179869183ull << 30},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 12345;
        int rc = hx_parse_size(ok[i].s, &v);
        if (rc != 0 || v != ok[i].bytes)
            fprintf(stderr, "  size \"%s\"\n", ok[i].s);
        HX_CHECK_INT_EQ(rc, 0);
        HX_CHECK_UINT_EQ(v, ok[i].bytes);
    }
}

HX_TEST(parse_size_rejects_garbage_and_overflow)
{
    static const char *const bad[] = {
        "",
        "k",
        "-1",
        "-1k",
        "1.5k",
        "1kb",
        "1 k",
        "1t",
        "1KBB",
        "1iB",
        "1Ki",
        "1kk",
        " 1k",
        "1k ",
        "0x10",
        "1e3",
        "18446744073709551616",
        "17179869184G",
        "18014398509481984K",
        "+1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 4242;
        int rc = hx_parse_size(bad[i], &v);
        if (rc != -1)
            fprintf(stderr, "  accepted size \"%s\"\n", bad[i]);
        HX_CHECK_INT_EQ(rc, -1);
        HX_CHECK_UINT_EQ(v, 4242);
    }
    uint64_t v;
    HX_CHECK_INT_EQ(hx_parse_size(NULL, &v), -1);
}

HX_TEST(many_nodes_and_errors_are_released_with_the_tree)
{
    /* Enough nodes to need many arena blocks and one oversized scalar. */
    size_t cap = 200000, len = 0;
    char *yaml = malloc(cap);
    HX_CHECK(yaml != NULL);
    if (yaml == NULL)
        return;
    len += (size_t)snprintf(yaml + len, cap - len, "big: ");
    memset(yaml + len, 'x', 20000);
    len += 20000;
    len += (size_t)snprintf(yaml + len, cap - len, "\nlist:\n");
    for (int i = 0; i < 3000; i++)
        len += (size_t)snprintf(yaml + len, cap - len, "  - {n: %d, w: bad}\n", i);
    hx_conf_tree *t = hx_conf_tree_new();
    HX_CHECK_INT_EQ(hx_conf_load_string(t, "big.yaml", yaml, len), 0);
    hx_conf_node *list = get(hx_conf_root(t), "list");
    HX_CHECK_UINT_EQ(list->n, 3000);
    HX_CHECK_UINT_EQ(get(hx_conf_root(t), "big")->scalar_len, 20000);
    long long v;
    for (size_t i = 0; i < list->n; i++)
        hx_conf_int(item(list, i), "w", 0, 0, 1, &v);
    HX_CHECK_UINT_EQ(hx_conf_error_count(t), 3000);
    HX_CHECK_STR_CONTAINS(hx_conf_error_at(t, 2999), "list[2999].w:");
    hx_conf_tree_free(t);
    free(yaml);
}

int main(void)
{
    if (mkdtemp(tmp_root) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    HX_RUN(load_string_builds_tree_with_file_line_col);
    HX_RUN(int_error_names_file_line_col_path_range_and_value);
    HX_RUN(null_forms_and_quoted_scalars);
    HX_RUN(empty_inputs_are_fine_and_leave_no_root);
    HX_RUN(paths_show_keys_and_sequence_indexes);
    HX_RUN(error_formats_position_and_path_and_plain);
    HX_RUN(kind_names);
    HX_RUN(duplicate_key_is_an_error_at_the_second_key);
    HX_RUN(aliases_anchors_and_merge_keys_are_refused);
    HX_RUN(tags_are_refused);
    HX_RUN(multi_document_file_is_refused);
    HX_RUN(syntax_error_uses_libyaml_problem_and_mark);
    HX_RUN(invalid_utf8_and_nul_are_refused_with_position);
    HX_RUN(complex_keys_are_refused_and_parsing_goes_on);
    HX_RUN(nesting_deeper_than_the_cap_is_refused);
    HX_RUN(merging_two_strings_follows_the_rules);
    HX_RUN(merge_kind_conflict_names_both_places);
    HX_RUN(load_dir_merges_yaml_files_in_strcmp_order);
    HX_RUN(load_dir_kind_conflict_mentions_both_files);
    HX_RUN(load_dir_reports_every_broken_file_and_skips_them);
    HX_RUN(load_reports_missing_path_and_empty_directory);
    HX_RUN(load_reports_files_that_cannot_be_read);
    HX_RUN(check_keys_reports_unknown_keys_at_the_key_with_a_hint);
    HX_RUN(check_keys_hint_needs_distance_two_or_less);
    HX_RUN(check_keys_accepts_known_keys_null_and_rejects_non_maps);
    HX_RUN(str_getter_ok_absent_null_bad);
    HX_RUN(str_req_getter_records_missing_key);
    HX_RUN(int_getter_ok_absent_and_bad);
    HX_RUN(bool_getter_accepts_plain_words_only);
    HX_RUN(duration_getter_ok_absent_and_bad);
    HX_RUN(size_getter_ok_absent_and_bad);
    HX_RUN(node_parsers_work_on_sequence_items);
    HX_RUN(long_values_are_shortened_in_messages);
    HX_RUN(parse_duration_accepts_units_and_combinations);
    HX_RUN(parse_duration_rejects_bare_numbers_negatives_garbage_overflow);
    HX_RUN(parse_size_accepts_suffixes_as_powers_of_1024);
    HX_RUN(parse_size_rejects_garbage_and_overflow);
    HX_RUN(many_nodes_and_errors_are_released_with_the_tree);
    remove_tree(tmp_root);
    return hx_test_summary();
}
