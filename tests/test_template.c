/* Template engine: exact rendered output (text, inline values, #line directives), tuning-point
 * enumeration, the Lua sandbox's refusals and budgets, and where errors point. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spec.h"
#include "template.h"
#include "util/testutil.h"

/* ---- helpers --------------------------------------------------------------------------------- */

#define SPEC_MIN "name: t\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n"

static void parse_spec(const char *yaml, mg_spec *s)
{
    mg_diag d = {{0}};
    mg_status st = mg_spec_parse(yaml, strlen(yaml), "x.yaml", s, &d);
    if (st != MG_OK) print_error("spec: %s\n", d.msg);
    assert_int_equal(st, MG_OK);
}

static mg_template *load_text(const char *path, const char *text)
{
    mg_template *t = NULL;
    mg_diag d = {{0}};
    mg_status st = mg_template_from_text(path, text, strlen(text), &t, &d);
    if (st != MG_OK) print_error("template: %s\n", d.msg);
    assert_int_equal(st, MG_OK);
    assert_non_null(t);
    return t;
}

/* Renders text (a template named path) for the minimal spec on sm_80 at point p (NULL: empty)
 * and returns the status; diag receives the message. */
static mg_status render_text(const char *path, const char *text, const mg_point *p,
                             mg_rendered *r, mg_diag *d)
{
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_template *t = load_text(path, text);
    mg_point empty = {0};
    d->msg[0] = 0;
    mg_status st = mg_template_render(t, &s, "sm_80", p ? p : &empty, r, d);
    mg_template_free(t);
    return st;
}

/* Rendering must fail with MG_E_TEMPLATE and a message holding every phrase. */
static void expect_render_error(const char *text, const char *phrase1, const char *phrase2)
{
    mg_rendered r;
    mg_diag d;
    mg_status st = render_text("fix.cu.tpl", text, NULL, &r, &d);
    if (st != MG_E_TEMPLATE || !strstr(d.msg, phrase1) || (phrase2 && !strstr(d.msg, phrase2)))
        print_error("template:\n%s\nstatus %s, message: %s\nwanted '%s' and '%s'\n", text,
                    mg_status_name(st), d.msg, phrase1, phrase2 ? phrase2 : "");
    assert_int_equal(st, MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, phrase1));
    if (phrase2) assert_non_null(strstr(d.msg, phrase2));
    assert_null(r.source);
}

#define MANIFEST_OK "%! function kernels(spec, p) return { main = \"k\" } end\n"

/* ---- determinism ----------------------------------------------------------------------------- */

/* pairs() walks keys in one canonical order (numbers, then strings bytewise, then false, true):
 * Lua's own order follows string hashes, which are seeded per state, and what a template emits
 * enters the cache key. */
static void test_pairs_order_is_canonical(void **state)
{
    (void)state;
    static const char tpl[] = MANIFEST_OK
        "% local t = {}\n"
        "% for i = 1, 300 do t['k' .. ((i * 7919) % 1000)] = i end\n"
        "% t[3] = 1; t[-2.5] = 1; t[true] = 1; t[false] = 1; t['K'] = 1; t['k'] = 1\n"
        "% local keys = {}\n"
        "% for k in pairs(t) do keys[#keys + 1] = tostring(k) end\n"
        "keys:$(table.concat(keys, ','))\n";
    char *first = NULL;
    for (int run = 0; run < 8; run++) {
        mg_rendered r;
        mg_diag d;
        mg_status st = render_text("fix.cu.tpl", tpl, NULL, &r, &d);
        if (st != MG_OK) print_error("%s\n", d.msg);
        assert_int_equal(st, MG_OK);
        const char *line = strstr(r.source, "keys:");
        assert_non_null(line);
        line += 5;
        size_t len = strcspn(line, "\n");
        if (!first) {
            first = strndup(line, len);
            assert_non_null(first);
        } else {
            assert_int_equal(strlen(first), len);
            assert_memory_equal(first, line, len);
        }
        mg_rendered_free(&r);
    }
    /* -2.5, 3, then the strings bytewise ("K" < "k" < "k0" ...), then false, true. */
    assert_true(!strncmp(first, "-2.5,3,K,k,", 11));
    size_t n = strlen(first);
    assert_true(n > 11 && !strcmp(first + n - 11, ",false,true"));
    char *copy = strndup(first + 7, n - 7 - 11), *save = NULL, *prev = NULL;
    int count = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save), count++) {
        if (prev) assert_true(strcmp(prev, tok) < 0);
        prev = tok;
    }
    assert_int_equal(count, 2 + 300);   /* K, k and the 300 distinct k<i*7919 mod 1000> */
    free(copy);
    free(first);
}

