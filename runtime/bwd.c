/* The backward pass: argument checks, workspace layout, the launches of each stage
 * (docs/backward.md, templates/attn_bwd.cu.tpl). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bwd_params.h"
#include "checked_size.h"
#include "kernel_contract.h"
#include "runtime_internal.h"

#define WORKSPACE_ALIGN 256
/* Deterministic mode: bytes of the per-(query, slot) dq partials of one chunk of rows, at least
 * (and the fast mode's fp32 dq rows where those are larger). Fewer rows per chunk mean shorter
 * lists, so emptier 64-query tiles and more launches. */
#define DET_PARTIAL_BYTES (256LL << 20)
/* The template's constants: the longest list the sort takes, key rows per conv-backward CTA,
 * threads of the per-row kernels. */
#define SORT_MAX_ROWS 8192
#define KCONV_ROWS 256
#define ROW_THREADS 128

typedef struct bwd_layout {
    size_t fwd_bytes;           /* the forward's workspace at the front, or 0 */
    mg_fwd_region_offsets fwd;
    size_t delta, lists, dq_acc, dk_acc, dv_acc, dw_part;
    int lists_in_dq;            /* the query lists live in dq's memory, not at `lists` */
    long long chunk_rows, row_chunks, n_lists, slots, kconv_tiles, blocks;
    size_t total;
    const char *overflow;
} bwd_layout;

static long long packed(long long stride, long long dflt) { return stride ? stride : dflt; }

static bwd_layout layout_for(const mobagen_op *op, const mobagen_bwd_args *a,
                             const mg_fwd_region_offsets *fr)
{
    const mg_spec *s = &op->spec;
    const mobagen_fwd_args *f = &a->fwd;
    bwd_layout w;
    memset(&w, 0, sizeof w);
    mg_layout l = {.align = WORKSPACE_ALIGN};
    if (!a->selection || s->conv_width > 0) {
        w.fwd = *fr;
        w.fwd_bytes = fr->total;
        mg_layout_add(&l, "the forward's workspace", (long long)fr->total, 1, 1, 1, 1);
    }
    const long long d = f->head_dim, rows = f->max_seqlen_q > 0 ? f->max_seqlen_q : 1;
    const long long slots = w.slots = (long long)f->total_q * f->hq * s->top_k;
    w.blocks = mg_ceil_div(f->max_seqlen_k, s->block_size);
    w.chunk_rows = rows;
    if (a->deterministic) {
        long long per_row = (long long)(f->batch > 0 ? f->batch : 1) * f->hq * s->top_k * d * 4;
        long long budget = (long long)f->total_q * f->hq * d * 4;
        if (budget < DET_PARTIAL_BYTES) budget = DET_PARTIAL_BYTES;
        long long r = budget / per_row / 64 * 64;
        if (r < 64) r = 64;
        if (r > SORT_MAX_ROWS) r = SORT_MAX_ROWS;
        if (r < w.chunk_rows) w.chunk_rows = r;
    }
    w.row_chunks = mg_ceil_div(rows, w.chunk_rows);
    w.n_lists = w.row_chunks * f->batch * f->hq * w.blocks;
    w.kconv_tiles = mg_ceil_div(f->max_seqlen_k > 0 ? f->max_seqlen_k : 1, KCONV_ROWS);
    const int carry = w.row_chunks > 1;
    w.delta = mg_layout_add(&l, "D' (total_q x hq)", f->total_q, f->hq, 4, 1, 1);
    /* The query lists: a counter, each list's count and cursor, the entries. In fast mode they are
     * dead before dq is written (from the fp32 rows, after the tiles), so where they fit in a
     * packed dq they are built there, and the workspace does without them. Sizes past the
     * kernels' 32-bit indices are refused by checked_layout. */
    const long long lists_words =
        w.n_lists < (1LL << 31) && slots < (1LL << 31) ? 1 + 2 * w.n_lists + slots : 0;
    const int dq_packed = packed(a->dq_row_stride, (long long)f->hq * d) == (long long)f->hq * d &&
                          packed(a->dq_head_stride, d) == d;
    w.lists_in_dq = !a->deterministic && dq_packed && lists_words > 0 &&
                    lists_words * 4 <= (long long)f->total_q * f->hq * d * 2;
    w.lists = mg_layout_add(&l, "query lists (counter, counts, cursors, entries)", w.lists_in_dq ? 0 : lists_words,
                            4, 1, 1, 1);
    if (a->deterministic)
        w.dq_acc = mg_layout_add(&l, "dq partials (batch x chunk rows x hq x top_k x head_dim)", f->batch,
                                 w.chunk_rows, (long long)f->hq * s->top_k, d, 4);
    else
        w.dq_acc = mg_layout_add(&l, "dq accumulators (total_q x hq x head_dim)", f->total_q, f->hq, d, 4, 1);
    w.dk_acc = mg_layout_add(&l, "dk' accumulators (total_k x hkv x head_dim)",
                             s->conv_width > 0 || carry ? f->total_k : 0, f->hkv, d, 4, 1);
    w.dv_acc = mg_layout_add(&l, "dv accumulators (total_k x hkv x head_dim)", carry ? f->total_k : 0,
                             f->hkv, d, 4, 1);
    w.dw_part = mg_layout_add(&l, "conv weight partial sums", s->conv_width > 0 ? f->batch : 0,
                              w.kconv_tiles, f->hkv, (long long)s->conv_width * d, 4);
    w.total = l.total;
    w.overflow = l.overflow;
    return w;
}

