%! -- Shared device helpers, include()d by the kernel templates; no kernels of its own.
// ---- element type of the spec: $(spec.dtype) ----
% if spec.dtype == "bf16" then
typedef unsigned short elem_t;   // raw bf16 bits: no cuda_bf16.h needed under NVRTC
__device__ __forceinline__ float elem_to_float(elem_t x) { return __uint_as_float(((unsigned)x) << 16); }
__device__ __forceinline__ elem_t float_to_elem(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (elem_t)((u >> 16) | 0x40);   // keep NaN a NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
    return (elem_t)(u >> 16);
}
% else
typedef unsigned short elem_t;   // raw fp16 bits
__device__ __forceinline__ float elem_to_float(elem_t x) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f;
}
__device__ __forceinline__ elem_t float_to_elem(float f) {
    elem_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
% end

// Eight elements (16 bytes) at once: the widest aligned load of one thread.
struct elem8 { uint4 raw; };
__device__ __forceinline__ void load8(const elem_t *p, float out[8]) {
    uint4 r = *reinterpret_cast<const uint4 *>(p);
    unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = elem_to_float((elem_t)(w[i] & 0xffffu));
        out[2 * i + 1] = elem_to_float((elem_t)(w[i] >> 16));
    }
}
__device__ __forceinline__ void store8(elem_t *p, const float in[8]) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        w[i] = (unsigned)float_to_elem(in[2 * i]) | ((unsigned)float_to_elem(in[2 * i + 1]) << 16);
    *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

typedef unsigned long long u64;
#ifndef INFINITY   // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

// Everything a forward launch needs, passed by value. Every field is 8 bytes so that the C
// runtime's copy (runtime/fwd_params.h) has the same layout without padding rules to match.
struct FwdParams {
    u64 q, k, v;               // [total][heads][d] elements, strides below
    u64 conv_w;                // [hkv][conv_width][d] elements, or 0
    u64 kprime;                // workspace [total_k][hkv][d]: k after the key convolution
    u64 centroid;              // workspace [batch][max_blocks][hkv][d] fp32
    u64 sel;                   // workspace [total_q][hq][top_k] int32, ascending, -1 padded
    u64 out;                   // [total_q][hq][d] elements
    u64 lse;                   // [total_q][hq] fp32
    u64 cu_seqlens_q, cu_seqlens_k;   // int32 [batch + 1]
    long long q_row_stride, q_head_stride;
    long long k_row_stride, k_head_stride;
    long long v_row_stride, v_head_stride;
    long long o_row_stride, o_head_stride;
    long long batch, hq, hkv;
    long long max_seqlen_q, max_seqlen_k, max_blocks;
    double softmax_scale;
    // Block-centric attention (attn_fwd impl 2) only; sizes in runtime/fwd.c (layout_for).
    // A chunk is chunk_rows query rows of one (sequence, head); a list is (chunk, key block).
    u64 list_count;            // int32 [n_lists]: queries of the chunk that chose the block
    u64 list_cursor;           // int32 [n_lists]: scatter positions
    u64 tile_offset;           // int32 [n_lists + 1]: exclusive scan of 64-query tiles per list
    u64 scan_carry;            // int32 [ceil(n_lists / 4096)]: tiles per segment of lists, scanned
    u64 tile_meta;             // int32 [max tiles][8]: list, rows, q0, k0, len_q, len_k
    u64 entries;               // uint32 [max tiles][64]: row << 7 | slot << 1 | last, per tile
    u64 acc_o;                 // fp32 [ring_chunks * chunk_rows][d]: sum of exp2(s - max) v
    u64 acc_ml;                // [ring_chunks * chunk_rows][2]: row max (order-encoded), sum
    long long chunk_rows, row_chunks, ring_chunks, n_chunks, n_lists;
    long long chunk_begin, chunk_end;   // the chunks of this launch (tiles and finalize)
};

#define MOBA_HEAD_DIM $(spec.head_dim)
#define MOBA_BLOCK $(spec.block_size)
#define MOBA_TOP_K $(spec.top_k)
#define MOBA_CAUSAL $(spec.causal and 1 or 0)
#define MOBA_CONV_WIDTH $(spec.conv_width)
#define MOBA_GQA $(spec.gqa_group)