static void test_no_randomness_or_unordered_keys(void **state)
{
    (void)state;
    expect_render_error(MANIFEST_OK "ok\n% local x = math.random(10)\n", "fix.cu.tpl:3:", "nil value");
    expect_render_error(MANIFEST_OK "ok\n% math.randomseed(1)\n", "fix.cu.tpl:3:", "nil value");
    expect_render_error(MANIFEST_OK "ok\n% for k in pairs({[{}] = 1}) do end\n", "fix.cu.tpl:3:",
                        "no canonical order");
    expect_render_error(MANIFEST_OK "ok\n% local x = spec.path .. ''\n", "fix.cu.tpl:3:", "nil value");
}

/* ---- golden output --------------------------------------------------------------------------- */

static const char golden_tpl[] =
    "%! knobs = { warps = {2, 4}, tile = {16} }\n"                                 /*  1 */
    "%! function kernels(spec, p) return { main = \"k<\" .. p.warps .. \">\" } end\n" /*  2 */
    "%! function launch(spec, p) return { threads = 32 * p.warps, smem = 0 } end\n" /*  3 */
    "// spec $(spec.name) d=$(spec.head_dim) causal=$(spec.causal) mma=$(arch.bf16_mma)\n" /*  4 */
    "% local n = point.warps\n"                                                      /*  5 */
    "% for i = 0, n - 1 do\n"                                                        /*  6 */
    "int a$(i) = $(i * 2);\n"                                                        /*  7 */
    "% end\n"                                                                        /*  8 */
    "% if spec.conv_width > 0 then\n"                                                /*  9 */
    "conv $(spec.conv_width)\n"                                                      /* 10 */
    "% else\n"                                                                       /* 11 */
    "noconv\n"                                                                       /* 12 */
    "% end\n"                                                                        /* 13 */
    "float s = $(0.5), t = $(2.0), u = $(1/3), big = $(1e20);\n"                     /* 14 */
    "const char *d = \"$(spec.dtype)\"; // costs $$5, $$(x) $(\"q(\" .. ')' .. \"\\\"\")\n" /* 15 */
    "tile=$(point.tile) arch=$(arch.name) sm=$(arch.sm) $(string.format('%03d', 7))\n"; /* 16 */

static const char golden_out[] =
    "// generated by mobagen from template fixture.cu.tpl, spec t, arch sm_80, point "
    "tile=16,warps=2\n"
    "#line 4 \"fixture.cu.tpl\"\n"
    "// spec t d=128 causal=true mma=true\n"
    "#line 7 \"fixture.cu.tpl\"\n"
    "int a0 = 0;\n"
    "#line 7 \"fixture.cu.tpl\"\n"
    "int a1 = 2;\n"
    "#line 12 \"fixture.cu.tpl\"\n"
    "noconv\n"
    "#line 14 \"fixture.cu.tpl\"\n"
    "float s = 0.5, t = 2.0, u = 0.333333333, big = 1e+20;\n"
    "const char *d = \"bf16\"; // costs $5, $(x) q()\"\n"
    "tile=16 arch=sm_80 sm=80 007\n";

static void test_golden_output(void **state)
{
    (void)state;
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_template *t = load_text("fixture.cu.tpl", golden_tpl);
    assert_string_equal(mg_template_name(t), "fixture");
    assert_string_equal(mg_template_path(t), "fixture.cu.tpl");

    mg_point *pts;
    int np;
    mg_diag d = {{0}};
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_OK);
    assert_int_equal(np, 2);
    mg_rendered r;
    mg_status st = mg_template_render(t, &s, "sm_80", &pts[0], &r, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    assert_int_equal(st, MG_OK);
    if (strcmp(r.source, golden_out)) print_error("got:\n%s\nwanted:\n%s\n", r.source, golden_out);
    assert_string_equal(r.source, golden_out);
    assert_int_equal(r.source_len, strlen(golden_out));
    assert_int_equal(r.n_kernels, 1);
    assert_string_equal(mg_rendered_kernel(&r, "main"), "k<2>");
    assert_null(mg_rendered_kernel(&r, "prep"));
    assert_int_equal(mg_rendered_launch(&r, "threads", -1), 64);
    assert_int_equal(mg_rendered_launch(&r, "smem", -1), 0);
    assert_int_equal(mg_rendered_launch(&r, "nope", -7), -7);
    mg_rendered_free(&r);

    /* The other point and a spec with a key convolution take the other branches. */
    mg_spec s2;
    parse_spec(SPEC_MIN "conv_width: 3\ndtype: fp16\ncausal: false\n", &s2);
    assert_int_equal(mg_template_render(t, &s2, "sm_90a", &pts[1], &r, &d), MG_OK);
    assert_non_null(strstr(r.source, "point tile=16,warps=4\n"));
    assert_non_null(strstr(r.source, "causal=false"));
    assert_non_null(strstr(r.source, "int a3 = 6;\n"));
    assert_non_null(strstr(r.source, "#line 10 \"fixture.cu.tpl\"\nconv 3\n#line 14 "));
    assert_null(strstr(r.source, "noconv"));
    assert_non_null(strstr(r.source, "\"fp16\""));
    assert_non_null(strstr(r.source, "arch=sm_90a sm=90"));
    assert_string_equal(mg_rendered_kernel(&r, "main"), "k<4>");
    assert_int_equal(mg_rendered_launch(&r, "threads", -1), 128);
    mg_rendered_free(&r);
    free(pts);
    mg_template_free(t);
}

