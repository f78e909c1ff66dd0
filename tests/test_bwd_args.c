/* The backward's argument checks and workspace sizing without a GPU, on an op detached from any
 * device (the same checks and layout code as a real one; any launch is refused). */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "runtime_internal.h"

static mobagen_op *detached_op_topk(int conv_width, int top_k)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml, "name: bwd_args\nhead_dim: 128\nblock_size: 128\ntop_k: %d\ngqa_group: 2\n"
             "conv_width: %d\n", top_k, conv_width);
    mg_spec spec;
    mg_diag d;
    if (mg_spec_parse(yaml, strlen(yaml), "bwd_args", &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    mobagen_op *op = NULL;
    assert_int_equal(mg_op_create_detached(&spec, &op), MOBAGEN_OK);
    op->has_block_lists = 1;
    return op;
}

static mobagen_op *detached_op(int conv_width) { return detached_op_topk(conv_width, 8); }

/* Two sequences of 100 and 156 tokens; fake but aligned device pointers, 16 MiB apart (no two
 * arguments share a byte; the workspace goes at 1 MiB). */
static mobagen_bwd_args good_args(void)
{
    mobagen_bwd_args a = {.fwd = {.batch = 2, .hq = 4, .hkv = 2, .head_dim = 128, .total_q = 256,
                                  .total_k = 256, .max_seqlen_q = 156, .max_seqlen_k = 156,
                                  .dtype = MOBAGEN_BF16, .q = 0x1000000, .k = 0x2000000, .v = 0x3000000,
                                  .out = 0x4000000, .lse = 0x5000000, .cu_seqlens_q = 0x6000000,
                                  .cu_seqlens_k = 0x6000000},
                          .dout = 0x7000000, .dq = 0x8000000, .dk = 0x9000000, .dv = 0xa000000};
    return a;
}

static void expect_refused(mobagen_op *op, const mobagen_bwd_args *a, mobagen_status want, const char *needle)
{
    size_t bytes = 12345;
    mobagen_status st = mobagen_bwd_workspace_size(op, a, &bytes);
    if (st != want || !strstr(mobagen_op_errmsg(op), needle))
        fail_msg("workspace_size gave %s '%s'; wanted %s naming '%s'", mobagen_status_name(st),
                 mobagen_op_errmsg(op), mobagen_status_name(want), needle);
    assert_int_equal(bytes, 12345);
    assert_int_equal(mobagen_bwd(op, a, 0x100000, (size_t)1 << 40, NULL), want);
    if (!strstr(mobagen_op_errmsg(op), needle)) fail_msg("mobagen_bwd: '%s' lacks '%s'", mobagen_op_errmsg(op), needle);
}

static void test_good_args_size_and_no_device(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_bwd_args a = good_args();
    size_t bytes = 0, fwd_bytes = 0, given = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_int_equal(mobagen_fwd_workspace_size(op, &a.fwd, &fwd_bytes), MOBAGEN_OK);
    /* Routing runs again inside: the forward's workspace, then at least the fp32 dq rows. */
    assert_true(bytes >= fwd_bytes + (size_t)256 * 4 * 128 * 4);
    assert_int_equal(bytes % 256, 0);
    a.selection = 0xb000000;   /* given: no forward workspace */
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &given), MOBAGEN_OK);
    assert_true(given < bytes && given >= (size_t)256 * 4 * 128 * 4);
    assert_int_equal(mobagen_bwd(op, &a, 0x100000, given, NULL), MOBAGEN_E_NO_DEVICE);
    assert_non_null(strstr(mobagen_op_errmsg(op), "no device"));
    assert_int_equal(mobagen_bwd(op, &a, 0x100000, given - 1, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "too small"));
    assert_int_equal(mobagen_bwd(op, &a, 0x100008, given, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "aligned"));

    assert_int_equal(mobagen_bwd_workspace_size(op, &a, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "bytes"));
    assert_int_equal(mobagen_bwd_workspace_size(op, NULL, &bytes), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "args is NULL"));
    assert_int_equal(mobagen_bwd(op, NULL, 0x100000, bytes, NULL), MOBAGEN_E_ARG);
    mobagen_op_destroy(op);
}