static mg_status check_bwd_args(mobagen_op *op, const mobagen_bwd_args *a, mg_fwd_region_offsets *fr)
{
    if (!op) return MG_E_ARG;
    mg_diag *e = &op->err;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    mg_status st = mg_fwd_regions(op, &a->fwd, fr);   /* every check of mobagen_fwd */
    if (st != MG_OK) return st;
    const mg_spec *s = &op->spec;
    const mobagen_fwd_args *f = &a->fwd;
    if (a->deterministic != 0 && a->deterministic != 1)
        return mg_fail(e, MG_E_ARG, "deterministic must be 0 or 1, got %d", a->deterministic);
    const struct { const char *name; mobagen_devptr p; size_t align; int may_be_null; } ptrs[] = {
        {"dout", a->dout, 16, f->total_q == 0}, {"dq", a->dq, 16, f->total_q == 0},
        {"dk", a->dk, 16, f->total_k == 0}, {"dv", a->dv, 16, f->total_k == 0},
        {"dlse", a->dlse, 4, 1}, {"selection", a->selection, 4, 1},
        {"dconv_weight", a->dconv_weight, 4, s->conv_width == 0}};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        if (!ptrs[i].p && !ptrs[i].may_be_null)
            return mg_fail(e, MG_E_ARG, "%s is a null device pointer", ptrs[i].name);
        if (ptrs[i].p % ptrs[i].align)
            return mg_fail(e, MG_E_ARG, "%s (0x%llx) must be %zu-byte aligned", ptrs[i].name,
                           (unsigned long long)ptrs[i].p, ptrs[i].align);
    }
    if (s->conv_width == 0 && a->dconv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has no key convolution: dconv_weight must be 0", s->name);
    const long long q_row = (long long)f->hq * f->head_dim, kv_row = (long long)f->hkv * f->head_dim;
    const struct { const char *row, *head; long long rs, hs, rows, heads; } t[] = {
        {"dout_row_stride", "dout_head_stride", packed(a->dout_row_stride, q_row),
         packed(a->dout_head_stride, f->head_dim), f->total_q, f->hq},
        {"dq_row_stride", "dq_head_stride", packed(a->dq_row_stride, q_row),
         packed(a->dq_head_stride, f->head_dim), f->total_q, f->hq},
        {"dk_row_stride", "dk_head_stride", packed(a->dk_row_stride, kv_row),
         packed(a->dk_head_stride, f->head_dim), f->total_k, f->hkv},
        {"dv_row_stride", "dv_head_stride", packed(a->dv_row_stride, kv_row),
         packed(a->dv_head_stride, f->head_dim), f->total_k, f->hkv}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (t[i].rs < f->head_dim || t[i].rs % 8)
            return mg_fail(e, MG_E_ARG, "%s (%lld) must be a multiple of 8 elements and >= head_dim",
                           t[i].row, t[i].rs);
        if (t[i].hs < f->head_dim || t[i].hs % 8)
            return mg_fail(e, MG_E_ARG, "%s (%lld) must be a multiple of 8 elements and >= head_dim",
                           t[i].head, t[i].hs);
        if (!mg_extent_fits(t[i].rows, t[i].heads, t[i].rs, t[i].hs, f->head_dim))
            return mg_fail(e, MG_E_ARG, "%s (%lld) and %s (%lld) over %lld rows address past 2^63 bytes",
                           t[i].row, t[i].rs, t[i].head, t[i].hs, t[i].rows);
    }
    return MG_OK;
}

