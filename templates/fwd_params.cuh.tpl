// The forward's parameter block, passed by value to every kernel: the one definition that the C
// runtime (runtime/fwd_params.h includes this file) and the kernels (common.cuh.tpl includes it)
// both compile, so the two sides cannot drift apart. Every field is 8 bytes wide, so no padding
// rule can differ between the compilers; the asserts at the end check the layout in both.
// Plain C and CUDA C++: no template lines in this file.
#ifndef MOBAGEN_FWD_PARAMS_DEF
#define MOBAGEN_FWD_PARAMS_DEF

typedef struct mg_fwd_params {
    unsigned long long q, k, v;               // [total][heads][d] elements, strides below
    unsigned long long conv_w;                // [hkv][conv_width][d] elements, or 0
    unsigned long long kprime;                // workspace [total_k][hkv][d]: k after the key convolution
    unsigned long long centroid;              // workspace [batch][max_blocks][hkv][d] fp32
    unsigned long long sel;                   // workspace [total_q][hq][top_k] int32, ascending, -1 padded
    unsigned long long out;                   // [total_q][hq][d] elements
    unsigned long long lse;                   // [total_q][hq] fp32
    unsigned long long cu_seqlens_q, cu_seqlens_k;   // int32 [batch + 1]
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;
    long long v_row_stride, v_head_stride;
    long long o_row_stride, o_head_stride;
    long long batch, hq, hkv;
    long long max_seqlen_q, max_seqlen_k, max_blocks;
    double softmax_scale;
    // Block-centric attention (attn_fwd impl 2) only; sizes in runtime/fwd.c (layout_for).
    // A chunk is chunk_rows query rows of one (sequence, head); a list is (chunk, key block).
    unsigned long long list_count;            // int32 [n_lists]: queries of the chunk that chose the block
    unsigned long long list_cursor;           // int32 [n_lists]: scatter positions
    unsigned long long tile_offset;           // int32 [n_lists + 1]: exclusive scan of 64-query tiles per list
    unsigned long long scan_carry;            // int32 [ceil(n_lists / 4096)]: tiles per segment of lists, scanned
    unsigned long long tile_meta;             // int32 [max tiles][8]: list, rows, q0, k0, len_q, len_k
    unsigned long long entries;               // uint32 [max tiles][64]: row << 7 | slot << 1 | last, per tile
    unsigned long long acc_o;                 // fp32 [ring_chunks * chunk_rows][d]: sum of exp2(s - ref) v
    unsigned long long acc_l;                 // fp32 [ring_chunks * chunk_rows]: sum of exp2(s - ref)
    unsigned long long row_ref;               // fp32 [total_q][hq]: ref, a lower bound of the row's max
                                              // scaled score (-inf: no selection; NaN: redo exactly)
    unsigned long long fallback;              // int32: some row's sums overflowed (the fallback runs)
    long long chunk_rows, row_chunks, ring_chunks, n_chunks, n_lists;
    long long chunk_begin, chunk_end;   // the chunks of this launch (tiles and finalize)
} mg_fwd_params;

#ifdef __cplusplus
#define MG_PARAMS_ASSERT(cond, what) static_assert(cond, what)
#else
#define MG_PARAMS_ASSERT(cond, what) _Static_assert(cond, what)
#endif
MG_PARAMS_ASSERT(sizeof(unsigned long long) == 8 && sizeof(long long) == 8 && sizeof(double) == 8,
                 "mg_fwd_params: every field type is 8 bytes wide");
MG_PARAMS_ASSERT(sizeof(mg_fwd_params) == 43 * 8, "mg_fwd_params: 43 fields of 8 bytes, no padding");
// The C side checks offsets too (NVRTC has no offsetof; the shared text fixes the order).
#ifdef MG_PARAMS_OFFSETOF
MG_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_fwd_params, cu_seqlens_k) == 10 * 8, "mg_fwd_params layout");
MG_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_fwd_params, softmax_scale) == 25 * 8, "mg_fwd_params layout");
MG_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_fwd_params, list_count) == 26 * 8, "mg_fwd_params layout");
MG_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_fwd_params, chunk_rows) == 36 * 8, "mg_fwd_params layout");
MG_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_fwd_params, chunk_end) == 42 * 8, "mg_fwd_params layout");
#endif
#undef MG_PARAMS_ASSERT

#endif
