/* Checks the C reference (tests/ref/moba_ref.c) against independent, naive re-derivations of
 * ../shared/moba.md: a dense masked softmax for attention, a sort for routing, a zero-padded
 * convolution for the key conv, and hand-built cases whose answers are known.
 * Random inputs come from splitmix64; MOBAGEN_TEST_SEED changes the base seed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref/moba_ref.h"
#include "util/rng.h"

#define MAX_BATCH 8
#define TOL 1e-12

/* ---- random numbers ------------------------------------------------------------------------ */

static uint64_t base_seed = 0x6d6f6261u; /* "moba" */

static rng rng_new(uint64_t salt) { return rng_seeded(base_seed, salt); }

static void fill_uniform(rng *r, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rng_signed(r);
}

/* Small integers in {-2..2}: many blocks get exactly equal centroids or gate scores, so the tie
 * rule gets exercised by random data, not only by the hand-built case. */
static void fill_small_integers(rng *r, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (double)(int)(rng_next(r) % 5) - 2.0;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

/* ---- a random problem ---------------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    int batch;
    int len_q[MAX_BATCH], len_k[MAX_BATCH];
    int hq, hkv, d, block_size, top_k, causal, conv_width;
} shape;

typedef struct problem {
    moba_ref_cfg cfg;
    int cu_q[MAX_BATCH + 1], cu_k[MAX_BATCH + 1];
    int total_q, total_k, max_blocks;
    double *q, *k, *v, *conv_w;
} problem;

static size_t q_count(const problem *p) { return (size_t)p->total_q * p->cfg.hq * p->cfg.d; }
static size_t kv_count(const problem *p) { return (size_t)p->total_k * p->cfg.hkv * p->cfg.d; }
static size_t sel_count(const problem *p) { return (size_t)p->total_q * p->cfg.hq * p->cfg.top_k; }
static size_t row_count(const problem *p) { return (size_t)p->total_q * p->cfg.hq; }
static size_t centroid_count(const problem *p)
{
    return (size_t)p->cfg.batch * p->max_blocks * p->cfg.hkv * p->cfg.d;
}

static void problem_init(problem *p, const shape *s, uint64_t salt)
{
    memset(p, 0, sizeof *p);
    for (int b = 0; b < s->batch; b++) {
        p->cu_q[b + 1] = p->cu_q[b] + s->len_q[b];
        p->cu_k[b + 1] = p->cu_k[b] + s->len_k[b];
    }
    p->total_q = p->cu_q[s->batch];
    p->total_k = p->cu_k[s->batch];
    p->cfg = (moba_ref_cfg){
        .batch = s->batch, .cu_seqlens_q = p->cu_q, .cu_seqlens_k = p->cu_k,
        .hq = s->hq, .hkv = s->hkv, .d = s->d, .block_size = s->block_size, .top_k = s->top_k,
        .causal = s->causal, .conv_width = s->conv_width, .scale = 1.0 / sqrt((double)s->d),
    };
    assert_int_equal(moba_ref_check_cfg(&p->cfg), 0);
    p->max_blocks = moba_ref_max_blocks(&p->cfg);

    rng r = rng_new(salt);
    p->q = xcalloc(q_count(p), sizeof(double));
    p->k = xcalloc(kv_count(p), sizeof(double));
    p->v = xcalloc(kv_count(p), sizeof(double));
    p->conv_w = xcalloc((size_t)s->hkv * s->conv_width * s->d, sizeof(double));
    fill_uniform(&r, p->q, q_count(p));
    fill_uniform(&r, p->k, kv_count(p));
    fill_uniform(&r, p->v, kv_count(p));
    fill_uniform(&r, p->conv_w, (size_t)s->hkv * s->conv_width * s->d);
}

static void problem_free(problem *p)
{
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->conv_w);
}

/* ---- comparisons --------------------------------------------------------------------------- */

static void expect_close(double got, double want, const char *what, int row, int h, int c)
{
    if (isinf(want) || isinf(got)) {
        if (got == want)
            return;
    } else if (fabs(got - want) <= TOL * fmax(1.0, fabs(want))) {
        return;
    }
    fail_msg("%s row %d head %d [%d]: got %.17g want %.17g", what, row, h, c, got, want);
}

/* cmocka 1.1.5 has no assert_double_equal. */
#define assert_near(got, want, tol) check_near((got), (want), (tol), #got, __LINE__)

static void check_near(double got, double want, double tol, const char *expr, int line)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("line %d: %s = %.17g, want %.17g", line, expr, got, want);
}

/* ---- naive re-derivations of moba.md ------------------------------------------------------- */

static double silu(double x) { return x / (1.0 + exp(-x)); }

static int kv_head(const moba_ref_cfg *cfg, int h) { return h / (cfg->hq / cfg->hkv); }