static void test_bad_arguments_are_named(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_bwd_args a = good_args();
    a.fwd.head_dim = 64;   /* the forward's checks run first */
    expect_refused(op, &a, MOBAGEN_E_ARG, "head_dim");
    a = good_args();
    a.deterministic = 2;
    expect_refused(op, &a, MOBAGEN_E_ARG, "deterministic");
    a = good_args();
    a.dk = 0x90002;
    expect_refused(op, &a, MOBAGEN_E_ARG, "dk (0x90002) must be 16-byte aligned");
    a = good_args();
    a.dlse = 0x90001;
    expect_refused(op, &a, MOBAGEN_E_ARG, "dlse");
    a = good_args();
    a.selection = 0x90002;
    expect_refused(op, &a, MOBAGEN_E_ARG, "selection");
    a = good_args();
    a.dconv_weight = 0xc000000;
    expect_refused(op, &a, MOBAGEN_E_ARG, "dconv_weight must be 0");
    const char *strides[] = {"dout_row_stride", "dout_head_stride", "dq_row_stride", "dq_head_stride",
                             "dk_row_stride", "dk_head_stride", "dv_row_stride", "dv_head_stride"};
    for (int i = 0; i < 8; i++) {
        a = good_args();
        long long *s[] = {&a.dout_row_stride, &a.dout_head_stride, &a.dq_row_stride, &a.dq_head_stride,
                          &a.dk_row_stride, &a.dk_head_stride, &a.dv_row_stride, &a.dv_head_stride};
        *s[i] = 100;   /* not a multiple of 8 */
        expect_refused(op, &a, MOBAGEN_E_ARG, strides[i]);
        *s[i] = (long long)1 << 62;
        expect_refused(op, &a, MOBAGEN_E_ARG, strides[i]);
    }
    mobagen_op_destroy(op);
    op = detached_op(3);
    a = good_args();
    a.fwd.conv_weight = 0xc000000;
    expect_refused(op, &a, MOBAGEN_E_ARG, "dconv_weight is a null device pointer");
    a.dconv_weight = 0xd000000;
    size_t bytes;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    mobagen_op_destroy(op);
}

static void test_null_pointers_only_for_empty_tensors(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_bwd_args a = good_args();
    const char *names[] = {"dout", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        a = good_args();
        mobagen_devptr *fields[] = {&a.dout, &a.dq, &a.dk, &a.dv};
        *fields[i] = 0;
        char needle[64];
        snprintf(needle, sizeof needle, "%s is a null device pointer", names[i]);
        expect_refused(op, &a, MOBAGEN_E_ARG, needle);
    }
    size_t bytes;
    a = good_args();   /* no queries: q, out, lse, dout and dq may be null */
    a.fwd.total_q = a.fwd.max_seqlen_q = 0;
    a.fwd.q = a.fwd.out = a.fwd.lse = a.dout = a.dq = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    a.dk = 0;   /* but dk is not empty */
    expect_refused(op, &a, MOBAGEN_E_ARG, "dk is a null device pointer");
    a = good_args();   /* no keys: k, v, dk and dv may be null */
    a.fwd.total_k = a.fwd.max_seqlen_k = 0;
    a.fwd.k = a.fwd.v = a.dk = a.dv = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    /* An empty batch with every pointer null writes nothing and needs no device. */
    a = good_args();
    a.fwd.batch = a.fwd.total_q = a.fwd.total_k = a.fwd.max_seqlen_q = a.fwd.max_seqlen_k = 0;
    a.fwd.q = a.fwd.k = a.fwd.v = a.fwd.out = a.fwd.lse = a.dout = a.dq = a.dk = a.dv = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_int_equal(mobagen_bwd(op, &a, bytes ? 0x100000 : 0, bytes, NULL), MOBAGEN_OK);
    mobagen_op_destroy(op);
}

