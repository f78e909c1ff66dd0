/* MoBA decode over a paged KV cache, with incremental block centroids: the CPU ground truth for
 * the serving kernels (docs/decode.md). Double precision and plain loops, like moba_ref.h, whose
 * config struct it reuses. Semantics are those of the forward (../shared/moba.md, causal mode):
 * prefilling L tokens with moba_ref_forward, or appending them in any number of steps and
 * decoding the new tokens, gives the same selection and the same outputs.
 *
 * Cache layout (row-major, last dim contiguous; a token's rows are [hkv][d]):
 *   kraw_pages, kprime_pages, v_pages   [n_pages][page_size][hkv][d]
 *   page_table    [batch][max_pages] int32: token p of sequence b lives in page
 *                 page_table[b][p / page_size], slot p % page_size. Entries past the pages a
 *                 sequence uses are never read (vLLM and FlashInfer pad them likewise).
 *   seq_lens      [batch]: tokens held per sequence (the append advances it)
 *   centroid_sum  [batch][max_blocks][hkv][d], max_blocks = moba_ref_paged_max_blocks():
 *                 the running sum of k' over the keys of block j held so far. Block j holds
 *                 count = min(B, L - j*B) keys, so no count is stored: the centroid is
 *                 sum / count, the partial last block averaged over its real keys.
 * kprime_pages (k' = k + SiLU(conv)) is what routing and attention read; kraw_pages keeps the
 * raw keys that the conv of later tokens needs (NULL allowed when conv_width == 0). */
#ifndef MOBA_REF_DECODE_H
#define MOBA_REF_DECODE_H

#include "moba_ref.h"

typedef struct moba_ref_paged_cache {
    int n_pages;            /* pages in the pool */
    int page_size;          /* tokens per page, fixed per cache */
    int max_pages;          /* page table row length */
    double *kraw_pages;
    double *kprime_pages;
    double *v_pages;
    const int *page_table;
    int *seq_lens;
    double *centroid_sum;
} moba_ref_paged_cache;

/* Status codes: 0 is success; nothing is written when a call refuses its input. */
enum {
    MOBA_REF_DECODE_OK = 0,
    MOBA_REF_DECODE_EARG = -1,      /* bad cfg, NULL array, negative length, causal == 0 */
    MOBA_REF_DECODE_EPAGE = -2,     /* a page table entry in use is outside 0..n_pages-1 */
    MOBA_REF_DECODE_EFULL = -3,     /* a sequence would hold more than max_pages * page_size */
    MOBA_REF_DECODE_EQLEN = -4,     /* more new queries than tokens in the cache */
    MOBA_REF_DECODE_ENOMEM = -5,
    MOBA_REF_DECODE_EDROP = -6,     /* a drop count negative or more than the sequence holds */
};

/* A short English description of a status code (never NULL). */
const char *moba_ref_decode_strerror(int status);

/* Centroid slots per sequence: ceil(max_pages * page_size / block_size), or -1 when cfg or the
 * cache's sizes are invalid. */
int moba_ref_paged_max_blocks(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache);

/* Appends new tokens: for sequence b, rows cfg->cu_seqlens_k[b] .. [b+1]-1 of k and v
 * ([total_new][hkv][d]; counts may differ and may be 0) go to positions seq_lens[b] onwards.
 * Each new key gets the conv over its sequence's previous W-1 raw keys (read back from
 * kraw_pages, zero before position 0), k' is written to kprime_pages and added to its block's
 * centroid_sum, and seq_lens[b] grows by the count. cfg->cu_seqlens_q is ignored. Everything
 * is checked before anything is written. Returns a MOBA_REF_DECODE_* status. */
int moba_ref_decode_append(const moba_ref_cfg *cfg, moba_ref_paged_cache *cache, const double *k,
                           const double *v, const double *conv_w);

/* Removes the last drop[b] tokens of each sequence (speculative decoding's rejected drafts):
 * seq_lens[b] -= drop[b], and the sum of the block that the new length cuts (when it is not a
 * multiple of B) is recomputed from its remaining k' rows in position order, so the cache is
 * exactly what appending only the kept tokens would have made. Nothing else changes: later
 * blocks restart at their first append, and the raw keys of the kept positions (the next
 * append's conv history) are untouched. 0 <= drop[b] <= seq_lens[b], else EDROP; everything is
 * checked before anything is written. cfg's cu_seqlens arrays are not read. */
int moba_ref_decode_truncate(const moba_ref_cfg *cfg, moba_ref_paged_cache *cache, const int *drop);

/* Decode: sequence b has q_len = cfg->cu_seqlens_q[b+1] - [b] new query rows in q
 * ([total_new_q][hq][d]), the last q_len tokens of the cache (appended before this call), so
 * row r sits at key position t = r + seq_lens[b] - q_len. Each (row, head) routes against the
 * cached centroids of its kv head (own block forced, whole earlier blocks as candidates, ties to
 * the higher score, then the lower index), then attends over the selected blocks' keys at
 * positions <= t, read through the page table: one partial softmax per selected block, merged.
 * Writes o [total_new_q][hq][d], lse [total_new_q][hq] (natural log) and, when sel is not
 * NULL, sel [total_new_q][hq][top_k] (ascending, -1 padded), as moba_ref_forward does.
 * cfg->causal must be 1; cfg->cu_seqlens_k and conv_width are ignored. */
int moba_ref_decode(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, const double *q,
                    double *o, double *lse, int *sel);

/* Centroid of block j (< ceil(seq_lens[b] / B)) of sequence b, kv head hk, into out[d]. */
void moba_ref_paged_centroid(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache, int b,
                             int j, int hk, double *out);

/* The [d] row of token p of sequence b, kv head hk, in one of the cache's page pools. */
const double *moba_ref_paged_row(const moba_ref_cfg *cfg, const moba_ref_paged_cache *cache,
                                 const double *pages, int b, int p, int hk);

#endif
