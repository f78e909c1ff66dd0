/* Checks the decode reference (tests/ref/moba_ref_decode.c) against the forward reference: a
 * sequence of L tokens run through moba_ref_forward, or prefilled with L - n tokens into a paged
 * cache and then appended and decoded n tokens at a time (one by one, or in ragged chunks as
 * speculative decoding does), must select the same blocks and give the same o and LSE. Random
 * configurations: B from 16 to 512 sequences, GQA groups 1/2/4, key conv widths 0/3/5, top_k
 * beyond the block count, ragged and empty sequences, shuffled non-contiguous pages.
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
#include "ref/moba_ref_decode.h"
#include "util/rng.h"

#define TOL 1e-9

static uint64_t base_seed = 0x6465636fu; /* "deco" */

static rng rng_new(uint64_t salt) { return rng_seeded(base_seed, salt); }

static int pick(rng *r, int lo, int hi) /* inclusive */
{
    return lo + (int)(rng_next(r) % (uint64_t)(hi - lo + 1));
}


static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static double *random_doubles(rng *r, size_t n)
{
    double *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_signed(r);
    return x;
}

/* Unwritten cache memory reads as NaN, so a read of a slot the append never wrote shows. */
static double *nan_doubles(size_t n)
{
    double *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
    return x;
}

/* ---- a scenario: full sequences, their forward, and a paged cache to replay them into ------ */

typedef struct scenario {
    moba_ref_cfg cfg;            /* the forward over whole sequences */
    int batch, hq, hkv, d, W;
    int *len, *prefill, *cu;     /* per sequence: L, L - n, and cu_seqlens of the L's */
    double *q, *k, *v, *conv_w;  /* packed by cu */
    double *o, *lse, *kprime;    /* the forward's answers */
    int *sel;
    int *page_table;
    moba_ref_paged_cache cache;
    double *centroid_want;       /* scratch [d] */
} scenario;

static const int batches[] = { 16, 23, 64, 100, 257, 512 };

/* integers: keys and queries in {-2..2} and no conv, so that many centroids and gate scores are
 * exactly equal and the tie rule decides the selection. */
