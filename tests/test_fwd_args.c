/* The forward's argument checks and workspace sizing without a GPU: an op detached from any
 * device runs the same check_args and layout code as a real one, and any launch is refused,
 * so a call that succeeds on it provably launched nothing. */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "checked_size.h"
#include "runtime_internal.h"

static const char spec_yaml[] = "name: args\nhead_dim: 128\nblock_size: 128\ntop_k: 8\ngqa_group: 2\n";

static mobagen_op *detached_op(int block_lists)
{
    mg_spec spec;
    mg_diag d;
    if (mg_spec_parse(spec_yaml, strlen(spec_yaml), "args", &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    mobagen_op *op = NULL;
    assert_int_equal(mg_op_create_detached(&spec, &op), MOBAGEN_OK);
    op->has_block_lists = block_lists;
    return op;
}

/* Two sequences of 100 and 156 tokens; fake but aligned device pointers. */
static mobagen_fwd_args good_args(void)
{
    mobagen_fwd_args a = {.batch = 2, .hq = 4, .hkv = 2, .head_dim = 128, .total_q = 256,
                          .total_k = 256, .max_seqlen_q = 156, .max_seqlen_k = 156,
                          .dtype = MOBAGEN_BF16, .q = 0x10000, .k = 0x20000, .v = 0x30000,
                          .out = 0x40000, .lse = 0x50000, .cu_seqlens_q = 0x60000,
                          .cu_seqlens_k = 0x60000};
    return a;
}

static void expect_refused(mobagen_op *op, const mobagen_fwd_args *a, mobagen_status want,
                           const char *needle)
{
    size_t bytes = 12345;
    mobagen_status st = mobagen_fwd_workspace_size(op, a, &bytes);
    if (st != want || !strstr(mobagen_op_errmsg(op), needle))
        fail_msg("workspace_size gave %s '%s' (bytes %zu); wanted %s naming '%s'",
                 mobagen_status_name(st), mobagen_op_errmsg(op), bytes, mobagen_status_name(want), needle);
    assert_int_equal(bytes, 12345);
    assert_int_equal(mobagen_fwd(op, a, 0x100000, (size_t)1 << 40, NULL), want);
    assert_int_equal(mobagen_fwd_selection(op, a, 0x100000), 0);
}

static void test_good_args_size_and_no_device(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(1);
    mobagen_fwd_args a = good_args();
    size_t bytes = 0;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    /* At least the selection: total_q x hq x top_k int32. */
    assert_true(bytes >= (size_t)256 * 4 * 8 * 4);
    assert_int_equal(bytes % 256, 0);
    assert_true(mobagen_fwd_selection(op, &a, 0x100000) >= 0x100000);
    /* Real inputs need a launch, which an op without a device refuses by name. */
    assert_int_equal(mobagen_fwd(op, &a, 0x100000, bytes, NULL), MOBAGEN_E_NO_DEVICE);
    assert_non_null(strstr(mobagen_op_errmsg(op), "no device"));

    /* NULL arguments next to a real op are named in its message. */
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "bytes"));
    assert_int_equal(mobagen_fwd_workspace_size(op, NULL, &bytes), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "args is NULL"));
    assert_int_equal(mobagen_fwd(op, NULL, 0x100000, bytes, NULL), MOBAGEN_E_ARG);
    assert_int_equal(mobagen_fwd_selection(op, NULL, 0x100000), 0);
    assert_int_equal(mobagen_op_select(op, NULL, 0), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "template_name"));
    assert_int_equal(mobagen_op_select(op, "route", 0), MOBAGEN_E_ARG);   /* no variants */
    assert_int_equal(mobagen_op_variant_count(op, NULL), -1);
    assert_int_equal(mobagen_op_variant_count(op, "route"), 0);
    assert_null(mobagen_op_variant_id(op, NULL, 0));
    assert_null(mobagen_op_variant_id(op, "route", 0));
    mobagen_op_destroy(op);
}

/* Issue 8/9: max_seqlen_k near INT_MAX made the block count wrap negative and the workspace
 * size 18446743936270606592 bytes. */
static void test_block_count_does_not_wrap(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(1);
    mobagen_fwd_args a = good_args();
    a.batch = 1;
    a.total_k = a.max_seqlen_k = INT_MAX;
    a.total_q = a.max_seqlen_q = 1;
    size_t big = 0, smaller = 0;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &big), MOBAGEN_OK);
    size_t blocks = ((size_t)INT_MAX + 127) / 128;
    assert_true(big >= blocks * 2 * 128 * sizeof(float));   /* the centroids fit */
    assert_true(big < ((size_t)1 << 44));
    a.total_k = a.max_seqlen_k = INT_MAX - 1000;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &smaller), MOBAGEN_OK);
    assert_true(smaller <= big);
    mobagen_op_destroy(op);
}

static void test_head_products_do_not_wrap(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_fwd_args a = good_args();
    a.hkv = INT_MAX;   /* hkv x gqa_group wrapped (undefined behaviour) before the check */
    expect_refused(op, &a, MOBAGEN_E_ARG, "gqa_group");
    a = good_args();
    a.q_row_stride = (long long)1 << 60;
    expect_refused(op, &a, MOBAGEN_E_ARG, "q_row_stride");
    a = good_args();
    a.k_head_stride = LLONG_MAX - 7;
    expect_refused(op, &a, MOBAGEN_E_ARG, "k_head_stride");
    a = good_args();
    a.total_q = 1 << 30;
    a.max_seqlen_q = 1 << 24;
    a.batch = 64;
    expect_refused(op, &a, MOBAGEN_E_UNSUPPORTED, "2^31");
    mobagen_op_destroy(op);
}

