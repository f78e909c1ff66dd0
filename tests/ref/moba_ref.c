/* The C reference for MoBA, written for clarity, not speed: every loop mirrors a line of
 * ../shared/moba.md. All arithmetic is double so that the GPU kernels' fp32 accumulation is the
 * only source of error a comparison sees. */
#include "moba_ref.h"

#include <math.h>
#include <stdlib.h>

/* ---- layout helpers ------------------------------------------------------------------------ */

static const double *q_row(const moba_ref_cfg *cfg, const double *q, int row, int h)
{
    return q + ((size_t)row * cfg->hq + h) * cfg->d;
}

static size_t kv_offset(const moba_ref_cfg *cfg, int row, int hk)
{
    return ((size_t)row * cfg->hkv + hk) * cfg->d;
}

static size_t centroid_offset(const moba_ref_cfg *cfg, int b, int j, int hk)
{
    int max_blocks = moba_ref_max_blocks(cfg);
    return (((size_t)b * max_blocks + j) * cfg->hkv + hk) * cfg->d;
}

static int kv_head_of(const moba_ref_cfg *cfg, int h)
{
    return h / (cfg->hq / cfg->hkv);
}

static int seqlen_q(const moba_ref_cfg *cfg, int b)
{
    return cfg->cu_seqlens_q[b + 1] - cfg->cu_seqlens_q[b];
}

static int seqlen_k(const moba_ref_cfg *cfg, int b)
{
    return cfg->cu_seqlens_k[b + 1] - cfg->cu_seqlens_k[b];
}

static int num_blocks(const moba_ref_cfg *cfg, int len_k)
{
    return (len_k + cfg->block_size - 1) / cfg->block_size;
}

/* Key position of query row r (within its sequence): bottom-right alignment, so the last query
 * always sits on the last key whatever L_q and L_k are. */
static int key_position(int r, int len_q, int len_k)
{
    return r + len_k - len_q;
}

double moba_ref_dot(const double *a, const double *b, int d)
{
    double s = 0.0;
    for (int c = 0; c < d; c++)
        s += a[c] * b[c];
    return s;
}

double moba_ref_silu(double x)
{
    return x / (1.0 + exp(-x));
}

/* ---- configuration ------------------------------------------------------------------------- */

/* cu_seqlens must start at 0: rows are indexed from the start of the packed tensors, so an
 * offset start would silently read rows the caller did not describe. */
static int cu_seqlens_ok(const int *cu, int batch)
{
    if (!cu || cu[0] != 0)
        return 0;
    for (int b = 0; b < batch; b++)
        if (cu[b + 1] < cu[b])
            return 0;
    return 1;
}

/* batch must be at least 1 ("positive sizes"); sequences inside it may be empty. */
int moba_ref_check_cfg(const moba_ref_cfg *cfg)
{
    if (!cfg)
        return -1;
    if (cfg->batch <= 0 || cfg->hq <= 0 || cfg->hkv <= 0 || cfg->d <= 0)
        return -1;
    if (cfg->block_size <= 0 || cfg->top_k <= 0 || cfg->conv_width < 0)
        return -1;
    if (cfg->hq % cfg->hkv != 0)
        return -1;
    if (!isfinite(cfg->scale))
        return -1;
    if (!cu_seqlens_ok(cfg->cu_seqlens_q, cfg->batch) || !cu_seqlens_ok(cfg->cu_seqlens_k, cfg->batch))
        return -1;
    return 0;
}

int moba_ref_max_blocks(const moba_ref_cfg *cfg)
{
    int max_len = 0;
    for (int b = 0; b < cfg->batch; b++)
        if (seqlen_k(cfg, b) > max_len)
            max_len = seqlen_k(cfg, b);
    return num_blocks(cfg, max_len);
}

/* ---- 1. key convolution -------------------------------------------------------------------- */

/* The conv of one key row and head; taps that would reach before `seq_start` read the zero
 * padding, which is what keeps sequences of the packed batch independent. */
static double conv_at(const moba_ref_cfg *cfg, const double *k, const double *conv_w, int seq_start,
                      int row, int hk, int c)
{
    double acc = 0.0;
    for (int l = 0; l < cfg->conv_width; l++) {
        int src = row - l;
        if (src < seq_start)
            break;
        double w = conv_w[((size_t)hk * cfg->conv_width + l) * cfg->d + c];
        acc += w * k[kv_offset(cfg, src, hk) + c];
    }
    return acc;
}

