/* Serving over a paged KV cache (docs/decode.md): argument checks, the decode workspace, the
 * launches of append (append_step for a step's few tokens; append + append_commit for longer
 * ones), truncate and decode (decode_route, decode_select, main = split-KV attention,
 * decode_merge). The decode variants load on first use. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "checked_size.h"
#include "decode_params.h"
#include "kernel_contract.h"
#include "runtime_internal.h"

#define WORKSPACE_ALIGN 256
#define DECODE_ROWS 16           /* query rows of a kv head: one mma tile (decode.cu.tpl) */
#define DEFAULT_ROUTE_CHUNK 256  /* before the decode variants are loaded (detached ops) */
#define MAX_ROUTE_CHUNKS 2048    /* DEC_MAX_CHUNKS: chunk list heads the select kernel keeps */
#define MIN_ROUTE_CHUNK 32       /* a warp's lanes: the route's smallest chunk */
#define MAX_SMALL_ROUTE_CHUNKS 32 /* chunk lists per row when the chunk is made smaller */
#define DEFAULT_SM_COUNT 132
#define STEP_APPEND_MAX 16       /* appends of at most this many tokens per sequence: one launch */

typedef struct decode_layout decode_layout;
static mg_status check_decode(mobagen_op *op, const mobagen_kv_cache *c, const mobagen_decode_args *a,
                              decode_layout *w);

struct decode_layout {
    size_t cand, uni_blocks, uni_masks, uni_count, part_o, part_ml, total;
    long long rows, route_chunk, route_chunks, splits, max_blocks;
    const char *overflow;
};

static long long cache_max_blocks(const mg_spec *s, const mobagen_kv_cache *c)
{
    return mg_ceil_div((long long)c->max_pages * c->page_size, s->block_size);
}

static mg_status check_ptr(mg_diag *e, const char *name, mobagen_devptr p, size_t align, int empty)
{
    if (!p && !empty) return mg_fail(e, MG_E_ARG, "%s is a null device pointer", name);
    if (p % align)
        return mg_fail(e, MG_E_ARG, "%s (0x%llx) must be %zu-byte aligned", name, (unsigned long long)p, align);
    return MG_OK;
}

static mg_status check_cache(const mg_spec *s, const mobagen_kv_cache *c, int batch, mg_diag *e)
{
    if (!c) return mg_fail(e, MG_E_ARG, "cache is NULL");
    if (c->head_dim != s->head_dim)
        return mg_fail(e, MG_E_ARG, "cache->head_dim %d does not match spec '%s' (head_dim %d)", c->head_dim,
                       s->name, s->head_dim);
    if (c->dtype != s->dtype)
        return mg_fail(e, MG_E_ARG, "cache->dtype does not match spec '%s' (%s)", s->name, mg_dtype_name(s->dtype));
    if (c->n_pages < 0 || c->page_size < 1 || c->max_pages < 0 || c->hkv < 1)
        return mg_fail(e, MG_E_ARG, "cache: n_pages (%d) and max_pages (%d) must be >= 0, page_size (%d) "
                       "and hkv (%d) >= 1", c->n_pages, c->max_pages, c->page_size, c->hkv);
    /* Kernels index tokens and blocks with int and elements with 64-bit offsets. */
    size_t pool, cent;
    long long blocks = cache_max_blocks(s, c);
    if ((long long)c->max_pages * c->page_size >= (1LL << 31) ||
        !mg_size_product(&pool, c->n_pages, c->page_size, c->hkv, c->head_dim, 2) || pool > (size_t)INT64_MAX ||
        !mg_size_product(&cent, batch, blocks, c->hkv, c->head_dim, 4) || cent > (size_t)INT64_MAX)
        return mg_fail(e, MG_E_ARG, "cache: max_pages x page_size must stay under 2^31 tokens and the pools "
                       "under 2^63 bytes (n_pages %d, page_size %d, max_pages %d, hkv %d)",
                       c->n_pages, c->page_size, c->max_pages, c->hkv);
    mg_status st = check_ptr(e, "cache->k_pages", c->k_pages, 16, c->n_pages == 0);
    if (st == MG_OK) st = check_ptr(e, "cache->v_pages", c->v_pages, 16, c->n_pages == 0);
    if (st == MG_OK) st = check_ptr(e, "cache->centroid_sum", c->centroid_sum, 16, batch == 0 || blocks == 0);
    if (st == MG_OK) st = check_ptr(e, "cache->page_table", c->page_table, 4, batch == 0 || c->max_pages == 0);
    if (st == MG_OK) st = check_ptr(e, "cache->seq_lens", c->seq_lens, 4, batch == 0);
    if (st == MG_OK) st = check_ptr(e, "cache->error", c->error, 4, 1);
    if (st != MG_OK) return st;
    if (s->conv_width > 0) return check_ptr(e, "cache->kraw_pages (spec has a key convolution)", c->kraw_pages, 16,
                                            c->n_pages == 0);
    if (c->kraw_pages)
        return mg_fail(e, MG_E_ARG, "spec '%s' has no key convolution: cache->kraw_pages must be 0", s->name);
    return MG_OK;
}