static void test_softmax_scale(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_fwd_args a = good_args();
    const float bad[] = {NAN, -NAN, -0.5f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a.softmax_scale = bad[i];
        expect_refused(op, &a, MOBAGEN_E_ARG, "softmax_scale");
    }
    size_t bytes;
    a.softmax_scale = 0;   /* the default, 1/sqrt(head_dim) */
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    a.softmax_scale = 0.125f;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    mobagen_op_destroy(op);
}

static void test_null_pointers_only_for_empty_tensors(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(1);
    mobagen_fwd_args a = good_args();
    const char *names[] = {"q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k"};
    mobagen_devptr *fields[] = {&a.q, &a.k, &a.v, &a.out, &a.lse, &a.cu_seqlens_q, &a.cu_seqlens_k};
    for (int i = 0; i < 7; i++) {
        a = good_args();
        *fields[i] = 0;
        char needle[64];
        snprintf(needle, sizeof needle, "%s is a null device pointer", names[i]);
        expect_refused(op, &a, MOBAGEN_E_ARG, needle);
    }

    /* No queries: q, out and lse may be null (PyTorch's data_ptr() of an empty tensor), and
     * the forward launches nothing. */
    a = good_args();
    a.total_q = a.max_seqlen_q = 0;
    a.q = a.out = a.lse = 0;
    size_t bytes;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_int_equal(mobagen_fwd(op, &a, bytes ? 0x100000 : 0, bytes, NULL), MOBAGEN_OK);
    a.cu_seqlens_q = 0;   /* still batch + 1 entries */
    expect_refused(op, &a, MOBAGEN_E_ARG, "cu_seqlens_q is a null device pointer");

    /* No keys: k and v may be null. */
    a = good_args();
    a.total_k = a.max_seqlen_k = 0;
    a.k = a.v = 0;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    a.q = 0;   /* but q is not empty */
    expect_refused(op, &a, MOBAGEN_E_ARG, "q is a null device pointer");
    mobagen_op_destroy(op);
}

static void test_empty_batch(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(1);
    mobagen_fwd_args a = good_args();
    a.batch = 0;
    a.total_q = a.total_k = a.max_seqlen_q = a.max_seqlen_k = 0;
    a.q = a.k = a.v = a.out = a.lse = 0;
    size_t bytes = 1;
    assert_int_equal(mobagen_fwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_true(bytes <= 4096);
    assert_int_equal(mobagen_fwd(op, &a, bytes ? 0x100000 : 0, bytes, NULL), MOBAGEN_OK);
    a.total_q = a.max_seqlen_q = 5;
    expect_refused(op, &a, MOBAGEN_E_ARG, "batch");
    a = good_args();
    a.batch = -1;
    expect_refused(op, &a, MOBAGEN_E_ARG, "batch must be >= 0");
    mobagen_op_destroy(op);
}

static void test_max_seqlen_covers_totals(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_fwd_args a = good_args();
    a.max_seqlen_q = 0;   /* silently launched nothing before */
    expect_refused(op, &a, MOBAGEN_E_ARG, "longer than max_seqlen");
    a = good_args();
    a.max_seqlen_k = 100;   /* 2 x 100 < 256 */
    expect_refused(op, &a, MOBAGEN_E_ARG, "longer than max_seqlen");
    mobagen_op_destroy(op);
}

static void test_checked_size_helpers(void **state)
{
    (void)state;
    size_t r = 7;
    assert_false(mg_size_mul(SIZE_MAX / 2 + 1, 2, &r));
    assert_int_equal(r, 7);
    assert_true(mg_size_mul(SIZE_MAX / 2, 2, &r));
    assert_int_equal(r, SIZE_MAX - 1);
    assert_false(mg_size_add(SIZE_MAX, 1, &r));
    assert_false(mg_size_align(SIZE_MAX - 3, 256, &r));
    assert_true(mg_size_align(257, 256, &r));
    assert_int_equal(r, 512);
    assert_false(mg_size_product(&r, 2, -1, 1, 1, 1));
    assert_false(mg_size_product(&r, LLONG_MAX, LLONG_MAX, 4, 1, 1));
    assert_int_equal(mg_ceil_div(INT_MAX, 128), ((long long)INT_MAX + 127) / 128);
    assert_int_equal(mg_ceil_div(LLONG_MAX, 1), LLONG_MAX);

    mg_layout l = {.align = 256};
    assert_int_equal(mg_layout_add(&l, "a", 3, 1, 1, 1, 1), 0);
    assert_int_equal(mg_layout_add(&l, "b", 10, 10, 1, 1, 1), 256);
    assert_int_equal(l.total, 512);
    assert_null(l.overflow);
    mg_layout_add(&l, "huge", LLONG_MAX, LLONG_MAX, 1, 1, 1);
    assert_string_equal(l.overflow, "huge");
    mg_layout_add(&l, "after", 1, 1, 1, 1, 1);
    assert_string_equal(l.overflow, "huge");   /* the first one is kept */
    assert_int_equal(l.total, 512);
    mg_layout edge = {.align = 256, .total = SIZE_MAX - 200};
    mg_layout_add(&edge, "end", 100, 1, 1, 1, 1);
    assert_string_equal(edge.overflow, "end");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_args_size_and_no_device),
        cmocka_unit_test(test_block_count_does_not_wrap),
        cmocka_unit_test(test_head_products_do_not_wrap),
        cmocka_unit_test(test_softmax_scale),
        cmocka_unit_test(test_null_pointers_only_for_empty_tensors),
        cmocka_unit_test(test_empty_batch),
        cmocka_unit_test(test_max_seqlen_covers_totals),
        cmocka_unit_test(test_checked_size_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
