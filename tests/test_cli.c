/* The mobagen command line ($MOBAGEN_TEST_CLI): commands, options, output and exit codes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/testutil.h"

static char cli[1024];
static char work[512];          /* per-file scratch directory */
static char cache_env[700];     /* "MOBAGEN_CACHE_DIR=..." */
static char spec_path[700];     /* a spec the embedded templates can expand */
static char plain_spec[700];    /* a spec with no tuning section */

static const char cli_spec[] =
    "name: clitest\nhead_dim: 128\nblock_size: 128\ntop_k: 8\narchs: [sm_80, sm_90a]\n"
    "tuning:\n  kconv_centroid: { threads: [128, 256] }\n  route: { block_m: 64, impl: 1 }\n"
    "  attn_fwd: { impl: 1, warps: 4 }\n  attn_bwd: { impl: 2, tile_n: 64 }\n";

static int setup(void **state)
{
    (void)state;
    const char *env = getenv("MOBAGEN_TEST_CLI");
    if (env && *env)
        snprintf(cli, sizeof cli, "%s", env);
    else
        snprintf(cli, sizeof cli, "%s/build/san/mobagen", tu_repo_root());
    if (access(cli, X_OK) != 0) {
        fprintf(stderr, "no mobagen binary at %s (set MOBAGEN_TEST_CLI)\n", cli);
        return -1;
    }
    tu_mkdtemp(work, sizeof work, "cli");
    snprintf(cache_env, sizeof cache_env, "MOBAGEN_CACHE_DIR=%s/cache", work);
    tu_write_file(work, "clitest.yaml", cli_spec, spec_path, sizeof spec_path);
    tu_write_file(work, "plain.yaml",
                  "name: plain\nhead_dim: 128\nblock_size: 128\ntop_k: 8\narchs: [sm_80]\n",
                  plain_spec, sizeof plain_spec);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (work[0]) tu_rm_rf(work);
    return 0;
}

/* Runs the CLI with up to 8 arguments (NULL-terminated) and extra environment settings. */
static int run_env(const char *const *env, char **out, char **err, ...)
{
    const char *argv[16] = {cli};
    int n = 1;
    va_list ap;
    va_start(ap, err);
    for (const char *a; n < 15 && (a = va_arg(ap, const char *));) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    const char *envs[8] = {cache_env, "MOBAGEN_TEMPLATE_DIR=", NULL};
    int ne = 2;
    for (int i = 0; env && env[i] && ne < 7; i++) envs[ne++] = env[i];
    envs[ne] = NULL;
    return tu_run(argv, envs, out, err);
}

#define RUN(out, err, ...) run_env(NULL, out, err, __VA_ARGS__, (const char *)NULL)

static void expect_code(int got, int want, const char *out, const char *err)
{
    if (got != want) print_error("exit %d, wanted %d\nstdout:\n%s\nstderr:\n%s\n", got, want, out, err);
    assert_int_equal(got, want);
}

static int count_lines_with(const char *text, const char *part)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, part)); p += strlen(part)) n++;
    return n;
}

/* ---- usage ----------------------------------------------------------------------------------- */

