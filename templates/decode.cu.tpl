%! -- Serving over a paged KV cache (docs/decode.md): append (key conv, pages, incremental
%! -- centroid sums) and decode (routing against the cached centroids, split-KV attention on
%! -- mma.sync with the G query heads x q_len tokens of a kv head as the 16 rows of one tile,
%! -- then a merge of the splits). Loaded on an op's first append or decode, not at creation.
%! -- route_chunk: centroid blocks scored per routing CTA (each keeps its own top-k per row);
%! -- stages: cp.async stages of 16-key tiles per attention warp (3; 2 where 3 do not fit).
%! knobs = { route_chunk = {256}, stages = {3, 2} }
%! function attn_smem(spec, p)
%!   -- q tile (16 rows) + per warp: stages x (k and v tiles of 16 keys); the warps' fp32 partials
%!   -- (16 x (d + 2) each) reuse the tiles at the end
%!   local tiles = 16 * spec.head_dim * 2 + 4 * p.stages * 2 * 16 * spec.head_dim * 2
%!   return math.max(tiles, 4 * 16 * (spec.head_dim + 2) * 4 + 16 * spec.head_dim * 2)
%! end
%! -- What decode supports; other specs get stub kernels (never launched: runtime/decode.c refuses
%! -- them first) so that their forward still expands and builds.
%! function supported(spec)
%!   if not spec.causal then return false, "decode is causal only" end
%!   if spec.head_dim ~= 64 and spec.head_dim ~= 128 then return false, "decode supports head_dim 64 and 128" end
%!   if spec.gqa_group > 16 then return false, "decode takes at most 16 query heads per kv head (one tile)" end
%!   return true
%! end
%! function valid(spec, arch, p)
%!   if p.route_chunk ~= 128 and p.route_chunk ~= 256 then return false, "route_chunk is 128 or 256" end
%!   if p.stages < 2 or p.stages > 4 then return false, "stages is 2..4" end
%!   if supported(spec) then
%!     if attn_smem(spec, p) > arch.max_smem then return false, "does not fit shared memory" end
%!     -- fewer stages only where three do not fit (sm_86/sm_89: 99 KB)
%!     if p.stages < 3 and attn_smem(spec, { route_chunk = p.route_chunk, stages = 3 }) <= arch.max_smem then
%!       return false, "three stages fit"
%!     end
%!   elseif p.stages ~= 3 then
%!     return false, "one stub variant"
%!   end
%!   return true
%! end
%! function kernels(spec, p)
%!   return { main = "moba_decode_attn<" .. p.stages .. ">", decode_route = "moba_decode_route<" .. p.route_chunk .. ">",
%!            decode_select = "moba_decode_select", decode_merge = "moba_decode_merge",
%!            append = "moba_decode_append", append_commit = "moba_decode_commit", truncate = "moba_decode_truncate",
%!            append_step = "moba_decode_append_step" }
%! end
%! function launch(spec, p)
%!   return { threads = 128, smem = supported(spec) and attn_smem(spec, p) or 0, rows = p.route_chunk }
%! end
% include("common.cuh.tpl")
% include("decode_params.cuh.tpl")
typedef mg_decode_params DecodeParams;
% if not supported(spec) then
// $(select(2, supported(spec))): stubs with the contract's names, never launched.
template <int STAGES> __global__ void moba_decode_attn(const DecodeParams p) {}
template <int CHUNK> __global__ void moba_decode_route(const DecodeParams p) {}
__global__ void moba_decode_select(const DecodeParams p) {}
__global__ void moba_decode_merge(const DecodeParams p) {}
__global__ void moba_decode_append(const DecodeParams p) {}
__global__ void moba_decode_append_step(const DecodeParams p) {}
__global__ void moba_decode_commit(const DecodeParams p) {}
__global__ void moba_decode_truncate(const DecodeParams p) {}
% else
% include("mma.cuh.tpl")

#define DEC_ROWS 16                                   // query rows of a kv head: one mma tile
#define DEC_OTHERS (MOBA_TOP_K - 1)                   // blocks routing picks besides the own one
#define DEC_UNION (DEC_ROWS * MOBA_TOP_K)             // most distinct blocks of a kv head
#define DEC_MAX_CHUNKS 2048                           // routing chunks per sequence (select's heads)
#define DEC_ATTN_BLOCKS 256                           // blocks an attention CTA keeps in shared memory
#define DEC_ATTN_PAGES 1024                           // and the page table entries they cover
#define DEC_ERR_PAGE 1
#define DEC_ERR_FULL 2
#define DEC_ERR_QLEN 4
#define DEC_ERR_DROP 8

__device__ __forceinline__ void dec_flag(const DecodeParams &p, int bits)
{
    if (p.error) atomicOr(reinterpret_cast<int *>(p.error), bits);
}

// Element offset of token `pos` of sequence b, kv head kvh, in a page pool; -1 when its page
// table entry is outside the pool.
__device__ __forceinline__ long long dec_row(const DecodeParams &p, int b, int pos, int kvh)
{
    const int *pt = reinterpret_cast<const int *>(p.page_table);
    const int page = __ldg(pt + (long long)b * p.max_pages + pos / (int)p.page_size);
    if (page < 0 || page >= (int)p.n_pages) return -1;
    return (((long long)page * p.page_size + pos % (int)p.page_size) * p.hkv + kvh) * MOBA_HEAD_DIM;
}

