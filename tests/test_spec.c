/* Spec parsing: the shipped specs load with the right fields, and every class of bad spec is
 * rejected with MG_E_SPEC pointing at the exact line and column. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "util/testutil.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static const char *repo_root(void)
{
    const char *root = getenv("MOBAGEN_TEST_ROOT");
    return (root && *root) ? root : ".";
}

static mg_status parse_text(const char *yaml, mg_spec *out, mg_diag *diag)
{
    diag->msg[0] = '\0';
    return mg_spec_parse(yaml, strlen(yaml), "x.yaml", out, diag);
}

/* Parses text that must fail; checks the status, the "x.yaml:LINE:COL:" prefix and a phrase. */
static void expect_spec_error(const char *yaml, const char *where, const char *phrase)
{
    /* On the stack: a failed assertion longjmps out, which would leak a heap copy. */
    mg_spec s;
    mg_diag d;
    mg_status st = parse_text(yaml, &s, &d);
    if (st != MG_E_SPEC || strncmp(d.msg, where, strlen(where)) != 0 || !strstr(d.msg, phrase))
        print_error("yaml:\n%s\nstatus %s, message: %s\nwanted prefix '%s' and phrase '%s'\n",
                    yaml, mg_status_name(st), d.msg, where, phrase);
    assert_int_equal(st, MG_E_SPEC);
    assert_true(strncmp(d.msg, where, strlen(where)) == 0);
    assert_non_null(strstr(d.msg, phrase));
}

#define MINIMAL "name: t\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n"

/* ---- shipped specs --------------------------------------------------------------------------- */

typedef struct expected_spec {
    const char *file, *name;
    int head_dim, block_size, top_k, conv_width;
} expected_spec;

static const expected_spec shipped[] = {
    {"default.yaml", "default", 128, 128, 8, 0},
    {"moba_d128_b128_k8.yaml", "moba_d128_b128_k8", 128, 128, 8, 0},
    {"moba_d128_b64_k16.yaml", "moba_d128_b64_k16", 128, 64, 16, 0},
    {"moba_d128_b32_k32.yaml", "moba_d128_b32_k32", 128, 32, 32, 0},
    {"moba_d128_b128_k8_kconv3.yaml", "moba_d128_b128_k8_kconv3", 128, 128, 8, 3},
    {"moba_d128_b64_k16_kconv3.yaml", "moba_d128_b64_k16_kconv3", 128, 64, 16, 3},
    {"moba_d128_b32_k32_kconv3.yaml", "moba_d128_b32_k32_kconv3", 128, 32, 32, 3},
    {"moba_d64_b128_k8.yaml", "moba_d64_b128_k8", 64, 128, 8, 0},
};

static void check_knob(const mg_spec *s, const char *tpl, const char *knob, int v0, int v1)
{
    const mg_tuning *t = mg_spec_tuning_for(s, tpl);
    assert_non_null(t);
    assert_int_equal(t->n_knobs, 1);
    assert_string_equal(t->knobs[0].name, knob);
    assert_int_equal(t->knobs[0].n_values, 2);
    assert_int_equal(t->knobs[0].values[0], v0);
    assert_int_equal(t->knobs[0].values[1], v1);
}

static void test_shipped_specs_have_expected_fields(void **state)
{
    (void)state;
    mg_spec spec, *s = &spec;
    for (size_t i = 0; i < sizeof shipped / sizeof shipped[0]; i++) {
        const expected_spec *e = &shipped[i];
        char path[1024];
        snprintf(path, sizeof path, "%s/specs/%s", repo_root(), e->file);
        mg_diag d = {{0}};
        mg_status st = mg_spec_load(path, s, &d);
        if (st != MG_OK)
            print_error("%s: %s\n", path, d.msg);
        assert_int_equal(st, MG_OK);
        assert_string_equal(s->path, path);
        assert_string_equal(s->name, e->name);
        assert_int_equal(s->head_dim, e->head_dim);
        assert_int_equal(s->block_size, e->block_size);
        assert_int_equal(s->top_k, e->top_k);
        assert_int_equal(s->conv_width, e->conv_width);
        assert_int_equal(s->causal, 1);
        assert_int_equal(s->dtype, MG_BF16);
        assert_int_equal(s->gqa_group, 1);
        assert_int_equal(s->n_archs, 2);
        assert_string_equal(s->archs[0], "sm_80");
        assert_string_equal(s->archs[1], "sm_90a");
        assert_int_equal(s->n_tuning, 3);
        check_knob(s, "kconv_centroid", "threads", 128, 256);
        check_knob(s, "route", "block_m", 256, 64);
        check_knob(s, "attn_fwd", "warps", 4, 8);
    }
}