static void test_help_and_usage_errors(void **state)
{
    (void)state;
    char *out, *err;
    int rc = RUN(&out, &err, "--help");
    expect_code(rc, 0, out, err);
    static const char *const commands[] = {"gen SPEC", "build SPEC", "list SPEC", "cache ls",
                                           "doctor", "exit codes"};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        assert_non_null(strstr(out, commands[i]));
    free(out);
    free(err);
    rc = RUN(&out, &err, "list", "-h");
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "usage: mobagen"));
    free(out);
    free(err);

    /* No arguments: usage on stderr, exit 2. */
    const char *argv[] = {cli, NULL};
    rc = tu_run(argv, NULL, &out, &err);
    expect_code(rc, 2, out, err);
    assert_non_null(strstr(err, "usage: mobagen"));
    free(out);
    free(err);

    static const struct {
        const char *a, *b, *c, *phrase;
    } bad[] = {
        {"frobnicate", NULL, NULL, "unknown command 'frobnicate'"},
        {"list", "--bogus", NULL, "unknown option '--bogus'"},
        {"list", NULL, NULL, "needs a SPEC"},
        {"list", "a.yaml", "b.yaml", "unexpected argument 'b.yaml'"},
        {"list", "--arch", NULL, "--arch needs a value"},
        {"build", "--jobs", "0", "--jobs takes 1..256"},
        {"cache", NULL, NULL, "cache needs 'ls' or 'clean'"},
        {"cache", "purge", NULL, "cache needs 'ls' or 'clean'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = run_env(NULL, &out, &err, bad[i].a, bad[i].b, bad[i].c, (const char *)NULL);
        if (rc != 2 || !strstr(err, bad[i].phrase))
            print_error("case %zu: exit %d, stderr: %s\n", i, rc, err);
        assert_int_equal(rc, 2);
        assert_non_null(strstr(err, bad[i].phrase));
        free(out);
        free(err);
    }
    rc = RUN(&out, &err, "list", spec_path, "--arch", "sm_12");
    expect_code(rc, 2, out, err);
    assert_non_null(strstr(err, "unknown arch 'sm_12'"));
    assert_non_null(strstr(err, "sm_90a"));   /* lists the known ones */
    free(out);
    free(err);
}

/* ---- list ------------------------------------------------------------------------------------ */

static void test_list(void **state)
{
    (void)state;
    char *out, *err;
    int rc = RUN(&out, &err, "list", spec_path);
    expect_code(rc, 0, out, err);
    static const char want[] = "attn_bwd/sm_80/impl=2,tile_n=64\nattn_fwd/sm_80/impl=1,warps=4\n"
                               "decode/sm_80/route_chunk=256,stages=3\n"
                               "kconv_centroid/sm_80/threads=128\nkconv_centroid/sm_80/threads=256\n"
                               "route/sm_80/block_m=64,impl=1,tile_n=16,warp_rows=32\n"
                               "attn_bwd/sm_90a/impl=2,tile_n=64\nattn_fwd/sm_90a/impl=1,warps=4\n"
                               "decode/sm_90a/route_chunk=256,stages=3\n"
                               "kconv_centroid/sm_90a/threads=128\nkconv_centroid/sm_90a/threads=256\n"
                               "route/sm_90a/block_m=64,impl=1,tile_n=16,warp_rows=32\n";
    assert_string_equal(out, want);
    assert_non_null(strstr(err, "12 variants of spec 'clitest'"));
    assert_non_null(strstr(err, "(embedded)"));
    free(out);
    free(err);

    rc = RUN(&out, &err, "list", "--arch", "sm_90a", spec_path);
    expect_code(rc, 0, out, err);
    assert_string_equal(out, "attn_bwd/sm_90a/impl=2,tile_n=64\nattn_fwd/sm_90a/impl=1,warps=4\n"
                             "decode/sm_90a/route_chunk=256,stages=3\n"
                             "kconv_centroid/sm_90a/threads=128\n"
                             "kconv_centroid/sm_90a/threads=256\nroute/sm_90a/block_m=64,impl=1,tile_n=16,warp_rows=32\n");
    free(out);
    free(err);
}

/* Both lines are listed, `first` before `second` (the runtime's default is the first valid point). */
static void assert_listed_before(const char *out, const char *first, const char *second)
{
    const char *a = strstr(out, first), *b = strstr(out, second);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
}