/* Key conv as a textbook convolution: each sequence's keys are copied after W - 1 zeros, then
 * out[t] = sum_l w_l * padded[t + W - 1 - l]. */
static void naive_kconv(const problem *p, const double *k, double *kprime)
{
    const moba_ref_cfg *cfg = &p->cfg;
    int W = cfg->conv_width, d = cfg->d, hkv = cfg->hkv;
    memcpy(kprime, k, kv_count(p) * sizeof(double));
    if (W == 0)
        return;
    for (int b = 0; b < cfg->batch; b++) {
        int start = p->cu_k[b], len = p->cu_k[b + 1] - start;
        double *padded = xcalloc((size_t)(len + W - 1), sizeof(double));
        for (int hk = 0; hk < hkv; hk++)
            for (int c = 0; c < d; c++) {
                for (int t = 0; t < len; t++)
                    padded[W - 1 + t] = k[((size_t)(start + t) * hkv + hk) * d + c];
                for (int t = 0; t < len; t++) {
                    double acc = 0.0;
                    for (int l = 0; l < W; l++)
                        acc += p->conv_w[((size_t)hk * W + l) * d + c] * padded[t + W - 1 - l];
                    kprime[((size_t)(start + t) * hkv + hk) * d + c] += silu(acc);
                }
            }
        free(padded);
    }
}

/* Centroid of block j of sequence b for kv head hk, into out[d]. */
static void naive_centroid(const problem *p, const double *kprime, int b, int j, int hk, double *out)
{
    const moba_ref_cfg *cfg = &p->cfg;
    int len = p->cu_k[b + 1] - p->cu_k[b], B = cfg->block_size;
    int first = j * B, last = first + B < len ? first + B : len;
    for (int c = 0; c < cfg->d; c++) {
        double sum = 0.0;
        for (int pos = first; pos < last; pos++)
            sum += kprime[((size_t)(p->cu_k[b] + pos) * cfg->hkv + hk) * cfg->d + c];
        out[c] = sum / (last - first);
    }
}

typedef struct scored_block {
    double score;
    int block;
} scored_block;

static int by_score_then_index(const void *a, const void *b)
{
    const scored_block *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->block > y->block) - (x->block < y->block);
}

