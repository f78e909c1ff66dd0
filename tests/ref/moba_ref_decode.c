/* MoBA decode over a paged KV cache (moba_ref_decode.h, docs/decode.md). Written for clarity:
 * the loops follow ../shared/moba.md, but routing and attention are written again rather than
 * borrowed from moba_ref.c (a top-k by insertion, a split softmax with a merge), the way the
 * kernels will do them, so that the forward and this file check each other. */
#include "moba_ref_decode.h"

#include <math.h>
#include <stdlib.h>

/* ---- layout -------------------------------------------------------------------------------- */

static int seq_rows(const int *cu, int b)
{
    return cu[b + 1] - cu[b];
}

static int page_of(const moba_ref_paged_cache *cache, int b, int p)
{
    return cache->page_table[(size_t)b * cache->max_pages + p / cache->page_size];
}

const double *moba_ref_paged_row(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                                 const double *pages, int b, int p, int hk)
{
    size_t slot = (size_t)page_of(cache, b, p) * cache->page_size + p % cache->page_size;
    return pages + (slot * cfg->hkv + hk) * cfg->d;
}

static double *paged_row_mut(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                             double *pages, int b, int p, int hk)
{
    return (double *)moba_ref_paged_row(cfg, cache, pages, b, p, hk);
}

static double *centroid_sum_at(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, int b,
                               int j, int hk)
{
    size_t max_blocks = (size_t)moba_ref_paged_max_blocks(cfg, cache);
    return cache->centroid_sum + (((size_t)b * max_blocks + j) * cfg->hkv + hk) * cfg->d;
}

/* ---- checks -------------------------------------------------------------------------------- */

const char *moba_ref_decode_strerror(int status)
{
    switch (status) {
    case MOBA_REF_DECODE_OK: return "ok";
    case MOBA_REF_DECODE_EARG: return "bad argument (cfg, NULL array, length or mode)";
    case MOBA_REF_DECODE_EPAGE: return "page table entry outside the page pool";
    case MOBA_REF_DECODE_EFULL: return "sequence longer than its page table row";
    case MOBA_REF_DECODE_EQLEN: return "more new queries than tokens in the cache";
    case MOBA_REF_DECODE_ENOMEM: return "out of memory";
    case MOBA_REF_DECODE_EDROP: return "drop count negative or more than the sequence holds";
    default: return "unknown status";
    }
}

static long long capacity(const moba_ref_paged_cache *cache)
{
    return (long long)cache->max_pages * cache->page_size;
}

int moba_ref_paged_max_blocks(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache)
{
    if (!cfg || !cache || cfg->block_size <= 0 || cache->page_size <= 0 || cache->max_pages < 0)
        return -1;
    long long blocks = (capacity(cache) + cfg->block_size - 1) / cfg->block_size;
    return blocks > 0x7fffffff ? -1 : (int)blocks;
}

/* cfg with the one packed-row array a call uses standing in for both, so that
 * moba_ref_check_cfg judges exactly what the call reads. */
static int check_cfg_with(const moba_ref_cfg *cfg, const int *cu)
{
    if (!cfg || !cu)
        return -1;
    moba_ref_cfg view = *cfg;
    view.cu_seqlens_q = cu;
    view.cu_seqlens_k = cu;
    return moba_ref_check_cfg(&view);
}

/* The cache's sizes and arrays, and every page table entry that positions 0..len_b-1 use
 * (len_b = seq_lens[b] + extra[b], extra may be NULL). */
static int check_cache(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                       const int *cu_extra)
{
    if (!cache || cache->n_pages < 0 || moba_ref_paged_max_blocks(cfg, cache) < 0)
        return MOBA_REF_DECODE_EARG;
    if (!cache->kprime_pages || !cache->v_pages || !cache->page_table || !cache->seq_lens ||
        !cache->centroid_sum || (cfg->conv_width > 0 && !cache->kraw_pages))
        return MOBA_REF_DECODE_EARG;
    for (int b = 0; b < cfg->batch; b++) {
        long long len = (long long)cache->seq_lens[b] + (cu_extra ? seq_rows(cu_extra, b) : 0);
        if (cache->seq_lens[b] < 0)
            return MOBA_REF_DECODE_EARG;
        if (len > capacity(cache))
            return MOBA_REF_DECODE_EFULL;
        int pages_used = (int)((len + cache->page_size - 1) / cache->page_size);
        for (int i = 0; i < pages_used; i++) {
            int page = cache->page_table[(size_t)b * cache->max_pages + i];
            if (page < 0 || page >= cache->n_pages)
                return MOBA_REF_DECODE_EPAGE;
        }
    }
    return MOBA_REF_DECODE_OK;
}

