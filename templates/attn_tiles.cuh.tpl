%! -- Block-centric attention on tensor cores (attn_fwd impl 2), include()d by attn_fwd.cu.tpl.
%! -- The selection is transposed into query lists per (chunk, key block), where a chunk is
%! -- chunk_rows query rows of one (sequence, head). The count kernel also gives each row a
%! -- reference ref <= its max scaled score (causal: the diagonal key's score; else the score of
%! -- its first block's centroid, the mean of that block's keys). For a group of ring_chunks
%! -- chunks at a time, two launches: 64-query tiles of each list compute S = Q K^T, P =
%! -- exp2(S - ref) and P V on mma.sync, added into one fp32 (o, l) row per query (reductions in
%! -- L2, any order: exp2(S - ref) needs no common running max); a finalize pass writes o / l and
%! -- the LSE and clears the rows for the next group. fp32 keeps full relative precision for any
%! -- ref <= max; a row whose sums overflow (max - ref near 128, or past 16 for fp16 P) is marked,
%! -- and the fallback kernel redoes it exactly at the end. The workspace does not grow with the
%! -- sequence beyond the selection and its lists.
% local D = spec.head_dim
% local BN = (spec.block_size % 64 == 0) and 64 or ((spec.block_size % 32 == 0) and 32 or 16)
% include("mma.cuh.tpl")
#define TILE_M 64          // queries per tile: 4 warps x 16 rows
#define TILE_N $(BN)       // keys per step: the largest of 64, 32, 16 dividing the block size
#define SCAN_SEG 4096      // lists per CTA of the tile-count scan: 1024 threads x 4

// Per-tile description written by the scan (8 ints, 32 bytes: two cp.async chunks).
struct TileMeta { int list, n_rows, q0, k0, len_q, len_k, pad0, pad1; };

__device__ __forceinline__ void seq_bounds(const FwdParams &p, int b, int &q0, int &len_q, int &k0, int &len_k)
{
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    q0 = cu_q[b];
    len_q = cu_q[b + 1] - q0;
    k0 = cu_k[b];
    len_k = cu_k[b + 1] - k0;
}

// Two fp32 additions into global memory, done in L2 (one vector reduction on sm_90).
__device__ __forceinline__ void red_add2(float *a, float x, float y)
{
% if arch.sm >= 90 then
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(a), "f"(x), "f"(y) : "memory");
% else
    atomicAdd(a, x);
    atomicAdd(a + 1, y);
% end
}

// The list kernels' CTA: up to LIST_ROWS query rows of one chunk, i.e. of one (sequence,
// head); such rows pick few distinct lists, so their picks are counted in shared memory first
// and each distinct list costs one global atomic per CTA (not one per pick). Blocks are counted
// in windows of LIST_BINS, enough for any sequence of LIST_BINS x block_size keys in one window.
#define LIST_BINS 8192
struct ListCta {
    int h, b, q0, len_q, k0, len_k;
    int row0, n_rows;   // rows [row0, row0 + n_rows) of the sequence
    int list0;          // the list of (chunk, block 0)
    int n_blocks;       // blocks of the sequence's keys: every pick is below this
};