// Floats as unsigned integers in the same order, above 0 for every float.
__device__ __forceinline__ unsigned dec_order(float f)
{
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// A candidate's key: higher score first, then the lower block index; 0 is "none".
__device__ __forceinline__ u64 dec_key(float s, int blk)
{
    return ((u64)dec_order(s) << 32) | (u64)(0xffffffffu - (unsigned)blk);
}
__device__ __forceinline__ int dec_key_block(u64 key) { return (int)(0xffffffffu - (unsigned)(key & 0xffffffffu)); }

// Two warp reductions (redux.sync, sm_80+) instead of five rounds of 64-bit shuffles: the
// highest upper half, then the highest lower half among the lanes that hold it.
__device__ __forceinline__ u64 warp_max_u64(u64 v)
{
    const unsigned hi = __reduce_max_sync(0xffffffffu, (unsigned)(v >> 32));
    const unsigned lo = __reduce_max_sync(0xffffffffu, (unsigned)(v >> 32) == hi ? (unsigned)v : 0u);
    return ((u64)hi << 32) | lo;
}

// The sequence's state for decode: false (and the error flagged once) when it is inconsistent.
__device__ __forceinline__ bool dec_seq(const DecodeParams &p, int b, int &q0, int &qlen, int &len)
{
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    q0 = cu_q[b];
    qlen = cu_q[b + 1] - q0;
    len = reinterpret_cast<const int *>(p.seq_lens)[b];
    return qlen >= 0 && qlen <= len && qlen <= (int)p.max_q_len && (long long)len <= p.max_pages * p.page_size;
}

// ---- append -------------------------------------------------------------------------------
// The new tokens of sequence b in centroid block blk, for one (kv head, dim): k' (conv), pages,
// the block's running sum. The conv of a new key reads earlier raw keys from the input when
// they are new too, else from the pages, so no caller waits on another; each block's sum is
// written by one thread per element, in position order. True when a page was outside the pool.
__device__ __forceinline__ bool dec_append_block(const DecodeParams &p, int b, int kvh, int dim, int blk, int len,
                                                 int n, int row0)
{
    constexpr int D = MOBA_HEAD_DIM;
    const int p0 = max(len, blk * MOBA_BLOCK), p1 = min(len + n, (blk + 1) * MOBA_BLOCK);
    if (p0 >= p1) return false;
    const elem_t *knew = reinterpret_cast<const elem_t *>(p.k_new);
    const elem_t *vnew = reinterpret_cast<const elem_t *>(p.v_new);
    elem_t *kprime = reinterpret_cast<elem_t *>(p.kprime_pages);
    elem_t *vpages = reinterpret_cast<elem_t *>(p.v_pages);
% if spec.conv_width > 0 then
    elem_t *kraw = reinterpret_cast<elem_t *>(p.kraw_pages);
    const elem_t *w = reinterpret_cast<const elem_t *>(p.conv_w) + (long long)kvh * MOBA_CONV_WIDTH * D;
    float taps[MOBA_CONV_WIDTH];
#pragma unroll
    for (int l = 0; l < MOBA_CONV_WIDTH; l++) taps[l] = elem_to_float(w[l * D + dim]);
% end
    float *csum = reinterpret_cast<float *>(p.centroid_sum) + (((long long)b * p.max_blocks + blk) * p.hkv + kvh) * D + dim;
    float sum = p0 % MOBA_BLOCK == 0 ? 0.f : *csum;   // a block's first key restarts its sum
    bool bad = false;
    for (int pos = p0; pos < p1; pos++) {
        const long long in_row = row0 + pos - len;
        const long long at = dec_row(p, b, pos, kvh);
        if (at < 0) { bad = true; continue; }
        float x = elem_to_float(knew[in_row * p.knew_row_stride + kvh * D + dim]);
% if spec.conv_width > 0 then
        // k'_t = k_t + SiLU(sum_l w_l k_{t-l}), in the forward's order of operations.
        float acc = 0.f;
#pragma unroll
        for (int l = 0; l < MOBA_CONV_WIDTH; l++) {
            const int src = pos - l;
            if (src < 0) continue;
            float kv;
            if (src >= len) {
                kv = elem_to_float(knew[(in_row - l) * p.knew_row_stride + kvh * D + dim]);
            } else {
                const long long r = dec_row(p, b, src, kvh);
                if (r < 0) { bad = true; kv = 0.f; }
                else kv = elem_to_float(kraw[r + dim]);
            }
            acc += taps[l] * kv;
        }
        kraw[at + dim] = float_to_elem(x);
        x += acc / (1.f + __expf(-acc));
% end
        const elem_t xr = float_to_elem(x);
        kprime[at + dim] = xr;
        vpages[at + dim] = vnew[in_row * p.vnew_row_stride + kvh * D + dim];
        sum += elem_to_float(xr);
    }
    *csum = sum;
    return bad;
}

// Whether sequence b's new tokens fit (else the caller flags it once).
__device__ __forceinline__ bool dec_append_fits(const DecodeParams &p, int n, int len)
{
    return n <= (int)p.max_new && (long long)len + n <= p.max_pages * p.page_size;
}

// One CTA per (centroid block the new tokens touch, kv head, sequence); thread = dim. Prefill
// and long appends: fully parallel; append_commit moves the lengths afterwards.
__global__ void __launch_bounds__(MOBA_HEAD_DIM) moba_decode_append(const DecodeParams p)
{
    const int kvh = blockIdx.y, b = blockIdx.z, dim = threadIdx.x;
    const int *cu_new = reinterpret_cast<const int *>(p.cu_seqlens_new);
    const int row0 = cu_new[b], n = cu_new[b + 1] - row0;
    const int len = reinterpret_cast<const int *>(p.seq_lens)[b];
    if (n <= 0) return;
    if (!dec_append_fits(p, n, len)) {
        if (blockIdx.x == 0 && kvh == 0 && dim == 0) dec_flag(p, DEC_ERR_FULL);
        return;
    }
    const bool bad = dec_append_block(p, b, kvh, dim, len / MOBA_BLOCK + (int)blockIdx.x, len, n, row0);
    if (bad && dim == 0) dec_flag(p, DEC_ERR_PAGE);
}

// A step's few tokens: one CTA per sequence, a thread per element of a token's row (hkv x d, up
// to 1024), each walking the (one or two) blocks the tokens touch; the CTA then moves the length
// itself once every thread has read it, so the append is one launch. Same arithmetic, in the
// same order, as moba_decode_append: the cache is bit for bit the same.
#define DEC_APPEND_THREADS 1024
__global__ void __launch_bounds__(DEC_APPEND_THREADS) moba_decode_append_step(const DecodeParams p)
{
    constexpr int D = MOBA_HEAD_DIM;
    const int b = blockIdx.x, tid = threadIdx.x;
    const int *cu_new = reinterpret_cast<const int *>(p.cu_seqlens_new);
    const int row0 = cu_new[b], n = cu_new[b + 1] - row0;
    int *lens = reinterpret_cast<int *>(p.seq_lens);
    const int len = lens[b];
    if (n <= 0) return;
    if (!dec_append_fits(p, n, len)) {
        if (tid == 0) dec_flag(p, DEC_ERR_FULL);
        return;
    }
    bool bad = false;
    for (int e = tid; e < (int)p.hkv * D; e += blockDim.x)
        for (int blk = len / MOBA_BLOCK; blk * MOBA_BLOCK < len + n; blk++)
            bad |= dec_append_block(p, b, e / D, e % D, blk, len, n, row0);
    if (__syncthreads_or(bad) && tid == 0) dec_flag(p, DEC_ERR_PAGE);
    if (tid == 0) lens[b] = len + n;
}

// After the append: the lengths grow (a separate launch, so that no append CTA reads a length
// another one has already advanced).
__global__ void __launch_bounds__(128) moba_decode_commit(const DecodeParams p)
{
    const int b = blockIdx.x * 128 + threadIdx.x;
    if (b >= (int)p.batch) return;
    const int *cu_new = reinterpret_cast<const int *>(p.cu_seqlens_new);
    int *lens = reinterpret_cast<int *>(p.seq_lens);
    const int n = cu_new[b + 1] - cu_new[b];
    if (n > 0 && n <= (int)p.max_new && (long long)lens[b] + n <= p.max_pages * p.page_size) lens[b] += n;
}

// ---- truncate (speculative decoding's rollback) ------------------------------------------------
// One CTA per sequence. The new length L' = L - drop (or the given one) must be in 0..L, else
// the sequence is left as it is and flagged. The sum of block L'/B, when L' cuts it, is
// recomputed from its kept k' rows in position order, exactly as the appends summed them, so
// the cache is bit for bit what appending only the kept tokens makes; later blocks restart at
// their next append and the raw keys of kept positions (the conv's history) are untouched.
// One CTA owns the sequence, so its length moves only after every thread has read it. A thread
// per element of a token's row (hkv x d, up to 1024), so that the kept rows' loads form one
// chain of latency, not one per element a thread would otherwise loop over.
#define DEC_TRUNC_THREADS 1024
__global__ void __launch_bounds__(DEC_TRUNC_THREADS) moba_decode_truncate(const DecodeParams p)
{
    constexpr int D = MOBA_HEAD_DIM;
    const int b = blockIdx.x, tid = threadIdx.x, nthreads = blockDim.x;
    int *lens = reinterpret_cast<int *>(p.seq_lens);
    const int len = lens[b];
    const int keep = p.trunc_drop ? len - reinterpret_cast<const int *>(p.trunc_drop)[b]
                                  : reinterpret_cast<const int *>(p.trunc_new_lens)[b];
    if (len < 0 || (long long)len > p.max_pages * p.page_size) {
        if (tid == 0) dec_flag(p, DEC_ERR_FULL);
        return;
    }
    if (keep < 0 || keep > len) {
        if (tid == 0) dec_flag(p, DEC_ERR_DROP);
        return;
    }
    if (keep == len) return;
    const int blk = keep / MOBA_BLOCK, p0 = blk * MOBA_BLOCK, ps = (int)p.page_size;
    if (keep > p0) {
        const int *pt = reinterpret_cast<const int *>(p.page_table) + (long long)b * p.max_pages;
        bool bad = false;
        for (int pg = p0 / ps + tid; pg <= (keep - 1) / ps; pg += nthreads) {
            const int page = pt[pg];
            bad |= page < 0 || page >= (int)p.n_pages;
        }
        if (__syncthreads_or(bad)) {
            if (tid == 0) dec_flag(p, DEC_ERR_PAGE);
            return;
        }
        const elem_t *kprime = reinterpret_cast<const elem_t *>(p.kprime_pages);
        float *csum = reinterpret_cast<float *>(p.centroid_sum) + ((long long)b * p.max_blocks + blk) * p.hkv * D;
        const int width = (int)p.hkv * D;   // a token's row: [hkv][d], contiguous in its page slot
        for (int e = tid; e < width; e += nthreads) {
            float sum = 0.f;
#pragma unroll 8
            for (int pos = p0; pos < keep; pos++) {
                const long long slot = (long long)pt[pos / ps] * ps + pos % ps;
                sum += elem_to_float(kprime[slot * width + e]);
            }
            csum[e] = sum;
        }
    }
    __syncthreads();
    if (tid == 0) lens[b] = keep;
}

// ---- decode 1: routing scores and each chunk's best candidates ------------------------------
% -- Many picks per chunk (top_k 16..33): bisection instead of DEC_OTHERS rounds of warp maxima.
% local pick_by_bisection = spec.top_k >= 16 and spec.top_k <= 33
% if pick_by_bisection then
// The K best of a warp's candidates by (score desc, block asc), found by bisection on the score
// order rather than K rounds of warp-wide maxima: count(order >= T) is one compare per candidate
// and one warp reduction, and the search stops as soon as exactly K candidates are at or above
// T (random scores: about log2 of the candidates' spread, 10-20 rounds). Lane `lane` holds
// candidate slots m = 0..slots-1: ord(m) its score order (0: no candidate), blk(m) its block.
// emit(m, pos) is called for each pick, pos = 0, 1, ... in (slot, lane) order (deterministic);
// returns the number picked (min(K, candidates)). Every lane of the warp must call it.
template <int SLOTS, class Ord, class Blk, class Emit>
__device__ __forceinline__ int dec_pick(int K, Ord ord, Blk blk, Emit emit)
{
    const unsigned lane = threadIdx.x % 32;
    if (K <= 0) return 0;
    auto count_ge = [&](unsigned long long t) -> int {
        int c = 0;
#pragma unroll
        for (int m = 0; m < SLOTS; m++) c += (unsigned long long)ord(m) >= t;
        return (int)__reduce_add_sync(0xffffffffu, (unsigned)c);
    };
    unsigned thr = 0, cut = 0xffffffffu;   // take order > thr, and order == thr with block <= cut
    if (count_ge(1) > K) {
        unsigned lo = 0xffffffffu, hi = 0;
#pragma unroll
        for (int m = 0; m < SLOTS; m++) {
            const unsigned o = ord(m);
            if (o) lo = min(lo, o);
            hi = max(hi, o);
        }
        // count_ge(l) > K and count_ge(h) < K: keep that invariant
        unsigned long long l = __reduce_min_sync(0xffffffffu, lo), h = (unsigned long long)__reduce_max_sync(0xffffffffu, hi) + 1;
        while (h - l > 1) {
            const unsigned long long mid = l + (h - l) / 2;
            const int c = count_ge(mid);
            if (c == K) { l = mid; break; }
            if (c > K) l = mid; else h = mid;
        }
        thr = (unsigned)l;
        const int above = count_ge(l + 1), ties = count_ge(l) - above;
        const int need = K - above;   // 1 <= need <= ties
        if (ties > need) {
            // score ties at the threshold: the lowest blocks first, as the forward ranks them
            unsigned prev = 0;
            for (int r = 0; r < need; r++) {
                unsigned bmin = 0xffffffffu;
#pragma unroll
                for (int m = 0; m < SLOTS; m++) {
                    const unsigned bm = (unsigned)blk(m);
                    if (ord(m) == thr && (r == 0 || bm > prev)) bmin = min(bmin, bm);
                }
                prev = __reduce_min_sync(0xffffffffu, bmin);
            }
            cut = prev;
        }
    }
    const unsigned below = (1u << lane) - 1u;
    int base = 0;
#pragma unroll
    for (int m = 0; m < SLOTS; m++) {
        const unsigned o = ord(m);
        const bool take = o > thr || (o != 0 && o == thr && (unsigned)blk(m) <= cut);
        const unsigned bal = __ballot_sync(0xffffffffu, take);
        if (take) emit(m, base + __popc(bal & below));
        base += __popc(bal);
    }
    return base;
}

// A candidate's score order for dec_pick: never 0 (that is "none").
__device__ __forceinline__ unsigned dec_cand_order(float s) { return max(dec_order(s), 1u); }

% end
// One CTA per (kv head, chunk of p.route_chunk <= CHUNK centroid blocks, sequence). Rows
// i = r * G + g (token r, head g of the kv head). A warp scores 8 blocks at a time, 4 lanes per
// block; scores are fp32 dot products with the centroid (running sum / count), as the forward's.
// Then each row keeps the best DEC_OTHERS of its candidates in the chunk (whole blocks before its
// own block), sorted best first.
template <int CHUNK>
__global__ void __launch_bounds__(128) moba_decode_route(const DecodeParams p)
{
    constexpr int D = MOBA_HEAD_DIM, C4 = D / 16, PER_LANE = CHUNK / 32;
    // kv heads vary fastest in the grid: the CTAs of a chunk's kv heads run together and, between
    // them, read every (block, kv head) centroid row of the chunk, which lie side by side
    const int kvh = blockIdx.x, ci = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int q0, qlen, len;
    if (!dec_seq(p, b, q0, qlen, len) || qlen == 0) return;
    const int own_last = (len - 1) / MOBA_BLOCK;      // blocks before it are anyone's candidates
    const int chunk = (int)p.route_chunk, j0 = ci * chunk;
    if (j0 >= own_last || DEC_OTHERS == 0) return;
    const int jend = min(j0 + chunk, own_last), rows = qlen * MOBA_GQA;
    __shared__ float4 qs[DEC_ROWS][D / 4];
    __shared__ float sc[DEC_ROWS][CHUNK];
    const float4 *cent = reinterpret_cast<const float4 *>(p.centroid_sum);
    const int sub = lane & 3;
    // the next 8 blocks' centroids load while this warp scores the current ones
    auto load = [&](int base, float4 *c) {
        const int j = base + lane / 4;
        if (j >= jend) return;
        const float4 *src = cent + (((long long)b * p.max_blocks + j) * p.hkv + kvh) * (D / 4);
#pragma unroll
        for (int i = 0; i < C4; i++) c[i] = __ldcs(src + sub + 4 * i);
    };
    float4 c[C4], next[C4];
    load(j0 + warp * 8, next);   // in flight while the queries load
    const elem_t *q = reinterpret_cast<const elem_t *>(p.q);
    for (int e = threadIdx.x; e < DEC_ROWS * D / 4; e += 128) {
        const int i = e / (D / 4), c4 = e % (D / 4);
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < rows) {
            const elem_t *src = q + (long long)(q0 + i / MOBA_GQA) * p.q_row_stride + (kvh * MOBA_GQA + i % MOBA_GQA) * D + c4 * 4;
            v = make_float4(elem_to_float(src[0]), elem_to_float(src[1]), elem_to_float(src[2]), elem_to_float(src[3]));
        }
        qs[i][c4] = v;
    }
    __syncthreads();
    for (int base = j0 + warp * 8; base < jend; base += 32) {
        const int j = base + lane / 4;
#pragma unroll
        for (int i = 0; i < C4; i++) c[i] = next[i];
        if (base + 32 < jend) load(base + 32, next);
        const float count = (float)min(MOBA_BLOCK, len - j * MOBA_BLOCK);
        for (int i = 0; i < rows; i++) {
            float acc = 0.f;
#pragma unroll
            for (int k = 0; k < C4; k++) {
                const float4 qv = qs[i][sub + 4 * k];
                acc += qv.x * c[k].x + qv.y * c[k].y + qv.z * c[k].z + qv.w * c[k].w;
            }
            acc += __shfl_xor_sync(0xffffffffu, acc, 1);
            acc += __shfl_xor_sync(0xffffffffu, acc, 2);
            if (sub == 0 && j < jend) sc[i][j - j0] = acc / count;
        }
    }
    __syncthreads();
    u64 *cand = reinterpret_cast<u64 *>(p.cand);
% if pick_by_bisection then
    __shared__ u64 picks[4][32];
    for (int i = warp; i < rows; i += 4) {
        const int t = i / MOBA_GQA + len - qlen, own = t / MOBA_BLOCK;
        unsigned ord[PER_LANE];
#pragma unroll
        for (int m = 0; m < PER_LANE; m++) {
            const int j = j0 + lane + 32 * m;
            ord[m] = j < jend && j < own ? dec_cand_order(sc[i][j - j0]) : 0u;
        }
        const int n = dec_pick<PER_LANE>(
            DEC_OTHERS, [&](int m) { return ord[m]; }, [&](int m) { return j0 + lane + 32 * m; },
            [&](int m, int pos) {
                const int j = j0 + lane + 32 * m;
                picks[warp][pos] = dec_key(sc[i][j - j0], j);
            });
        __syncwarp();
        // the picks come in (slot, lane) order: each one's rank among them (keys are distinct)
        // is its place in the list, best first, as select merges the lists; 0 ends a list
        u64 *out = cand + ((((long long)b * p.hkv + kvh) * p.rows + i) * p.route_chunks + ci) * DEC_OTHERS;
        if (lane < DEC_OTHERS) {
            u64 key = 0;
            int rank = lane;
            if (lane < n) {
                key = picks[warp][lane];
                rank = 0;
                for (int e = 0; e < n; e++) rank += picks[warp][e] > key;
            }
            out[rank] = key;
        }
        __syncwarp();   // the warp's next row reuses picks
    }
% else
    for (int i = warp; i < rows; i += 4) {
        const int t = i / MOBA_GQA + len - qlen, own = t / MOBA_BLOCK;
        u64 key[PER_LANE];
#pragma unroll
        for (int m = 0; m < PER_LANE; m++) {
            const int j = j0 + lane + 32 * m;
            key[m] = j < jend && j < own ? dec_key(sc[i][j - j0], j) : 0ull;
        }
        u64 *out = cand + ((((long long)b * p.hkv + kvh) * p.rows + i) * p.route_chunks + ci) * DEC_OTHERS;
        for (int s = 0; s < DEC_OTHERS; s++) {
            u64 best = 0;
#pragma unroll
            for (int m = 0; m < PER_LANE; m++) best = key[m] > best ? key[m] : best;
            best = warp_max_u64(best);
            if (lane == 0) out[s] = best;
            if (best == 0) break;
#pragma unroll
            for (int m = 0; m < PER_LANE; m++) if (key[m] == best) key[m] = 0;
        }
    }
% end
}