/* include() expands a file of the template's directory in place, with #line switching to it and
 * back; a manifest in the included file is ignored. */
static void test_include_and_line_directives(void **state)
{
    (void)state;
    char dir[512], main_path[700], inc_path[700];
    tu_mkdtemp(dir, sizeof dir, "tpl");
    tu_write_file(dir, "inc.cuh.tpl", "%! error('manifest of an include must not run')\ninc $(spec.top_k)\n% local x = 1\nx$(x)\n",
                  inc_path, sizeof inc_path);
    tu_write_file(dir, "main.cu.tpl", MANIFEST_OK "a\n% include(\"inc.cuh.tpl\")\nb\n",
                  main_path, sizeof main_path);
    mg_template *t = NULL;
    mg_diag d;
    assert_int_equal(mg_template_load(main_path, &t, &d), MG_OK);
    assert_string_equal(mg_template_name(t), "main");
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_point p = {0};
    mg_rendered r;
    mg_status st = mg_template_render(t, &s, "sm_80", &p, &r, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    assert_int_equal(st, MG_OK);
    char want[4096];
    snprintf(want, sizeof want,
             "// generated by mobagen from template %s, spec t, arch sm_80, point default\n"
             "#line 2 \"%s\"\na\n"
             "#line 2 \"%s\"\ninc 8\n"
             "#line 4 \"%s\"\nx1\n"
             "#line 4 \"%s\"\nb\n",
             main_path, main_path, inc_path, inc_path, main_path);
    if (strcmp(r.source, want)) print_error("got:\n%s\nwanted:\n%s\n", r.source, want);
    assert_string_equal(r.source, want);
    mg_rendered_free(&r);
    mg_template_free(t);

    /* Missing include, and names that leave the directory. */
    tu_write_file(dir, "bad1.cu.tpl", MANIFEST_OK "% include('nope.cuh.tpl')\n", main_path, sizeof main_path);
    assert_int_equal(mg_template_load(main_path, &t, &d), MG_OK);
    assert_int_equal(mg_template_render(t, &s, "sm_80", &p, &r, &d), MG_E_TEMPLATE);
    char where[800];
    snprintf(where, sizeof where, "%s:2:", main_path);
    assert_non_null(strstr(d.msg, where));
    assert_non_null(strstr(d.msg, "nope.cuh.tpl"));
    assert_non_null(strstr(d.msg, "cannot read"));
    mg_template_free(t);

    tu_write_file(dir, "bad2.cu.tpl", MANIFEST_OK "x\n% include('sub/inc.cuh.tpl')\n", main_path, sizeof main_path);
    assert_int_equal(mg_template_load(main_path, &t, &d), MG_OK);
    assert_int_equal(mg_template_render(t, &s, "sm_80", &p, &r, &d), MG_E_TEMPLATE);
    snprintf(where, sizeof where, "%s:3:", main_path);
    assert_non_null(strstr(d.msg, where));
    assert_non_null(strstr(d.msg, "only a file name"));
    mg_template_free(t);

    tu_write_file(dir, "bad3.cu.tpl", MANIFEST_OK "% include('..')\n", main_path, sizeof main_path);
    assert_int_equal(mg_template_load(main_path, &t, &d), MG_OK);
    assert_int_equal(mg_template_render(t, &s, "sm_80", &p, &r, &d), MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, "only a file name"));
    mg_template_free(t);

    /* An error inside the included file names the included file and its line. */
    tu_write_file(dir, "err.cuh.tpl", "ok\n% local y = nil + 1\n", NULL, 0);
    tu_write_file(dir, "bad4.cu.tpl", MANIFEST_OK "% include('err.cuh.tpl')\n", main_path, sizeof main_path);
    assert_int_equal(mg_template_load(main_path, &t, &d), MG_OK);
    assert_int_equal(mg_template_render(t, &s, "sm_80", &p, &r, &d), MG_E_TEMPLATE);
    snprintf(where, sizeof where, "%s/err.cuh.tpl:2:", dir);
    if (!strstr(d.msg, where)) print_error("message: %s\n", d.msg);
    assert_non_null(strstr(d.msg, where));
    mg_template_free(t);
    tu_rm_rf(dir);
}

/* ---- tuning points --------------------------------------------------------------------------- */

static const char points_tpl[] =
    "%! knobs = { b = {1, 2, 3}, a = {10, 20} }\n"
    "%! function valid(spec, arch, p)\n"
    "%!   if p.a * p.b > 50 then return false, 'a*b too big' end\n"
    "%!   return true\n"
    "%! end\n" MANIFEST_OK;