/* Deterministic mode keeps its per-(query, slot) partials to a chunk of rows: the workspace
 * grows with the selection and its lists, not with top_k x head_dim per query. */
static void test_deterministic_workspace_is_bounded(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_bwd_args a = good_args();
    a.fwd.batch = 2;
    a.fwd.hq = 16;
    a.fwd.hkv = 8;
    a.fwd.total_q = a.fwd.total_k = 2 * 131072;
    a.fwd.max_seqlen_q = a.fwd.max_seqlen_k = 131072;
    a.selection = 0xb000000;
    size_t fast = 0, det = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &fast), MOBAGEN_OK);
    a.deterministic = 1;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &det), MOBAGEN_OK);
    size_t slots = (size_t)2 * 131072 * 16 * 8;
    size_t dq_rows = (size_t)2 * 131072 * 16 * 128 * 4;
    /* The query lists (4 bytes per slot) fit in the packed dq: only D' beside the fp32 dq rows. */
    assert_true(fast >= dq_rows && fast < dq_rows + slots * 4);
    /* One fp32 partial row per (query, slot) would take slots x 512 bytes (16 GiB here); the
     * chunks keep it to the fast mode's dq rows, next to the fp32 dk' and dv carried from chunk
     * to chunk and the lists of more chunks. */
    size_t carry = (size_t)2 * 2 * 131072 * 8 * 128 * 4;
    printf("workspace: fast %.2f GiB, deterministic %.2f GiB\n", fast / 1073741824.0, det / 1073741824.0);
    assert_true(det > carry && det < fast + carry + ((size_t)512 << 20));
    assert_true(det < slots * 128 * 4 / 3);
    mobagen_op_destroy(op);
}

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

/* mobagen_bwd_workspace_size's formula as runtime/mobagen.h states it, region by region, for a
 * given selection, no key convolution and one row chunk (C = 1). */
static size_t documented_size(const mobagen_bwd_args *a, int head_dim, int block_size, int top_k)
{
    const mobagen_fwd_args *f = &a->fwd;
    const size_t d = (size_t)head_dim, rows_heads = (size_t)f->total_q * f->hq;
    const size_t slots = rows_heads * top_k;
    const size_t lists = (size_t)f->batch * f->hq * ((f->max_seqlen_k + block_size - 1) / block_size);
    const size_t list_bytes = 4 * (1 + 2 * lists + slots);
    const int packed = (a->dq_row_stride == 0 || a->dq_row_stride == f->hq * head_dim) &&
                       (a->dq_head_stride == 0 || a->dq_head_stride == head_dim);
    const int in_dq = !a->deterministic && packed && list_bytes <= 2 * rows_heads * d;
    const size_t dq_acc = a->deterministic ? 4 * (size_t)f->batch * f->max_seqlen_q * f->hq * top_k * d
                                           : 4 * rows_heads * d;
    return align256(4 * rows_heads) + (in_dq ? 0 : align256(list_bytes)) + align256(dq_acc);
}

/* The query lists take no workspace where a packed dq can hold them (fast mode): the training
 * step's peak then holds one selection-sized buffer (the selection) instead of two. */
