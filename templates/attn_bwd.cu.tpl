%! -- The backward pass (docs/backward.md): dq, dk, dv of the attention over the selected blocks,
%! -- then dk and dw through the key convolution. Key-block centric, so that dk' and dv stay on
%! -- chip: the selection is transposed into lists of (query row, slot) per (row chunk, sequence,
%! -- query head, key block); one CTA per key tile of tile_n keys walks the 64-query gathered
%! -- tiles of the lists of every query head of its GQA group on mma.sync and accumulates
%! -- dV += P^T dO and dK' += dS^T Q in registers; dQ = dS K' leaves through shared memory, as
%! -- fp32 reductions into one row per query (fast), or as plain stores into one partial row per
%! -- (query, slot) that a finalize kernel sums in slot order (deterministic).
%! -- Head dims above 128 are split in parts of at most 128 output columns per CTA (S and dP
%! -- still use every column).
%! -- impl 2 runs every product on mma.sync (sm_80+); impl 3 (sm_90a) runs them on wgmma: a
%! -- warpgroup owns 64 keys, computes S^T = K' Q^T and dP^T = V dO^T with both operands in shared
%! -- memory, dV += P^T dO and dK' += dS^T Q with P^T and dS^T from its accumulator registers, and
%! -- dQ = dS K' from shared memory, 64 columns a warpgroup at a time (so tile_n 64 or 128 only).
%! -- impl 4 (sm_90a, tile_n 16 and 32) runs them on wgmma with the queries as M: one warpgroup per
%! -- CTA, S = Q K'^T and dP = dO V^T from shared memory, dQ = dS K' with dS from registers,
%! -- dV^T += dO^T P and dK'^T += Q^T dS with A = dO^T, Q^T from the tiles (transposed A) and
%! -- B = P^T, dS^T stored by the warpgroup. It measured no faster than impl 2 at B32 and B16 on an
%! -- H100 (bench/NOTES.md "Backward v7"), so it comes after impl 2: selectable, not the default.
%! knobs = { impl = {3, 2, 4}, tile_n = {128, 64, 32, 16} }
%! function dparts(spec) return (spec.head_dim + 127) // 128 end
%! -- K' and V tiles, Q and dO tiles per stage, the dS tile, per stage 64 x 12 bytes of row data
%! -- (LSE, D', causal position) and the least causal position of each pass's rows, and the
%! -- entries of three tiles; impl 4 (queries as M) also the P^T tile
%! function bwd_smem(spec, p, stages)
%!   local d = spec.head_dim
%!   local score_tiles = p.impl == 4 and 2 or 1
%!   return (2 * p.tile_n * d + stages * 2 * 64 * d + score_tiles * 64 * p.tile_n) * 2 + stages * (64 * 12 + 16) + 3 * 64 * 4
%! end
%! -- Warps: 16 keys each, and below 64 keys per CTA also a slice of the 64-query tile each
%! -- (tile_n queries), so that every CTA has 4 warps or more: at 255 registers a thread an SM
%! -- holds 8 warps, and two CTAs of tile_n / 16 warps would leave it with 2 or 4.
%! function bwd_warps(p) return p.tile_n // 16 * (64 // math.min(64, p.tile_n)) end
%! function bwd_stages(spec, arch, p)
%!   if bwd_smem(spec, p, 2) <= arch.max_smem then return 2 end
%!   return 1
%! end
%! function valid(spec, arch, p)
%!   if spec.block_size % p.tile_n ~= 0 then return false, "tile_n must divide block_size" end
%!   if p.tile_n == 16 and spec.block_size % 32 == 0 and bwd_smem(spec, {tile_n = 32}, 1) <= arch.max_smem then
%!     return false, "tile_n 16 only where 32 does not divide block_size or does not fit shared memory"
%!   end
%!   if arch.sm < 80 then return false, "the backward needs mma.sync with bf16 (sm_80+)" end
%!   if spec.head_dim % 32 ~= 0 then return false, "head_dim must be a multiple of 32" end
%!   if bwd_smem(spec, p, 1) > arch.max_smem then return false, "does not fit shared memory" end
%!   if p.impl ~= 2 and p.impl ~= 3 and p.impl ~= 4 then
%!     return false, "impl is 2 (mma.sync), 3 or 4 (sm_90a, wgmma with keys or queries as M)"
%!   end
%!   if p.impl >= 3 then
%!     if arch.name ~= "sm_90a" then return false, "impl " .. p.impl .. " needs wgmma (sm_90a only)" end
%!     if p.impl == 3 and p.tile_n < 64 then return false, "impl 3 needs tile_n 64 or 128 (a warpgroup owns 64 keys)" end
%!     if p.impl == 4 and p.tile_n >= 64 then return false, "impl 4 needs tile_n 16 or 32 (queries as M, one warpgroup)" end
%!     if spec.head_dim ~= 64 and spec.head_dim ~= 128 then
%!       return false, "impl " .. p.impl .. " supports head_dim 64 and 128"
%!     end
%!   end
%!   return true
%! end
%! -- rows per CTA of the list kernels (count, scatter): the runtime launches them with the
%! -- manifest's list_rows, the kernels are compiled for it
%! function bwd_list_rows() return 1024 end
%! function kernels(spec, p)
%!   return { main = "moba_bwd_tiles", bwd_count = "moba_bwd_count",
%!            bwd_alloc = "moba_bwd_alloc", bwd_scatter = "moba_bwd_scatter", bwd_sort = "moba_bwd_sort",
%!            bwd_dq = "moba_bwd_dq", bwd_kconv = "moba_bwd_kconv", bwd_dw = "moba_bwd_dw" }
%! end
%! function launch(spec, p)
%!   return { threads = bwd_warps(p) * 32, smem = bwd_smem(spec, p, bwd_stages(spec, arch, p)), rows = p.tile_n,
%!            list_rows = bwd_list_rows() }
%! end
% include("common.cuh.tpl")
% include("mma.cuh.tpl")
% include("bwd_params.cuh.tpl")
% if point.impl >= 3 then
%   include("wgmma.cuh.tpl")
% end
typedef mg_bwd_params BwdParams;
#define BWD_KT $(point.tile_n)                 // keys per CTA tile
#define BWD_KG (BWD_KT / 16)                  // key groups of 16 keys, one per warp of a query slice
#define BWD_QW (BWD_KT < 64 ? BWD_KT : 64)    // queries per warp of each 64-query tile
#define BWD_QS (64 / BWD_QW)                  // query slices
#define BWD_NW (BWD_KG * BWD_QS)              // warps: $(bwd_warps(point))
#define BWD_STAGES $(bwd_stages(spec, arch, point))
#define BWD_WGMMA $(point.impl >= 3 and 1 or 0)   // impl 3, 4: wgmma
#define BWD_WGQ $(point.impl == 4 and 1 or 0)   // impl 4: wgmma with queries as M (tile_n 16, 32)
#define BWD_NDP $(dparts(spec))                // parts of the head dim per key tile
#define BWD_DP (MOBA_HEAD_DIM / BWD_NDP)      // output columns per CTA
#define BWD_SORT_MAX 8192                     // the deterministic mode's longest list (rows per chunk)
#define BWD_KCONV_ROWS 256                    // key rows per CTA of the conv backward
#define BWD_ROW_THREADS 128                   // threads of the per-row kernels
#define BWD_LIST_ROWS $(bwd_list_rows())                  // rows (threads) per CTA of the list kernels
#define BWD_LIST_BINS 8192                    // key blocks counted in shared memory per pass
static_assert(BWD_DP % 16 == 0, "each part of the head dim is whole 16-column mma tiles");

// Two fp32 additions into global memory, done in L2 (one vector reduction on sm_90).
__device__ __forceinline__ void bwd_red_add2(float *a, float x, float y)
{
% if arch.sm >= 90 then
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(a), "f"(x), "f"(y) : "memory");
% else
    atomicAdd(a, x);
    atomicAdd(a + 1, y);
% end
}