static void expect_points(const mg_template *t, const mg_spec *s, const int (*want)[2], int n)
{
    mg_point *pts = NULL;
    int np = -1;
    mg_diag d = {{0}};
    mg_status st = mg_template_points(t, s, "sm_80", &pts, &np, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    assert_int_equal(st, MG_OK);
    assert_int_equal(np, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(pts[i].n, 2);
        assert_string_equal(pts[i].names[0], "a");   /* sorted by name */
        assert_string_equal(pts[i].names[1], "b");
        assert_int_equal(pts[i].values[0], want[i][0]);
        assert_int_equal(pts[i].values[1], want[i][1]);
        assert_int_equal(mg_point_get(&pts[i], "b", -1), want[i][1]);
    }
    free(pts);
}

static void test_points_cross_sorted_and_pruned(void **state)
{
    (void)state;
    mg_template *t = load_text("fixture.cu.tpl", points_tpl);
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    /* Defaults crossed with the last (sorted) knob varying fastest; (20,3) pruned by valid(). */
    static const int all[][2] = {{10, 1}, {10, 2}, {10, 3}, {20, 1}, {20, 2}};
    expect_points(t, &s, all, 5);

    /* The spec narrows b (its order is kept); a keeps its defaults. */
    parse_spec(SPEC_MIN "tuning:\n  fixture: { b: [3, 1] }\n", &s);
    static const int narrowed[][2] = {{10, 3}, {10, 1}, {20, 1}};
    expect_points(t, &s, narrowed, 3);

    /* A spec value outside the defaults is allowed: the spec rules. */
    parse_spec(SPEC_MIN "tuning:\n  fixture: { a: 5, b: [7] }\n", &s);
    static const int pinned[][2] = {{5, 7}};
    expect_points(t, &s, pinned, 1);

    /* Tuning of another template leaves this one alone. */
    parse_spec(SPEC_MIN "tuning:\n  other: { zz: 1 }\n", &s);
    expect_points(t, &s, all, 5);

    char buf[64];
    mg_point p = {.n = 2, .names = {"a", "b"}, .values = {10, 3}};
    mg_point_format(&p, buf, sizeof buf);
    assert_string_equal(buf, "a=10,b=3");
    mg_point empty = {0};
    mg_point_format(&empty, buf, sizeof buf);
    assert_string_equal(buf, "default");
    mg_template_free(t);
}

static void test_points_unknown_knob_points_into_spec(void **state)
{
    (void)state;
    mg_template *t = load_text("fixture.cu.tpl", points_tpl);
    mg_spec s;
    parse_spec(SPEC_MIN "tuning:\n  fixture:\n    a: 10\n    nope: [1, 2]\n", &s);
    mg_point *pts = NULL;
    int np = -1;
    mg_diag d = {{0}};
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_E_SPEC);
    assert_null(pts);
    assert_int_equal(np, 0);
    if (strncmp(d.msg, "x.yaml:8:5:", 11)) print_error("message: %s\n", d.msg);
    assert_true(strncmp(d.msg, "x.yaml:8:5:", 11) == 0);
    assert_non_null(strstr(d.msg, "has no knob 'nope'"));
    assert_non_null(strstr(d.msg, "a, b"));
    mg_template_free(t);
}

static void test_points_none_valid_names_reason(void **state)
{
    (void)state;
    mg_template *t = load_text("fixture.cu.tpl", points_tpl);
    mg_spec s;
    parse_spec(SPEC_MIN "tuning:\n  fixture: { a: [30, 40], b: 2 }\n", &s);
    mg_point *pts = NULL;
    int np = -1;
    mg_diag d = {{0}};
    assert_int_equal(mg_template_points(t, &s, "sm_90a", &pts, &np, &d), MG_E_TEMPLATE);
    assert_null(pts);
    assert_non_null(strstr(d.msg, "fixture.cu.tpl"));
    assert_non_null(strstr(d.msg, "no valid tuning point"));
    assert_non_null(strstr(d.msg, "sm_90a"));
    assert_non_null(strstr(d.msg, "a*b too big"));
    mg_template_free(t);

    /* valid() itself failing is an error at its line, not a pruned point. */
    parse_spec(SPEC_MIN, &s);
    t = load_text("fixture.cu.tpl", "%! knobs = { a = {1} }\n%! function valid(s, a, p)\n%!   return p.zz.y\n%! end\n" MANIFEST_OK);
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, "fixture.cu.tpl:3:"));
    mg_template_free(t);

    /* No knobs at all: exactly one (empty) point. */
    t = load_text("fixture.cu.tpl", MANIFEST_OK "x\n");
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_OK);
    assert_int_equal(np, 1);
    assert_int_equal(pts[0].n, 0);
    free(pts);
    mg_template_free(t);
}

