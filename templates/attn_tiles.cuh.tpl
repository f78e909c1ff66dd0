%! -- Block-centric attention on tensor cores (attn_fwd impl 2), include()d by attn_fwd.cu.tpl.
%! -- The selection is transposed into one query list per (sequence, head, key block); each
%! -- 64-query tile of a list meets its block's keys in mma.sync tiles, and writes one partial
%! -- (o, lse) per (query, slot); a merge kernel combines a query's top_k partials.
% local D = spec.head_dim
% local BN = (spec.block_size % 64 == 0) and 64 or ((spec.block_size % 32 == 0) and 32 or 16)
% include("mma.cuh.tpl")
#define TILE_M 64          // queries per tile: 4 warps x 16 rows
#define TILE_N $(BN)       // keys per step: the largest of 64, 32, 16 dividing the block size

__device__ __forceinline__ void seq_bounds(const FwdParams &p, int b, int &q0, int &len_q, int &k0, int &len_k)
{
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    q0 = cu_q[b];
    len_q = cu_q[b + 1] - q0;
    k0 = cu_k[b];
    len_k = cu_k[b + 1] - k0;
}

// 1. Queries per (sequence, head, block): one thread per (row, head), grid like the router's.
template <int ROWS>
__global__ void __launch_bounds__(ROWS) moba_attn_count(const FwdParams p)
{
    const int h = blockIdx.y, b = blockIdx.z;
    int q0, len_q, k0, len_k;
    seq_bounds(p, b, q0, len_q, k0, len_k);
    const int row = blockIdx.x * ROWS + threadIdx.x;
    if (row >= len_q) return;
    const int *sel = reinterpret_cast<const int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K;
    int *count = reinterpret_cast<int *>(p.block_count) + ((long long)b * p.hq + h) * p.max_blocks;
    for (int s = 0; s < MOBA_TOP_K && sel[s] >= 0; s++) atomicAdd(&count[sel[s]], 1);
}

// 2. Exclusive scans of the counts and of their 64-query tiles, in one CTA: the lists number
// batch * hq * max_blocks (tens of thousands), a few microseconds of work.
__global__ void __launch_bounds__(1024) moba_attn_scan(const FwdParams p)
{
    __shared__ int count_sum[1024], tile_sum[1024];
    const int n = (int)(p.batch * p.hq * p.max_blocks), tid = threadIdx.x;
    const int per = (n + 1023) / 1024, begin = min(n, tid * per), end = min(n, begin + per);
    const int *count = reinterpret_cast<const int *>(p.block_count);
    int c_total = 0, t_total = 0;
    for (int i = begin; i < end; i++) {
        c_total += count[i];
        t_total += (count[i] + TILE_M - 1) / TILE_M;
    }
    count_sum[tid] = c_total;
    tile_sum[tid] = t_total;
    __syncthreads();
    for (int step = 1; step < 1024; step *= 2) {        // inclusive Hillis-Steele scan
        const int c = tid >= step ? count_sum[tid - step] : 0, t = tid >= step ? tile_sum[tid - step] : 0;
        __syncthreads();
        count_sum[tid] += c;
        tile_sum[tid] += t;
        __syncthreads();
    }
    int c_run = count_sum[tid] - c_total, t_run = tile_sum[tid] - t_total;
    int *offset = reinterpret_cast<int *>(p.block_offset), *cursor = reinterpret_cast<int *>(p.block_cursor);
    int *tile_offset = reinterpret_cast<int *>(p.tile_offset);
    for (int i = begin; i < end; i++) {
        offset[i] = cursor[i] = c_run;
        tile_offset[i] = t_run;
        c_run += count[i];
        t_run += (count[i] + TILE_M - 1) / TILE_M;
    }
    if (tid == 1023) {
        offset[n] = count_sum[1023];
        tile_offset[n] = tile_sum[1023];
    }
}

// 3. Scatter (row, slot) into the lists. Order within a list varies run to run, the result
// does not: each (row, slot) owns its partial, and the merge reads slots in order.
template <int ROWS>
__global__ void __launch_bounds__(ROWS) moba_attn_scatter(const FwdParams p)
{
    const int h = blockIdx.y, b = blockIdx.z;
    int q0, len_q, k0, len_k;
    seq_bounds(p, b, q0, len_q, k0, len_k);
    const int row = blockIdx.x * ROWS + threadIdx.x;
    if (row >= len_q) return;
    const int *sel = reinterpret_cast<const int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K;
    int *cursor = reinterpret_cast<int *>(p.block_cursor) + ((long long)b * p.hq + h) * p.max_blocks;
    int *entries = reinterpret_cast<int *>(p.entries);
    for (int s = 0; s < MOBA_TOP_K && sel[s] >= 0; s++) entries[atomicAdd(&cursor[sel[s]], 1)] = row * 64 + s;
}