/* Any spec someone adds under specs/ must at least parse. */
static void test_every_shipped_spec_parses(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/specs", repo_root());
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    mg_spec spec, *s = &spec;
    int count = 0;
    struct dirent *ent;
    while ((ent = readdir(dp)) != NULL) {
        size_t len = strlen(ent->d_name);
        if (len < 6 || strcmp(ent->d_name + len - 5, ".yaml") != 0)
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        mg_diag d = {{0}};
        mg_status st = mg_spec_load(path, s, &d);
        if (st != MG_OK)
            print_error("%s: %s\n", path, d.msg);
        assert_int_equal(st, MG_OK);
        count++;
    }
    closedir(dp);
    assert_true(count >= (int)(sizeof shipped / sizeof shipped[0]));
}

/* ---- good specs ------------------------------------------------------------------------------ */

static void test_defaults_applied(void **state)
{
    (void)state;
    mg_spec s;
    mg_diag d;
    assert_int_equal(parse_text(MINIMAL, &s, &d), MG_OK);
    assert_string_equal(s.path, "x.yaml");
    assert_string_equal(s.name, "t");
    assert_int_equal(s.causal, 1);
    assert_int_equal(s.conv_width, 0);
    assert_int_equal(s.dtype, MG_BF16);
    assert_int_equal(s.gqa_group, 1);
    assert_int_equal(s.n_archs, 2);
    assert_string_equal(s.archs[0], "sm_80");
    assert_string_equal(s.archs[1], "sm_90a");
    assert_int_equal(s.n_tuning, 0);
    assert_null(mg_spec_tuning_for(&s, "route"));
}

static void test_all_keys_set(void **state)
{
    (void)state;
    const char *yaml = "name: \"my-spec_2\"\n"
                       "head_dim: 256\n"
                       "block_size: 512\n"
                       "top_k: 64\n"
                       "causal: false\n"
                       "conv_width: 8\n"
                       "dtype: fp16\n"
                       "gqa_group: 64\n"
                       "archs:\n"
                       "  - sm_120\n"
                       "  - sm_86\n"
                       "  - sm_100a\n";
    mg_spec s;
    mg_diag d;
    assert_int_equal(parse_text(yaml, &s, &d), MG_OK);
    assert_string_equal(s.name, "my-spec_2");
    assert_int_equal(s.head_dim, 256);
    assert_int_equal(s.block_size, 512);
    assert_int_equal(s.top_k, 64);
    assert_int_equal(s.causal, 0);
    assert_int_equal(s.conv_width, 8);
    assert_int_equal(s.dtype, MG_FP16);
    assert_int_equal(s.gqa_group, 64);
    assert_int_equal(s.n_archs, 3);
    assert_string_equal(s.archs[0], "sm_120");
    assert_string_equal(s.archs[1], "sm_86");
    assert_string_equal(s.archs[2], "sm_100a");
}

static void test_tuning_values_and_locations(void **state)
{
    (void)state;
    const char *yaml = MINIMAL "tuning:\n"
                               "  route:\n"
                               "    block_m: 64\n"
                               "    stages: [1, 2, 3]\n"
                               "  attn_fwd: {warps: [4, 8]}\n"
                               "  empty_one: {}\n";
    mg_spec s;
    mg_diag d;
    assert_int_equal(parse_text(yaml, &s, &d), MG_OK);
    assert_int_equal(s.n_tuning, 3);
    const mg_tuning *r = mg_spec_tuning_for(&s, "route");
    assert_non_null(r);
    assert_int_equal(r->loc.line, 6);
    assert_int_equal(r->loc.col, 3);
    assert_int_equal(r->n_knobs, 2);
    assert_string_equal(r->knobs[0].name, "block_m");
    assert_int_equal(r->knobs[0].n_values, 1);
    assert_int_equal(r->knobs[0].values[0], 64);
    assert_int_equal(r->knobs[0].loc.line, 7);
    assert_int_equal(r->knobs[0].loc.col, 5);
    assert_int_equal(r->knobs[1].n_values, 3);
    assert_int_equal(r->knobs[1].values[2], 3);
    assert_int_equal(r->knobs[1].loc.line, 8);
    const mg_tuning *a = mg_spec_tuning_for(&s, "attn_fwd");
    assert_non_null(a);
    assert_int_equal(a->loc.line, 9);
    assert_int_equal(a->knobs[0].loc.col, 14);
    assert_int_equal(a->knobs[0].values[1], 8);
    assert_int_equal(mg_spec_tuning_for(&s, "empty_one")->n_knobs, 0);
    assert_null(mg_spec_tuning_for(&s, "kconv_centroid"));
}