static void scenario_init(scenario *s, uint64_t salt, int batch, int integers)
{
    rng r = rng_new(salt);
    memset(s, 0, sizeof *s);
    static const int groups[] = { 1, 2, 4 }, widths[] = { 0, 3, 5 };
    s->batch = batch;
    s->hkv = pick(&r, 1, 2);
    s->hq = s->hkv * groups[pick(&r, 0, 2)];
    s->d = batch >= 200 ? 8 : pick(&r, 8, 32);
    s->W = integers ? 0 : widths[pick(&r, 0, 2)];
    int B = pick(&r, 2, 6), max_len = batch >= 200 ? 14 : 30;
    s->len = xmalloc((size_t)batch * sizeof(int));
    s->prefill = xmalloc((size_t)batch * sizeof(int));
    s->cu = xmalloc((size_t)(batch + 1) * sizeof(int));
    s->cu[0] = 0;
    int longest = 0;
    for (int b = 0; b < batch; b++) {
        /* Sequence 0 stays empty, sequence 1 is decoded from an empty cache. */
        s->len[b] = b == 0 ? 0 : pick(&r, 1, max_len);
        int decoded = pick(&r, 0, s->len[b] < 6 ? s->len[b] : 6);
        s->prefill[b] = b == 1 ? 0 : s->len[b] - decoded;
        s->cu[b + 1] = s->cu[b] + s->len[b];
        longest = s->len[b] > longest ? s->len[b] : longest;
    }
    int n_blocks = (longest + B - 1) / B;
    s->cfg = (moba_ref_cfg){
        .batch = batch, .cu_seqlens_q = s->cu, .cu_seqlens_k = s->cu, .hq = s->hq,
        .hkv = s->hkv, .d = s->d, .block_size = B, .top_k = pick(&r, 1, n_blocks + 2),
        .causal = 1, .conv_width = s->W, .scale = 1.0 / sqrt((double)s->d),
    };
    int total = s->cu[batch];
    size_t q_n = (size_t)total * s->hq * s->d, kv_n = (size_t)total * s->hkv * s->d;
    s->q = random_doubles(&r, q_n);
    s->k = random_doubles(&r, kv_n);
    s->v = random_doubles(&r, kv_n);
    s->conv_w = random_doubles(&r, (size_t)s->hkv * (s->W ? s->W : 1) * s->d);
    if (integers) {
        for (size_t i = 0; i < q_n; i++)
            s->q[i] = (double)pick(&r, -2, 2);
        for (size_t i = 0; i < kv_n; i++)
            s->k[i] = (double)pick(&r, -2, 2);
    }
    s->o = xmalloc(q_n * sizeof(double));
    s->lse = xmalloc((size_t)total * s->hq * sizeof(double));
    s->sel = xmalloc((size_t)total * s->hq * s->cfg.top_k * sizeof(int));
    s->kprime = xmalloc(kv_n * sizeof(double));
    assert_int_equal(moba_ref_forward(&s->cfg, s->q, s->k, s->v, s->conv_w, s->o, s->lse, s->sel), 0);
    moba_ref_kconv(&s->cfg, s->k, s->conv_w, s->kprime);

    /* Pages: a page size unrelated to B, a spare page or two per row, the pool shuffled so that
     * a sequence's pages are scattered, and unused entries holding junk that must never be read. */
    int page_size = pick(&r, 1, 7);
    int max_pages = (longest + page_size - 1) / page_size + pick(&r, 0, 2);
    int n_pages = 0;
    for (int b = 0; b < batch; b++)
        n_pages += (s->len[b] + page_size - 1) / page_size;
    n_pages += pick(&r, 0, 5);
    int *perm = xmalloc((size_t)n_pages * sizeof(int));
    for (int i = 0; i < n_pages; i++)
        perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = pick(&r, 0, i), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    s->page_table = xmalloc((size_t)batch * (max_pages ? max_pages : 1) * sizeof(int));
    int next = 0;
    for (int b = 0; b < batch; b++) {
        int used = (s->len[b] + page_size - 1) / page_size;
        for (int i = 0; i < max_pages; i++)
            s->page_table[(size_t)b * max_pages + i] = i < used ? perm[next++] : (i % 2 ? -1 : n_pages + 3);
    }
    free(perm);
    s->cache = (moba_ref_paged_cache){ .n_pages = n_pages, .page_size = page_size,
                                       .max_pages = max_pages, .page_table = s->page_table };
    size_t pool = (size_t)n_pages * page_size * s->hkv * s->d;
    s->cache.kraw_pages = s->W ? nan_doubles(pool) : NULL;
    s->cache.kprime_pages = nan_doubles(pool);
    s->cache.v_pages = nan_doubles(pool);
    s->cache.seq_lens = xmalloc((size_t)batch * sizeof(int));
    memset(s->cache.seq_lens, 0, (size_t)batch * sizeof(int));
    int max_blocks = moba_ref_paged_max_blocks(&s->cfg, &s->cache);
    assert_true(max_blocks >= 0);
    s->cache.centroid_sum = nan_doubles((size_t)batch * max_blocks * s->hkv * s->d);
    s->centroid_want = xmalloc((size_t)s->d * sizeof(double));
    printf("  batch %d hq %d hkv %d d %d B %d top_k %d W %d page_size %d max_pages %d n_pages %d\n",
           batch, s->hq, s->hkv, s->d, B, s->cfg.top_k, s->W, page_size, max_pages, n_pages);
}

static void scenario_free(scenario *s)
{
    free(s->len); free(s->prefill); free(s->cu);
    free(s->q); free(s->k); free(s->v); free(s->conv_w);
    free(s->o); free(s->lse); free(s->sel); free(s->kprime);
    free(s->page_table);
    free(s->cache.kraw_pages); free(s->cache.kprime_pages); free(s->cache.v_pages);
    free(s->cache.seq_lens); free(s->cache.centroid_sum);
    free(s->centroid_want);
}

/* Packs rows [from[b], from[b] + count[b]) of each sequence of a [total][heads][d] tensor. */
static double *gather(const scenario *s, const double *x, int heads, const int *from,
                      const int *cu_new)
{
    size_t row = (size_t)heads * s->d;
    double *out = xmalloc((size_t)cu_new[s->batch] * row * sizeof *out);
    for (int b = 0; b < s->batch; b++)
        memcpy(out + (size_t)cu_new[b] * row, x + (size_t)(s->cu[b] + from[b]) * row,
               (size_t)(cu_new[b + 1] - cu_new[b]) * row * sizeof *out);
    return out;
}

static int append_rows(scenario *s, const int *from, const int *cu_new)
{
    moba_ref_cfg cfg = s->cfg;
    cfg.cu_seqlens_k = cfg.cu_seqlens_q = cu_new;
    double *k = gather(s, s->k, s->hkv, from, cu_new), *v = gather(s, s->v, s->hkv, from, cu_new);
    int status = moba_ref_decode_append(&cfg, &s->cache, k, v, s->conv_w);
    free(k);
    free(v);
    return status;
}

/* ---- comparisons --------------------------------------------------------------------------- */