void moba_ref_kconv(const moba_ref_cfg *cfg, const double *k, const double *conv_w, double *kprime)
{
    for (int b = 0; b < cfg->batch; b++) {
        int start = cfg->cu_seqlens_k[b], end = cfg->cu_seqlens_k[b + 1];
        for (int row = start; row < end; row++)
            for (int hk = 0; hk < cfg->hkv; hk++)
                for (int c = 0; c < cfg->d; c++) {
                    size_t at = kv_offset(cfg, row, hk) + c;
                    kprime[at] = k[at];
                    if (cfg->conv_width > 0)
                        kprime[at] += moba_ref_silu(conv_at(cfg, k, conv_w, start, row, hk, c));
                }
    }
}

/* ---- 2. routing ---------------------------------------------------------------------------- */

void moba_ref_centroids(const moba_ref_cfg *cfg, const double *kprime, double *centroid)
{
    int B = cfg->block_size;
    for (int b = 0; b < cfg->batch; b++) {
        int start = cfg->cu_seqlens_k[b], len = seqlen_k(cfg, b);
        for (int j = 0; j < num_blocks(cfg, len); j++) {
            int first = j * B;
            int count = (first + B <= len) ? B : len - first;
            for (int hk = 0; hk < cfg->hkv; hk++) {
                double *out = centroid + centroid_offset(cfg, b, j, hk);
                for (int c = 0; c < cfg->d; c++) {
                    double sum = 0.0;
                    for (int i = 0; i < count; i++)
                        sum += kprime[kv_offset(cfg, start + first + i, hk) + c];
                    out[c] = sum / count;
                }
            }
        }
    }
}

/* Sequence that holds packed query row `row`; rows of empty sequences never match. */
static int sequence_of_query_row(const moba_ref_cfg *cfg, int row)
{
    for (int b = 0; b < cfg->batch; b++)
        if (row >= cfg->cu_seqlens_q[b] && row < cfg->cu_seqlens_q[b + 1])
            return b;
    return -1;
}

double moba_ref_gate_score(const moba_ref_cfg *cfg, const double *q, const double *centroid,
                           int row, int h, int j)
{
    int b = sequence_of_query_row(cfg, row);
    const double *c = centroid + centroid_offset(cfg, b, j, kv_head_of(cfg, h));
    return moba_ref_dot(q_row(cfg, q, row, h), c, cfg->d);
}

/* The selection order: higher score first, and on equal scores the lower block index first. */
static int ranks_before(double score_a, int a, double score_b, int b)
{
    if (score_a != score_b)
        return score_a > score_b;
    return a < b;
}

static int contains(const int *list, int n, int value)
{
    for (int i = 0; i < n; i++)
        if (list[i] == value)
            return 1;
    return 0;
}

/* Appends to `chosen` the best `want` blocks among 0..n_candidates-1 (by ranks_before) that are
 * not already in it. Repeated argmax is quadratic, but it is the rule written out literally. */
static int pick_top(const double *scores, int n_candidates, int want, int *chosen, int n_chosen)
{
    for (int round = 0; round < want; round++) {
        int best = -1;
        for (int j = 0; j < n_candidates; j++) {
            if (contains(chosen, n_chosen, j))
                continue;
            if (best < 0 || ranks_before(scores[j], j, scores[best], best))
                best = j;
        }
        if (best < 0)
            break;
        chosen[n_chosen++] = best;
    }
    return n_chosen;
}

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Routing of one (query row, head). `scores` holds the gate score of each of the sequence's
 * n blocks; `chosen` has room for top_k entries. Returns how many blocks were chosen. */
static int route_one(const moba_ref_cfg *cfg, const double *scores, int n, int t, int *chosen)
{
    if (!cfg->causal)
        return pick_top(scores, n, cfg->top_k, chosen, 0);
    if (t < 0)
        return 0;
    /* The own block is forced in and uses one of the k slots; the blocks before it are exactly
     * those with (j + 1) * B <= t, so they are the candidates for the rest. */
    int own = t / cfg->block_size;
    chosen[0] = own;
    return pick_top(scores, own, cfg->top_k - 1, chosen, 1);
}

void moba_ref_route(const moba_ref_cfg *cfg, const double *q, const double *centroid, int *sel)
{
    int top_k = cfg->top_k;
    for (int b = 0; b < cfg->batch; b++) {
        int len_q = seqlen_q(cfg, b), len_k = seqlen_k(cfg, b);
        int n = num_blocks(cfg, len_k);
        /* n = ceil(L_k / B) and top_k are small (thousands at most), so these fit the stack. */
        double scores[n > 0 ? n : 1];
        int chosen[top_k];
        for (int r = 0; r < len_q; r++) {
            int row = cfg->cu_seqlens_q[b] + r;
            for (int h = 0; h < cfg->hq; h++) {
                for (int j = 0; j < n; j++)
                    scores[j] = moba_ref_gate_score(cfg, q, centroid, row, h, j);
                int count = route_one(cfg, scores, n, key_position(r, len_q, len_k), chosen);
                qsort(chosen, (size_t)count, sizeof chosen[0], compare_ints);
                int *out = sel + ((size_t)row * cfg->hq + h) * top_k;
                for (int i = 0; i < top_k; i++)
                    out[i] = i < count ? chosen[i] : -1;
            }
        }
    }
}