static void test_explicit_document_markers_and_comments(void **state)
{
    (void)state;
    mg_spec s;
    mg_diag d;
    assert_int_equal(parse_text("%YAML 1.2\n---\n# comment\n" MINIMAL "...\n", &s, &d), MG_OK);
    assert_int_equal(s.top_k, 8);
}

/* ---- bad specs, one test per class ----------------------------------------------------------- */

static void test_malformed_yaml(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: [128\n", "x.yaml:3:1:", "invalid YAML");
    expect_spec_error("name: t\n  head_dim: 128\n", "x.yaml:2:11:", "invalid YAML");
    expect_spec_error("name: \"t\n", "x.yaml:2:1:", "invalid YAML");
    expect_spec_error("name: t\n\thead_dim: 1\n", "x.yaml:2:1:", "invalid YAML");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: \xff\n", "x.yaml:2:11:", "UTF-8");
}

static void test_empty_file(void **state)
{
    (void)state;
    expect_spec_error("", "x.yaml:1:1:", "spec is empty");
    expect_spec_error("# only a comment\n\n", "x.yaml:1:1:", "spec is empty");
    expect_spec_error("---\n", "x.yaml:1:1:", "spec is empty");
}

static void test_top_level_not_mapping(void **state)
{
    (void)state;
    expect_spec_error("- name: t\n", "x.yaml:1:1:", "top level must be a mapping, got a list");
    expect_spec_error("\n  just text\n", "x.yaml:2:3:", "top level must be a mapping");
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "\n\nblok_size: 64\n", "x.yaml:7:1:", "unknown key 'blok_size'");
    expect_spec_error(MINIMAL "blok_size: 64\n", "x.yaml:5:1:",
                      "allowed keys: name, head_dim, block_size, top_k, causal");
}

static void test_non_string_key(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "? [a, b]\n: 1\n", "x.yaml:5:3:", "keys must be plain names");
}

static void test_duplicated_keys(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: 128\ntop_k: 8\nblock_size: 64\ntop_k: 9\n",
                      "x.yaml:5:1:", "duplicated key 'top_k' in spec (first at line 3)");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: 64}\n  route: {block_m: 32}\n",
                      "x.yaml:7:3:", "duplicated key 'route' in tuning (first at line 6)");
    expect_spec_error(MINIMAL "tuning:\n  route:\n    block_m: 64\n    block_m: 32\n",
                      "x.yaml:8:5:", "duplicated key 'block_m' in tuning.route (first at line 7)");
}

static void test_missing_required_key(void **state)
{
    (void)state;
    expect_spec_error("\n# header\nname: t\nhead_dim: 128\ntop_k: 8\n", "x.yaml:3:1:",
                      "missing required key 'block_size'");
    expect_spec_error("{head_dim: 128, block_size: 64, top_k: 8}", "x.yaml:1:1:",
                      "required keys: name, head_dim, block_size, top_k");
}

