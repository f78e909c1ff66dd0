/* libmobagen: MoBA kernels generated for a spec, compiled (or served from the cache) and run on
 * the GPU at hand through the CUDA driver API.
 *
 *   mobagen_ctx   one CUDA device (its primary context) and the driver, loaded with dlopen
 *   mobagen_op    one spec's forward and backward passes, their kernels loaded into the ctx's context
 *
 * Every call returns a mobagen_status (or, for lookups, NULL / -1 / 0 as documented); no call
 * crashes on a NULL handle or pointer. The text of the last failure is mobagen_ctx_errmsg (for
 * ctx and op creation) or mobagen_op_errmsg (for calls on an op). A ctx and its ops may be used
 * by one thread at a time; use one ctx per thread to run concurrently.
 *
 * Tensor layouts follow FlashAttention's varlen API (README.md, "The C library"):
 *   q, out  [total_q][hq][head_dim]       k, v  [total_k][hkv][head_dim]   (dtype of the spec)
 *   lse     [total_q][hq] float32 (natural log, -inf for a row that sees no key)
 *   cu_seqlens_q, cu_seqlens_k  int32 [batch + 1] on the device
 *   conv_weight [hkv][conv_width][head_dim] (dtype of the spec); tap l multiplies k_{t-l}
 * Row and head strides are in elements; 0 means packed. The last dim must be contiguous.
 * As in FlashAttention, max_seqlen_q/k must be at least every sequence's length: the grids are
 * sized from them without reading cu_seqlens back from the device.
 *
 * The header is self-contained C (and C++: everything is extern "C"); every name it declares
 * starts with mobagen_ or MOBAGEN_, and the shared library exports nothing else. */
#ifndef MOBAGEN_H
#define MOBAGEN_H

#include <stddef.h>

#define MOBAGEN_VERSION_MAJOR 0
#define MOBAGEN_VERSION_MINOR 3
#define MOBAGEN_VERSION_PATCH 2
#define MOBAGEN_VERSION_STRING "0.3.2"

#if defined(__GNUC__) || defined(__clang__)
#define MOBAGEN_API __attribute__((visibility("default")))
#else
#define MOBAGEN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mobagen_status {
    MOBAGEN_OK = 0,
    MOBAGEN_E_ARG,            /* a caller passed an invalid argument */
    MOBAGEN_E_SPEC,           /* a spec (file or parameters) is malformed or unsupported */
    MOBAGEN_E_TEMPLATE,       /* a template failed to parse, run or validate */
    MOBAGEN_E_COMPILE,        /* NVRTC rejected generated source */
    MOBAGEN_E_NO_NVRTC,       /* libnvrtc could not be loaded */
    MOBAGEN_E_CACHE,          /* the kernel cache is unusable */
    MOBAGEN_E_IO,             /* a file could not be read or written */
    MOBAGEN_E_NOMEM,          /* out of host memory */
    MOBAGEN_E_NO_DRIVER,      /* libcuda.so.1 could not be loaded */
    MOBAGEN_E_NO_DEVICE,      /* no CUDA device, or the ordinal is out of range */
    MOBAGEN_E_CUDA,           /* a CUDA driver call failed */
    MOBAGEN_E_UNSUPPORTED     /* valid request this build cannot serve */
} mobagen_status;

typedef enum mobagen_dtype { MOBAGEN_BF16 = 0, MOBAGEN_FP16 = 1 } mobagen_dtype;

/* "0.3.2": the library's version, which may differ from the header's MOBAGEN_VERSION_STRING
 * when a program runs against a newer shared library than it was built with. */
MOBAGEN_API const char *mobagen_version(void);
/* Static name of a status ("MOBAGEN_E_SPEC"), never NULL. */
MOBAGEN_API const char *mobagen_status_name(mobagen_status s);

typedef struct mobagen_ctx mobagen_ctx;
typedef struct mobagen_op mobagen_op;
typedef unsigned long long mobagen_devptr;   /* a CUdeviceptr */
typedef void *mobagen_stream;                /* a CUstream; NULL is the legacy default stream */

typedef enum mobagen_log_level {
    MOBAGEN_LOG_DEFAULT = 0,  /* from MOBAGEN_LOG (error|warn|info|debug), else warn */
    MOBAGEN_LOG_ERROR = 1,
    MOBAGEN_LOG_WARN = 2,
    MOBAGEN_LOG_INFO = 3,     /* one line per kernel compiled on a cache miss */
    MOBAGEN_LOG_DEBUG = 4
} mobagen_log_level;