static int close_enough(double got, double want)
{
    if (isinf(want) || isinf(got))
        return got == want;
    return fabs(got - want) <= TOL * fmax(1.0, fabs(want));
}

/* Gate score of the forward's centroid of block j (mean of k' over the block's first `len`
 * keys: complete blocks are all that a candidate can be). */
static double forward_score(scenario *s, int b, int j, int h, const double *q_row)
{
    int B = s->cfg.block_size, hk = h / (s->hq / s->hkv);
    int last = (j + 1) * B < s->len[b] ? (j + 1) * B : s->len[b];
    double score = 0.0;
    for (int c = 0; c < s->d; c++) {
        double sum = 0.0;
        for (int p = j * B; p < last; p++)
            sum += s->kprime[((size_t)(s->cu[b] + p) * s->hkv + hk) * s->d + c];
        score += q_row[c] * (sum / (last - j * B));
    }
    return score;
}

/* Two selections that differ are accepted only as a score tie: the same own block, and the
 * other blocks' scores equal as multisets (sorted, compared within tolerance). */
static int same_up_to_ties(scenario *s, int b, int h, const double *q_row, const int *got,
                           const int *want)
{
    int k = s->cfg.top_k;
    double a[k], c[k];
    int na = 0, nc = 0;
    for (int i = 0; i < k; i++) {
        if (got[i] >= 0)
            a[na++] = forward_score(s, b, got[i], h, q_row);
        if (want[i] >= 0)
            c[nc++] = forward_score(s, b, want[i], h, q_row);
    }
    if (na != nc)
        return 0;
    for (int i = 0; i < na; i++)  /* insertion sorts, descending */
        for (int j = i; j > 0 && a[j] > a[j - 1]; j--) { double t = a[j]; a[j] = a[j - 1]; a[j - 1] = t; }
    for (int i = 0; i < nc; i++)
        for (int j = i; j > 0 && c[j] > c[j - 1]; j--) { double t = c[j]; c[j] = c[j - 1]; c[j - 1] = t; }
    for (int i = 0; i < na; i++)
        if (fabs(a[i] - c[i]) > 1e-12)
            return 0;
    return 1;
}

/* The decode of the rows just appended (q_len = cu_new[b+1] - cu_new[b] at positions from[b]..)
 * against the forward's rows at the same positions. Returns the rows that tied. */
static int decode_and_compare(scenario *s, const int *from, const int *cu_new, int step)
{
    moba_ref_cfg cfg = s->cfg;
    cfg.cu_seqlens_q = cfg.cu_seqlens_k = cu_new;
    int rows = cu_new[s->batch], hq = s->hq, d = s->d, k = cfg.top_k, ties = 0;
    double *q = gather(s, s->q, hq, from, cu_new);
    double *o = nan_doubles((size_t)rows * hq * d), *lse = nan_doubles((size_t)rows * hq);
    int *sel = xmalloc(((size_t)rows * hq * k + 1) * sizeof *sel);
    assert_int_equal(moba_ref_decode(&cfg, &s->cache, q, o, lse, sel), 0);
    for (int b = 0; b < s->batch; b++)
        for (int r = 0; r < cu_new[b + 1] - cu_new[b]; r++) {
            size_t row = (size_t)cu_new[b] + r, frow = (size_t)s->cu[b] + from[b] + r;
            for (int h = 0; h < hq; h++) {
                const int *got = sel + (row * hq + h) * k, *want = s->sel + (frow * hq + h) * k;
                if (memcmp(got, want, (size_t)k * sizeof *got) != 0) {
                    if (!same_up_to_ties(s, b, h, q + (row * hq + h) * d, got, want))
                        fail_msg("step %d seq %d pos %d head %d: selection differs (got %d.. want %d..)",
                                 step, b, from[b] + r, h, got[0], want[0]);
                    ties++;
                    continue;
                }
                double gl = lse[row * hq + h], wl = s->lse[frow * hq + h];
                if (!close_enough(gl, wl))
                    fail_msg("step %d seq %d pos %d head %d: lse %.17g want %.17g", step, b,
                             from[b] + r, h, gl, wl);
                for (int c = 0; c < d; c++)
                    if (!close_enough(o[(row * hq + h) * d + c], s->o[(frow * hq + h) * d + c]))
                        fail_msg("step %d seq %d pos %d head %d: o[%d] %.17g want %.17g", step, b,
                                 from[b] + r, h, c, o[(row * hq + h) * d + c],
                                 s->o[(frow * hq + h) * d + c]);
            }
        }
    free(q); free(o); free(lse); free(sel);
    return ties;
}

/* (c): every block of every sequence, from the running sums, against the mean of the forward's
 * k' over the keys held so far; and the cached k' rows against the forward's. */