static void test_integer_wrong_type(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: \"128\"\n", "x.yaml:2:11:", "quoted string");
    expect_spec_error("name: t\ntop_k: 1.5\n", "x.yaml:2:8:", "must be an integer in 1..64, got 1.5");
    expect_spec_error("name: t\ntop_k: 0x10\n", "x.yaml:2:8:", "got 0x10");
    expect_spec_error("name: t\ntop_k: 010\n", "x.yaml:2:8:", "got 010");
    expect_spec_error("name: t\ntop_k: [8]\n", "x.yaml:2:8:", "got a list");
    expect_spec_error("name: t\ntop_k: {a: 1}\n", "x.yaml:2:8:", "got a mapping");
    expect_spec_error("name: t\ntop_k:\nhead_dim: 64\n", "x.yaml:2:7:", "got an empty value");
    expect_spec_error("name: t\ntop_k: true\n", "x.yaml:2:8:", "got true");
}

static void test_integer_out_of_range(void **state)
{
    (void)state;
    expect_spec_error("name: t\ntop_k: 100\n", "x.yaml:2:8:", "top_k must be an integer in 1..64, got 100");
    expect_spec_error("name: t\ntop_k: 0\n", "x.yaml:2:8:", "1..64");
    expect_spec_error("name: t\ntop_k: -3\n", "x.yaml:2:8:", "got -3");
    expect_spec_error("name: t\ntop_k: 99999999999999999999\n", "x.yaml:2:8:", "1..64");
    expect_spec_error("name: t\nhead_dim: 100\n", "x.yaml:2:11:", "multiple of 32 in 32..256");
    expect_spec_error("name: t\nhead_dim: 288\n", "x.yaml:2:11:", "multiple of 32 in 32..256");
    expect_spec_error("name: t\nblock_size: 8\n", "x.yaml:2:13:", "multiple of 16 in 16..512");
    expect_spec_error("name: t\nblock_size: 40\n", "x.yaml:2:13:", "multiple of 16 in 16..512");
    expect_spec_error(MINIMAL "conv_width: 9\n", "x.yaml:5:13:", "conv_width must be an integer in 0..8");
    expect_spec_error(MINIMAL "gqa_group: 0\n", "x.yaml:5:12:", "gqa_group must be an integer in 1..64");
    expect_spec_error(MINIMAL "gqa_group: 65\n", "x.yaml:5:12:", "1..64");
}

static void test_bad_bool(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "causal: yes\n", "x.yaml:5:9:", "causal must be true or false, got yes");
    expect_spec_error(MINIMAL "causal: 1\n", "x.yaml:5:9:", "true or false");
    expect_spec_error(MINIMAL "causal: \"true\"\n", "x.yaml:5:9:", "quoted string");
    expect_spec_error(MINIMAL "causal: True\n", "x.yaml:5:9:", "true or false");
}

static void test_bad_name(void **state)
{
    (void)state;
    expect_spec_error("name: a b\n", "x.yaml:1:7:", "[A-Za-z0-9_-]");
    expect_spec_error("name: \"\"\n", "x.yaml:1:7:", "1..63 characters");
    expect_spec_error("name: [a]\n", "x.yaml:1:7:", "got a list");
    expect_spec_error("name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                      "x.yaml:1:7:", "1..63 characters");
    expect_spec_error("name: \"a\\0b\"\n", "x.yaml:1:7:", "invalid name");
}

static void test_bad_dtype(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "dtype: fp32\n", "x.yaml:5:8:", "dtype must be bf16 or fp16");
    expect_spec_error(MINIMAL "dtype: [bf16]\n", "x.yaml:5:8:", "bf16 or fp16");
}

static void test_bad_archs(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "archs: [sm_80, sm_75]\n", "x.yaml:5:16:", "unknown arch sm_75");
    expect_spec_error(MINIMAL "archs: [sm_80, sm_75]\n", "x.yaml:5:16:", mg_arch_known_list());
    expect_spec_error(MINIMAL "archs:\n  - sm_90a\n  - sm_80\n  - sm_90a\n", "x.yaml:8:5:",
                      "duplicated arch 'sm_90a' (first at line 6");
    expect_spec_error(MINIMAL "archs: []\n", "x.yaml:5:8:", "archs is empty");
    expect_spec_error(MINIMAL "archs: sm_80\n", "x.yaml:5:8:", "archs must be a list");
    expect_spec_error(MINIMAL "archs: [[sm_80]]\n", "x.yaml:5:9:", "archs entries must be arch names, got a list");
}