/* Where log lines go; NULL in the options: "mobagen: LEVEL: message" on stderr. Called from the
 * thread that made the call on the ctx (or its ops), or during op creation from its build
 * threads, but never concurrently for one ctx. */
typedef void (*mobagen_log_fn)(void *user, mobagen_log_level level, const char *message);

/* Called once per variant as op creation builds or loads it: done of total so far, the
 * variant's id and whether it was compiled (1) or found in the cache (0). Called from build
 * threads, one call at a time. */
typedef void (*mobagen_progress_fn)(void *user, int done, int total, const char *variant_id,
                                    int compiled);

/* Zero-initialise it (= {0}) and set what you need: zero fields take their defaults. */
typedef struct mobagen_ctx_options {
    const char *cache_dir;      /* NULL: MOBAGEN_CACHE_DIR, XDG_CACHE_HOME/mobagen, ~/.cache/mobagen */
    const char *template_dir;   /* NULL: MOBAGEN_TEMPLATE_DIR, else the embedded templates */
    mobagen_log_level log_level;
    mobagen_log_fn log;
    void *log_user;
    mobagen_progress_fn progress;
    void *progress_user;
} mobagen_ctx_options;

/* Opens CUDA device `device`. *out is set even on failure (unless out of memory) so that
 * mobagen_ctx_errmsg can say why; destroy it either way. out NULL: MOBAGEN_E_ARG. */
MOBAGEN_API mobagen_status mobagen_ctx_create(int device, const mobagen_ctx_options *opts,
                                              mobagen_ctx **out);
MOBAGEN_API void mobagen_ctx_destroy(mobagen_ctx *ctx);
/* Never NULL. */
MOBAGEN_API const char *mobagen_ctx_errmsg(const mobagen_ctx *ctx);
/* "sm_90a" etc.: the arch kernels are built for on this device ("" without a device, NULL for
 * a NULL ctx). */
MOBAGEN_API const char *mobagen_ctx_arch(const mobagen_ctx *ctx);
MOBAGEN_API const char *mobagen_ctx_device_name(const mobagen_ctx *ctx);

/* One restriction of a template's tuning space: knob -> allowed values (a spec's `tuning:`). */
typedef struct mobagen_tuning_restriction {
    const char *template_name;  /* "route", "attn_fwd", "kconv_centroid", "attn_bwd" */
    const char *knob;           /* "impl", "block_m", ... (docs/templates.md) */
    const int *values;
    int n_values;
} mobagen_tuning_restriction;

/* A spec as parameters, checked by the same rules as a YAML spec (specs/README.md). Zero
 * fields take the YAML defaults where one exists. */
typedef struct mobagen_spec_params {
    const char *name;           /* NULL: "moba_d<head_dim>_b<block_size>_k<top_k>" */
    int head_dim;               /* required: 32..256, a multiple of 32 */
    int block_size;             /* required: 16..512, a multiple of 16 */
    int top_k;                  /* required: 1..64 */
    int causal;                 /* 0 or 1 (YAML spec's default is 1: set it) */
    int conv_width;             /* 0..8, 0: no key convolution */
    mobagen_dtype dtype;
    int gqa_group;              /* query heads per kv head; 0 means 1 */
    const mobagen_tuning_restriction *tuning;  /* n_tuning entries, or NULL */
    int n_tuning;
} mobagen_spec_params;

/* Builds (or loads from the cache) every variant of the spec for this device. */
MOBAGEN_API mobagen_status mobagen_op_create(mobagen_ctx *ctx, const char *spec_path,
                                             mobagen_op **out);
MOBAGEN_API mobagen_status mobagen_op_create_from_params(mobagen_ctx *ctx,
                                                         const mobagen_spec_params *params,
                                                         mobagen_op **out);
MOBAGEN_API void mobagen_op_destroy(mobagen_op *op);
/* Never NULL. */
MOBAGEN_API const char *mobagen_op_errmsg(const mobagen_op *op);
/* The op's spec: every field but tuning (NULL, 0); name points into the op. */
MOBAGEN_API mobagen_status mobagen_op_params(const mobagen_op *op, mobagen_spec_params *out);

/* The tuning variants of one template ("route", "attn_fwd", "kconv_centroid", "attn_bwd") and
 * which one runs; the first valid point is chosen until mobagen_op_select says otherwise. The
 * count is -1 and the id NULL for a NULL op or template name. */
