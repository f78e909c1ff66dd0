%! -- Routing: gate scores q . centroid tile by tile, the top-k kept on chip per query, so the
%! -- [L, L/B] score matrix never reaches global memory. A CTA takes consecutive query rows of
%! -- one head and walks the centroid tiles of its kv head up to its last row's diagonal.
%! -- impl 3 (route_fast.cuh.tpl): 32 rows per warp on mma.sync against the centroids' high/low
%! -- split prepared by kconv_centroid, 2- or 3-stage cp.async tiles (fast_shape), a per-row threshold in registers
%! -- and a per-row heap in shared memory touched only by candidates that beat it.
%! -- impl 4 (sm_90a only): impl 3 with each warpgroup's score tiles on wgmma (q from registers as
%! -- the A operand, the centroid tile in 128-byte swizzled shared memory as B), the rest as impl 3.
%! -- impl 2: 64-row tiles, scores on mma.sync against the fp32 centroids split into a high and
%! -- a low part in the element type (error about 2^-16 of sum |q_i c_i|, fp32 accumulation).
%! -- impl 1: CUDA cores, one thread per row with its query in shared memory.
%! -- The runtime's default is the first valid point (block_m slowest, then impl): impl 4 with
%! -- the most rows per CTA on sm_90a, impl 3 wherever else it applies (sm_80+, head_dim 64 or 128).
%! knobs = { impl = {4, 3, 2, 1}, block_m = {256, 128, 64}, tile_n = {16}, warp_rows = {32, 16} }
%! function slots(spec)
%!   -- causal routing forces the own block, so the running list keeps only top_k - 1 others
%!   if spec.causal then return math.max(spec.top_k - 1, 1) end
%!   return spec.top_k
%! end
%! -- impl 3: heap entries per row (0 when causal top_k = 1: the own block alone)
%! function heap_slots(spec)
%!   if spec.causal then return spec.top_k - 1 end
%!   return spec.top_k
%! end
%! -- impl 3: the __launch_bounds__ minimum of CTAs per SM that caps registers at 128 a thread
%! -- for 32 rows per warp, 80 for 16 (given more, ptxas hoists tile addresses and grows to
%! -- 255 without running faster)
%! function min_ctas(spec, arch, p)
%!   local threads = p.block_m // p.warp_rows * 32
%!   return 65536 // (threads * (p.warp_rows == 32 and 128 or 80))
%! end
%! -- impl 3 shared memory: cp.async stages of 32 centroids (high and low rows), the heaps, a
%! -- staging row of scols + 1 floats per query row; the q tile aliases them first
%! function fast_smem(spec, p, stages, scols)
%!   local tiles = stages * 2 * 32 * spec.head_dim * 2
%!   local rows = heap_slots(spec) * 8 + (scols + 1) * 4
%!   return math.max(tiles + rows * p.block_m, p.block_m * spec.head_dim * 2)
%! end
%! -- impl 3's shape: 3 stages and a whole tile staged at once, or, where that leaves the SM
%! -- fewer CTAs than the registers allow (k = 32 at 256 rows: 143 KB, one CTA of 8 warps),
%! -- 2 stages and the tile staged in two halves of 16 columns (112 KB: two CTAs).
%! -- An SM holds the opt-in maximum plus 1 KB, each CTA reserves 1 KB.
%! function fast_shape(spec, p)
%!   local function ctas(bytes) return math.min(min_ctas(spec, arch, p), (arch.max_smem + 1024) // (bytes + 1024)) end
%!   if ctas(fast_smem(spec, p, 2, 16)) > ctas(fast_smem(spec, p, 3, 32)) then return 2, 16 end
%!   return 3, 32
%! end
%! function smem_bytes(spec, p)
%!   if p.impl >= 3 then
%!     local stages, scols = fast_shape(spec, p)
%!     return fast_smem(spec, p, stages, scols)
%!   end
%!   local lists = slots(spec) * p.block_m * 8             -- score and index per slot
%!   if p.impl == 2 then
%!     -- q tile, centroid high and low tiles (64 blocks), a 64 x 65 fp32 score tile
%!     return (p.block_m + 128) * spec.head_dim * 2 + p.block_m * 65 * 4 + lists
%!   end
%!   local q_tile = p.block_m * (spec.head_dim + 1) * 4    -- +1 float per row: no bank conflicts
%!   local c_tile = p.tile_n * spec.head_dim * 4
%!   return q_tile + c_tile + lists
%! end
%! function valid(spec, arch, p)
%!   if p.impl < 1 or p.impl > 4 then return false, "impl is 1 (CUDA cores), 2 or 3 (tensor cores, mma.sync) or 4 (sm_90a, wgmma)" end
%!   if p.impl == 4 and arch.name ~= "sm_90a" then return false, "impl 4 needs wgmma (sm_90a only)" end
%!   if p.tile_n % 4 ~= 0 then return false, "tile_n must be a multiple of 4" end
%!   if p.block_m % 32 ~= 0 or p.block_m > 1024 then
%!     return false, "block_m must be a multiple of 32 up to 1024"
%!   end
%!   if p.impl >= 2 then
%!     if p.tile_n ~= 16 then return false, "impl 2 to 4 have their own tiles; leave tile_n at 16" end
%!     if spec.head_dim ~= 64 and spec.head_dim ~= 128 then
%!       return false, "impl 2 to 4 support head_dim 64 and 128"
%!     end
%!     if arch.sm < 80 then return false, "impl 2 and 3 need mma.sync (sm_80+)" end
%!   end
%!   if p.impl >= 3 then
%!     if p.warp_rows ~= 16 and p.warp_rows ~= 32 then return false, "impl 3 and 4 run 16 or 32 rows per warp" end
%!     if p.block_m ~= 4 * p.warp_rows and p.block_m ~= 8 * p.warp_rows then
%!       return false, "impl 3 and 4 run 4 or 8 warps (block_m / warp_rows)"
%!     end
%!   elseif p.warp_rows ~= 32 then
%!     return false, "warp_rows is an impl 3 and 4 knob; leave it at 32"
%!   end
%!   if p.impl == 2 and p.block_m ~= 64 then return false, "impl 2 takes 64 rows per CTA" end
%!   if p.impl == 1 and p.block_m > 128 then return false, "impl 1 takes at most 128 rows per CTA" end
%!   if smem_bytes(spec, p) > arch.max_smem then
%!     return false, "needs " .. smem_bytes(spec, p) .. " bytes of shared memory, " .. arch.name .. " has " .. arch.max_smem
%!   end
%!   return true
%! end
%! function kernels(spec, p)
%!   if p.impl >= 3 then
%!     return { main = "moba_route_fast<" .. p.block_m // p.warp_rows .. ", " .. p.warp_rows // 16 .. ", " .. min_ctas(spec, arch, p) .. ">" }
%!   end
%!   if p.impl == 2 then return { main = "moba_route_mma" } end
%!   return { main = "moba_route<" .. p.block_m .. ", " .. p.tile_n .. ">" }
%! end
%! function launch(spec, p)
%!   local threads = p.impl == 2 and 128 or p.impl >= 3 and p.block_m // p.warp_rows * 32 or p.block_m
%!   return { threads = threads, smem = smem_bytes(spec, p), rows = p.block_m }
%! end
% include("common.cuh.tpl")
% local S = slots(spec)

// Scores are fp32 dot products without the softmax scale (moba.md, routing). A query keeps
// its best $(S) block(s) in a list sorted by (score desc, index asc) in shared memory, one
// column per row: slot i of row r at [i * rows + r].
#define ROUTE_SLOTS $(S)

struct TopList {
    float *score;
    int *block;
    int stride, col, count;
    float threshold;                               // score of the last slot once the list is full
};

// Blocks arrive in ascending order, so an equal score never displaces (the lower index wins).
__device__ __forceinline__ void topk_offer(TopList &t, float s, int blk)
{
    if (t.count == ROUTE_SLOTS && !(s > t.threshold)) return;
    int pos = t.count < ROUTE_SLOTS ? t.count : ROUTE_SLOTS - 1;
    while (pos > 0 && t.score[(pos - 1) * t.stride + t.col] < s) {
        t.score[pos * t.stride + t.col] = t.score[(pos - 1) * t.stride + t.col];
        t.block[pos * t.stride + t.col] = t.block[(pos - 1) * t.stride + t.col];
        pos--;
    }
    t.score[pos * t.stride + t.col] = s;
    t.block[pos * t.stride + t.col] = blk;
    if (t.count < ROUTE_SLOTS) t.count++;
    if (t.count == ROUTE_SLOTS) t.threshold = t.score[(ROUTE_SLOTS - 1) * t.stride + t.col];
}

// The chosen blocks of one row, ascending, -1 padded; causal adds the own block (t >= 0).
__device__ __forceinline__ void emit_selection(const TopList &t, int t_pos, int own, int *sel)
{
    int chosen[MOBA_TOP_K];
    int n = 0;
% if spec.causal then
    if (t_pos >= 0) {
        for (int i = 0; i < t.count && n < MOBA_TOP_K - 1; i++) chosen[n++] = t.block[i * t.stride + t.col];
        chosen[n++] = own;
    }
% else
    for (int i = 0; i < t.count; i++) chosen[n++] = t.block[i * t.stride + t.col];
% end
    for (int i = 1; i < n; i++) {                  // insertion sort: n <= top_k <= 64
        const int v = chosen[i];
        int j = i - 1;
        while (j >= 0 && chosen[j] > v) {
            chosen[j + 1] = chosen[j];
            j--;
        }
        chosen[j + 1] = v;
    }
    for (int i = 0; i < MOBA_TOP_K; i++) sel[i] = i < n ? chosen[i] : -1;
}

% if point.impl >= 3 then
%   include("route_fast.cuh.tpl")
% elseif point.impl == 2 then
%   include("route_mma.cuh.tpl")
% else
template <int BLOCK_M, int TILE_N>
__global__ void __launch_bounds__(BLOCK_M) moba_route(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, QS = D + 1, SLOTS = ROUTE_SLOTS;
    extern __shared__ float smem[];
    float *q_tile = smem;                          // [BLOCK_M][D + 1]
    float *c_tile = q_tile + BLOCK_M * QS;         // [D][TILE_N]: a dim's TILE_N values adjacent
    float *best_score = c_tile + D * TILE_N;       // [SLOTS][BLOCK_M]
    int *best_block = reinterpret_cast<int *>(best_score + SLOTS * BLOCK_M);

    const int h = blockIdx.y, b = blockIdx.z, kvh = h / MOBA_GQA;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    const int q0 = cu_q[b], len_q = cu_q[b + 1] - q0;
    const int len_k = cu_k[b + 1] - cu_k[b];
    const int row0 = blockIdx.x * BLOCK_M;
    if (row0 >= len_q) return;
    const int n_blocks = (len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
    const int tid = threadIdx.x, row = row0 + tid;
    const bool active = row < len_q;
    const int t = row + len_k - len_q;             // key position of this query (bottom-right)

    // Queries of this tile into shared memory as fp32.
    const elem_t *q = reinterpret_cast<const elem_t *>(p.q);
    for (int i = tid; i < BLOCK_M * (D / 8); i += BLOCK_M) {
        const int r = i / (D / 8), c = (i % (D / 8)) * 8;
        float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (row0 + r < len_q) load8(q + (long long)(q0 + row0 + r) * p.q_row_stride + h * p.q_head_stride + c, v);
#pragma unroll
        for (int j = 0; j < 8; j++) q_tile[r * QS + c + j] = v[j];
    }

    // Candidate blocks of this query: [0, limit).
% if spec.causal then
    // Causal: whole blocks strictly before the own block; the own block is added at the end.
    const int own = t >= 0 ? t / MOBA_BLOCK : -1;
    const int limit = active && t >= 0 ? own : 0;
    const int last_row = min(row0 + BLOCK_M, len_q) - 1;
    const int tile_limit = max(0, (last_row + len_k - len_q) / MOBA_BLOCK);
% else
    const int limit = active ? n_blocks : 0;
    const int tile_limit = n_blocks;
% end
    TopList top = {best_score, best_block, BLOCK_M, tid, 0, -INFINITY};

    const float *centroid = reinterpret_cast<const float *>(p.centroid) +
                            ((long long)b * p.max_blocks * p.hkv + kvh) * D;
    for (int j0 = 0; j0 < tile_limit; j0 += TILE_N) {
        __syncthreads();                           // previous tile fully consumed
        for (int i = tid; i < TILE_N * D; i += BLOCK_M) {
            const int j = i / D, c = i % D;
            c_tile[c * TILE_N + j] = j0 + j < n_blocks ? centroid[(long long)(j0 + j) * p.hkv * D + c] : 0.f;
        }
        __syncthreads();
        float acc[TILE_N];
#pragma unroll
        for (int j = 0; j < TILE_N; j++) acc[j] = 0.f;
#pragma unroll 4
        for (int c = 0; c < D; c++) {
            const float qc = q_tile[tid * QS + c];
#pragma unroll
            for (int j = 0; j < TILE_N; j += 4) {
                const float4 cv = *reinterpret_cast<const float4 *>(&c_tile[c * TILE_N + j]);
                acc[j] = fmaf(qc, cv.x, acc[j]);
                acc[j + 1] = fmaf(qc, cv.y, acc[j + 1]);
                acc[j + 2] = fmaf(qc, cv.z, acc[j + 2]);
                acc[j + 3] = fmaf(qc, cv.w, acc[j + 3]);
            }
        }
#pragma unroll
        for (int j = 0; j < TILE_N; j++)
            if (j0 + j < limit) topk_offer(top, acc[j], j0 + j);
    }
    if (!active) return;
% if not spec.causal then
    const int own = -1;
% end
    emit_selection(top, t, own, reinterpret_cast<int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K);
}
% end