static void test_bad_tuning_structure(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "tuning: [route]\n", "x.yaml:5:9:", "tuning must be a mapping");
    expect_spec_error(MINIMAL "tuning:\n  route: 64\n", "x.yaml:6:10:",
                      "tuning.route must be a mapping of knob name to values, got 64");
    expect_spec_error(MINIMAL "tuning:\n  9route: {a: 1}\n", "x.yaml:6:3:",
                      "invalid template name '9route'");
    expect_spec_error(MINIMAL "tuning:\n  route: {block-m: 1}\n", "x.yaml:6:11:",
                      "invalid knob name 'block-m'");
}

static void test_bad_knob_values(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: [64, 1.5]}\n", "x.yaml:6:25:",
                      "knob 'block_m' values must be integers >= 1, got 1.5");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: [64, 0]}\n", "x.yaml:6:25:", ">= 1");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: \"64\"}\n", "x.yaml:6:20:",
                      "quoted string");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: []}\n", "x.yaml:6:20:",
                      "empty list");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: {a: 1}}\n", "x.yaml:6:20:",
                      "must be an integer or a list of integers, got a mapping");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: [[64]]}\n", "x.yaml:6:21:",
                      "got a list");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: [64, 128, 64]}\n", "x.yaml:6:30:",
                      "duplicated value 64 in knob 'block_m'");
    expect_spec_error(MINIMAL "tuning:\n  route: {block_m: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,"
                              "16,17]}\n",
                      "x.yaml:6:60:", "at most 16");
}

static void test_tuning_limits(void **state)
{
    (void)state;
    char yaml[4096];
    int n = snprintf(yaml, sizeof yaml, MINIMAL "tuning:\n");
    for (int i = 0; i <= MG_MAX_TUNED_TEMPLATES; i++)
        n += snprintf(yaml + n, sizeof yaml - (size_t)n, "  t%d: {a: 1}\n", i);
    expect_spec_error(yaml, "x.yaml:14:3:", "too many templates");

    n = snprintf(yaml, sizeof yaml, MINIMAL "tuning:\n  route:\n");
    for (int i = 0; i <= MG_MAX_KNOBS; i++)
        n += snprintf(yaml + n, sizeof yaml - (size_t)n, "    k%d: 1\n", i);
    expect_spec_error(yaml, "x.yaml:23:5:", "too many knobs in tuning.route");
}

static void test_anchors_and_aliases_rejected(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: &d 128\nblock_size: *d\n", "x.yaml:2:11:",
                      "anchor '&d' is not supported");
    expect_spec_error("name: t\nhead_dim: 128\nblock_size: *d\n", "x.yaml:3:13:",
                      "alias '*d' is not supported");
}

static void test_tags_rejected(void **state)
{
    (void)state;
    expect_spec_error("name: t\nhead_dim: !!int \"128\"\n", "x.yaml:2:11:", "tag");
}

static void test_several_documents_rejected(void **state)
{
    (void)state;
    expect_spec_error(MINIMAL "---\n" MINIMAL, "x.yaml:5:1:", "exactly one document");
}

/* ---- API contract ---------------------------------------------------------------------------- */

static void test_output_untouched_on_error(void **state)
{
    (void)state;
    mg_spec spec, sentinel_spec, *s = &spec, *sentinel = &sentinel_spec;
    memset(sentinel, 0xA5, sizeof *sentinel);
    const char *bad[] = {
        MINIMAL "top_k: 9\n",                                 /* duplicate after good fields */
        MINIMAL "tuning:\n  route: {block_m: [64, 0]}\n",     /* fails deep inside tuning */
        "name: t\nhead_dim: 128\n",                           /* missing keys */
        "name: [",                                            /* syntax */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(s, sentinel, sizeof *s);
        mg_diag d;
        assert_int_equal(parse_text(bad[i], s, &d), MG_E_SPEC);
        assert_memory_equal(s, sentinel, sizeof *s);
    }
    memcpy(s, sentinel, sizeof *s);
    mg_diag d;
    assert_int_equal(mg_spec_load("/nonexistent/dir/spec.yaml", s, &d), MG_E_IO);
    assert_memory_equal(s, sentinel, sizeof *s);
}

static void test_load_missing_file(void **state)
{
    (void)state;
    mg_spec s;
    mg_diag d = {{0}};
    assert_int_equal(mg_spec_load("/nonexistent/dir/spec.yaml", &s, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "cannot read /nonexistent/dir/spec.yaml: "));
    assert_non_null(strstr(d.msg, "No such file"));
}