/* Bytes from the first to one past the last element of a [rows][heads][d] tensor (0 if empty). */
static unsigned long long tensor_span(long long rows, long long heads, long long rs, long long hs,
                                      long long d, int elem_bytes)
{
    if (rows <= 0 || heads <= 0 || d <= 0) return 0;
    return (unsigned long long)((rows - 1) * rs + (heads - 1) * hs + d) * (unsigned long long)elem_bytes;
}

/* The lists are built in dq before the kernels read the other arguments for the last time, so dq
 * must not share a byte with any of them: a silent wrong answer otherwise. */
static mg_status check_dq_alone(mobagen_op *op, const mobagen_bwd_args *a, mobagen_devptr workspace,
                                size_t workspace_bytes)
{
    const mobagen_fwd_args *f = &a->fwd;
    const mg_spec *s = &op->spec;
    long long fs[8];
    mg_fwd_strides(f, fs);
    const long long d = f->head_dim, w = s->conv_width;
    const unsigned long long dq_end = a->dq + tensor_span(f->total_q, f->hq, (long long)f->hq * d, d, d, 2);
    const struct { const char *name; mobagen_devptr p; unsigned long long bytes; } other[] = {
        {"q", f->q, tensor_span(f->total_q, f->hq, fs[0], fs[1], d, 2)},
        {"k", f->k, tensor_span(f->total_k, f->hkv, fs[2], fs[3], d, 2)},
        {"v", f->v, tensor_span(f->total_k, f->hkv, fs[4], fs[5], d, 2)},
        {"out", f->out, tensor_span(f->total_q, f->hq, fs[6], fs[7], d, 2)},
        {"lse", f->lse, 4ull * (unsigned long long)f->total_q * (unsigned long long)f->hq},
        {"cu_seqlens_q", f->cu_seqlens_q, 4ull * (unsigned long long)(f->batch + 1)},
        {"cu_seqlens_k", f->cu_seqlens_k, 4ull * (unsigned long long)(f->batch + 1)},
        {"conv_weight", f->conv_weight, 2ull * (unsigned long long)(f->hkv * w * d)},
        {"dout", a->dout, tensor_span(f->total_q, f->hq, packed(a->dout_row_stride, (long long)f->hq * d),
                                      packed(a->dout_head_stride, d), d, 2)},
        {"dlse", a->dlse, 4ull * (unsigned long long)f->total_q * (unsigned long long)f->hq},
        {"selection", a->selection,
         4ull * (unsigned long long)f->total_q * (unsigned long long)f->hq * (unsigned long long)s->top_k},
        {"dk", a->dk, tensor_span(f->total_k, f->hkv, packed(a->dk_row_stride, (long long)f->hkv * d),
                                  packed(a->dk_head_stride, d), d, 2)},
        {"dv", a->dv, tensor_span(f->total_k, f->hkv, packed(a->dv_row_stride, (long long)f->hkv * d),
                                  packed(a->dv_head_stride, d), d, 2)},
        {"dconv_weight", a->dconv_weight, 4ull * (unsigned long long)(f->hkv * w * d)},
        {"workspace", workspace, workspace_bytes}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        if (!other[i].p || !other[i].bytes) continue;
        if (other[i].p < dq_end && a->dq < other[i].p + other[i].bytes)
            return mg_fail(&op->err, MG_E_ARG, "dq (0x%llx) overlaps %s (0x%llx): the backward builds its "
                           "query lists in dq, which must not share memory with another argument",
                           (unsigned long long)a->dq, other[i].name, (unsigned long long)other[i].p);
    }
    return MG_OK;
}