/* The shipped default spec expands to every template's variants for both of its archs. */
static void test_list_default_spec(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/default.yaml", tu_repo_root());
    char *out, *err;
    int rc = RUN(&out, &err, "list", path);
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "kconv_centroid/sm_80/threads=128\n"));
    assert_non_null(strstr(out, "route/sm_90a/block_m=64,impl=2,tile_n=16,warp_rows=32\n"));
    assert_non_null(strstr(out, "attn_fwd/sm_90a/impl=1,warps=8\n"));
    /* attn_bwd impl 3 (wgmma, keys as M) on sm_90a only and at tile_n 64 and 128 only, first
     * there; impl 4 (wgmma, queries as M) at tile_n 32 and 16 only, after impl 2. */
    assert_listed_before(out, "attn_bwd/sm_90a/impl=3,tile_n=128\n", "attn_bwd/sm_90a/impl=2,tile_n=128\n");
    assert_non_null(strstr(out, "attn_bwd/sm_90a/impl=3,tile_n=64\n"));
    assert_null(strstr(out, "attn_bwd/sm_90a/impl=3,tile_n=32"));
    assert_listed_before(out, "attn_bwd/sm_90a/impl=2,tile_n=32\n", "attn_bwd/sm_90a/impl=4,tile_n=32\n");
    assert_null(strstr(out, "attn_bwd/sm_90a/impl=4,tile_n=64"));
    assert_null(strstr(out, "attn_bwd/sm_80/impl=4"));
    assert_null(strstr(out, "attn_bwd/sm_80/impl=3"));
    assert_non_null(strstr(out, "attn_bwd/sm_80/impl=2,tile_n=128\n"));
    assert_non_null(strstr(out, "/sm_90a/"));
    assert_non_null(strstr(err, "variants of spec 'default'"));
    /* attn_fwd impl 3 (wgmma) exists on sm_90a only, and comes first there (the default choice). */
    assert_listed_before(out, "attn_fwd/sm_90a/impl=3,warps=4\n", "attn_fwd/sm_90a/impl=2,warps=4\n");
    assert_null(strstr(out, "attn_fwd/sm_90a/impl=3,warps=8"));
    assert_null(strstr(out, "attn_fwd/sm_80/impl=3"));
    assert_non_null(strstr(out, "attn_fwd/sm_80/impl=2,warps=4\n"));
    free(out);
    free(err);
}

/* `mobagen list` of a spec (written to `file`) exits with `code`; stderr names `why` and stdout
 * holds `listed` where given. */
static void expect_listing(const char *file, const char *yaml, const char *arch, int code, const char *why,
                           const char *listed)
{
    char *out, *err;
    char spec[1024];
    tu_write_file(work, file, yaml, spec, sizeof spec);
    int rc = arch ? RUN(&out, &err, "list", "--arch", arch, spec) : RUN(&out, &err, "list", spec);
    expect_code(rc, code, out, err);
    if (why) assert_non_null(strstr(err, why));
    if (listed) assert_non_null(strstr(out, listed));
    free(out);
    free(err);
}

/* A spec that asks for attn_fwd impl 3 on another arch than sm_90a is refused with the reason. */
static void test_list_attn_wgmma_impl(void **state)
{
    (void)state;
    static const char yaml[] = "name: wg\nhead_dim: 128\nblock_size: 64\ntop_k: 4\narchs: [sm_80]\ntuning:\n"
                               "  attn_fwd: { impl: 3, warps: 4 }\n";
    expect_listing("wgmma.yaml", yaml, NULL, 4, "impl 3 needs wgmma (sm_90a only)", NULL);
    expect_listing("wgmma.yaml", yaml, "sm_90a", 0, NULL, "attn_fwd/sm_90a/impl=3,warps=4\n");
}

/* attn_bwd impl 3 (wgmma, keys as M) is refused off sm_90a and below tile_n 64, impl 4 (queries
 * as M) off sm_90a, from tile_n 64 and at head dims other than 64 and 128, with the reason. */
