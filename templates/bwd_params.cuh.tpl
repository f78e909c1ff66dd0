// The backward's parameter block, passed by value to every backward kernel: the one definition
// that the C runtime (runtime/bwd_params.h includes this file) and the kernels
// (attn_bwd.cu.tpl includes it) both compile. Every field is 8 bytes wide, so no padding rule
// can differ between the compilers; the asserts at the end check the layout in both.
// Plain C and CUDA C++: no template lines in this file.
#ifndef MOBAGEN_BWD_PARAMS_DEF
#define MOBAGEN_BWD_PARAMS_DEF

typedef struct mg_bwd_params {
    unsigned long long q, k, v;               // [total][heads][d] elements; k: raw keys
    unsigned long long kprime;                // the keys attention read: k, or k' in the workspace
    unsigned long long out, lse;              // the forward's o and LSE
    unsigned long long dout, dlse;            // upstream gradients (dlse may be 0)
    unsigned long long sel;                   // [total_q][hq][top_k] int32
    unsigned long long cu_seqlens_q, cu_seqlens_k;
    unsigned long long conv_w;                // [hkv][conv_width][d] elements, or 0
    unsigned long long dq, dk, dv;            // outputs, elements
    unsigned long long dconv_w;               // output, fp32 [hkv][conv_width][d], or 0
    unsigned long long delta;                 // workspace fp32 [total_q][hq]: rowsum(dO o) - dLSE
    // The query lists (in the workspace, or in dq's memory before dq is written):
    unsigned long long entry_counter;         // int32: entries handed out so far
    unsigned long long list_count;            // int32 [n_lists]: entries of each list
    unsigned long long list_cursor;           // int32 [n_lists]: after the scatter, one past
                                              // each list's last entry
    unsigned long long entries;               // uint32, each list's entries in a row: row << 6 | slot
    unsigned long long dq_acc;                // fp32: [total_q][hq][d] (fast) or per-(query, slot)
                                              // partials [batch][chunk_rows][hq][top_k][d]
    unsigned long long dk_acc, dv_acc;        // fp32 [total_k][hkv][d]: dk' and dv across chunks
    unsigned long long dw_part;               // fp32 [batch][kconv tiles][hkv][conv_width][d]
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;    // of the raw keys
    long long kp_row_stride, kp_head_stride;  // of kprime
    long long v_row_stride, v_head_stride;
    long long o_row_stride, o_head_stride;
    long long do_row_stride, do_head_stride;
    long long dq_row_stride, dq_head_stride;
    long long dk_row_stride, dk_head_stride;
    long long dv_row_stride, dv_head_stride;
    long long batch, hq, hkv, total_q, total_k;
    long long max_seqlen_q, max_seqlen_k, max_blocks;
    long long chunk_rows, row_chunks, n_lists, kconv_tiles;
    long long chunk;                          // the row chunk of this launch (tiles, dq)
    long long deterministic;
    double softmax_scale;
} mg_bwd_params;

#ifdef __cplusplus
#define MG_BWD_PARAMS_ASSERT(cond, what) static_assert(cond, what)
#else
#define MG_BWD_PARAMS_ASSERT(cond, what) _Static_assert(cond, what)
#endif
MG_BWD_PARAMS_ASSERT(sizeof(unsigned long long) == 8 && sizeof(long long) == 8 && sizeof(double) == 8,
                     "mg_bwd_params: every field type is 8 bytes wide");
MG_BWD_PARAMS_ASSERT(sizeof(mg_bwd_params) == 58 * 8, "mg_bwd_params: 58 fields of 8 bytes, no padding");
// The C side checks offsets too (NVRTC has no offsetof; the shared text fixes the order).
#ifdef MG_PARAMS_OFFSETOF
MG_BWD_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_bwd_params, delta) == 16 * 8, "mg_bwd_params layout");
MG_BWD_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_bwd_params, q_row_stride) == 25 * 8, "mg_bwd_params layout");
MG_BWD_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_bwd_params, batch) == 43 * 8, "mg_bwd_params layout");
MG_BWD_PARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_bwd_params, softmax_scale) == 57 * 8, "mg_bwd_params layout");
#endif
#undef MG_BWD_PARAMS_ASSERT

#endif
