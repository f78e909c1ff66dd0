/* The public API without a GPU: specs from parameters (checked like YAML specs), the op's
 * params accessor, and per-ctx logging (level from options or MOBAGEN_LOG, a sink callback). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime_internal.h"
#include "util/testutil.h"

#define NO_DRIVER "/nonexistent/mobagen-test/libcuda.so.1"

/* The same spec as specs/default.yaml, as parameters. */
static const int threads[] = {128, 256}, block_m[] = {256, 64}, warps[] = {4, 8};
static const mobagen_tuning_restriction default_tuning[] = {
    {"kconv_centroid", "threads", threads, 2},
    {"route", "block_m", block_m, 2},
    {"attn_fwd", "warps", warps, 2},
};
static mobagen_spec_params default_params(void)
{
    mobagen_spec_params p = {.name = "default", .head_dim = 128, .block_size = 128, .top_k = 8,
                             .causal = 1, .dtype = MOBAGEN_BF16, .tuning = default_tuning,
                             .n_tuning = 3};
    return p;
}

static void test_params_equal_yaml_spec(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/default.yaml", tu_repo_root());
    mg_spec from_yaml, from_params;
    mg_diag d;
    if (mg_spec_load(path, &from_yaml, &d) != MG_OK) fail_msg("%s", d.msg);
    mobagen_spec_params p = default_params();
    if (mg_spec_from_params(&p, &from_params, &d) != MG_OK) fail_msg("%s", d.msg);
    assert_string_equal(from_params.name, from_yaml.name);
    assert_int_equal(from_params.head_dim, from_yaml.head_dim);
    assert_int_equal(from_params.block_size, from_yaml.block_size);
    assert_int_equal(from_params.top_k, from_yaml.top_k);
    assert_int_equal(from_params.causal, from_yaml.causal);
    assert_int_equal(from_params.conv_width, from_yaml.conv_width);
    assert_int_equal(from_params.dtype, from_yaml.dtype);
    assert_int_equal(from_params.gqa_group, from_yaml.gqa_group);
    assert_int_equal(from_params.n_tuning, from_yaml.n_tuning);
    for (int t = 0; t < from_yaml.n_tuning; t++) {
        const mg_tuning *a = &from_params.tuning[t], *b = &from_yaml.tuning[t];
        assert_string_equal(a->template_name, b->template_name);
        assert_int_equal(a->n_knobs, b->n_knobs);
        for (int k = 0; k < b->n_knobs; k++) {
            assert_string_equal(a->knobs[k].name, b->knobs[k].name);
            assert_int_equal(a->knobs[k].n_values, b->knobs[k].n_values);
            assert_memory_equal(a->knobs[k].values, b->knobs[k].values, sizeof(int) * (size_t)b->knobs[k].n_values);
        }
    }

    /* Defaults: a derived name, gqa_group 0 meaning 1; restrictions of one template gathered. */
    static const int impl[] = {1}, one[] = {4};
    const mobagen_tuning_restriction split[] = {
        {"attn_fwd", "impl", impl, 1}, {"route", "impl", impl, 1}, {"attn_fwd", "warps", one, 1}};
    mobagen_spec_params q = {.head_dim = 64, .block_size = 32, .top_k = 4, .tuning = split, .n_tuning = 3};
    if (mg_spec_from_params(&q, &from_params, &d) != MG_OK) fail_msg("%s", d.msg);
    assert_string_equal(from_params.name, "moba_d64_b32_k4");
    assert_int_equal(from_params.gqa_group, 1);
    assert_int_equal(from_params.causal, 0);
    assert_int_equal(from_params.n_tuning, 2);
    assert_string_equal(from_params.tuning[0].template_name, "attn_fwd");
    assert_int_equal(from_params.tuning[0].n_knobs, 2);
}

static void expect_params_error(const mobagen_spec_params *p, mobagen_status want, const char *needle)
{
    mg_spec spec;
    mg_diag d = {{0}};
    mobagen_status st = mg_spec_from_params(p, &spec, &d);
    if (st != want || !strstr(d.msg, needle))
        fail_msg("got %s '%s'; wanted %s naming '%s'", mobagen_status_name(st), d.msg,
                 mobagen_status_name(want), needle);
}

