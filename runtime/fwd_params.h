/* The C side of templates/common.cuh.tpl's FwdParams: the same fields in the same order, all
 * 8 bytes wide so that both compilers lay them out identically. */
#ifndef MOBAGEN_FWD_PARAMS_H
#define MOBAGEN_FWD_PARAMS_H

#include <stdint.h>

typedef struct mg_fwd_params {
    uint64_t q, k, v;
    uint64_t conv_w;
    uint64_t kprime;
    uint64_t centroid;
    uint64_t sel;
    uint64_t out;
    uint64_t lse;
    uint64_t cu_seqlens_q, cu_seqlens_k;
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;
    long long v_row_stride, v_head_stride;
    long long o_row_stride, o_head_stride;
    long long batch, hq, hkv;
    long long max_seqlen_q, max_seqlen_k, max_blocks;
    double softmax_scale;
    uint64_t list_count, list_cursor, tile_offset, scan_carry;
    uint64_t tile_meta, entries, acc_o, acc_ml;
    long long chunk_rows, row_chunks, ring_chunks, n_chunks, n_lists;
    long long chunk_begin, chunk_end;
} mg_fwd_params;

#endif