% if arch.sm >= 90 then
// Four fp32 additions into global memory (16-byte aligned), one vector reduction in L2.
__device__ __forceinline__ void bwd_red_add4(float *a, float x, float y, float z, float w)
{
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(a), "f"(x), "f"(y), "f"(z), "f"(w) : "memory");
}
% end

// 4 bytes global -> shared, asynchronously (cp.async of 4 bytes goes through L1: .ca).
__device__ __forceinline__ void bwd_cp_async4(void *dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

// Rows of CH 16-byte chunks: the chunk index xor (row % 8) within each whole group of 8 chunks
// spreads the rows one ldmatrix reads over all banks.
template <int CH>
__device__ __forceinline__ int bsw(int row, int c)
{
    if (CH >= 8) return ((c & ~7) + 8 <= CH) ? (c ^ (row & 7)) : c;
    return c ^ (row & (CH - 1));
}

// Where chunk c of row `row` of a ROWS x CH-chunk tile lies in shared memory: impl 2's rows of
// bsw, impl 3's column blocks of 64 elements in wgmma's 128-byte swizzle (wg_chunk).
template <int ROWS, int CH>
__device__ __forceinline__ int bwd_at(int row, int c)
{
#if BWD_WGMMA
    return wg_chunk<ROWS>(row, c);
#else
    return row * CH + bsw<CH>(row, c);
#endif
}

// This thread's cp.async have landed (and, for wgmma, are visible to its operand reads, which go
// through the async proxy).
__device__ __forceinline__ void bwd_cp_landed()
{
    cp_async_wait_all();
#if BWD_WGMMA
    wg_proxy_fence();
#endif
}

__device__ __forceinline__ void bwd_seq(const BwdParams &p, int b, int &q0, int &len_q, int &k0, int &len_k)
{
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    q0 = cu_q[b];
    len_q = cu_q[b + 1] - q0;
    k0 = cu_k[b];
    len_k = cu_k[b + 1] - k0;
}

// The usable entries of a selection row, as docs/backward.md defines them for the forward's
// ascending rows: in range, each greater than the last one used (-1 padding and repeats drop).
template <class F>
__device__ __forceinline__ void for_each_block(const int *sel, int n_blocks, F f)
{
    int last = -1;
    for (int s = 0; s < MOBA_TOP_K; s++) {
        const int blk = sel[s];
        if (blk > last && blk < n_blocks) {
            f(s, blk);
            last = blk;
        }
    }
}

// List of (row chunk, sequence, query head, key block): the lists of one key block's GQA group
// are adjacent, so a CTA walks them in one range.
__device__ __forceinline__ long long bwd_list(const BwdParams &p, int rc, int b, int h, int blk)
{
    const int kvh = h / MOBA_GQA, g = h % MOBA_GQA;
    return ((((long long)rc * p.batch + b) * p.hkv + kvh) * p.max_blocks + blk) * MOBA_GQA + g;
}

// The list kernels' CTA: BWD_LIST_ROWS consecutive rows of one (sequence, head). Such rows pick
// few distinct lists, so the entries of the rows in the chunk of the CTA's first row are counted
// per key block in shared memory first, and each distinct list costs one global atomic per CTA
// instead of one per entry. Rows of a later chunk (a CTA across a chunk boundary, deterministic
// mode) go to global memory directly. Key blocks are counted in passes of BWD_LIST_BINS.
struct BwdListCta {
    int q0, len_q, k0, len_k;
    int row, rc, rc0, n_blocks;
    bool mine;   // this thread has a row
};

__device__ __forceinline__ bool bwd_list_cta(const BwdParams &p, BwdListCta &c)
{
    bwd_seq(p, blockIdx.z, c.q0, c.len_q, c.k0, c.len_k);
    const int row0 = blockIdx.x * BWD_LIST_ROWS;
    c.row = row0 + threadIdx.x;
    c.mine = c.row < c.len_q;
    c.rc = c.row / (int)p.chunk_rows;
    c.rc0 = row0 / (int)p.chunk_rows;
    c.n_blocks = (c.len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
    return row0 < c.len_q;
}

// hist[blk - w0] = the entries of this CTA's first-chunk rows in blocks [w0, w1); other(s, blk)
// for every other entry in that range (other chunks' rows).
template <class F>
__device__ __forceinline__ void bwd_list_pass(const BwdListCta &c, const int *sel, int w0, int w1, int *hist, F other)
{
    for (int i = threadIdx.x; i < BWD_LIST_BINS; i += BWD_LIST_ROWS) hist[i] = 0;
    __syncthreads();
    if (c.mine)
        for_each_block(sel, c.n_blocks, [&](int s, int blk) {
            if (blk < w0 || blk >= w1) return;
            if (c.rc == c.rc0) atomicAdd(&hist[blk - w0], 1);
            else other(s, blk);
        });
    __syncthreads();
}

// 1. Per (row, head): D'_t = rowsum(dO_t o_t) - dLSE_t (0 for a row without keys, LSE = -inf)
// and the row's entries counted into its lists.
__global__ void __launch_bounds__(BWD_LIST_ROWS) moba_bwd_count(const BwdParams p)
{
    __shared__ int hist[BWD_LIST_BINS];
    constexpr int D = MOBA_HEAD_DIM;
    const int h = blockIdx.y, b = blockIdx.z;
    BwdListCta c;
    if (!bwd_list_cta(p, c)) return;   // the whole CTA: every barrier below is reached by all
    const long long at = ((long long)c.q0 + c.row) * p.hq + h;
    if (c.mine) {
        const long long qr = c.q0 + c.row;
        const elem_t *o = reinterpret_cast<const elem_t *>(p.out) + qr * p.o_row_stride + h * p.o_head_stride;
        const elem_t *g = reinterpret_cast<const elem_t *>(p.dout) + qr * p.do_row_stride + h * p.do_head_stride;
        float sum = 0.f;
        for (int cc = 0; cc < D; cc += 8) {
            float ov[8], gv[8];
            load8(o + cc, ov);
            load8(g + cc, gv);
#pragma unroll
            for (int i = 0; i < 8; i++) sum = fmaf(ov[i], gv[i], sum);
        }
        const float lse = reinterpret_cast<const float *>(p.lse)[at];
        const float dlse = p.dlse ? reinterpret_cast<const float *>(p.dlse)[at] : 0.f;
        reinterpret_cast<float *>(p.delta)[at] = lse == -INFINITY ? 0.f : sum - dlse;
    }

    const int *sel = reinterpret_cast<const int *>(p.sel) + at * MOBA_TOP_K;
    int *count = reinterpret_cast<int *>(p.list_count);
    for (int w0 = 0; w0 < c.n_blocks; w0 += BWD_LIST_BINS) {
        const int w1 = min(w0 + BWD_LIST_BINS, c.n_blocks);
        bwd_list_pass(c, sel, w0, w1, hist, [&](int, int blk) { atomicAdd(&count[bwd_list(p, c.rc, b, h, blk)], 1); });
        for (int i = threadIdx.x; i < w1 - w0; i += BWD_LIST_ROWS)
            if (hist[i]) atomicAdd(&count[bwd_list(p, c.rc0, b, h, w0 + i)], hist[i]);
        __syncthreads();   // hist is cleared by the next pass
    }
}

// 2. Each list's entries, back to back, out of one counter, a warp's lists at a time. Where a
// list lands varies run to run; what it holds does not (after the sort, in deterministic mode).
__global__ void __launch_bounds__(256) moba_bwd_alloc(const BwdParams p)
{
    const long long list = (long long)blockIdx.x * 256 + threadIdx.x;
    const int lane = threadIdx.x % 32;
    const int n = list < p.n_lists ? reinterpret_cast<const int *>(p.list_count)[list] : 0;
    int incl = n;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
        const int x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += x;
    }
    int base = 0;
    if (lane == 31) base = atomicAdd(reinterpret_cast<int *>(p.entry_counter), incl);
    base = __shfl_sync(0xffffffffu, base, 31);
    if (list < p.n_lists) reinterpret_cast<int *>(p.list_cursor)[list] = base + incl - n;
}

// A list's first entry, once the scatter has moved its cursor past its last one.
__device__ __forceinline__ long long bwd_list_begin(const BwdParams &p, long long list)
{
    return (long long)reinterpret_cast<const int *>(p.list_cursor)[list] - reinterpret_cast<const int *>(p.list_count)[list];
}

// 3. (row << 6 | slot) into the lists, in whatever order the atomics give. The CTA reserves one
// range per distinct list of its first chunk with one global atomic, then places its entries
// inside the ranges with shared-memory atomics.
__global__ void __launch_bounds__(BWD_LIST_ROWS) moba_bwd_scatter(const BwdParams p)
{
    __shared__ int hist[BWD_LIST_BINS];   // counts, then the CTA's next position in each list
    const int h = blockIdx.y, b = blockIdx.z;
    BwdListCta c;
    if (!bwd_list_cta(p, c)) return;
    const int *sel = reinterpret_cast<const int *>(p.sel) + (((long long)c.q0 + c.row) * p.hq + h) * MOBA_TOP_K;
    int *cursor = reinterpret_cast<int *>(p.list_cursor);
    unsigned *entries = reinterpret_cast<unsigned *>(p.entries);
    for (int w0 = 0; w0 < c.n_blocks; w0 += BWD_LIST_BINS) {
        const int w1 = min(w0 + BWD_LIST_BINS, c.n_blocks);
        bwd_list_pass(c, sel, w0, w1, hist, [](int, int) {});
        for (int i = threadIdx.x; i < w1 - w0; i += BWD_LIST_ROWS)
            if (hist[i]) hist[i] = atomicAdd(&cursor[bwd_list(p, c.rc0, b, h, w0 + i)], hist[i]);
        __syncthreads();
        if (c.mine)
            for_each_block(sel, c.n_blocks, [&](int s, int blk) {
                if (blk < w0 || blk >= w1) return;
                const int pos = c.rc == c.rc0 ? atomicAdd(&hist[blk - w0], 1)
                                              : atomicAdd(&cursor[bwd_list(p, c.rc, b, h, blk)], 1);
                entries[pos] = ((unsigned)c.row << 6) | (unsigned)s;
            });
        __syncthreads();   // hist is cleared by the next pass
    }
}

// 4. Deterministic mode: each list sorted by row (bitonic, in shared memory; a list has at most
// one entry per row of its chunk, and chunks are at most BWD_SORT_MAX rows).
__global__ void __launch_bounds__(512) moba_bwd_sort(const BwdParams p)
{
    __shared__ unsigned key[BWD_SORT_MAX];
    const long long list = blockIdx.x;
    const int n = reinterpret_cast<const int *>(p.list_count)[list];
    if (n < 2) return;
    unsigned *e = reinterpret_cast<unsigned *>(p.entries) + bwd_list_begin(p, list);
    int m = 1;
    while (m < n) m <<= 1;
    for (int i = threadIdx.x; i < m; i += 512) key[i] = i < n ? e[i] : 0xffffffffu;
    __syncthreads();
    for (int k = 2; k <= m; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < m; i += 512) {
                const int x = i ^ j;
                if (x > i) {
                    const unsigned a = key[i], c = key[x];
                    if ((a > c) == ((i & k) == 0)) {
                        key[i] = c;
                        key[x] = a;
                    }
                }
            }
            __syncthreads();
        }
    for (int i = threadIdx.x; i < n; i += 512) e[i] = key[i];
}