static void test_bad_params(void **state)
{
    (void)state;
    mobagen_spec_params p = default_params();
    p.head_dim = 100;
    expect_params_error(&p, MOBAGEN_E_SPEC, "head_dim must be a multiple of 32");
    p = default_params();
    p.top_k = 0;
    expect_params_error(&p, MOBAGEN_E_SPEC, "top_k");
    p = default_params();
    p.dtype = (mobagen_dtype)7;
    expect_params_error(&p, MOBAGEN_E_SPEC, "params->dtype 7");
    p = default_params();
    p.causal = 2;
    expect_params_error(&p, MOBAGEN_E_SPEC, "params->causal");
    p = default_params();
    p.gqa_group = -3;
    expect_params_error(&p, MOBAGEN_E_SPEC, "gqa_group");
    /* A name cannot smuggle in YAML: it stays one value, which the name rule refuses. */
    p = default_params();
    p.name = "x\"\ntop_k: 3\nname: \"y";
    expect_params_error(&p, MOBAGEN_E_SPEC, "invalid name");
    p.name = "a\\";
    expect_params_error(&p, MOBAGEN_E_SPEC, "invalid name");

    static const int dup[] = {64, 64};
    mobagen_tuning_restriction bad_tuning[] = {{"route", "block_m", dup, 2}};
    p = default_params();
    p.tuning = bad_tuning;
    p.n_tuning = 1;
    expect_params_error(&p, MOBAGEN_E_SPEC, "duplicated value 64");
    bad_tuning[0].values = NULL;
    expect_params_error(&p, MOBAGEN_E_ARG, "params->tuning[0]");
    p.tuning = NULL;
    expect_params_error(&p, MOBAGEN_E_ARG, "params->tuning is NULL");
    bad_tuning[0] = (mobagen_tuning_restriction){"route", "bad knob", dup, 1};
    p.tuning = bad_tuning;
    expect_params_error(&p, MOBAGEN_E_SPEC, "invalid knob name 'bad knob'");
    expect_params_error(NULL, MOBAGEN_E_ARG, "params is NULL");
}

static void test_create_from_params_without_device(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", NO_DRIVER, 1);
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MOBAGEN_E_NO_DRIVER);
    mobagen_op *op = (mobagen_op *)0x1;
    mobagen_spec_params p = default_params();
    p.block_size = 17;
    /* The spec is judged before the device, so a bad field is named as such. */
    assert_int_equal(mobagen_op_create_from_params(ctx, &p, &op), MOBAGEN_E_SPEC);
    assert_null(op);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "block_size"));
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "mobagen_spec_params"));
    p.block_size = 64;
    assert_int_equal(mobagen_op_create_from_params(ctx, &p, &op), MOBAGEN_E_NO_DEVICE);
    assert_int_equal(mobagen_op_create_from_params(ctx, NULL, &op), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "params is NULL"));
    assert_int_equal(mobagen_op_create_from_params(ctx, &p, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_op_create_from_params(NULL, &p, &op), MOBAGEN_E_ARG);
    mobagen_ctx_destroy(ctx);
    unsetenv("MOBAGEN_LIBCUDA");
}