static mg_status checked_layout(mobagen_op *op, const mobagen_bwd_args *a, bwd_layout *w)
{
    mg_fwd_region_offsets fr;
    mg_status st = check_bwd_args(op, a, &fr);
    if (st != MG_OK) return st;
    *w = layout_for(op, a, &fr);
    const mobagen_fwd_args *f = &a->fwd;
    if (w->overflow)
        return mg_fail(&op->err, MG_E_ARG,
                       "the backward's workspace for %s does not fit in size_t (batch=%d hq=%d "
                       "total_q=%d total_k=%d max_seqlen_k=%d)",
                       w->overflow, f->batch, f->hq, f->total_q, f->total_k, f->max_seqlen_k);
    /* The kernels index lists, entries and grids with 32-bit integers. */
    if (w->n_lists >= (1LL << 31) || w->slots >= (1LL << 31) ||
        w->blocks * op->spec.block_size / 16 >= (1LL << 31))
        return mg_fail(&op->err, MG_E_UNSUPPORTED,
                       "the backward's lists (%lld) and their entries (%lld) must stay under 2^31",
                       w->n_lists, w->slots);
    /* An entry is row << 6 | slot in 32 bits. */
    if (f->max_seqlen_q >= (1 << 26))
        return mg_fail(&op->err, MG_E_UNSUPPORTED, "the backward takes sequences of at most 2^26 - 1 rows, got "
                       "max_seqlen_q = %d", f->max_seqlen_q);
    return MG_OK;
}

mg_status mobagen_bwd_workspace_size(mobagen_op *op, const mobagen_bwd_args *args, size_t *bytes)
{
    bwd_layout w;
    if (op && !bytes) return mg_fail(&op->err, MG_E_ARG, "bytes (the size_t to fill) is NULL");
    mg_status st = checked_layout(op, args, &w);
    if (st != MG_OK) return st;
    *bytes = w.total;
    return MG_OK;
}

static mg_status launch(mobagen_op *op, const mg_loaded_variant *v, const char *role, long long gx,
                        unsigned gy, unsigned gz, int threads, int smem, mg_bwd_params *p,
                        mobagen_stream stream)
{
    if (gx <= 0) return MG_OK;
    return mg_launch_role(op, v, role, (unsigned)gx, gy, gz, (unsigned)threads, (unsigned)smem, p, stream);
}

static mg_status memset32(mobagen_op *op, mobagen_devptr at, long long words, const char *what,
                          mobagen_stream stream)
{
    if (words <= 0) return MG_OK;
    mg_cuda *cu = &op->ctx->cu;
    return mg_cuda_check(cu, cu->MemsetD32Async(at, 0, (size_t)words, (cu_stream)stream), what, &op->err);
}