// This CTA's rows: blockIdx.x walks the chunks, and the ceil(chunk_rows / ROWS) CTAs of each.
template <int ROWS>
__device__ __forceinline__ bool list_cta(const FwdParams &p, ListCta &c)
{
    c.h = blockIdx.y;
    c.b = blockIdx.z;
    seq_bounds(p, c.b, c.q0, c.len_q, c.k0, c.len_k);
    const int chunk_rows = (int)p.chunk_rows, per_chunk = (chunk_rows + ROWS - 1) / ROWS;
    const int rc = blockIdx.x / per_chunk;
    c.row0 = rc * chunk_rows + (blockIdx.x % per_chunk) * ROWS;
    const int row_end = min(min(c.row0 + ROWS, (rc + 1) * chunk_rows), c.len_q);
    c.n_rows = row_end - c.row0;
    c.list0 = ((c.b * (int)p.hq + c.h) * (int)p.row_chunks + rc) * (int)p.max_blocks;
    c.n_blocks = (c.len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
    return c.n_rows > 0;
}

// The CTA's selection, row r at r * hq * top_k.
__device__ __forceinline__ const int *list_sel(const FwdParams &p, const ListCta &c)
{
    return reinterpret_cast<const int *>(p.sel) + ((long long)(c.q0 + c.row0) * p.hq + c.h) * MOBA_TOP_K;
}

// fn(r, s, blk) for each pick of the CTA (row r, slot s): consecutive threads on consecutive
// entries (a row's top_k ints are contiguous), four loads in flight per thread before any use.
template <int ROWS, typename F>
__device__ __forceinline__ void list_picks(const FwdParams &p, const ListCta &c, F &&fn)
{
    constexpr int U = 4;
    const int *sel = list_sel(p, c);
    const long long stride = p.hq * MOBA_TOP_K;
    const int n = c.n_rows * MOBA_TOP_K;
    for (int i0 = threadIdx.x; i0 < n; i0 += ROWS * U) {
        int blk[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + u * ROWS;
            blk[u] = i < n ? __ldg(&sel[(i / MOBA_TOP_K) * stride + i % MOBA_TOP_K]) : 0;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + u * ROWS;
            if (i < n) fn(i / MOBA_TOP_K, i % MOBA_TOP_K, blk[u]);
        }
    }
}

// used[r]: the row's usable picks, those before its first negative entry.
template <int ROWS>
__device__ __forceinline__ void list_used(const FwdParams &p, const ListCta &c, int *used)
{
    for (int r = threadIdx.x; r < c.n_rows; r += ROWS) used[r] = MOBA_TOP_K;
    __syncthreads();
    list_picks<ROWS>(p, c, [&](int r, int s, int blk) {
        if (blk < 0) atomicMin(&used[r], s);
    });
    __syncthreads();
}

// hist[blk - w0] = the CTA's usable picks of blocks [w0, w0 + LIST_BINS).
template <int ROWS>
__device__ __forceinline__ void list_histogram(const FwdParams &p, const ListCta &c, const int *used, int *hist, int w0)
{
    const int w1 = min(w0 + LIST_BINS, c.n_blocks);
    for (int i = threadIdx.x; i < LIST_BINS; i += ROWS) hist[i] = 0;
    __syncthreads();
    list_picks<ROWS>(p, c, [&](int r, int s, int blk) {
        if (s < used[r] && blk >= w0 && blk < w1) atomicAdd(&hist[blk - w0], 1);
    });
    __syncthreads();
}

// 1. Queries per list, and each row's reference; rows that selected nothing get o = 0 and
// LSE = -inf here, since no tile will visit them.
template <int ROWS>
__global__ void __launch_bounds__(ROWS) moba_attn_count(const FwdParams p)
{
    __shared__ int hist[LIST_BINS];
    __shared__ int used[ROWS];
    ListCta c;
    if (!list_cta<ROWS>(p, c)) return;
    list_used<ROWS>(p, c, used);
    int *count = reinterpret_cast<int *>(p.list_count);
    for (int w0 = 0; w0 < c.n_blocks; w0 += LIST_BINS) {
        list_histogram<ROWS>(p, c, used, hist, w0);
        for (int i = threadIdx.x; i < min(LIST_BINS, c.n_blocks - w0); i += ROWS)
            if (hist[i]) atomicAdd(&count[c.list0 + w0 + i], hist[i]);
        __syncthreads();   // hist is cleared for the next window
    }

    // The reference, four lanes a row (each a quarter of the head dims, 16-byte loads); the
    // loop is uniform per warp, for the shuffles.
    float *row_ref = reinterpret_cast<float *>(p.row_ref);
    const int kvh = c.h / MOBA_GQA, quarter = threadIdx.x % 4;
    for (int base = threadIdx.x / 32 * 8; base < c.n_rows; base += ROWS / 4) {
        const int r = base + threadIdx.x % 32 / 4, row = c.row0 + r;
        const long long qh = (long long)(c.q0 + row) * p.hq + c.h;
        const bool live = r < c.n_rows && used[r] > 0;
        if (r < c.n_rows && !live) {
            uint4 *o = reinterpret_cast<uint4 *>(reinterpret_cast<elem_t *>(p.out) + (long long)(c.q0 + row) * p.o_row_stride + c.h * p.o_head_stride);
            for (int k = quarter; k < MOBA_HEAD_DIM / 8; k += 4) o[k] = make_uint4(0, 0, 0, 0);
            if (quarter == 0) {
                reinterpret_cast<float *>(p.lse)[qh] = -INFINITY;
                row_ref[qh] = -INFINITY;
            }
        }
        float dot = 0.f;
        if (live) {
            // A score the row certainly attends to, or a mean of such scores.
            const elem_t *q = reinterpret_cast<const elem_t *>(p.q) + (long long)(c.q0 + row) * p.q_row_stride + c.h * p.q_head_stride;
% if spec.causal then
            const int t = row + c.len_k - c.len_q;   // >= 0: a row before the first key selects nothing
%   if spec.conv_width > 0 then
            const elem_t *kr = reinterpret_cast<const elem_t *>(p.kprime) + ((long long)(c.k0 + t) * p.hkv + kvh) * MOBA_HEAD_DIM;
%   else
            const elem_t *kr = reinterpret_cast<const elem_t *>(p.k) + (long long)(c.k0 + t) * p.k_row_stride + kvh * p.k_head_stride;
%   end
% else
            const int first = list_sel(p, c)[r * p.hq * MOBA_TOP_K];
            const float *kr = reinterpret_cast<const float *>(p.centroid) +
                              (((long long)c.b * p.max_blocks + first) * p.hkv + kvh) * MOBA_HEAD_DIM;
% end
#pragma unroll
            for (int k = quarter * 8; k < MOBA_HEAD_DIM; k += 32) {
                float qv[8], kv[8];
                load8(q + k, qv);
% if spec.causal then
                load8(kr + k, kv);
% else
                const float4 k_lo = *reinterpret_cast<const float4 *>(kr + k), k_hi = *reinterpret_cast<const float4 *>(kr + k + 4);
                kv[0] = k_lo.x; kv[1] = k_lo.y; kv[2] = k_lo.z; kv[3] = k_lo.w;
                kv[4] = k_hi.x; kv[5] = k_hi.y; kv[6] = k_hi.z; kv[7] = k_hi.w;
% end
#pragma unroll
                for (int j = 0; j < 8; j++) dot = fmaf(qv[j], kv[j], dot);
            }
        }
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        if (live && quarter == 0) row_ref[qh] = dot * ((float)p.softmax_scale * 1.4426950408889634f);
    }
}

// Exclusive scan of a CTA's 4 values per thread; returns the CTA total.
__device__ __forceinline__ int cta_scan4(int v[4], int *warp_sums)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int own = v[0] + v[1] + v[2] + v[3];
    int incl = own;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
        const int x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += x;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int w = warp_sums[lane], wi = w;
#pragma unroll
        for (int o = 1; o < 32; o *= 2) {
            const int x = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += x;
        }
        warp_sums[lane] = wi - w;   // exclusive
        if (lane == 31) warp_sums[32] = wi;
    }
    __syncthreads();
    int run = warp_sums[warp] + incl - own;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int x = v[i];
        v[i] = run;
        run += x;
    }
    const int total = warp_sums[32];
    __syncthreads();   // warp_sums may be reused
    return total;
}