static void test_load_directory(void **state)
{
    (void)state;
    mg_spec s;
    mg_diag d = {{0}};
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/specs", repo_root());
    assert_int_equal(mg_spec_load(dir, &s, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, dir));
}

static void test_null_arguments(void **state)
{
    (void)state;
    mg_spec s;
    mg_diag d;
    assert_int_equal(mg_spec_parse(NULL, 0, "x", &s, &d), MG_E_ARG);
    assert_int_equal(mg_spec_parse("a: 1", 4, "x", NULL, &d), MG_E_ARG);
    assert_int_equal(mg_spec_load(NULL, &s, &d), MG_E_ARG);
    /* A NULL diag is allowed: the caller only wants the status. */
    assert_int_equal(mg_spec_parse("top_k: 1", 8, "x", &s, NULL), MG_E_SPEC);
}

static void test_arch_table(void **state)
{
    (void)state;
    const mg_arch_info *a = mg_arch_lookup("sm_80");
    assert_non_null(a);
    assert_int_equal(a->sm, 80);
    assert_int_equal(a->max_smem_optin, 166912);
    assert_int_equal(mg_arch_lookup("sm_90a")->max_smem_optin, 232448);
    assert_int_equal(mg_arch_lookup("sm_89")->max_smem_optin, 101376);
    assert_int_equal(mg_arch_lookup("sm_120")->sm, 120);
    assert_null(mg_arch_lookup("sm_75"));
    assert_null(mg_arch_lookup(NULL));

    /* The known list and the table must agree name for name. */
    char list[256];
    snprintf(list, sizeof list, "%s", mg_arch_known_list());
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save), n++) {
        const mg_arch_info *info = mg_arch_lookup(tok);
        assert_non_null(info);
        assert_string_equal(info->name, tok);
        assert_int_equal(info->has_bf16_mma, 1);
    }
    assert_int_equal(n, 9);
}

static void test_dtype_names(void **state)
{
    (void)state;
    assert_string_equal(mg_dtype_name(MG_BF16), "bf16");
    assert_string_equal(mg_dtype_name(MG_FP16), "fp16");
}

/* ---- hostile nesting ------------------------------------------------------------------------- */

/* "tuning: " then `depth` openers and as many closers, padded with spaces to `size` bytes. */
static char *nested_yaml(const char *open, const char *close, size_t depth, size_t size)
{
    char *y = malloc(size + 1);
    assert_non_null(y);
    size_t n = (size_t)sprintf(y, "tuning: ");
    for (size_t i = 0; i < depth; i++) n += (size_t)sprintf(y + n, "%s", open);
    for (size_t i = 0; i < depth; i++) n += (size_t)sprintf(y + n, "%s", close);
    assert_true(n <= size);
    memset(y + n, ' ', size - n);
    y[size] = 0;
    return y;
}

/* libyaml takes time quadratic in the nesting depth (80,000 '[' took a minute): the parser
 * stops at 32 levels, pointing at the opener that went too deep, in well under a second. */