static void check_cache_state(scenario *s, int step)
{
    int B = s->cfg.block_size, d = s->d;
    for (int b = 0; b < s->batch; b++) {
        int len = s->cache.seq_lens[b];
        for (int hk = 0; hk < s->hkv; hk++) {
            for (int j = 0; j * B < len; j++) {
                int last = (j + 1) * B < len ? (j + 1) * B : len;
                moba_ref_paged_centroid(&s->cfg, &s->cache, b, j, hk, s->centroid_want);
                for (int c = 0; c < d; c++) {
                    double sum = 0.0;
                    for (int p = j * B; p < last; p++)
                        sum += s->kprime[((size_t)(s->cu[b] + p) * s->hkv + hk) * d + c];
                    double want = sum / (last - j * B);
                    if (!(fabs(s->centroid_want[c] - want) <= 1e-12 * fmax(1.0, fabs(want))))
                        fail_msg("step %d seq %d block %d head %d: centroid[%d] %.17g want %.17g",
                                 step, b, j, hk, c, s->centroid_want[c], want);
                }
            }
            for (int p = 0; p < len; p++) {
                const double *row = moba_ref_paged_row(&s->cfg, &s->cache, s->cache.kprime_pages, b, p, hk);
                const double *want = s->kprime + ((size_t)(s->cu[b] + p) * s->hkv + hk) * d;
                for (int c = 0; c < d; c++)
                    if (!(fabs(row[c] - want[c]) <= 1e-12))
                        fail_msg("step %d seq %d pos %d head %d: k'[%d] %.17g want %.17g", step,
                                 b, p, hk, c, row[c], want[c]);
            }
        }
    }
}

/* Prefill with one append, then append and decode until every sequence is whole; each step a
 * sequence takes 1 token (max_chunk 1) or a random 0..max_chunk (a sequence may sit a step out). */
static void replay(uint64_t salt, int batch, int max_chunk, int integers)
{
    scenario s;
    scenario_init(&s, salt, batch, integers);
    rng r = rng_new(salt ^ 0xc0ffee);
    int *from = xmalloc((size_t)batch * sizeof(int)), *cu_new = xmalloc((size_t)(batch + 1) * sizeof(int));
    memset(from, 0, (size_t)batch * sizeof(int));
    cu_new[0] = 0;
    for (int b = 0; b < batch; b++)
        cu_new[b + 1] = cu_new[b] + s.prefill[b];
    assert_int_equal(append_rows(&s, from, cu_new), 0);
    check_cache_state(&s, 0);
    int step = 0, ties = 0, decoded = 0;
    for (;;) {
        int remaining = 0;
        for (int b = 0; b < batch; b++) {
            from[b] = s.cache.seq_lens[b];
            int left = s.len[b] - from[b];
            int take = max_chunk == 1 ? (left > 0) : pick(&r, 0, max_chunk);
            take = take < left ? take : left;
            cu_new[b + 1] = cu_new[b] + take;
            remaining += left;
        }
        if (remaining == 0)
            break;
        step++;
        assert_int_equal(append_rows(&s, from, cu_new), 0);
        check_cache_state(&s, step);
        ties += decode_and_compare(&s, from, cu_new, step);
        decoded += cu_new[batch];
    }
    /* At the end every sequence is whole: the running sums must give moba_ref_centroids. */
    int max_blocks = moba_ref_max_blocks(&s.cfg);
    double *centroids = xmalloc(((size_t)batch * max_blocks * s.hkv * s.d + 1) * sizeof(double));
    moba_ref_centroids(&s.cfg, s.kprime, centroids);
    for (int b = 0; b < batch; b++)
        for (int j = 0; j * s.cfg.block_size < s.len[b]; j++)
            for (int hk = 0; hk < s.hkv; hk++) {
                const double *want = centroids + (((size_t)b * max_blocks + j) * s.hkv + hk) * s.d;
                moba_ref_paged_centroid(&s.cfg, &s.cache, b, j, hk, s.centroid_want);
                for (int c = 0; c < s.d; c++)
                    if (!(fabs(s.centroid_want[c] - want[c]) <= 1e-12 * fmax(1.0, fabs(want[c]))))
                        fail_msg("seq %d block %d head %d: centroid[%d] %.17g, forward's %.17g", b,
                                 j, hk, c, s.centroid_want[c], want[c]);
            }
    free(centroids);
    printf("  %d steps, %d tokens decoded, %d tied selections\n", step, decoded, ties);
    assert_true(decoded > 0);
    /* With integer data, where nearly every row has tied candidates, a tie is no excuse: the
     * rule is the same on both sides, so the selections must be identical. */
    if (integers)
        assert_int_equal(ties, 0);
    free(from);
    free(cu_new);
    scenario_free(&s);
}