__device__ __forceinline__ void segment_tiles(const FwdParams &p, int seg, int v[4])
{
    const int *count = reinterpret_cast<const int *>(p.list_count);
    const int base = seg * SCAN_SEG + threadIdx.x * 4;
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = base + i < (int)p.n_lists ? (count[base + i] + TILE_M - 1) / TILE_M : 0;
}

// 2a. Tiles per segment of lists.
__global__ void __launch_bounds__(1024) moba_attn_scan_reduce(const FwdParams p)
{
    __shared__ int warp_sums[33];
    int v[4];
    segment_tiles(p, blockIdx.x, v);
    const int total = cta_scan4(v, warp_sums);
    if (threadIdx.x == 0) reinterpret_cast<int *>(p.scan_carry)[blockIdx.x] = total;
}

// 2b. Exclusive scan of the segment sums (one CTA, any count) and the total tile count.
__global__ void __launch_bounds__(1024) moba_attn_scan_top(const FwdParams p)
{
    __shared__ int warp_sums[33];
    const int n = (int)((p.n_lists + SCAN_SEG - 1) / SCAN_SEG);
    int *carry = reinterpret_cast<int *>(p.scan_carry);
    int run = 0;
    for (int base = 0; base < n; base += 4096) {
        int v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int at = base + threadIdx.x * 4 + i;
            v[i] = at < n ? carry[at] : 0;
        }
        const int total = cta_scan4(v, warp_sums);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int at = base + threadIdx.x * 4 + i;
            if (at < n) carry[at] = run + v[i];
        }
        run += total;
    }
    if (threadIdx.x == 0) {
        reinterpret_cast<int *>(p.tile_offset)[p.n_lists] = run;
        *reinterpret_cast<int *>(p.fallback) = 0;   // before any finalize of this call
    }
}

