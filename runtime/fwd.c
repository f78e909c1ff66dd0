/* The forward pass: argument checks, workspace layout, the launches of each stage. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "checked_size.h"
#include "deploy.h"
#include "fwd_params.h"
#include "kernel_contract.h"
#include "runtime_internal.h"

#define WORKSPACE_ALIGN 256

/* Block-centric attention (attn_fwd impl 2): query rows per chunk, and the bytes of the ring of
 * chunk accumulators (one fp32 row of head_dim + 2 per query of a live chunk); the chunks run a
 * ring at a time. Larger chunks fill more of each 64-query tile; smaller ones keep the
 * accumulators in L2. */
#define ATTN_CHUNK_ROWS 16384
#define ATTN_RING_BYTES (64u << 20)

typedef struct attn_shape {
    long long chunk_rows, row_chunks, ring_chunks, n_chunks, n_lists, max_tiles;
} attn_shape;

typedef struct workspace_layout {
    /* byte offsets, and the size */
    size_t kprime, centroid, sel;
    size_t list_count, list_cursor, tile_offset, scan_carry, tile_meta, entries, row_ref, fallback;
    size_t acc_o, acc_l;
    attn_shape attn;
    size_t total;
    const char *overflow;   /* the region whose size does not fit in size_t, or NULL */
} workspace_layout;

static int max_blocks_of(const mg_spec *s, const mobagen_fwd_args *a)
{
    return (int)mg_ceil_div(a->max_seqlen_k, s->block_size);
}

