%! -- Attention over each query's selected blocks with an online softmax; writes o and LSE.
%! -- impl 2 (tensor cores, attn_tiles.cuh.tpl): the selection is transposed into query lists per
%! -- (chunk of query rows, key block); 64-query tiles of a list meet their block's keys on
%! -- mma.sync once: exp2(S - ref) V added into one fp32 row per query, ref a lower bound of the
%! -- row's max known before any tile runs, for a bounded ring of chunks at a time; rows whose
%! -- sums overflow are redone exactly by the fallback kernel. impl 3 (sm_90a only,
%! -- attn_tiles_wgmma.cuh.tpl): impl 2's lists, workspace and epilogue, with a producer warp
%! -- gathering each tile's queries and streaming its keys and values through an mbarrier ring,
%! -- and one warpgroup computing on wgmma. impl 1 (CUDA cores): one warp per (query row, head)
%! -- streams that query's own blocks; it reads each selected block once per query, with no
%! -- reuse (the same row function is impl 2's and impl 3's fallback).
%! knobs = { impl = {3, 2, 1}, warps = {4, 8} }
%! function valid(spec, arch, p)
%!   if p.impl < 1 or p.impl > 3 then
%!     return false, "impl is 1 (CUDA cores), 2 (tensor cores, mma.sync) or 3 (sm_90a, wgmma)"
%!   end
%!   if p.warps < 1 or p.warps > 32 then return false, "warps must be in 1..32" end
%!   if spec.head_dim % 32 ~= 0 then return false, "head_dim must be a multiple of 32" end
%!   if p.impl >= 2 then
%!     if p.warps ~= 4 then return false, "impl " .. p.impl .. " runs 4 warps" end
%!     if spec.head_dim ~= 64 and spec.head_dim ~= 128 then
%!       return false, "impl " .. p.impl .. " supports head_dim 64 and 128"
%!     end
%!   end
%!   if p.impl == 2 then
%!     if arch.sm < 80 then return false, "impl 2 needs mma.sync with bf16 (sm_80+)" end
%!     if tiles_smem(spec) > arch.max_smem then return false, "impl 2 does not fit shared memory" end
%!   end
%!   if p.impl == 3 then
%!     if arch.name ~= "sm_90a" then return false, "impl 3 needs wgmma (sm_90a only)" end
%!     if wg_slots(spec) < 3 then return false, "impl 3 needs 3 key/value slots in shared memory" end
%!   end
%!   return true
%! end
%! function tile_n(spec)
%!   if spec.block_size % 64 == 0 then return 64 elseif spec.block_size % 32 == 0 then return 32 end
%!   return 16
%! end
%! -- TilesSmem: double-buffered q (64 rows) and k, v (tile_n rows), four tile descriptions
%! -- (32 bytes), four entry lists (64 x 4 bytes) and four tile ids.
%! function tiles_smem(spec)
%!   return 2 * (64 + 2 * tile_n(spec)) * spec.head_dim * 2 + 4 * 32 + 4 * 64 * 4 + 4 * 4
%! end
%! -- Rows (and threads) per CTA of the list kernels: one chunk's rows at most per CTA.
%! function list_rows() return 1024 end
%! -- CTAs per multiprocessor of the tile kernel: 3 where 64-key steps are not needed (fewer
%! -- registers, a third of shared memory less), so that a third CTA hides the others' latency.
%! function tile_ctas(spec)
%!   if tile_n(spec) <= 32 then return 3 end
%!   return 2
%! end
%! -- impl 3's ring: as many key or value slots (tile_n rows each) as fit beside two 64-row query
%! -- buffers in a tile_ctas share of the multiprocessor's 228 KB (1 KB reserved per CTA, 1 KB
%! -- for descriptions, entries and barriers), at most 8.
%! function wg_slots(spec)
%!   local budget = 233472 // tile_ctas(spec) - 1024
%!   local q_bytes = 2 * 64 * spec.head_dim * 2
%!   return math.min(8, (budget - q_bytes - 1024) // (tile_n(spec) * spec.head_dim * 2))
%! end
%! -- WgSmem: the query buffers and the ring (1024-byte aligned swizzle atoms), two descriptions,
%! -- two entry lists, and 8-byte mbarriers: two pairs for the queries, a pair per slot.
%! function wg_smem(spec)
%!   local s = wg_slots(spec)
%!   return (2 * 64 + s * tile_n(spec)) * spec.head_dim * 2 + 2 * 32 + 2 * 64 * 4 + 8 * (4 + 2 * s)
%! end
%! function kernels(spec, p)
%!   if p.impl >= 2 then
%!     return { main = p.impl == 3 and "moba_attn_tiles_wgmma" or "moba_attn_tiles",
%!              fallback = "moba_attn_fallback<4>",
%!              finalize = "moba_attn_finalize<4>", count = "moba_attn_count<" .. list_rows() .. ">",
%!              scan_reduce = "moba_attn_scan_reduce", scan_top = "moba_attn_scan_top",
%!              scan_down = "moba_attn_scan_down", scatter = "moba_attn_scatter<" .. list_rows() .. ">" }
%!   end
%!   return { main = "moba_attn_fwd<" .. p.warps .. ">" }
%! end
%! function launch(spec, p)
%!   if p.impl == 2 then
%!     -- main: a persistent grid of ctas_per_sm per multiprocessor
%!     return { threads = 128, smem = tiles_smem(spec), ctas_per_sm = tile_ctas(spec), rows = 64, list_rows = list_rows() }
%!   end
%!   if p.impl == 3 then
%!     -- main: a consumer warpgroup and a producer warp per CTA, persistent as impl 2's
%!     return { threads = 160, smem = wg_smem(spec), ctas_per_sm = tile_ctas(spec), rows = 64, list_rows = list_rows() }
%!   end
%!   return { threads = 32 * p.warps, smem = 0, rows = p.warps }
%! end
% include("common.cuh.tpl")
% local dpl = spec.head_dim // 32

// One (query row, head) exactly, by one warp: stream the row's selected blocks with an online
// softmax (CUDA cores), write o and the LSE. q_s: the warp's head_dim floats of shared memory.
__device__ __forceinline__ void moba_attn_row(const FwdParams &p, float *q_s, int b, int h, int row, int lane)
{
    constexpr int D = MOBA_HEAD_DIM, DPL = $(dpl);   // output dims per lane
    constexpr float LOG2E = 1.4426950408889634f;
    const int kvh = h / MOBA_GQA;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    const int q0 = cu_q[b], len_q = cu_q[b + 1] - q0;
    const int k0 = cu_k[b], len_k = cu_k[b + 1] - k0;
    const int t = row + len_k - len_q;

    // q scaled so that exp2 replaces exp: s2 = log2(e) * scale * q.k
    const elem_t *q = reinterpret_cast<const elem_t *>(p.q) + (long long)(q0 + row) * p.q_row_stride + h * p.q_head_stride;
    const float qscale = (float)p.softmax_scale * LOG2E;
    for (int c = lane; c < D; c += 32) q_s[c] = elem_to_float(q[c]) * qscale;
    __syncwarp();
% if spec.conv_width > 0 then
    const elem_t *kbase = reinterpret_cast<const elem_t *>(p.kprime) + kvh * D;
    const long long k_row_stride = p.hkv * D;
% else
    const elem_t *kbase = reinterpret_cast<const elem_t *>(p.k) + kvh * p.k_head_stride;
    const long long k_row_stride = p.k_row_stride;
% end
    const elem_t *vbase = reinterpret_cast<const elem_t *>(p.v) + kvh * p.v_head_stride;
    const int *sel = reinterpret_cast<const int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K;

    float m = -INFINITY, l = 0.f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;

    for (int s = 0; s < MOBA_TOP_K; s++) {
        const int blk = sel[s];
        if (blk < 0) break;                                   // ascending, -1 padded
        const int begin = blk * MOBA_BLOCK;
        int end = min(begin + MOBA_BLOCK, len_k);
% if spec.causal then
        end = min(end, t + 1);                                // token-level causal mask
% end
        for (int key0 = begin; key0 < end; key0 += 32) {
            const int key = key0 + lane;
            float s2 = -INFINITY;
            if (key < end) {
                const elem_t *kr = kbase + (long long)(k0 + key) * k_row_stride;
                float dot = 0.f;
#pragma unroll
                for (int c = 0; c < D; c += 8) {
                    float kv[8];
                    load8(kr + c, kv);
#pragma unroll
                    for (int j = 0; j < 8; j++) dot = fmaf(q_s[c + j], kv[j], dot);
                }
                s2 = dot;
            }
            float cmax = s2;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, o));
            const float m_new = fmaxf(m, cmax);               // finite: the chunk has a valid key
            const float rescale = exp2f(m - m_new);
            const float prob = key < end ? exp2f(s2 - m_new) : 0.f;
            float psum = prob;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
            l = l * rescale + psum;
            m = m_new;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] *= rescale;
            const int n_keys = min(32, end - key0);
            for (int j = 0; j < n_keys; j++) {
                const float pj = __shfl_sync(0xffffffffu, prob, j);
                const elem_t *vr = vbase + (long long)(k0 + key0 + j) * p.v_row_stride + lane * DPL;
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[i] = fmaf(pj, elem_to_float(vr[i]), acc[i]);
            }
        }
    }

    elem_t *out = reinterpret_cast<elem_t *>(p.out) + (long long)(q0 + row) * p.o_row_stride + h * p.o_head_stride;
    const float inv = l > 0.f ? 1.f / l : 0.f;                // no visible key: o = 0
#pragma unroll
    for (int i = 0; i < DPL; i++) out[lane * DPL + i] = float_to_elem(acc[i] * inv);
    if (lane == 0) {
        float *lse = reinterpret_cast<float *>(p.lse);
        lse[(long long)(q0 + row) * p.hq + h] = l > 0.f ? (m + __log2f(l)) * 0.6931471805599453f : -INFINITY;
    }
    __syncwarp();   // q_s may be refilled for the warp's next row
}

% if point.impl >= 2 then
%   include("attn_tiles.cuh.tpl")
% else

template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) moba_attn_fwd(const FwdParams p)
{
    __shared__ float q_smem[WARPS][MOBA_HEAD_DIM];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int row = blockIdx.x * WARPS + warp;
    if (row >= cu_q[blockIdx.z + 1] - cu_q[blockIdx.z]) return;
    moba_attn_row(p, q_smem[warp], blockIdx.z, blockIdx.y, row, lane);
}
% end