static void test_workspace_formula_lists_in_dq(void **state)
{
    (void)state;
    const int top_ks[] = {8, 64};
    for (int i = 0; i < 2; i++) {
        mobagen_op *op = detached_op_topk(0, top_ks[i]);
        mobagen_bwd_args a = good_args();
        a.selection = 0xb000000;
        size_t bytes = 0;
        for (int variant = 0; variant < 4; variant++) {
            a.deterministic = variant == 3;
            a.dq_row_stride = variant == 1 ? 4 * 128 : variant == 2 ? 4 * 128 + 8 : 0;
            a.dq_head_stride = variant == 1 ? 128 : 0;
            assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
            size_t want = documented_size(&a, 128, 128, top_ks[i]);
            static const char *const names[4] = {"packed dq", "packed dq, strides given", "strided dq",
                                                 "deterministic"};
            printf("top_k %d, %s: %zu bytes (documented %zu)\n", top_ks[i], names[variant], bytes, want);
            assert_int_equal(bytes, want);
        }
        a.deterministic = 0;
        a.dq_row_stride = a.dq_head_stride = 0;
        size_t packed_bytes = 0, strided_bytes = 0;
        assert_int_equal(mobagen_bwd_workspace_size(op, &a, &packed_bytes), MOBAGEN_OK);
        a.dq_row_stride = 4 * 128 + 8;
        assert_int_equal(mobagen_bwd_workspace_size(op, &a, &strided_bytes), MOBAGEN_OK);
        /* top_k 8: 32 bytes of entries per (row, head) fit in dq's 256; top_k 64: 256 plus the
         * list heads do not. */
        if (top_ks[i] == 8) assert_true(strided_bytes >= packed_bytes + (size_t)256 * 4 * 8 * 4);
        else assert_int_equal(strided_bytes, packed_bytes);
        mobagen_op_destroy(op);
    }
}

/* Where the lists are built in dq, dq must not share memory with any other argument: the lists
 * would overwrite it before its last read. Refused, naming both; a strided dq holds no lists. */
static void test_dq_sharing_memory_is_refused(void **state)
{
    (void)state;
    mobagen_op *op = detached_op(0);
    mobagen_bwd_args a = good_args();
    a.selection = 0xb000000;
    size_t bytes = 0;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_int_equal(mobagen_bwd(op, &a, 0x100000, bytes, NULL), MOBAGEN_E_NO_DEVICE);
    const struct { const char *name; mobagen_devptr *field; } other[] = {
        {"dout", &a.dout}, {"q", &a.fwd.q}, {"out", &a.fwd.out}, {"selection", &a.selection}, {"dk", &a.dk}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        mobagen_devptr saved = *other[i].field;
        *other[i].field = a.dq + 256 * 4 * 128 * 2 - 16;   /* its first bytes are dq's last */
        assert_int_equal(mobagen_bwd(op, &a, 0x100000, bytes, NULL), MOBAGEN_E_ARG);
        char want[64];
        snprintf(want, sizeof want, "overlaps %s", other[i].name);
        if (!strstr(mobagen_op_errmsg(op), want)) fail_msg("'%s' lacks '%s'", mobagen_op_errmsg(op), want);
        *other[i].field = saved;
    }
    assert_int_equal(mobagen_bwd(op, &a, a.dq - 256, bytes, NULL), MOBAGEN_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "overlaps workspace"));
    /* Next to dq, not on it: accepted (up to the missing device). */
    a.dout = a.dq + 256 * 4 * 128 * 2;
    assert_int_equal(mobagen_bwd(op, &a, 0x100000, bytes, NULL), MOBAGEN_E_NO_DEVICE);
    /* A strided dq keeps the lists in the workspace: sharing is the caller's business there, as
     * for the forward's outputs. */
    a.dout = a.dq + 16;
    a.dq_row_stride = 4 * 128 + 8;
    assert_int_equal(mobagen_bwd_workspace_size(op, &a, &bytes), MOBAGEN_OK);
    assert_int_equal(mobagen_bwd(op, &a, 0x100000, bytes, NULL), MOBAGEN_E_NO_DEVICE);
    mobagen_op_destroy(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_args_size_and_no_device),
        cmocka_unit_test(test_bad_arguments_are_named),
        cmocka_unit_test(test_null_pointers_only_for_empty_tensors),
        cmocka_unit_test(test_deterministic_workspace_is_bounded),
        cmocka_unit_test(test_workspace_formula_lists_in_dq),
        cmocka_unit_test(test_dq_sharing_memory_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