/* (a) one token per step. */
static void test_decode_one_by_one_matches_forward(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
            replay(100 + 16 * round + i, batches[i], 1, 0);
}

/* (b) ragged chunks of up to 4 tokens per step (speculative decoding's q_len > 1). */
static void test_decode_in_chunks_matches_forward(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
            replay(200 + 16 * round + i, batches[i], 4, 0);
}

/* Tie-heavy data: decode and forward must break equal scores the same way (lower index). */
static void test_decode_breaks_ties_as_forward(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
        replay(300 + i, batches[i], 1 + (int)(i % 3), 1);
}

/* ---- (d) bad input ------------------------------------------------------------------------- */

typedef struct small_cache {
    int cu[3], cu_q[3], table[2 * 2], lens[2];
    double k[8 * 2], v[8 * 2], q[8 * 2], o[8 * 2], lse[8], conv_w[3 * 2];
    double kraw[5 * 2 * 2], kprime[5 * 2 * 2], vp[5 * 2 * 2], sums[2 * 2 * 2];
    moba_ref_cfg cfg;
    moba_ref_paged_cache cache;
} small_cache;

/* Two sequences, hq = hkv = 1, d = 2, B = 2, pages of 2 tokens, 2 pages per sequence, 5 pages. */
static void small_init(small_cache *t)
{
    memset(t, 0, sizeof *t);
    rng r = rng_new(77);
    for (int i = 0; i < 16; i++) {
        t->k[i] = rng_signed(&r);
        t->v[i] = rng_signed(&r);
        t->q[i] = rng_signed(&r);
    }
    for (int i = 0; i < 6; i++)
        t->conv_w[i] = rng_signed(&r);
    int table[4] = { 3, 0, 4, 1 };
    memcpy(t->table, table, sizeof table);
    t->cu[0] = 0, t->cu[1] = 3, t->cu[2] = 5;    /* append 3 and 2 tokens */
    t->cu_q[0] = 0, t->cu_q[1] = 1, t->cu_q[2] = 2;
    t->cfg = (moba_ref_cfg){ .batch = 2, .cu_seqlens_q = t->cu_q, .cu_seqlens_k = t->cu, .hq = 1,
                             .hkv = 1, .d = 2, .block_size = 2, .top_k = 2, .causal = 1,
                             .conv_width = 3, .scale = 0.7 };
    t->cache = (moba_ref_paged_cache){ .n_pages = 5, .page_size = 2, .max_pages = 2,
                                       .kraw_pages = t->kraw, .kprime_pages = t->kprime,
                                       .v_pages = t->vp, .page_table = t->table,
                                       .seq_lens = t->lens, .centroid_sum = t->sums };
}

/* A refused append leaves the cache exactly as it was. */
static void expect_append_refused(small_cache *t, int want_status)
{
    small_cache before = *t;
    assert_int_equal(moba_ref_decode_append(&t->cfg, &t->cache, t->k, t->v, t->conv_w), want_status);
    assert_memory_equal(t->lens, before.lens, sizeof t->lens);
    assert_memory_equal(t->kraw, before.kraw, sizeof t->kraw);
    assert_memory_equal(t->kprime, before.kprime, sizeof t->kprime);
    assert_memory_equal(t->vp, before.vp, sizeof t->vp);
    assert_memory_equal(t->sums, before.sums, sizeof t->sums);
}

static void expect_decode_refused(small_cache *t, int want_status)
{
    for (int i = 0; i < 16; i++)
        t->o[i] = 123.0;
    assert_int_equal(moba_ref_decode(&t->cfg, &t->cache, t->q, t->o, t->lse, NULL), want_status);
    for (int i = 0; i < 16; i++)
        assert_true(t->o[i] == 123.0);
}