/* What the decode template supports (its supported() gives other specs stub kernels). */
static mg_status check_supported(const mg_spec *s, mg_diag *e)
{
    if (!s->causal) return mg_fail(e, MG_E_UNSUPPORTED, "spec '%s' is not causal: decode is causal only", s->name);
    if (s->head_dim != 64 && s->head_dim != 128)
        return mg_fail(e, MG_E_UNSUPPORTED, "spec '%s' has head_dim %d: decode supports 64 and 128", s->name,
                       s->head_dim);
    if (s->gqa_group > DECODE_ROWS)
        return mg_fail(e, MG_E_UNSUPPORTED, "spec '%s' has gqa_group %d: decode takes at most %d", s->name,
                       s->gqa_group, DECODE_ROWS);
    return MG_OK;
}

static mg_status check_row_stride(mg_diag *e, const char *name, long long stride, long long min_row)
{
    if (stride < min_row || stride % 8)
        return mg_fail(e, MG_E_ARG, "%s (%lld) must be a multiple of 8 elements and >= %lld (heads packed)",
                       name, stride, min_row);
    return MG_OK;
}

static mg_status check_append(mobagen_op *op, const mobagen_kv_cache *c, const mobagen_append_args *a)
{
    if (!op) return MG_E_ARG;
    mg_diag *e = &op->err;
    const mg_spec *s = &op->spec;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    mg_status st = check_supported(s, e);
    if (st != MG_OK) return st;
    if (a->batch < 0 || a->max_new < 0 || a->total_new < 0)
        return mg_fail(e, MG_E_ARG, "batch (%d), max_new (%d) and total_new (%d) must be >= 0", a->batch,
                       a->max_new, a->total_new);
    if (a->batch > 65535) return mg_fail(e, MG_E_ARG, "batch must be at most 65535 (grid limit), got %d", a->batch);
    if ((long long)a->batch * a->max_new < a->total_new)
        return mg_fail(e, MG_E_ARG, "total_new (%d) exceeds batch (%d) x max_new (%d)", a->total_new, a->batch,
                       a->max_new);
    st = check_cache(s, c, a->batch, e);
    if (st != MG_OK) return st;
    if (c->hkv > 65535) return mg_fail(e, MG_E_ARG, "cache->hkv must be at most 65535, got %d", c->hkv);
    if ((long long)a->max_new > (long long)c->max_pages * c->page_size)
        return mg_fail(e, MG_E_ARG, "max_new (%d) exceeds what a page table row holds (%d x %d tokens)", a->max_new,
                       c->max_pages, c->page_size);
    const long long row = (long long)c->hkv * c->head_dim;
    st = check_row_stride(e, "k_row_stride", a->k_row_stride ? a->k_row_stride : row, row);
    if (st == MG_OK) st = check_row_stride(e, "v_row_stride", a->v_row_stride ? a->v_row_stride : row, row);
    if (st == MG_OK) st = check_ptr(e, "k", a->k, 16, a->total_new == 0);
    if (st == MG_OK) st = check_ptr(e, "v", a->v, 16, a->total_new == 0);
    if (st == MG_OK) st = check_ptr(e, "cu_seqlens_new", a->cu_seqlens_new, 4, 0);
    if (st != MG_OK) return st;
    if (s->conv_width > 0 && !a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has conv_width %d: conv_weight is required", s->name, s->conv_width);
    if (s->conv_width == 0 && a->conv_weight)
        return mg_fail(e, MG_E_ARG, "spec '%s' has no key convolution: conv_weight must be 0", s->name);
    return MG_OK;
}

long long mg_decode_splits(const mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_decode_args *a)
{
    decode_layout w;
    if (check_decode((mobagen_op *)op, cache, a, &w) != MG_OK) return -1;
    return w.splits;
}

static int route_chunk_of(const mobagen_op *op)
{
    return op->decode_loaded ? op->variants[op->selected_decode].rows : DEFAULT_ROUTE_CHUNK;
}

static long long sm_count_of(const mobagen_op *op)
{
    return op->ctx && op->ctx->sm_count > 0 ? op->ctx->sm_count : DEFAULT_SM_COUNT;
}

/* (sequence, kv head) pairs of a call, at least one kv head's worth for an empty batch. */
static long long kv_heads_of(const mobagen_kv_cache *c, const mobagen_decode_args *a)
{
    return (long long)(a->batch > 0 ? a->batch : 1) * c->hkv;
}

/* Splits per kv head: as many CTAs as fit at once (two per multiprocessor) and no more, so
 * that no second, mostly idle wave follows; never more than the blocks a kv head can select. */
static long long splits_for(const mobagen_op *op, const mobagen_kv_cache *c, const mobagen_decode_args *a,
                            long long n_blocks)
{
    long long sms = sm_count_of(op), heads = kv_heads_of(c, a);
    long long want = 2 * sms / heads, most = (long long)DECODE_ROWS * op->spec.top_k;
    if (most > n_blocks) most = n_blocks;
    if (want > most) want = most;
    return want < 1 ? 1 : want;
}

/* Centroid blocks per routing CTA: the variant's route_chunk, halved (down to 32) while the
 * route would run fewer than two CTAs per multiprocessor (short contexts, small batches: a CTA
 * then streams its chunk alone, one load group per warp after another) and select would still
 * merge at most 32 chunk lists per row (one per lane). */
static long long route_chunk_for(const mobagen_op *op, const mobagen_kv_cache *c, const mobagen_decode_args *a,
                                 long long n_blocks)
{
    long long sms = sm_count_of(op), heads = kv_heads_of(c, a);
    long long chunk = route_chunk_of(op);
    while (chunk > MIN_ROUTE_CHUNK && mg_ceil_div(n_blocks, chunk) * heads < 2 * sms &&
           mg_ceil_div(n_blocks, chunk / 2) <= MAX_SMALL_ROUTE_CHUNKS)
        chunk /= 2;
    return chunk;
}

static decode_layout layout_for(const mobagen_op *op, const mobagen_kv_cache *c, const mobagen_decode_args *a)
{
    const mg_spec *s = &op->spec;
    decode_layout w;
    memset(&w, 0, sizeof w);
    long long n_blocks = mg_ceil_div(a->max_seqlen, s->block_size);
    w.max_blocks = cache_max_blocks(s, c);
    w.rows = (long long)s->gqa_group * a->max_q_len;
    w.route_chunk = route_chunk_for(op, c, a, n_blocks);
    w.route_chunks = n_blocks > 0 ? mg_ceil_div(n_blocks, w.route_chunk) : 1;
    w.splits = splits_for(op, c, a, n_blocks);
    long long heads = (long long)a->batch * c->hkv;
    mg_layout l = {.align = WORKSPACE_ALIGN};
    w.cand = mg_layout_add(&l, "routing candidates (batch x hkv x rows x chunks x (top_k - 1))", heads, w.rows,
                           w.route_chunks, s->top_k - 1, 8);
    w.uni_blocks = mg_layout_add(&l, "union blocks (batch x hkv x 16 x top_k)", heads, DECODE_ROWS, s->top_k, 4, 1);
    w.uni_masks = mg_layout_add(&l, "union row masks (batch x hkv x 16 x top_k)", heads, DECODE_ROWS, s->top_k, 4, 1);
    w.uni_count = mg_layout_add(&l, "union sizes (batch x hkv)", heads, 4, 1, 1, 1);
    w.part_o = mg_layout_add(&l, "split partials (batch x hkv x splits x 16 x head_dim)", heads, w.splits,
                             DECODE_ROWS, s->head_dim, 4);
    w.part_ml = mg_layout_add(&l, "split maxima and sums", heads, w.splits, DECODE_ROWS, 8, 1);
    w.total = l.total;
    w.overflow = l.overflow;
    return w;
}

static mg_status check_decode(mobagen_op *op, const mobagen_kv_cache *c, const mobagen_decode_args *a,
                              decode_layout *w)
{
    if (!op) return MG_E_ARG;
    mg_diag *e = &op->err;
    const mg_spec *s = &op->spec;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    mg_status st = check_supported(s, e);
    if (st != MG_OK) return st;
    if (a->batch < 0 || a->max_q_len < 0 || a->total_q < 0 || a->max_seqlen < 0)
        return mg_fail(e, MG_E_ARG, "batch (%d), max_q_len (%d), total_q (%d) and max_seqlen (%d) must be >= 0",
                       a->batch, a->max_q_len, a->total_q, a->max_seqlen);
    if (a->batch > 65535) return mg_fail(e, MG_E_ARG, "batch must be at most 65535 (grid limit), got %d", a->batch);
    st = check_cache(s, c, a->batch, e);
    if (st != MG_OK) return st;
    if (c->hkv > 65535) return mg_fail(e, MG_E_ARG, "cache->hkv must be at most 65535, got %d", c->hkv);
    if (a->hq != (long long)c->hkv * s->gqa_group)
        return mg_fail(e, MG_E_ARG, "hq (%d) must be cache->hkv (%d) x the spec's gqa_group (%d)", a->hq, c->hkv,
                       s->gqa_group);
    if ((long long)s->gqa_group * a->max_q_len > DECODE_ROWS)
        return mg_fail(e, MG_E_UNSUPPORTED, "gqa_group (%d) x max_q_len (%d) must be at most %d (one tile of rows "
                       "per kv head)", s->gqa_group, a->max_q_len, DECODE_ROWS);
    if ((long long)a->batch * a->max_q_len < a->total_q)
        return mg_fail(e, MG_E_ARG, "total_q (%d) exceeds batch (%d) x max_q_len (%d)", a->total_q, a->batch,
                       a->max_q_len);
    if (a->max_seqlen > (long long)c->max_pages * c->page_size)
        return mg_fail(e, MG_E_ARG, "max_seqlen (%d) exceeds what a page table row holds (%d x %d tokens)",
                       a->max_seqlen, c->max_pages, c->page_size);
    if (a->total_q > 0 && a->max_seqlen < 1)
        return mg_fail(e, MG_E_ARG, "max_seqlen must be >= 1 when there are queries (total_q %d)", a->total_q);
    if (!isfinite(a->softmax_scale) || a->softmax_scale < 0)
        return mg_fail(e, MG_E_ARG, "softmax_scale must be finite and > 0 (or 0 for 1/sqrt(head_dim)), got %g",
                       (double)a->softmax_scale);
    const long long row = (long long)a->hq * c->head_dim;
    st = check_row_stride(e, "q_row_stride", a->q_row_stride ? a->q_row_stride : row, row);
    if (st == MG_OK) st = check_row_stride(e, "out_row_stride", a->out_row_stride ? a->out_row_stride : row, row);
    if (st == MG_OK) st = check_ptr(e, "q", a->q, 16, a->total_q == 0);
    if (st == MG_OK) st = check_ptr(e, "out", a->out, 16, a->total_q == 0);
    if (st == MG_OK) st = check_ptr(e, "lse", a->lse, 4, a->total_q == 0);
    if (st == MG_OK) st = check_ptr(e, "sel", a->sel, 4, 1);
    if (st == MG_OK) st = check_ptr(e, "cu_seqlens_q", a->cu_seqlens_q, 4, 0);
    if (st != MG_OK) return st;
    *w = layout_for(op, c, a);
    if (w->overflow)
        return mg_fail(e, MG_E_ARG, "the decode workspace for %s does not fit in size_t (batch=%d hkv=%d "
                       "max_seqlen=%d)", w->overflow, a->batch, c->hkv, a->max_seqlen);
    if (w->route_chunks > MAX_ROUTE_CHUNKS)
        return mg_fail(e, MG_E_UNSUPPORTED, "max_seqlen %d needs %lld routing chunks; at most %d", a->max_seqlen,
                       w->route_chunks, MAX_ROUTE_CHUNKS);
    return MG_OK;
}

/* A thread per element of a token's row (hkv x head_dim), up to 1024 (the per-sequence kernels'
 * launch bound): truncate and the step append. */
static unsigned row_threads(const mobagen_kv_cache *c)
{
    long long width = (long long)c->hkv * c->head_dim;
    return (unsigned)(width < 1024 ? mg_ceil_div(width, 32) * 32 : 1024);
}

static mg_status launch_role(mobagen_op *op, const mg_loaded_variant *v, const char *role, unsigned gx, unsigned gy,
                             unsigned gz, unsigned threads, unsigned smem, mg_decode_params *p, mobagen_stream stream)
{
    return mg_launch_role(op, v, role, gx, gy, gz, threads, smem, p, stream);
}

static void cache_params(const mobagen_kv_cache *c, long long max_blocks, mg_decode_params *p)
{
    p->kprime_pages = c->k_pages;
    p->v_pages = c->v_pages;
    p->kraw_pages = c->kraw_pages;
    p->page_table = c->page_table;
    p->seq_lens = c->seq_lens;
    p->centroid_sum = c->centroid_sum;
    p->error = c->error;
    p->hkv = c->hkv;
    p->n_pages = c->n_pages;
    p->page_size = c->page_size;
    p->max_pages = c->max_pages;
    p->max_blocks = max_blocks;
}

mg_status mobagen_append(mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_append_args *a,
                         mobagen_stream stream)
{
    mg_status st = check_append(op, cache, a);
    if (st != MG_OK) return st;
    if (a->batch == 0 || a->max_new == 0) return MG_OK;
    if ((st = mg_op_load_decode(op)) != MG_OK) return st;
    const mg_spec *s = &op->spec;
    const long long row = (long long)cache->hkv * cache->head_dim;
    mg_decode_params p = {
        .k_new = a->k, .v_new = a->v, .cu_seqlens_new = a->cu_seqlens_new, .conv_w = a->conv_weight,
        .knew_row_stride = a->k_row_stride ? a->k_row_stride : row,
        .vnew_row_stride = a->v_row_stride ? a->v_row_stride : row,
        .batch = a->batch, .max_new = a->max_new,
    };
    cache_params(cache, cache_max_blocks(s, cache), &p);
    const mg_loaded_variant *v = &op->variants[op->selected_decode];
    /* max_new tokens starting anywhere touch at most this many blocks */
    unsigned blocks = (unsigned)(mg_ceil_div(a->max_new, s->block_size) + 1);
    if ((st = mg_ctx_push(op->ctx, &op->err)) != MG_OK) return st;
    if (a->max_new <= STEP_APPEND_MAX) {
        /* a decode step's tokens: one launch, one CTA per sequence that also moves its length */
        st = launch_role(op, v, MG_ROLE_APPEND_STEP, (unsigned)a->batch, 1, 1, row_threads(cache), 0, &p, stream);
    } else {
        st = launch_role(op, v, MG_ROLE_APPEND, blocks, (unsigned)cache->hkv, (unsigned)a->batch,
                         (unsigned)s->head_dim, 0, &p, stream);
        if (st == MG_OK)
            st = launch_role(op, v, MG_ROLE_APPEND_COMMIT, (unsigned)mg_ceil_div(a->batch, 128), 1, 1, 128, 0, &p,
                             stream);
    }
    mg_ctx_pop(op->ctx);
    return st;
}

static mg_status check_truncate(mobagen_op *op, const mobagen_kv_cache *c, const mobagen_truncate_args *a)
{
    if (!op) return MG_E_ARG;
    mg_diag *e = &op->err;
    if (!a) return mg_fail(e, MG_E_ARG, "args is NULL");
    mg_status st = check_supported(&op->spec, e);
    if (st != MG_OK) return st;
    if (a->batch < 0) return mg_fail(e, MG_E_ARG, "batch must be >= 0, got %d", a->batch);
    if ((st = check_cache(&op->spec, c, a->batch, e)) != MG_OK) return st;
    if (a->batch == 0) return MG_OK;
    if (!a->drop == !a->new_lens)
        return mg_fail(e, MG_E_ARG, "exactly one of drop and new_lens must be set (drop 0x%llx, new_lens 0x%llx)",
                       (unsigned long long)a->drop, (unsigned long long)a->new_lens);
    return a->drop ? check_ptr(e, "drop", a->drop, 4, 0) : check_ptr(e, "new_lens", a->new_lens, 4, 0);
}

mg_status mobagen_kv_truncate(mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_truncate_args *a,
                              mobagen_stream stream)
{
    mg_status st = check_truncate(op, cache, a);
    if (st != MG_OK || a->batch == 0) return st;
    if ((st = mg_op_load_decode(op)) != MG_OK) return st;
    mg_decode_params p = {.batch = a->batch, .trunc_drop = a->drop, .trunc_new_lens = a->new_lens};
    cache_params(cache, cache_max_blocks(&op->spec, cache), &p);
    if ((st = mg_ctx_push(op->ctx, &op->err)) != MG_OK) return st;
    st = launch_role(op, &op->variants[op->selected_decode], MG_ROLE_TRUNCATE, (unsigned)a->batch, 1, 1,
                     row_threads(cache), 0, &p, stream);
    mg_ctx_pop(op->ctx);
    return st;
}

mg_status mobagen_decode_workspace_size(mobagen_op *op, const mobagen_kv_cache *cache,
                                        const mobagen_decode_args *args, size_t *bytes)
{
    if (op && !bytes) return mg_fail(&op->err, MG_E_ARG, "bytes (the size_t to fill) is NULL");
    decode_layout w;
    mg_status st = check_decode(op, cache, args, &w);
    /* the routing chunk is the loaded variant's: load it before sizing (not on detached ops) */
    if (st == MG_OK && op->ctx && !op->decode_loaded && (st = mg_op_load_decode(op)) == MG_OK)
        st = check_decode(op, cache, args, &w);
    if (st == MG_OK) *bytes = w.total;
    return st;
}

mg_status mobagen_decode(mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_decode_args *a,
                         mobagen_devptr workspace, size_t workspace_bytes, mobagen_stream stream)
{
    return mg_decode_stages(op, cache, a, workspace, workspace_bytes, stream, MG_DECODE_ALL);
}

mg_status mg_decode_stages(mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_decode_args *a,
                           mobagen_devptr workspace, size_t workspace_bytes, mobagen_stream stream, unsigned stages)
{
    decode_layout w;
    mg_status st = check_decode(op, cache, a, &w);
    if (st != MG_OK) return st;
    if (a->batch == 0 || a->total_q == 0) return MG_OK;
    if (!op->decode_loaded) {
        if ((st = mg_op_load_decode(op)) != MG_OK) return st;
        if ((st = check_decode(op, cache, a, &w)) != MG_OK) return st;
    }
    if (workspace_bytes < w.total)
        return mg_fail(&op->err, MG_E_ARG, "workspace of %zu bytes is too small: %zu needed (mobagen_decode_workspace_size)",
                       workspace_bytes, w.total);
    if (!workspace || workspace % WORKSPACE_ALIGN)
        return mg_fail(&op->err, MG_E_ARG, "workspace must be a %d-byte aligned device pointer", WORKSPACE_ALIGN);
    const mg_spec *s = &op->spec;
    const long long row = (long long)a->hq * cache->head_dim;
    mg_decode_params p = {
        .q = a->q, .out = a->out, .lse = a->lse, .sel = a->sel, .cu_seqlens_q = a->cu_seqlens_q,
        .cand = workspace + w.cand, .uni_blocks = workspace + w.uni_blocks, .uni_masks = workspace + w.uni_masks,
        .uni_count = workspace + w.uni_count, .part_o = workspace + w.part_o, .part_ml = workspace + w.part_ml,
        .q_row_stride = a->q_row_stride ? a->q_row_stride : row,
        .out_row_stride = a->out_row_stride ? a->out_row_stride : row,
        .batch = a->batch, .hq = a->hq, .max_q_len = a->max_q_len, .rows = w.rows,
        .route_chunk = w.route_chunk, .route_chunks = w.route_chunks, .splits = w.splits,
        .softmax_scale = a->softmax_scale > 0 ? a->softmax_scale : 1.0 / sqrt((double)s->head_dim),
    };
    cache_params(cache, w.max_blocks, &p);
    const mg_loaded_variant *v = &op->variants[op->selected_decode];
    unsigned hkv = (unsigned)cache->hkv, batch = (unsigned)a->batch;
    if ((st = mg_ctx_push(op->ctx, &op->err)) != MG_OK) return st;
    if (stages & MG_DECODE_ROUTE)
        st = launch_role(op, v, MG_ROLE_DECODE_ROUTE, hkv, (unsigned)w.route_chunks, batch, 128, 0, &p, stream);
    if (st == MG_OK && (stages & MG_DECODE_SELECT))
        st = launch_role(op, v, MG_ROLE_DECODE_SELECT, hkv, batch, 1, 128, 0, &p, stream);
    if (st == MG_OK && (stages & MG_DECODE_ATTN))
        st = launch_role(op, v, MG_ROLE_MAIN, (unsigned)w.splits, hkv, batch, (unsigned)v->threads, (unsigned)v->smem,
                         &p, stream);
    if (st == MG_OK && (stages & MG_DECODE_MERGE))
        st = launch_role(op, v, MG_ROLE_DECODE_MERGE, hkv, batch, 1, 128, 0, &p, stream);
    mg_ctx_pop(op->ctx);
    return st;
}

mg_status mobagen_kv_cache_check(mobagen_op *op, const mobagen_kv_cache *cache, mobagen_stream stream, int *bits)
{
    if (!op) return MG_E_ARG;
    if (bits) *bits = 0;
    if (!cache) return mg_fail(&op->err, MG_E_ARG, "cache is NULL");
    if (!cache->error) return MG_OK;
    if (!op->ctx) return mg_fail(&op->err, MG_E_NO_DEVICE, "the op has no device to run on");
    mg_cuda *cu = &op->ctx->cu;
    mg_status st = mg_ctx_push(op->ctx, &op->err);
    if (st != MG_OK) return st;
    int word = 0;
    st = mg_cuda_check(cu, cu->StreamSynchronize((cu_stream)stream), "cuStreamSynchronize", &op->err);
    if (st == MG_OK)
        st = mg_cuda_check(cu, cu->MemcpyDtoH(&word, cache->error, sizeof word), "cuMemcpyDtoH(cache->error)", &op->err);
    if (st == MG_OK && word)
        st = mg_cuda_check(cu, cu->MemsetD32(cache->error, 0, 1), "cuMemsetD32(cache->error)", &op->err);
    mg_ctx_pop(op->ctx);
    if (st != MG_OK) return st;
    if (bits) *bits = word;
    if (!word) return MG_OK;
    return mg_fail(&op->err, MG_E_ARG, "the device found an inconsistent cache:%s%s%s%s",
                   word & MOBAGEN_KV_E_PAGE ? " a page table entry in use outside 0..n_pages-1;" : "",
                   word & MOBAGEN_KV_E_FULL ? " a sequence longer than its page table row or than max_new;" : "",
                   word & MOBAGEN_KV_E_QLEN ? " a sequence with more new queries than cached tokens (or than "
                                              "max_q_len);" : "",
                   word & MOBAGEN_KV_E_DROP ? " a truncation to a length outside 0..seq_lens (sequence left as it "
                                              "was);" : "");
}