MOBAGEN_API int mobagen_op_variant_count(const mobagen_op *op, const char *template_name);
MOBAGEN_API const char *mobagen_op_variant_id(const mobagen_op *op, const char *template_name,
                                              int index);
MOBAGEN_API mobagen_status mobagen_op_select(mobagen_op *op, const char *template_name, int index);

/* A null device pointer is accepted exactly where its tensor has no elements (q, out and lse
 * when total_q == 0; k and v when total_k == 0), as PyTorch gives for empty tensors. */
typedef struct mobagen_fwd_args {
    int batch;                   /* 0 is an empty batch (total_q = total_k = 0) */
    int hq, hkv, head_dim;
    int total_q, total_k;
    int max_seqlen_q, max_seqlen_k;
    mobagen_dtype dtype;
    mobagen_devptr q, k, v, out;
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;
    long long v_row_stride, v_head_stride;
    long long out_row_stride, out_head_stride;
    mobagen_devptr cu_seqlens_q, cu_seqlens_k;
    mobagen_devptr conv_weight;  /* required when the spec's conv_width > 0, else must be 0 */
    mobagen_devptr lse;
    float softmax_scale;         /* 0: 1/sqrt(head_dim); else finite and > 0 */
} mobagen_fwd_args;

/* Bytes of device workspace mobagen_fwd needs for these arguments (256-byte aligned). With
 * S = total_q*hq*top_k selection slots, n = ceil(max_seqlen_k/block_size) blocks,
 * R = min(16384, max_seqlen_q) rows per chunk, C = batch*hq*ceil(max_seqlen_q/R) chunks and
 * N = C*n lists, it is about: 4S (selection) + 4*(S + 63*min(N, S)) (lists, tile-aligned)
 * + 32*(S/64 + min(N, S)) (tile descriptions) + 16N (list counters and offsets)
 * + 4*total_q*hq (each row's softmax reference) + ring*R*(4*head_dim + 4) with
 * ring = ceil(C / ceil(C / r)), r = min(C, max(1, 64 MiB / (R*(4*head_dim + 4)))) (fp32
 * accumulator rows of the chunks in flight, the groups balanced) + centroids (batch*n*hkv*head_dim*8: fp32,
 * then their high/low split in the element type for the tensor-core gate scores) + k after
 * the key convolution when conv_width > 0 (total_k*hkv*head_dim*2). It does not grow with the
 * sequence beyond the selection and its lists: no per-(query, slot) partial results. */
MOBAGEN_API mobagen_status mobagen_fwd_workspace_size(mobagen_op *op, const mobagen_fwd_args *args,
                                                      size_t *bytes);

/* The MoBA forward on `stream`: key convolution and centroids, routing, attention. Checks the
 * arguments against the spec and each other first, naming the wrong one. Empty inputs launch
 * nothing and succeed. Routing is exact and deterministic; the tensor-core attention adds each
 * query's fp32 partial sums in the order its blocks finish, so two runs agree to rounding, not
 * bit for bit. */
MOBAGEN_API mobagen_status mobagen_fwd(mobagen_op *op, const mobagen_fwd_args *args,
                                       mobagen_devptr workspace, size_t workspace_bytes,
                                       mobagen_stream stream);

/* Block indices routing chose, [total_q][hq][top_k] int32 ascending, -1 padded: valid in the
 * workspace after mobagen_fwd until the workspace is reused. 0 when the arguments are invalid
 * (mobagen_op_errmsg says why) or op is NULL. */
MOBAGEN_API mobagen_devptr mobagen_fwd_selection(mobagen_op *op, const mobagen_fwd_args *args,
                                                 mobagen_devptr workspace);

/* ---- Backward (docs/backward.md) ----
 * Gradients of the forward's outputs o and LSE with respect to q, k, v and the key convolution's
 * weights, for the selection the forward used (routing is a hard choice: nothing flows through
 * it). Strides are in elements, 0 means packed, as for the forward. A null device pointer is
 * accepted exactly where its tensor has no elements (dout and dq when total_q == 0, dk and dv
 * when total_k == 0). Outputs are overwritten, all of them: dk and dv of keys no query sees are
 * 0, dq of rows without keys is 0. */