static void test_append_refuses_bad_input(void **state)
{
    (void)state;
    small_cache t;
    small_init(&t);
    t.table[1] = 5;                       /* sequence 0's second page: one past the pool */
    expect_append_refused(&t, MOBA_REF_DECODE_EPAGE);
    t.table[1] = -1;
    expect_append_refused(&t, MOBA_REF_DECODE_EPAGE);
    t.table[1] = 0;
    t.lens[1] = 3;                        /* 3 + 2 tokens > 2 pages of 2 */
    expect_append_refused(&t, MOBA_REF_DECODE_EFULL);
    t.lens[1] = -1;
    expect_append_refused(&t, MOBA_REF_DECODE_EARG);
    t.lens[1] = 0;
    moba_ref_cfg good = t.cfg;
    t.cfg.hq = 3, t.cfg.hkv = 2;          /* hq % hkv != 0 */
    expect_append_refused(&t, MOBA_REF_DECODE_EARG);
    t.cfg = good;
    int decreasing[3] = { 0, 3, 2 };
    t.cfg.cu_seqlens_k = decreasing;
    expect_append_refused(&t, MOBA_REF_DECODE_EARG);
    t.cfg = good;
    assert_int_equal(moba_ref_decode_append(&t.cfg, &t.cache, t.k, t.v, NULL), MOBA_REF_DECODE_EARG);
    t.cache.kraw_pages = NULL;            /* the conv needs the raw keys */
    expect_append_refused(&t, MOBA_REF_DECODE_EARG);
    t.cache.kraw_pages = t.kraw;
    t.cache.n_pages = 4;                  /* page 4 in use is now outside the pool */
    expect_append_refused(&t, MOBA_REF_DECODE_EPAGE);
    t.cache.n_pages = 5;
    t.cache.max_pages = 0x40000000, t.cache.page_size = 0x40000000;
    assert_int_equal(moba_ref_paged_max_blocks(&t.cfg, &t.cache), -1);
    expect_append_refused(&t, MOBA_REF_DECODE_EARG);
    t.cache.max_pages = 2, t.cache.page_size = 2;
    /* After all that, the same call on good input goes through. */
    assert_int_equal(moba_ref_decode_append(&t.cfg, &t.cache, t.k, t.v, t.conv_w), 0);
    assert_int_equal(t.lens[0], 3);
    assert_int_equal(t.lens[1], 2);
    assert_non_null(moba_ref_decode_strerror(MOBA_REF_DECODE_EFULL));
}

static void test_decode_refuses_bad_input(void **state)
{
    (void)state;
    small_cache t;
    small_init(&t);
    assert_int_equal(moba_ref_decode_append(&t.cfg, &t.cache, t.k, t.v, t.conv_w), 0);
    t.cu_q[2] = 4;                        /* 3 new queries for a sequence of 2 tokens */
    expect_decode_refused(&t, MOBA_REF_DECODE_EQLEN);
    t.cu_q[2] = 2;
    t.table[2] = 7;                       /* sequence 1's page, corrupted after the append */
    expect_decode_refused(&t, MOBA_REF_DECODE_EPAGE);
    t.table[2] = 4;
    t.lens[0] = 5;                        /* a length past the page table row */
    expect_decode_refused(&t, MOBA_REF_DECODE_EFULL);
    t.lens[0] = 3;
    t.cfg.causal = 0;                     /* decode is causal by construction */
    expect_decode_refused(&t, MOBA_REF_DECODE_EARG);
    t.cfg.causal = 1;
    assert_int_equal(moba_ref_decode(&t.cfg, &t.cache, NULL, t.o, t.lse, NULL), MOBA_REF_DECODE_EARG);
    assert_int_equal(moba_ref_decode(&t.cfg, NULL, t.q, t.o, t.lse, NULL), MOBA_REF_DECODE_EARG);
    assert_int_equal(moba_ref_decode(NULL, &t.cache, t.q, t.o, t.lse, NULL), MOBA_REF_DECODE_EARG);
    /* The good call works, and a batch with no new queries at all is fine too. */
    assert_int_equal(moba_ref_decode(&t.cfg, &t.cache, t.q, t.o, t.lse, NULL), 0);
    assert_true(isfinite(t.lse[0]) && isfinite(t.lse[1]));
    int none[3] = { 0, 0, 0 };
    t.cfg.cu_seqlens_q = none;
    assert_int_equal(moba_ref_decode(&t.cfg, &t.cache, NULL, NULL, NULL, NULL), 0);
}

/* ---- speculative decoding: drafts appended, verified, the rejected ones truncated ---------- */

/* One step of sequence b: `keep` real tokens (the forward's next ones) followed by `junk`
 * drafts that will be rejected, appended and decoded together; the real rows must decode as the
 * forward's (their causal view never reaches the drafts, and the own block's score is unused). */
typedef struct draft_step {
    int *from, *keep, *junk, *cu_new, *drop;
} draft_step;