/* The lists, the tiles chunk by chunk with dq, then the key convolution. */
static mg_status run_kernels(mobagen_op *op, const mg_loaded_variant *v, const mobagen_bwd_args *a,
                             const bwd_layout *w, mg_bwd_params *p, mobagen_stream stream)
{
    const mobagen_fwd_args *f = &a->fwd;
    const mg_spec *s = &op->spec;
    const int det = a->deterministic, tile_n = v->rows /* keys per CTA */, dparts = (f->head_dim + 127) / 128;
    const unsigned hq = (unsigned)f->hq, batch = (unsigned)f->batch;
    /* The list kernels' CTAs: list_rows consecutive rows of one (sequence, head). */
    const long long list_tiles = mg_ceil_div(f->max_seqlen_q, v->list_rows);
    /* The entry counter and the list counts are adjacent. */
    mg_status st = memset32(op, p->entry_counter, 1 + w->n_lists, "cuMemsetD32Async(list counts)", stream);
    if (st == MG_OK && !det)
        st = memset32(op, p->dq_acc, (long long)f->total_q * f->hq * f->head_dim,
                      "cuMemsetD32Async(dq accumulators)", stream);
    if (st == MG_OK) st = launch(op, v, MG_ROLE_BWD_COUNT, list_tiles, hq, batch, v->list_rows, 0, p, stream);
    if (st == MG_OK) st = launch(op, v, MG_ROLE_BWD_ALLOC, mg_ceil_div(w->n_lists, 256), 1, 1, 256, 0, p, stream);
    if (st == MG_OK) st = launch(op, v, MG_ROLE_BWD_SCATTER, list_tiles, hq, batch, v->list_rows, 0, p, stream);
    if (st == MG_OK && det) st = launch(op, v, MG_ROLE_BWD_SORT, w->n_lists, 1, 1, 512, 0, p, stream);
    const long long tiles_x = det ? w->blocks : w->blocks * (s->block_size / tile_n);
    const long long dq_x = mg_ceil_div(w->chunk_rows, ROW_THREADS / 32);
    for (long long c = 0; c < w->row_chunks && st == MG_OK; c++) {
        p->chunk = c;
        st = launch(op, v, MG_ROLE_MAIN, tiles_x, (unsigned)(f->hkv * dparts), batch, v->threads, v->smem, p,
                    stream);
        if (st == MG_OK && (det || c == w->row_chunks - 1))
            st = launch(op, v, MG_ROLE_BWD_DQ, dq_x, hq, batch, ROW_THREADS, 0, p, stream);
    }
    if (st == MG_OK && s->conv_width > 0) {
        st = launch(op, v, MG_ROLE_BWD_KCONV, w->kconv_tiles, (unsigned)f->hkv, batch, f->head_dim, 0, p, stream);
        if (st == MG_OK)
            st = launch(op, v, MG_ROLE_BWD_DW, f->hkv, (unsigned)s->conv_width, 1, f->head_dim, 0, p, stream);
    }
    return st;
}