static void test_list_bwd_wgmma_impl(void **state)
{
    (void)state;
    static const char yaml[] = "name: bwg\nhead_dim: 128\nblock_size: 128\ntop_k: 4\narchs: [sm_80]\ntuning:\n"
                               "  attn_bwd: { impl: 3, tile_n: [128, 64, 32] }\n";
    expect_listing("bwd_wgmma.yaml", yaml, NULL, 4, "impl 3 needs wgmma (sm_90a only)", NULL);
    expect_listing("bwd_wgmma.yaml", yaml, "sm_90a", 0, NULL,
                   "attn_bwd/sm_90a/impl=3,tile_n=128\nattn_bwd/sm_90a/impl=3,tile_n=64\nattn_fwd/");
    expect_listing("bwd_wgmma32.yaml",
                   "name: bwg\nhead_dim: 128\nblock_size: 32\ntop_k: 4\narchs: [sm_90a]\ntuning:\n"
                   "  attn_bwd: { impl: 3, tile_n: 32 }\n",
                   NULL, 4, "impl 3 needs tile_n 64 or 128", NULL);
    static const char yaml4[] = "name: bwg\nhead_dim: 128\nblock_size: 128\ntop_k: 4\narchs: [sm_80]\ntuning:\n"
                                "  attn_bwd: { impl: 4, tile_n: [64, 32] }\n";
    expect_listing("bwd_wgq.yaml", yaml4, NULL, 4, "impl 4 needs wgmma (sm_90a only)", NULL);
    expect_listing("bwd_wgq.yaml", yaml4, "sm_90a", 0, NULL, "attn_bwd/sm_90a/impl=4,tile_n=32\nattn_fwd/");
    expect_listing("bwd_wgq64.yaml",
                   "name: bwg\nhead_dim: 128\nblock_size: 64\ntop_k: 4\narchs: [sm_90a]\ntuning:\n"
                   "  attn_bwd: { impl: 4, tile_n: 64 }\n",
                   NULL, 4, "impl 4 needs tile_n 16 or 32", NULL);
    expect_listing("bwd_wgq16.yaml",
                   "name: bwg\nhead_dim: 64\nblock_size: 48\ntop_k: 4\narchs: [sm_90a]\ntuning:\n"
                   "  attn_bwd: { impl: 4, tile_n: 16 }\n",
                   NULL, 0, NULL, "attn_bwd/sm_90a/impl=4,tile_n=16\n");
    expect_listing("bwd_wgq_d32.yaml",
                   "name: bwg\nhead_dim: 32\nblock_size: 32\ntop_k: 4\narchs: [sm_90a]\ntuning:\n"
                   "  attn_bwd: { impl: 4, tile_n: 32 }\n",
                   NULL, 4, "impl 4 supports head_dim 64 and 128", NULL);
}

static void test_spec_errors(void **state)
{
    (void)state;
    char bad[700];
    tu_write_file(work, "bad.yaml", "name: bad\nhead_dim: 128\nblok_size: 128\ntop_k: 8\n", bad,
                  sizeof bad);
    char *out, *err;
    int rc = RUN(&out, &err, "list", bad);
    expect_code(rc, 3, out, err);
    char where[800];
    snprintf(where, sizeof where, "%s:3:1:", bad);
    assert_non_null(strstr(err, where));
    assert_non_null(strstr(err, "blok_size"));
    free(out);
    free(err);

    /* A tuning entry for a knob the template lacks points into the spec too. */
    tu_write_file(work, "badknob.yaml",
                  "name: bk\nhead_dim: 128\nblock_size: 128\ntop_k: 8\ntuning:\n"
                  "  kconv_centroid: { warps: 4 }\n", bad, sizeof bad);
    rc = RUN(&out, &err, "list", bad);
    expect_code(rc, 3, out, err);
    snprintf(where, sizeof where, "%s:6:", bad);
    assert_non_null(strstr(err, where));
    assert_non_null(strstr(err, "has no knob 'warps'"));
    free(out);
    free(err);

    snprintf(bad, sizeof bad, "%s/does-not-exist.yaml", work);
    rc = RUN(&out, &err, "build", bad);
    expect_code(rc, 7, out, err);
    assert_non_null(strstr(err, bad));
    free(out);
    free(err);
}

/* ---- gen ------------------------------------------------------------------------------------- */