static void test_knob_declaration_errors(void **state)
{
    (void)state;
    static const struct {
        const char *manifest, *phrase;
    } cases[] = {
        {"%! knobs = 3\n", "'knobs' must be a table"},
        {"%! knobs = { a = 3 }\n", "lists of integers"},
        {"%! knobs = { a = {} }\n", "knob 'a' needs 1..16"},
        {"%! knobs = { a = {1, 2.5} }\n", "knob 'a' has a non-integer value"},
        {"%! knobs = { a = {1, 'x'} }\n", "knob 'a' has a non-integer value"},
    };
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s", cases[i].manifest, MANIFEST_OK);
        mg_template *t = load_text("fixture.cu.tpl", text);
        mg_point *pts = NULL;
        int np;
        mg_diag d = {{0}};
        mg_status st = mg_template_points(t, &s, "sm_80", &pts, &np, &d);
        if (st != MG_E_TEMPLATE || !strstr(d.msg, cases[i].phrase))
            print_error("case %zu: %s %s\n", i, mg_status_name(st), d.msg);
        assert_int_equal(st, MG_E_TEMPLATE);
        assert_non_null(strstr(d.msg, cases[i].phrase));
        mg_template_free(t);
    }
}

/* ---- sandbox --------------------------------------------------------------------------------- */

static void test_sandbox_refuses_unsafe_functions(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "% io.write('x')\n",
        "% os.execute('true')\n",
        "% local x = os.getenv('HOME')\n",
        "% require('os')\n",
        "% dofile('/etc/passwd')\n",
        "% loadfile('/etc/passwd')\n",
        "% load('return 1')\n",
        "% string.dump(function() end)\n",
        "% local f = ('').dump; f(function() end)\n",
        "% debug.getinfo(1)\n",
        "% package.loadlib('libc.so.6', 'system')\n",
        "% collectgarbage()\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "%sok\n%s", MANIFEST_OK, lines[i]);
        expect_render_error(text, "fix.cu.tpl:3:", "nil value");
    }
    /* The same holds in the manifest, which runs when points are enumerated. */
    mg_template *t = load_text("fix.cu.tpl", "%! local f = io.open('/etc/passwd')\n" MANIFEST_OK);
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_point *pts = NULL;
    int np;
    mg_diag d;
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, "fix.cu.tpl:1:"));
    mg_template_free(t);
}

static void test_sandbox_instruction_budget(void **state)
{
    (void)state;
    expect_render_error(MANIFEST_OK "% while true do end\n", "budget of 200000000 Lua instructions", NULL);
    /* (One Lua-side loop is enough: the budget is a per-state hook, the same for the manifest
     * and the body, and each run costs the full 2e8 instructions.) */
}

static void test_sandbox_memory_cap(void **state)
{
    (void)state;
    /* A table that grows without bound, and a string that doubles without bound. */
    expect_render_error(MANIFEST_OK "% local t = {}\n% while true do t[#t + 1] = string.rep('x', 1000) .. #t end\n",
                        "memory", NULL);
    expect_render_error(MANIFEST_OK "% local s = 'x'\n% while true do s = s .. s end\n", "memory", NULL);
    expect_render_error(MANIFEST_OK "% local s = string.rep('x', 1 << 30)\n", "memory", NULL);
    /* A manifest that eats all its memory inside pcall and keeps it: the engine's own calls into
     * Lua afterwards must fail cleanly too. */
    mg_template *t = load_text("fix.cu.tpl",
        "%! knobs = { a = {1, 2} }\n"
        "%! hog = {}\n"
        "%! function valid(s, a, p) return { p.a } end\n"
        "%! pcall(function() while true do hog[#hog + 1] = {} end end)\n"
        "%! pcall(function() while true do hog2 = { hog2 } end end)\n" MANIFEST_OK);
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_point *pts = NULL;
    int np;
    mg_diag d = {{0}};
    mg_status st = mg_template_points(t, &s, "sm_80", &pts, &np, &d);
    /* Lua's emergency collection may or may not find room for valid()'s calls; either way
     * the answer is a result or a memory error, never a panic. */
    if (st == MG_OK) {
        assert_int_equal(np, 2);
        free(pts);
    } else {
        if (st != MG_E_TEMPLATE || !strstr(d.msg, "memory"))
            print_error("%s %s\n", mg_status_name(st), d.msg);
        assert_int_equal(st, MG_E_TEMPLATE);
        assert_non_null(strstr(d.msg, "memory"));
        assert_null(pts);
    }
    mg_template_free(t);
    /* Output that grows without bound (text lines outside Lua's heap) is capped as well. */
    expect_render_error(MANIFEST_OK "% local s = string.rep('x', 1 << 20)\n% while true do\n$(s)\n% end\n",
                        "fix.cu.tpl:4:", "output");
}


/* Lua code can make the engine's own API calls raise (metamethods): that must be an error, not a
 * Lua panic that aborts the process. */
