%! -- Routing on tensor cores (route impl 2), include()d by route.cu.tpl after the top-k helpers.
%! -- 64 query rows per CTA (4 warps x 16); each 64-centroid tile is split into high and low
%! -- parts in the element type so that two mma.sync products give fp32-grade scores.
% include("mma.cuh.tpl")

__global__ void __launch_bounds__(128) moba_route_mma(const FwdParams p)
{
    constexpr int ROWS = 64, TN = 64, D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, NT = TN / 8;
    constexpr int SS = TN + 1;                     // score tile row stride (odd: no bank conflicts)
    extern __shared__ __align__(128) unsigned char smem_raw[];
    uint4 *q_s = reinterpret_cast<uint4 *>(smem_raw);
    uint4 *hi_s = q_s + ROWS * CH;
    uint4 *lo_s = hi_s + TN * CH;
    float *score_s = reinterpret_cast<float *>(lo_s + TN * CH);
    float *best_score = score_s + ROWS * SS;
    int *best_block = reinterpret_cast<int *>(best_score + ROUTE_SLOTS * ROWS);

    const int h = blockIdx.y, b = blockIdx.z, kvh = h / MOBA_GQA;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    const int q0 = cu_q[b], len_q = cu_q[b + 1] - q0;
    const int len_k = cu_k[b + 1] - cu_k[b];
    const int row0 = blockIdx.x * ROWS;
    if (row0 >= len_q) return;
    const int n_blocks = (len_k + MOBA_BLOCK - 1) / MOBA_BLOCK;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int row = row0 + tid;                    // threads 0..63 own a row for the top-k
    const bool active = tid < ROWS && row < len_q;
    const int t = row + len_k - len_q;

    const elem_t *q = reinterpret_cast<const elem_t *>(p.q);
    for (int i = tid; i < ROWS * CH; i += 128) {
        const int r = i / CH, c = i % CH;
        const bool ok = row0 + r < len_q;
        const elem_t *src = ok ? q + (long long)(q0 + row0 + r) * p.q_row_stride + h * p.q_head_stride + c * 8 : q;
        cp_async16(&q_s[swizzle(r, c)], src, ok);
    }
    cp_async_wait_all();
    __syncthreads();
    unsigned qa[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++)
        ldsm_x4(smem_addr(&q_s[swizzle(warp * 16 + (lane & 15), 2 * kk + (lane >> 4))]), qa[kk]);

% if spec.causal then
    const int own = t >= 0 ? t / MOBA_BLOCK : -1;
    const int limit = active && t >= 0 ? own : 0;
    const int last_row = min(row0 + ROWS, len_q) - 1;
    const int tile_limit = max(0, (last_row + len_k - len_q) / MOBA_BLOCK);
% else
    const int own = -1;
    const int limit = active ? n_blocks : 0;
    const int tile_limit = n_blocks;
% end
    TopList top = {best_score, best_block, ROWS, tid, 0, -INFINITY};

    const float *centroid = reinterpret_cast<const float *>(p.centroid) +
                            ((long long)b * p.max_blocks * p.hkv + kvh) * D;
    for (int j0 = 0; j0 < tile_limit; j0 += TN) {
        // Split each centroid into high + low parts: c = hi + lo + O(2^-16 c) for bf16.
        for (int i = tid; i < TN * CH; i += 128) {
            const int j = i / CH, c = i % CH;
            float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (j0 + j < n_blocks) {
                const float4 *src = reinterpret_cast<const float4 *>(centroid + (long long)(j0 + j) * p.hkv * D + c * 8);
                const float4 a = src[0], bb = src[1];
                v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
                v[4] = bb.x; v[5] = bb.y; v[6] = bb.z; v[7] = bb.w;
            }
            unsigned hi[4], lo[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const elem_t h0 = float_to_elem(v[2 * e]), h1 = float_to_elem(v[2 * e + 1]);
                hi[e] = (unsigned)h0 | ((unsigned)h1 << 16);
                lo[e] = pack_pair(v[2 * e] - elem_to_float(h0), v[2 * e + 1] - elem_to_float(h1));
            }
            hi_s[swizzle(j, c)] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            lo_s[swizzle(j, c)] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        }
        __syncthreads();                           // tiles written; last top-k pass done

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                const int mat = lane >> 3;
                const int at = swizzle((nt + (mat >> 1)) * 8 + (lane & 7), 2 * kk + (mat & 1));
                unsigned fb[4];
                ldsm_x4(smem_addr(&lo_s[at]), fb);
                mma_16816(s[nt], qa[kk], fb[0], fb[1]);
                mma_16816(s[nt + 1], qa[kk], fb[2], fb[3]);
                ldsm_x4(smem_addr(&hi_s[at]), fb);
                mma_16816(s[nt], qa[kk], fb[0], fb[1]);
                mma_16816(s[nt + 1], qa[kk], fb[2], fb[3]);
            }
        }
        const int r_lo = warp * 16 + lane / 4;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int col = nt * 8 + (lane & 3) * 2;
            score_s[r_lo * SS + col] = s[nt][0];
            score_s[r_lo * SS + col + 1] = s[nt][1];
            score_s[(r_lo + 8) * SS + col] = s[nt][2];
            score_s[(r_lo + 8) * SS + col + 1] = s[nt][3];
        }
        __syncthreads();                           // scores visible; centroid tiles free
        if (active) {
            const int n = min(TN, limit - j0);
            for (int j = 0; j < n; j++) topk_offer(top, score_s[tid * SS + j], j0 + j);
        }
    }
    if (!active) return;
    emit_selection(top, t, own, reinterpret_cast<int *>(p.sel) + ((long long)(q0 + row) * p.hq + h) * MOBA_TOP_K);
}