static int check_generated(const char *dir, int *n)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int ok = 1;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        size_t len = strlen(de->d_name);
        if (len > 3 && !strcmp(de->d_name + len - 3, ".cu")) {
            char *text = tu_read_file(path, NULL);
            if (!text || strncmp(text, "// generated by mobagen", 23)) ok = 0;
            if (text && !strstr(text, "moba_kconv_centroid") && !strstr(text, "moba_route") &&
                !strstr(text, "moba_attn_fwd") && !strstr(text, "moba_decode_attn") &&
                !strstr(text, "moba_bwd_tiles"))
                ok = 0;
            free(text);
            ++*n;
        } else {
            ok &= check_generated(path, n);
        }
    }
    closedir(d);
    return ok;
}

static void test_gen(void **state)
{
    (void)state;
    char out_dir[700];
    snprintf(out_dir, sizeof out_dir, "%s/gen-out/deep", work);
    char *out, *err;
    int rc = RUN(&out, &err, "gen", spec_path, "--out", out_dir);
    expect_code(rc, 0, out, err);
    int n = 0;
    assert_true(check_generated(out_dir, &n));
    assert_int_equal(n, 12);
    assert_int_equal(count_lines_with(out, out_dir), 12);   /* prints each path */
    char one[900];
    snprintf(one, sizeof one, "%s/sm_90a/kconv_centroid.threads-256.cu", out_dir);
    char *text = tu_read_file(one, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "arch sm_90a, point threads=256"));
    assert_non_null(strstr(text, "#line "));
    free(text);
    assert_int_equal(tu_count_files(out_dir, ".tmp"), 0);
    free(out);
    free(err);
}

/* ---- build and cache ------------------------------------------------------------------------- */

static void test_build_then_cache_commands(void **state)
{
    (void)state;
    char *out, *err;
    int rc = RUN(&out, &err, "cache", "clean");
    expect_code(rc, 0, out, err);
    free(out);
    free(err);

    rc = RUN(&out, &err, "build", spec_path, "--jobs", "2");
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "12 variants, 0 cached, 12 compiled, 0 failed"));
    free(out);
    free(err);
    rc = RUN(&out, &err, "build", spec_path);
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "12 cached, 0 compiled"));
    free(out);
    free(err);

    rc = RUN(&out, &err, "cache", "ls");
    expect_code(rc, 0, out, err);
    assert_int_equal(count_lines_with(out, "kconv_centroid/sm_"), 4);
    assert_non_null(strstr(out, "kconv_centroid/sm_90a/threads=128"));
    assert_null(strstr(out, "DAMAGED"));
    assert_non_null(strstr(err, "12 entries in"));
    free(out);
    free(err);

    rc = RUN(&out, &err, "cache", "clean");
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "removed 12 files"));
    free(out);
    free(err);
    rc = RUN(&out, &err, "cache", "ls");
    expect_code(rc, 0, out, err);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "0 entries in"));
    free(out);
    free(err);
}

/* The repro: a cache directory that holds someone's files. clean and ls leave them. */
static void test_cache_commands_leave_foreign_files(void **state)
{
    (void)state;
    char victim[700], env_dir[800], notes[800];
    snprintf(victim, sizeof victim, "%s/victim", work);
    tu_write_file(victim, "notes.txt", "keep\n", notes, sizeof notes);
    char layout[800];
    snprintf(layout, sizeof layout, "%s/v1", victim);
    tu_write_file(layout, "notes.txt", "keep\n", NULL, 0);
    snprintf(env_dir, sizeof env_dir, "MOBAGEN_CACHE_DIR=%s", victim);
    const char *env[] = {env_dir, NULL};
    char *out, *err;
    int rc = run_env(env, &out, &err, "cache", "clean", (const char *)NULL);
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "removed 0 files"));
    assert_non_null(strstr(out, "left 1 names that are not the cache's alone"));
    assert_non_null(strstr(err, "v1/notes.txt alone: not a cache"));
    free(out);
    free(err);
    rc = run_env(env, &out, &err, "cache", "ls", (const char *)NULL);
    expect_code(rc, 0, out, err);
    assert_non_null(strstr(err, "0 entries"));
    free(out);
    free(err);
    char *text = tu_read_file(notes, NULL);
    assert_non_null(text);
    assert_string_equal(text, "keep\n");
    free(text);
    snprintf(notes, sizeof notes, "%s/v1/notes.txt", victim);
    assert_int_equal(access(notes, F_OK), 0);
}

