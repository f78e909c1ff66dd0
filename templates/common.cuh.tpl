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

% include("fwd_params.cuh.tpl")
typedef mg_fwd_params FwdParams;

#define MOBA_HEAD_DIM $(spec.head_dim)
#define MOBA_BLOCK $(spec.block_size)
#define MOBA_TOP_K $(spec.top_k)
#define MOBA_CAUSAL $(spec.causal and 1 or 0)
#define MOBA_CONV_WIDTH $(spec.conv_width)
#define MOBA_GQA $(spec.gqa_group)
