/* Spec parsing and validation.
 *
 * Two passes over the text: an event pass that rejects what the document API would silently
 * accept (anchors and aliases, explicit tags, several documents) and reports syntax errors, then
 * a document pass that walks the node tree.  The tree keeps every node's mark, which is what the
 * error messages point at.  Everything lands in a local mg_spec that is copied out only when the
 * whole spec is valid, so a caller never sees half a spec. */
#include "spec.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* A spec is a few dozen lines; anything bigger is not a spec. */
#define MG_SPEC_MAX_BYTES (1u << 20)
/* A spec nests four levels (root, tuning, template, knob values). libyaml 0.2.5 takes time
 * quadratic in the nesting depth, so deeper input is refused while it is being read. */
#define MG_SPEC_MAX_DEPTH 32

/* ---- diagnostics ----------------------------------------------------------------------------- */

typedef struct parse_ctx {
    const char *file; /* name used in messages */
    const char *text;
    size_t len;
    yaml_document_t *doc;
    mg_diag *diag;
} parse_ctx;

static mg_status fail_at_pos(const parse_ctx *c, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static mg_status fail_at_pos(const parse_ctx *c, int line, int col, const char *fmt, ...)
{
    char what[MG_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mg_fail(c->diag, MG_E_SPEC, "%s:%d:%d: %s", c->file, line, col, what);
}

/* libyaml marks are 0-based; editors and compilers count from 1. */
#define MARK_LINE(m) ((int)(m).line + 1)
#define MARK_COL(m) ((int)(m).column + 1)
#define fail_at(c, mark, ...) fail_at_pos((c), MARK_LINE(mark), MARK_COL(mark), __VA_ARGS__)

static mg_loc loc_of(const yaml_node_t *n)
{
    return (mg_loc){MARK_LINE(n->start_mark), MARK_COL(n->start_mark)};
}

static const char *scalar_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static bool is_plain(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* YAML's null spellings, which we never take as a value. */
static bool is_null(const yaml_node_t *n)
{
    if (!is_plain(n))
        return false;
    const char *t = scalar_text(n);
    return t[0] == '\0' || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 ||
           strcmp(t, "Null") == 0 || strcmp(t, "NULL") == 0;
}

/* Renders a scalar for a message: shortened, with unprintable bytes shown as '?'. */
static void quote_scalar(const yaml_node_t *n, char *buf, size_t size)
{
    const size_t max_shown = 40;
    size_t len = n->data.scalar.length, o = 0;
    for (size_t i = 0; i < len && i < max_shown && o + 4 < size; i++) {
        unsigned char ch = n->data.scalar.value[i];
        buf[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (len > max_shown && o + 4 < size) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
}

/* What the user wrote, for "got ..." in messages. */
static const char *describe_node(const yaml_node_t *n, char *buf, size_t size)
{
    char shown[64];
    switch (n->type) {
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SCALAR_NODE:
        if (is_null(n))
            return "an empty value";
        quote_scalar(n, shown, sizeof shown);
        if (is_plain(n))
            snprintf(buf, size, "%s", shown);
        else
            snprintf(buf, size, "\"%s\" (a quoted string)", shown);
        return buf;
    default: return "nothing";
    }
}

/* ---- scalar conversions ---------------------------------------------------------------------- */

/* Decimal integers only, unquoted, no leading zeros (YAML 1.1 would read "010" as octal).
 * Values past the int range are clamped so that range checks reject them. */
static bool scalar_as_int(const yaml_node_t *n, long long *out)
{
    if (!is_plain(n))
        return false;
    const char *t = scalar_text(n);
    size_t len = n->data.scalar.length;
    size_t i = (t[0] == '-' || t[0] == '+') ? 1 : 0;
    if (i == len || (t[i] == '0' && len - i > 1))
        return false;
    for (size_t j = i; j < len; j++)
        if (t[j] < '0' || t[j] > '9')
            return false;
    errno = 0;
    long long v = strtoll(t, NULL, 10);
    if (errno == ERANGE || v > INT_MAX || v < INT_MIN)
        v = (t[0] == '-') ? (long long)INT_MIN - 1 : (long long)INT_MAX + 1;
    *out = v;
    return true;
}

/* A non-null scalar whose bytes contain no NUL (C strings must hold all of it). */
static bool scalar_as_string(const yaml_node_t *n, const char **out)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return false;
    if (strlen(scalar_text(n)) != n->data.scalar.length)
        return false;
    *out = scalar_text(n);
    return true;
}

static bool is_identifier(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

static bool is_spec_name(const char *s)
{
    size_t len = strlen(s);
    if (len < 1 || len >= MG_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* ---- mapping helpers ------------------------------------------------------------------------- */

static yaml_node_t *node_at(const parse_ctx *c, int index)
{
    return yaml_document_get_node(c->doc, index);
}

static int mapping_size(const yaml_node_t *map)
{
    return (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
}

static bool same_scalar(const yaml_node_t *a, const yaml_node_t *b)
{
    return a->data.scalar.length == b->data.scalar.length &&
           memcmp(a->data.scalar.value, b->data.scalar.value, a->data.scalar.length) == 0;
}

/* Fetches pair i of a mapping, checking that its key is a string and that no earlier pair has
 * the same key.  what names the mapping in messages ("spec", "tuning", "tuning.route"). */
static mg_status mapping_pair(const parse_ctx *c, const yaml_node_t *map, int i, const char *what,
                              yaml_node_t **key, const char **key_text, yaml_node_t **value)
{
    const yaml_node_pair_t *pairs = map->data.mapping.pairs.start;
    yaml_node_t *k = node_at(c, pairs[i].key);
    char shown[96];
    if (!scalar_as_string(k, key_text))
        return fail_at(c, k->start_mark, "invalid key %s in %s; keys must be plain names",
                       describe_node(k, shown, sizeof shown), what);
    for (int j = 0; j < i; j++) {
        const yaml_node_t *earlier = node_at(c, pairs[j].key);
        if (earlier->type == YAML_SCALAR_NODE && same_scalar(earlier, k))
            return fail_at(c, k->start_mark,
                           "duplicated key '%s' in %s (first at line %d); each key may appear once",
                           *key_text, what, MARK_LINE(earlier->start_mark));
    }
    *key = k;
    *value = node_at(c, pairs[i].value);
    return MG_OK;
}

/* ---- top-level fields ------------------------------------------------------------------------ */

/* An integer in lo..hi that is a multiple of step; the message spells out exactly that. */
static mg_status parse_int_field(const parse_ctx *c, const yaml_node_t *n, const char *key,
                                 int lo, int hi, int step, int *out)
{
    long long v;
    char shown[96];
    bool ok = scalar_as_int(n, &v) && v >= lo && v <= hi && v % step == 0;
    if (!ok) {
        if (step > 1)
            return fail_at(c, n->start_mark, "%s must be a multiple of %d in %d..%d, got %s", key,
                           step, lo, hi, describe_node(n, shown, sizeof shown));
        return fail_at(c, n->start_mark, "%s must be an integer in %d..%d, got %s", key, lo, hi,
                       describe_node(n, shown, sizeof shown));
    }
    *out = (int)v;
    return MG_OK;
}

static mg_status parse_name(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    const char *text;
    char shown[96];
    if (!scalar_as_string(n, &text) || !is_spec_name(text))
        return fail_at(c, n->start_mark,
                       "invalid name: got %s; name must be 1..%d characters of [A-Za-z0-9_-]",
                       describe_node(n, shown, sizeof shown), MG_NAME_MAX - 1);
    snprintf(s->name, sizeof s->name, "%s", text);
    return MG_OK;
}

static mg_status parse_head_dim(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    return parse_int_field(c, n, "head_dim", 32, 256, 32, &s->head_dim);
}

static mg_status parse_block_size(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    return parse_int_field(c, n, "block_size", 16, 512, 16, &s->block_size);
}

static mg_status parse_top_k(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    return parse_int_field(c, n, "top_k", 1, MG_MAX_TOP_K, 1, &s->top_k);
}

static mg_status parse_conv_width(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    return parse_int_field(c, n, "conv_width", 0, 8, 1, &s->conv_width);
}

static mg_status parse_gqa_group(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    return parse_int_field(c, n, "gqa_group", 1, 64, 1, &s->gqa_group);
}

/* YAML 1.2 booleans only: "yes", "on" and friends are YAML 1.1 and surprise people. */
static mg_status parse_causal(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    char shown[96];
    if (is_plain(n) && strcmp(scalar_text(n), "true") == 0)
        s->causal = 1;
    else if (is_plain(n) && strcmp(scalar_text(n), "false") == 0)
        s->causal = 0;
    else
        return fail_at(c, n->start_mark, "causal must be true or false, got %s",
                       describe_node(n, shown, sizeof shown));
    return MG_OK;
}

static mg_status parse_dtype(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    const char *text = NULL;
    char shown[96];
    bool is_string = scalar_as_string(n, &text);
    if (is_string && strcmp(text, "bf16") == 0)
        s->dtype = MG_BF16;
    else if (is_string && strcmp(text, "fp16") == 0)
        s->dtype = MG_FP16;
    else
        return fail_at(c, n->start_mark, "dtype must be bf16 or fp16, got %s",
                       describe_node(n, shown, sizeof shown));
    return MG_OK;
}

static mg_status parse_archs(const parse_ctx *c, const yaml_node_t *n, mg_spec *s)
{
    char shown[96];
    if (n->type != YAML_SEQUENCE_NODE)
        return fail_at(c, n->start_mark, "archs must be a list of arch names, got %s; known: %s",
                       describe_node(n, shown, sizeof shown), mg_arch_known_list());
    const yaml_node_item_t *items = n->data.sequence.items.start;
    int count = (int)(n->data.sequence.items.top - items);
    if (count == 0)
        return fail_at(c, n->start_mark, "archs is empty; list at least one of: %s",
                       mg_arch_known_list());
    s->n_archs = 0;
    for (int i = 0; i < count; i++) {
        const yaml_node_t *item = node_at(c, items[i]);
        const char *text;
        if (!scalar_as_string(item, &text))
            return fail_at(c, item->start_mark, "archs entries must be arch names, got %s; "
                           "known archs: %s", describe_node(item, shown, sizeof shown),
                           mg_arch_known_list());
        if (!mg_arch_lookup(text))
            return fail_at(c, item->start_mark, "unknown arch %s; known archs: %s",
                           describe_node(item, shown, sizeof shown), mg_arch_known_list());
        for (int j = 0; j < i; j++) {
            const yaml_node_t *earlier = node_at(c, items[j]);
            if (strcmp(scalar_text(earlier), text) == 0)
                return fail_at(c, item->start_mark,
                               "duplicated arch '%s' (first at line %d, column %d); list each "
                               "arch once",
                               text, MARK_LINE(earlier->start_mark),
                               MARK_COL(earlier->start_mark));
        }
        /* Unreachable while the table is smaller than MG_MAX_ARCHS, but cheap to keep honest. */
        if (s->n_archs == MG_MAX_ARCHS)
            return fail_at(c, item->start_mark, "too many archs; at most %d", MG_MAX_ARCHS);
        snprintf(s->archs[s->n_archs++], sizeof s->archs[0], "%s", text);
    }
    return MG_OK;
}

/* ---- tuning ---------------------------------------------------------------------------------- */

static mg_status parse_knob_value(const parse_ctx *c, const yaml_node_t *n, const char *knob,
                                  mg_knob *k)
{
    long long v;
    char shown[96];
    if (!scalar_as_int(n, &v) || v < 1 || v > INT_MAX)
        return fail_at(c, n->start_mark,
                       "knob '%s' values must be integers >= 1, got %s", knob,
                       describe_node(n, shown, sizeof shown));
    for (int i = 0; i < k->n_values; i++)
        if (k->values[i] == v)
            return fail_at(c, n->start_mark,
                           "duplicated value %lld in knob '%s'; list each value once", v, knob);
    if (k->n_values == MG_MAX_KNOB_VALUES)
        return fail_at(c, n->start_mark, "knob '%s' has too many values; at most %d", knob,
                       MG_MAX_KNOB_VALUES);
    k->values[k->n_values++] = (int)v;
    return MG_OK;
}

/* A knob is one int or a non-empty list of ints. */
static mg_status parse_knob_values(const parse_ctx *c, const yaml_node_t *n, mg_knob *k)
{
    char shown[96];
    k->n_values = 0;
    if (n->type == YAML_SCALAR_NODE)
        return parse_knob_value(c, n, k->name, k);
    if (n->type != YAML_SEQUENCE_NODE)
        return fail_at(c, n->start_mark,
                       "knob '%s' must be an integer or a list of integers, got %s", k->name,
                       describe_node(n, shown, sizeof shown));
    const yaml_node_item_t *items = n->data.sequence.items.start;
    int count = (int)(n->data.sequence.items.top - items);
    if (count == 0)
        return fail_at(c, n->start_mark,
                       "knob '%s' has an empty list; give 1..%d integers >= 1", k->name,
                       MG_MAX_KNOB_VALUES);
    for (int i = 0; i < count; i++) {
        mg_status st = parse_knob_value(c, node_at(c, items[i]), k->name, k);
        if (st != MG_OK)
            return st;
    }
    return MG_OK;
}

static mg_status parse_template_tuning(const parse_ctx *c, const yaml_node_t *map, mg_tuning *t)
{
    char what[MG_NAME_MAX + 16], shown[96];
    snprintf(what, sizeof what, "tuning.%s", t->template_name);
    if (map->type != YAML_MAPPING_NODE)
        return fail_at(c, map->start_mark,
                       "tuning.%s must be a mapping of knob name to values, got %s",
                       t->template_name, describe_node(map, shown, sizeof shown));
    t->n_knobs = 0;
    for (int i = 0; i < mapping_size(map); i++) {
        yaml_node_t *key, *value;
        const char *knob;
        mg_status st = mapping_pair(c, map, i, what, &key, &knob, &value);
        if (st != MG_OK)
            return st;
        if (!is_identifier(knob) || strlen(knob) >= MG_NAME_MAX)
            return fail_at(c, key->start_mark,
                           "invalid knob name '%s'; knob names are identifiers "
                           "[A-Za-z_][A-Za-z0-9_]* of at most %d characters",
                           knob, MG_NAME_MAX - 1);
        if (t->n_knobs == MG_MAX_KNOBS)
            return fail_at(c, key->start_mark, "too many knobs in %s; at most %d", what,
                           MG_MAX_KNOBS);
        mg_knob *k = &t->knobs[t->n_knobs++];
        snprintf(k->name, sizeof k->name, "%s", knob);
        k->loc = loc_of(key);
        st = parse_knob_values(c, value, k);
        if (st != MG_OK)
            return st;
    }
    return MG_OK;
}

static mg_status parse_tuning(const parse_ctx *c, const yaml_node_t *map, mg_spec *s)
{
    char shown[96];
    if (map->type != YAML_MAPPING_NODE)
        return fail_at(c, map->start_mark,
                       "tuning must be a mapping of template name to knobs, got %s",
                       describe_node(map, shown, sizeof shown));
    s->n_tuning = 0;
    for (int i = 0; i < mapping_size(map); i++) {
        yaml_node_t *key, *value;
        const char *tname;
        mg_status st = mapping_pair(c, map, i, "tuning", &key, &tname, &value);
        if (st != MG_OK)
            return st;
        if (!is_identifier(tname) || strlen(tname) >= MG_NAME_MAX)
            return fail_at(c, key->start_mark,
                           "invalid template name '%s'; template names are identifiers "
                           "[A-Za-z_][A-Za-z0-9_]* of at most %d characters",
                           tname, MG_NAME_MAX - 1);
        if (s->n_tuning == MG_MAX_TUNED_TEMPLATES)
            return fail_at(c, key->start_mark, "too many templates in tuning; at most %d",
                           MG_MAX_TUNED_TEMPLATES);
        mg_tuning *t = &s->tuning[s->n_tuning++];
        snprintf(t->template_name, sizeof t->template_name, "%s", tname);
        t->loc = loc_of(key);
        st = parse_template_tuning(c, value, t);
        if (st != MG_OK)
            return st;
    }
    return MG_OK;
}

/* ---- the top-level mapping ------------------------------------------------------------------- */

typedef mg_status (*field_parser)(const parse_ctx *, const yaml_node_t *, mg_spec *);

static const struct spec_key {
    const char *key;
    bool required;
    field_parser parse;
} spec_keys[] = {
    {"name", true, parse_name},
    {"head_dim", true, parse_head_dim},
    {"block_size", true, parse_block_size},
    {"top_k", true, parse_top_k},
    {"causal", false, parse_causal},
    {"conv_width", false, parse_conv_width},
    {"dtype", false, parse_dtype},
    {"gqa_group", false, parse_gqa_group},
    {"archs", false, parse_archs},
    {"tuning", false, parse_tuning},
};
#define N_SPEC_KEYS (sizeof spec_keys / sizeof spec_keys[0])

static void list_keys(char *buf, size_t size, bool required_only)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_SPEC_KEYS && o < size; i++) {
        if (required_only && !spec_keys[i].required)
            continue;
        o += (size_t)snprintf(buf + o, size - o, "%s%s", o ? ", " : "", spec_keys[i].key);
    }
}

static int find_spec_key(const char *key)
{
    for (size_t i = 0; i < N_SPEC_KEYS; i++)
        if (strcmp(spec_keys[i].key, key) == 0)
            return (int)i;
    return -1;
}

static void set_defaults(mg_spec *s)
{
    memset(s, 0, sizeof *s);
    s->causal = 1;
    s->conv_width = 0;
    s->dtype = MG_BF16;
    s->gqa_group = 1;
    snprintf(s->archs[0], sizeof s->archs[0], "sm_80");
    snprintf(s->archs[1], sizeof s->archs[1], "sm_90a");
    s->n_archs = 2;
}

static bool is_empty_document(const yaml_node_t *root)
{
    return root == NULL || (is_null(root) && root->data.scalar.length == 0);
}

static mg_status parse_root(const parse_ctx *c, const yaml_node_t *root, mg_spec *s)
{
    char allowed[256], shown[96];
    list_keys(allowed, sizeof allowed, false);
    if (is_empty_document(root))
        return fail_at_pos(c, 1, 1, "spec is empty; expected a mapping with keys: %s", allowed);
    if (root->type != YAML_MAPPING_NODE)
        return fail_at(c, root->start_mark,
                       "the top level must be a mapping, got %s; allowed keys: %s",
                       describe_node(root, shown, sizeof shown), allowed);

    bool seen[N_SPEC_KEYS] = {false};
    for (int i = 0; i < mapping_size(root); i++) {
        yaml_node_t *key, *value;
        const char *key_text;
        mg_status st = mapping_pair(c, root, i, "spec", &key, &key_text, &value);
        if (st != MG_OK)
            return st;
        int k = find_spec_key(key_text);
        if (k < 0)
            return fail_at(c, key->start_mark, "unknown key '%s'; allowed keys: %s", key_text,
                           allowed);
        seen[k] = true;
        st = spec_keys[k].parse(c, value, s);
        if (st != MG_OK)
            return st;
    }
    for (size_t k = 0; k < N_SPEC_KEYS; k++) {
        if (spec_keys[k].required && !seen[k]) {
            char required[128];
            list_keys(required, sizeof required, true);
            return fail_at(c, root->start_mark, "missing required key '%s'; required keys: %s",
                           spec_keys[k].key, required);
        }
    }
    return MG_OK;
}

/* ---- libyaml plumbing ------------------------------------------------------------------------ */

/* Reader errors carry a byte offset rather than a mark; turn it into line and column. */
static void offset_to_line_col(const parse_ctx *c, size_t offset, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset && i < c->len; i++) {
        if (c->text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static mg_status yaml_failure(const parse_ctx *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return mg_fail(c->diag, MG_E_NOMEM, "%s: out of memory while parsing YAML", c->file);
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_READER_ERROR) {
        int line, col;
        offset_to_line_col(c, p->problem_offset, &line, &col);
        return fail_at_pos(c, line, col, "invalid YAML: %s; a spec must be UTF-8 text", problem);
    }
    if (p->context)
        return fail_at(c, p->problem_mark,
                       "invalid YAML: %s (%s at line %d, column %d); fix the YAML syntax",
                       problem, p->context, MARK_LINE(p->context_mark),
                       MARK_COL(p->context_mark));
    return fail_at(c, p->problem_mark, "invalid YAML: %s; fix the YAML syntax", problem);
}

/* What a single event may not carry: anchors (and so aliases) make one value stand for
 * another, which hides where a setting came from; tags change a value's type silently. */
static mg_status check_event(const parse_ctx *c, const yaml_event_t *e, int *documents,
                             int *depth)
{
    const yaml_char_t *anchor = NULL, *tag = NULL;
    if (e->type == YAML_SEQUENCE_START_EVENT || e->type == YAML_MAPPING_START_EVENT) {
        if (++*depth > MG_SPEC_MAX_DEPTH)
            return fail_at(c, e->start_mark, "YAML nested deeper than %d levels; a spec needs "
                           "four (top level, tuning, template, knob values)", MG_SPEC_MAX_DEPTH);
    } else if (e->type == YAML_SEQUENCE_END_EVENT || e->type == YAML_MAPPING_END_EVENT) {
        --*depth;
    }
    switch (e->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++*documents > 1)
            return fail_at(c, e->start_mark,
                           "a second YAML document; a spec file holds exactly one document");
        return MG_OK;
    case YAML_ALIAS_EVENT:
        return fail_at(c, e->start_mark,
                       "YAML alias '*%s' is not supported; write the value out in full",
                       (const char *)e->data.alias.anchor);
    case YAML_SCALAR_EVENT:
        anchor = e->data.scalar.anchor;
        tag = e->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = e->data.sequence_start.anchor;
        tag = e->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = e->data.mapping_start.anchor;
        tag = e->data.mapping_start.tag;
        break;
    default: return MG_OK;
    }
    if (anchor)
        return fail_at(c, e->start_mark,
                       "YAML anchor '&%s' is not supported; anchors and aliases are not allowed "
                       "in specs", (const char *)anchor);
    if (tag)
        return fail_at(c, e->start_mark,
                       "YAML tag '%s' is not supported; write values without tags",
                       (const char *)tag);
    return MG_OK;
}

static mg_status check_events(const parse_ctx *c)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return mg_fail(c->diag, MG_E_NOMEM, "%s: out of memory while parsing YAML", c->file);
    yaml_parser_set_input_string(&parser, (const unsigned char *)c->text, c->len);
    mg_status st = MG_OK;
    int documents = 0, depth = 0;
    bool done = false;
    while (st == MG_OK && !done) {
        yaml_event_t event;
        if (!yaml_parser_parse(&parser, &event)) {
            st = yaml_failure(c, &parser);
            break;
        }
        st = check_event(c, &event, &documents, &depth);
        done = event.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);
    return st;
}

static mg_status parse_document(parse_ctx *c, mg_spec *s)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return mg_fail(c->diag, MG_E_NOMEM, "%s: out of memory while parsing YAML", c->file);
    yaml_parser_set_input_string(&parser, (const unsigned char *)c->text, c->len);
    mg_status st;
    if (!yaml_parser_load(&parser, &doc)) {
        st = yaml_failure(c, &parser);
    } else {
        c->doc = &doc;
        st = parse_root(c, yaml_document_get_root_node(&doc), s);
        c->doc = NULL;
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    return st;
}

/* ---- entry points ---------------------------------------------------------------------------- */

mg_status mg_spec_parse(const char *text, size_t len, const char *name, mg_spec *out,
                        mg_diag *diag)
{
    if (!text || !name || !out)
        return mg_fail(diag, MG_E_ARG, "mg_spec_parse: text, name and out must not be NULL");
    if (strlen(name) >= sizeof out->path)
        return mg_fail(diag, MG_E_ARG, "mg_spec_parse: spec name is longer than %zu bytes",
                       sizeof out->path - 1);
    parse_ctx c = {.file = name, .text = text, .len = len, .diag = diag};
    if (len > MG_SPEC_MAX_BYTES)
        return fail_at_pos(&c, 1, 1, "spec is %zu bytes; a spec may be at most %u bytes", len,
                           MG_SPEC_MAX_BYTES);

    mg_status st = check_events(&c);
    if (st != MG_OK)
        return st;
    mg_spec *s = malloc(sizeof *s); /* ~20 KB: too big to be polite on a caller's stack */
    if (!s)
        return mg_fail(diag, MG_E_NOMEM, "%s: out of memory", name);
    set_defaults(s);
    snprintf(s->path, sizeof s->path, "%s", name);
    st = parse_document(&c, s);
    if (st == MG_OK)
        *out = *s;
    free(s);
    return st;
}

/* Reads a whole file, refusing anything over the spec size limit: one byte past it is read at
 * most, whatever the file is (a pipe, /dev/zero). */
static mg_status read_file(const char *path, char **text, size_t *len, mg_diag *diag)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mg_fail(diag, MG_E_IO, "cannot read %s: %s", path, strerror(errno));
    char *buf = malloc(MG_SPEC_MAX_BYTES + 1);
    size_t n = 0;
    mg_status st = buf ? MG_OK : mg_fail(diag, MG_E_NOMEM, "%s: out of memory", path);
    while (st == MG_OK && n <= MG_SPEC_MAX_BYTES) {
        size_t got = fread(buf + n, 1, MG_SPEC_MAX_BYTES + 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                st = mg_fail(diag, MG_E_IO, "cannot read %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (st == MG_OK && n > MG_SPEC_MAX_BYTES)
        st = mg_fail(diag, MG_E_SPEC, "%s:1:1: file is larger than %u bytes; a spec may be at "
                     "most %u bytes", path, MG_SPEC_MAX_BYTES, MG_SPEC_MAX_BYTES);
    if (st != MG_OK) {
        free(buf);
        return st;
    }
    *text = buf;
    *len = n;
    return MG_OK;
}

mg_status mg_spec_load(const char *path, mg_spec *out, mg_diag *diag)
{
    if (!path || !out)
        return mg_fail(diag, MG_E_ARG, "mg_spec_load: path and out must not be NULL");
    char *text = NULL;
    size_t len = 0;
    mg_status st = read_file(path, &text, &len, diag);
    if (st != MG_OK)
        return st;
    st = mg_spec_parse(text, len, path, out, diag);
    free(text);
    return st;
}