typedef struct mobagen_bwd_args {
    mobagen_fwd_args fwd;        /* the forward call's arguments; fwd.out and fwd.lse hold its o and LSE */
    mobagen_devptr dout;         /* dL/do, element type, [total_q][hq][head_dim] */
    long long dout_row_stride, dout_head_stride;
    mobagen_devptr dlse;         /* dL/dLSE, fp32 [total_q][hq] contiguous, or 0 for none */
    mobagen_devptr selection;    /* the forward's selection ([total_q][hq][top_k] int32 as
                                    mobagen_fwd_selection gives it), or 0: routing runs again */
                                 /* (not inside the backward's own workspace; entries that are not
                                    ascending are ignored) */
    mobagen_devptr dq, dk, dv;   /* outputs, element type, overwritten (dq may hold the query
                                    lists first: mobagen_bwd_workspace_size) */
    long long dq_row_stride, dq_head_stride;
    long long dk_row_stride, dk_head_stride;
    long long dv_row_stride, dv_head_stride;
    mobagen_devptr dconv_weight; /* fp32 [hkv][conv_width][head_dim], overwritten; required iff conv_width > 0 */
    int deterministic;           /* 1: bitwise-identical gradients across runs */
} mobagen_bwd_args;

/* Bytes of device workspace mobagen_bwd needs (256-byte aligned). With S = total_q*hq*top_k
 * selection slots, n = ceil(max_seqlen_k/block_size) blocks, R rows per chunk (max_seqlen_q in
 * fast mode; in deterministic mode the largest multiple of 64 up to 8192 and max_seqlen_q with
 * batch*R*hq*top_k*head_dim*4 <= max(256 MiB, 4*total_q*hq*head_dim)), C = ceil(max_seqlen_q/R)
 * chunks and N = C*batch*hq*n lists, it is about: the forward's workspace when selection is 0
 * or conv_width > 0 (mobagen_fwd_workspace_size: routing and k' run again there)
 * + 4*total_q*hq (D') + 4*(1 + 2N + S) (the query lists: a counter, each list's count and
 * cursor, an entry per slot), except in fast mode when dq is packed and 4*(1 + 2N + S) <=
 * 2*total_q*hq*head_dim (dq's bytes): the lists are then built in dq, which is written only
 * after they are last read (so dq must not overlap another argument; mobagen_bwd refuses it)
 * + dq accumulators:
 * 4*total_q*hq*head_dim (fast) or 4*batch*R*hq*top_k*head_dim (deterministic: one partial row
 * per (query, slot) of a chunk) + 4*total_k*hkv*head_dim for dk' when conv_width > 0 or C > 1,
 * and as much again for dv when C > 1 + the conv weights' partial sums
 * (batch*ceil(max_seqlen_k/256)*hkv*conv_width*head_dim*4). */
MOBAGEN_API mobagen_status mobagen_bwd_workspace_size(mobagen_op *op, const mobagen_bwd_args *args,
                                                      size_t *bytes);

/* The MoBA backward on `stream`; the forward's arguments are checked as mobagen_fwd checks them,
 * then the backward's, naming the wrong one. No host synchronisation, no allocation. Fast mode
 * adds dq in fp32 reductions and builds the query lists in whatever order atomics give, so two
 * runs agree to rounding; deterministic mode sorts the lists and sums dq per slot in a fixed
 * order, so two runs agree bit for bit. MOBAGEN_E_UNSUPPORTED where the op has no backward
 * kernels (templates or a bundle from before them). */
MOBAGEN_API mobagen_status mobagen_bwd(mobagen_op *op, const mobagen_bwd_args *args,
                                       mobagen_devptr workspace, size_t workspace_bytes,
                                       mobagen_stream stream);

/* ---- Deployment: tuning, dispatch and kernel bundles (docs/tuning.md, docs/bundles.md) ----
 * mobagen_fwd runs, for each call, the variants the tuning database recorded as fastest for the
 * call's bucket on this device (sequence length, batch x heads, GQA group, spec identity), or
 * the documented heuristic where it has no record; with MOBAGEN_AUTOTUNE=1 a missing bucket is
 * tuned on first use (the call then takes seconds) and recorded. mobagen_op_select pins a
 * template's variant for the rest of the op's life. */

typedef struct mobagen_tune_result {
    const char *template_name;
    const char *variant_id;
    int index;                   /* for mobagen_op_variant_id / mobagen_op_select */
    int ok;                      /* ran and matched the reference variant */
    double median_us, min_us;    /* of the template's stage alone; < 0 when not timed */
    const char *note;            /* why it did not pass, else "" */
} mobagen_tune_result;

