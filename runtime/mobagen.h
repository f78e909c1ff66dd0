/* libmobagen: MoBA kernels generated for a spec, compiled (or served from the cache) and run on
 * the GPU at hand through the CUDA driver API.
 *
 *   mobagen_ctx   one CUDA device (its primary context) and the driver, loaded with dlopen
 *   mobagen_op    one spec's forward pass, its kernels loaded into the ctx's context
 *
 * Every call returns an mg_status; the text of the last failure is mobagen_ctx_errmsg (for
 * ctx and op creation) or mobagen_op_errmsg (for calls on an op). A ctx and its ops may be used
 * by one thread at a time; use one ctx per thread to run concurrently.
 *
 * Tensor layouts follow FlashAttention's varlen API (docs/runtime.md):
 *   q, out  [total_q][hq][head_dim]       k, v  [total_k][hkv][head_dim]   (dtype of the spec)
 *   lse     [total_q][hq] float32 (natural log, -inf for a row that sees no key)
 *   cu_seqlens_q, cu_seqlens_k  int32 [batch + 1] on the device
 *   conv_weight [hkv][conv_width][head_dim] (dtype of the spec); tap l multiplies k_{t-l}
 * Row and head strides are in elements; 0 means packed. The last dim must be contiguous.
 * As in FlashAttention, max_seqlen_q/k must be at least every sequence's length: the grids are
 * sized from them without reading cu_seqlens back from the device. */
#ifndef MOBAGEN_H
#define MOBAGEN_H

#include <stddef.h>

#include "spec.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mobagen_ctx mobagen_ctx;
typedef struct mobagen_op mobagen_op;
typedef unsigned long long mobagen_devptr;   /* a CUdeviceptr */
typedef void *mobagen_stream;                /* a CUstream; NULL is the legacy default stream */

typedef struct mobagen_ctx_options {
    const char *cache_dir;      /* NULL: MOBAGEN_CACHE_DIR, XDG_CACHE_HOME/mobagen, ~/.cache/mobagen */
    const char *template_dir;   /* NULL: MOBAGEN_TEMPLATE_DIR, else the embedded templates */
} mobagen_ctx_options;

/* Opens CUDA device `device`. *out is set even on failure (unless out of memory) so that
 * mobagen_ctx_errmsg can say why; destroy it either way. */
mg_status mobagen_ctx_create(int device, const mobagen_ctx_options *opts, mobagen_ctx **out);
void mobagen_ctx_destroy(mobagen_ctx *ctx);
const char *mobagen_ctx_errmsg(const mobagen_ctx *ctx);
/* "sm_90a" etc.: the arch kernels are built for on this device. */
const char *mobagen_ctx_arch(const mobagen_ctx *ctx);
const char *mobagen_ctx_device_name(const mobagen_ctx *ctx);

/* Builds (or loads from the cache) every variant of the spec for this device. */
mg_status mobagen_op_create(mobagen_ctx *ctx, const char *spec_path, mobagen_op **out);
mg_status mobagen_op_create_from_spec(mobagen_ctx *ctx, const mg_spec *spec, mobagen_op **out);
void mobagen_op_destroy(mobagen_op *op);
const char *mobagen_op_errmsg(const mobagen_op *op);
const mg_spec *mobagen_op_spec(const mobagen_op *op);

/* The tuning variants of one template ("route", "attn_fwd", "kconv_centroid") and which one
 * runs; the first valid point is chosen until mobagen_op_select says otherwise. */
int mobagen_op_variant_count(const mobagen_op *op, const char *template_name);
const char *mobagen_op_variant_id(const mobagen_op *op, const char *template_name, int index);
mg_status mobagen_op_select(mobagen_op *op, const char *template_name, int index);

typedef struct mobagen_fwd_args {
    int batch;
    int hq, hkv, head_dim;
    int total_q, total_k;
    int max_seqlen_q, max_seqlen_k;
    mg_dtype dtype;
    mobagen_devptr q, k, v, out;
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;
    long long v_row_stride, v_head_stride;
    long long out_row_stride, out_head_stride;
    mobagen_devptr cu_seqlens_q, cu_seqlens_k;
    mobagen_devptr conv_weight;  /* required when the spec's conv_width > 0, else must be 0 */
    mobagen_devptr lse;
    float softmax_scale;         /* 0: 1/sqrt(head_dim) */
} mobagen_fwd_args;

/* Bytes of device workspace mobagen_fwd needs for these arguments (256-byte aligned). With
 * S = total_q*hq*top_k selection slots, n = ceil(max_seqlen_k/block_size) blocks,
 * R = min(16384, max_seqlen_q) rows per chunk, C = batch*hq*ceil(max_seqlen_q/R) chunks and
 * N = C*n lists, it is about: 4S (selection) + 4*(S + 63*min(N, S)) (lists, tile-aligned)
 * + 32*(S/64 + min(N, S)) (tile descriptions) + 16N (list counters and offsets)
 * + ring*R*(4*head_dim + 8) with ring = min(C, max(1, 64 MiB / (R*(4*head_dim + 8))))
 * (fp32 accumulator rows of the chunks in flight) + centroids (batch*n*hkv*head_dim*4) + k after
 * the key convolution when conv_width > 0 (total_k*hkv*head_dim*2). It does not grow with the
 * sequence beyond the selection and its lists: no per-(query, slot) partial results. */
mg_status mobagen_fwd_workspace_size(mobagen_op *op, const mobagen_fwd_args *args, size_t *bytes);

/* The MoBA forward on `stream`: key convolution and centroids, routing, attention. Checks the
 * arguments against the spec and each other first, naming the wrong one. */
mg_status mobagen_fwd(mobagen_op *op, const mobagen_fwd_args *args, mobagen_devptr workspace,
                      size_t workspace_bytes, mobagen_stream stream);

/* Block indices routing chose, [total_q][hq][top_k] int32 ascending, -1 padded: valid in the
 * workspace after mobagen_fwd until the workspace is reused. */
mobagen_devptr mobagen_fwd_selection(mobagen_op *op, const mobagen_fwd_args *args,
                                     mobagen_devptr workspace);

#ifdef __cplusplus
}
#endif

#endif
