%! -- wgmma (sm_90a) helpers shared by the kernels that use it (attn_tiles_wgmma.cuh.tpl,
%! -- route_fast.cuh.tpl's impl 4): the 128-byte swizzled operand layout, its descriptors and the
%! -- warpgroup's fence, commit and wait.

// Shared layout of every operand tile (rows x head_dim, 16-bit): column blocks of 64 elements,
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

// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void wg_hold(float (&d)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[i][e])::"memory");
}