/* ---- append -------------------------------------------------------------------------------- */

/* sum_l w_l * k_{p-l} for channel c, the current raw key `k_now` at l = 0 and the earlier ones
 * read back from the cache; taps before position 0 are the zero padding, which is what keeps
 * the conv inside its sequence. */
static double conv_at(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                      const double *conv_w, int b, int p, int hk, int c, const double *k_now)
{
    double acc = 0.0;
    for (int l = 0; l < cfg->conv_width; l++) {
        int src = p - l;
        if (src < 0)
            break;
        double key = l == 0 ? k_now[c]
                            : moba_ref_paged_row(cfg, cache, cache->kraw_pages, b, src, hk)[c];
        acc += conv_w[((size_t)hk * cfg->conv_width + l) * cfg->d + c] * key;
    }
    return acc;
}

int moba_ref_decode_append(const moba_ref_cfg *cfg, moba_ref_paged_cache *cache, const double *k,
                           const double *v, const double *conv_w)
{
    if (check_cfg_with(cfg, cfg ? cfg->cu_seqlens_k : NULL) != 0)
        return MOBA_REF_DECODE_EARG;
    const int *cu = cfg->cu_seqlens_k;
    if (cu[cfg->batch] > 0 && (!k || !v))
        return MOBA_REF_DECODE_EARG;
    if (cfg->conv_width > 0 && !conv_w)
        return MOBA_REF_DECODE_EARG;
    int status = check_cache(cfg, cache, cu);
    if (status != MOBA_REF_DECODE_OK)
        return status;

    int hkv = cfg->hkv, d = cfg->d, B = cfg->block_size;
    for (int b = 0; b < cfg->batch; b++) {
        /* Token by token, in position order: the conv of token p reads the raw keys of p-1 ..
         * p-W+1, which earlier iterations (or earlier calls) have written. */
        for (int i = 0; i < seq_rows(cu, b); i++) {
            int row = cu[b] + i, p = cache->seq_lens[b] + i;
            for (int hk = 0; hk < hkv; hk++) {
                const double *k_now = k + ((size_t)row * hkv + hk) * d;
                const double *v_now = v + ((size_t)row * hkv + hk) * d;
                double *kp = paged_row_mut(cfg, cache, cache->kprime_pages, b, p, hk);
                double *vp = paged_row_mut(cfg, cache, cache->v_pages, b, p, hk);
                double *sum = centroid_sum_at(cfg, cache, b, p / B, hk);
                for (int c = 0; c < d; c++) {
                    double kprime = k_now[c];
                    if (cfg->conv_width > 0)
                        kprime += moba_ref_silu(conv_at(cfg, cache, conv_w, b, p, hk, c, k_now));
                    kp[c] = kprime;
                    vp[c] = v_now[c];
                    /* A block's first key starts its sum afresh, so slots reused from an
                     * earlier occupant of the cache need no clearing. */
                    sum[c] = (p % B == 0 ? 0.0 : sum[c]) + kprime;
                }
                if (cfg->conv_width > 0) {
                    double *kr = paged_row_mut(cfg, cache, cache->kraw_pages, b, p, hk);
                    for (int c = 0; c < d; c++)
                        kr[c] = k_now[c];
                }
            }
        }
        cache->seq_lens[b] += seq_rows(cu, b);
    }
    return MOBA_REF_DECODE_OK;
}

/* ---- truncate ------------------------------------------------------------------------------ */

/* The sum of block j over positions j*B .. len-1, added in position order as the append does. */
static void recompute_block_sum(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, int b,
                                int j, int len)
{
    for (int hk = 0; hk < cfg->hkv; hk++) {
        double *sum = centroid_sum_at(cfg, cache, b, j, hk);
        for (int c = 0; c < cfg->d; c++)
            sum[c] = 0.0;
        for (int p = j * cfg->block_size; p < len; p++) {
            const double *kp = moba_ref_paged_row(cfg, cache, cache->kprime_pages, b, p, hk);
            for (int c = 0; c < cfg->d; c++)
                sum[c] += kp[c];
        }
    }
}