static void test_deep_nesting_rejected_fast(void **state)
{
    (void)state;
    static const struct { const char *open, *close; size_t depth, size; } cases[] = {
        {"[", "]", 80000, 160008},
        {"[", "]", 524284, 1u << 20},       /* a whole 1 MiB of it */
        {"{a: ", "}", 200000, 1u << 20},
        {"[{a: ", "}]", 100000, 1u << 20},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *y = nested_yaml(cases[i].open, cases[i].close, cases[i].depth, cases[i].size);
        mg_spec s;
        mg_diag d = {{0}};
        double start = tu_now();
        mg_status st = mg_spec_parse(y, cases[i].size, "x.yaml", &s, &d);
        double took = tu_now() - start;
        free(y);
        if (st != MG_E_SPEC || !strstr(d.msg, "x.yaml:1:") || !strstr(d.msg, "nested deeper than 32"))
            print_error("case %zu: %s %s\n", i, mg_status_name(st), d.msg);
        assert_int_equal(st, MG_E_SPEC);
        assert_non_null(strstr(d.msg, "nested deeper than 32"));
        print_message("case %zu: %.3f s: %s\n", i, took, d.msg);
        assert_true(took < 0.5);
    }
    /* The opener at depth 33 is named: the top-level mapping is depth 1, "tuning: " takes 8
     * columns and each '[' one, so the 32nd '[' at column 40. */
    char *y = nested_yaml("[", "]", 40, 88);
    mg_spec s;
    mg_diag d;
    assert_int_equal(mg_spec_parse(y, 88, "x.yaml", &s, &d), MG_E_SPEC);
    free(y);
    if (strncmp(d.msg, "x.yaml:1:40:", 12)) print_error("%s\n", d.msg);
    assert_int_equal(strncmp(d.msg, "x.yaml:1:40:", 12), 0);
    /* Block style too: one mapping per indented line. */
    char block[40000];
    size_t n = 0;
    for (int i = 0; i < 40; i++) n += (size_t)sprintf(block + n, "%*sk%d:\n", i, "", i);
    /* k0 opens the top level; the mapping under k31, at line 33, is depth 33. */
    expect_spec_error(block, "x.yaml:33:33:", "nested deeper than 32");
    /* 31 levels of lists still parse as YAML and fail on the spec's own terms. */
    y = nested_yaml("[", "]", 31, 70);
    assert_int_equal(mg_spec_parse(y, 70, "x.yaml", &s, &d), MG_E_SPEC);
    free(y);
    assert_null(strstr(d.msg, "nested deeper"));
}

/* The same through a file: the message names the file, and a file over the size limit (or an
 * endless one) is refused after reading one byte past the limit. */
static void test_deep_nesting_file_and_size_cap(void **state)
{
    (void)state;
    char dir[512], path[700];
    tu_mkdtemp(dir, sizeof dir, "spec");
    char *y = nested_yaml("[", "]", 524284, 1u << 20);
    tu_write_file(dir, "deep.yaml", y, path, sizeof path);
    free(y);
    mg_spec s;
    mg_diag d = {{0}};
    double start = tu_now();
    assert_int_equal(mg_spec_load(path, &s, &d), MG_E_SPEC);
    assert_true(tu_now() - start < 0.5);
    char where[800];
    snprintf(where, sizeof where, "%s:1:40:", path);
    if (strncmp(d.msg, where, strlen(where))) print_error("%s\n", d.msg);
    assert_int_equal(strncmp(d.msg, where, strlen(where)), 0);
    tu_rm_rf(dir);

    start = tu_now();
    assert_int_equal(mg_spec_load("/dev/zero", &s, &d), MG_E_SPEC);
    assert_true(tu_now() - start < 0.5);
    assert_non_null(strstr(d.msg, "/dev/zero:1:1: file is larger than 1048576 bytes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_specs_have_expected_fields),
        cmocka_unit_test(test_every_shipped_spec_parses),
        cmocka_unit_test(test_defaults_applied),
        cmocka_unit_test(test_all_keys_set),
        cmocka_unit_test(test_tuning_values_and_locations),
        cmocka_unit_test(test_explicit_document_markers_and_comments),
        cmocka_unit_test(test_malformed_yaml),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_top_level_not_mapping),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_non_string_key),
        cmocka_unit_test(test_duplicated_keys),
        cmocka_unit_test(test_missing_required_key),
        cmocka_unit_test(test_integer_wrong_type),
        cmocka_unit_test(test_integer_out_of_range),
        cmocka_unit_test(test_bad_bool),
        cmocka_unit_test(test_bad_name),
        cmocka_unit_test(test_bad_dtype),
        cmocka_unit_test(test_bad_archs),
        cmocka_unit_test(test_bad_tuning_structure),
        cmocka_unit_test(test_bad_knob_values),
        cmocka_unit_test(test_tuning_limits),
        cmocka_unit_test(test_anchors_and_aliases_rejected),
        cmocka_unit_test(test_tags_rejected),
        cmocka_unit_test(test_several_documents_rejected),
        cmocka_unit_test(test_output_untouched_on_error),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_load_directory),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_deep_nesting_rejected_fast),
        cmocka_unit_test(test_deep_nesting_file_and_size_cap),
        cmocka_unit_test(test_arch_table),
        cmocka_unit_test(test_dtype_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