// ---- decode 2: each row's selection and the kv head's union of blocks ------------------------
// One CTA per (kv head, sequence). A warp merges a row's sorted chunk lists (each lane keeps
// the heads of chunks lane, lane + 32, ...; the first entries of every list are staged in shared
// memory in one parallel read, so that the rounds do not wait on global memory), adds the own
// block and sorts the row ascending. Then the CTA sorts every (block, row) pair of the kv head
// (bitonic, in shared memory) and writes each distinct block once with the mask of its rows.
#define DEC_STAGE 768                                 // staged candidate keys per warp
#define DEC_STAGE_BATCH 16                            // staging loads in flight per lane
__global__ void __launch_bounds__(128) moba_decode_select(const DecodeParams p)
{
    const int kvh = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    __shared__ int chosen[DEC_ROWS][MOBA_TOP_K];
    __shared__ int n_chosen[DEC_ROWS + 1];
    __shared__ unsigned char heads[4][DEC_MAX_CHUNKS];
    __shared__ u64 stage[4][DEC_STAGE];
    __shared__ unsigned pairs[DEC_UNION];
    __shared__ int scan[128];
    int *uni_blocks = reinterpret_cast<int *>(p.uni_blocks) + ((long long)b * p.hkv + kvh) * DEC_UNION;
    unsigned *uni_masks = reinterpret_cast<unsigned *>(p.uni_masks) + ((long long)b * p.hkv + kvh) * DEC_UNION;
    int *uni_count = reinterpret_cast<int *>(p.uni_count) + (long long)b * p.hkv + kvh;
    int q0, qlen, len;
    if (!dec_seq(p, b, q0, qlen, len)) {
        if (tid == 0) {
            *uni_count = 0;
            if (kvh == 0) dec_flag(p, qlen > len ? DEC_ERR_QLEN : DEC_ERR_FULL);
        }
        return;
    }
    const int rows = qlen * MOBA_GQA;
    const u64 *cand = reinterpret_cast<const u64 *>(p.cand);
    for (int i = warp; i < rows; i += 4) {
        const int t = i / MOBA_GQA + len - qlen, own = t / MOBA_BLOCK;
        const int used = own > 0 ? (own - 1) / (int)p.route_chunk + 1 : 0;   // chunks holding candidates
        const u64 *lists = cand + (((long long)b * p.hkv + kvh) * p.rows + i) * p.route_chunks * DEC_OTHERS;
        // the first `win` entries of each list (all of them when they fit)
        const int win = used > 0 ? max(1, min(DEC_OTHERS, DEC_STAGE / used)) : 0;
        for (int c = lane; c < used; c += 32) heads[warp][c] = 0;
        // loads first, stores after, DEC_STAGE_BATCH per lane: one round trip per batch, not per entry
        // (entry e = c * win + h: list c, place h; lane's next entry is 32 further)
        const int staged = used * win, step_c = 32 / max(win, 1), step_h = 32 % max(win, 1);
        int c_at = lane / max(win, 1), h_at = lane % max(win, 1);
        for (int e0 = 0; e0 < staged; e0 += 32 * DEC_STAGE_BATCH) {
            u64 v[DEC_STAGE_BATCH];
#pragma unroll
            for (int u = 0; u < DEC_STAGE_BATCH; u++) {
                v[u] = e0 + lane + 32 * u < staged ? lists[(long long)c_at * DEC_OTHERS + h_at] : 0ull;
                c_at += step_c;
                h_at += step_h;
                if (h_at >= win) {
                    h_at -= win;
                    c_at++;
                }
            }
            __syncwarp();   // keeps the compiler from moving stores between the loads
#pragma unroll
            for (int u = 0; u < DEC_STAGE_BATCH; u++) {
                const int e = e0 + lane + 32 * u;
                if (e < staged) stage[warp][e] = v[u];
            }
        }
        __syncwarp();
        int n = 0;
        if (lane == 0) chosen[i][n] = own;
        n++;
        for (; n < MOBA_TOP_K; n++) {
            u64 best = 0;
            int best_chunk = -1;
            for (int c = lane; c < used; c += 32) {
                const int h = heads[warp][c];
                const u64 k = h < win ? stage[warp][c * win + h]
                                      : h < DEC_OTHERS ? lists[(long long)c * DEC_OTHERS + h] : 0ull;
                if (k > best) { best = k; best_chunk = c; }
            }
            const u64 top = warp_max_u64(best);
            if (top == 0) break;
            if (best == top) heads[warp][best_chunk]++;
            if (lane == 0) chosen[i][n] = dec_key_block(top);
            __syncwarp();
        }
        // ascending: each entry's rank among the row's distinct blocks
        __syncwarp();
        int vals[(MOBA_TOP_K + 31) / 32], ranks[(MOBA_TOP_K + 31) / 32];
#pragma unroll
        for (int m = 0; m < (MOBA_TOP_K + 31) / 32; m++) {
            vals[m] = lane + 32 * m < n ? chosen[i][lane + 32 * m] : -1;
            ranks[m] = 0;
            for (int e = 0; e < n; e++) ranks[m] += chosen[i][e] < vals[m];
        }
        __syncwarp();
#pragma unroll
        for (int m = 0; m < (MOBA_TOP_K + 31) / 32; m++)
            if (lane + 32 * m < n) chosen[i][ranks[m]] = vals[m];
        if (lane == 0) n_chosen[i] = n;
        __syncwarp();
        if (p.sel) {
            int *sel = reinterpret_cast<int *>(p.sel) + ((long long)(q0 + i / MOBA_GQA) * p.hq + kvh * MOBA_GQA + i % MOBA_GQA) * MOBA_TOP_K;
            for (int s = lane; s < MOBA_TOP_K; s += 32) sel[s] = s < n ? chosen[i][s] : -1;
        }
    }
    __syncthreads();
    // every (block, row) pair as block * 16 + row, sorted
    if (tid == 0) {
        int off = 0;
        for (int i = 0; i < rows; i++) {
            const int n = n_chosen[i];
            n_chosen[i] = off;
            off += n;
        }
        n_chosen[DEC_ROWS] = off;
    }
    __syncthreads();
    const int total = n_chosen[DEC_ROWS];
    int pow2 = 1;
    while (pow2 < total) pow2 *= 2;
    for (int e = tid; e < pow2; e += 128) {
        unsigned key = 0xffffffffu;
        if (e < total) {
            int i = 0;
            while (i + 1 < rows && n_chosen[i + 1] <= e) i++;
            key = (unsigned)chosen[i][e - n_chosen[i]] * DEC_ROWS + (unsigned)i;
        }
        pairs[e] = key;
    }
    __syncthreads();
    for (int k2 = 2; k2 <= pow2; k2 *= 2)
        for (int j = k2 / 2; j > 0; j /= 2) {
            for (int e = tid; e < pow2; e += 128) {
                const int other = e ^ j;
                if (other > e) {
                    const unsigned x = pairs[e], y = pairs[other];
                    if ((x > y) == ((e & k2) == 0)) {
                        pairs[e] = y;
                        pairs[other] = x;
                    }
                }
            }
            __syncthreads();
        }
    // distinct blocks: each thread takes a run of pairs, counts the blocks starting there, and a
    // scan of the counts gives where they go
    const int per = (total + 127) / 128, lo = min(tid * per, total), hi = min(lo + per, total);
    int starts = 0;
    for (int e = lo; e < hi; e++) starts += e == 0 || pairs[e] / DEC_ROWS != pairs[e - 1] / DEC_ROWS;
    scan[tid] = starts;
    __syncthreads();
    for (int o = 1; o < 128; o *= 2) {
        const int x = tid >= o ? scan[tid - o] : 0;
        __syncthreads();
        scan[tid] += x;
        __syncthreads();
    }
    int at = scan[tid] - starts;
    for (int e = lo; e < hi; e++) {
        const unsigned blk = pairs[e] / DEC_ROWS;
        if (e > 0 && pairs[e - 1] / DEC_ROWS == blk) continue;
        unsigned mask = 0;
        for (int f = e; f < total && pairs[f] / DEC_ROWS == blk; f++) mask |= 1u << (pairs[f] % DEC_ROWS);
        uni_blocks[at] = (int)blk;
        uni_masks[at] = mask;
        at++;
    }
    if (tid == 127) *uni_count = scan[127];
}

