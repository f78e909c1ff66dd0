%! -- Routing on tensor cores with on-chip selection (route impl 3), include()d by route.cu.tpl.
%! -- Each warp owns 32 query rows (two m16 fragments, q in registers) and scores them against
%! -- 32-centroid tiles: high and low parts (kconv_centroid's split) on mma.sync, fp32
%! -- accumulation. The selection never leaves the warp: every lane keeps the running k-th best
%! -- score of its rows as a threshold, so a candidate costs one compare; the rare ones that
%! -- beat it enter the row's min-heap in shared memory, and the threshold is refreshed.
%! -- impl 4 (sm_90a) computes the same score tiles on wgmma: each warpgroup's q fragments are
%! -- the A operand from registers (mma.sync's A layout), the tile's centroids B in 128-byte
%! -- swizzled shared memory, and the accumulators come back in mma.sync's C layout, so the
%! -- selection below reads them unchanged.
% include("mma.cuh.tpl")
% include("centroid_split.cuh.tpl")
% local heap = heap_slots(spec)
% local stages, scols = fast_shape(spec, point)
% local wg = point.impl == 4
% if wg then
%   include("wgmma.cuh.tpl")
% local WG_TY = spec.dtype == "bf16" and "bf16" or "f16"
% local acc = {}
% for i = 0, 15 do acc[#acc + 1] = "%" .. i end
% local function outs(c)
%   local t = {}
%   for i = 0, 15 do t[#t + 1] = '"' .. c .. 'f"(d[' .. (i // 4) .. '][' .. (i % 4) .. '])' end
%   return table.concat(t, ", ")
% end
% for _, first in ipairs({true, false}) do

// D (this warp's 16 rows of the warpgroup's 64 x 32) $(first and "=" or "+=") A (registers, mma.sync's A fragment of
// 16 rows x 16) B^T (32 centroid rows x 16, shared, K-major, 128-byte swizzle).
__device__ __forceinline__ void rf_wg_mma$(first and "_first" or "")(float (&d)[4][4], const unsigned (&a)[4], u64 desc_b)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n32k16.f32.$(WG_TY).$(WG_TY) "
                 "{$(table.concat(acc, ", "))}, {%16, %17, %18, %19}, %20, $(first and 0 or 1), 1, 1, 0;\n"
                 : $(outs(first and "=" or "+"))
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}
% end
% end

// Heap entries per row: the candidates kept besides the own block (causal) or all (non-causal).
#define RF_HEAP $(heap)

__device__ __forceinline__ void rf_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void rf_cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

// A candidate as one 64-bit key, larger = better: the score mapped to an order-preserving
// unsigned (-0 as +0) above the complemented block index, so equal scores rank the lower block
// first (moba.md's tie rule) and keys of different blocks never compare equal.
__device__ __forceinline__ u64 rf_key(float s, int block)
{
    unsigned u = __float_as_uint(s);
    if (u == 0x80000000u) u = 0u;
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)u << 32) | (unsigned)~block;
}

__device__ __forceinline__ float rf_key_score(u64 key)
{
    unsigned u = (unsigned)(key >> 32);
    return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

// take ? cand : v, opaque to the compiler: a select chain over a register array that it
// would otherwise turn into an indexed load, moving the whole array to local memory.
__device__ __forceinline__ float rf_pick(float v, float cand, bool take)
{
    float r;
    asm("{\n .reg .pred p;\n setp.ne.s32 p, %3, 0;\n selp.f32 %0, %1, %2, p;\n}\n"
        : "=f"(r) : "f"(cand), "f"(v), "r"((int)take));
    return r;
}

% if heap > 0 then
// Min-heap of RF_HEAP keys, one row's column of [slot][ROWS]: the root is the worst kept entry.
// Four children a node (slots 4 i + 1 .. 4 i + 4): half the levels of a binary heap. A level's
// four loads are unconditional (a missing child reads the last slot and counts as the largest
// key), so they are in flight together: one shared-memory latency a level, not four in a row
// behind branches.
template <int ROWS>
__device__ __forceinline__ void rf_sift_down(u64 *h, int pos, u64 key)
{
    for (;;) {
        const int c0 = 4 * pos + 1;
        if (c0 >= RF_HEAP) break;
        u64 k[4];
#pragma unroll
        for (int i = 0; i < 4; i++) k[i] = h[min(c0 + i, RF_HEAP - 1) * ROWS];
#pragma unroll
        for (int i = 1; i < 4; i++)
            if (c0 + i >= RF_HEAP) k[i] = ~0ull;
        // The smallest child, the lower slot on equal keys (keys of different blocks differ).
        const bool r01 = k[1] < k[0], r23 = k[3] < k[2];
        const u64 m01 = r01 ? k[1] : k[0], m23 = r23 ? k[3] : k[2];
        const bool right = m23 < m01;
        const u64 kc = right ? m23 : m01;
        if (key < kc) break;
        h[pos * ROWS] = kc;
        pos = c0 + (right ? 2 + (int)r23 : (int)r01);
    }
    h[pos * ROWS] = key;
}

// First slot of heap level d: (4^d - 1) / 3.
__host__ __device__ constexpr int rf_level_first(int d) { return ((1 << (2 * d)) - 1) / 3; }

// rf_sift_down from the root for a key of a block later than every kept one (blocks arrive in
// ascending order): on an equal score the key is the smaller, so comparing the scores (high
// words) decides. Unrolled by level: the levels whose nodes all have four children (known at
// compile time) load them at fixed offsets from one address, no clamps or masks.
template <int ROWS>
__device__ __forceinline__ void rf_replace_root(u64 *h, u64 key)
{
    const unsigned key_hi = (unsigned)(key >> 32);
    int pos = 0;
    u64 *hole = h;
#pragma unroll
    for (int d = 0; rf_level_first(d + 1) < RF_HEAP; d++) {
        const bool full = rf_level_first(d + 2) <= RF_HEAP;   // every node of level d has 4 children
        const int c0 = 4 * pos + 1;
        if (!full && c0 >= RF_HEAP) break;
        const u64 *c = h + c0 * ROWS;
        u64 k[4];
        if (full) {
#pragma unroll
            for (int i = 0; i < 4; i++) k[i] = c[i * ROWS];
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) k[i] = h[min(c0 + i, RF_HEAP - 1) * ROWS];
#pragma unroll
            for (int i = 1; i < 4; i++)
                if (c0 + i >= RF_HEAP) k[i] = ~0ull;
        }
        // The smallest child, the lower slot on equal keys, as in rf_sift_down.
        const bool r01 = k[1] < k[0], r23 = k[3] < k[2];
        const u64 m01 = r01 ? k[1] : k[0], m23 = r23 ? k[3] : k[2];
        const bool right = m23 < m01;
        const u64 kc = right ? m23 : m01;
        const int child = right ? 2 + (int)r23 : (int)r01;
        if (key_hi <= (unsigned)(kc >> 32)) break;
        *hole = kc;
        pos = c0 + child;
        hole = h + pos * ROWS;
    }
    *hole = key;
}

// A key of a block later than every kept one replaces the root if it is larger. Small heaps
// (two levels) keep the generic sift: there the unrolled one costs registers (a spill at k = 8).
template <int ROWS>
__device__ __forceinline__ void rf_offer(u64 *h, u64 key)
{
    if constexpr (RF_HEAP > 8) {
        if ((unsigned)(key >> 32) > (unsigned)(h[0] >> 32)) rf_replace_root<ROWS>(h, key);
    } else {
        if (key > h[0]) rf_sift_down<ROWS>(h, 0, key);
    }
}
% end

// Bitonic sort, ascending, of the 4 P values of each lane of a quad (element quad * P + e of
// the quad's 4 P), P a power of two: strides below P within a lane, P and 2 P between lanes.
template <int P>
__device__ __forceinline__ void rf_quad_sort(int (&v)[P], int quad, unsigned quad_mask)
{
#pragma unroll
    for (int k = 2; k <= 4 * P; k *= 2) {
        // Element i sorts ascending in its k-run when bit k of i is 0; bit k is e's (compile
        // time) below P, quad's at P and 2 P, 0 at 4 P.
        const bool quad_up = k < P || k == 4 * P || !(quad & (k / P));
#pragma unroll
        for (int j = k / 2; j > 0; j /= 2) {
            if (j >= P) {
                const bool lower = !(quad & (j / P));   // this lane holds the lower element of each pair
#pragma unroll
                for (int e = 0; e < P; e++) {
                    const bool up = k < P ? !(e & k) : quad_up;
                    const int other = __shfl_xor_sync(quad_mask, v[e], j / P);
                    v[e] = lower == up ? min(v[e], other) : max(v[e], other);
                }
            } else {
#pragma unroll
                for (int e = 0; e < P; e++) {
                    if (e & j) continue;
                    const bool up = k < P ? !(e & k) : quad_up;
                    const int lo = min(v[e], v[e + j]), hi = max(v[e], v[e + j]);
                    v[e] = up ? lo : hi;
                    v[e + j] = up ? hi : lo;
                }
            }
        }
    }
}

// MT m16 fragments (16 MT query rows) per warp.
template <int WARPS, int MT, int MIN_CTAS>
__global__ void __launch_bounds__(WARPS * 32, MIN_CTAS) moba_route_fast(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, THREADS = WARPS * 32;
    constexpr int WR = 16 * MT, ROWS = WARPS * WR, TN = 32, NT = TN / 8;
    // STAGES tiles in flight; survivors are staged SCOLS columns at a time (route.cu.tpl's
    // fast_shape: 2 and 16 where that fits a second CTA on the SM, else 3 and 32).
    constexpr int STAGES = $(stages), SCOLS = $(scols), ROUNDS = TN / SCOLS, NT_ROUND = NT / ROUNDS;
    static_assert((STAGES == 2 || STAGES == 3) && (SCOLS == 16 || SCOLS == 32), "route.cu.tpl's fast_shape");
    constexpr int PART = TN * CH, STAGE = 2 * PART;   // 16-byte chunks: high rows, then low rows
% if wg then
    // A part is wgmma's layout: column blocks of 64 elements, each TN rows of 128 bytes (wg_chunk).
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    if (smem_addr(smem_raw) & 1023u) __trap();   // the swizzle atoms need 1024-byte alignment
% else
    extern __shared__ __align__(128) unsigned char smem_raw[];
% end
    uint4 *stage_s = reinterpret_cast<uint4 *>(smem_raw);            // [STAGES][2][TN][CH]
    u64 *heap = reinterpret_cast<u64 *>(stage_s + STAGES * STAGE);    // [RF_HEAP][ROWS]
    constexpr int SROW = SCOLS + 1;
    float *stage_sc = reinterpret_cast<float *>(heap + RF_HEAP * ROWS); // [ROWS][SROW]: survivors
    uint4 *q_s = stage_s;                                             // [ROWS][CH], before the loop

    const int h = blockIdx.y, b = blockIdx.z, kvh = h / MOBA_GQA;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    const int q0 = cu_q[b], len_q = cu_q[b + 1] - q0;
    const int len_k = cu_k[b + 1] - cu_k[b];
    // Causal tiles near the end of a sequence see the most blocks: launch them first.
    const int row0 = (gridDim.x - 1 - blockIdx.x) * ROWS;
    if (row0 >= len_q) return;
    const int n_blocks = (len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, quad = lane % 4;

    const elem_t *q = reinterpret_cast<const elem_t *>(p.q);
    for (int i = tid; i < ROWS * CH; i += THREADS) {
        const int r = i / CH, c = i % CH;
        const bool ok = row0 + r < len_q;
        const elem_t *src = ok ? q + (long long)(q0 + row0 + r) * p.q_row_stride + h * p.q_head_stride + c * 8 : q;
        cp_async16(&q_s[swizzle(r, c)], src, ok);
    }
    cp_async_wait_all();
    __syncthreads();
    unsigned qa[MT][KSTEPS][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
            ldsm_x4(smem_addr(&q_s[swizzle(warp * WR + mt * 16 + (lane & 15), 2 * kk + (lane >> 4))]), qa[mt][kk]);
    __syncthreads();                               // q_s is about to hold centroid tiles

    // A lane holds 2 * MT rows of the mma C layout: r = 2 * mt + half is CTA row
    // warp * WR + mt * 16 + half * 8 + g; limit[r] candidates (blocks 0..limit-1) each.
    int limit[2 * MT];
    float thr[2 * MT];
#pragma unroll
    for (int r = 0; r < 2 * MT; r++) {
        const int row = row0 + warp * WR + (r >> 1) * 16 + (r & 1) * 8 + g;
% if spec.causal then
        const int t = row + len_k - len_q;
        limit[r] = row < len_q && t >= 0 ? t / MOBA_BLOCK : 0;
% else
        limit[r] = row < len_q ? n_blocks : 0;
% end
        thr[r] = -INFINITY;
    }
% if heap == 0 then
    const int tile_limit = 0;                      // causal top_k = 1: the own block alone
% elseif spec.causal then
    const int last_t = min(row0 + ROWS, len_q) - 1 + len_k - len_q;
    const int tile_limit = last_t >= 0 ? last_t / MOBA_BLOCK : 0;
% else
    const int tile_limit = n_blocks;
% end
    const int n_tiles = (tile_limit + TN - 1) / TN;

    const long long block_stride = p.hkv * 2 * D;
    const elem_t *split = centroid_split(p) + ((long long)b * p.max_blocks * p.hkv + kvh) * 2 * D;
    // A stage is 2 TN rows (high parts, then low parts) of CH chunks; thread tid copies chunk
    // tid % CH of rows tid / CH + k * RSTEP.
    constexpr int RSTEP = THREADS / CH;
    static_assert(STAGE % THREADS == 0 && TN % RSTEP == 0, "a stage splits evenly over the threads");
    const int ld_c = tid % CH, ld_r = tid / CH;
    auto issue = [&](int tile) {
        uint4 *dst = stage_s + (tile % STAGES) * STAGE;
        const elem_t *src = split + (long long)tile * TN * block_stride + ld_c * 8;
#pragma unroll 1
        for (int k = 0; k < STAGE / THREADS; k++) {   // unrolled, ptxas would hoist 8 addresses
            const int rr = ld_r + k * RSTEP, part = rr / TN, j = rr % TN;
            const bool ok = tile * TN + j < n_blocks;
% if wg then
            cp_async16(&dst[part * PART + wg_chunk<TN>(j, ld_c)], ok ? src + j * block_stride + part * D : split, ok);
% else
            cp_async16(&dst[part * PART + swizzle(j, ld_c)], ok ? src + j * block_stride + part * D : split, ok);
% end
        }
    };
#pragma unroll
    for (int t = 0; t < STAGES - 1; t++) {
        if (n_tiles > t) issue(t);
        rf_cp_commit();
    }

    // Row r's heap column: heap_row + (r >> 1) * 16 + (r & 1) * 8; its staging row likewise.
    // Lane `quad` of a quad owns row r = quad (when r < 2 MT): only it touches that heap
    // until the emit.
    u64 *const heap_row = heap + warp * WR + g;
    float *const stage_row = stage_sc + (warp * WR + g) * SROW;
#define RF_HEAP_OF(r) (heap_row + ((r) >> 1) * 16 + ((r) & 1) * 8)
#define RF_STAGE_OF(r) (stage_row + (((r) >> 1) * 16 + ((r) & 1) * 8) * SROW)
    const bool owner = quad < 2 * MT;
    const int own_r = owner ? quad : 0;
    u64 *const own_heap = RF_HEAP_OF(own_r);
    float *const own_stage = RF_STAGE_OF(own_r);
    int own_limit = 0;
#pragma unroll
    for (int r = 0; r < 2 * MT; r++)
        if (own_r == r) own_limit = limit[r];
% if heap > 0 then
    // Tiles [FAST_FIRST, fast_end) come after every heap's fill and lie wholly below the
    // diagonal of every row of the warp: there the threshold alone decides (warp-uniform).
    constexpr int FAST_FIRST = (RF_HEAP + TN - 1) / TN;
    int warp_limit = limit[0];
#pragma unroll
    for (int r = 1; r < 2 * MT; r++) warp_limit = min(warp_limit, limit[r]);
    const int fast_end = __reduce_min_sync(0xffffffffu, warp_limit) / TN;
% end

    for (int tile = 0; tile < n_tiles; tile++) {
        rf_cp_wait<STAGES - 2>();                  // this tile's group landed (later ones may fly)
% if wg then
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");   // ... and is visible to wgmma
% end
        __syncthreads();                           // ... for every thread; the stage read last
        if (tile + STAGES - 1 < n_tiles) issue(tile + STAGES - 1);   // iteration is free again
        rf_cp_commit();
        const uint4 *hi_s = stage_s + (tile % STAGES) * STAGE;   // the lo half sits PART chunks on

        float s[MT][NT][4];
% if wg then
        {
            // Descriptor of the high part's first 16 columns; the others lie at fixed offsets
            // (16-byte units in the low word): low part PART chunks on, column block kk / 4 at
            // TN rows of 128 bytes, step kk % 4 at 32 bytes.
            const u64 desc = wg_desc(smem_addr(hi_s), 16, 1024);
            const unsigned desc_lo = (unsigned)desc, desc_hi = (unsigned)(desc >> 32);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++)
#pragma unroll
                for (int part = 1; part >= 0; part--) {   // low, then high: as the mma.sync path
                    const unsigned off = (part * PART * 16 + (kk >> 2) * TN * 128 + (kk & 3) * 32) >> 4;
                    const u64 desc_b = ((u64)desc_hi << 32) | (desc_lo + off);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {   // the chains of the m16 fragments alternate
                        if (kk == 0 && part == 1) rf_wg_mma_first(s[mt], qa[mt][kk], desc_b);
                        else rf_wg_mma(s[mt], qa[mt][kk], desc_b);
                    }
                }
            wg_commit();
            wg_wait_all();
#pragma unroll
            for (int mt = 0; mt < MT; mt++) wg_hold(s[mt]);
        }
% else
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
        // ldmatrix rows: tile row (nt + mat / 2) * 8 + lane % 8, chunk 2 kk + mat % 2, swizzled:
        // the chunk is (2 kk) ^ x with x = (mat % 2) ^ (lane % 8), so only kk % 4 varies at run time.
        const unsigned hi_base = smem_addr(hi_s + ((lane >> 4) * 8 + (lane & 7)) * CH);
        const int x = ((lane >> 3) & 1) ^ (lane & 7);
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                const unsigned at = hi_base + (nt * 8 * CH + ((2 * kk) & ~7) + (((2 * kk) & 7) ^ x)) * 16;
                unsigned fl[4], fh[4];
                ldsm_x4(at + PART * 16, fl);
                ldsm_x4(at, fh);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816(s[mt][nt], qa[mt][kk], fl[0], fl[1]);
                    mma_16816(s[mt][nt + 1], qa[mt][kk], fl[2], fl[3]);
                    mma_16816(s[mt][nt], qa[mt][kk], fh[0], fh[1]);
                    mma_16816(s[mt][nt + 1], qa[mt][kk], fh[2], fh[3]);
                }
            }
        }
% end
% if heap > 0 then
        // Bit 8 r + 2 nt + e: the score s[mt][nt][2 half + e] of row r at block j0 + 8 nt + 2 quad + e
        // beats the row's threshold (or fills a free slot: so even a NaN score fills the heap).
        const int j0 = tile * TN;
        unsigned mask = 0;
        const bool fast = tile >= FAST_FIRST && tile < fast_end;
        if (fast) {
#pragma unroll
            for (int r = 0; r < 2 * MT; r++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++)
                        if (s[r >> 1][nt][(r & 1) * 2 + e] > thr[r]) mask |= 1u << (r * 8 + nt * 2 + e);
        } else {
#pragma unroll
            for (int r = 0; r < 2 * MT; r++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int j = j0 + nt * 8 + quad * 2 + e;
                        if (j < limit[r] && (j < RF_HEAP || s[r >> 1][nt][(r & 1) * 2 + e] > thr[r])) mask |= 1u << (r * 8 + nt * 2 + e);
                    }
        }
        if (__any_sync(0xffffffffu, mask)) {
            // Survivors' scores go through this warp's staging rows, so that the lane owning
            // a row reads them by column: no register array indexed at run time, no turns.
            // SCOLS columns at a time (fragments nt of NT_ROUND rd .. NT_ROUND (rd + 1) - 1),
            // in ascending order.
            unsigned bits = 0;
#pragma unroll
            for (int rd = 0; rd < ROUNDS; rd++) {
#pragma unroll
                for (int r = 0; r < 2 * MT; r++)
#pragma unroll
                    for (int nt = NT_ROUND * rd; nt < NT_ROUND * (rd + 1); nt++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            if (mask >> (r * 8 + nt * 2 + e) & 1u)
                                RF_STAGE_OF(r)[nt * 8 + quad * 2 + e - SCOLS * rd] = s[r >> 1][nt][(r & 1) * 2 + e];
                if (rd == 0) {
                    // Row r's survivor columns: this lane's bit 2 nt + e is column 8 nt + 2 quad + e;
                    // OR over the quad, and keep the mask of the row this lane owns.
#pragma unroll
                    for (int r = 0; r < 2 * MT; r++) {
                        const unsigned b = mask >> (r * 8) & 0xffu;
                        unsigned m = ((b & 0x3u) | (b & 0xcu) << 6 | (b & 0x30u) << 12 | (b & 0xc0u) << 18) << (2 * quad);
                        m |= __shfl_xor_sync(0xffffffffu, m, 1);
                        m |= __shfl_xor_sync(0xffffffffu, m, 2);
                        if (quad == r) bits = m;
                    }
                }
                __syncwarp();                      // staged scores visible to the owners
                // In ascending block order: slots 0..RF_HEAP-1 fill in order (every candidate
                // survives until then), the last one heapifies, later ones replace the root.
                constexpr unsigned ROUND_COLS = SCOLS == 32 ? ~0u : (1u << (SCOLS % 32)) - 1u;
                unsigned rbits = bits >> (SCOLS * rd % 32) & ROUND_COLS;
                while (rbits) {
                    const int c = __ffs(rbits) - 1;
                    rbits &= rbits - 1;
                    const int j = j0 + SCOLS * rd + c;
                    const u64 key = rf_key(own_stage[c], j);
                    if (j < RF_HEAP) {
                        own_heap[j * ROWS] = key;
                        if (j == RF_HEAP - 1)
                            for (int i = (RF_HEAP - 2) / 4; i >= 0; i--) rf_sift_down<ROWS>(own_heap, i, own_heap[i * ROWS]);
                    } else {
                        rf_offer<ROWS>(own_heap, key);
                    }
                }
                if (rd + 1 < ROUNDS) __syncwarp(); // the next round rewrites the staging rows
            }
            // In a fast tile every row of the warp has a full heap.
            const float own_thr = owner && (fast || min(j0 + TN, own_limit) >= RF_HEAP) ? rf_key_score(own_heap[0]) : -INFINITY;
#pragma unroll
            for (int r = 0; r < 2 * MT; r++) thr[r] = __shfl_sync(0xffffffffu, own_thr, (lane & ~3) | r);
            __syncwarp();                          // staging rows free for the next tile
        }
% end
    }

    // Emit each row's blocks ascending, the four lanes of a quad together (a sort or a ranking
    // by counting, below); causal appends the own block (the largest).
    __syncwarp();
    constexpr int PER_LANE = (RF_HEAP + 3) / 4;
#pragma unroll
    for (int r = 0; r < 2 * MT; r++) {
        const int row = row0 + warp * WR + (r >> 1) * 16 + (r & 1) * 8 + g;
        if (row >= len_q) continue;
        int *out = reinterpret_cast<int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K;
        const int kept = min(RF_HEAP, limit[r]);
        int total = kept;
% if spec.causal then
        const int t = row + len_k - len_q;
        if (t < 0) total = 0;
        else total = kept + 1;
        if (t >= 0 && quad == 0) out[kept] = t / MOBA_BLOCK;
% end
% if heap > 0 then
        const unsigned *idx = reinterpret_cast<const unsigned *>(RF_HEAP_OF(r));   // low words
        if constexpr (RF_HEAP > 24) {
            // Many entries: the quad sorts them (lane quad holds slots quad * SORT_P + e,
            // missing ones as INT_MAX, which sort last), then writes its sorted positions.
            constexpr int SORT_P = PER_LANE <= 8 ? 8 : 16;
            static_assert(4 * SORT_P >= RF_HEAP, "the quad's sort holds the heap");
            int v[SORT_P];
#pragma unroll
            for (int e = 0; e < SORT_P; e++) {
                const int i = quad * SORT_P + e;
                v[e] = i < kept ? (int)~idx[2 * i * ROWS] : 0x7fffffff;
            }
            rf_quad_sort<SORT_P>(v, quad, 0xfu << (lane & 28));
#pragma unroll
            for (int e = 0; e < SORT_P; e++)
                if (quad * SORT_P + e < kept) out[quad * SORT_P + e] = v[e];
        } else {
            // Few entries: the quad's lanes rank a quarter each by counting smaller indices.
            int mine[PER_LANE > 0 ? PER_LANE : 1], rank[PER_LANE > 0 ? PER_LANE : 1];
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) {
                const int i = quad + 4 * e;
                mine[e] = i < kept ? (int)~idx[2 * i * ROWS] : 0x7fffffff;
                rank[e] = 0;
            }
            for (int m = 0; m < kept; m++) {
                const int jm = (int)~idx[2 * m * ROWS];
#pragma unroll
                for (int e = 0; e < PER_LANE; e++) rank[e] += jm < mine[e];
            }
#pragma unroll
            for (int e = 0; e < PER_LANE; e++)
                if (quad + 4 * e < kept) out[rank[e]] = mine[e];
        }
% end
        for (int i = total + quad; i < MOBA_TOP_K; i += 4) out[i] = -1;
    }
}