static void test_sandbox_metamethods_fail_cleanly(void **state)
{
    (void)state;
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    static const char *const manifests[] = {
        "%! knobs = { a = setmetatable({1}, { __len = function() error('len boom') end }) }\n",
        "%! knobs = { a = setmetatable({}, { __len = function() return 2 end,\n"
        "%!   __index = function() error('index boom') end }) }\n",
        "%! setmetatable(_G, { __index = function(t, k) error('global boom ' .. k) end })\n",
    };
    for (size_t i = 0; i < sizeof manifests / sizeof manifests[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s", manifests[i], MANIFEST_OK);
        mg_template *t = load_text("fix.cu.tpl", text);
        mg_point *pts = NULL;
        int np;
        mg_diag d = {{0}};
        mg_status st = mg_template_points(t, &s, "sm_80", &pts, &np, &d);
        if (st != MG_E_TEMPLATE || !strstr(d.msg, "boom")) print_error("case %zu: %s\n", i, d.msg);
        assert_int_equal(st, MG_E_TEMPLATE);
        assert_non_null(strstr(d.msg, "boom"));
        assert_null(pts);
        mg_template_free(t);
    }
    /* While rendering: looking up launch() through _G's __index. */
    expect_render_error("%! function kernels() return { main = 'k' } end\n"
                        "%! setmetatable(_G, { __index = function(t, k) error('render boom ' .. k) end })\n",
                        "render boom", NULL);
}

/* A tuning space too large to enumerate is refused instead of allocated. */
static void test_points_space_too_large(void **state)
{
    (void)state;
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_template *t = load_text("fix.cu.tpl",
        "%! local v = {}\n%! for i = 1, 16 do v[i] = i end\n"
        "%! knobs = { a = v, b = v, c = v, d = v, e = v, f = v, g = v, h = v }\n" MANIFEST_OK);
    mg_point *pts = NULL;
    int np;
    mg_diag d = {{0}};
    assert_int_equal(mg_template_points(t, &s, "sm_80", &pts, &np, &d), MG_E_TEMPLATE);
    assert_null(pts);
    assert_non_null(strstr(d.msg, "more than 65536 points"));
    mg_template_free(t);
}

/* ---- error locations ------------------------------------------------------------------------- */

static void test_error_locations(void **state)
{
    (void)state;
    /* Runtime error on a statement line and inside an inline expression. */
    expect_render_error(MANIFEST_OK "a\nb\n% local x = nil + 1\n", "fix.cu.tpl:4:", "arithmetic");
    expect_render_error(MANIFEST_OK "a\nint x = $(spec.nope.y);\n", "fix.cu.tpl:3:", "index");
    /* Syntax errors in a statement line. */
    expect_render_error(MANIFEST_OK "a\n% if then\n% end\n", "fix.cu.tpl:3:", "near 'then'");
    expect_render_error(MANIFEST_OK "a\nb\nc\n% local = 3\n", "fix.cu.tpl:5:", "near '='");
    /* ... and in the manifest. */
    expect_render_error("%! knobs = {\n%! x = = 1 }\n" MANIFEST_OK, "fix.cu.tpl:2:", NULL);
    /* Inline expressions that give no text. */
    expect_render_error(MANIFEST_OK "a\nint x = $(nil);\n", "fix.cu.tpl:3:", "gave a nil");
    expect_render_error(MANIFEST_OK "a\nb\nint x = $({1, 2});\n", "fix.cu.tpl:4:", "gave a table");
    expect_render_error(MANIFEST_OK "int x = $(print);\n", "fix.cu.tpl:2:", "gave a nil");
    expect_render_error(MANIFEST_OK "int x = $(function() end);\n", "fix.cu.tpl:2:", "gave a function");
    /* error() with a message keeps it. */
    expect_render_error(MANIFEST_OK "% error('custom failure')\n", "fix.cu.tpl:2:", "custom failure");

    /* An unclosed $( is found when the template is loaded, with line and column. */
    static const char unclosed[] = MANIFEST_OK "ok\nint x = $(1 + (2;\n";
    mg_template *t = (mg_template *)1;
    mg_diag d = {{0}};
    assert_int_equal(mg_template_from_text("fix.cu.tpl", unclosed, strlen(unclosed), &t, &d),
                     MG_E_TEMPLATE);
    assert_null(t);
    if (!strstr(d.msg, "fix.cu.tpl:3:9:")) print_error("message: %s\n", d.msg);
    assert_non_null(strstr(d.msg, "fix.cu.tpl:3:9:"));
    assert_non_null(strstr(d.msg, "unclosed $("));
    /* A ')' inside a Lua string does not close the expression. */
    static const char in_string[] = "a $$ b $(\")\"\n";
    assert_int_equal(mg_template_from_text("fix.cu.tpl", in_string, strlen(in_string), &t, &d),
                     MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, "fix.cu.tpl:1:8:"));

    /* A missing template file is an I/O error naming the path. */
    assert_int_equal(mg_template_load("/nonexistent/dir/x.cu.tpl", &t, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "/nonexistent/dir/x.cu.tpl"));
    assert_int_equal(mg_template_from_embedded("no-such.cu.tpl", &t, &d), MG_E_TEMPLATE);
    assert_non_null(strstr(d.msg, "no-such.cu.tpl"));
}