static void test_op_params_accessor(void **state)
{
    (void)state;
    mobagen_spec_params p = default_params();
    p.conv_width = 3;
    p.gqa_group = 4;
    p.dtype = MOBAGEN_FP16;
    mg_spec spec;
    mg_diag d;
    if (mg_spec_from_params(&p, &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    mobagen_op *op;
    assert_int_equal(mg_op_create_detached(&spec, &op), MOBAGEN_OK);
    mobagen_spec_params got;
    memset(&got, 0x5a, sizeof got);
    assert_int_equal(mobagen_op_params(op, &got), MOBAGEN_OK);
    assert_string_equal(got.name, "default");
    assert_int_equal(got.head_dim, 128);
    assert_int_equal(got.block_size, 128);
    assert_int_equal(got.top_k, 8);
    assert_int_equal(got.causal, 1);
    assert_int_equal(got.conv_width, 3);
    assert_int_equal(got.dtype, MOBAGEN_FP16);
    assert_int_equal(got.gqa_group, 4);
    assert_null(got.tuning);
    assert_int_equal(got.n_tuning, 0);
    assert_int_equal(mobagen_op_params(op, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_op_params(NULL, &got), MOBAGEN_E_ARG);
    mobagen_op_destroy(op);
}

typedef struct captured {
    int count;
    mobagen_log_level level;
    char last[512];
} captured;

static void capture(void *user, mobagen_log_level level, const char *message)
{
    captured *c = user;
    c->count++;
    c->level = level;
    snprintf(c->last, sizeof c->last, "%s", message);
}

static mobagen_ctx *ctx_with_log(mobagen_log_level level, const char *env, captured *c,
                                 mobagen_status want)
{
    setenv("MOBAGEN_LIBCUDA", NO_DRIVER, 1);
    if (env) setenv("MOBAGEN_LOG", env, 1);
    else unsetenv("MOBAGEN_LOG");
    memset(c, 0, sizeof *c);
    mobagen_ctx_options o = {.log_level = level, .log = capture, .log_user = c};
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, &o, &ctx), want);
    unsetenv("MOBAGEN_LOG");
    unsetenv("MOBAGEN_LIBCUDA");
    return ctx;
}

static void test_log_levels(void **state)
{
    (void)state;
    captured c;
    /* Default: warn. Info and debug lines are dropped, warnings and errors pass. */
    mobagen_ctx *ctx = ctx_with_log(MOBAGEN_LOG_DEFAULT, NULL, &c, MOBAGEN_E_NO_DRIVER);
    mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "compiled %s", "x");
    mg_ctx_log(ctx, MOBAGEN_LOG_DEBUG, "detail");
    assert_int_equal(c.count, 0);
    mg_ctx_log(ctx, MOBAGEN_LOG_WARN, "careful %d", 1);
    assert_int_equal(c.count, 1);
    assert_int_equal(c.level, MOBAGEN_LOG_WARN);
    assert_string_equal(c.last, "careful 1");
    mobagen_ctx_destroy(ctx);

    /* MOBAGEN_LOG, read when the ctx is created and kept in it. */
    ctx = ctx_with_log(MOBAGEN_LOG_DEFAULT, "info", &c, MOBAGEN_E_NO_DRIVER);
    mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "compiled %s", "route");
    assert_int_equal(c.count, 1);
    assert_string_equal(c.last, "compiled route");
    mg_ctx_log(ctx, MOBAGEN_LOG_DEBUG, "detail");
    assert_int_equal(c.count, 1);
    mobagen_ctx_destroy(ctx);

    ctx = ctx_with_log(MOBAGEN_LOG_DEFAULT, "error", &c, MOBAGEN_E_NO_DRIVER);
    mg_ctx_log(ctx, MOBAGEN_LOG_WARN, "dropped");
    assert_int_equal(c.count, 0);
    mobagen_ctx_destroy(ctx);

    /* The option wins over the environment. */
    ctx = ctx_with_log(MOBAGEN_LOG_DEBUG, "error", &c, MOBAGEN_E_NO_DRIVER);
    mg_ctx_log(ctx, MOBAGEN_LOG_DEBUG, "kept");
    assert_int_equal(c.count, 1);
    mobagen_ctx_destroy(ctx);

    /* An unknown word is said, once, and warn is used. */
    ctx = ctx_with_log(MOBAGEN_LOG_DEFAULT, "verbose", &c, MOBAGEN_E_NO_DRIVER);
    assert_int_equal(c.count, 1);
    assert_non_null(strstr(c.last, "MOBAGEN_LOG='verbose'"));
    mobagen_ctx_destroy(ctx);

    ctx = ctx_with_log((mobagen_log_level)9, NULL, &c, MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "log_level 9"));
    mobagen_ctx_destroy(ctx);
    mg_ctx_log(NULL, MOBAGEN_LOG_ERROR, "no ctx, no crash");

    assert_int_equal(mg_log_level_parse("debug"), MOBAGEN_LOG_DEBUG);
    assert_int_equal(mg_log_level_parse("warn"), MOBAGEN_LOG_WARN);
    assert_int_equal(mg_log_level_parse(""), MOBAGEN_LOG_DEFAULT);
    assert_int_equal(mg_log_level_parse("default"), MOBAGEN_LOG_DEFAULT);
}

