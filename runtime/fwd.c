/* The forward pass: argument checks, workspace layout, the launches of each stage. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fwd_params.h"
#include "runtime_internal.h"

#define WORKSPACE_ALIGN 256

typedef struct workspace_layout {
    /* byte offsets, and the size */
    size_t kprime, centroid, sel;
    size_t block_count, block_offset, block_cursor, tile_offset, entries, partial_o, partial_lse;
    size_t total;
} workspace_layout;

static size_t align_up(size_t x) { return (x + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN; }

static int max_blocks_of(const mg_spec *s, const mobagen_fwd_args *a)
{
    return (a->max_seqlen_k + s->block_size - 1) / s->block_size;
}

/* Sized for every variant of the op, so that selecting another one never outgrows it. */
static workspace_layout layout_for(const mobagen_op *op, const mobagen_fwd_args *a)
{
    const mg_spec *s = &op->spec;
    workspace_layout w;
    memset(&w, 0, sizeof w);
    size_t elem = 2;
    size_t kprime = s->conv_width > 0 ? (size_t)a->total_k * (size_t)a->hkv * (size_t)a->head_dim * elem : 0;
    /* fp32 centroids, then their high/low split in the element type (centroid_split.cuh.tpl) */
    size_t centroid = (size_t)a->batch * (size_t)max_blocks_of(s, a) * (size_t)a->hkv *
                      (size_t)a->head_dim * (sizeof(float) + 2 * elem);
    size_t sel = (size_t)a->total_q * (size_t)a->hq * (size_t)s->top_k * sizeof(int32_t);
    w.kprime = 0;
    w.centroid = align_up(kprime);
    w.sel = w.centroid + align_up(centroid);
    w.total = w.sel + align_up(sel);
    if (op->has_block_lists) {
        size_t lists = (size_t)a->batch * (size_t)a->hq * (size_t)max_blocks_of(s, a);
        size_t slots = (size_t)a->total_q * (size_t)a->hq * (size_t)s->top_k;
        w.block_count = w.total;
        w.block_offset = w.block_count + align_up(lists * 4);
        w.block_cursor = w.block_offset + align_up((lists + 1) * 4);
        w.tile_offset = w.block_cursor + align_up(lists * 4);
        w.entries = w.tile_offset + align_up((lists + 1) * 4);
        w.partial_o = w.entries + align_up(slots * 4);
        w.partial_lse = w.partial_o + align_up(slots * (size_t)a->head_dim * elem);
        w.total = w.partial_lse + align_up(slots * 4);
    }
    return w;
}

/* Packed strides where the caller gave 0. */
static void resolve_strides(const mobagen_fwd_args *a, long long s[8])
{
    long long q_row = (long long)a->hq * a->head_dim, kv_row = (long long)a->hkv * a->head_dim;
    s[0] = a->q_row_stride ? a->q_row_stride : q_row;
    s[1] = a->q_head_stride ? a->q_head_stride : a->head_dim;
    s[2] = a->k_row_stride ? a->k_row_stride : kv_row;
    s[3] = a->k_head_stride ? a->k_head_stride : a->head_dim;
    s[4] = a->v_row_stride ? a->v_row_stride : kv_row;
    s[5] = a->v_head_stride ? a->v_head_stride : a->head_dim;
    s[6] = a->out_row_stride ? a->out_row_stride : q_row;
    s[7] = a->out_head_stride ? a->out_head_stride : a->head_dim;
}

static mg_status check_args(mobagen_op *op, const mobagen_fwd_args *a)
{
    const mg_spec *s = &op->spec;
    mg_diag *e = &op->err;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    if (a->head_dim != s->head_dim)
        return mg_fail(e, MG_E_ARG, "head_dim %d does not match spec '%s' (head_dim %d)", a->head_dim,
                       s->name, s->head_dim);
    if (a->dtype != s->dtype)
        return mg_fail(e, MG_E_ARG, "dtype %s does not match spec '%s' (%s)",
                       a->dtype == MG_BF16 || a->dtype == MG_FP16 ? mg_dtype_name(a->dtype) : "invalid",
                       s->name, mg_dtype_name(s->dtype));
    if (a->batch < 1) return mg_fail(e, MG_E_ARG, "batch must be >= 1, got %d", a->batch);
    if (a->hkv < 1 || a->hq < 1)
        return mg_fail(e, MG_E_ARG, "hq and hkv must be >= 1, got hq=%d hkv=%d", a->hq, a->hkv);
    if (a->hq != a->hkv * s->gqa_group)
        return mg_fail(e, MG_E_ARG, "hq (%d) must be hkv (%d) x the spec's gqa_group (%d)", a->hq,
                       a->hkv, s->gqa_group);
    if (a->hq > 65535 || a->batch > 65535)
        return mg_fail(e, MG_E_ARG, "hq and batch must be at most 65535 (grid limits)");
    if (a->total_q < 0 || a->total_k < 0 || a->max_seqlen_q < 0 || a->max_seqlen_k < 0)
        return mg_fail(e, MG_E_ARG, "total_q, total_k and max_seqlen_q/k must be >= 0");
    if (a->max_seqlen_q > a->total_q || a->max_seqlen_k > a->total_k)
        return mg_fail(e, MG_E_ARG, "max_seqlen_q/k (%d/%d) exceed total_q/k (%d/%d)",
                       a->max_seqlen_q, a->max_seqlen_k, a->total_q, a->total_k);
    const struct { const char *name; mobagen_devptr p; size_t align; } ptrs[] = {
        {"q", a->q, 16}, {"k", a->k, 16}, {"v", a->v, 16}, {"out", a->out, 16},
        {"lse", a->lse, 4}, {"cu_seqlens_q", a->cu_seqlens_q, 4}, {"cu_seqlens_k", a->cu_seqlens_k, 4}};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        if (!ptrs[i].p) return mg_fail(e, MG_E_ARG, "%s is a null device pointer", ptrs[i].name);
        if (ptrs[i].p % ptrs[i].align)
            return mg_fail(e, MG_E_ARG, "%s (0x%llx) must be %zu-byte aligned", ptrs[i].name,
                           (unsigned long long)ptrs[i].p, ptrs[i].align);
    }
    if (s->conv_width > 0 && !a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has conv_width %d: conv_weight is required", s->name,
                       s->conv_width);
    if (s->conv_width == 0 && a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has no key convolution: conv_weight must be 0", s->name);
    long long st[8];
    resolve_strides(a, st);
    static const char *const names[8] = {"q_row_stride", "q_head_stride", "k_row_stride",
                                         "k_head_stride", "v_row_stride", "v_head_stride",
                                         "out_row_stride", "out_head_stride"};
    for (int i = 0; i < 8; i++)
        if (st[i] < a->head_dim || st[i] % 8)
            return mg_fail(e, MG_E_ARG, "%s (%lld) must be a multiple of 8 elements and >= head_dim",
                           names[i], st[i]);
    return MG_OK;
}

mg_status mobagen_fwd_workspace_size(mobagen_op *op, const mobagen_fwd_args *args, size_t *bytes)
{
    mg_status st = check_args(op, args);
    if (st != MG_OK) return st;
    *bytes = layout_for(op, args).total;
    return MG_OK;
}

mobagen_devptr mobagen_fwd_selection(mobagen_op *op, const mobagen_fwd_args *args,
                                     mobagen_devptr workspace)
{
    return workspace + layout_for(op, args).sel;
}

static mg_status launch_kernel(mobagen_op *op, const mg_loaded_variant *v, const char *role,
                               unsigned gx, unsigned gy, unsigned gz, int threads, int smem,
                               mg_fwd_params *p, mobagen_stream stream)
{
    if (gx == 0 || gy == 0 || gz == 0) return MG_OK;
    cu_function fn = mg_variant_kernel(v, role);
    if (!fn) return mg_fail(&op->err, MG_E_TEMPLATE, "%s has no '%s' kernel", v->id, role);
    void *params[] = {p};
    mg_cuda *cu = &op->ctx->cu;
    char what[400];
    snprintf(what, sizeof what, "launch of %s (%s)", v->id, role);
    return mg_cuda_check(cu, cu->LaunchKernel(fn, gx, gy, gz, (unsigned)threads, 1, 1, (unsigned)smem,
                                              (cu_stream)stream, params, NULL),
                         what, &op->err);
}

static mg_status launch(mobagen_op *op, const mg_loaded_variant *v, unsigned gx, unsigned gy,
                        unsigned gz, mg_fwd_params *p, mobagen_stream stream)
{
    return launch_kernel(op, v, "main", gx, gy, gz, v->threads, v->smem, p, stream);
}

/* impl 2: transpose the selection into per-block query lists, run the tiles, merge. */
static mg_status block_attention(mobagen_op *op, const mg_loaded_variant *v, const mobagen_fwd_args *a,
                                 mg_fwd_params *p, size_t n_lists, mobagen_stream stream)
{
    mg_cuda *cu = &op->ctx->cu;
    unsigned list_tiles = (unsigned)((a->max_seqlen_q + v->list_rows - 1) / v->list_rows);
    unsigned merge_tiles = (unsigned)((a->max_seqlen_q + v->rows - 1) / v->rows);
    unsigned hq = (unsigned)a->hq, batch = (unsigned)a->batch;
    mg_status st = mg_cuda_check(cu, cu->MemsetD32Async(p->block_count, 0, n_lists, (cu_stream)stream),
                                 "cuMemsetD32Async(block counts)", &op->err);
    if (st == MG_OK) st = launch_kernel(op, v, "count", list_tiles, hq, batch, v->list_rows, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, "scan", 1, 1, 1, 1024, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, "scatter", list_tiles, hq, batch, v->list_rows, 0, p, stream);
    if (st == MG_OK)
        st = launch(op, v, (unsigned)(op->ctx->sm_count * v->ctas_per_sm), 1, 1, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, "merge", merge_tiles, hq, batch, 32 * v->rows, 0, p, stream);
    return st;
}

mg_status mobagen_fwd(mobagen_op *op, const mobagen_fwd_args *a, mobagen_devptr workspace,
                      size_t workspace_bytes, mobagen_stream stream)
{
    return mg_fwd_stages(op, a, workspace, workspace_bytes, stream, MG_STAGE_ALL);
}

mg_status mg_fwd_stages(mobagen_op *op, const mobagen_fwd_args *a, mobagen_devptr workspace,
                        size_t workspace_bytes, mobagen_stream stream, unsigned stages)
{
    mg_status st = check_args(op, a);
    if (st != MG_OK) return st;
    const mg_spec *s = &op->spec;
    workspace_layout w = layout_for(op, a);
    /* The kernels index selections, lists and rows with 32-bit integers. */
    long long slots = (long long)a->total_q * a->hq * s->top_k;
    long long lists = (long long)a->batch * a->hq * max_blocks_of(s, a);
    if (slots >= (1LL << 31) || lists >= (1LL << 31) || a->max_seqlen_q >= (1 << 25))
        return mg_fail(&op->err, MG_E_UNSUPPORTED,
                       "total_q x hq x top_k (%lld) and batch x hq x blocks (%lld) must stay under "
                       "2^31, and max_seqlen_q under 2^25", slots, lists);
    if (workspace_bytes < w.total)
        return mg_fail(&op->err, MG_E_ARG, "workspace of %zu bytes is too small: %zu needed",
                       workspace_bytes, w.total);
    if (w.total && (!workspace || workspace % WORKSPACE_ALIGN))
        return mg_fail(&op->err, MG_E_ARG, "workspace must be a %d-byte aligned device pointer",
                       WORKSPACE_ALIGN);
    if (a->total_q == 0 || a->max_seqlen_q == 0) return MG_OK;

    long long strides[8];
    resolve_strides(a, strides);
    int max_blocks = max_blocks_of(s, a);
    mg_fwd_params p = {
        .q = a->q, .k = a->k, .v = a->v, .conv_w = a->conv_weight,
        .kprime = workspace + w.kprime, .centroid = workspace + w.centroid, .sel = workspace + w.sel,
        .out = a->out, .lse = a->lse, .cu_seqlens_q = a->cu_seqlens_q, .cu_seqlens_k = a->cu_seqlens_k,
        .q_row_stride = strides[0], .q_head_stride = strides[1],
        .k_row_stride = strides[2], .k_head_stride = strides[3],
        .v_row_stride = strides[4], .v_head_stride = strides[5],
        .o_row_stride = strides[6], .o_head_stride = strides[7],
        .batch = a->batch, .hq = a->hq, .hkv = a->hkv,
        .max_seqlen_q = a->max_seqlen_q, .max_seqlen_k = a->max_seqlen_k, .max_blocks = max_blocks,
        .softmax_scale = a->softmax_scale > 0 ? a->softmax_scale : 1.0 / sqrt((double)a->head_dim),
        .block_count = workspace + w.block_count, .block_offset = workspace + w.block_offset,
        .block_cursor = workspace + w.block_cursor, .tile_offset = workspace + w.tile_offset,
        .entries = workspace + w.entries, .partial_o = workspace + w.partial_o,
        .partial_lse = workspace + w.partial_lse,
    };
    const mg_loaded_variant *kconv = &op->variants[op->selected_kconv];
    const mg_loaded_variant *route = &op->variants[op->selected_route];
    const mg_loaded_variant *attn = &op->variants[op->selected_attn];
    unsigned q_tiles_route = (unsigned)((a->max_seqlen_q + route->rows - 1) / route->rows);
    unsigned q_tiles_attn = (unsigned)((a->max_seqlen_q + attn->rows - 1) / attn->rows);
    st = mg_ctx_push(op->ctx, &op->err);
    if (st != MG_OK) return st;
    if (stages & MG_STAGE_CENTROIDS)
        st = launch(op, kconv, (unsigned)max_blocks, (unsigned)a->hkv, (unsigned)a->batch, &p, stream);
    if (st == MG_OK && (stages & MG_STAGE_ROUTE))
        st = launch(op, route, q_tiles_route, (unsigned)a->hq, (unsigned)a->batch, &p, stream);
    if (st == MG_OK && (stages & MG_STAGE_ATTN)) {
        if (mg_variant_kernel(attn, "merge"))
            st = block_attention(op, attn, a, &p, (size_t)a->batch * a->hq * max_blocks, stream);
        else
            st = launch(op, attn, q_tiles_attn, (unsigned)a->hq, (unsigned)a->batch, &p, stream);
    }
    mg_ctx_pop(op->ctx);
    return st;
}