// 4. The tiles: a persistent grid walks tile indices; a tile is up to 64 queries of one list.
__global__ void __launch_bounds__(128) moba_attn_tiles(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, NT = TILE_N / 8, DT = D / 8;
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    uint4 *q_s = reinterpret_cast<uint4 *>(smem_raw);
    uint4 *k_s = q_s + TILE_M * CH;
    uint4 *v_s = k_s + TILE_N * CH;
    int *entry_s = reinterpret_cast<int *>(v_s + TILE_N * CH);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n_lists = (int)(p.batch * p.hq * p.max_blocks);
    const int *tile_offset = reinterpret_cast<const int *>(p.tile_offset);
    const int *block_offset = reinterpret_cast<const int *>(p.block_offset);
    const int *entries = reinterpret_cast<const int *>(p.entries);
    const int total_tiles = tile_offset[n_lists];
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

    for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
        int lo = 0, hi = n_lists - 1;                 // the list holding this tile
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (tile_offset[mid] <= tile) lo = mid; else hi = mid - 1;
        }
        const int list = lo;
        const int blk = list % (int)p.max_blocks, h = (list / (int)p.max_blocks) % (int)p.hq;
        const int b = list / (int)(p.max_blocks * p.hq), kvh = h / MOBA_GQA;
        const int e0 = block_offset[list] + (tile - tile_offset[list]) * TILE_M;
        const int n_rows = min(TILE_M, block_offset[list + 1] - e0);
        int q0, len_q, k0, len_k;
        seq_bounds(p, b, q0, len_q, k0, len_k);

        __syncthreads();                              // the previous tile is done with smem
        if (threadIdx.x < TILE_M) entry_s[threadIdx.x] = threadIdx.x < n_rows ? entries[e0 + threadIdx.x] : -1;
        __syncthreads();
        for (int i = threadIdx.x; i < TILE_M * CH; i += 128) {
            const int r = i / CH, c = i % CH, e = entry_s[r];
            const elem_t *src = e >= 0 ? qbase + (long long)(q0 + (e >> 6)) * p.q_row_stride + h * p.q_head_stride + c * 8 : qbase;
            cp_async16(&q_s[swizzle(r, c)], src, e >= 0);
        }

        const int r_lo = warp * 16 + lane / 4;        // this thread's two rows of the tile
        const int e_lo = entry_s[r_lo], e_hi = entry_s[r_lo + 8];
        const int t_lo = (e_lo >> 6) + len_k - len_q, t_hi = (e_hi >> 6) + len_k - len_q;
        const int key_begin = blk * MOBA_BLOCK, key_end = min(key_begin + MOBA_BLOCK, len_k);
        float o[DT][4];
#pragma unroll
        for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
        unsigned qa[KSTEPS][4];

        for (int n0 = key_begin; n0 < key_end; n0 += TILE_N) {
            if (n0 != key_begin) __syncthreads();     // everyone is done with k_s and v_s
            for (int i = threadIdx.x; i < TILE_N * CH; i += 128) {
                const int r = i / CH, c = i % CH, key = n0 + r;
                const bool ok = key < key_end;
                const long long krow = (long long)(k0 + (ok ? key : key_begin));
                cp_async16(&k_s[swizzle(r, c)], kbase + krow * k_row_stride + kvh * k_head_stride + c * 8, ok);
                cp_async16(&v_s[swizzle(r, c)], vbase + krow * p.v_row_stride + kvh * p.v_head_stride + c * 8, ok);
            }
            cp_async_wait_all();
            __syncthreads();
            if (n0 == key_begin) {
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++)
                    ldsm_x4(smem_addr(&q_s[swizzle(warp * 16 + (lane & 15), 2 * kk + (lane >> 4))]), qa[kk]);
            }

            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
                for (int nt = 0; nt < NT; nt += 2) {
                    const int mat = lane >> 3;
                    unsigned kb[4];
                    ldsm_x4(smem_addr(&k_s[swizzle((nt + (mat >> 1)) * 8 + (lane & 7), 2 * kk + (mat & 1))]), kb);
                    mma_16816(s[nt], qa[kk], kb[0], kb[1]);
                    mma_16816(s[nt + 1], qa[kk], kb[2], kb[3]);
                }
            }

            // Scale, mask (past the block or the sequence; after t when causal), online softmax.
            float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = n0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                    float v = s[nt][e] * scale;