/* Without a callback, lines go to stderr as "mobagen: LEVEL: text". */
static void test_log_to_stderr(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", NO_DRIVER, 1);
    setenv("MOBAGEN_LOG", "info", 1);
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MOBAGEN_E_NO_DRIVER);
    unsetenv("MOBAGEN_LOG");
    unsetenv("MOBAGEN_LIBCUDA");
    char path[600], dir[512];
    tu_mkdtemp(dir, sizeof dir, "log");
    snprintf(path, sizeof path, "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "[1/3] compiled %s in %.1f s (cache miss)", "route/sm_90a/x", 2.5);
    mg_ctx_log(ctx, MOBAGEN_LOG_DEBUG, "not at info");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    char *text = tu_read_file(path, NULL);
    assert_string_equal(text, "mobagen: info: [1/3] compiled route/sm_90a/x in 2.5 s (cache miss)\n");
    free(text);
    tu_rm_rf(dir);
    mobagen_ctx_destroy(ctx);
}

typedef struct progress_log {
    int calls, compiled, last_done, total, ids_ok;
} progress_log;

static void on_progress(void *user, int done, int total, const char *variant_id, int compiled)
{
    progress_log *p = user;
    p->calls++;
    p->compiled += compiled;
    p->ids_ok += variant_id && strchr(variant_id, '/') != NULL;
    if (done == p->last_done + 1) p->last_done = done;
    p->total = total;
}

typedef struct line_log {
    int compile_lines, other_lines;
} line_log;

static void count_lines(void *user, mobagen_log_level level, const char *message)
{
    line_log *l = user;
    if (level == MOBAGEN_LOG_INFO && strstr(message, "compiled ") && strstr(message, "(cache miss)"))
        l->compile_lines++;
    else
        l->other_lines++;
}

/* What op creation does while it builds: a line per compile at info and a progress call per
 * variant, in order, from the builder's worker threads (a cold build, then a warm one). */
static void test_build_progress_and_compile_lines(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", NO_DRIVER, 1);
    progress_log prog = {0};
    line_log lines = {0};
    mobagen_ctx_options o = {.log_level = MOBAGEN_LOG_INFO, .log = count_lines, .log_user = &lines,
                             .progress = on_progress, .progress_user = &prog};
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, &o, &ctx), MOBAGEN_E_NO_DRIVER);
    unsetenv("MOBAGEN_LIBCUDA");

    static const char spec_text[] =
        "name: progress\nhead_dim: 64\nblock_size: 64\ntop_k: 2\narchs: [sm_80]\n"
        "tuning:\n  kconv_centroid: { threads: 128 }\n  route: { impl: 1, block_m: 64 }\n"
        "  attn_fwd: { impl: 1, warps: 4 }\n";
    mg_spec spec;
    mg_diag d;
    mg_template_set *set = NULL;
    mg_variant *v = NULL;
    int n = 0;
    if (mg_spec_parse(spec_text, strlen(spec_text), "progress", &spec, &d) != MG_OK ||
        mg_template_set_open(NULL, &set, &d) != MG_OK ||
        mg_variants_expand(set, &spec, NULL, 0, &v, &n, &d) != MG_OK)
        fail_msg("%s", d.msg);
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "progress");
    mg_builder *b = NULL;
    if (mg_builder_open(dir, &b, &d) != MG_OK) fail_msg("%s", d.msg);
    mg_build_options opts = {.jobs = 2, .on_result = mg_ctx_on_build_result, .on_result_user = ctx};
    if (mg_builder_build(b, v, n, &opts, NULL, NULL, &d) != MG_OK) fail_msg("%s", d.msg);
    assert_int_equal(prog.calls, n);
    assert_int_equal(prog.last_done, n);   /* done counted 1, 2, ... n */
    assert_int_equal(prog.total, n);
    assert_int_equal(prog.compiled, n);
    assert_int_equal(prog.ids_ok, n);
    assert_int_equal(lines.compile_lines, n);

    memset(&prog, 0, sizeof prog);
    memset(&lines, 0, sizeof lines);
    if (mg_builder_build(b, v, n, &opts, NULL, NULL, &d) != MG_OK) fail_msg("%s", d.msg);
    assert_int_equal(prog.calls, n);
    assert_int_equal(prog.compiled, 0);      /* all from the cache */
    assert_int_equal(lines.compile_lines, 0);
    assert_int_equal(lines.other_lines, 0);  /* cache hits are debug lines */

    mg_builder_close(b);
    mg_variants_free(v, n);
    mg_template_set_free(set);
    tu_rm_rf(dir);
    mobagen_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_equal_yaml_spec),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_create_from_params_without_device),
        cmocka_unit_test(test_op_params_accessor),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_log_to_stderr),
        cmocka_unit_test(test_build_progress_and_compile_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