typedef struct mobagen_tune_options {
    int batch, hkv, seqlen;      /* the shape timed: batch sequences of seqlen queries and keys */
    int warmup, reps;            /* 0: 3 and 25 */
    int save;                    /* record the winners in the tuning database */
    const char *db_path;         /* NULL: $MOBAGEN_TUNING_DB, else the XDG data directory */
    void (*on_result)(const mobagen_tune_result *r, void *user);
    void (*on_progress)(int done, int total, const char *variant_id, void *user);
    void *user;
} mobagen_tune_options;

/* Checks every variant against the reference variant on random inputs of the shape, times
 * those that pass (L2 flushed before each repetition, CUDA events, median), selects the
 * winners in the op and, with save, records them. */
MOBAGEN_API mobagen_status mobagen_op_tune(mobagen_op *op, const mobagen_tune_options *opts);

/* The variant index of a template that mobagen_fwd would run for args, and where the choice
 * comes from ("tuned", "pinned", "heuristic"); -1 on invalid args. */
MOBAGEN_API int mobagen_op_dispatch(mobagen_op *op, const mobagen_fwd_args *args,
                                    const char *template_name, const char **source);

/* Kernels of later mobagen_op_create calls come from this bundle when it holds their spec
 * (also $MOBAGEN_BUNDLE, a ':'-separated list, read at the first op creation). */
MOBAGEN_API mobagen_status mobagen_ctx_add_bundle(mobagen_ctx *ctx, const char *path);
/* "nvrtc", or "bundle PATH (sm_90a)": where the op's kernels came from; NULL for a NULL op. */
MOBAGEN_API const char *mobagen_op_origin(const mobagen_op *op);

/* ---- Serving: append and decode over a paged KV cache (docs/decode.md) ----
 * The cache (all device memory, row-major, a token's rows [hkv][head_dim]):
 *   k_pages (k after the key convolution), v_pages, kraw_pages (raw k, only when the spec's
 *   conv_width > 0, else 0): [n_pages][page_size][hkv][head_dim] in the spec's dtype
 *   page_table int32 [batch][max_pages]: token p of sequence b is in page page_table[b][p /
 *   page_size], slot p % page_size (vLLM's block table, FlashInfer's NHD pages)
 *   seq_lens int32 [batch]: tokens held; mobagen_append advances it
 *   centroid_sum fp32 [batch][max_blocks][hkv][head_dim], max_blocks =
 *   ceil(max_pages * page_size / block_size): running sums of each block's keys
 *   error: optional int32 the kernels OR a MOBAGEN_KV_E_* bit into when the device data is
 *   inconsistent (they cannot return a status without a host sync); 0 for none
 * The decode kernels are built on an op's first append, decode or workspace query (the
 * forward's op creation does not pay for them). Every call is CUDA-graph friendly: host
 * arguments are pointers and bounds only, no host synchronisation, allocation or memset. */
typedef struct mobagen_kv_cache {
    int n_pages, page_size, max_pages, hkv, head_dim;
    mobagen_dtype dtype;
    mobagen_devptr k_pages, v_pages, kraw_pages;
    mobagen_devptr centroid_sum, page_table, seq_lens;
    mobagen_devptr error;
} mobagen_kv_cache;

#define MOBAGEN_KV_E_PAGE 1   /* a page table entry in use is outside 0..n_pages-1 */
#define MOBAGEN_KV_E_FULL 2   /* a sequence outgrows max_pages * page_size, or exceeds a host bound */
#define MOBAGEN_KV_E_QLEN 4   /* a sequence has more new queries than cached tokens */
#define MOBAGEN_KV_E_DROP 8   /* a truncation to a length outside 0..seq_lens[b] (sequence left as it was) */

/* Sequence b gets n_b = cu_seqlens_new[b+1] - cu_seqlens_new[b] >= 0 new tokens (rows of k, v
 * [total_new][hkv][head_dim]) at positions seq_lens[b].. (prefill is an append of the prompt). */
typedef struct mobagen_append_args {
    int batch;                    /* 0: nothing to do */
    int max_new;                  /* host bound: every n_b <= max_new */
    int total_new;                /* rows of k and v (0: k, v may be 0) */
    mobagen_devptr k, v;
    long long k_row_stride, v_row_stride;   /* elements; 0: packed (hkv * head_dim) */
    mobagen_devptr cu_seqlens_new;          /* int32 [batch + 1] */
    mobagen_devptr conv_weight;   /* [hkv][conv_width][head_dim], required iff conv_width > 0 */
} mobagen_append_args;