// ---- decode 3: split-KV attention over the union ---------------------------------------------
// One CTA per (split, kv head, sequence): union entries split, split + splits, ... Its 16-key
// tiles go round-robin to 4 warps; each warp streams its tiles through STAGES cp.async buffers
// of its own and keeps an online softmax for the 16 rows (m16n8k16, fp32 accumulators). A row
// sees a key only if it chose the key's block and the key is at or before its position. The
// warps' partials are merged in shared memory and written as the split's (m, l, o).
template <int STAGES>
__global__ void __launch_bounds__(128) moba_decode_attn(const DecodeParams p)
{
    constexpr int D = MOBA_HEAD_DIM, CH = D / 8, KSTEPS = D / 16, DT = D / 8, TILES_PER_BLOCK = MOBA_BLOCK / 16;
    constexpr float LOG2E = 1.4426950408889634f;
    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, splits = (int)p.splits;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    uint4 *q_s = reinterpret_cast<uint4 *>(smem_raw);
    uint4 *kv_s = q_s + DEC_ROWS * CH + warp * STAGES * 2 * 16 * CH;   // this warp's stages
    const long long part = (((long long)b * p.hkv + kvh) * splits + split) * DEC_ROWS;
    float *part_o = reinterpret_cast<float *>(p.part_o) + part * D;
    float2 *part_ml = reinterpret_cast<float2 *>(p.part_ml) + part;
    // The sequence, the union's size and this CTA's first entries (one per thread) load at once,
    // none waiting on another: the union arrays hold DEC_UNION entries per kv head, so reading
    // past the size stays in the workspace (those values are never used).
    const int *uni_blocks = reinterpret_cast<const int *>(p.uni_blocks) + ((long long)b * p.hkv + kvh) * DEC_UNION;
    const unsigned *uni_masks = reinterpret_cast<const unsigned *>(p.uni_masks) + ((long long)b * p.hkv + kvh) * DEC_UNION;
    const int u_first = split + tid * splits;
    const int blk_first = u_first < DEC_UNION ? uni_blocks[u_first] : 0;
    const unsigned mask_first = u_first < DEC_UNION ? uni_masks[u_first] : 0u;
    const int n_uni_stored = reinterpret_cast<const int *>(p.uni_count)[b * p.hkv + kvh];
    int q0, qlen, len;
    const bool ok = dec_seq(p, b, q0, qlen, len);
    const int n_uni = ok ? n_uni_stored : 0;
    const int mine = split < n_uni ? (n_uni - split + splits - 1) / splits : 0;
    if (mine == 0) {
        if (tid < DEC_ROWS) part_ml[tid] = make_float2(-INFINITY, 0.f);
        return;
    }
    const int rows = qlen * MOBA_GQA;
    const elem_t *q = reinterpret_cast<const elem_t *>(p.q);
    for (int e = tid; e < DEC_ROWS * CH; e += 128) {
        const int i = e / CH, c = e % CH;
        const elem_t *src = q + (long long)(q0 + (i < rows ? i / MOBA_GQA : 0)) * p.q_row_stride + (kvh * MOBA_GQA + i % MOBA_GQA) * D + c * 8;
        cp_async16(&q_s[swizzle(i, c)], src, i < rows);
    }
    // This CTA's blocks, their row masks and the page of every position they cover, read once
    // into shared memory (all in parallel) so that the tile loads never wait on a dependent
    // global read. A CTA with more than fits reads them from global memory instead.
    __shared__ int s_blk[DEC_ATTN_BLOCKS];
    __shared__ unsigned s_mask[DEC_ATTN_BLOCKS];
    __shared__ int s_page[DEC_ATTN_PAGES];
    const int ps = (int)p.page_size, ppb = (MOBA_BLOCK + ps - 1) / ps + 1;
    const bool cached = mine <= DEC_ATTN_BLOCKS && mine * ppb <= DEC_ATTN_PAGES;
    const int *pt = reinterpret_cast<const int *>(p.page_table) + (long long)b * p.max_pages;
    if (cached) {
        // a thread per block: its entry, then its pages (loads first, stores after)
        for (int e = tid; e < mine; e += 128) {
            const int blk = e == tid ? blk_first : uni_blocks[split + e * splits];
            s_blk[e] = blk;
            s_mask[e] = e == tid ? mask_first : uni_masks[split + e * splits];
            const int pg0 = blk * MOBA_BLOCK / ps;
            for (int k0 = 0; k0 < ppb; k0 += 8) {
                int pages[8];
#pragma unroll
                for (int k = 0; k < 8; k++) pages[k] = k0 + k < ppb && pg0 + k0 + k < (int)p.max_pages ? pt[pg0 + k0 + k] : -1;
#pragma unroll
                for (int k = 0; k < 8; k++)
                    if (k0 + k < ppb) s_page[e * ppb + k0 + k] = pages[k];
            }
        }
        __syncthreads();
    }
    const elem_t *kp = reinterpret_cast<const elem_t *>(p.kprime_pages);
    const elem_t *vp = reinterpret_cast<const elem_t *>(p.v_pages);
    const int n_tiles = mine * TILES_PER_BLOCK;
    // Tile `tile` of this CTA into stage buffer `st`: keys past the sequence are zero rows.
    // Pages that hold whole 16-key tiles (page_size a multiple of 16, the usual case) need one
    // page lookup per tile; others one per key.
    const bool tile_pages = ps % 16 == 0;
    const long long row_stride = p.hkv * MOBA_HEAD_DIM;
    auto page_of = [&](int m, int pos, int first_page) -> int {
        const int page = cached ? s_page[m * ppb + pos / ps - first_page] : __ldg(pt + pos / ps);
        if (page < 0 || page >= (int)p.n_pages) {
            dec_flag(p, DEC_ERR_PAGE);
            return -1;
        }
        return page;
    };
    auto load_tile = [&](int tile, int st) {
        if (tile < n_tiles) {
            const int m = tile / TILES_PER_BLOCK;
            const int blk = cached ? s_blk[m] : uni_blocks[split + m * splits];
            const int key0 = blk * MOBA_BLOCK + (tile % TILES_PER_BLOCK) * 16, first_page = blk * MOBA_BLOCK / ps;
            uint4 *ks = kv_s + st * 2 * 16 * CH, *vs = ks + 16 * CH;
            long long tile_at = -1;
            if (tile_pages && key0 < len) {
                const int page = page_of(m, key0, first_page);
                if (page >= 0) tile_at = (((long long)page * ps + key0 % ps) * p.hkv + kvh) * MOBA_HEAD_DIM;
            }
            if (tile_pages) {
                const elem_t *kt = kp + (tile_at >= 0 ? tile_at : 0), *vt = vp + (tile_at >= 0 ? tile_at : 0);
#pragma unroll
                for (int e = lane; e < 16 * CH; e += 32) {
                    const int r = e / CH, c = e % CH;
                    const bool valid = tile_at >= 0 && key0 + r < len;
                    const long long off = valid ? r * row_stride + c * 8 : 0;
                    cp_async16(&ks[swizzle(r, c)], kt + off, valid);
                    cp_async16(&vs[swizzle(r, c)], vt + off, valid);
                }
            } else {
                for (int e = lane; e < 16 * CH; e += 32) {
                    const int r = e / CH, c = e % CH, pos = key0 + r;
                    long long at = -1;
                    if (pos < len) {
                        const int page = page_of(m, pos, first_page);
                        if (page >= 0) at = (((long long)page * ps + pos % ps) * p.hkv + kvh) * MOBA_HEAD_DIM;
                    }
                    const bool valid = at >= 0;
                    cp_async16(&ks[swizzle(r, c)], kp + (valid ? at + c * 8 : 0), valid);
                    cp_async16(&vs[swizzle(r, c)], vp + (valid ? at + c * 8 : 0), valid);
                }
            }
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    };
    // prologue: the q tile joins the first group
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) load_tile(warp + 4 * s, s);
    const int r_lo = lane / 4;                         // this thread's rows r_lo and r_lo + 8
    int t_row[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int i = r_lo + 8 * h;
        t_row[h] = i < rows ? i / MOBA_GQA + len - qlen : -1;
    }
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    unsigned qa[KSTEPS][4];
    const float scale = (float)p.softmax_scale * LOG2E;
    int it = 0;
    for (int tile = warp; tile < n_tiles; tile += 4, it++) {
        load_tile(tile + 4 * (STAGES - 1), (it + STAGES - 1) % STAGES);
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 1) : "memory");
        if (it == 0) {
            __syncthreads();   // the q tile (loaded by every thread) has landed
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) ldsm_x4(smem_addr(&q_s[swizzle(lane & 15, 2 * kk + (lane >> 4))]), qa[kk]);
        } else {
            __syncwarp();
        }
        const uint4 *ks = kv_s + (it % STAGES) * 2 * 16 * CH, *vs = ks + 16 * CH;
        const int m = tile / TILES_PER_BLOCK, u = split + m * splits;
        const int blk = cached ? s_blk[m] : uni_blocks[u];
        const unsigned rmask = cached ? s_mask[m] : uni_masks[u];
        const int key0 = blk * MOBA_BLOCK + (tile % TILES_PER_BLOCK) * 16;
        float s[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            const int mat = lane >> 3;
            unsigned kb[4];
            ldsm_x4(smem_addr(&ks[swizzle((mat >> 1) * 8 + (lane & 7), 2 * kk + (mat & 1))]), kb);
            mma_16816(s[0], qa[kk], kb[0], kb[1]);
            mma_16816(s[1], qa[kk], kb[2], kb[3]);
        }
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int h = e >> 1, key = key0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                const bool see = key <= t_row[h] && ((rmask >> (r_lo + 8 * h)) & 1u);
                const float v = see ? s[nt][e] * scale : -INFINITY;
                s[nt][e] = v;
                tmax[h] = fmaxf(tmax[h], v);
            }
        float alpha[2], base[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 1));
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 2));
            const float m_new = fmaxf(mx[h], tmax[h]);
            base[h] = m_new == -INFINITY ? 0.f : m_new;    // a row that saw nothing yet stays empty
            alpha[h] = exp2f(mx[h] - base[h]);
            mx[h] = m_new;
            l[h] *= alpha[h];
        }
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float pr = exp2f(s[nt][e] - base[e >> 1]);
                s[nt][e] = pr;
                l[e >> 1] += pr;
            }
        if (!__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) {   // once the maxima settle, rarely
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                o[dt][0] *= alpha[0];
                o[dt][1] *= alpha[0];
                o[dt][2] *= alpha[1];
                o[dt][3] *= alpha[1];
            }
        }
        const unsigned pa[4] = {pack_pair(s[0][0], s[0][1]), pack_pair(s[0][2], s[0][3]),
                                pack_pair(s[1][0], s[1][1]), pack_pair(s[1][2], s[1][3])};