// 2c. Each list's first tile and its scatter cursor (tiles are 64-entry aligned in `entries`).
__global__ void __launch_bounds__(1024) moba_attn_scan_down(const FwdParams p)
{
    __shared__ int warp_sums[33];
    int v[4];
    segment_tiles(p, blockIdx.x, v);
    cta_scan4(v, warp_sums);
    const int seg_base = reinterpret_cast<const int *>(p.scan_carry)[blockIdx.x];
    int *tile_offset = reinterpret_cast<int *>(p.tile_offset), *cursor = reinterpret_cast<int *>(p.list_cursor);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int list = blockIdx.x * SCAN_SEG + threadIdx.x * 4 + i;
        if (list >= (int)p.n_lists) break;
        const int first = seg_base + v[i];
        tile_offset[list] = first;
        cursor[list] = first * TILE_M;
    }
}

// 3. Scatter (row, slot, last) into the lists; the thread that takes a tile's first entry writes
// the tile's description (spread over the whole grid, not the scan's few CTAs). Each CTA takes
// one range per distinct list with one global atomic, then places its picks inside the range
// with shared-memory atomics. Order within a list varies run to run, and so does the order of
// the fp32 additions into a query's row (results agree to rounding).
template <int ROWS>
__global__ void __launch_bounds__(ROWS) moba_attn_scatter(const FwdParams p)
{
    __shared__ int hist[LIST_BINS];   // counts, then the CTA's next position in each list
    __shared__ int used[ROWS];
    ListCta c;
    if (!list_cta<ROWS>(p, c)) return;
    list_used<ROWS>(p, c, used);
    int *cursor = reinterpret_cast<int *>(p.list_cursor);
    unsigned *entries = reinterpret_cast<unsigned *>(p.entries);
    for (int w0 = 0; w0 < c.n_blocks; w0 += LIST_BINS) {
        list_histogram<ROWS>(p, c, used, hist, w0);
        for (int i = threadIdx.x; i < min(LIST_BINS, c.n_blocks - w0); i += ROWS)
            if (hist[i]) hist[i] = atomicAdd(&cursor[c.list0 + w0 + i], hist[i]);
        __syncthreads();
        const int w1 = min(w0 + LIST_BINS, c.n_blocks);
        list_picks<ROWS>(p, c, [&](int r, int s, int blk) {
            const int n = used[r];
            if (s >= n || blk < w0 || blk >= w1) return;
            const int pos = atomicAdd(&hist[blk - w0], 1);
            entries[pos] = ((unsigned)(c.row0 + r) << 7) | ((unsigned)s << 1) | (s == n - 1 ? 1u : 0u);
            if (pos % TILE_M == 0) {
                const int list = c.list0 + blk;
                const int first = reinterpret_cast<const int *>(p.tile_offset)[list];
                const int n_list = reinterpret_cast<const int *>(p.list_count)[list];
                TileMeta m;
                m.list = list;
                m.n_rows = min(TILE_M, n_list - (pos - first * TILE_M));
                m.q0 = c.q0;
                m.k0 = c.k0;
                m.len_q = c.len_q;
                m.len_k = c.len_k;
                m.pad0 = m.pad1 = 0;
                reinterpret_cast<TileMeta *>(p.tile_meta)[pos / TILE_M] = m;
            }
        });
        __syncthreads();   // hist is cleared for the next window
    }
}

// The tile kernels' per-row work, shared by impl 2 (mma.sync) and impl 3 (wgmma), whose score
// and output accumulators have the same layout: this thread holds rows r and r + 8 of its warp's
// 16 (r = lane / 4), columns 2 (lane % 4) and 2 (lane % 4) + 1 of every 8.
struct TileRows {
    int chunk, row_chunk, h, key_begin, key_end;
    unsigned e_lo, e_hi;   // the rows' entries: query row << 7 | slot << 1 | last
    bool valid[2];         // the rows hold queries of the tile
    int t_lo, t_hi;        // key positions; rows past the tile's queries see every key
};