/* Sequence b has q_len_b = cu_seqlens_q[b+1] - cu_seqlens_q[b] new query rows, the last q_len_b
 * tokens already appended (row r at position r + seq_lens[b] - q_len_b, causal within them). */
typedef struct mobagen_decode_args {
    int batch, hq;
    int max_q_len;                /* host bound on q_len_b; gqa_group * max_q_len <= 16 */
    int total_q;                  /* rows of q and out (0: q, out, lse may be 0) */
    int max_seqlen;               /* host bound on seq_lens[b] (sizes routing and splits) */
    mobagen_devptr q, out;        /* [total_q][hq][head_dim] */
    mobagen_devptr lse;           /* fp32 [total_q][hq], natural log */
    mobagen_devptr sel;           /* optional int32 [total_q][hq][top_k], ascending, -1 padded */
    long long q_row_stride, out_row_stride;  /* elements; 0: packed (heads packed within a row) */
    mobagen_devptr cu_seqlens_q;  /* int32 [batch + 1] */
    float softmax_scale;          /* 0: 1/sqrt(head_dim) */
} mobagen_decode_args;

/* Rollback of the last tokens of each sequence (speculative decoding's rejected drafts). Exactly
 * one of drop and new_lens is set; with batch 0 neither is needed. */
typedef struct mobagen_truncate_args {
    int batch;
    mobagen_devptr drop;          /* int32 [batch]: tokens to remove from the end of sequence b */
    mobagen_devptr new_lens;      /* or int32 [batch]: the lengths to keep */
} mobagen_truncate_args;

/* Writes the new tokens' k' (key convolution over the sequence's previous keys), raw k, v into
 * their pages, updates the centroid sums of the blocks they fall in (a block's first key
 * restarts its sum) and advances seq_lens. One launch when max_new <= 16 (a decode step), two
 * for longer appends (prefill); the cache is the same either way. */
MOBAGEN_API mobagen_status mobagen_append(mobagen_op *op, const mobagen_kv_cache *cache,
                                          const mobagen_append_args *args, mobagen_stream stream);
/* Shortens sequence b to L' = seq_lens[b] - drop[b] (or new_lens[b]) tokens, 0 <= L' <=
 * seq_lens[b], on the device in one launch: the centroid sum of the block L' cuts is recomputed
 * from its kept keys (in the order the appends added them, so the cache is bit for bit what
 * appending only the kept tokens gives) and seq_lens[b] = L'. Raw keys of kept positions stay,
 * so the next append's key convolution sees the right history. A sequence whose L' is out of
 * range, or whose cut block has a page outside the pool, is left untouched and flagged
 * (MOBAGEN_KV_E_DROP, MOBAGEN_KV_E_PAGE; mobagen_kv_cache_check reports them). */
MOBAGEN_API mobagen_status mobagen_kv_truncate(mobagen_op *op, const mobagen_kv_cache *cache,
                                               const mobagen_truncate_args *args, mobagen_stream stream);
/* Bytes of device workspace mobagen_decode needs (256-byte aligned): routing candidates
 * batch*hkv*gqa_group*max_q_len*ceil(n/256)*(top_k-1)*8 with n = ceil(max_seqlen/block_size),
 * the union of each kv head's blocks batch*hkv*16*top_k*8, and the split partials
 * batch*hkv*splits*16*(head_dim+2)*4. */
MOBAGEN_API mobagen_status mobagen_decode_workspace_size(mobagen_op *op, const mobagen_kv_cache *cache,
                                                         const mobagen_decode_args *args, size_t *bytes);
/* MoBA attention of the new query rows against the cache: routing against the cached
 * centroids (own block forced, as the forward), attention over the selected blocks split
 * across CTAs, merged. */
MOBAGEN_API mobagen_status mobagen_decode(mobagen_op *op, const mobagen_kv_cache *cache,
                                          const mobagen_decode_args *args, mobagen_devptr workspace,
                                          size_t workspace_bytes, mobagen_stream stream);
/* Synchronises the stream, reads the cache's error word (MOBAGEN_KV_E_* bits into *bits when
 * bits is not NULL), clears it, and returns MOBAGEN_E_ARG naming the problems when it was set.
 * For tests and debugging, outside graph capture. MOBAGEN_OK when cache->error is 0. */
MOBAGEN_API mobagen_status mobagen_kv_cache_check(mobagen_op *op, const mobagen_kv_cache *cache,
                                                  mobagen_stream stream, int *bits);

#ifdef __cplusplus
}
#endif

#endif