int moba_ref_decode_truncate(const moba_ref_cfg *cfg, moba_ref_paged_cache *cache, const int *drop)
{
    if (!cfg || !drop || cfg->batch <= 0)
        return MOBA_REF_DECODE_EARG;
    int *no_rows = calloc((size_t)cfg->batch + 1, sizeof *no_rows);
    if (!no_rows)
        return MOBA_REF_DECODE_ENOMEM;
    int status = check_cfg_with(cfg, no_rows) != 0 ? MOBA_REF_DECODE_EARG : check_cache(cfg, cache, NULL);
    free(no_rows);
    if (status != MOBA_REF_DECODE_OK)
        return status;
    for (int b = 0; b < cfg->batch; b++)
        if (drop[b] < 0 || drop[b] > cache->seq_lens[b])
            return MOBA_REF_DECODE_EDROP;
    for (int b = 0; b < cfg->batch; b++) {
        int len = cache->seq_lens[b] - drop[b];
        if (drop[b] > 0 && len % cfg->block_size != 0)
            recompute_block_sum(cfg, cache, b, len / cfg->block_size, len);
        cache->seq_lens[b] = len;
    }
    return MOBA_REF_DECODE_OK;
}

/* ---- decode -------------------------------------------------------------------------------- */

void moba_ref_paged_centroid(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, int b,
                             int j, int hk, double *out)
{
    int B = cfg->block_size, len = cache->seq_lens[b];
    int count = (j + 1) * B <= len ? B : len - j * B;
    const double *sum = centroid_sum_at(cfg, cache, b, j, hk);
    for (int c = 0; c < cfg->d; c++)
        out[c] = sum[c] / count;
}

/* The selection order: higher score first, and on equal scores the lower block index first. */
static int ranks_before(double score_a, int a, double score_b, int b)
{
    if (score_a != score_b)
        return score_a > score_b;
    return a < b;
}

/* Routing of one (query, head) at key position t >= 0: the own block, then the best top_k - 1
 * of the whole blocks before it, kept in a list sorted by rank (insertion, as a per-thread
 * register top-k would). Writes top_k entries to out (ascending, -1 padded); returns the count. */
static int route_one(const moba_ref_cfg *cfg, const double *scores, int t, int *ranked, int *out)
{
    int own = t / cfg->block_size, want = cfg->top_k - 1, kept = 0;
    for (int j = 0; (j + 1) * cfg->block_size <= t; j++) {
        int at = kept;
        while (at > 0 && ranks_before(scores[j], j, scores[ranked[at - 1]], ranked[at - 1]))
            at--;
        if (at >= want)
            continue;
        for (int i = (kept < want ? kept : want - 1); i > at; i--)
            ranked[i] = ranked[i - 1];
        ranked[at] = j;
        if (kept < want)
            kept++;
    }
    /* Ascending block order: the kept blocks are all below own. */
    int count = 0;
    for (int j = 0; j < own; j++)
        for (int i = 0; i < kept; i++)
            if (ranked[i] == j)
                out[count++] = j;
    out[count++] = own;
    for (int i = count; i < cfg->top_k; i++)
        out[i] = -1;
    return count;
}

/* One selected block's share of the softmax: its max score, the sum of exp(score - max) and the
 * matching weighted sum of values, over the block's keys at positions <= t. */
typedef struct partial {
    double max, sum;
    double *acc; /* [d] */
} partial;

static void attend_block(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                         const double *q_row, int b, int hk, int j, int t, partial *out)
{
    int d = cfg->d, first = j * cfg->block_size;
    int last = first + cfg->block_size - 1 < t ? first + cfg->block_size - 1 : t;
    out->max = -INFINITY;
    out->sum = 0.0;
    for (int c = 0; c < d; c++)
        out->acc[c] = 0.0;
    for (int p = first; p <= last; p++) {
        const double *kp = moba_ref_paged_row(cfg, cache, cache->kprime_pages, b, p, hk);
        out->max = fmax(out->max, cfg->scale * moba_ref_dot(q_row, kp, d));
    }
    for (int p = first; p <= last; p++) {
        const double *kp = moba_ref_paged_row(cfg, cache, cache->kprime_pages, b, p, hk);
        const double *vp = moba_ref_paged_row(cfg, cache, cache->v_pages, b, p, hk);
        double weight = exp(cfg->scale * moba_ref_dot(q_row, kp, d) - out->max);
        out->sum += weight;
        for (int c = 0; c < d; c++)
            out->acc[c] += weight * vp[c];
    }
}