/* ---- manifest errors ------------------------------------------------------------------------- */

static void test_manifest_errors(void **state)
{
    (void)state;
    expect_render_error("x\n", "fix.cu.tpl", "must define kernels");
    expect_render_error("%! kernels = 3\nx\n", "fix.cu.tpl", "must define kernels");
    expect_render_error("%! function kernels() return 'k' end\nx\n", "fix.cu.tpl", "role -> name");
    expect_render_error("%! function kernels() return {} end\nx\n", "fix.cu.tpl", "no kernel");
    expect_render_error("%! function kernels() return { main = 3 } end\nx\n", "fix.cu.tpl",
                        "entries must be strings");
    expect_render_error("%! function kernels() return { 'k' } end\nx\n", "fix.cu.tpl",
                        "entries must be strings");
    expect_render_error("%! function kernels()\n%!  error('no kernels here')\n%! end\nx\n",
                        "fix.cu.tpl:2:", "no kernels here");
    /* launch() must map names to integers. */
    expect_render_error(MANIFEST_OK "%! function launch() return { threads = 1.5 } end\n",
                        "fix.cu.tpl", "launch() must map names to integers");
    expect_render_error(MANIFEST_OK "%! function launch() return { threads = '128' } end\n",
                        "fix.cu.tpl", "launch() must map names to integers");
    expect_render_error(MANIFEST_OK "%! function launch() return { 128 } end\n",
                        "fix.cu.tpl", "launch() must map names to integers");
    expect_render_error(MANIFEST_OK "%! function launch() return 128 end\n", "fix.cu.tpl",
                        "launch() must return a table");
    /* kernels() sees the point. */
    mg_point p = {.n = 1, .names = {"w"}, .values = {8}};
    mg_rendered r;
    mg_diag d;
    assert_int_equal(render_text("fix.cu.tpl",
                                 "%! function kernels(spec, p) return { main = 'k' .. p.w, prep = 'pre' } end\n"
                                 "%! function launch(spec, p) return { threads = p.w * 32 } end\nx\n",
                                 &p, &r, &d),
                     MG_OK);
    assert_int_equal(r.n_kernels, 2);
    assert_string_equal(mg_rendered_kernel(&r, "main"), "k8");
    assert_string_equal(mg_rendered_kernel(&r, "prep"), "pre");
    assert_int_equal(mg_rendered_launch(&r, "threads", 0), 256);
    mg_rendered_free(&r);
}

/* ---- hostile templates ----------------------------------------------------------------------- */

/* Each tests/hostile/NAME.cu.tpl starts with "%! -- expect line N: PHRASE": its points, then its
 * first point's expansion, must fail with MG_E_TEMPLATE naming NAME.cu.tpl:N and PHRASE (or one
 * of "A|B": whether a loop meets the instruction budget or the time limit first depends on the
 * machine). It runs
 * in a child process, so that a template that still hangs fails the test instead of hanging it,
 * under a wall-clock bound a little above the sandbox's own time limit. */
#define HOSTILE_BOUND_S (MG_LUA_TIME_LIMIT_MS / 1000.0 + 4.0)

static void run_hostile_child(const char *path, int fd)
{
    mg_spec s;
    parse_spec(SPEC_MIN, &s);
    mg_template *t = NULL;
    mg_diag d = {{0}};
    mg_status st = mg_template_load(path, &t, &d);
    mg_point *pts = NULL;
    int np = 0;
    if (st == MG_OK) st = mg_template_points(t, &s, "sm_80", &pts, &np, &d);
    if (st == MG_OK) {
        mg_rendered r;
        st = mg_template_render(t, &s, "sm_80", &pts[0], &r, &d);
        if (st == MG_OK) mg_rendered_free(&r);
        free(pts);
    }
    mg_template_free(t);
    dprintf(fd, "%s\n%s", mg_status_name(st), d.msg);
    close(fd);
    _exit(0);
}

