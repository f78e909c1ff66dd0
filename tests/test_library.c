/* libmobagen as a product: the shared library exports exactly the functions mobagen.h declares,
 * carries a versioned SONAME, and the header alone builds and links from strict C and C++. */
#include <libgen.h>
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

static char build_dir[1024], lib[1100], work[512];

static int setup(void **state)
{
    (void)state;
    /* MOBAGEN_TEST_CLI is BUILD/san/mobagen; the library sits in BUILD. */
    const char *cli = getenv("MOBAGEN_TEST_CLI");
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", cli && *cli ? cli : "build/san/mobagen");
    snprintf(build_dir, sizeof build_dir, "%s", dirname(dirname(tmp)));
    snprintf(lib, sizeof lib, "%s/libmobagen.so", build_dir);
    if (access(lib, R_OK) != 0) {
        fprintf(stderr, "no %s: `make test-build` builds it\n", lib);
        return -1;
    }
    tu_mkdtemp(work, sizeof work, "library");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (work[0]) tu_rm_rf(work);
    return 0;
}

static char *sh(const char *script, int want_rc)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    char *out, *err;
    int rc = tu_run(argv, NULL, &out, &err);
    if (rc != want_rc) fail_msg("`%s` exited %d:\n%s\n%s", script, rc, out, err);
    free(err);
    return out;
}

/* The names of the functions mobagen.h declares with MOBAGEN_API, one per line, sorted. */
static char *declared_functions(void)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/runtime/mobagen.h", tu_repo_root());
    char *header = tu_read_file(path, NULL);
    assert_non_null(header);
    char names[64][64];
    int n = 0;
    for (char *p = header; (p = strstr(p, "MOBAGEN_API ")); p++) {
        if (p - header >= 7 && !strncmp(p - 7, "define ", 7)) continue;   /* the macro itself */
        char *paren = strchr(p, '(');
        if (!paren || paren - p > 200) continue;
        char *end = paren;
        while (end > p && end[-1] == ' ') end--;
        char *start = end;
        while (start > p && (start[-1] == '_' || (start[-1] >= 'a' && start[-1] <= 'z') ||
                             (start[-1] >= '0' && start[-1] <= '9')))
            start--;
        if (end - start < 1 || end - start >= 64 || n == 64) continue;
        snprintf(names[n++], 64, "%.*s", (int)(end - start), start);
    }
    free(header);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    char *list = calloc((size_t)n, 65);
    for (int i = 0; i < n; i++) strcat(strcat(list, names[i]), "\n");
    return list;
}

static void test_exports_only_the_public_api(void **state)
{
    (void)state;
    char script[1400];
    snprintf(script, sizeof script, "nm -D --defined-only '%s' | awk '{print $3}' | LC_ALL=C sort", lib);
    char *exported = sh(script, 0);
    int count = 0;
    for (char *line = exported, *next; *line; line = next, count++) {
        next = strchr(line, '\n');
        next = next ? next + 1 : line + strlen(line);
        if (strncmp(line, "mobagen_", 8) != 0)
            fail_msg("libmobagen.so exports '%.*s', which is not public API", (int)(next - line - 1), line);
    }
    char *declared = declared_functions();
    assert_true(count >= 16);
    assert_string_equal(exported, declared);   /* and every declared function is there */
    free(declared);
    free(exported);
}

static void test_versioned_soname(void **state)
{
    (void)state;
    char script[1400], want[64];
    snprintf(script, sizeof script, "readelf -d '%s' | sed -n 's/.*Library soname: \\[\\(.*\\)\\]/\\1/p'", lib);
    char *soname = sh(script, 0);
    snprintf(want, sizeof want, "libmobagen.so.%d\n", MOBAGEN_VERSION_MAJOR);
    assert_string_equal(soname, want);
    free(soname);
    snprintf(script, sizeof script, "readlink -f '%s'", lib);
    char *real = sh(script, 0);
    snprintf(want, sizeof want, "/libmobagen.so.%s\n", MOBAGEN_VERSION_STRING);
    if (strlen(real) < strlen(want) || strcmp(real + strlen(real) - strlen(want), want))
        fail_msg("libmobagen.so resolves to %s, not ...%s", real, want);
    free(real);
}

/* A program that uses the header alone: the version, a status name, a ctx without a driver. */
static const char client_source[] =
    "#include <stdio.h>\n#include <string.h>\n#include \"mobagen.h\"\n"
    "int main(void) {\n"
    "    mobagen_ctx *ctx = NULL;\n"
    "    mobagen_status st = mobagen_ctx_create(0, NULL, &ctx);\n"
    "    printf(\"%s %s %s\\n\", mobagen_version(), mobagen_status_name(st),\n"
    "           strcmp(MOBAGEN_VERSION_STRING, mobagen_version()) == 0 ? \"same\" : \"differ\");\n"
    "    mobagen_spec_params p;\n    memset(&p, 0, sizeof p);\n"
    "    p.head_dim = 64; p.block_size = 64; p.top_k = 2; p.dtype = MOBAGEN_FP16;\n"
    "    mobagen_op *op = NULL;\n"
    "    st = mobagen_op_create_from_params(ctx, &p, &op);\n"
    "    printf(\"%s\\n\", mobagen_status_name(st));\n"
    "    mobagen_ctx_destroy(ctx);\n    return op != NULL;\n}\n";

static void build_and_run_client(const char *compiler, const char *ext, const char *flags)
{
    char dir[600], src[700];
    snprintf(dir, sizeof dir, "%s/%s", work, ext);
    char file[16];
    snprintf(file, sizeof file, "client.%s", ext);
    tu_write_file(dir, file, client_source, src, sizeof src);
    char script[4096];
    snprintf(script, sizeof script,
             "set -e; %s %s -I'%s/runtime' -o '%s/client' '%s' -L'%s' -Wl,-rpath,'%s' -lmobagen; "
             "MOBAGEN_LIBCUDA=/nonexistent/libcuda.so.1 '%s/client'",
             compiler, flags, tu_repo_root(), dir, src, build_dir, build_dir, dir);
    char *out = sh(script, 0);
    char want[128];
    snprintf(want, sizeof want, "%s MOBAGEN_E_NO_DRIVER same\nMOBAGEN_E_NO_DEVICE\n", MOBAGEN_VERSION_STRING);
    assert_string_equal(out, want);
    free(out);
}

static void test_cxx_client_links(void **state)
{
    (void)state;
    build_and_run_client("g++", "cpp", "-std=c++11 -Wall -Wextra -pedantic -Werror");
}

static void test_strict_c_client_links(void **state)
{
    (void)state;
    build_and_run_client("cc", "c", "-std=c99 -Wall -Wextra -pedantic -Werror");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exports_only_the_public_api),
        cmocka_unit_test(test_versioned_soname),
        cmocka_unit_test(test_cxx_client_links),
        cmocka_unit_test(test_strict_c_client_links),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