static int ascending(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Expected sel row for one query: sort the allowed candidates by (score desc, index asc), take
 * what fits, add the own block in causal mode, sort ascending, pad with -1. */
static void expected_selection(const moba_ref_cfg *cfg, const double *scores, int n, int t, int *out)
{
    int k = cfg->top_k, count = 0;
    int chosen[64];
    scored_block candidates[256];
    assert_true(k <= 64 && n <= 256);
    int n_candidates = 0, slots = k;
    if (cfg->causal) {
        if (t >= 0) {
            chosen[count++] = t / cfg->block_size;
            slots--;
            for (int j = 0; j < n; j++)
                if ((j + 1) * cfg->block_size <= t)
                    candidates[n_candidates++] = (scored_block){ scores[j], j };
        }
    } else {
        for (int j = 0; j < n; j++)
            candidates[n_candidates++] = (scored_block){ scores[j], j };
    }
    qsort(candidates, (size_t)n_candidates, sizeof candidates[0], by_score_then_index);
    for (int i = 0; i < n_candidates && i < slots; i++)
        chosen[count++] = candidates[i].block;
    qsort(chosen, (size_t)count, sizeof chosen[0], ascending);
    for (int i = 0; i < k; i++)
        out[i] = i < count ? chosen[i] : -1;
}

/* Checks sel against a from-scratch routing of kprime: naive centroids and gate scores. */
static void check_routing_bruteforce(const problem *p, const double *kprime, const double *centroid,
                                     const int *sel)
{
    const moba_ref_cfg *cfg = &p->cfg;
    double c[64], scores[256];
    int expected[64];
    assert_true(cfg->d <= 64);
    for (int b = 0; b < cfg->batch; b++) {
        int len_q = p->cu_q[b + 1] - p->cu_q[b], len_k = p->cu_k[b + 1] - p->cu_k[b];
        int n = (len_k + cfg->block_size - 1) / cfg->block_size;
        assert_true(n <= 256);
        for (int r = 0; r < len_q; r++) {
            int row = p->cu_q[b] + r;
            for (int h = 0; h < cfg->hq; h++) {
                const double *qv = p->q + ((size_t)row * cfg->hq + h) * cfg->d;
                for (int j = 0; j < n; j++) {
                    naive_centroid(p, kprime, b, j, kv_head(cfg, h), c);
                    scores[j] = 0.0;
                    for (int i = 0; i < cfg->d; i++)
                        scores[j] += qv[i] * c[i];
                    if (centroid)
                        expect_close(moba_ref_gate_score(cfg, p->q, centroid, row, h, j), scores[j],
                                     "gate score", row, h, j);
                }
                expected_selection(cfg, scores, n, r + len_k - len_q, expected);
                const int *got = sel + ((size_t)row * cfg->hq + h) * cfg->top_k;
                for (int i = 0; i < cfg->top_k; i++)
                    if (got[i] != expected[i])
                        fail_msg("sel row %d head %d slot %d: got %d want %d", row, h, i, got[i],
                                 expected[i]);
            }
        }
    }
}

typedef struct dense_stats {
    int hidden_keys;   /* keys that dense (causal) attention would see but the routing hides */
    int empty_rows;    /* rows with no visible key */
} dense_stats;

/* Dense attention of one (sequence, head): the full [L_q x L_k] score matrix, a mask built
 * from sel, then a masked softmax row by row. Compares o and lse, and counts rows. */
static void check_dense_head(const problem *p, const double *kprime, const int *sel, const double *o,
                             const double *lse, int b, int h, dense_stats *stats)
{
    const moba_ref_cfg *cfg = &p->cfg;
    int d = cfg->d, hk = kv_head(cfg, h);
    int len_q = p->cu_q[b + 1] - p->cu_q[b], len_k = p->cu_k[b + 1] - p->cu_k[b];
    double *score = xcalloc((size_t)len_q * len_k, sizeof(double));
    char *allowed = xcalloc((size_t)len_q * len_k, 1);
    for (int r = 0; r < len_q; r++) {
        int row = p->cu_q[b] + r, t = r + len_k - len_q;
        const int *blocks = sel + ((size_t)row * cfg->hq + h) * cfg->top_k;
        for (int key = 0; key < len_k; key++) {
            const double *qv = p->q + ((size_t)row * cfg->hq + h) * d;
            const double *kv = kprime + ((size_t)(p->cu_k[b] + key) * cfg->hkv + hk) * d;
            double s = 0.0;
            for (int c = 0; c < d; c++)
                s += qv[c] * kv[c];
            score[(size_t)r * len_k + key] = cfg->scale * s;
            int selected = 0;
            for (int i = 0; i < cfg->top_k; i++)
                selected |= blocks[i] == key / cfg->block_size;
            int causal_ok = !cfg->causal || key <= t;
            allowed[(size_t)r * len_k + key] = (char)(selected && causal_ok);
            if (causal_ok && !selected)
                stats->hidden_keys++;
        }
    }
    for (int r = 0; r < len_q; r++) {
        int row = p->cu_q[b] + r;
        const double *srow = score + (size_t)r * len_k;
        const char *arow = allowed + (size_t)r * len_k;
        double m = -INFINITY, sum = 0.0, want_lse, want_o[64] = { 0 };
        for (int key = 0; key < len_k; key++)
            if (arow[key] && srow[key] > m)
                m = srow[key];
        if (m == -INFINITY) {
            want_lse = -INFINITY;
            stats->empty_rows++;
        } else {
            for (int key = 0; key < len_k; key++)
                if (arow[key])
                    sum += exp(srow[key] - m);
            want_lse = m + log(sum);
            for (int key = 0; key < len_k; key++) {
                if (!arow[key])
                    continue;
                double prob = exp(srow[key] - want_lse);
                const double *vv = p->v + ((size_t)(p->cu_k[b] + key) * cfg->hkv + hk) * d;
                for (int c = 0; c < d; c++)
                    want_o[c] += prob * vv[c];
            }
        }
        size_t at = (size_t)row * cfg->hq + h;
        expect_close(lse[at], want_lse, "lse", row, h, 0);
        for (int c = 0; c < d; c++)
            expect_close(o[at * d + c], want_o[c], "o", row, h, c);
    }
    free(score);
    free(allowed);
}

static dense_stats check_dense(const problem *p, const double *kprime, const int *sel, const double *o,
                               const double *lse)
{
    dense_stats stats = { 0, 0 };
    assert_true(p->cfg.d <= 64);
    for (int b = 0; b < p->cfg.batch; b++)
        for (int h = 0; h < p->cfg.hq; h++)
            check_dense_head(p, kprime, sel, o, lse, b, h, &stats);
    return stats;
}

/* ---- shapes used by the brute-force tests -------------------------------------------------- */

/* Varlen batch: a normal sequence with a partial last block, an empty one, one shorter than a
 * block, L_q < L_k, L_q > L_k (rows with t < 0 in causal mode), queries without keys, keys
 * without queries. */
#define VARLEN_BATCH 8, { 13, 0, 3, 5, 19, 4, 0, 22 }, { 13, 0, 3, 17, 7, 0, 6, 22 }

static const shape shapes[] = {
    { "causal gqa varlen kconv3", VARLEN_BATCH, 4, 2, 8, 4, 2, 1, 3 },
    { "noncausal gqa varlen", VARLEN_BATCH, 4, 2, 8, 4, 2, 0, 0 },
    { "causal long kconv0", 3, { 100, 37, 70 }, { 100, 60, 45 }, 2, 1, 16, 8, 3, 1, 0 },
    { "noncausal mqa kconv3", 2, { 30, 9 }, { 47, 2 }, 4, 1, 12, 5, 3, 0, 3 },
    { "causal top1 kconv5", 2, { 24, 11 }, { 24, 29 }, 2, 2, 8, 4, 1, 1, 5 },
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

/* ---- brute-force tests --------------------------------------------------------------------- */

/* Queries without keys, or (causal) more queries than keys, leave some rows with t < 0. */
static int has_rows_without_visible_keys(const shape *s)
{
    for (int b = 0; b < s->batch; b++)
        if (s->len_q[b] > 0 && (s->len_k[b] == 0 || (s->causal && s->len_q[b] > s->len_k[b])))
            return 1;
    return 0;
}

/* moba_ref_forward end to end: its sel must equal a from-scratch routing of a naively convolved
 * k, and its o and lse a dense masked softmax over that same k'. */
static void test_forward_matches_dense_masked_softmax(void **state)
{
    (void)state;
    for (size_t s = 0; s < N_SHAPES; s++) {
        problem p;
        problem_init(&p, &shapes[s], 100 + s);
        double *o = xcalloc(q_count(&p), sizeof(double));
        double *lse = xcalloc(row_count(&p), sizeof(double));
        int *sel = xcalloc(sel_count(&p), sizeof(int));
        double *kprime = xcalloc(kv_count(&p), sizeof(double));
        assert_int_equal(moba_ref_forward(&p.cfg, p.q, p.k, p.v, p.conv_w, o, lse, sel), 0);
        naive_kconv(&p, p.k, kprime);
        check_routing_bruteforce(&p, kprime, NULL, sel);
        dense_stats stats = check_dense(&p, kprime, sel, o, lse);
        /* Without hidden keys the test could not tell MoBA from dense attention. */
        assert_true(stats.hidden_keys > 0);
        if (has_rows_without_visible_keys(&shapes[s]))
            assert_true(stats.empty_rows > 0);
        free(o);
        free(lse);
        free(sel);
        free(kprime);
        problem_free(&p);
    }
}

/* Random valid selections, not produced by routing: exercises masks routing never makes, such as
 * a causal row whose only selected blocks lie after t (it must come out empty). */
static void random_selection(rng *r, const problem *p, int *sel)
{
    const moba_ref_cfg *cfg = &p->cfg;
    for (int b = 0; b < cfg->batch; b++) {
        int len_k = p->cu_k[b + 1] - p->cu_k[b];
        int n = (len_k + cfg->block_size - 1) / cfg->block_size;
        for (int row = p->cu_q[b]; row < p->cu_q[b + 1]; row++)
            for (int h = 0; h < cfg->hq; h++) {
                int *out = sel + ((size_t)row * cfg->hq + h) * cfg->top_k, count = 0;
                /* Walk the blocks in order and keep each with probability 1/2: ascending, unique. */
                for (int j = 0; j < n && count < cfg->top_k; j++)
                    if (rng_next(r) & 1)
                        out[count++] = j;
                for (int i = count; i < cfg->top_k; i++)
                    out[i] = -1;
            }
    }
}

static void test_attention_matches_dense_on_random_selections(void **state)
{
    (void)state;
    for (size_t s = 0; s < N_SHAPES; s++) {
        problem p;
        problem_init(&p, &shapes[s], 200 + s);
        rng r = rng_new(300 + s);
        double *o = xcalloc(q_count(&p), sizeof(double));
        double *lse = xcalloc(row_count(&p), sizeof(double));
        int *sel = xcalloc(sel_count(&p), sizeof(int));
        random_selection(&r, &p, sel);
        moba_ref_attention(&p.cfg, p.q, p.k, p.v, sel, o, lse);
        dense_stats stats = check_dense(&p, p.k, sel, o, lse);
        assert_true(stats.hidden_keys > 0);
        free(o);
        free(lse);
        free(sel);
        problem_free(&p);
    }
}

/* moba_ref_route on random k: sel must be exactly the top set by (score desc, index asc). Run on
 * uniform data and on small integers, where exact ties are common. */
static void test_route_matches_bruteforce(void **state)
{
    (void)state;
    for (int integer_data = 0; integer_data <= 1; integer_data++)
        for (size_t s = 0; s < N_SHAPES; s++)
            for (int causal = 0; causal <= 1; causal++) {
                shape sh = shapes[s];
                sh.causal = causal;
                sh.top_k = 3;
                if (integer_data)
                    sh.block_size = 4; /* means over 4 (or partial 1..3) integer keys */
                problem p;
                problem_init(&p, &sh, 400 + 10 * s + causal + 100 * integer_data);
                if (integer_data) {
                    rng r = rng_new(500 + s);
                    fill_small_integers(&r, p.q, q_count(&p));
                    fill_small_integers(&r, p.k, kv_count(&p));
                }
                double *centroid = xcalloc(centroid_count(&p), sizeof(double));
                int *sel = xcalloc(sel_count(&p), sizeof(int));
                moba_ref_centroids(&p.cfg, p.k, centroid);
                moba_ref_route(&p.cfg, p.q, centroid, sel);
                check_routing_bruteforce(&p, p.k, centroid, sel);
                free(centroid);
                free(sel);
                problem_free(&p);
            }
}

static void test_forward_without_sel_gives_same_output(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[0], 600);
    double *o1 = xcalloc(q_count(&p), sizeof(double)), *o2 = xcalloc(q_count(&p), sizeof(double));
    double *l1 = xcalloc(row_count(&p), sizeof(double)), *l2 = xcalloc(row_count(&p), sizeof(double));
    int *sel = xcalloc(sel_count(&p), sizeof(int));
    assert_int_equal(moba_ref_forward(&p.cfg, p.q, p.k, p.v, p.conv_w, o1, l1, sel), 0);
    assert_int_equal(moba_ref_forward(&p.cfg, p.q, p.k, p.v, p.conv_w, o2, l2, NULL), 0);
    assert_memory_equal(o1, o2, q_count(&p) * sizeof(double));
    assert_memory_equal(l1, l2, row_count(&p) * sizeof(double));
    free(o1);
    free(o2);
    free(l1);
    free(l2);
    free(sel);
    problem_free(&p);
}

/* ---- routing rules on hand-built inputs ---------------------------------------------------- */

/* One sequence, one head, d = 1, q = 1: block j's gate score is exactly block_scores[j], so the
 * centroid buffer is the score list itself. */
static void route_by_scores(int causal, int len_q, int len_k, int block_size, int top_k,
                            const double *block_scores, int *sel)
{
    int cu_q[2] = { 0, len_q }, cu_k[2] = { 0, len_k };
    moba_ref_cfg cfg = { .batch = 1, .cu_seqlens_q = cu_q, .cu_seqlens_k = cu_k, .hq = 1, .hkv = 1,
                         .d = 1, .block_size = block_size, .top_k = top_k, .causal = causal,
                         .scale = 1.0 };
    assert_int_equal(moba_ref_check_cfg(&cfg), 0);
    double *q = xcalloc((size_t)len_q, sizeof(double));
    for (int r = 0; r < len_q; r++)
        q[r] = 1.0;
    moba_ref_route(&cfg, q, block_scores, sel);
    free(q);
}

/* Checks sel row `row` against the expected list (top_k entries). */
static void expect_sel(const int *sel, int row, int top_k, ...)
{
    va_list ap;
    va_start(ap, top_k);
    for (int i = 0; i < top_k; i++) {
        int want = va_arg(ap, int);
        if (sel[row * top_k + i] != want) {
            va_end(ap);
            fail_msg("row %d slot %d: got %d want %d", row, i, sel[row * top_k + i], want);
        }
    }
    va_end(ap);
}

static void test_route_own_block_selected_even_with_lowest_score(void **state)
{
    (void)state;
    const double scores[4] = { 5, 7, 6, -100 };
    int sel[16 * 2];
    route_by_scores(1, 16, 16, 4, 2, scores, sel);
    expect_sel(sel, 13, 2, 1, 3);  /* own block 3 (lowest) plus the best earlier one */
    expect_sel(sel, 12, 2, 1, 3);  /* first key of block 3: t = 12 still owns block 3 */
    expect_sel(sel, 3, 2, 0, -1);  /* inside block 0: no earlier block exists */
}

static void test_route_partial_and_later_blocks_not_candidates(void **state)
{
    (void)state;
    /* Later blocks score highest: a rule that let them compete would pick them. */
    const double scores[4] = { 1, 2, 100, 100 };
    int sel[16 * 3];
    route_by_scores(1, 16, 16, 4, 3, scores, sel);
    expect_sel(sel, 5, 3, 0, 1, -1);  /* own block 1 is only partly visible; block 0 only */
    expect_sel(sel, 8, 3, 0, 1, 2);   /* t = 8 = 2B: blocks 0 and 1 are whole before t */
    expect_sel(sel, 7, 3, 0, 1, -1);  /* t = 7: block 1 ends at 8 > 7, it is the own block */
    for (int row = 0; row < 12; row++)
        for (int i = 0; i < 3; i++)
            assert_true(sel[row * 3 + i] <= row / 4);
}

static void test_route_ties_go_to_lower_index(void **state)
{
    (void)state;
    const double equal[5] = { 2, 2, 2, 2, 2 };  /* identical centroids */
    int sel[20 * 3];
    route_by_scores(1, 20, 20, 4, 3, equal, sel);
    expect_sel(sel, 19, 3, 0, 1, 4);
    route_by_scores(0, 20, 20, 4, 3, equal, sel);
    expect_sel(sel, 0, 3, 0, 1, 2);
    /* A higher score still beats a lower index; among the equal pair the lower index wins. */
    const double mixed[5] = { 1, 2, 2, 2, 0 };
    route_by_scores(0, 20, 20, 4, 2, mixed, sel);
    expect_sel(sel, 7, 2, 1, 2);
}

static void test_route_pads_when_fewer_candidates_than_k(void **state)
{
    (void)state;
    const double scores[4] = { 3, 1, 4, 1 };
    int sel[16 * 4];
    route_by_scores(1, 16, 16, 4, 4, scores, sel);
    expect_sel(sel, 5, 4, 0, 1, -1, -1);
    expect_sel(sel, 0, 4, 0, -1, -1, -1);
    route_by_scores(0, 8, 8, 4, 4, scores, sel);  /* non-causal, n = 2 */
    expect_sel(sel, 3, 4, 0, 1, -1, -1);
}

static void test_route_negative_t_selects_nothing(void **state)
{
    (void)state;
    const double scores[1] = { 1 };
    int sel[6 * 2];
    route_by_scores(1, 6, 4, 4, 2, scores, sel);  /* row r sits at t = r - 2 */
    expect_sel(sel, 0, 2, -1, -1);
    expect_sel(sel, 1, 2, -1, -1);
    expect_sel(sel, 2, 2, 0, -1);
    expect_sel(sel, 5, 2, 0, -1);
}

static void test_route_noncausal_includes_partial_last_block(void **state)
{
    (void)state;
    const double scores[3] = { 1, 2, 3 };  /* block 2 holds keys 8, 9 only */
    int sel[4 * 1];
    route_by_scores(0, 4, 10, 4, 1, scores, sel);
    for (int row = 0; row < 4; row++)
        expect_sel(sel, row, 1, 2);
}

static void test_route_output_ascending(void **state)
{
    (void)state;
    const double scores[5] = { 1, 4, 3, 5, 2 };  /* best three in score order: 3, 1, 2 */
    int sel[2 * 3];
    route_by_scores(0, 2, 20, 4, 3, scores, sel);
    expect_sel(sel, 0, 3, 1, 2, 3);
    route_by_scores(1, 2, 20, 4, 3, scores, sel);  /* t = 19: own block 4, then 3 and 1 */
    expect_sel(sel, 1, 3, 1, 3, 4);
}

static void test_route_gqa_uses_kv_head_centroids(void **state)
{
    (void)state;
    int cu_q[2] = { 0, 1 }, cu_k[2] = { 0, 12 };
    moba_ref_cfg cfg = { .batch = 1, .cu_seqlens_q = cu_q, .cu_seqlens_k = cu_k, .hq = 4, .hkv = 2,
                         .d = 1, .block_size = 4, .top_k = 1, .causal = 0, .scale = 1.0 };
    /* [block][kv head]: kv head 0 prefers block 1, kv head 1 prefers block 0. */
    const double centroid[3 * 2] = { 1, 3, 3, 1, 2, 2 };
    const double q[4] = { 1, 1, 1, 1 };
    int sel[4];
    moba_ref_route(&cfg, q, centroid, sel);
    assert_int_equal(sel[0], 1);
    assert_int_equal(sel[1], 1);
    assert_int_equal(sel[2], 0);
    assert_int_equal(sel[3], 0);
}

/* ---- key convolution ----------------------------------------------------------------------- */

static void test_kconv_hand_computed(void **state)
{
    (void)state;
    int cu[2] = { 0, 3 };
    moba_ref_cfg cfg = { .batch = 1, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = 1, .hkv = 1,
                         .d = 1, .block_size = 4, .top_k = 1, .causal = 1, .conv_width = 2,
                         .scale = 1.0 };
    const double k[3] = { 1, 2, 3 }, w[2] = { 0.5, 0.25 };  /* w_0 on k_t, w_1 on k_{t-1} */
    double kprime[3];
    moba_ref_kconv(&cfg, k, w, kprime);
    assert_near(kprime[0], 1 + silu(0.5), 1e-15);
    assert_near(kprime[1], 2 + silu(1.0 + 0.25), 1e-15);
    assert_near(kprime[2], 3 + silu(1.5 + 0.5), 1e-15);
}

static void test_kconv_matches_padded_convolution(void **state)
{
    (void)state;
    for (int W = 1; W <= 5; W += 2) {
        /* W = 5 is longer than the 1- and 3-key sequences. */
        shape s = { "kconv", 4, { 1, 1, 1, 1 }, { 5, 0, 1, 7 }, 2, 2, 4, 4, 1, 1, W };
        problem p;
        problem_init(&p, &s, 700 + W);
        double *got = xcalloc(kv_count(&p), sizeof(double)), *want = xcalloc(kv_count(&p), sizeof(double));
        moba_ref_kconv(&p.cfg, p.k, p.conv_w, got);
        naive_kconv(&p, p.k, want);
        for (size_t i = 0; i < kv_count(&p); i++)
            expect_close(got[i], want[i], "k'", (int)(i / (2 * 4)), (int)(i / 4 % 2), (int)(i % 4));
        free(got);
        free(want);
        problem_free(&p);
    }
}

static void test_kconv_stays_inside_sequence(void **state)
{
    (void)state;
    shape s = { "kconv boundary", 2, { 6, 6 }, { 6, 6 }, 2, 2, 4, 4, 1, 1, 3 };
    problem p;
    problem_init(&p, &s, 800);
    size_t n = kv_count(&p), half = n / 2;
    double *before = xcalloc(n, sizeof(double)), *after = xcalloc(n, sizeof(double));
    moba_ref_kconv(&p.cfg, p.k, p.conv_w, before);
    rng r = rng_new(801);
    for (size_t i = 0; i < half; i++)
        p.k[i] += 1.0 + rng_signed(&r);  /* only sequence 0's keys */
    moba_ref_kconv(&p.cfg, p.k, p.conv_w, after);
    assert_memory_equal(before + half, after + half, half * sizeof(double));
    assert_memory_not_equal(before, after, half * sizeof(double));
    free(before);
    free(after);
    problem_free(&p);
}

static void test_kconv_width_zero_copies(void **state)
{
    (void)state;
    shape s = { "kconv0", 2, { 3, 4 }, { 5, 9 }, 2, 1, 8, 4, 1, 1, 0 };
    problem p;
    problem_init(&p, &s, 900);
    double *kprime = xcalloc(kv_count(&p), sizeof(double));
    moba_ref_kconv(&p.cfg, p.k, NULL, kprime);
    assert_memory_equal(kprime, p.k, kv_count(&p) * sizeof(double));
    free(kprime);
    problem_free(&p);
}

/* ---- centroids ----------------------------------------------------------------------------- */

static void test_centroids_partial_block_over_real_keys(void **state)
{
    (void)state;
    int cu[3] = { 0, 6, 8 };  /* sequence 0: blocks of 4 and 2 keys; sequence 1: one block of 2 */
    moba_ref_cfg cfg = { .batch = 2, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = 1, .hkv = 1,
                         .d = 2, .block_size = 4, .top_k = 1, .causal = 1, .scale = 1.0 };
    const double k[8 * 2] = { 1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 7, 70, -1, 8, -3, 4 };
    double centroid[2 * 2 * 2];
    const double untouched = 12345.0;
    for (int i = 0; i < 8; i++)
        centroid[i] = untouched;
    assert_int_equal(moba_ref_max_blocks(&cfg), 2);
    moba_ref_centroids(&cfg, k, centroid);
    assert_near(centroid[0], 2.5, 1e-15);
    assert_near(centroid[1], 25.0, 1e-15);
    assert_near(centroid[2], 6.0, 1e-15);   /* (5 + 7) / 2, not / 4 */
    assert_near(centroid[3], 60.0, 1e-15);
    assert_near(centroid[4], -2.0, 1e-15);
    assert_near(centroid[5], 6.0, 1e-15);
    assert_near(centroid[6], untouched, 0);  /* sequence 1 has no block 1 */
    assert_near(centroid[7], untouched, 0);
}

static void test_centroids_match_naive_means(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[3], 1000);
    double *centroid = xcalloc(centroid_count(&p), sizeof(double)), want[64];
    moba_ref_centroids(&p.cfg, p.k, centroid);
    for (int b = 0; b < p.cfg.batch; b++) {
        int n = (p.cu_k[b + 1] - p.cu_k[b] + p.cfg.block_size - 1) / p.cfg.block_size;
        for (int j = 0; j < n; j++)
            for (int hk = 0; hk < p.cfg.hkv; hk++) {
                naive_centroid(&p, p.k, b, j, hk, want);
                const double *got =
                    centroid + (((size_t)b * p.max_blocks + j) * p.cfg.hkv + hk) * p.cfg.d;
                for (int c = 0; c < p.cfg.d; c++)
                    expect_close(got[c], want[c], "centroid", j, hk, c);
            }
    }
    free(centroid);
    problem_free(&p);
}

