// The decode parameter block (append and decode over a paged KV cache, docs/decode.md), passed
// by value to every decode kernel: the one definition that the C runtime (runtime/decode_params.h
// includes this file) and the kernels (decode.cu.tpl includes it) both compile. Every field is
// 8 bytes wide, so no padding rule can differ between the compilers; the asserts at the end
// check the layout in both. Plain C and CUDA C++: no template lines in this file.
#ifndef MOBAGEN_DECODE_PARAMS_DEF
#define MOBAGEN_DECODE_PARAMS_DEF

typedef struct mg_decode_params {
    // decode: q [total_q][hq][d], out likewise, lse [total_q][hq] fp32, sel [total_q][hq][top_k]
    // int32 (0: not written), cu_seqlens_q int32 [batch + 1]
    unsigned long long q, out, lse, sel, cu_seqlens_q;
    // append: new k, v [total_new][hkv][d], cu_seqlens_new int32 [batch + 1], conv_w [hkv][W][d]
    unsigned long long k_new, v_new, cu_seqlens_new, conv_w;
    // the cache: pages [n_pages][page_size][hkv][d]; page_table int32 [batch][max_pages];
    // seq_lens int32 [batch]; centroid_sum fp32 [batch][max_blocks][hkv][d]; error int32 or 0
    unsigned long long kprime_pages, v_pages, kraw_pages, page_table, seq_lens, centroid_sum, error;
    // decode workspace: per-chunk routing candidates (u64 keys), the kv head's union of selected
    // blocks (int32) with the rows that chose each (uint32 mask) and its size, split partials
    unsigned long long cand, uni_blocks, uni_masks, uni_count, part_o, part_ml;
    long long q_row_stride, out_row_stride, knew_row_stride, vnew_row_stride;
    long long batch, hq, hkv, n_pages, page_size, max_pages, max_blocks;
    long long max_q_len, max_new, rows, route_chunks, splits;
    double softmax_scale;
    // truncate: int32 [batch] tokens to drop from each sequence's end, or the lengths to keep
    // (exactly one is set)
    unsigned long long trunc_drop, trunc_new_lens;
    // decode: centroid blocks per routing CTA (a multiple of 32, at most the variant's
    // route_chunk; smaller where fewer CTAs would leave multiprocessors idle)
    long long route_chunk;
} mg_decode_params;

#ifdef __cplusplus
#define MG_DPARAMS_ASSERT(cond, what) static_assert(cond, what)
#else
#define MG_DPARAMS_ASSERT(cond, what) _Static_assert(cond, what)
#endif
MG_DPARAMS_ASSERT(sizeof(unsigned long long) == 8 && sizeof(long long) == 8 && sizeof(double) == 8,
                  "mg_decode_params: every field type is 8 bytes wide");
MG_DPARAMS_ASSERT(sizeof(mg_decode_params) == 42 * 8, "mg_decode_params: 42 fields of 8 bytes, no padding");
#ifdef MG_PARAMS_OFFSETOF
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, kprime_pages) == 9 * 8, "mg_decode_params layout");
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, cand) == 16 * 8, "mg_decode_params layout");
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, q_row_stride) == 22 * 8, "mg_decode_params layout");
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, softmax_scale) == 38 * 8, "mg_decode_params layout");
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, trunc_new_lens) == 40 * 8, "mg_decode_params layout");
MG_DPARAMS_ASSERT(MG_PARAMS_OFFSETOF(mg_decode_params, route_chunk) == 41 * 8, "mg_decode_params layout");
#endif
#undef MG_DPARAMS_ASSERT

#endif