/* The shipped default spec (a multi-kernel attention variant among them) compiles once: later
 * processes, however they spell the spec's path, and without any NVRTC, find every variant. A
 * miss without NVRTC still says what is missing. */
static void test_warm_cache_across_processes_needs_no_nvrtc(void **state)
{
    (void)state;
    char spec[1024], spelled[1100], env_dir[800];
    snprintf(spec, sizeof spec, "%s/specs/default.yaml", tu_repo_root());
    snprintf(spelled, sizeof spelled, "%s/./specs//default.yaml", tu_repo_root());
    snprintf(env_dir, sizeof env_dir, "MOBAGEN_CACHE_DIR=%s/cache-default", work);
    const char *env[] = {env_dir, NULL};
    const char *no_nvrtc[] = {env_dir, "MOBAGEN_NVRTC=/nonexistent", "CUDA_HOME=/nonexistent", NULL};
    char *out, *err;
    int rc = run_env(env, &out, &err, "build", spec, "--arch", "sm_80,sm_90a", (const char *)NULL);
    expect_code(rc, 0, out, err);
    int n = 0, n_compiled = -1;
    const char *line = strstr(out, "spec default: ");
    assert_non_null(line);
    assert_int_equal(sscanf(line, "spec default: %d variants, 0 cached, %d compiled, 0 failed", &n,
                            &n_compiled), 2);
    assert_true(n > 0);
    assert_int_equal(n_compiled, n);
    free(out);
    free(err);
    char hits[64];
    snprintf(hits, sizeof hits, "%d cached, 0 compiled", n);
    const char *again[] = {spec, spelled, spec};
    for (int i = 0; i < 3; i++) {
        rc = run_env(i == 2 ? no_nvrtc : env, &out, &err, "build", again[i], "--arch",
                     "sm_80,sm_90a", (const char *)NULL);
        expect_code(rc, 0, out, err);
        if (!strstr(out, hits)) print_error("run %d: %s%s", i, out, err);
        assert_non_null(strstr(out, hits));
        free(out);
        free(err);
    }
    /* Entries record the NVRTC that built them. */
    rc = run_env(no_nvrtc, &out, &err, "cache", "ls", (const char *)NULL);
    expect_code(rc, 0, out, err);
    assert_int_equal(count_lines_with(out, "  nvrtc "), n);
    assert_int_equal(count_lines_with(out, "nvrtc ? "), 0);
    free(out);
    free(err);

    /* A miss needs NVRTC. */
    snprintf(env_dir, sizeof env_dir, "MOBAGEN_CACHE_DIR=%s/cache-cold", work);
    rc = run_env(no_nvrtc, &out, &err, "build", spec, (const char *)NULL);
    expect_code(rc, 6, out, err);
    assert_non_null(strstr(err, "cannot load NVRTC"));
    assert_non_null(strstr(err, "/nonexistent"));
    free(out);
    free(err);
}

static void test_doctor(void **state)
{
    (void)state;
    char *out, *err;
    int rc = RUN(&out, &err, "doctor");
    if (rc != 0 && rc != 1) expect_code(rc, 0, out, err);
    assert_non_null(strstr(out, "nvrtc:"));
    assert_non_null(strstr(out, "cuda driver:"));
    assert_non_null(strstr(out, "cache:"));
    assert_non_null(strstr(out, "templates:"));
    free(out);
    free(err);
    /* Without NVRTC it still reports, and says so. */
    const char *env[] = {"MOBAGEN_NVRTC=/nonexistent/libnvrtc.so", NULL};
    rc = run_env(env, &out, &err, "doctor", (const char *)NULL);
    expect_code(rc, 1, out, err);
    assert_non_null(strstr(out, "nvrtc:       none"));
    assert_non_null(strstr(out, "cuda driver:"));
    free(out);
    free(err);
}