// 5. The tiles. CTA (key tile or key block, kv head x head-dim part, sequence); in fast mode one
// key tile per CTA, in deterministic mode every key tile of the block in turn (so that one
// thread owns each dq partial element across them). Warp w owns keys 16 (w % KG).. + 15 of the
// tile and queries QW (w / KG).. + QW - 1 of each 64-query tile (QW = 64 from tile_n 64 up):
// S^T = K' Q^T and dP^T = V dO^T (16 x QW per warp), P = exp2(S scale log2e - LSE log2e),
// dS = P (dP - D') scale, dV += P^T dO and dK' += dS^T Q in registers, dS^T to shared memory,
// dQ = dS K' by all warps. The query slices' dK'/dV are summed in shared memory after the walk.
__global__ void __launch_bounds__(BWD_NW * 32, 1) moba_bwd_tiles(const BwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, DP = BWD_DP, DT = DP / 8, KT = BWD_KT, KCH = KT / 8;
    // PQ queries per pass (S and dP of a pass, 2 PQ / 8 registers, live beside dK' and dV)
    constexpr int KG = BWD_KG, QW = BWD_QW, QS = BWD_QS, PQ = QW < 32 ? QW : 32;
    constexpr int NTH = BWD_NW * 32, NT = PQ / 8, G = MOBA_GQA, ST = BWD_STAGES;
    static_assert(NT % 2 == 0 && QW % PQ == 0, "passes are whole pairs of 8-query n-tiles");
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(BWD_WGMMA ? 1024 : 128) unsigned char smem_raw[];
    uint4 *k_s = reinterpret_cast<uint4 *>(smem_raw);
    uint4 *v_s = k_s + KT * CH;
    uint4 *q_s = v_s + KT * CH;                 // [ST][64 * CH]
    uint4 *do_s = q_s + ST * 64 * CH;           // [ST][64 * CH]
    uint4 *ds_s = do_s + ST * 64 * CH;          // [64 queries][KT keys] (queries as M: [KT keys][64 queries])
    uint4 *pt_s = ds_s + 64 * KCH;              // queries as M: P^T, [KT keys][64 queries]
    float *lse_s = reinterpret_cast<float *>(pt_s + (BWD_WGQ ? 64 * KCH : 0));   // [ST][64], the forward's LSE (0: no row)
    float *dlt_s = lse_s + ST * 64;             // [ST][64]
    int *tq_s = reinterpret_cast<int *>(dlt_s + ST * 64);        // [ST][64], causal position of the row
    int *tqmin_s = tq_s + ST * 64;              // [ST][4], least position of each pass's PQ rows
    int *ent_s = tqmin_s + ST * 4;              // [3][64], walk tile j's entries at j % 3; -1: no row

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int kg = QS == 1 ? warp : warp % KG, qs = QS == 1 ? 0 : warp / KG;   // key group, query slice
#if BWD_WGQ
    static_assert(BWD_NW == 4 && KT <= 32 && DP % 64 == 0, "queries as M: one warpgroup, 16 queries a warp");
    static_assert(2 * KT * DP * 4 <= ST * 2 * 64 * D * 2, "dK'^T and dV^T pass through the Q and dO buffers");
    if (smem_addr(smem_raw) & 1023u) __trap();
#elif BWD_WGMMA
    const int wg = warp / 4;   // the warpgroup, owner of keys 64 wg .. 64 wg + 63 of the tile
    static_assert(QS == 1 && KT % 64 == 0, "impl 3: whole warpgroups of 16 keys a warp");
    if (smem_addr(smem_raw) & 1023u) __trap();   // the swizzle atoms need 1024-byte alignment
#endif
    const int b = blockIdx.z, kvh = blockIdx.y / BWD_NDP, d0 = (blockIdx.y % BWD_NDP) * DP;
    constexpr int KTPB = MOBA_BLOCK / KT;
    const bool det = p.deterministic != 0;
    const int blk = det ? (int)blockIdx.x : (int)blockIdx.x / KTPB;
    const int kt_begin = det ? 0 : (int)blockIdx.x % KTPB, kt_end = det ? KTPB : kt_begin + 1;
    int q0, len_q, k0, len_k;
    bwd_seq(p, b, q0, len_q, k0, len_k);
    const int blk_begin = blk * MOBA_BLOCK;
    if (blk_begin + kt_begin * KT >= len_k) return;
    const int key_end = min(blk_begin + MOBA_BLOCK, len_k);
    const int rc = (int)p.chunk;
    const bool acc_first = rc == 0, acc_last = rc == (int)p.row_chunks - 1;
    const long long list0 = bwd_list(p, rc, b, kvh * G, blk);
    const int *count = reinterpret_cast<const int *>(p.list_count);
    const unsigned *entries = reinterpret_cast<const unsigned *>(p.entries);
    const float scale = (float)p.softmax_scale, scale_log2 = scale * LOG2E;
    const elem_t *kbase = reinterpret_cast<const elem_t *>(p.kprime);
    const elem_t *vbase = reinterpret_cast<const elem_t *>(p.v);
    const elem_t *qbase = reinterpret_cast<const elem_t *>(p.q);
    const elem_t *dobase = reinterpret_cast<const elem_t *>(p.dout);
    const float *lse_g = reinterpret_cast<const float *>(p.lse);
    const float *delta_g = reinterpret_cast<const float *>(p.delta);

    int n_tiles_total = 0;
    for (int g = 0; g < G; g++) n_tiles_total += (count[list0 + g] + 63) / 64;
    // A chunk without tiles here only carries the accumulators on, when there is nothing to carry
    // or keep nothing is done.
    if (n_tiles_total == 0 && !acc_first && !acc_last) return;

    // Tile j of the walk: the list (head) and the tile within it.
    auto locate = [&](int j, int &g, int &t) {
        g = 0;
        t = j;
        for (; g < G; g++) {
            const int n = (count[list0 + g] + 63) / 64;
            if (t < n) return;
            t -= n;
        }
    };
    // The entries of walk tile j into ent_s[j % 3] (cp.async, two tiles ahead of their use, so
    // that no global load is waited on inside the walk), -1 past the list's end.
    auto load_entries = [&](int j) {
        int g, t;
        locate(j, g, t);
        const long long list = list0 + g;
        const int n_rows = min(64, count[list] - t * 64);
        const unsigned *ent = entries + bwd_list_begin(p, list) + t * 64;
        for (int r = tid; r < 64; r += NTH) {
            if (r < n_rows) bwd_cp_async4(&ent_s[(j % 3) * 64 + r], ent + r);
            else ent_s[(j % 3) * 64 + r] = -1;
        }
    };
    // Gathered queries, upstream gradients, LSE and D' of walk tile j into stage buffer `buf`,
    // from its entries in shared memory. Rows past the list's end read zeros: their S, dP and D'
    // are 0, so P is 1 where unmasked, but their dO row is 0 and dS = P (dP - D') = 0, so they add
    // nothing to dV or dK' (and dQ skips them by their entry -1).
    auto load_tile = [&](int j, int buf) {
        int g, t;
        locate(j, g, t);
        const int h = kvh * G + g;
        const int *eb = ent_s + (j % 3) * 64;
        for (int i = tid; i < 64 * CH; i += NTH) {
            const int r = i / CH, c = i % CH, e = eb[r];
            const bool ok = e >= 0;
            const long long row = q0 + (ok ? (long long)(e >> 6) : 0);
            cp_async16(&q_s[buf * 64 * CH + bwd_at<64, CH>(r, c)], qbase + row * p.q_row_stride + h * p.q_head_stride + c * 8, ok);
            cp_async16(&do_s[buf * 64 * CH + bwd_at<64, CH>(r, c)], dobase + row * p.do_row_stride + h * p.do_head_stride + c * 8, ok);
        }
        for (int r = tid; r < 64; r += NTH) {
            const int e = eb[r];
            int tq = -1;
            if (e >= 0) {
                const int row = e >> 6;
                const long long at = (long long)(q0 + row) * p.hq + h;
                bwd_cp_async4(&lse_s[buf * 64 + r], lse_g + at);
                bwd_cp_async4(&dlt_s[buf * 64 + r], delta_g + at);
                tq = row + len_k - len_q;
            } else {
                lse_s[buf * 64 + r] = 0.f;
                dlt_s[buf * 64 + r] = 0.f;
            }
            tq_s[buf * 64 + r] = tq;
            // whole warps run this loop (64 rows, NTH a multiple of 32); rows past the list's
            // end add nothing whether masked or not, and do not count
            int least = e >= 0 ? tq : 0x7fffffff;
            if (PQ == 32) {
                least = __reduce_min_sync(0xffffffffu, least);
            } else {
#pragma unroll
                for (int o = PQ / 2; o > 0; o >>= 1) least = min(least, __shfl_xor_sync(0xffffffffu, least, o));
            }
            if (lane % PQ == 0) tqmin_s[buf * 4 + r / PQ] = least;
        }
    };

    // LSE log2 e, and +inf for a row without keys (LSE -inf), so that its P is 0.
    auto lse_log2 = [](float lse) { return lse == -INFINITY ? INFINITY : lse * LOG2E; };
    float *dq_acc = reinterpret_cast<float *>(p.dq_acc);
    for (int kt = kt_begin; kt < kt_end; kt++) {
        const int key0 = blk_begin + kt * KT;
        if (key0 >= key_end) break;
        __syncthreads();   // the previous key tile is done with shared memory
        for (int i = tid; i < KT * CH; i += NTH) {
            const int r = i / CH, c = i % CH, key = key0 + r;
            const bool ok = key < key_end;
            const long long krow = k0 + (ok ? key : key0);
            cp_async16(&k_s[bwd_at<KT, CH>(r, c)], kbase + krow * p.kp_row_stride + kvh * p.kp_head_stride + c * 8, ok);
            cp_async16(&v_s[bwd_at<KT, CH>(r, c)], vbase + krow * p.v_row_stride + kvh * p.v_head_stride + c * 8, ok);
        }
        float dk[DT][4], dv[DT][4];
#pragma unroll
        for (int i = 0; i < DT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;
#if BWD_WGQ
        // dK'^T and dV^T (M = the head dim in 64-row halves, N = the tile's keys) over the walk
        constexpr int NH = DP / 64;
        float dkt[NH][KT / 8][4], dvt[NH][KT / 8][4];
#pragma unroll
        for (int hh = 0; hh < NH; hh++)
#pragma unroll
            for (int i = 0; i < KT / 8; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) dkt[hh][i][e] = dvt[hh][i][e] = 0.f;
#endif

        // Entries two tiles ahead of their use, rows (two stages) one tile ahead.
        if (n_tiles_total > 0) {
            load_entries(0);
            if (ST == 2) {
                bwd_cp_landed();
                __syncthreads();
                load_tile(0, 0);
                if (n_tiles_total > 1) load_entries(1);
            }
        }
        for (int j = 0; j < n_tiles_total; j++) {
            const int buf = ST == 2 ? (j & 1) : 0;
            if (ST == 1) {
                bwd_cp_landed();
                __syncthreads();   // tile j's entries have landed; everyone is done with tile j - 1
                load_tile(j, 0);
                if (j + 1 < n_tiles_total) load_entries(j + 1);
            }
            bwd_cp_landed();
            __syncthreads();   // tile j has landed; everyone is done with tile j - 1
            if (ST == 2 && j + 1 < n_tiles_total) load_tile(j + 1, buf ^ 1);
            if (ST == 2 && j + 2 < n_tiles_total) load_entries(j + 2);
            int g, t;
            locate(j, g, t);
            const int h = kvh * G + g;
            const uint4 *qb = q_s + buf * 64 * CH, *dob = do_s + buf * 64 * CH;
            const float *lse_b = lse_s + buf * 64, *dlt_b = dlt_s + buf * 64;
            const int *tq_b = tq_s + buf * 64, *ent_b = ent_s + (j % 3) * 64;

#if !BWD_WGQ
            // The warp's QW queries in passes of PQ.
#pragma unroll 1
            for (int qp = 0; qp < QW / PQ; qp++) {
                const int qb0 = qs * QW + qp * PQ;   // the pass's first query in the tile
                float s[NT][4], dp[NT][4];
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.f;
#if BWD_WGMMA
                // The warpgroup's 64 keys (A, K-major) against the pass's PQ query rows (B,
                // K-major); a k-step is 16 columns, 32 bytes along a swizzled 128-byte row.
                {
                    const unsigned ka = smem_addr(k_s) + wg * 64 * 128, va = smem_addr(v_s) + wg * 64 * 128;
                    const unsigned qa = smem_addr(qb) + qb0 * 128, oa = smem_addr(dob) + qb0 * 128;
                    wg_hold(s);
                    wg_hold(dp);
                    wg_fence();
#pragma unroll
                    for (int kk = 0; kk < D / 16; kk++) {
                        const unsigned at = (unsigned)(kk & 3) * 32u, kb = (kk >> 2) * (KT * 128) + at, qbk = (kk >> 2) * (64 * 128) + at;
                        wg_mma_ss<0>(s, wg_desc(ka + kb, 16, 1024), wg_desc(qa + qbk, 16, 1024), kk > 0);
                        wg_mma_ss<0>(dp, wg_desc(va + kb, 16, 1024), wg_desc(oa + qbk, 16, 1024), kk > 0);
                    }
                    wg_commit();
                    wg_wait_all();
                    wg_hold(s);
                    wg_hold(dp);
                }
#else
                const int ar = kg * 16 + (lane & 15);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    unsigned ka[4], va[4];
                    ldsm_x4(smem_addr(&k_s[ar * CH + bsw<CH>(ar, 2 * kk + (lane >> 4))]), ka);
                    ldsm_x4(smem_addr(&v_s[ar * CH + bsw<CH>(ar, 2 * kk + (lane >> 4))]), va);
#pragma unroll
                    for (int nt = 0; nt < NT; nt += 2) {
                        const int mat = lane >> 3, br = qb0 + (nt + (mat >> 1)) * 8 + (lane & 7), bc = 2 * kk + (mat & 1);
                        unsigned qf[4], of[4];
                        ldsm_x4(smem_addr(&qb[br * CH + bsw<CH>(br, bc)]), qf);
                        ldsm_x4(smem_addr(&dob[br * CH + bsw<CH>(br, bc)]), of);
                        mma_16816(s[nt], ka, qf[0], qf[1]);
                        mma_16816(s[nt + 1], ka, qf[2], qf[3]);
                        mma_16816(dp[nt], va, of[0], of[1]);
                        mma_16816(dp[nt + 1], va, of[2], of[3]);
                    }
                }
#endif
                // P and dS; keys past the block or the sequence, and (causal) after the row, are 0.
                // Only a tile that reaches past the keys or (causal) past some row's position
                // needs the mask: the diagonal block's.
                const int key_lo = key0 + kg * 16 + lane / 4;
% if spec.causal then
                const bool need_mask = key0 + KT > key_end || tqmin_s[buf * 4 + qb0 / PQ] < key0 + KT - 1;
% else
                const bool need_mask = key0 + KT > key_end;
% end
                if (need_mask) {
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int qc = qb0 + nt * 8 + (lane & 3) * 2 + (e & 1), key = key_lo + (e >> 1) * 8;
% if spec.causal then
                            const bool ok = key < key_end && key <= tq_b[qc];
% else
                            const bool ok = key < key_end;
% end
                            const float pr = ok ? exp2f(s[nt][e] * scale_log2 - lse_log2(lse_b[qc])) : 0.f;
                            s[nt][e] = pr;
                            dp[nt][e] = pr * (dp[nt][e] - dlt_b[qc]) * scale;
                        }
                } else {
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int qc = qb0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                            const float pr = exp2f(s[nt][e] * scale_log2 - lse_log2(lse_b[qc]));
                            s[nt][e] = pr;
                            dp[nt][e] = pr * (dp[nt][e] - dlt_b[qc]) * scale;
                        }
                }
                // dV += P^T dO and dK' += dS^T Q: the score accumulators become A fragments.
#if BWD_WGMMA
                // (wgmma's accumulator of m64nN is mma.sync's m16n8 C layout warp by warp, so
                // the fragments are the same; dO and Q are B with the head dim contiguous)
                unsigned pa[NT / 2][4], da[NT / 2][4];
#pragma unroll
                for (int kk = 0; kk < NT / 2; kk++) {
                    pa[kk][0] = pack_pair(s[2 * kk][0], s[2 * kk][1]);
                    pa[kk][1] = pack_pair(s[2 * kk][2], s[2 * kk][3]);
                    pa[kk][2] = pack_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                    pa[kk][3] = pack_pair(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                    da[kk][0] = pack_pair(dp[2 * kk][0], dp[2 * kk][1]);
                    da[kk][1] = pack_pair(dp[2 * kk][2], dp[2 * kk][3]);
                    da[kk][2] = pack_pair(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
                    da[kk][3] = pack_pair(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
                }
                wg_hold(dv);
                wg_hold(dk);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < NT / 2; kk++) {
                    const unsigned rows_at = (unsigned)(qb0 + kk * 16) * 128u;
                    wg_mma_rs(dv, pa[kk], wg_desc(smem_addr(dob) + rows_at, 64 * 128, 1024));
                    wg_mma_rs(dk, da[kk], wg_desc(smem_addr(qb) + rows_at, 64 * 128, 1024));
                }
                wg_commit();
#else
#pragma unroll
                for (int kk = 0; kk < NT / 2; kk++) {
                    const unsigned pa[4] = {pack_pair(s[2 * kk][0], s[2 * kk][1]), pack_pair(s[2 * kk][2], s[2 * kk][3]),
                                            pack_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_pair(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                    const unsigned da[4] = {pack_pair(dp[2 * kk][0], dp[2 * kk][1]), pack_pair(dp[2 * kk][2], dp[2 * kk][3]),
                                            pack_pair(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack_pair(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
                    for (int dt = 0; dt < DT; dt += 2) {
                        const int mat = lane >> 3, br = qb0 + kk * 16 + (mat & 1) * 8 + (lane & 7), bc = d0 / 8 + dt + (mat >> 1);
                        unsigned of[4], qf[4];
                        ldsm_x4_trans(smem_addr(&dob[br * CH + bsw<CH>(br, bc)]), of);
                        ldsm_x4_trans(smem_addr(&qb[br * CH + bsw<CH>(br, bc)]), qf);
                        mma_16816(dv[dt], pa, of[0], of[1]);
                        mma_16816(dv[dt + 1], pa, of[2], of[3]);
                        mma_16816(dk[dt], da, qf[0], qf[1]);
                        mma_16816(dk[dt + 1], da, qf[2], qf[3]);
                    }
                }
#endif
                // dS^T into shared memory as dS [query][key].
                elem_t *ds_e = reinterpret_cast<elem_t *>(ds_s);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int qc = qb0 + nt * 8 + (lane & 3) * 2 + (e & 1), kl = kg * 16 + lane / 4 + (e >> 1) * 8;
                        ds_e[bwd_at<64, KCH>(qc, kl / 8) * 8 + kl % 8] = float_to_elem(dp[nt][e]);
                    }
#if BWD_WGMMA
                wg_wait_all();
                wg_hold(dv);
                wg_hold(dk);
#endif
            }
#if BWD_WGMMA
            wg_proxy_fence();   // the dS stores, for the dQ product's operand reads
#endif
            __syncthreads();
#endif
            // The entries of rows m16 + lane / 4 and + 8 of the tile: query row (-1: none), slot.
            auto dq_rows = [&](int m16, int (&rows)[2], int (&slots)[2]) {
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int e = ent_b[m16 * 16 + lane / 4 + half * 8];
                    rows[half] = e < 0 ? -1 : (e >> 6);
                    slots[half] = e & 63;
                }
            };
            // Two 8-column accumulator tiles of dQ (mma.sync's C layout: a lane's 2 columns of
            // rows[0] and of rows[1] in each) out, columns d0 + 8 dt on.
            auto dq_out = [&](const float (&acc)[2][4], int dt, const int (&rows)[2], const int (&slots)[2]) {
% if arch.sm >= 90 then
                // Fast mode: lane pairs trade halves so that each lane adds 4 adjacent columns
                // of one row (the even lane its row lane / 4 of the m-tile, the odd lane row
                // lane / 4 + 8): one red.v4 instead of two red.v2 per column tile.
                if (!det) {
                    const bool odd = lane & 1;
                    const int row = odd ? rows[1] : rows[0];
#pragma unroll
                    for (int i = 0; i < 2; i++) {
                        const float sx = odd ? acc[i][0] : acc[i][2], sy = odd ? acc[i][1] : acc[i][3];
                        const float rx = __shfl_xor_sync(0xffffffffu, sx, 1), ry = __shfl_xor_sync(0xffffffffu, sy, 1);
                        const int col = d0 + (dt + i) * 8 + (lane & 2) * 2;
                        if (row >= 0) {
                            float *a = dq_acc + ((long long)(q0 + row) * p.hq + h) * D + col;
                            bwd_red_add4(a, odd ? rx : acc[i][0], odd ? ry : acc[i][1], odd ? acc[i][2] : rx, odd ? acc[i][3] : ry);
                        }
                    }
                    return;
                }
% end
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    if (rows[half] < 0) continue;
#pragma unroll
                    for (int i = 0; i < 2; i++) {
                        const int col = d0 + (dt + i) * 8 + (lane & 3) * 2;
                        const float x = acc[i][2 * half], y = acc[i][2 * half + 1];
                        if (!det) {
                            bwd_red_add2(dq_acc + ((long long)(q0 + rows[half]) * p.hq + h) * D + col, x, y);
                        } else {
                            const long long prow = ((((long long)b * p.chunk_rows + rows[half] - (long long)rc * p.chunk_rows) * p.hq + h) * MOBA_TOP_K + slots[half]);
                            float2 *pp = reinterpret_cast<float2 *>(dq_acc + prow * D + col);
                            if (kt == kt_begin) *pp = make_float2(x, y);
                            else {
                                const float2 o = *pp;
                                *pp = make_float2(o.x + x, o.y + y);
                            }
                        }
                    }
                }
            };
#if BWD_WGQ
            // Queries as M: warp w owns queries 16 w .. 16 w + 15 of the tile (rows lane / 4 and
            // + 8 of its accumulators), every key of the tile (columns).
            {
                constexpr int NK = KT / 8;
                const unsigned ka = smem_addr(k_s), va = smem_addr(v_s), qa = smem_addr(qb), oa = smem_addr(dob);
                const unsigned pa_s = smem_addr(pt_s), da_s = smem_addr(ds_s);
                // S = Q K'^T and dP = dO V^T, both operands K-major in shared memory.
                float s[NK][4], dp[NK][4];
#pragma unroll
                for (int nt = 0; nt < NK; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.f;
                wg_hold(s);
                wg_hold(dp);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    const unsigned at = (unsigned)(kk & 3) * 32u, qk = (kk >> 2) * (64 * 128) + at, kb = (kk >> 2) * (KT * 128) + at;
                    wg_mma_ss<0>(s, wg_desc(qa + qk, 16, 1024), wg_desc(ka + kb, 16, 1024), kk > 0);
                    wg_mma_ss<0>(dp, wg_desc(oa + qk, 16, 1024), wg_desc(va + kb, 16, 1024), kk > 0);
                }
                wg_commit();
                wg_wait_all();
                wg_hold(s);
                wg_hold(dp);
                const int r0 = warp * 16 + lane / 4;
                float lse2[2], dlt[2];
                int tqr[2];
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    lse2[half] = lse_log2(lse_b[r0 + half * 8]);
                    dlt[half] = dlt_b[r0 + half * 8];
                    tqr[half] = tq_b[r0 + half * 8];
                }
% if spec.causal then
                int tq_least = tqmin_s[buf * 4];
#pragma unroll
                for (int i = 1; i < 64 / PQ; i++) tq_least = min(tq_least, tqmin_s[buf * 4 + i]);
                const bool need_mask = key0 + KT > key_end || tq_least < key0 + KT - 1;
% else
                const bool need_mask = key0 + KT > key_end;
% end
                (void)tqr;
#pragma unroll
                for (int nt = 0; nt < NK; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int half = e >> 1, key = key0 + nt * 8 + (lane & 3) * 2 + (e & 1);
% if spec.causal then
                        const bool ok = !need_mask || (key < key_end && key <= tqr[half]);
% else
                        const bool ok = !need_mask || key < key_end;
% end
                        const float pr = ok ? exp2f(s[nt][e] * scale_log2 - lse2[half]) : 0.f;
                        s[nt][e] = pr;
                        dp[nt][e] = pr * (dp[nt][e] - dlt[half]) * scale;
                    }
                // dQ = dS K' with dS from registers (the accumulator is the A fragment layout)
                // and K' as B with the head dim contiguous; it runs while P^T and dS^T are stored.
                unsigned da[KT / 16][4];
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) {
                    da[kk][0] = pack_pair(dp[2 * kk][0], dp[2 * kk][1]);
                    da[kk][1] = pack_pair(dp[2 * kk][2], dp[2 * kk][3]);
                    da[kk][2] = pack_pair(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
                    da[kk][3] = pack_pair(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
                }
                float dq[DT][4];
#pragma unroll
                for (int i = 0; i < DT; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
                wg_hold(dq);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++)
                    wg_mma_rs(dq, da[kk], wg_desc(ka + (d0 / 64) * (KT * 128) + kk * 16 * 128, KT * 128, 1024));
                wg_commit();
                // P^T and dS^T as [key][query] (K-major B operands of dV^T and dK'^T).
                elem_t *pt_e = reinterpret_cast<elem_t *>(pt_s), *dt_e = reinterpret_cast<elem_t *>(ds_s);
#pragma unroll
                for (int nt = 0; nt < NK; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int q = r0 + (e >> 1) * 8, kl = nt * 8 + (lane & 3) * 2 + (e & 1);
                        const int at = wg_chunk<KT>(kl, q / 8) * 8 + q % 8;
                        pt_e[at] = float_to_elem(s[nt][e]);
                        dt_e[at] = float_to_elem(dp[nt][e]);
                    }
                wg_proxy_fence();
                __syncthreads();
                // dV^T += dO^T P and dK'^T += Q^T dS: A = dO^T, Q^T straight from the tiles (M, the
                // head dim, contiguous: transposed A), B = P^T, dS^T; K = the 64 queries.
#pragma unroll
                for (int hh = 0; hh < NH; hh++) {
                    wg_hold(dvt[hh]);
                    wg_hold(dkt[hh]);
                }
                wg_fence();
#pragma unroll
                for (int hh = 0; hh < NH; hh++)
#pragma unroll
                    for (int kk = 0; kk < 4; kk++) {
                        const unsigned col_at = (unsigned)(d0 / 64 + hh) * (64 * 128) + kk * 16 * 128;
                        wg_mma_ss<0, 1>(dvt[hh], wg_desc(oa + col_at, 64 * 128, 1024), wg_desc(pa_s + kk * 32, 16, 1024), 1);
                        wg_mma_ss<0, 1>(dkt[hh], wg_desc(qa + col_at, 64 * 128, 1024), wg_desc(da_s + kk * 32, 16, 1024), 1);
                    }
                wg_commit();
                wg_wait_all();
                wg_hold(dq);
#pragma unroll
                for (int hh = 0; hh < NH; hh++) {
                    wg_hold(dvt[hh]);
                    wg_hold(dkt[hh]);
                }
                int rows[2], slots[2];
                dq_rows(warp, rows, slots);
#pragma unroll
                for (int i = 0; i < DT; i += 2) dq_out(reinterpret_cast<const float (&)[2][4]>(dq[i]), i, rows, slots);
            }
#elif BWD_WGMMA
            // dQ = dS K': the tile's 64 queries (M) x 64 columns per wgmma chain over the tile's
            // keys (A = dS, K-major; B = K' with the head dim contiguous); the 64-column blocks
            // are dealt to the warpgroups in turn (at head_dim 64 and tile_n 128 warpgroup 0
            // takes the one block alone).
            {
                constexpr int NWG = BWD_NW / 4, DQC = DP / 64;
                static_assert(DP % 64 == 0, "impl 3's dQ is whole 64-column blocks");
                int rows[2], slots[2];
                dq_rows(warp % 4, rows, slots);
                const unsigned ds_addr = smem_addr(ds_s), k_addr = smem_addr(k_s);
                for (int c = wg; c < DQC; c += NWG) {
                    float acc[8][4];
#pragma unroll
                    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
                    wg_hold(acc);
                    __syncwarp();   // the previous block's reductions branched per lane
                    wg_fence();
#pragma unroll
                    for (int kk = 0; kk < KT / 16; kk++)
                        wg_mma_ss<1>(acc, wg_desc(ds_addr + (kk >> 2) * (64 * 128) + (kk & 3) * 32, 16, 1024),
                                     wg_desc(k_addr + c * (KT * 128) + kk * 2048, KT * 128, 1024), kk > 0);
                    wg_commit();
                    wg_wait_all();
                    wg_hold(acc);
#pragma unroll
                    for (int i = 0; i < 8; i += 2) dq_out(reinterpret_cast<const float (&)[2][4]>(acc[i]), c * 8 + i, rows, slots);
                }
            }
#else
            // dQ = dS K': 16-query m-tiles shared among the warps.
            // Up to 4 warps take one 16-query m-tile each; more split the columns of their m-tile.
            constexpr int DQ_SPLIT = BWD_NW > 4 ? BWD_NW / 4 : 1, DQ_DT = DT / DQ_SPLIT;
            static_assert(DQ_DT % 2 == 0 && DQ_DT * DQ_SPLIT == DT, "dQ column parts are whole mma pairs");
            const int dq_col0 = DQ_SPLIT > 1 ? warp / 4 * DQ_DT : 0;
            for (int mt = warp % 4; mt < 4; mt += (BWD_NW < 4 ? BWD_NW : 4)) {
                unsigned a[KT / 16][4];
                const int rr = mt * 16 + (lane & 15);
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) ldsm_x4(smem_addr(&ds_s[rr * KCH + bsw<KCH>(rr, 2 * kk + (lane >> 4))]), a[kk]);
                int rows[2], slots[2];
                dq_rows(mt, rows, slots);
#pragma unroll
                for (int j = 0; j < DQ_DT; j += 2) {
                    const int dt = dq_col0 + j;
                    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                    for (int kk = 0; kk < KT / 16; kk++) {
                        const int mat = lane >> 3, br = kk * 16 + (mat & 1) * 8 + (lane & 7), bc = d0 / 8 + dt + (mat >> 1);
                        unsigned kf[4];
                        ldsm_x4_trans(smem_addr(&k_s[br * CH + bsw<CH>(br, bc)]), kf);
                        mma_16816(acc[0], a[kk], kf[0], kf[1]);
                        mma_16816(acc[1], a[kk], kf[2], kf[3]);
                    }
                    dq_out(acc, dt, rows, slots);
                }
            }
#endif
        }

#if BWD_WGQ
        // dK'^T and dV^T into the epilogue's layout (dk, dv of warps with query slice 0: keys
        // 16 kg + lane / 4 and + 8), through the Q and dO buffers as fp32 [key][column].
        {
            float *st = reinterpret_cast<float *>(q_s);
            __syncthreads();   // the walk is done with the Q and dO buffers
#pragma unroll
            for (int hh = 0; hh < NH; hh++)
#pragma unroll
                for (int nt = 0; nt < KT / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = hh * 64 + warp * 16 + lane / 4 + (e >> 1) * 8, kl = nt * 8 + (lane & 3) * 2 + (e & 1);
                        st[kl * DP + col] = dkt[hh][nt][e];
                        st[(KT + kl) * DP + col] = dvt[hh][nt][e];
                    }
            __syncthreads();
            if (qs == 0)
#pragma unroll
                for (int dt = 0; dt < DT; dt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int kl = kg * 16 + lane / 4 + (e >> 1) * 8, col = dt * 8 + (lane & 3) * 2 + (e & 1);
                        dk[dt][e] = st[kl * DP + col];
                        dv[dt][e] = st[(KT + kl) * DP + col];
                    }
        }
#endif
        // Query slices 1.. add their dK' and dV into slice 0's, one slice at a time, through the
        // Q and dO buffers (no tile reads them any more; the next key tile's loads wait for the
        // barrier at the top of the loop): per warp and column tile, a float4 per lane.
        if constexpr (QS > 1 && !BWD_WGQ) {
            static_assert(QS == 1 || KG * DT * 2 * 32 <= ST * 2 * 64 * CH, "the slice sums fit the Q and dO buffers");
            float4 *sum_s = reinterpret_cast<float4 *>(q_s);
            for (int sl = 1; sl < QS; sl++) {
                __syncthreads();
                if (qs == sl)
#pragma unroll
                    for (int dt = 0; dt < DT; dt++) {
                        sum_s[((kg * DT + dt) * 2) * 32 + lane] = make_float4(dk[dt][0], dk[dt][1], dk[dt][2], dk[dt][3]);
                        sum_s[((kg * DT + dt) * 2 + 1) * 32 + lane] = make_float4(dv[dt][0], dv[dt][1], dv[dt][2], dv[dt][3]);
                    }
                __syncthreads();
                if (qs == 0)
#pragma unroll
                    for (int dt = 0; dt < DT; dt++) {
                        const float4 x = sum_s[((kg * DT + dt) * 2) * 32 + lane], y = sum_s[((kg * DT + dt) * 2 + 1) * 32 + lane];
                        dk[dt][0] += x.x; dk[dt][1] += x.y; dk[dt][2] += x.z; dk[dt][3] += x.w;
                        dv[dt][0] += y.x; dv[dt][1] += y.y; dv[dt][2] += y.z; dv[dt][3] += y.w;
                    }
            }
        }

        // dK' and dV of the tile's keys: carried over chunks in fp32, the last chunk writes them.
        float *dk_acc = reinterpret_cast<float *>(p.dk_acc), *dv_acc = reinterpret_cast<float *>(p.dv_acc);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int key = key0 + kg * 16 + lane / 4 + half * 8;
            if (qs != 0 || key >= key_end) continue;
            const long long krow = k0 + key;
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                const int col = d0 + dt * 8 + (lane & 3) * 2;
                float2 gk = make_float2(dk[dt][2 * half], dk[dt][2 * half + 1]);
                float2 gv = make_float2(dv[dt][2 * half], dv[dt][2 * half + 1]);
                float2 *ak = reinterpret_cast<float2 *>(dk_acc + (krow * p.hkv + kvh) * D + col);
                float2 *av = reinterpret_cast<float2 *>(dv_acc + (krow * p.hkv + kvh) * D + col);
                if (!acc_first) {
                    const float2 ok = *ak, ov = *av;
                    gk.x += ok.x; gk.y += ok.y;
                    gv.x += ov.x; gv.y += ov.y;
                }
% if spec.conv_width > 0 then
                *ak = gk;   // the key convolution's backward reads dk' in fp32
% else
                if (acc_last)
                    *reinterpret_cast<unsigned *>(reinterpret_cast<elem_t *>(p.dk) + krow * p.dk_row_stride + kvh * p.dk_head_stride + col) =
                        (unsigned)float_to_elem(gk.x) | ((unsigned)float_to_elem(gk.y) << 16);
                else
                    *ak = gk;
% end
                if (acc_last)
                    *reinterpret_cast<unsigned *>(reinterpret_cast<elem_t *>(p.dv) + krow * p.dv_row_stride + kvh * p.dv_head_stride + col) =
                        (unsigned)float_to_elem(gv.x) | ((unsigned)float_to_elem(gv.y) << 16);
                else
                    *av = gv;
            }
        }
    }
}