/* ---- configuration ------------------------------------------------------------------------- */

static void test_check_cfg_rejects_bad_configs(void **state)
{
    (void)state;
    int cu[3] = { 0, 5, 9 }, decreasing[3] = { 0, 5, 3 }, bad_start[3] = { 1, 5, 9 };
    const moba_ref_cfg good = { .batch = 2, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = 4,
                                .hkv = 2, .d = 8, .block_size = 4, .top_k = 2, .causal = 1,
                                .conv_width = 3, .scale = 0.25 };
    assert_int_equal(moba_ref_check_cfg(&good), 0);
    assert_int_equal(moba_ref_max_blocks(&good), 2);

    moba_ref_cfg c;
#define EXPECT_REJECTED(field, value) \
    do { c = good; c.field = value; assert_int_equal(moba_ref_check_cfg(&c), -1); } while (0)
    EXPECT_REJECTED(hkv, 3);             /* 4 % 3 != 0 */
    EXPECT_REJECTED(hq, 3);              /* 3 % 2 != 0 */
    EXPECT_REJECTED(hkv, 8);             /* more kv heads than q heads */
    EXPECT_REJECTED(hq, 0);
    EXPECT_REJECTED(hkv, 0);
    EXPECT_REJECTED(d, 0);
    EXPECT_REJECTED(d, -8);
    EXPECT_REJECTED(top_k, 0);
    EXPECT_REJECTED(top_k, -1);
    EXPECT_REJECTED(block_size, 0);
    EXPECT_REJECTED(block_size, -4);
    EXPECT_REJECTED(batch, 0);
    EXPECT_REJECTED(conv_width, -1);
    EXPECT_REJECTED(cu_seqlens_q, decreasing);
    EXPECT_REJECTED(cu_seqlens_k, decreasing);
    EXPECT_REJECTED(cu_seqlens_k, bad_start);
    EXPECT_REJECTED(cu_seqlens_q, NULL);
#undef EXPECT_REJECTED
}