#pragma unroll
        for (int dt = 0; dt < DT; dt += 2) {
            const int mat = lane >> 3;
            unsigned vb[4];
            ldsm_x4_trans(smem_addr(&vs[swizzle((mat & 1) * 8 + (lane & 7), dt + (mat >> 1))]), vb);
            mma_16816(o[dt], pa, vb[0], vb[1]);
            mma_16816(o[dt + 1], pa, vb[2], vb[3]);
        }
        __syncwarp();   // this stage is free for the next load
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    if (n_tiles <= warp) {
        // a warp with no tile still waits for the q tile, as the others did at their first
        __syncthreads();
    }
    __syncthreads();   // every warp is done with its stages: reuse them for the partials
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    float *wo = reinterpret_cast<float *>(q_s + DEC_ROWS * CH) + warp * DEC_ROWS * (D + 2);
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) wo[(r_lo + 8 * (e >> 1)) * (D + 2) + dt * 8 + (lane & 3) * 2 + (e & 1)] = o[dt][e];
    if ((lane & 3) == 0) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            wo[(r_lo + 8 * h) * (D + 2) + D] = mx[h];
            wo[(r_lo + 8 * h) * (D + 2) + D + 1] = l[h];
        }
    }
    __syncthreads();
    const float *all = reinterpret_cast<const float *>(q_s + DEC_ROWS * CH);
    const int i = tid / 8, d0 = (tid % 8) * (D / 8);
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; w++) m_all = fmaxf(m_all, all[(w * DEC_ROWS + i) * (D + 2) + D]);
    const float mb = m_all == -INFINITY ? 0.f : m_all;
    float f[4], l_all = 0.f;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        f[w] = exp2f(all[(w * DEC_ROWS + i) * (D + 2) + D] - mb);
        l_all += f[w] * all[(w * DEC_ROWS + i) * (D + 2) + D + 1];
    }
    for (int d = d0; d < d0 + D / 8; d++) {
        float acc = 0.f;
#pragma unroll
        for (int w = 0; w < 4; w++) acc += f[w] * all[(w * DEC_ROWS + i) * (D + 2) + d];
        part_o[i * D + d] = acc;
    }
    if (tid % 8 == 0) part_ml[i] = make_float2(m_all, l_all);
}