% if spec.causal then
                    if (key >= key_end || key > (e < 2 ? t_lo : t_hi)) v = -INFINITY;
% else
                    if (key >= key_end) v = -INFINITY;
% end
                    s[nt][e] = v;
                    row_max[e >> 1] = fmaxf(row_max[e >> 1], v);
                }
            float rescale[2], m_use[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 1));
                row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 2));
                const float m_new = fmaxf(m[r], row_max[r]);
                m_use[r] = m_new == -INFINITY ? 0.f : m_new;   // a row with nothing visible yet
                rescale[r] = exp2f(m[r] - m_use[r]);
                m[r] = m_new;
                l[r] *= rescale[r];
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float pr = exp2f(s[nt][e] - m_use[e >> 1]);
                    s[nt][e] = pr;
                    l[e >> 1] += pr;
                }
#pragma unroll
            for (int i = 0; i < DT; i++) {
                o[i][0] *= rescale[0];
                o[i][1] *= rescale[0];
                o[i][2] *= rescale[1];
                o[i][3] *= rescale[1];
            }

            // O += P V: the score accumulators become the A fragments of the next product.
#pragma unroll
            for (int kk = 0; kk < TILE_N / 16; kk++) {
                const unsigned pa[4] = {pack_pair(s[2 * kk][0], s[2 * kk][1]), pack_pair(s[2 * kk][2], s[2 * kk][3]),
                                        pack_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        pack_pair(s[2 * kk + 1][2], s[2 * kk + 1][3])};
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

        // One partial per (row, slot): o normalised in the element type, and its LSE.
        elem_t *partial_o = reinterpret_cast<elem_t *>(p.partial_o);
        float *partial_lse = reinterpret_cast<float *>(p.partial_lse);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
            const int e = r ? e_hi : e_lo;
            if (e < 0) continue;
            const long long slot = ((long long)(q0 + (e >> 6)) * p.hq + h) * MOBA_TOP_K + (e & 63);
            const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
            elem_t *dst = partial_o + slot * D + (lane & 3) * 2;
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                const unsigned pair = pack_pair(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
                *reinterpret_cast<unsigned *>(dst + dt * 8) = pair;
            }
            if ((lane & 3) == 0)
                partial_lse[slot] = l[r] > 0.f ? (m[r] + __log2f(l[r])) * 0.6931471805599453f : -INFINITY;
        }
    }
}

// 5. Merge a query's partials: lse = log sum exp(lse_s), o = sum exp(lse_s - lse) o_s.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32) moba_attn_merge(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, DPL = D / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y, b = blockIdx.z;
    int q0, len_q, k0, len_k;
    seq_bounds(p, b, q0, len_q, k0, len_k);
    const int row = blockIdx.x * WARPS + warp;
    if (row >= len_q) return;
    const long long qh = (long long)(q0 + row) * p.hq + h;
    const int *sel = reinterpret_cast<const int *>(p.sel) + qh * MOBA_TOP_K;
    const float *lse_s = reinterpret_cast<const float *>(p.partial_lse) + qh * MOBA_TOP_K;
    int n = 0;
    while (n < MOBA_TOP_K && sel[n] >= 0) n++;
    float mx = -INFINITY;
    for (int s = lane; s < n; s += 32) mx = fmaxf(mx, lse_s[s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int s = lane; s < n; s += 32) sum += mx == -INFINITY ? 0.f : exp2f((lse_s[s] - mx) * 1.4426950408889634f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;
    const elem_t *po = reinterpret_cast<const elem_t *>(p.partial_o) + qh * MOBA_TOP_K * D + lane * DPL;
    for (int s = 0; s < n && sum > 0.f; s++) {
        const float w = exp2f((lse_s[s] - mx) * 1.4426950408889634f) / sum;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] = fmaf(w, elem_to_float(po[s * D + i]), acc[i]);
    }
    elem_t *out = reinterpret_cast<elem_t *>(p.out) + (long long)(q0 + row) * p.o_row_stride + h * p.o_head_stride;
#pragma unroll
    for (int i = 0; i < DPL; i++) out[lane * DPL + i] = float_to_elem(acc[i]);
    if (lane == 0)
        reinterpret_cast<float *>(p.lse)[qh] = sum > 0.f ? mx + logf(sum) : -INFINITY;
}