/* Sized for every variant of the op, so that selecting another one never outgrows it. */
static workspace_layout layout_for(const mobagen_op *op, const mobagen_fwd_args *a)
{
    const mg_spec *s = &op->spec;
    workspace_layout w;
    memset(&w, 0, sizeof w);
    const long long elem = 2, blocks = max_blocks_of(s, a);
    const long long slots = (long long)a->total_q * a->hq * s->top_k;
    mg_layout l = {.align = WORKSPACE_ALIGN};
    w.kprime = mg_layout_add(&l, "k' (total_k x hkv x head_dim)", s->conv_width > 0 ? a->total_k : 0,
                             a->hkv, a->head_dim, elem, 1);
    /* fp32 centroids, then their high/low split in the element type (centroid_split.cuh.tpl) */
    w.centroid = mg_layout_add(&l, "centroids and their split (batch x blocks x hkv x head_dim)",
                               a->batch, blocks, a->hkv, a->head_dim, sizeof(float) + 2 * elem);
    w.sel = mg_layout_add(&l, "selection (total_q x hq x top_k)", slots, sizeof(int32_t), 1, 1, 1);
    if (op->has_block_lists) {
        attn_shape *t = &w.attn;
        long long rows = a->max_seqlen_q > 0 ? a->max_seqlen_q : 1;
        long long row_bytes = (long long)a->head_dim * 4 + 4;
        long long chunk = op->attn_chunk_rows > 0 ? op->attn_chunk_rows : ATTN_CHUNK_ROWS;
        long long ring_bytes = op->attn_ring_bytes > 0 ? op->attn_ring_bytes : ATTN_RING_BYTES;
        t->chunk_rows = rows < chunk ? rows : chunk;
        t->row_chunks = mg_ceil_div(rows, t->chunk_rows);
        t->n_chunks = (long long)a->batch * a->hq * t->row_chunks;
        t->n_lists = t->n_chunks * blocks;
        t->ring_chunks = ring_bytes / (t->chunk_rows * row_bytes);
        if (t->ring_chunks < 1) t->ring_chunks = 1;
        if (t->ring_chunks > t->n_chunks) t->ring_chunks = t->n_chunks;
        /* As many groups as the ring needs, of equal size: no short last group of few tiles. */
        if (t->ring_chunks > 0) {
            long long groups = mg_ceil_div(t->n_chunks, t->ring_chunks);
            t->ring_chunks = mg_ceil_div(t->n_chunks, groups);
        }
        /* Each list's tiles start 64-entry aligned: at most 63 unused entries per non-empty list. */
        t->max_tiles = mg_ceil_div(slots, 64) + (t->n_lists < slots ? t->n_lists : slots);
        w.list_count = mg_layout_add(&l, "list counts (chunks x blocks)", t->n_lists, 4, 1, 1, 1);
        w.list_cursor = mg_layout_add(&l, "list cursors (chunks x blocks)", t->n_lists, 4, 1, 1, 1);
        w.tile_offset = mg_layout_add(&l, "tile offsets (chunks x blocks)", t->n_lists + 1, 4, 1, 1, 1);
        w.scan_carry = mg_layout_add(&l, "scan carries", mg_ceil_div(t->n_lists, 4096) + 1, 4, 1, 1, 1);
        w.tile_meta = mg_layout_add(&l, "tile descriptions", t->max_tiles, 32, 1, 1, 1);
        w.entries = mg_layout_add(&l, "list entries (tiles x 64)", t->max_tiles, 64, 4, 1, 1);
        w.row_ref = mg_layout_add(&l, "row references (total_q x hq)", a->total_q, a->hq, 4, 1, 1);
        w.fallback = mg_layout_add(&l, "fallback flag", 1, 4, 1, 1, 1);
        /* The ring last: block_attention clears it from acc_o to the end. */
        w.acc_o = mg_layout_add(&l, "fp32 accumulator rows (ring x chunk rows x head_dim)", t->ring_chunks,
                                t->chunk_rows, a->head_dim, 4, 1);
        w.acc_l = mg_layout_add(&l, "row sums (ring x chunk rows)", t->ring_chunks, t->chunk_rows, 4, 1, 1);
    }
    w.total = l.total;
    w.overflow = l.overflow;
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

/* The kernels address a tensor with 64-bit signed element offsets: the last element's byte
 * offset, (rows-1) x row_stride + (heads-1) x head_stride + head_dim, must fit. */
static int extent_fits(long long rows, long long heads, long long row_stride, long long head_stride,
                       long long head_dim)
{
    size_t row_part, head_part, sum, bytes;
    if (rows == 0) return 1;
    return mg_size_product(&row_part, rows - 1, row_stride, 1, 1, 1) &&
           mg_size_product(&head_part, heads - 1, head_stride, 1, 1, 1) &&
           mg_size_add(row_part, head_part, &sum) && mg_size_add(sum, (size_t)head_dim, &sum) &&
           mg_size_mul(sum, 2, &bytes) && bytes <= (size_t)INT64_MAX;
}

static mg_status check_shapes(const mg_spec *s, const mobagen_fwd_args *a, mg_diag *e)
{
    if (a->head_dim != s->head_dim)
        return mg_fail(e, MG_E_ARG, "head_dim %d does not match spec '%s' (head_dim %d)", a->head_dim,
                       s->name, s->head_dim);
    if (a->dtype != s->dtype)
        return mg_fail(e, MG_E_ARG, "dtype %s does not match spec '%s' (%s)",
                       a->dtype == MG_BF16 || a->dtype == MG_FP16 ? mg_dtype_name(a->dtype) : "invalid",
                       s->name, mg_dtype_name(s->dtype));
    if (a->batch < 0) return mg_fail(e, MG_E_ARG, "batch must be >= 0, got %d", a->batch);
    if (a->hkv < 1 || a->hq < 1)
        return mg_fail(e, MG_E_ARG, "hq and hkv must be >= 1, got hq=%d hkv=%d", a->hq, a->hkv);
    if (a->hq > 65535 || a->batch > 65535)
        return mg_fail(e, MG_E_ARG, "hq and batch must be at most 65535 (grid limits), got hq=%d batch=%d",
                       a->hq, a->batch);
    if (a->hq != (long long)a->hkv * s->gqa_group)
        return mg_fail(e, MG_E_ARG, "hq (%d) must be hkv (%d) x the spec's gqa_group (%d)", a->hq,
                       a->hkv, s->gqa_group);
    if (a->total_q < 0 || a->total_k < 0 || a->max_seqlen_q < 0 || a->max_seqlen_k < 0)
        return mg_fail(e, MG_E_ARG, "total_q, total_k and max_seqlen_q/k must be >= 0, got %d, %d, %d, %d",
                       a->total_q, a->total_k, a->max_seqlen_q, a->max_seqlen_k);
    if (a->max_seqlen_q > a->total_q || a->max_seqlen_k > a->total_k)
        return mg_fail(e, MG_E_ARG, "max_seqlen_q/k (%d/%d) exceed total_q/k (%d/%d)",
                       a->max_seqlen_q, a->max_seqlen_k, a->total_q, a->total_k);
    if ((long long)a->max_seqlen_q * a->batch < a->total_q ||
        (long long)a->max_seqlen_k * a->batch < a->total_k)
        return mg_fail(e, MG_E_ARG,
                       "max_seqlen_q/k (%d/%d) x batch (%d) < total_q/k (%d/%d): some sequence is "
                       "longer than max_seqlen",
                       a->max_seqlen_q, a->max_seqlen_k, a->batch, a->total_q, a->total_k);
    if (a->batch == 0 && (a->total_q || a->total_k))
        return mg_fail(e, MG_E_ARG, "batch is 0 but total_q/k are %d/%d: an empty batch has no tokens",
                       a->total_q, a->total_k);
    /* The kernels index selections, lists and rows with 32-bit integers. */
    long long slots = (long long)a->total_q * a->hq * s->top_k;
    long long lists = (long long)a->batch * a->hq * max_blocks_of(s, a);
    if (slots >= (1LL << 31) || lists >= (1LL << 31) || a->max_seqlen_q >= (1 << 25))
        return mg_fail(e, MG_E_UNSUPPORTED,
                       "total_q x hq x top_k (%lld) and batch x hq x blocks (%lld) must stay under "
                       "2^31, and max_seqlen_q under 2^25", slots, lists);
    if (!isfinite(a->softmax_scale) || a->softmax_scale < 0)
        return mg_fail(e, MG_E_ARG,
                       "softmax_scale must be finite and > 0 (or 0 for 1/sqrt(head_dim)), got %g",
                       (double)a->softmax_scale);
    return MG_OK;
}

static mg_status check_pointers(const mg_spec *s, const mobagen_fwd_args *a, mg_diag *e)
{
    /* PyTorch gives empty tensors a null data pointer: null is fine exactly when empty. */
    const struct { const char *name; mobagen_devptr p; size_t align; int empty; } ptrs[] = {
        {"q", a->q, 16, a->total_q == 0}, {"k", a->k, 16, a->total_k == 0},
        {"v", a->v, 16, a->total_k == 0}, {"out", a->out, 16, a->total_q == 0},
        {"lse", a->lse, 4, a->total_q == 0}, {"cu_seqlens_q", a->cu_seqlens_q, 4, 0},
        {"cu_seqlens_k", a->cu_seqlens_k, 4, 0}};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        if (!ptrs[i].p && !ptrs[i].empty)
            return mg_fail(e, MG_E_ARG, "%s is a null device pointer", ptrs[i].name);
        if (ptrs[i].p % ptrs[i].align)
            return mg_fail(e, MG_E_ARG, "%s (0x%llx) must be %zu-byte aligned", ptrs[i].name,
                           (unsigned long long)ptrs[i].p, ptrs[i].align);
    }
    if (s->conv_width > 0 && !a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has conv_width %d: conv_weight is required", s->name,
                       s->conv_width);
    if (s->conv_width == 0 && a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has no key convolution: conv_weight must be 0", s->name);
    return MG_OK;
}

static mg_status check_strides(const mobagen_fwd_args *a, mg_diag *e)
{
    long long st[8];
    resolve_strides(a, st);
    static const char *const names[8] = {"q_row_stride", "q_head_stride", "k_row_stride",
                                         "k_head_stride", "v_row_stride", "v_head_stride",
                                         "out_row_stride", "out_head_stride"};
    for (int i = 0; i < 8; i++)
        if (st[i] < a->head_dim || st[i] % 8)
            return mg_fail(e, MG_E_ARG, "%s (%lld) must be a multiple of 8 elements and >= head_dim",
                           names[i], st[i]);
    const long long rows[4] = {a->total_q, a->total_k, a->total_k, a->total_q};
    const long long heads[4] = {a->hq, a->hkv, a->hkv, a->hq};
    for (int t = 0; t < 4; t++)
        if (!extent_fits(rows[t], heads[t], st[2 * t], st[2 * t + 1], a->head_dim))
            return mg_fail(e, MG_E_ARG, "%s (%lld) and %s (%lld) over %lld rows address past 2^63 bytes",
                           names[2 * t], st[2 * t], names[2 * t + 1], st[2 * t + 1], rows[t]);
    return MG_OK;
}

static mg_status check_args(mobagen_op *op, const mobagen_fwd_args *a)
{
    if (!op) return MG_E_ARG;
    mg_diag *e = &op->err;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    mg_status st = check_shapes(&op->spec, a, e);
    if (st == MG_OK) st = check_pointers(&op->spec, a, e);
    if (st == MG_OK) st = check_strides(a, e);
    return st;
}

/* check_args, then the layout, refused when some region's size does not fit. */
static mg_status checked_layout(mobagen_op *op, const mobagen_fwd_args *a, workspace_layout *w)
{
    mg_status st = check_args(op, a);
    if (st != MG_OK) return st;
    *w = layout_for(op, a);
    if (w->overflow)
        return mg_fail(&op->err, MG_E_ARG,
                       "the workspace for %s does not fit in size_t (batch=%d hq=%d hkv=%d "
                       "total_q=%d total_k=%d max_seqlen_k=%d)",
                       w->overflow, a->batch, a->hq, a->hkv, a->total_q, a->total_k, a->max_seqlen_k);
    /* The attention kernels index their lists and entries with 32-bit integers. */
    long long lists = w->attn.n_lists, entries = w->attn.max_tiles * 64;
    if (lists >= (1LL << 31) || entries >= (1LL << 31))
        return mg_fail(&op->err, MG_E_UNSUPPORTED,
                       "the attention lists (%lld) and their entries (%lld) must stay under 2^31",
                       lists, entries);
    return MG_OK;
}

mg_status mobagen_fwd_workspace_size(mobagen_op *op, const mobagen_fwd_args *args, size_t *bytes)
{
    workspace_layout w;
    if (op && !bytes) return mg_fail(&op->err, MG_E_ARG, "bytes (the size_t to fill) is NULL");
    mg_status st = checked_layout(op, args, &w);
    if (st != MG_OK) return st;
    *bytes = w.total;
    return MG_OK;
}

void mg_op_set_attn_chunking(mobagen_op *op, long long chunk_rows, long long ring_bytes)
{
    op->attn_chunk_rows = chunk_rows;
    op->attn_ring_bytes = ring_bytes;
}

mobagen_devptr mobagen_fwd_selection(mobagen_op *op, const mobagen_fwd_args *args,
                                     mobagen_devptr workspace)
{
    workspace_layout w;
    if (checked_layout(op, args, &w) != MG_OK) return 0;
    return workspace + w.sel;
}

static mg_status launch_kernel(mobagen_op *op, const mg_loaded_variant *v, const char *role,
                               unsigned gx, unsigned gy, unsigned gz, int threads, int smem,
                               mg_fwd_params *p, mobagen_stream stream)
{
    return mg_launch_role(op, v, role, gx, gy, gz, (unsigned)threads, (unsigned)smem, p, stream);
}

static mg_status launch(mobagen_op *op, const mg_loaded_variant *v, unsigned gx, unsigned gy,
                        unsigned gz, mg_fwd_params *p, mobagen_stream stream)
{
    return launch_kernel(op, v, MG_ROLE_MAIN, gx, gy, gz, v->threads, v->smem, p, stream);
}

/* impl 2: transpose the selection into per-(chunk, block) query lists (and each row's reference);
 * then, a ring of chunks at a time: the sums, the outputs; last, the rows whose sums overflowed
 * (a launch that returns at once when there are none: no host synchronisation). */
static mg_status block_attention(mobagen_op *op, const mg_loaded_variant *v, const mobagen_fwd_args *a,
                                 mg_fwd_params *p, const attn_shape *t, size_t acc_bytes,
                                 mobagen_stream stream)
{
    mg_cuda *cu = &op->ctx->cu;
    /* The list kernels' CTAs: ceil(chunk_rows / list_rows) per chunk of rows, none straddling two. */
    unsigned list_tiles = (unsigned)(t->row_chunks * mg_ceil_div(t->chunk_rows, v->list_rows));
    unsigned segments = (unsigned)((t->n_lists + 4095) / 4096);
    unsigned hq = (unsigned)a->hq, batch = (unsigned)a->batch, grid = (unsigned)(op->ctx->sm_count * v->ctas_per_sm);
    mg_status st = MG_OK;
    if (t->n_lists)
        st = mg_cuda_check(cu, cu->MemsetD32Async(p->list_count, 0, (size_t)t->n_lists, (cu_stream)stream),
                           "cuMemsetD32Async(attention lists)", &op->err);
    if (st == MG_OK)
        st = mg_cuda_check(cu, cu->MemsetD32Async(p->acc_o, 0, acc_bytes / 4, (cu_stream)stream),
                           "cuMemsetD32Async(attention accumulators)", &op->err);
    if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_COUNT, list_tiles, hq, batch, v->list_rows, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_SCAN_REDUCE, segments, 1, 1, 1024, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_SCAN_TOP, 1, 1, 1, 1024, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_SCAN_DOWN, segments, 1, 1, 1024, 0, p, stream);
    if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_SCATTER, list_tiles, hq, batch, v->list_rows, 0, p, stream);
    for (long long c = 0; c < t->n_chunks && t->n_lists && st == MG_OK; c += t->ring_chunks) {
        p->chunk_begin = c;
        p->chunk_end = c + t->ring_chunks < t->n_chunks ? c + t->ring_chunks : t->n_chunks;
        unsigned rows = (unsigned)(((p->chunk_end - c) * t->chunk_rows + 3) / 4);
        st = launch(op, v, grid, 1, 1, p, stream);
        if (st == MG_OK) st = launch_kernel(op, v, MG_ROLE_FINALIZE, rows, 1, 1, 128, 0, p, stream);
    }
    if (st == MG_OK && t->n_lists)
        st = launch_kernel(op, v, MG_ROLE_FALLBACK, (unsigned)op->ctx->sm_count * 4, 1, 1, 128, 0, p, stream);
    return st;
}