/* ---- 3. attention -------------------------------------------------------------------------- */

/* Whether key `key_pos` (within the sequence) is visible to a query at key position t whose
 * selection is `blocks` (top_k entries, -1 padded). */
static int key_visible(const moba_ref_cfg *cfg, const int *blocks, int key_pos, int t)
{
    if (cfg->causal && key_pos > t)
        return 0;
    return contains(blocks, cfg->top_k, key_pos / cfg->block_size);
}

/* Scaled score of query (row, h) against key row `key_row`. */
static double attention_score(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                              int row, int h, int key_row)
{
    const double *kv = kprime + kv_offset(cfg, key_row, kv_head_of(cfg, h));
    return cfg->scale * moba_ref_dot(q_row(cfg, q, row, h), kv, cfg->d);
}

/* One (query row, head). Two passes, the max first so that exp never overflows; scores are
 * recomputed rather than stored so that long sequences need no buffer. */
static void attend_one(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                       const double *v, const int *blocks, int k_start, int len_k, int t, int row,
                       int h, double *o_row, double *lse_out)
{
    int hk = kv_head_of(cfg, h), d = cfg->d;
    double max_score = -INFINITY;
    for (int p = 0; p < len_k; p++)
        if (key_visible(cfg, blocks, p, t))
            max_score = fmax(max_score, attention_score(cfg, q, kprime, row, h, k_start + p));
    for (int c = 0; c < d; c++)
        o_row[c] = 0.0;
    if (max_score == -INFINITY) {
        *lse_out = -INFINITY;
        return;
    }
    double sum = 0.0;
    for (int p = 0; p < len_k; p++) {
        if (!key_visible(cfg, blocks, p, t))
            continue;
        double weight = exp(attention_score(cfg, q, kprime, row, h, k_start + p) - max_score);
        const double *vv = v + kv_offset(cfg, k_start + p, hk);
        sum += weight;
        for (int c = 0; c < d; c++)
            o_row[c] += weight * vv[c];
    }
    for (int c = 0; c < d; c++)
        o_row[c] /= sum;
    *lse_out = max_score + log(sum);
}

void moba_ref_attention(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                        const double *v, const int *sel, double *o, double *lse)
{
    for (int b = 0; b < cfg->batch; b++) {
        int len_q = seqlen_q(cfg, b), len_k = seqlen_k(cfg, b);
        int k_start = cfg->cu_seqlens_k[b];
        for (int r = 0; r < len_q; r++) {
            int row = cfg->cu_seqlens_q[b] + r;
            int t = key_position(r, len_q, len_k);
            for (int h = 0; h < cfg->hq; h++) {
                size_t at = (size_t)row * cfg->hq + h;
                attend_one(cfg, q, kprime, v, sel + at * cfg->top_k, k_start, len_k, t, row, h,
                           o + at * cfg->d, lse + at);
            }
        }
    }
}

/* ---- the whole forward --------------------------------------------------------------------- */

int moba_ref_forward(const moba_ref_cfg *cfg, const double *q, const double *k, const double *v,
                     const double *conv_w, double *o, double *lse, int *sel)
{
    if (moba_ref_check_cfg(cfg) != 0 || (cfg->conv_width > 0 && !conv_w))
        return -1;
    size_t total_q = (size_t)cfg->cu_seqlens_q[cfg->batch];
    size_t total_k = (size_t)cfg->cu_seqlens_k[cfg->batch];
    size_t n_centroid = (size_t)cfg->batch * moba_ref_max_blocks(cfg) * cfg->hkv * cfg->d;
    /* +1 so that empty batches still get a pointer that free() and the loops accept. */
    double *kprime = malloc((total_k * cfg->hkv * cfg->d + 1) * sizeof *kprime);
    double *centroid = calloc(n_centroid + 1, sizeof *centroid);
    int *own_sel = sel ? NULL : malloc((total_q * cfg->hq * cfg->top_k + 1) * sizeof *own_sel);
    int rc = -1;
    if (!kprime || !centroid || (!sel && !own_sel))
        goto out;
    moba_ref_kconv(cfg, k, conv_w, kprime);
    moba_ref_centroids(cfg, kprime, centroid);
    moba_ref_route(cfg, q, centroid, sel ? sel : own_sel);
    moba_ref_attention(cfg, q, kprime, v, sel ? sel : own_sel, o, lse);
    rc = 0;
out:
    free(kprime);
    free(centroid);
    free(own_sel);
    return rc;
}
