/* `make install` into a fresh prefix gives a library, header, CLI, templates, specs and a
 * pkg-config file that a program outside the source tree can build against: the C API example
 * compiles with pkg-config alone and, on a machine without a GPU, fails cleanly with exit 2. */
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

static char prefix[512];

static int setup(void **state)
{
    (void)state;
    tu_mkdtemp(prefix, sizeof prefix, "install");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rm_rf(prefix);
    return 0;
}

static void expect_file(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", prefix, rel);
    if (access(path, F_OK) != 0) fail_msg("make install did not create %s", path);
}

static void test_install_and_build_example(void **state)
{
    (void)state;
    char make_cmd[1200];
    snprintf(make_cmd, sizeof make_cmd, "make -s -C '%s' install PREFIX='%s'", tu_repo_root(), prefix);
    const char *make_argv[] = {"/bin/sh", "-c", make_cmd, NULL};
    char *out, *err;
    int rc = tu_run(make_argv, NULL, &out, &err);
    if (rc != 0) fail_msg("make install exited %d:\n%s\n%s", rc, out, err);
    free(out);
    free(err);
    expect_file("bin/mobagen");
    expect_file("lib/libmobagen.so");
    /* The versioned chain: libmobagen.so -> .so.MAJOR (the SONAME) -> .so.MAJOR.MINOR.PATCH. */
    char versioned[64];
    snprintf(versioned, sizeof versioned, "lib/libmobagen.so.%d", MOBAGEN_VERSION_MAJOR);
    expect_file(versioned);
    snprintf(versioned, sizeof versioned, "lib/libmobagen.so.%s", MOBAGEN_VERSION_STRING);
    expect_file(versioned);
    expect_file("lib/libmobagen.a");
    expect_file("include/mobagen/mobagen.h");
    expect_file("share/mobagen/templates/route.cu.tpl");
    expect_file("share/mobagen/specs/default.yaml");
    expect_file("lib/pkgconfig/mobagen.pc");

    /* pkg-config reports the header's version. */
    char pc_cmd[1200];
    snprintf(pc_cmd, sizeof pc_cmd, "PKG_CONFIG_PATH='%s/lib/pkgconfig' pkg-config --modversion mobagen", prefix);
    const char *pc_argv[] = {"/bin/sh", "-c", pc_cmd, NULL};
    rc = tu_run(pc_argv, NULL, &out, &err);
    if (rc != 0) fail_msg("pkg-config exited %d: %s", rc, err);
    char want[64];
    snprintf(want, sizeof want, "%s\n", MOBAGEN_VERSION_STRING);
    assert_string_equal(out, want);
    free(out);
    free(err);

    /* The installed CLI finds its templates without the source tree (they are embedded). */
    char cli[700], spec[700];
    snprintf(cli, sizeof cli, "%s/bin/mobagen", prefix);
    snprintf(spec, sizeof spec, "%s/share/mobagen/specs/default.yaml", prefix);
    const char *list_argv[] = {cli, "list", spec, NULL};
    const char *no_template_env[] = {"MOBAGEN_TEMPLATE_DIR=", NULL};
    rc = tu_run(list_argv, no_template_env, &out, &err);
    if (rc != 0) fail_msg("installed mobagen list exited %d: %s", rc, err);
    assert_non_null(strstr(out, "attn_fwd/sm_90a/"));
    free(out);
    free(err);

    /* The README's example, built with pkg-config against the installed library. */
    char script[4096];
    const char *cuda = getenv("CUDA_HOME") && *getenv("CUDA_HOME") ? getenv("CUDA_HOME") : "/usr/local/cuda";
    snprintf(script, sizeof script,
             "set -e; export PKG_CONFIG_PATH=%s/lib/pkgconfig; "
             "cc -std=c11 -o %s/example_fwd %s/docs/example_fwd.c $(pkg-config --cflags mobagen) "
             "-I%s/include -L%s/lib -Wl,-rpath,%s/lib $(pkg-config --libs mobagen) "
             "-L%s/lib64 -lcudart_static -ldl -lpthread -lrt -lm",
             prefix, prefix, tu_repo_root(), cuda, prefix, prefix, cuda);
    const char *cc_argv[] = {"/bin/sh", "-c", script, NULL};
    rc = tu_run(cc_argv, NULL, &out, &err);
    if (rc != 0) fail_msg("building the example failed (%d):\n%s\n%s", rc, out, err);
    free(out);
    free(err);

    char example[700];
    snprintf(example, sizeof example, "%s/example_fwd", prefix);
    const char *run_argv[] = {example, spec, NULL};
    rc = tu_run(run_argv, NULL, &out, &err);
    if (rc == 2) {
        /* No GPU here: the message must say so, and nothing may crash. */
        assert_non_null(strstr(err, "mobagen: "));
        assert_true(strstr(err, "no CUDA") != NULL || strstr(err, "cuInit") != NULL);
        print_message("example without a GPU: %s", err);
    } else {
        if (rc != 0) fail_msg("example exited %d:\n%s\n%s", rc, out, err);
        assert_non_null(strstr(out, "forward of 8000 tokens done"));
    }
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_install_and_build_example)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