mg_status mobagen_fwd(mobagen_op *op, const mobagen_fwd_args *a, mobagen_devptr workspace,
                      size_t workspace_bytes, mobagen_stream stream)
{
    /* The arguments are checked before dispatch reads them to pick a tuning bucket. */
    workspace_layout w;
    mg_status st = checked_layout(op, a, &w);
    if (st == MG_OK) st = mg_deploy_dispatch(op, a);
    if (st != MG_OK) return st;
    return mg_fwd_stages(op, a, workspace, workspace_bytes, stream, MG_STAGE_ALL);
}

mg_status mg_fwd_stages(mobagen_op *op, const mobagen_fwd_args *a, mobagen_devptr workspace,
                        size_t workspace_bytes, mobagen_stream stream, unsigned stages)
{
    workspace_layout w;
    mg_status st = checked_layout(op, a, &w);
    if (st != MG_OK) return st;
    const mg_spec *s = &op->spec;
    if (workspace_bytes < w.total)
        return mg_fail(&op->err, MG_E_ARG, "workspace of %zu bytes is too small: %zu needed",
                       workspace_bytes, w.total);
    if (w.total && (!workspace || workspace % WORKSPACE_ALIGN))
        return mg_fail(&op->err, MG_E_ARG, "workspace must be a %d-byte aligned device pointer",
                       WORKSPACE_ALIGN);
    if (a->total_q == 0 || a->max_seqlen_q == 0) return MG_OK;   /* nothing to launch */
    if (!op->ctx) return mg_fail(&op->err, MG_E_NO_DEVICE, "the op has no device to run on");

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
        .list_count = workspace + w.list_count,
        .list_cursor = workspace + w.list_cursor, .tile_offset = workspace + w.tile_offset,
        .scan_carry = workspace + w.scan_carry, .tile_meta = workspace + w.tile_meta,
        .entries = workspace + w.entries, .acc_o = workspace + w.acc_o, .acc_l = workspace + w.acc_l,
        .row_ref = workspace + w.row_ref, .fallback = workspace + w.fallback,
        .chunk_rows = w.attn.chunk_rows, .row_chunks = w.attn.row_chunks,
        .ring_chunks = w.attn.ring_chunks, .n_chunks = w.attn.n_chunks, .n_lists = w.attn.n_lists,
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
        if (mg_variant_kernel(attn, MG_ROLE_SCATTER))
            st = block_attention(op, attn, a, &p, &w.attn, w.total - w.acc_o, stream);
        else
            st = launch(op, attn, q_tiles_attn, (unsigned)a->hq, (unsigned)a->batch, &p, stream);
    }
    mg_ctx_pop(op->ctx);
    return st;
}

/* For the backward (bwd.c): the forward's checks, and where its regions lie. */
mg_status mg_fwd_regions(mobagen_op *op, const mobagen_fwd_args *a, mg_fwd_region_offsets *out)
{
    workspace_layout w;
    mg_status st = checked_layout(op, a, &w);
    if (st != MG_OK) return st;
    out->kprime = w.kprime;
    out->sel = w.sel;
    out->total = w.total;
    return MG_OK;
}

void mg_fwd_strides(const mobagen_fwd_args *a, long long strides[8]) { resolve_strides(a, strides); }

int mg_extent_fits(long long rows, long long heads, long long row_stride, long long head_stride,
                   long long head_dim)
{
    return extent_fits(rows, heads, row_stride, head_stride, head_dim);
}