__device__ __forceinline__ TileRows tile_rows(const FwdParams &p, const TileMeta &m, const unsigned *entry, int warp, int lane)
{
    const int max_blocks = (int)p.max_blocks, row_chunks = (int)p.row_chunks;
    TileRows t;
    t.chunk = m.list / max_blocks;
    const int blk = m.list % max_blocks;
    t.h = (t.chunk / row_chunks) % (int)p.hq;
    t.row_chunk = t.chunk % row_chunks;
    t.key_begin = blk * MOBA_BLOCK;
    t.key_end = min(t.key_begin + MOBA_BLOCK, m.len_k);
    const int r_lo = warp * 16 + lane / 4;
    t.e_lo = entry[r_lo];
    t.e_hi = entry[r_lo + 8];
    t.valid[0] = r_lo < m.n_rows;
    t.valid[1] = r_lo + 8 < m.n_rows;
    t.t_lo = t.valid[0] ? (int)(t.e_lo >> 7) + m.len_k - m.len_q : 0x7fffffff;
    t.t_hi = t.valid[1] ? (int)(t.e_hi >> 7) + m.len_k - m.len_q : 0x7fffffff;
    return t;
}

// The rows' references (the count kernel's lower bounds of their max scaled scores).
__device__ __forceinline__ void tile_refs(const FwdParams &p, const TileMeta &m, const TileRows &t, float mx[2])
{
    const float *row_ref = reinterpret_cast<const float *>(p.row_ref);
#pragma unroll
    for (int r = 0; r < 2; r++)
        mx[r] = t.valid[r] ? __ldg(&row_ref[(long long)(m.q0 + (int)((r ? t.e_hi : t.e_lo) >> 7)) * p.hq + t.h]) : 0.f;
}

// P = exp2(S scale - ref) for the step of TILE_N keys from n0, in place, and its row sums into l.
// Scale; mask keys past the block or the sequence, and (causal) after t. Only a step that
// reaches past some row's t or past the keys needs the mask.
__device__ __forceinline__ void tile_probs(float (&s)[TILE_N / 8][4], const TileRows &t, int n0, float scale,
                                           const float mx[2], float l[2], int lane)
{
% if spec.causal then
    const bool need_mask = __any_sync(0xffffffffu, n0 + TILE_N > t.key_end || n0 + TILE_N - 1 > min(t.t_lo, t.t_hi));
% else
    const bool need_mask = n0 + TILE_N > t.key_end;
% end
#pragma unroll
    for (int nt = 0; nt < TILE_N / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = s[nt][e] * scale;
            if (need_mask) {
                const int key = n0 + nt * 8 + (lane & 3) * 2 + (e & 1);
% if spec.causal then
                if (key >= t.key_end || key > (e < 2 ? t.t_lo : t.t_hi)) v = -INFINITY;
% else
                if (key >= t.key_end) v = -INFINITY;
% end
            }
            const float pr = exp2f(v - mx[e >> 1]);   // ref <= max: the largest pr >= 1
            s[nt][e] = pr;
            l[e >> 1] += pr;
        }
}

