/* The runtime without a driver: every call returns a status and a message that says what is
 * missing, never a crash. MOBAGEN_LIBCUDA points at a library that does not exist, so this
 * runs the same on machines with and without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mobagen.h"
#include "util/testutil.h"

static void test_no_driver(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", "/nonexistent/mobagen-test/libcuda.so.1", 1);
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MG_E_NO_DRIVER);
    assert_non_null(ctx);
    const char *msg = mobagen_ctx_errmsg(ctx);
    assert_non_null(strstr(msg, "no CUDA driver"));
    assert_non_null(strstr(msg, "/nonexistent/mobagen-test/libcuda.so.1"));

    /* An op on a context without a device is refused, and says why the context has none. */
    char spec[1024];
    snprintf(spec, sizeof spec, "%s/specs/default.yaml", tu_repo_root());
    mobagen_op *op = (mobagen_op *)0x1;
    assert_int_equal(mobagen_op_create(ctx, spec, &op), MG_E_NO_DEVICE);
    assert_null(op);
    msg = mobagen_ctx_errmsg(ctx);
    assert_non_null(strstr(msg, "has no device"));
    assert_non_null(strstr(msg, "no CUDA driver"));
    mobagen_ctx_destroy(ctx);
    unsetenv("MOBAGEN_LIBCUDA");
}

static void test_bad_spec_before_device(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", "/nonexistent/mobagen-test/libcuda.so.1", 1);
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MG_E_NO_DRIVER);
    mobagen_op *op = NULL;
    /* The spec is read first, so a missing spec file is reported as such. */
    assert_int_equal(mobagen_op_create(ctx, "/nonexistent/spec.yaml", &op), MG_E_IO);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "/nonexistent/spec.yaml"));
    mobagen_ctx_destroy(ctx);
    unsetenv("MOBAGEN_LIBCUDA");
}

static void test_null_context_message(void **state)
{
    (void)state;
    assert_non_null(strstr(mobagen_ctx_errmsg(NULL), "out of memory"));
    mobagen_ctx_destroy(NULL);   /* a no-op, like free(NULL) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_driver),
        cmocka_unit_test(test_bad_spec_before_device),
        cmocka_unit_test(test_null_context_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
