/* Argument checks of mobagen_append, mobagen_decode and mobagen_decode_workspace_size, on ops
 * without a device (no GPU needed): every wrong argument is refused with a message naming it,
 * null pointers pass exactly for empty tensors, empty batches succeed, unsupported specs are
 * refused, and the workspace grows as documented. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "runtime_internal.h"

#define FAKE 0x10000000ull   /* aligned, never dereferenced: the checks fail or nothing launches */

static mobagen_op *detached(const char *yaml)
{
    mg_spec spec;
    mg_diag d;
    if (mg_spec_parse(yaml, strlen(yaml), "decode_args", &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    mobagen_op *op = NULL;
    assert_int_equal(mg_op_create_detached(&spec, &op), MOBAGEN_OK);
    return op;
}

static const char *const gqa4 = "name: dec\nhead_dim: 128\nblock_size: 128\ntop_k: 8\ngqa_group: 4\n";
static const char *const conv = "name: decc\nhead_dim: 64\nblock_size: 32\ntop_k: 4\nconv_width: 3\n";

static mobagen_kv_cache good_cache(int head_dim, int hkv, int conv_width)
{
    return (mobagen_kv_cache){.n_pages = 64, .page_size = 16, .max_pages = 32, .hkv = hkv, .head_dim = head_dim,
                              .dtype = MOBAGEN_BF16, .k_pages = FAKE, .v_pages = FAKE,
                              .kraw_pages = conv_width ? FAKE : 0, .centroid_sum = FAKE, .page_table = FAKE,
                              .seq_lens = FAKE};
}

static mobagen_decode_args good_decode(void)
{
    return (mobagen_decode_args){.batch = 2, .hq = 8, .max_q_len = 4, .total_q = 5, .max_seqlen = 500, .q = FAKE,
                                 .out = FAKE, .lse = FAKE, .cu_seqlens_q = FAKE};
}

static void expect_refused(mobagen_op *op, mobagen_status got, mobagen_status want, const char *needle)
{
    if (got != want || !strstr(mobagen_op_errmsg(op), needle))
        fail_msg("status %s, message '%s'; wanted %s naming '%s'", mobagen_status_name(got), mobagen_op_errmsg(op),
                 mobagen_status_name(want), needle);
}

static void test_decode_arguments_are_named(void **state)
{
    (void)state;
    mobagen_op *op = detached(gqa4);
    mobagen_kv_cache c = good_cache(128, 2, 0);
    mobagen_decode_args a = good_decode();
    size_t bytes = 0;
    assert_int_equal(mobagen_decode_workspace_size(op, &c, &a, &bytes), MOBAGEN_OK);
    assert_true(bytes > 0 && bytes % 256 == 0);

    struct { const char *needle; mobagen_kv_cache c; mobagen_decode_args a; } bad[15];
    int n = 0;
#define BAD(text) (bad[n].needle = (text), bad[n].c = c, bad[n].a = a, &bad[n++])
    BAD("cache->head_dim")->c.head_dim = 64;
    BAD("cache->dtype")->c.dtype = MOBAGEN_FP16;
    BAD("page_size")->c.page_size = 0;
    BAD("cache->k_pages (0x")->c.k_pages = FAKE + 8;
    BAD("cache->v_pages is a null")->c.v_pages = 0;
    BAD("cache->kraw_pages must be 0")->c.kraw_pages = FAKE;
    BAD("hq (4)")->a.hq = 4;
    BAD("total_q (9)")->a.total_q = 9;
    BAD("max_seqlen (513)")->a.max_seqlen = 513;   /* 32 pages of 16 tokens */
    BAD("q is a null")->a.q = 0;
    BAD("lse (0x")->a.lse = FAKE + 2;
    BAD("q_row_stride")->a.q_row_stride = 100;
    BAD("out_row_stride")->a.out_row_stride = 512;   /* < hq x head_dim */
    BAD("softmax_scale")->a.softmax_scale = -1.f;
    BAD("cu_seqlens_q is a null")->a.cu_seqlens_q = 0;
#undef BAD
    for (int i = 0; i < n; i++) {
        size_t b2;
        expect_refused(op, mobagen_decode_workspace_size(op, &bad[i].c, &bad[i].a, &b2), MOBAGEN_E_ARG, bad[i].needle);
        expect_refused(op, mobagen_decode(op, &bad[i].c, &bad[i].a, FAKE, bytes, NULL), MOBAGEN_E_ARG, bad[i].needle);
    }
    /* gqa 4 x q_len 4 = 16 rows fit one tile; 5 tokens do not */
    a.max_q_len = 5;
    a.total_q = 5;
    expect_refused(op, mobagen_decode_workspace_size(op, &c, &a, &bytes), MOBAGEN_E_UNSUPPORTED, "max_q_len (5)");
    expect_refused(op, mobagen_decode(op, NULL, &a, FAKE, bytes, NULL), MOBAGEN_E_ARG, "cache is NULL");
    expect_refused(op, mobagen_decode(op, &c, NULL, FAKE, bytes, NULL), MOBAGEN_E_ARG, "args is NULL");
    expect_refused(op, mobagen_decode_workspace_size(op, &c, &a, NULL), MOBAGEN_E_ARG, "bytes");
    assert_int_equal(mobagen_decode(NULL, &c, &a, FAKE, bytes, NULL), MOBAGEN_E_ARG);
    mobagen_op_destroy(op);
}

/* Empty tensors may be null; empty batches and zero queries launch nothing and succeed, even
 * without a device. */
static void test_empty_inputs(void **state)
{
    (void)state;
    mobagen_op *op = detached(gqa4);
    mobagen_kv_cache c = good_cache(128, 2, 0);
    mobagen_decode_args a = good_decode();
    a.total_q = 0;
    a.q = a.out = a.lse = 0;
    assert_int_equal(mobagen_decode(op, &c, &a, 0, 0, NULL), MOBAGEN_OK);
    mobagen_kv_cache empty = {.hkv = 2, .head_dim = 128, .page_size = 16, .dtype = MOBAGEN_BF16};
    mobagen_decode_args none = {.hq = 8, .cu_seqlens_q = FAKE};   /* batch + 1 = 1 entry: not empty */
    size_t bytes = 1;
    if (mobagen_decode_workspace_size(op, &empty, &none, &bytes) != MOBAGEN_OK) fail_msg("%s", mobagen_op_errmsg(op));
    assert_int_equal(mobagen_decode(op, &empty, &none, 0, 0, NULL), MOBAGEN_OK);
    mobagen_append_args app = {.cu_seqlens_new = FAKE};
    assert_int_equal(mobagen_append(op, &empty, &app, NULL), MOBAGEN_OK);
    /* a batch with no new tokens anywhere: max_new 0, k and v null */
    app = (mobagen_append_args){.batch = 2, .cu_seqlens_new = FAKE};
    assert_int_equal(mobagen_append(op, &c, &app, NULL), MOBAGEN_OK);
    /* real work needs a device */
    app = (mobagen_append_args){.batch = 2, .max_new = 1, .total_new = 2, .k = FAKE, .v = FAKE, .cu_seqlens_new = FAKE};
    expect_refused(op, mobagen_append(op, &c, &app, NULL), MOBAGEN_E_NO_DEVICE, "no device");
    int bits = -1;
    assert_int_equal(mobagen_kv_cache_check(op, &c, NULL, &bits), MOBAGEN_OK);   /* no error word */
    assert_int_equal(bits, 0);
    assert_int_equal(mobagen_kv_cache_check(NULL, &c, NULL, &bits), MOBAGEN_E_ARG);
    mobagen_op_destroy(op);
}

static void test_append_arguments_are_named(void **state)
{
    (void)state;
    mobagen_op *op = detached(conv);
    mobagen_kv_cache c = good_cache(64, 1, 3);
    mobagen_append_args a = {.batch = 2, .max_new = 4, .total_new = 5, .k = FAKE, .v = FAKE, .cu_seqlens_new = FAKE,
                             .conv_weight = FAKE};
    struct { const char *needle; mobagen_kv_cache c; mobagen_append_args a; } bad[10];
    int n = 0;
#define BAD(text) (bad[n].needle = (text), bad[n].c = c, bad[n].a = a, &bad[n++])
    BAD("total_new (9)")->a.total_new = 9;
    BAD("max_new (513)")->a.max_new = 513;
    BAD("k is a null")->a.k = 0;
    BAD("v (0x")->a.v = FAKE + 4;
    BAD("conv_weight is required")->a.conv_weight = 0;
    BAD("cache->kraw_pages (spec has a key convolution) is a null")->c.kraw_pages = 0;
    BAD("k_row_stride")->a.k_row_stride = 60;
    BAD("cu_seqlens_new is a null")->a.cu_seqlens_new = 0;
    BAD("batch (-1)")->a.batch = -1;
    BAD("cache->page_table is a null")->c.page_table = 0;
#undef BAD
    for (int i = 0; i < n; i++)
        expect_refused(op, mobagen_append(op, &bad[i].c, &bad[i].a, NULL), MOBAGEN_E_ARG, bad[i].needle);
    expect_refused(op, mobagen_append(op, &c, NULL, NULL), MOBAGEN_E_ARG, "args is NULL");
    mobagen_op_destroy(op);
}

/* mobagen_kv_truncate: exactly one of drop and new_lens, aligned, a good cache; batch 0 needs
 * neither and launches nothing; real work needs a device. */
static void test_truncate_arguments_are_named(void **state)
{
    (void)state;
    mobagen_op *op = detached(conv);
    mobagen_kv_cache c = good_cache(64, 1, 3);
    mobagen_truncate_args a = {.batch = 2, .drop = FAKE};
    struct { const char *needle; mobagen_kv_cache c; mobagen_truncate_args a; } bad[6];
    int n = 0;
#define BAD(text) (bad[n].needle = (text), bad[n].c = c, bad[n].a = a, &bad[n++])
    BAD("exactly one of drop and new_lens")->a.drop = 0;
    BAD("exactly one of drop and new_lens")->a.new_lens = FAKE;
    BAD("drop (0x")->a.drop = FAKE + 2;
    BAD("batch must be >= 0")->a.batch = -3;
    BAD("cache->seq_lens is a null")->c.seq_lens = 0;
    BAD("cache->kraw_pages (spec has a key convolution) is a null")->c.kraw_pages = 0;
#undef BAD
    for (int i = 0; i < n; i++)
        expect_refused(op, mobagen_kv_truncate(op, &bad[i].c, &bad[i].a, NULL), MOBAGEN_E_ARG, bad[i].needle);
    expect_refused(op, mobagen_kv_truncate(op, &c, NULL, NULL), MOBAGEN_E_ARG, "args is NULL");
    expect_refused(op, mobagen_kv_truncate(op, NULL, &a, NULL), MOBAGEN_E_ARG, "cache is NULL");
    assert_int_equal(mobagen_kv_truncate(NULL, &c, &a, NULL), MOBAGEN_E_ARG);
    mobagen_truncate_args none = {.batch = 0};
    assert_int_equal(mobagen_kv_truncate(op, &c, &none, NULL), MOBAGEN_OK);
    expect_refused(op, mobagen_kv_truncate(op, &c, &a, NULL), MOBAGEN_E_NO_DEVICE, "no device");
    a = (mobagen_truncate_args){.batch = 2, .new_lens = FAKE};
    expect_refused(op, mobagen_kv_truncate(op, &c, &a, NULL), MOBAGEN_E_NO_DEVICE, "no device");
    mobagen_op_destroy(op);
    op = detached("name: nc\nhead_dim: 128\nblock_size: 64\ntop_k: 4\ncausal: false\n");
    c = good_cache(128, 1, 0);
    expect_refused(op, mobagen_kv_truncate(op, &c, &a, NULL), MOBAGEN_E_UNSUPPORTED, "causal");
    mobagen_op_destroy(op);
}

/* Specs the decode kernels do not serve are refused before any build. */
static void test_unsupported_specs(void **state)
{
    (void)state;
    static const struct { const char *yaml, *needle; int head_dim; } specs[] = {
        {"name: nc\nhead_dim: 128\nblock_size: 64\ntop_k: 4\ncausal: false\n", "causal", 128},
        {"name: d256\nhead_dim: 256\nblock_size: 64\ntop_k: 4\n", "head_dim 256", 256},
        {"name: g32\nhead_dim: 64\nblock_size: 64\ntop_k: 4\ngqa_group: 32\n", "gqa_group 32", 64},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        mobagen_op *op = detached(specs[i].yaml);
        mobagen_kv_cache c = good_cache(specs[i].head_dim, 1, 0);
        mobagen_decode_args a = good_decode();
        size_t bytes;
        expect_refused(op, mobagen_decode_workspace_size(op, &c, &a, &bytes), MOBAGEN_E_UNSUPPORTED, specs[i].needle);
        mobagen_append_args app = {.batch = 1, .cu_seqlens_new = FAKE};
        expect_refused(op, mobagen_append(op, &c, &app, NULL), MOBAGEN_E_UNSUPPORTED, specs[i].needle);
        mobagen_op_destroy(op);
    }
}

/* The workspace follows the documented sum: candidates grow with the context and the tokens,
 * the partials with the splits. */
static void test_workspace_grows_as_documented(void **state)
{
    (void)state;
    mobagen_op *op = detached(gqa4);
    mobagen_kv_cache c = good_cache(128, 2, 0);
    c.max_pages = 1 << 16;
    c.n_pages = 1 << 16;
    mobagen_decode_args a = good_decode();
    size_t small, longer, more_q;
    a.max_seqlen = 1000;
    if (mobagen_decode_workspace_size(op, &c, &a, &small) != MOBAGEN_OK) fail_msg("%s", mobagen_op_errmsg(op));
    a.max_seqlen = 8 * 256 * 128;   /* 2048 blocks: 8 routing chunks of 256 at most */
    if (mobagen_decode_workspace_size(op, &c, &a, &longer) != MOBAGEN_OK) fail_msg("%s", mobagen_op_errmsg(op));
    a.max_q_len = 2;
    a.total_q = 4;
    if (mobagen_decode_workspace_size(op, &c, &a, &more_q) != MOBAGEN_OK) fail_msg("%s", mobagen_op_errmsg(op));
    /* rows = gqa x max_q_len: 16 -> 8 halves the candidates (batch 2, hkv 2, 7 each). Four kv
     * heads in all would run 32 routing CTAs of 256 blocks on 132 multiprocessors: the chunk
     * halves to 64 blocks, 32 chunks (the most select merges per row), 128 CTAs. */
    assert_int_equal(longer - more_q, (size_t)2 * 2 * 8 * 32 * 7 * 8);
    assert_true(longer > small);
    long long splits = mg_decode_splits(op, &c, &a);
    assert_true(splits >= 1 && splits <= 16 * 8);
    mobagen_op_destroy(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_arguments_are_named),
        cmocka_unit_test(test_empty_inputs),
        cmocka_unit_test(test_append_arguments_are_named),
        cmocka_unit_test(test_unsupported_specs),
        cmocka_unit_test(test_truncate_arguments_are_named),
        cmocka_unit_test(test_workspace_grows_as_documented),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
