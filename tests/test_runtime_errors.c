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
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MOBAGEN_E_NO_DRIVER);
    assert_non_null(ctx);
    const char *msg = mobagen_ctx_errmsg(ctx);
    assert_non_null(strstr(msg, "no CUDA driver"));
    assert_non_null(strstr(msg, "/nonexistent/mobagen-test/libcuda.so.1"));

    /* An op on a context without a device is refused, and says why the context has none. */
    char spec[1024];
    snprintf(spec, sizeof spec, "%s/specs/default.yaml", tu_repo_root());
    mobagen_op *op = (mobagen_op *)0x1;
    assert_int_equal(mobagen_op_create(ctx, spec, &op), MOBAGEN_E_NO_DEVICE);
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
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MOBAGEN_E_NO_DRIVER);
    mobagen_op *op = NULL;
    /* The spec is read first, so a missing spec file is reported as such. */
    assert_int_equal(mobagen_op_create(ctx, "/nonexistent/spec.yaml", &op), MOBAGEN_E_IO);
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

/* Every public function on NULL handles and out-pointers: a status, NULL or -1, never a crash. */
static void test_null_probe(void **state)
{
    (void)state;
    setenv("MOBAGEN_LIBCUDA", "/nonexistent/mobagen-test/libcuda.so.1", 1);
    mobagen_fwd_args args;
    memset(&args, 0, sizeof args);
    size_t bytes = 7;
    mobagen_op *op = (mobagen_op *)0x1;

    assert_int_equal(mobagen_ctx_create(0, NULL, NULL), MOBAGEN_E_ARG);
    assert_null(mobagen_ctx_arch(NULL));
    assert_null(mobagen_ctx_device_name(NULL));
    assert_non_null(mobagen_ctx_errmsg(NULL));
    mobagen_ctx_destroy(NULL);

    assert_int_equal(mobagen_op_create(NULL, "specs/default.yaml", &op), MOBAGEN_E_ARG);
    assert_null(op);
    assert_int_equal(mobagen_op_create(NULL, "specs/default.yaml", NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(NULL), "NULL"));
    mobagen_op_destroy(NULL);
    assert_int_equal(mobagen_op_variant_count(NULL, "route"), -1);
    assert_null(mobagen_op_variant_id(NULL, "route", 0));
    assert_int_equal(mobagen_op_select(NULL, "route", 0), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_fwd_workspace_size(NULL, &args, &bytes), MOBAGEN_E_ARG);
    assert_int_equal(bytes, 7);
    assert_int_equal(mobagen_fwd(NULL, &args, 0, 0, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_fwd_selection(NULL, &args, 0), 0);
    mobagen_bwd_args bargs;
    memset(&bargs, 0, sizeof bargs);
    assert_int_equal(mobagen_bwd_workspace_size(NULL, &bargs, &bytes), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_bwd_workspace_size(NULL, NULL, NULL), MOBAGEN_E_ARG);
    assert_int_equal(bytes, 7);
    assert_int_equal(mobagen_bwd(NULL, &bargs, 0, 0, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_bwd(NULL, NULL, 0, 0, NULL), MOBAGEN_E_ARG);
    mobagen_spec_params params;
    memset(&params, 0, sizeof params);
    assert_int_equal(mobagen_op_create_from_params(NULL, &params, &op), MOBAGEN_E_ARG);
    assert_null(op);
    assert_int_equal(mobagen_op_create_from_params(NULL, NULL, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_op_params(NULL, &params), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_op_params(NULL, NULL), MOBAGEN_E_ARG);
    assert_string_equal(mobagen_status_name((mobagen_status)99), "MOBAGEN_E_UNKNOWN");
    assert_string_equal(mobagen_status_name(MOBAGEN_E_ARG), "MOBAGEN_E_ARG");
    assert_non_null(mobagen_version());
    const char *source = "unset";
    assert_int_equal(mobagen_op_dispatch(NULL, &args, "route", &source), -1);
    assert_string_equal(source, "");
    assert_int_equal(mobagen_op_tune(NULL, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_ctx_add_bundle(NULL, "x.mgb"), MOBAGEN_E_ARG);
    assert_null(mobagen_op_origin(NULL));

    /* A real context without a device: NULL arguments next to it are named in its message. */
    mobagen_ctx *ctx = NULL;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MOBAGEN_E_NO_DRIVER);
    assert_string_equal(mobagen_ctx_arch(ctx), "");
    assert_string_equal(mobagen_ctx_device_name(ctx), "");
    assert_int_equal(mobagen_op_create(ctx, NULL, &op), MOBAGEN_E_ARG);
    assert_null(op);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "spec_path"));
    assert_int_equal(mobagen_op_create(ctx, "specs/default.yaml", NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "out"));
    assert_int_equal(mobagen_ctx_add_bundle(ctx, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "NULL"));
    mobagen_ctx_destroy(ctx);
    unsetenv("MOBAGEN_LIBCUDA");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_driver),
        cmocka_unit_test(test_bad_spec_before_device),
        cmocka_unit_test(test_null_context_message),
        cmocka_unit_test(test_null_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