static void test_forward_rejects_bad_input(void **state)
{
    (void)state;
    int cu[2] = { 0, 4 };
    double q[4 * 2] = { 1, 2, 3, 4, 5, 6, 7, 8 }, o[4 * 2], lse[4];
    moba_ref_cfg cfg = { .batch = 1, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = 1, .hkv = 1,
                         .d = 2, .block_size = 2, .top_k = 1, .causal = 1, .conv_width = 2,
                         .scale = 1.0 };
    assert_int_equal(moba_ref_forward(&cfg, q, q, q, NULL, o, lse, NULL), -1);  /* no conv_w */
    cfg.conv_width = 0;
    cfg.hkv = 2;  /* hq % hkv != 0 */
    assert_int_equal(moba_ref_forward(&cfg, q, q, q, NULL, o, lse, NULL), -1);
    cfg.hkv = 1;
    assert_int_equal(moba_ref_forward(&cfg, q, q, q, NULL, o, lse, NULL), 0);
}

int main(void)
{
    const char *seed = getenv("MOBAGEN_TEST_SEED");
    if (seed && *seed)
        base_seed = strtoull(seed, NULL, 0);
    printf("test_ref: seed 0x%llx (set MOBAGEN_TEST_SEED to change)\n", (unsigned long long)base_seed);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_dense_masked_softmax),
        cmocka_unit_test(test_attention_matches_dense_on_random_selections),
        cmocka_unit_test(test_route_matches_bruteforce),
        cmocka_unit_test(test_forward_without_sel_gives_same_output),
        cmocka_unit_test(test_route_own_block_selected_even_with_lowest_score),
        cmocka_unit_test(test_route_partial_and_later_blocks_not_candidates),
        cmocka_unit_test(test_route_ties_go_to_lower_index),
        cmocka_unit_test(test_route_pads_when_fewer_candidates_than_k),
        cmocka_unit_test(test_route_negative_t_selects_nothing),
        cmocka_unit_test(test_route_noncausal_includes_partial_last_block),
        cmocka_unit_test(test_route_output_ascending),
        cmocka_unit_test(test_route_gqa_uses_kv_head_centroids),
        cmocka_unit_test(test_kconv_hand_computed),
        cmocka_unit_test(test_kconv_matches_padded_convolution),
        cmocka_unit_test(test_kconv_stays_inside_sequence),
        cmocka_unit_test(test_kconv_width_zero_copies),
        cmocka_unit_test(test_centroids_partial_block_over_real_keys),
        cmocka_unit_test(test_centroids_match_naive_means),
        cmocka_unit_test(test_check_cfg_rejects_bad_configs),
        cmocka_unit_test(test_forward_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
