%! -- The tile kernel of attn_fwd impl 3 (sm_90a), include()d by attn_tiles.cuh.tpl in place of
%! -- impl 2's: the same tiles (64 queries of one list), workspace and per-row epilogue, so that
%! -- count, scan, scatter, finalize and fallback are impl 2's. One producer warp per CTA gathers
%! -- each tile's query rows and streams its key and value steps (cp.async) through a ring of
%! -- shared-memory slots guarded by mbarriers; one consumer warpgroup computes S = Q K^T and
%! -- O += P V on wgmma (fp32 accumulators in registers, P from registers as the A operand).
% local TN = tile_n(spec)
% local D = spec.head_dim
% local NSLOT = wg_slots(spec)
% include("wgmma.cuh.tpl")
#define WG_SLOTS $(NSLOT)   // key or value slots of the ring
#define WG_QROW_BYTES (MOBA_HEAD_DIM * 2)
#define WG_RUN 8   // consecutive tiles per CTA (see tile_of)

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned bar)
{
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}

// Arrives once this thread's cp.async issued so far have landed (the count includes the arrival).
__device__ __forceinline__ void mbar_arrive_cp_async(unsigned bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Waits until the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
    asm volatile("{\n.reg .pred done;\nWG_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WG_WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}

struct WgSmem {
    uint4 q[2][TILE_M * (MOBA_HEAD_DIM / 8)];
    uint4 kv[WG_SLOTS][TILE_N * (MOBA_HEAD_DIM / 8)];
    TileMeta meta[2];
    unsigned entry[2][TILE_M];
    unsigned long long q_full[2], q_empty[2], kv_full[WG_SLOTS], kv_empty[WG_SLOTS];
};
static_assert(sizeof(WgSmem) == $(wg_smem(spec)), "launch()'s shared memory size is WgSmem's");

// 4. The tiles of the chunks [chunk_begin, chunk_end) over a persistent grid (runs of tiles, see
// tile_of). Warps 0-3 (the consumer warpgroup) compute; warp 4 (the producer) loads. Per tile: Q
// into buffer j % 2 (with its description and entries); per step of TILE_N keys: K, then V, into
// the next ring slots (none for a tile that reuses its predecessor's). A slot is full when its
// producer lanes' cp.async have landed (32 arrivals), and empty when the consumer's 128 threads
// have finished the wgmma that read it in the last tile of its run.
__global__ void __launch_bounds__(160, $(tile_ctas(spec))) moba_attn_tiles_wgmma(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, NT = TILE_N / 8, DT = D / 8;
    constexpr int NSTEP = (MOBA_BLOCK + TILE_N - 1) / TILE_N;
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    WgSmem &sm = *reinterpret_cast<WgSmem *>(smem_raw);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int max_blocks = (int)p.max_blocks, row_chunks = (int)p.row_chunks, hq = (int)p.hq;
    const int *tile_offset = reinterpret_cast<const int *>(p.tile_offset);
    const int first_tile = tile_offset[p.chunk_begin * max_blocks], end_tile = tile_offset[p.chunk_end * max_blocks];
    // Runs of WG_RUN consecutive tiles per CTA, the runs dealt round robin: the grid still sweeps
    // the tiles in order (the live accumulator rows stay few), and consecutive tiles of one CTA
    // mostly share a list, so they reuse the keys and values already in the ring.
    auto tile_of = [&](int j) {
        return first_tile + (j / WG_RUN) * (int)gridDim.x * WG_RUN + (int)blockIdx.x * WG_RUN + j % WG_RUN;
    };
    // Tile j reuses tile j - 1's keys and values: same list, same run, and the list's steps fit
    // the ring beside nothing else (a run holds its slots until its last tile).
    constexpr bool CAN_REUSE = 2 * NSTEP <= WG_SLOTS;
    auto reuses = [&](int j, int list, int prev_list) { return CAN_REUSE && j % WG_RUN != 0 && list == prev_list; };
    const unsigned q_full = smem_addr(sm.q_full), q_empty = smem_addr(sm.q_empty);
    const unsigned kv_full = smem_addr(sm.kv_full), kv_empty = smem_addr(sm.kv_empty);

    if (smem_addr(smem_raw) & 1023u) __trap();   // the swizzle atoms need 1024-byte alignment
    if (tid == 0) {
        for (int i = 0; i < 2; i++) {
            mbar_init(q_full + 8 * i, 32);
            mbar_init(q_empty + 8 * i, 128);
        }
        for (int i = 0; i < WG_SLOTS; i++) {
            mbar_init(kv_full + 8 * i, 32);
            mbar_init(kv_empty + 8 * i, 128);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == 4) {
        // Producer. Parity of an empty barrier's first wait is 1: a fresh barrier counts its
        // preceding phase as complete, so the first pass over the ring does not wait.
% if spec.conv_width > 0 then
        const elem_t *kbase = reinterpret_cast<const elem_t *>(p.kprime);
        const long long k_row_stride = p.hkv * D, k_head_stride = D;
% else
        const elem_t *kbase = reinterpret_cast<const elem_t *>(p.k);
        const long long k_row_stride = p.k_row_stride, k_head_stride = p.k_head_stride;
% end
        const elem_t *vbase = reinterpret_cast<const elem_t *>(p.v);
        const elem_t *qbase = reinterpret_cast<const elem_t *>(p.q);
        constexpr int PASS = 32 / CH;   // rows per pass of the warp
        const int r0 = lane / CH, c = lane % CH;
        int kv_item = 0, prev_list = -1;
        for (int j = 0; tile_of(j) < end_tile; j++) {
            const int tile = tile_of(j), qb = j & 1;
            mbar_wait(q_empty + 8 * qb, ((j >> 1) & 1) ^ 1);
            // The description and entries for the consumer, by cp.async like the rows.
            if (lane < 2)
                cp_async16(reinterpret_cast<uint4 *>(&sm.meta[qb]) + lane,
                           reinterpret_cast<const uint4 *>(p.tile_meta) + (long long)tile * 2 + lane, true);
            else if (lane < 2 + TILE_M / 4)
                cp_async16(reinterpret_cast<uint4 *>(sm.entry[qb]) + (lane - 2),
                           reinterpret_cast<const uint4 *>(p.entries) + (long long)tile * (TILE_M / 4) + (lane - 2), true);
            const TileMeta *gm = reinterpret_cast<const TileMeta *>(p.tile_meta) + tile;
            const int list = __ldg(&gm->list), n_rows = __ldg(&gm->n_rows), q0 = __ldg(&gm->q0);
            const int k0 = __ldg(&gm->k0), len_k = __ldg(&gm->len_k);
            const unsigned *ge = reinterpret_cast<const unsigned *>(p.entries) + (long long)tile * TILE_M;
            const unsigned e_a = __ldg(ge + lane), e_b = __ldg(ge + 32 + lane);
            const int blk = list % max_blocks, h = (list / (max_blocks * row_chunks)) % hq, kvh = h / MOBA_GQA;
            // Q: row r of the tile is query entry[r] >> 7 (rows past the tile's queries: zeros).
            const elem_t *qh = qbase + (long long)q0 * p.q_row_stride + h * p.q_head_stride + c * 8;
            uint4 *q_s = sm.q[qb];
#pragma unroll 8
            for (int r = r0; r < TILE_M; r += PASS) {
                const unsigned e = __shfl_sync(0xffffffffu, r < 32 ? e_a : e_b, r & 31);
                const bool ok = r < n_rows;
                cp_async16(&q_s[wg_chunk<TILE_M>(r, c)], qh + (ok ? (long long)(e >> 7) * p.q_row_stride : 0), ok);
            }
            mbar_arrive_cp_async(q_full + 8 * qb);
            const bool reuse = reuses(j, list, prev_list);
            prev_list = list;
            if (reuse) continue;
            // Keys and values of each step (rows past the block or the sequence: zeros).
            const int key_begin = blk * MOBA_BLOCK, key_end = min(key_begin + MOBA_BLOCK, len_k);
            for (int step = 0; step < NSTEP; step++) {
#pragma unroll
                for (int is_v = 0; is_v < 2; is_v++, kv_item++) {
                    const int slot = kv_item % WG_SLOTS;
                    mbar_wait(kv_empty + 8 * slot, ((kv_item / WG_SLOTS) & 1) ^ 1);
                    const long long stride = is_v ? p.v_row_stride : k_row_stride;
                    const elem_t *base = (is_v ? vbase : kbase) + (long long)k0 * stride +
                                         kvh * (is_v ? p.v_head_stride : k_head_stride) + c * 8;
                    const elem_t *first = base + (long long)key_begin * stride;
                    const int n0 = key_begin + step * TILE_N;
                    const elem_t *src = base + (long long)(n0 + r0) * stride;
                    uint4 *dst = sm.kv[slot];
#pragma unroll 8
                    for (int r = r0; r < TILE_N; r += PASS, src += PASS * stride) {
                        const bool ok = n0 + r < key_end;
                        cp_async16(&dst[wg_chunk<TILE_N>(r, c)], ok ? src : first, ok);
                    }
                    mbar_arrive_cp_async(kv_full + 8 * slot);
                }
            }
        }
        cp_async_wait_all();
        return;
    }

    // Consumer warpgroup: warp w holds rows 16w .. 16w + 15 of the tile, as mma.sync's m16 tiles.
    const float scale = (float)p.softmax_scale * LOG2E;
    const unsigned q_base = smem_addr(sm.q[0]), kv_base = smem_addr(sm.kv[0]);
    constexpr unsigned Q_BYTES = TILE_M * WG_QROW_BYTES, KV_BYTES = TILE_N * WG_QROW_BYTES;
    int kv_next = 0, run_item = 0, prev_list = -1;
    for (int j = 0; tile_of(j) < end_tile; j++) {
        const int qb = j & 1;
        // Whether the next tile reuses this one's keys and values: then they stay in the ring.
        const int next_tile = tile_of(j + 1);
        const int next_list = next_tile < end_tile ? __ldg(&reinterpret_cast<const TileMeta *>(p.tile_meta)[next_tile].list) : -1;
        mbar_wait(q_full + 8 * qb, (j >> 1) & 1);
        const TileMeta m = sm.meta[qb];
        if (!reuses(j, m.list, prev_list)) {
            run_item = kv_next;
            kv_next += 2 * NSTEP;
        }
        prev_list = m.list;
        const bool release = !reuses(j + 1, next_list, m.list);
        const TileRows rows = tile_rows(p, m, sm.entry[qb], warp, lane);
        float mx[2], l[2] = {0.f, 0.f};
        tile_refs(p, m, rows, mx);
        float o[DT][4];
#pragma unroll
        for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
        const unsigned q_addr = q_base + qb * Q_BYTES;

        for (int step = 0; step < NSTEP; step++) {
            const int kv_item = run_item + 2 * step;
            const int k_slot = kv_item % WG_SLOTS, v_slot = (kv_item + 1) % WG_SLOTS;
            const int n0 = rows.key_begin + step * TILE_N;
            const bool active = n0 < rows.key_end;   // the same for the whole warpgroup
            float s[NT][4];
#pragma unroll
            for (int i = 0; i < NT; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
            mbar_wait(kv_full + 8 * k_slot, (kv_item / WG_SLOTS) & 1);
            if (active) {
                const unsigned k_addr = kv_base + k_slot * KV_BYTES;
                wg_hold(s);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++) {
                    const unsigned at = (unsigned)(kk & 3) * 32u;   // 16 elements along the swizzled row
                    wg_mma_ss<0>(s, wg_desc(q_addr + (kk >> 2) * (TILE_M * 128) + at, 16, 1024),
                              wg_desc(k_addr + (kk >> 2) * (TILE_N * 128) + at, 16, 1024), kk > 0);
                }
                wg_commit();
                wg_wait_all();
                wg_hold(s);
            }
            if (step + 1 == NSTEP) mbar_arrive(q_empty + 8 * qb);   // the tile's last read of Q
            if (release) mbar_arrive(kv_empty + 8 * k_slot);
            if (active) tile_probs(s, rows, n0, scale, mx, l, lane);
            mbar_wait(kv_full + 8 * v_slot, ((kv_item + 1) / WG_SLOTS) & 1);
            if (active) {
                // O += P V: the score accumulators become the A fragments (mma.sync's layout).
                const unsigned v_addr = kv_base + v_slot * KV_BYTES;
                unsigned pa[TILE_N / 16][4];
#pragma unroll
                for (int kk = 0; kk < TILE_N / 16; kk++) probs_fragment(s, kk, pa[kk]);
                wg_hold(o);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < TILE_N / 16; kk++)
                    wg_mma_rs(o, pa[kk], wg_desc(v_addr + kk * 2048u, TILE_N * 128, 1024));
                wg_commit();
                wg_wait_all();
                wg_hold(o);
            }
            if (release) mbar_arrive(kv_empty + 8 * v_slot);
        }
        if (warp * 16 < m.n_rows) tile_rows_out(p, rows, o, l, lane);   // impl 2's epilogue
    }
}
