%! -- wgmma helpers (sm_90a), include()d by the wgmma tile kernels (attn_fwd impl 3, attn_bwd
%! -- impl 3): the 128-byte-swizzled shared layout, matrix descriptors, the warpgroup's fence,
%! -- commit and wait, and m64nNk16 with fp32 accumulators for N = 16, 32, 64, 128.
% local WG_TY = spec.dtype == "bf16" and "bf16" or "f16"
% local function wg_regs(first, n)
%   local t = {}
%   for i = 0, n - 1 do t[#t + 1] = "%" .. (first + i) end
%   return table.concat(t, ", ")
% end
% local function wg_outs(name, n)
%   local t = {}
%   for i = 0, n - 1 do t[#t + 1] = '"+f"(' .. name .. '[' .. (i // 4) .. '][' .. (i % 4) .. '])' end
%   return table.concat(t, ", ")
% end

// Shared layout of every operand tile (rows x columns, 16-bit): column blocks of 64 elements,
// each rows x 128 bytes, and within a block the 16-byte chunk c of row r at c ^ (r % 8): the
// 128-byte swizzle that wgmma's descriptors name (atoms of 8 rows x 128 bytes, 1024-aligned).
template <int ROWS>
__device__ __forceinline__ int wg_chunk(int row, int chunk)
{
    return (chunk >> 3) * ROWS * 8 + row * 8 + ((chunk & 7) ^ (row & 7));
}

// Matrix descriptor: start address, leading and stride byte offsets (16-byte units), 128-byte swizzle.
__device__ __forceinline__ u64 wg_desc(unsigned addr, unsigned lead_bytes, unsigned stride_bytes)
{
    return (u64)((addr & 0x3ffffu) >> 4) | ((u64)(lead_bytes >> 4) << 16) | ((u64)(stride_bytes >> 4) << 32) |
           (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// Makes this thread's generic-proxy writes of shared memory (st.shared, cp.async that have
// landed) visible to wgmma's operand reads, which go through the async proxy.
__device__ __forceinline__ void wg_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void wg_hold(float (&d)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[i][e])::"memory");
}
% for _, n in ipairs({16, 32, 64, 128}) do

// D (64 x $(n)) = or += A (shared; TRANS_A 0: K-major, 1: M contiguous, 16-bit types only)
// B (shared; TRANS_B 0: K-major, 1: N contiguous).
template <int TRANS_B, int TRANS_A = 0>
__device__ __forceinline__ void wg_mma_ss(float (&d)[$(n // 8)][4], u64 desc_a, u64 desc_b, int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %$(n // 2 + 2), 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n$(n)k16.f32.$(WG_TY).$(WG_TY) "
                 "{$(wg_regs(0, n // 2))}, %$(n // 2), %$(n // 2 + 1), p, 1, 1, %$(n // 2 + 4), %$(n // 2 + 3);\n}\n"
                 : $(wg_outs("d", n // 2))
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_B), "n"(TRANS_A));
}

// D (64 x $(n)) += A (registers, mma.sync's A fragments) B (shared, N contiguous: transposed).
__device__ __forceinline__ void wg_mma_rs(float (&d)[$(n // 8)][4], const unsigned a[4], u64 desc_b)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %$(n // 2 + 5), 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n$(n)k16.f32.$(WG_TY).$(WG_TY) "
                 "{$(wg_regs(0, n // 2))}, {%$(n // 2), %$(n // 2 + 1), %$(n // 2 + 2), %$(n // 2 + 3)}, "
                 "%$(n // 2 + 4), p, 1, 1, 1;\n}\n"
                 : $(wg_outs("d", n // 2))
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
% end