// 6. dq of the rows of chunk p.chunk (deterministic: the partials of the row's usable slots in
// slot order) or of every row (fast: the fp32 row). One warp per (row, head), 8 columns a lane.
__global__ void __launch_bounds__(BWD_ROW_THREADS) moba_bwd_dq(const BwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y, b = blockIdx.z;
    int q0, len_q, k0, len_k;
    bwd_seq(p, b, q0, len_q, k0, len_k);
    const int local = blockIdx.x * (BWD_ROW_THREADS / 32) + warp;
    const int row = (int)(p.chunk * p.chunk_rows) + local;
    if (local >= p.chunk_rows || row >= len_q || lane * 8 >= D) return;
    const long long qr = q0 + row;
    const float *acc = reinterpret_cast<const float *>(p.dq_acc);
    float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (!p.deterministic) {
        const float4 *a = reinterpret_cast<const float4 *>(acc + (qr * p.hq + h) * D + lane * 8);
        const float4 x = a[0], y = a[1];
        sum[0] = x.x; sum[1] = x.y; sum[2] = x.z; sum[3] = x.w;
        sum[4] = y.x; sum[5] = y.y; sum[6] = y.z; sum[7] = y.w;
    } else {
        const int n_blocks = (len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
        const int *sel = reinterpret_cast<const int *>(p.sel) + (qr * p.hq + h) * MOBA_TOP_K;
        const long long prow = ((long long)b * p.chunk_rows + local) * p.hq + h;
        for_each_block(sel, n_blocks, [&](int s, int) {
            const float4 *a = reinterpret_cast<const float4 *>(acc + (prow * MOBA_TOP_K + s) * D + lane * 8);
            const float4 x = a[0], y = a[1];
            sum[0] += x.x; sum[1] += x.y; sum[2] += x.z; sum[3] += x.w;
            sum[4] += y.x; sum[5] += y.y; sum[6] += y.z; sum[7] += y.w;
        });
    }
    store8(reinterpret_cast<elem_t *>(p.dq) + qr * p.dq_row_stride + h * p.dq_head_stride + lane * 8, sum);
}

// 7. Key convolution backward (docs/backward.md): du_t = dk'_t SiLU'(u_t) with u recomputed
// as the forward computes it, dk_s = dk'_s + sum_l w_l du_{s+l}, and each CTA's part of
// dw_l = sum_t du_t k_{t-l}. CTA (BWD_KCONV_ROWS keys, kv head, sequence), one thread per column.
__global__ void __launch_bounds__(256) moba_bwd_kconv(const BwdParams p)
{
% if spec.conv_width > 0 then
    constexpr int D = MOBA_HEAD_DIM, W = MOBA_CONV_WIDTH;
    const int c = threadIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    int q0, len_q, k0, len_k;
    bwd_seq(p, b, q0, len_q, k0, len_k);
    const int t0 = blockIdx.x * BWD_KCONV_ROWS, t1 = min(t0 + BWD_KCONV_ROWS, len_k);
    const elem_t *k = reinterpret_cast<const elem_t *>(p.k) + (long long)k0 * p.k_row_stride + kvh * p.k_head_stride + c;
    const elem_t *w = reinterpret_cast<const elem_t *>(p.conv_w) + (long long)kvh * W * D + c;
    const float *dkp = reinterpret_cast<const float *>(p.dk_acc) + ((long long)k0 * p.hkv + kvh) * D + c;
    float taps[W], dw[W];
#pragma unroll
    for (int l = 0; l < W; l++) {
        taps[l] = elem_to_float(w[l * D]);
        dw[l] = 0.f;
    }
    auto du = [&](int t) {
        float u = 0.f;
#pragma unroll
        for (int l = 0; l < W; l++)
            if (t - l >= 0) u += taps[l] * elem_to_float(k[(long long)(t - l) * p.k_row_stride]);
        const float sg = 1.f / (1.f + __expf(-u));
        return dkp[(long long)t * p.hkv * D] * sg * (1.f + u * (1.f - sg));
    };
    for (int t = t0; t < t1; t++) {
        float g = dkp[(long long)t * p.hkv * D];
#pragma unroll
        for (int l = 0; l < W; l++)
            if (t + l < len_k) g += taps[l] * du(t + l);
        reinterpret_cast<elem_t *>(p.dk)[(long long)(k0 + t) * p.dk_row_stride + kvh * p.dk_head_stride + c] = float_to_elem(g);
        const float d = du(t);
#pragma unroll
        for (int l = 0; l < W; l++)
            if (t - l >= 0) dw[l] += d * elem_to_float(k[(long long)(t - l) * p.k_row_stride]);
    }
    float *part = reinterpret_cast<float *>(p.dw_part) + (((long long)b * p.kconv_tiles + blockIdx.x) * p.hkv + kvh) * W * D + c;
#pragma unroll
    for (int l = 0; l < W; l++) part[l * D] = dw[l];
% end
}

// 8. dw: the parts summed in (sequence, tile) order. CTA (kv head, tap), one thread per column.
__global__ void __launch_bounds__(256) moba_bwd_dw(const BwdParams p)
{
% if spec.conv_width > 0 then
    constexpr int D = MOBA_HEAD_DIM, W = MOBA_CONV_WIDTH;
    const int c = threadIdx.x, kvh = blockIdx.x, l = blockIdx.y;
    const float *part = reinterpret_cast<const float *>(p.dw_part) + ((long long)kvh * W + l) * D + c;
    const long long n = p.batch * p.kconv_tiles, step = p.hkv * W * D;
    float sum = 0.f;
    for (long long i = 0; i < n; i++) sum += part[i * step];
    reinterpret_cast<float *>(p.dconv_w)[((long long)kvh * W + l) * D + c] = sum;
% end
}