/* ---- failures with exit codes ---------------------------------------------------------------- */

static void test_broken_templates(void **state)
{
    (void)state;
    char tdir[700];
    snprintf(tdir, sizeof tdir, "%s/tpl-broken", work);
    /* Manifest error (line 2) shows with list; body error (line 5) with gen and build. */
    tu_write_file(tdir, "bad.cu.tpl",
                  "%! knobs = { n = {1} }\n"
                  "%! function valid(s, a, p) return p.n.x end\n"
                  "%! function kernels() return { main = 'k' } end\n", NULL, 0);
    char *out, *err;
    int rc = RUN(&out, &err, "list", plain_spec, "--templates", tdir);
    expect_code(rc, 4, out, err);
    char where[900];
    snprintf(where, sizeof where, "%s/bad.cu.tpl:2:", tdir);
    assert_non_null(strstr(err, where));
    free(out);
    free(err);

    tu_write_file(tdir, "bad.cu.tpl",
                  "%! function kernels() return { main = 'k' } end\n"
                  "__global__ void k() {}\n"
                  "% for i = 1, 2 do\n"
                  "// $(i)\n"
                  "% local y = i + nil\n"
                  "% end\n", NULL, 0);
    rc = RUN(&out, &err, "build", plain_spec, "--templates", tdir);
    expect_code(rc, 4, out, err);
    snprintf(where, sizeof where, "%s/bad.cu.tpl:5:", tdir);
    assert_non_null(strstr(err, where));
    free(out);
    free(err);

    /* CUDA that NVRTC rejects: exit 5, the log names the template line. */
    tu_write_file(tdir, "bad.cu.tpl",
                  "%! function kernels() return { main = 'k' } end\n"
                  "__global__ void k(int *x)\n"
                  "{\n"
                  "    x[0] = not_declared;\n"
                  "}\n", NULL, 0);
    rc = RUN(&out, &err, "build", plain_spec, "--templates", tdir);
    expect_code(rc, 5, out, err);
    snprintf(where, sizeof where, "%s/bad.cu.tpl(4)", tdir);
    assert_non_null(strstr(err, where));
    assert_non_null(strstr(out, "1 failed"));
    free(out);
    free(err);

    /* A template directory without templates. */
    snprintf(tdir, sizeof tdir, "%s/tpl-empty", work);
    tu_write_file(tdir, "only.cuh.tpl", "x\n", NULL, 0);
    rc = RUN(&out, &err, "list", plain_spec, "--templates", tdir);
    expect_code(rc, 4, out, err);
    assert_non_null(strstr(err, "no *.cu.tpl template"));
    free(out);
    free(err);
}

static void test_build_without_nvrtc(void **state)
{
    (void)state;
    const char *env[] = {"MOBAGEN_NVRTC=/nonexistent/libnvrtc.so.99", NULL};
    char *out, *err;
    int rc = run_env(env, &out, &err, "build", spec_path, (const char *)NULL);
    expect_code(rc, 6, out, err);
    assert_non_null(strstr(err, "/nonexistent/libnvrtc.so.99"));
    assert_non_null(strstr(err, "MOBAGEN_NVRTC"));
    free(out);
    free(err);
    /* list and gen need no NVRTC. */
    rc = run_env(env, &out, &err, "list", spec_path, (const char *)NULL);
    expect_code(rc, 0, out, err);
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_usage_errors),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_list_default_spec),
        cmocka_unit_test(test_list_attn_wgmma_impl),
        cmocka_unit_test(test_list_bwd_wgmma_impl),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_gen),
        cmocka_unit_test(test_build_then_cache_commands),
        cmocka_unit_test(test_cache_commands_leave_foreign_files),
        cmocka_unit_test(test_warm_cache_across_processes_needs_no_nvrtc),
        cmocka_unit_test(test_doctor),
        cmocka_unit_test(test_broken_templates),
        cmocka_unit_test(test_build_without_nvrtc),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