// The A fragments of P for keys 16 kk .. 16 kk + 15 of the step, from the score accumulators.
__device__ __forceinline__ void probs_fragment(const float (&s)[TILE_N / 8][4], int kk, unsigned pa[4])
{
    pa[0] = pack_pair(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = pack_pair(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = pack_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = pack_pair(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Into the queries' fp32 rows of the ring: O and the row sums (a warp whose rows all lie past
// the tile's queries skips this).
__device__ __forceinline__ void tile_rows_out(const FwdParams &p, const TileRows &t, const float (&o)[MOBA_HEAD_DIM / 8][4],
                                              float l[2], int lane)
{
    float *acc_o = reinterpret_cast<float *>(p.acc_o);
    float *acc_l = reinterpret_cast<float *>(p.acc_l);
    const int chunk_rows = (int)p.chunk_rows;
    auto acc_row = [&](int r) {   // ring slot of the chunk, row within the chunk
        return (t.chunk % (int)p.ring_chunks) * chunk_rows + ((int)((r ? t.e_hi : t.e_lo) >> 7) - t.row_chunk * chunk_rows);
    };
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (!t.valid[r]) continue;
        float *ao = acc_o + (long long)acc_row(r) * MOBA_HEAD_DIM + (lane & 3) * 2;
#pragma unroll
        for (int dt = 0; dt < MOBA_HEAD_DIM / 8; dt++) red_add2(ao + dt * 8, o[dt][2 * r], o[dt][2 * r + 1]);
        if ((lane & 3) == 0) atomicAdd(&acc_l[acc_row(r)], l[r]);
    }
}

% if point.impl == 2 then
// 4. The tiles of the chunks [chunk_begin, chunk_end): a persistent grid walks them in a static
// order; each CTA fetches the next tiles' descriptions and entries two tiles ahead and loads the
// next tile's queries and keys (cp.async) while the current one computes. P = exp2(S - ref),
// O = P V, and O and rowsum(P) are added into the query's fp32 row.
struct TilesSmem {
    uint4 q[2][TILE_M * (MOBA_HEAD_DIM / 8)];
    uint4 k[2][TILE_N * (MOBA_HEAD_DIM / 8)];
    uint4 v[2][TILE_N * (MOBA_HEAD_DIM / 8)];
    TileMeta meta[4];
    unsigned entry[4][TILE_M];
    int id[4];
};
static_assert(sizeof(TilesSmem) == $(tiles_smem(spec)), "launch()'s shared memory size is TilesSmem's");

__global__ void __launch_bounds__(128, $(tile_ctas(spec))) moba_attn_tiles(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, NT = TILE_N / 8, DT = D / 8;
    constexpr int NSTEP = (MOBA_BLOCK + TILE_N - 1) / TILE_N;
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    TilesSmem &sm = *reinterpret_cast<TilesSmem *>(smem_raw);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int max_blocks = (int)p.max_blocks, row_chunks = (int)p.row_chunks, hq = (int)p.hq;
    const int *tile_offset = reinterpret_cast<const int *>(p.tile_offset);
    const int first_tile = tile_offset[p.chunk_begin * max_blocks], end_tile = tile_offset[p.chunk_end * max_blocks];
    const float scale = (float)p.softmax_scale * LOG2E;
% if spec.conv_width > 0 then
    const elem_t *kbase = reinterpret_cast<const elem_t *>(p.kprime);
    const long long k_row_stride = p.hkv * D, k_head_stride = D;
% else
    const elem_t *kbase = reinterpret_cast<const elem_t *>(p.k);
    const long long k_row_stride = p.k_row_stride, k_head_stride = p.k_head_stride;
% end
    const elem_t *vbase = reinterpret_cast<const elem_t *>(p.v);
    const elem_t *qbase = reinterpret_cast<const elem_t *>(p.q);
    auto tile_of = [&](int j) { return first_tile + (int)blockIdx.x + j * (int)gridDim.x; };

    // Description and entries of tile `tile` into ring slot `slot` (18 cp.async chunks).
    auto fetch_meta = [&](int tile, int slot) {
        if (tile >= end_tile || tid >= 2 + TILE_M / 4) return;
        if (tid < 2)
            cp_async16(reinterpret_cast<uint4 *>(&sm.meta[slot]) + tid,
                       reinterpret_cast<const uint4 *>(p.tile_meta) + (long long)tile * 2 + tid, true);
        else
            cp_async16(reinterpret_cast<uint4 *>(sm.entry[slot]) + (tid - 2),
                       reinterpret_cast<const uint4 *>(p.entries) + (long long)tile * (TILE_M / 4) + (tid - 2), true);
    };
    // Keys (values: is_v) of step `step` of the tile in meta slot `slot`, into buffer `buf`.
    auto load_kv = [&](int slot, int step, int buf, bool is_v) {
        constexpr int PASS = 128 / CH;   // rows per pass of the CTA's threads
        const TileMeta &m = sm.meta[slot];
        const int blk = m.list % max_blocks, h = (m.list / (max_blocks * row_chunks)) % hq, kvh = h / MOBA_GQA;
        const int key_begin = blk * MOBA_BLOCK, key_end = min(key_begin + MOBA_BLOCK, m.len_k);
        const int r0 = tid / CH, c = tid % CH, n0 = key_begin + step * TILE_N;
        // One 64-bit address per call, then a row stride per pass (rows past the keys read
        // the block's first row, with size 0).
        const long long stride = is_v ? p.v_row_stride : k_row_stride;
        const elem_t *base = (is_v ? vbase : kbase) + (long long)m.k0 * stride + kvh * (is_v ? p.v_head_stride : k_head_stride) + c * 8;
        const elem_t *first = base + (long long)key_begin * stride;
        const elem_t *src = base + (long long)(n0 + r0) * stride;
        uint4 *dst = is_v ? sm.v[buf] : sm.k[buf];
#pragma unroll
        for (int r = r0; r < TILE_N; r += PASS, src += PASS * stride) {
            const bool ok = n0 + r < key_end;
            cp_async16(&dst[swizzle(r, c)], ok ? src : first, ok);
        }
    };
    auto load_q = [&](int slot, int buf) {
        const TileMeta &m = sm.meta[slot];
        const int h = (m.list / (max_blocks * row_chunks)) % hq;
        for (int i = tid; i < TILE_M * CH; i += 128) {
            const int r = i / CH, c = i % CH;
            const bool ok = r < m.n_rows;
            const long long row = ok ? (long long)(sm.entry[slot][r] >> 7) : 0;
            cp_async16(&sm.q[buf][swizzle(r, c)], qbase + (m.q0 + row) * p.q_row_stride + h * p.q_head_stride + c * 8, ok);
        }
    };

    fetch_meta(tile_of(0), 0);
    fetch_meta(tile_of(1), 1);
    cp_async_wait_all();
    __syncthreads();
    // Two cp.async groups per step: {K, and Q and descriptions}, then {V}; a step waits for its
    // K group only, and for its V group after S = Q K^T and P, so V has that long to land.
    if (tile_of(0) < end_tile) {
        load_q(0, 0);
        load_kv(0, 0, 0, false);
    }
    cp_async_commit();
    if (tile_of(0) < end_tile) load_kv(0, 0, 0, true);
    cp_async_commit();

    int item = 0;
    for (int j = 0; tile_of(j) < end_tile; j++) {
        const int slot = j & 3;
        cp_async_wait<1>();
        __syncthreads();   // this tile's Q and step-0 K have landed; the previous tile is done with smem
        const TileMeta m = sm.meta[slot];
        const TileRows rows = tile_rows(p, m, sm.entry[slot], warp, lane);
        const int key_begin = rows.key_begin, key_end = rows.key_end;
        const bool warp_busy = warp * 16 < m.n_rows;
        float mx[2], l[2] = {0.f, 0.f};
        tile_refs(p, m, rows, mx);
        float o[DT][4];
#pragma unroll
        for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

        for (int step = 0; step < NSTEP; step++, item++) {
            if (step > 0) {
                cp_async_wait<1>();
                __syncthreads();
            }
            if (step == 0) fetch_meta(tile_of(j + 2), (j + 2) & 3);
            const bool next_tile = step + 1 == NSTEP && tile_of(j + 1) < end_tile;
            if (step + 1 < NSTEP) {
                load_kv(slot, step + 1, (item + 1) & 1, false);
            } else if (next_tile) {
                load_q((j + 1) & 3, (j + 1) & 1);
                load_kv((j + 1) & 3, 0, (item + 1) & 1, false);
            }
            cp_async_commit();
            if (step + 1 < NSTEP) load_kv(slot, step + 1, (item + 1) & 1, true);
            else if (next_tile) load_kv((j + 1) & 3, 0, (item + 1) & 1, true);
            cp_async_commit();
            const int n0 = key_begin + step * TILE_N;
            const bool active = warp_busy && n0 < key_end;
            const uint4 *q_s = sm.q[j & 1], *k_s = sm.k[item & 1], *v_s = sm.v[item & 1];
            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            if (active) {
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++) {
                    // Q's fragments from shared memory each step (the tile's Q buffer is not reused
                    // before the tile ends): 32 registers fewer than holding them.
                    unsigned qa[4];
                    ldsm_x4(smem_addr(&q_s[swizzle(warp * 16 + (lane & 15), 2 * kk + (lane >> 4))]), qa);
#pragma unroll
                    for (int nt = 0; nt < NT; nt += 2) {
                        const int mat = lane >> 3;
                        unsigned kb[4];
                        ldsm_x4(smem_addr(&k_s[swizzle((nt + (mat >> 1)) * 8 + (lane & 7), 2 * kk + (mat & 1))]), kb);
                        mma_16816(s[nt], qa, kb[0], kb[1]);
                        mma_16816(s[nt + 1], qa, kb[2], kb[3]);
                    }
                }
                tile_probs(s, rows, n0, scale, mx, l, lane);
            }
            cp_async_wait<2>();   // this step's V; the next step's K and V stay in flight
            __syncthreads();
            if (active) {
                // O += P V: the score accumulators become the A fragments of the next product.
#pragma unroll
                for (int kk = 0; kk < TILE_N / 16; kk++) {
                    unsigned pa[4];
                    probs_fragment(s, kk, pa);
#pragma unroll
                    for (int dt = 0; dt < DT; dt += 2) {
                        const int mat = lane >> 3;
                        unsigned vb[4];
                        ldsm_x4_trans(smem_addr(&v_s[swizzle(kk * 16 + (mat & 1) * 8 + (lane & 7), dt + (mat >> 1))]), vb);
                        mma_16816(o[dt], pa, vb[0], vb[1]);
                        mma_16816(o[dt + 1], pa, vb[2], vb[3]);
                    }
                }
            }
        }
        if (warp_busy) tile_rows_out(p, rows, o, l, lane);
    }
}
% else
%   include("attn_tiles_wgmma.cuh.tpl")
% end

// 5. Finalize the rows of the chunks [chunk_begin, chunk_end): o = acc / l, LSE = ref + log l,
// and clear the rows for the next group (one warp per row). Rows that selected nothing (ref =
// -inf) were written by the count kernel. A row whose sums are not finite (exp2(S - ref)
// overflowed) is marked for the fallback (ref = NaN) instead.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) moba_attn_finalize(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, DPL = D / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int chunk_rows = (int)p.chunk_rows, row_chunks = (int)p.row_chunks, hq = (int)p.hq;
    const long long i = (long long)blockIdx.x * WARPS + warp;   // row of the group
    const int chunk = (int)p.chunk_begin + (int)(i / chunk_rows);
    if (chunk >= (int)p.chunk_end) return;
    const int h = (chunk / row_chunks) % hq, b = chunk / (row_chunks * hq);
    const int row = (chunk % row_chunks) * chunk_rows + (int)(i % chunk_rows);
    int q0, len_q, k0, len_k;
    seq_bounds(p, b, q0, len_q, k0, len_k);
    if (row >= len_q) return;
    const long long qh = (long long)(q0 + row) * hq + h;
    float *row_ref = reinterpret_cast<float *>(p.row_ref);
    const float ref = row_ref[qh];
    if (ref == -INFINITY) return;   // no selection: no tile touched the row
    const long long a = (long long)(chunk % (int)p.ring_chunks) * chunk_rows + (int)(i % chunk_rows);
    float *lp = reinterpret_cast<float *>(p.acc_l) + a;
    const float l = __ldcg(lp);
    float2 *ao = reinterpret_cast<float2 *>(reinterpret_cast<float *>(p.acc_o) + a * D + lane * DPL);
    float acc[DPL];
    bool finite = l > 0.f && l <= 3.4e38f;
#pragma unroll
    for (int c = 0; c < DPL / 2; c++) {
        const float2 x = __ldcg(ao + c);
        acc[2 * c] = x.x;
        acc[2 * c + 1] = x.y;
        finite = finite && fabsf(x.x) <= 3.4e38f && fabsf(x.y) <= 3.4e38f;   // false for inf and NaN
        __stcg(ao + c, make_float2(0.f, 0.f));
    }
    if (__all_sync(0xffffffffu, finite)) {
        const float inv = 1.f / l;
        unsigned *out = reinterpret_cast<unsigned *>(reinterpret_cast<elem_t *>(p.out) + (long long)(q0 + row) * p.o_row_stride +
                                                     h * p.o_head_stride + lane * DPL);
#pragma unroll
        for (int c = 0; c < DPL / 2; c++)
            out[c] = (unsigned)float_to_elem(acc[2 * c] * inv) | ((unsigned)float_to_elem(acc[2 * c + 1] * inv) << 16);
        if (lane == 0) reinterpret_cast<float *>(p.lse)[qh] = (ref + __log2f(l)) * 0.6931471805599453f;
    } else if (lane == 0) {
        row_ref[qh] = __int_as_float(0x7fc00000);
        *reinterpret_cast<volatile int *>(p.fallback) = 1;
    }
    if (lane == 0) __stcg(lp, 0.f);
}

// 6. The rows finalize marked (rare: the reference sat more than ~128 below the row's max, or
// 16 for fp16), exactly, by moba_attn_row; returns at once when there are none.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) moba_attn_fallback(const FwdParams p)
{
    __shared__ float q_smem[WARPS][MOBA_HEAD_DIM];
    if (*reinterpret_cast<const volatile int *>(p.fallback) == 0) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, hq = (int)p.hq;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const float *row_ref = reinterpret_cast<const float *>(p.row_ref);
    const long long n = (long long)cu_q[p.batch] * hq;
    for (long long i = (long long)blockIdx.x * WARPS + warp; i < n; i += (long long)gridDim.x * WARPS) {
        const float ref = row_ref[i];
        if (ref == ref) continue;   // not NaN: finalized
        const int q = (int)(i / hq), h = (int)(i % hq);
        int lo = 0, hi = (int)p.batch;   // the sequence b with cu_q[b] <= q < cu_q[b + 1]
        while (hi - lo > 1) {
            const int mid = (lo + hi) / 2;
            if (cu_q[mid] <= q) lo = mid;
            else hi = mid;
        }
        moba_attn_row(p, q_smem[warp], lo, h, q - cu_q[lo], lane);
    }
}