static void append_with_drafts(scenario *s, rng *r, const draft_step *st, int step)
{
    int batch = s->batch, hkv = s->hkv, hq = s->hq, d = s->d, k = s->cfg.top_k;
    int rows = st->cu_new[batch];
    double *kn = xmalloc(((size_t)rows * hkv * d + 1) * sizeof(double));
    double *vn = xmalloc(((size_t)rows * hkv * d + 1) * sizeof(double));
    double *qn = xmalloc(((size_t)rows * hq * d + 1) * sizeof(double));
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < st->keep[b] + st->junk[b]; i++) {
            size_t row = (size_t)st->cu_new[b] + i, src = (size_t)s->cu[b] + st->from[b] + i;
            for (int x = 0; x < hkv * d; x++) {
                kn[row * hkv * d + x] = i < st->keep[b] ? s->k[src * hkv * d + x] : 3.0 * rng_signed(r);
                vn[row * hkv * d + x] = i < st->keep[b] ? s->v[src * hkv * d + x] : rng_signed(r);
            }
            for (int x = 0; x < hq * d; x++)
                qn[row * hq * d + x] = i < st->keep[b] ? s->q[src * hq * d + x] : rng_signed(r);
        }
    moba_ref_cfg cfg = s->cfg;
    cfg.cu_seqlens_k = cfg.cu_seqlens_q = st->cu_new;
    assert_int_equal(moba_ref_decode_append(&cfg, &s->cache, kn, vn, s->conv_w), 0);
    double *o = nan_doubles((size_t)rows * hq * d + 1), *lse = nan_doubles((size_t)rows * hq + 1);
    int *sel = xmalloc(((size_t)rows * hq * k + 1) * sizeof *sel);
    assert_int_equal(moba_ref_decode(&cfg, &s->cache, qn, o, lse, sel), 0);
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < st->keep[b]; i++) {
            size_t row = (size_t)st->cu_new[b] + i, frow = (size_t)s->cu[b] + st->from[b] + i;
            for (int h = 0; h < hq; h++) {
                const int *got = sel + (row * hq + h) * k, *want = s->sel + (frow * hq + h) * k;
                if (memcmp(got, want, (size_t)k * sizeof *got) != 0 &&
                    !same_up_to_ties(s, b, h, qn + (row * hq + h) * d, got, want))
                    fail_msg("draft step %d seq %d pos %d head %d: selection differs", step, b,
                             st->from[b] + i, h);
                if (memcmp(got, want, (size_t)k * sizeof *got) != 0)
                    continue;
                if (!close_enough(lse[row * hq + h], s->lse[frow * hq + h]))
                    fail_msg("draft step %d seq %d pos %d head %d: lse %.17g want %.17g", step, b,
                             st->from[b] + i, h, lse[row * hq + h], s->lse[frow * hq + h]);
                for (int c = 0; c < d; c++)
                    if (!close_enough(o[(row * hq + h) * d + c], s->o[(frow * hq + h) * d + c]))
                        fail_msg("draft step %d seq %d pos %d head %d: o[%d] differs", step, b,
                                 st->from[b] + i, h, c);
            }
        }
    free(kn); free(vn); free(qn); free(o); free(lse); free(sel);
}

/* Prefill, then steps of real tokens plus drafts; after each step the drafts and sometimes a
 * deeper stretch of real tokens (across block boundaries, now and then the whole sequence) are
 * truncated and re-appended later. After every truncation the cache must be what appending
 * only the kept tokens makes (check_cache_state: every centroid sum and k' row against the
 * forward's), and the next appends must compute the same k' (the conv reads the raw keys). */