/* The split-K merge: rescale every partial to the common max and add. */
static void merge_partials(const partial *parts, int n, int d, double *o_row, double *lse)
{
    double max = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++)
        max = fmax(max, parts[i].max);
    for (int c = 0; c < d; c++)
        o_row[c] = 0.0;
    if (max == -INFINITY) {
        *lse = -INFINITY;
        return;
    }
    for (int i = 0; i < n; i++) {
        if (parts[i].max == -INFINITY)
            continue;
        double factor = exp(parts[i].max - max);
        sum += parts[i].sum * factor;
        for (int c = 0; c < d; c++)
            o_row[c] += parts[i].acc[c] * factor;
    }
    for (int c = 0; c < d; c++)
        o_row[c] /= sum;
    *lse = max + log(sum);
}

static int check_decode(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                        const double *q, const double *o, const double *lse)
{
    if (check_cfg_with(cfg, cfg ? cfg->cu_seqlens_q : NULL) != 0 || !cfg->causal)
        return MOBA_REF_DECODE_EARG;
    if (cfg->cu_seqlens_q[cfg->batch] > 0 && (!q || !o || !lse))
        return MOBA_REF_DECODE_EARG;
    int status = check_cache(cfg, cache, NULL);
    if (status != MOBA_REF_DECODE_OK)
        return status;
    for (int b = 0; b < cfg->batch; b++)
        if (seq_rows(cfg->cu_seqlens_q, b) > cache->seq_lens[b])
            return MOBA_REF_DECODE_EQLEN;
    return MOBA_REF_DECODE_OK;
}

int moba_ref_decode(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, const double *q,
                    double *o, double *lse, int *sel)
{
    int status = check_decode(cfg, cache, q, o, lse);
    if (status != MOBA_REF_DECODE_OK)
        return status;
    int d = cfg->d, top_k = cfg->top_k, B = cfg->block_size;
    int max_n = 1;
    for (int b = 0; b < cfg->batch; b++)
        if ((cache->seq_lens[b] + B - 1) / B > max_n)
            max_n = (cache->seq_lens[b] + B - 1) / B;
    double *scores = malloc((size_t)max_n * sizeof *scores);
    double *centroid = malloc((size_t)d * sizeof *centroid);
    int *ranked = malloc((size_t)top_k * sizeof *ranked);
    int *blocks = malloc((size_t)top_k * sizeof *blocks);
    partial *parts = malloc((size_t)top_k * sizeof *parts);
    double *acc = malloc((size_t)top_k * d * sizeof *acc);
    status = MOBA_REF_DECODE_ENOMEM;
    if (!scores || !centroid || !ranked || !blocks || !parts || !acc)
        goto out;
    for (int i = 0; i < top_k; i++)
        parts[i].acc = acc + (size_t)i * d;

    for (int b = 0; b < cfg->batch; b++) {
        int q_len = seq_rows(cfg->cu_seqlens_q, b), len = cache->seq_lens[b];
        int n = (len + B - 1) / B;
        for (int r = 0; r < q_len; r++) {
            int row = cfg->cu_seqlens_q[b] + r, t = r + len - q_len;
            for (int h = 0; h < cfg->hq; h++) {
                int hk = h / (cfg->hq / cfg->hkv);
                size_t at = (size_t)row * cfg->hq + h;
                const double *q_row = q + at * d;
                for (int j = 0; j < n; j++) {
                    moba_ref_paged_centroid(cfg, cache, b, j, hk, centroid);
                    scores[j] = moba_ref_dot(q_row, centroid, d);
                }
                int count = route_one(cfg, scores, t, ranked, blocks);
                for (int i = 0; i < count; i++)
                    attend_block(cfg, cache, q_row, b, hk, blocks[i], t, &parts[i]);
                merge_partials(parts, count, d, o + at * d, lse + at);
                if (sel)
                    for (int i = 0; i < top_k; i++)
                        sel[at * top_k + i] = blocks[i];
            }
        }
    }
    status = MOBA_REF_DECODE_OK;
out:
    free(scores);
    free(centroid);
    free(ranked);
    free(blocks);
    free(parts);
    free(acc);
    return status;
}