mg_status mobagen_bwd(mobagen_op *op, const mobagen_bwd_args *a, mobagen_devptr workspace,
                      size_t workspace_bytes, mobagen_stream stream)
{
    bwd_layout w;
    mg_status st = checked_layout(op, a, &w);
    if (st != MG_OK) return st;
    const mg_spec *s = &op->spec;
    const mobagen_fwd_args *f = &a->fwd;
    if (workspace_bytes < w.total)
        return mg_fail(&op->err, MG_E_ARG, "workspace of %zu bytes is too small: %zu needed",
                       workspace_bytes, w.total);
    if (w.total && (!workspace || workspace % WORKSPACE_ALIGN))
        return mg_fail(&op->err, MG_E_ARG, "workspace must be a %d-byte aligned device pointer",
                       WORKSPACE_ALIGN);
    if (w.lists_in_dq && (st = check_dq_alone(op, a, workspace, workspace_bytes)) != MG_OK) return st;
    const int conv = s->conv_width > 0;
    if (f->batch == 0 && !conv) return MG_OK;   /* nothing to write */
    if (!op->ctx) return mg_fail(&op->err, MG_E_NO_DEVICE, "the op has no device to run on");
    if (op->selected_bwd < 0)
        return mg_fail(&op->err, MG_E_UNSUPPORTED,
                       "op '%s' has no backward kernels (attn_bwd): its templates or bundle predate them",
                       s->name);
    const mg_loaded_variant *v = &op->variants[op->selected_bwd];
    /* k' (conv) and the selection (when not given) come from the forward's own stages, with the
     * variants the op has selected (no dispatch: routing is exact in every variant, and tuning
     * on first use would allocate). */
    unsigned stages = (conv ? MG_STAGE_CENTROIDS : 0) | (a->selection ? 0 : MG_STAGE_CENTROIDS | MG_STAGE_ROUTE);
    if (stages) st = mg_fwd_stages(op, f, workspace, w.fwd_bytes, stream, stages);
    if (st != MG_OK) return st;

    long long fs[8];
    mg_fwd_strides(f, fs);
    const mobagen_devptr lists = w.lists_in_dq ? a->dq : workspace + w.lists;
    const long long d = f->head_dim, q_row = f->hq * d, kv_row = f->hkv * d;
    mg_bwd_params p = {
        .q = f->q, .k = f->k, .v = f->v,
        .kprime = conv ? workspace + w.fwd.kprime : f->k,
        .out = f->out, .lse = f->lse, .dout = a->dout, .dlse = a->dlse,
        .sel = a->selection ? a->selection : workspace + w.fwd.sel,
        .cu_seqlens_q = f->cu_seqlens_q, .cu_seqlens_k = f->cu_seqlens_k, .conv_w = f->conv_weight,
        .dq = a->dq, .dk = a->dk, .dv = a->dv, .dconv_w = a->dconv_weight,
        .delta = workspace + w.delta, .entry_counter = lists, .list_count = lists + 4,
        .list_cursor = lists + 4 + 4 * (mobagen_devptr)w.n_lists,
        .entries = lists + 4 + 8 * (mobagen_devptr)w.n_lists,
        .dq_acc = workspace + w.dq_acc, .dk_acc = workspace + w.dk_acc, .dv_acc = workspace + w.dv_acc,
        .dw_part = workspace + w.dw_part,
        .q_row_stride = fs[0], .q_head_stride = fs[1], .k_row_stride = fs[2], .k_head_stride = fs[3],
        .kp_row_stride = conv ? kv_row : fs[2], .kp_head_stride = conv ? d : fs[3],
        .v_row_stride = fs[4], .v_head_stride = fs[5], .o_row_stride = fs[6], .o_head_stride = fs[7],
        .do_row_stride = packed(a->dout_row_stride, q_row), .do_head_stride = packed(a->dout_head_stride, d),
        .dq_row_stride = packed(a->dq_row_stride, q_row), .dq_head_stride = packed(a->dq_head_stride, d),
        .dk_row_stride = packed(a->dk_row_stride, kv_row), .dk_head_stride = packed(a->dk_head_stride, d),
        .dv_row_stride = packed(a->dv_row_stride, kv_row), .dv_head_stride = packed(a->dv_head_stride, d),
        .batch = f->batch, .hq = f->hq, .hkv = f->hkv, .total_q = f->total_q, .total_k = f->total_k,
        .max_seqlen_q = f->max_seqlen_q, .max_seqlen_k = f->max_seqlen_k, .max_blocks = w.blocks,
        .chunk_rows = w.chunk_rows, .row_chunks = w.row_chunks, .n_lists = w.n_lists,
        .kconv_tiles = w.kconv_tiles, .deterministic = a->deterministic,
        .softmax_scale = f->softmax_scale > 0 ? f->softmax_scale : 1.0 / sqrt((double)d),
    };
    st = mg_ctx_push(op->ctx, &op->err);
    if (st != MG_OK) return st;
    if (f->batch == 0) /* nothing but the conv weights' gradient, which is 0 */
        st = conv ? memset32(op, a->dconv_weight, (long long)f->hkv * s->conv_width * d,
                             "cuMemsetD32Async(dconv_weight)", stream) : MG_OK;
    else
        st = run_kernels(op, v, a, &w, &p, stream);
    mg_ctx_pop(op->ctx);
    return st;
}