/* Runs one hostile file; returns 0 when it failed as its header says, in time. */
static int check_hostile(const char *dir, const char *name)
{
    char path[1024], header[512] = "", phrase[400];
    int line;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(header, sizeof header, f) ||
        sscanf(header, "%%! -- expect line %d: %399[^\n]", &line, phrase) != 2) {
        print_error("%s: no '%%! -- expect line N: PHRASE' header\n", path);
        if (f) fclose(f);
        return 1;
    }
    fclose(f);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    double start = tu_now();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        run_hostile_child(path, fds[1]);
    }
    close(fds[1]);
    char out[4096];
    size_t got = 0;
    int timed_out = 0;
    for (;;) {
        double left = HOSTILE_BOUND_S - (tu_now() - start);
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)(left * 1000) + 1) == 0) {
            timed_out = 1;
            break;
        }
        ssize_t n = read(fds[0], out + got, sizeof out - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    out[got] = 0;
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int wstatus;
    waitpid(pid, &wstatus, 0);
    double took = tu_now() - start;
    char where[600];
    snprintf(where, sizeof where, "%s:%d:", name, line);
    if (timed_out) {
        print_error("%s: still running after %.1f s; killed\n", name, took);
        return 1;
    }
    int phrase_found = 0;  /* "a|b": either phrase */
    for (char *alt = strtok(phrase, "|"); alt; alt = strtok(NULL, "|")) phrase_found |= !!strstr(out, alt);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || strncmp(out, "MOBAGEN_E_TEMPLATE\n", 19) ||
        !strstr(out, where) || !phrase_found) {
        print_error("%s (%.1f s): wanted MOBAGEN_E_TEMPLATE with '%s' and '%s', got (exit %d):\n%s\n",
                    name, took, where, phrase, wstatus, out);
        return 1;
    }
    print_message("%-32s %5.2f s  %s", name, took, out + 19);
    print_message("\n");
    return 0;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_hostile_templates_end_with_located_errors(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/hostile", tu_repo_root());
    DIR *d = opendir(dir);
    assert_non_null(d);
    char *names[256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        size_t len = strlen(de->d_name);
        if (len > 7 && !strcmp(de->d_name + len - 7, ".cu.tpl")) names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], compare_strings);
    assert_true(n >= 30);
    int failures = 0;
    for (int i = 0; i < n; i++) {
        failures += check_hostile(dir, names[i]);
        free(names[i]);
    }
    assert_int_equal(failures, 0);
}

/* include() reads regular files of at most 1 MiB: a FIFO (whose open would wait for a writer
 * for ever) and an oversized file are refused at once. */
static void test_include_refuses_fifos_and_big_files(void **state)
{
    (void)state;
    char dir[512], path[800];
    tu_mkdtemp(dir, sizeof dir, "inc");
    snprintf(path, sizeof path, "%s/fifo.cuh.tpl", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    char *big = malloc((1u << 20) + 2);
    assert_non_null(big);
    memset(big, '/', (1u << 20) + 1);
    big[(1u << 20) + 1] = 0;
    tu_write_file(dir, "big.cuh.tpl", big, NULL, 0);
    free(big);
    tu_write_file(dir, "fifo.cu.tpl", "%! -- expect line 3: not a regular file\n" MANIFEST_OK
                  "% include('fifo.cuh.tpl')\n", NULL, 0);
    tu_write_file(dir, "big.cu.tpl", "%! -- expect line 3: larger than the 1 MiB\n" MANIFEST_OK
                  "% include('big.cuh.tpl')\n", NULL, 0);
    assert_int_equal(check_hostile(dir, "fifo.cu.tpl"), 0);
    assert_int_equal(check_hostile(dir, "big.cu.tpl"), 0);
    tu_rm_rf(dir);
}

/* Near the memory cap, Lua collects garbage and asks again before giving up: a template whose
 * live data fits must not be stopped for the garbage it makes. */
static void test_memory_cap_leaves_room_for_collection(void **state)
{
    (void)state;
    mg_rendered r;
    mg_diag d;
    mg_status st = render_text("fix.cu.tpl", MANIFEST_OK
                               "% local keep = string.rep('x', 20000000)\n"
                               "% for i = 1, 20 do local t = keep .. i end\n"
                               "done\n", NULL, &r, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    assert_int_equal(st, MG_OK);
    mg_rendered_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_output),
        cmocka_unit_test(test_include_and_line_directives),
        cmocka_unit_test(test_points_cross_sorted_and_pruned),
        cmocka_unit_test(test_points_unknown_knob_points_into_spec),
        cmocka_unit_test(test_points_none_valid_names_reason),
        cmocka_unit_test(test_knob_declaration_errors),
        cmocka_unit_test(test_sandbox_refuses_unsafe_functions),
        cmocka_unit_test(test_sandbox_instruction_budget),
        cmocka_unit_test(test_sandbox_memory_cap),
        cmocka_unit_test(test_sandbox_metamethods_fail_cleanly),
        cmocka_unit_test(test_points_space_too_large),
        cmocka_unit_test(test_error_locations),
        cmocka_unit_test(test_manifest_errors),
        cmocka_unit_test(test_hostile_templates_end_with_located_errors),
        cmocka_unit_test(test_include_refuses_fifos_and_big_files),
        cmocka_unit_test(test_memory_cap_leaves_room_for_collection),
        cmocka_unit_test(test_pairs_order_is_canonical),
        cmocka_unit_test(test_no_randomness_or_unordered_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