// ---- decode 4: merge the splits ---------------------------------------------------------------
// One warp per (row of the kv head); CTA = (kv head, sequence). Rows of an inconsistent
// sequence (flagged by select) get o = 0 and LSE = 0 rather than stale memory.
__global__ void __launch_bounds__(128) moba_decode_merge(const DecodeParams p)
{
    constexpr int D = MOBA_HEAD_DIM, DPL = D / 32;
    const int kvh = blockIdx.x, b = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int *cu_q = reinterpret_cast<const int *>(p.cu_seqlens_q);
    const int q0 = cu_q[b], qlen = cu_q[b + 1] - q0;
    int dq0, dqlen, len;
    const bool ok = dec_seq(p, b, dq0, dqlen, len);
    const int rows = min(qlen, (int)p.max_q_len) * MOBA_GQA, splits = (int)p.splits;
    const long long part = ((long long)b * p.hkv + kvh) * splits * DEC_ROWS;
    const float2 *ml = reinterpret_cast<const float2 *>(p.part_ml) + part;
    const float *po = reinterpret_cast<const float *>(p.part_o) + part * D;
    for (int i = warp; i < rows; i += 4) {
        const long long row = q0 + i / MOBA_GQA;
        const int h = kvh * MOBA_GQA + i % MOBA_GQA;
        // the splits' maxima and sums across the lanes, then their outputs a few splits at a time
        float m = -INFINITY;
        if (ok)
            for (int s = lane; s < splits; s += 32) m = fmaxf(m, ml[s * DEC_ROWS + i].x);
#pragma unroll
        for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float acc[DPL], lsum = 0.f;
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[c] = 0.f;
        if (m != -INFINITY) {
            for (int s = lane; s < splits; s += 32) {
                const float2 v = ml[s * DEC_ROWS + i];
                if (v.x != -INFINITY) lsum += exp2f(v.x - m) * v.y;
            }
#pragma unroll
            for (int o = 16; o > 0; o /= 2) lsum += __shfl_xor_sync(0xffffffffu, lsum, o);
#pragma unroll 4
            for (int s = 0; s < splits; s++) {
                const float mx = ml[s * DEC_ROWS + i].x;
                if (mx == -INFINITY) continue;   // an empty split wrote no partial output
                const float f = exp2f(mx - m);
#pragma unroll
                for (int c = 0; c < DPL; c++) acc[c] += f * po[((long long)s * DEC_ROWS + i) * D + lane + 32 * c];
            }
        }
        const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
        elem_t *out = reinterpret_cast<elem_t *>(p.out) + row * p.out_row_stride + (long long)h * D;
#pragma unroll
        for (int c = 0; c < DPL; c++) out[lane + 32 * c] = float_to_elem(acc[c] * inv);
        if (lane == 0)
            reinterpret_cast<float *>(p.lse)[row * p.hq + h] = lsum > 0.f ? (m + __log2f(lsum)) * 0.6931471805599453f : 0.f;
    }
}
% end