static void replay_speculative(uint64_t salt, int batch)
{
    scenario s;
    scenario_init(&s, salt, batch, 0);
    rng r = rng_new(salt ^ 0x5eed);
    draft_step st;
    st.from = xmalloc((size_t)batch * sizeof(int));
    st.keep = xmalloc((size_t)batch * sizeof(int));
    st.junk = xmalloc((size_t)batch * sizeof(int));
    st.drop = xmalloc((size_t)batch * sizeof(int));
    st.cu_new = xmalloc((size_t)(batch + 1) * sizeof(int));
    memset(st.from, 0, (size_t)batch * sizeof(int));
    st.cu_new[0] = 0;
    for (int b = 0; b < batch; b++)
        st.cu_new[b + 1] = st.cu_new[b] + s.prefill[b];
    assert_int_equal(append_rows(&s, st.from, st.cu_new), 0);
    int step = 0, dropped = 0, deep = 0, to_zero = 0, crossed = 0;
    moba_ref_cfg cfg = s.cfg;
    for (;;) {
        int remaining = 0;
        for (int b = 0; b < batch; b++) {
            st.from[b] = s.cache.seq_lens[b];
            int left = s.len[b] - st.from[b];
            remaining += left;
            st.keep[b] = pick(&r, 0, left < 4 ? left : 4);
            /* drafts only where the sequence's pages have room for them */
            int ps = s.cache.page_size;
            int room = (s.len[b] + ps - 1) / ps * ps - st.from[b] - st.keep[b];
            int most = room < 3 ? (int)room : 3;
            st.junk[b] = left > 0 ? pick(&r, 0, most) : 0;
            st.cu_new[b + 1] = st.cu_new[b] + st.keep[b] + st.junk[b];
        }
        if (remaining == 0)
            break;
        step++;
        append_with_drafts(&s, &r, &st, step);
        for (int b = 0; b < batch; b++) {
            int len = s.cache.seq_lens[b], held = len - st.junk[b];
            /* deeper rollbacks in the first steps only, so that every sequence completes */
            int B = s.cfg.block_size, back = 0;
            if (step <= 30 && pick(&r, 0, 5) == 0)
                back = pick(&r, 0, held < 2 * B + 1 ? held : 2 * B + 1);
            if (step <= 30 && pick(&r, 0, 30) == 0)
                back = held;   /* everything */
            st.drop[b] = st.junk[b] + back;
            dropped += st.drop[b];
            deep += back > 0;
            to_zero += len > 0 && st.drop[b] == len;
            crossed += st.drop[b] > 0 && (len - 1) / B != (len - st.drop[b]) / B;
        }
        assert_int_equal(moba_ref_decode_truncate(&cfg, &s.cache, st.drop), 0);
        for (int b = 0; b < batch; b++)
            assert_int_equal(s.cache.seq_lens[b], st.from[b] + st.keep[b] + st.junk[b] - st.drop[b]);
        check_cache_state(&s, step);
    }
    printf("  %d steps, %d tokens dropped (%d deep rollbacks, %d to zero, %d across a block)\n", step,
           dropped, deep, to_zero, crossed);
    assert_true(dropped > 0 && crossed > 0);
    free(st.from); free(st.keep); free(st.junk); free(st.drop); free(st.cu_new);
    scenario_free(&s);
}

static void test_truncate_equals_never_appended(void **state)
{
    (void)state;
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
            replay_speculative(400 + 16 * round + i, batches[i]);
}

static void test_truncate_refuses_bad_input(void **state)
{
    (void)state;
    small_cache t;
    small_init(&t);
    assert_int_equal(moba_ref_decode_append(&t.cfg, &t.cache, t.k, t.v, t.conv_w), 0);
    int too_many[2] = { 1, 3 }, negative[2] = { -1, 0 }, good[2] = { 2, 2 };
    small_cache before = t;
    assert_int_equal(moba_ref_decode_truncate(&t.cfg, &t.cache, too_many), MOBA_REF_DECODE_EDROP);
    assert_int_equal(moba_ref_decode_truncate(&t.cfg, &t.cache, negative), MOBA_REF_DECODE_EDROP);
    assert_int_equal(moba_ref_decode_truncate(&t.cfg, &t.cache, NULL), MOBA_REF_DECODE_EARG);
    assert_int_equal(moba_ref_decode_truncate(NULL, &t.cache, good), MOBA_REF_DECODE_EARG);
    t.table[0] = 9;                       /* a page in use outside the pool */
    assert_int_equal(moba_ref_decode_truncate(&t.cfg, &t.cache, good), MOBA_REF_DECODE_EPAGE);
    t.table[0] = 3;
    assert_memory_equal(t.lens, before.lens, sizeof t.lens);
    assert_memory_equal(t.sums, before.sums, sizeof t.sums);
    assert_non_null(strstr(moba_ref_decode_strerror(MOBA_REF_DECODE_EDROP), "drop"));
    /* 3 - 2 = 1 token: block 0 holds one key now, its sum is that key's k' */
    assert_int_equal(moba_ref_decode_truncate(&t.cfg, &t.cache, good), 0);
    assert_int_equal(t.lens[0], 1);
    assert_int_equal(t.lens[1], 0);
    const double *k0 = moba_ref_paged_row(&t.cfg, &t.cache, t.kprime, 0, 0, 0);
    assert_true(t.sums[0] == k0[0] && t.sums[1] == k0[1]);
}

int main(void)
{
    const char *seed = getenv("MOBAGEN_TEST_SEED");
    if (seed && *seed)
        base_seed = strtoull(seed, NULL, 0);
    printf("test_ref_decode: seed 0x%llx (set MOBAGEN_TEST_SEED to change)\n",
           (unsigned long long)base_seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_one_by_one_matches_forward),
        cmocka_unit_test(test_decode_in_chunks_matches_forward),
        cmocka_unit_test(test_decode_breaks_ties_as_forward),
        cmocka_unit_test(test_append_refuses_bad_input),
        cmocka_unit_test(test_decode_refuses_bad_input),
        cmocka_unit_test(test_truncate_equals_never_appended),
        cmocka_unit_test(test_truncate_refuses_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
