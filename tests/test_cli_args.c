/* The CLI's --version, --arch duplicates and paths longer than any fixed buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mobagen.h"
#include "util/testutil.h"

static char cli[1024], work[512], spec_path[700], cache_env[700];

static int setup(void **state)
{
    (void)state;
    const char *env = getenv("MOBAGEN_TEST_CLI");
    snprintf(cli, sizeof cli, "%s", env && *env ? env : "build/san/mobagen");
    if (access(cli, X_OK) != 0) {
        fprintf(stderr, "no mobagen binary at %s (set MOBAGEN_TEST_CLI)\n", cli);
        return -1;
    }
    tu_mkdtemp(work, sizeof work, "cliargs");
    snprintf(cache_env, sizeof cache_env, "MOBAGEN_CACHE_DIR=%s/cache", work);
    tu_write_file(work, "small.yaml",
                  "name: small\nhead_dim: 64\nblock_size: 64\ntop_k: 2\narchs: [sm_80]\n"
                  "tuning:\n  kconv_centroid: { threads: 128 }\n  route: { impl: 1, block_m: 64 }\n"
                  "  attn_fwd: { impl: 1, warps: 4 }\n",
                  spec_path, sizeof spec_path);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (work[0]) tu_rm_rf(work);
    return 0;
}

/* Runs the CLI with up to 8 arguments, NULL-terminated. */
static int run(char **out, char **err, ...)
{
    const char *argv[10] = {cli};
    va_list ap;
    va_start(ap, err);
    for (int n = 1; n < 9 && (argv[n] = va_arg(ap, const char *)); n++) {}
    va_end(ap);
    const char *env[] = {cache_env, "MOBAGEN_TEMPLATE_DIR=", NULL};
    return tu_run(argv, env, out, err);
}

static void test_version(void **state)
{
    (void)state;
    char *out, *err;
    int rc = run(&out, &err, "--version", NULL);
    assert_int_equal(rc, 0);
    char want[64];
    snprintf(want, sizeof want, "mobagen %s\n", MOBAGEN_VERSION_STRING);
    assert_string_equal(out, want);
    assert_string_equal(mobagen_version(), MOBAGEN_VERSION_STRING);
    char parts[32];
    snprintf(parts, sizeof parts, "%d.%d.%d", MOBAGEN_VERSION_MAJOR, MOBAGEN_VERSION_MINOR,
             MOBAGEN_VERSION_PATCH);
    assert_string_equal(parts, MOBAGEN_VERSION_STRING);
    free(out);
    free(err);
}

static void test_duplicate_archs_refused(void **state)
{
    (void)state;
    char *out, *err;
    const char *lists[][2] = {{"sm_80,sm_80", NULL}, {"sm_80,sm_90a,sm_80", NULL}, {"sm_90a", "sm_90a"}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        /* The second list, where there is one, comes in its own --arch. */
        int rc = run(&out, &err, "list", spec_path, "--arch", lists[i][0],
                     lists[i][1] ? "--arch" : NULL, lists[i][1], NULL);
        if (rc != 2 || !strstr(err, "given twice")) fail_msg("case %zu: exit %d: %s", i, rc, err);
        assert_string_equal(out, "");
        free(out);
        free(err);
    }
    int rc = run(&out, &err, "list", spec_path, "--arch", "sm_80,sm_90a", NULL);
    if (rc != 0) fail_msg("distinct archs: exit %d: %s", rc, err);
    free(out);
    free(err);
}

/* An --arch list longer than the 512 bytes it was once copied into: every entry is judged. */
static void test_long_arch_list_not_cut(void **state)
{
    (void)state;
    char list[700] = "sm_80";
    while (strlen(list) < 600) strcat(list, ",");
    strcat(list, "sm_bogus");   /* commas between give empty tokens, which strtok skips */
    char *out, *err;
    int rc = run(&out, &err, "list", spec_path, "--arch", list, NULL);
    if (rc != 2 || !strstr(err, "unknown arch 'sm_bogus'")) fail_msg("exit %d: %s", rc, err);
    free(out);
    free(err);
}

/* gen --out with a path past every fixed buffer the CLI once had (600, 800, 1100, 1200). */
static void test_gen_long_out_path(void **state)
{
    (void)state;
    char deep[2048];
    snprintf(deep, sizeof deep, "%s", work);
    while (strlen(deep) < 1300) strcat(deep, "/a_rather_long_directory_name_to_pass_the_old_buffers");
    char *out, *err;
    int rc = run(&out, &err, "gen", spec_path, "--out", deep, NULL);
    if (rc != 0) fail_msg("gen exited %d: %s", rc, err);
    char dir[2100];
    snprintf(dir, sizeof dir, "%s/sm_80", deep);
    int files = tu_count_files(dir, ".cu");
    assert_true(files >= 3);   /* one per template at least */
    /* Every printed path is whole and exists. */
    int printed = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), printed++) {
        assert_true(strncmp(line, deep, strlen(deep)) == 0);
        assert_int_equal(access(line, R_OK), 0);
    }
    assert_int_equal(printed, files);
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_duplicate_archs_refused),
        cmocka_unit_test(test_long_arch_list_not_cut),
        cmocka_unit_test(test_gen_long_out_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
