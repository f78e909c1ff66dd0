/* GPU append + decode over a paged KV cache (runtime/decode.c, templates/decode.cu.tpl):
 * - against the decode reference (tests/ref/moba_ref_decode.c), step by step: prefill, then
 *   ragged chunks of new tokens appended and decoded (q_len 0..4, empty sequences), on fresh
 *   random inputs with outputs poisoned before every call; selections may differ only by
 *   swaps of blocks whose scores tie up to rounding (counted and bounded), never between blocks
 *   whose scores are exactly equal (the lower block first; one case has every score tied);
 * - against the GPU forward: the decoded rows equal the same rows of mobagen_fwd over the whole
 *   sequences (selection up to ties, o and LSE within tolerance);
 * - the cache itself (centroid sums and pages) against the reference's;
 * - argument errors and the device-side error word.
 * Without a CUDA device every test is skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ref/moba_ref.h"
#include "ref/moba_ref_decode.h"
#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define MAX_SEQS 8
#define POISON 0xffffffffu
#define DECODE_ROWS_MAX 16   /* gqa_group x max_q_len (docs/decode.md) */

typedef struct dec_case {
    const char *label;
    int d, B, k, W, gqa, hkv;
    mg_dtype dtype;
    int batch, page_size, max_chunk;   /* max_chunk: most new tokens per sequence per step */
    int lens[MAX_SEQS];                /* final lengths */
    int decoded[MAX_SEQS];             /* of which appended and decoded after the prefill */
    int tied;                          /* every key of a kv head the same: all scores tie exactly */
} dec_case;

static const dec_case cases[] = {
    /* label                 d   B    k   W gqa hkv dtype  batch page chunk  lens / decoded */
    {"b128_k8_gqa4_onebyone", 128, 128, 8, 0, 4, 2, MG_BF16, 3, 16, 1, {1000, 300, 0}, {9, 5, 0}, 0},
    {"b32_k32_conv3_gqa4_chunks", 128, 32, 32, 3, 4, 2, MG_BF16, 4, 64, 4, {2000, 129, 64, 5}, {12, 7, 10, 5}, 0},
    {"d64_b16_k64_conv4_page7", 64, 16, 64, 4, 1, 2, MG_BF16, 2, 7, 3, {1500, 40}, {10, 9}, 0},
    {"b512_k2_gqa2", 128, 512, 2, 0, 2, 1, MG_BF16, 2, 128, 2, {3000, 700}, {6, 5}, 0},
    {"b64_k1_gqa16", 128, 64, 1, 0, 16, 1, MG_BF16, 2, 32, 1, {500, 65}, {4, 3}, 0},
    {"d64_b256_k4_conv3_gqa8", 64, 256, 4, 3, 8, 1, MG_BF16, 3, 256, 2, {2100, 256, 1}, {7, 6, 1}, 0},
    {"b64_k16_fp16_gqa4", 128, 64, 16, 0, 4, 2, MG_FP16, 2, 16, 4, {1300, 200}, {11, 8}, 0},
    {"b16_k64_gqa1_long", 128, 16, 64, 3, 1, 1, MG_BF16, 1, 16, 2, {9000}, {6}, 0},
    /* 320 blocks: ten routing chunks of 32 (short contexts get small chunks); the best k - 1 of
     * every row tie with all other candidates */
    {"b32_k32_tied_gqa4", 128, 32, 32, 0, 4, 2, MG_BF16, 2, 16, 2, {10240, 3000}, {6, 5}, 1},
};

static gpu_env env;
static int have_device;


static int setup(void **state)
{
    have_device = gpu_env_open_reported(&env);
    return 0;
}

static int teardown(void **state)
{
    if (have_device) gpu_env_close(&env);
    return 0;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

static mobagen_op *make_op(const dec_case *c)
{
    mobagen_spec_params sp = {.name = c->label, .head_dim = c->d, .block_size = c->B, .top_k = c->k,
                              .causal = 1, .conv_width = c->W, .dtype = c->dtype, .gqa_group = c->gqa};
    mobagen_op *op = NULL;
    if (mobagen_op_create_from_params(env.ctx, &sp, &op) != MOBAGEN_OK)
        fail_msg("%s: op: %s", c->label, mobagen_ctx_errmsg(env.ctx));
    return op;
}

typedef struct stats {
    long long rows, swaps, fwd_rows, fwd_swaps;
    double o_err, lse_err, fwd_o_err, fwd_lse_err, cent_err;
} stats;

/* Block scores of one (row, head) in double from the reference cache's centroids. */
static double ref_score(const dec_case *c, const moba_ref_cfg *cfg, const moba_ref_paged_cache *rc,
                        const double *qrow, int b, int blk, int h)
{
    double cent[256];
    moba_ref_paged_centroid(cfg, rc, b, blk, h / c->gqa, cent);
    double s = 0;
    for (int i = 0; i < c->d; i++) s += qrow[i] * cent[i];
    return s;
}

/* GPU selection vs a wanted one: equal, or swaps of near-tied blocks. Returns swaps. */
static int check_sel(const dec_case *c, const moba_ref_cfg *cfg, const moba_ref_paged_cache *rc,
                     const double *qrow, int b, int h, const int *got, const int *want, const char *what)
{
    int swaps = 0, ng = 0, nw = 0;
    double mag = 0;
    for (int i = 0; i < c->d; i++) mag += fabs(qrow[i]);
    for (int i = 0; i < c->k; i++) {
        ng += got[i] >= 0;
        nw += want[i] >= 0;
        if (i > 0 && got[i] >= 0 && got[i] <= got[i - 1]) fail_msg("%s: selection not ascending", what);
    }
    if (ng != nw) fail_msg("%s: %d blocks selected, want %d", what, ng, nw);
    double tol = 4e-5 * mag + 1e-5;
    for (int i = 0; i < ng; i++) {
        int found = 0;
        for (int j = 0; j < nw; j++) found |= want[j] == got[i];
        if (found) continue;
        /* an exact tie ranks the lower block first (as the forward does): no swap allowed then */
        double sg_exact = ref_score(c, cfg, rc, qrow, b, got[i], h);
        for (int j = 0; j < nw; j++) {
            int in_got = 0;
            for (int m = 0; m < ng; m++) in_got |= got[m] == want[j];
            if (!in_got && want[j] < got[i] && ref_score(c, cfg, rc, qrow, b, want[j], h) == sg_exact)
                fail_msg("%s: block %d instead of block %d with exactly the same score %.8g", what, got[i], want[j],
                         sg_exact);
        }
        double weakest = INFINITY;
        for (int j = 0; j < nw; j++) {
            int in_got = 0;
            for (int m = 0; m < ng; m++) in_got |= got[m] == want[j];
            if (!in_got) weakest = fmin(weakest, ref_score(c, cfg, rc, qrow, b, want[j], h));
        }
        double sg = ref_score(c, cfg, rc, qrow, b, got[i], h);
        if (fabs(sg - weakest) > tol)
            fail_msg("%s: block %d (score %.8g) instead of one scoring %.8g (tolerance %.3g)", what, got[i], sg,
                     weakest, tol);
        swaps++;
    }
    return swaps;
}

/* The GPU stores k' in the element type and sums what it stores: the reference cache does the
 * same (k' rounded, every block's sum recomputed from the rounded rows), so that the comparison
 * measures the kernels, not that rounding. */
static void round_ref_cache(const dec_case *c, const moba_ref_cfg *cfg, moba_ref_paged_cache *rc, int max_blocks)
{
    const int d = c->d, hkv = c->hkv;
    for (int b = 0; b < c->batch; b++) {
        const int len = rc->seq_lens[b];
        for (int j = 0; j * c->B < len; j++)
            for (int h = 0; h < hkv; h++) {
                double *sum = rc->centroid_sum + (((size_t)b * max_blocks + j) * hkv + h) * d;
                for (int i = 0; i < d; i++) sum[i] = 0;
                for (int t = j * c->B; t < (j + 1) * c->B && t < len; t++) {
                    double *row = (double *)moba_ref_paged_row(cfg, rc, rc->kprime_pages, b, t, h);
                    for (int i = 0; i < d; i++) {
                        row[i] = gpu_from_elem(c->dtype, gpu_to_elem(c->dtype, (float)row[i]));
                        sum[i] += row[i];
                    }
                }
            }
    }
}

static void run_case(const dec_case *c, uint64_t seed, stats *st)
{
    memset(st, 0, sizeof *st);
    mobagen_op *op = make_op(c);
    rng r = rng_seeded(seed, 1);
    const int d = c->d, hkv = c->hkv, hq = hkv * c->gqa, batch = c->batch, ps = c->page_size;
    int cu[MAX_SEQS + 1] = {0}, longest = 0;
    for (int b = 0; b < batch; b++) {
        cu[b + 1] = cu[b] + c->lens[b];
        if (c->lens[b] > longest) longest = c->lens[b];
    }
    const int total = cu[batch];
    const size_t qn = (size_t)total * hq * d, kn = (size_t)total * hkv * d, wn = (size_t)hkv * c->W * d;
    uint16_t *q = xcalloc(qn, 2), *k = xcalloc(kn, 2), *v = xcalloc(kn, 2), *w = xcalloc(wn, 2);
    double *qd = xcalloc(qn, 8), *kd = xcalloc(kn, 8), *vd = xcalloc(kn, 8), *wd = xcalloc(wn, 8);
    /* keys with a direction per block so that routing has something to choose */
    for (int b = 0; b < batch; b++)
        for (int t0 = 0; t0 < c->lens[b]; t0 += c->B)
            for (int h = 0; h < hkv; h++) {
                double dir[256];
                rng tied = rng_seeded(seed, 100 + (uint64_t)h);   /* the same direction in every block */
                for (int i = 0; i < d; i++) dir[i] = 0.7 * rng_normal(c->tied ? &tied : &r);
                for (int t = t0; t < t0 + c->B && t < c->lens[b]; t++)
                    for (int i = 0; i < d; i++) {
                        size_t at = ((size_t)(cu[b] + t) * hkv + h) * d + i;
                        k[at] = gpu_to_elem(c->dtype, (float)(dir[i] + (c->tied ? 0.0 : rng_normal(&r))));
                        kd[at] = gpu_from_elem(c->dtype, k[at]);
                    }
            }
    for (size_t i = 0; i < qn; i++) qd[i] = gpu_from_elem(c->dtype, q[i] = gpu_to_elem(c->dtype, (float)rng_normal(&r)));
    for (size_t i = 0; i < kn; i++) vd[i] = gpu_from_elem(c->dtype, v[i] = gpu_to_elem(c->dtype, (float)rng_normal(&r)));
    for (size_t i = 0; i < wn; i++)
        wd[i] = gpu_from_elem(c->dtype, w[i] = gpu_to_elem(c->dtype, (float)(0.5 * rng_normal(&r))));

    /* pages: shuffled pool, junk past each sequence's pages */
    int max_pages = (longest + ps - 1) / ps + 1, n_pages = 2;
    for (int b = 0; b < batch; b++) n_pages += (c->lens[b] + ps - 1) / ps;
    int *perm = xcalloc((size_t)n_pages, sizeof(int)), *table = xcalloc((size_t)batch * max_pages, sizeof(int));
    for (int i = 0; i < n_pages; i++) perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)(rng_next(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int b = 0, next = 0; b < batch; b++)
        for (int i = 0; i < max_pages; i++)
            table[b * max_pages + i] = i < (c->lens[b] + ps - 1) / ps ? perm[next++] : (i % 2 ? -1 : n_pages + 5);
    moba_ref_cfg cfg = {.batch = batch, .hq = hq, .hkv = hkv, .d = d, .block_size = c->B, .top_k = c->k,
                        .causal = 1, .conv_width = c->W, .scale = 1.0 / sqrt(d)};
    moba_ref_paged_cache rc = {.n_pages = n_pages, .page_size = ps, .max_pages = max_pages, .page_table = table};
    const size_t pool = (size_t)n_pages * ps * hkv * d;
    rc.kraw_pages = c->W ? xcalloc(pool, 8) : NULL;
    rc.kprime_pages = xcalloc(pool, 8);
    rc.v_pages = xcalloc(pool, 8);
    rc.seq_lens = xcalloc((size_t)batch, sizeof(int));
    const int max_blocks = moba_ref_paged_max_blocks(&cfg, &rc);
    const size_t cn = (size_t)batch * max_blocks * hkv * d;
    rc.centroid_sum = xcalloc(cn, 8);

    /* device cache, poisoned */
    cu_deviceptr dkp = gpu_alloc(&env, 2 * pool), dv = gpu_alloc(&env, 2 * pool);
    cu_deviceptr dkr = c->W ? gpu_alloc(&env, 2 * pool) : 0, dcent = gpu_alloc(&env, 4 * cn);
    cu_deviceptr dtable = gpu_alloc(&env, 4 * (size_t)batch * max_pages), dlens = gpu_alloc(&env, 4 * (size_t)batch);
    cu_deviceptr derr = gpu_alloc(&env, 4);
    gpu_fill32(&env, dkp, POISON, 2 * pool);
    gpu_fill32(&env, dv, POISON, 2 * pool);
    if (dkr) gpu_fill32(&env, dkr, POISON, 2 * pool);
    gpu_fill32(&env, dcent, POISON, 4 * cn);
    gpu_fill32(&env, dlens, 0, 4 * (size_t)batch);
    gpu_fill32(&env, derr, 0, 4);
    gpu_upload(&env, dtable, table, 4 * (size_t)batch * max_pages);
    mobagen_kv_cache cache = {.n_pages = n_pages, .page_size = ps, .max_pages = max_pages, .hkv = hkv,
                              .head_dim = d, .dtype = c->dtype, .k_pages = dkp, .v_pages = dv, .kraw_pages = dkr,
                              .centroid_sum = dcent, .page_table = dtable, .seq_lens = dlens, .error = derr};
    cu_deviceptr dw = wn ? gpu_alloc(&env, 2 * wn) : 0;
    if (wn) gpu_upload(&env, dw, w, 2 * wn);
    /* staging for one step's rows (at most every token) */
    cu_deviceptr dk = gpu_alloc(&env, 2 * kn + 16), dvn = gpu_alloc(&env, 2 * kn + 16);
    cu_deviceptr dq = gpu_alloc(&env, 2 * qn + 16), dout = gpu_alloc(&env, 2 * qn + 16);
    cu_deviceptr dlse = gpu_alloc(&env, 4 * (size_t)total * hq + 16);
    cu_deviceptr dsel = gpu_alloc(&env, 4 * (size_t)total * hq * c->k + 16), dcu = gpu_alloc(&env, 4 * (batch + 1));
    /* decoded rows' GPU answers, by absolute token row, for the forward comparison */
    uint16_t *dec_o = xcalloc(qn, 2);
    float *dec_lse = xcalloc((size_t)total * hq, 4);
    int *dec_sel = xcalloc((size_t)total * hq * c->k, sizeof(int));
    char *decoded_row = xcalloc((size_t)total, 1);

    int pos[MAX_SEQS];   /* tokens appended so far */
    int step_max = 0;
    for (int b = 0; b < batch; b++) {
        pos[b] = 0;
        if (c->lens[b] - c->decoded[b] > step_max) step_max = c->lens[b] - c->decoded[b];
    }
    size_t ws_bytes = 0;
    cu_deviceptr ws = 0;
    for (int step = 0;; step++) {
        /* step 0 prefills; then each sequence takes 0..max_chunk of its decoded tokens */
        int cu_new[MAX_SEQS + 1] = {0}, from[MAX_SEQS], max_new = 0, any = 0;
        for (int b = 0; b < batch; b++) {
            int left = c->lens[b] - pos[b], n;
            if (step == 0) n = c->lens[b] - c->decoded[b];
            else {
                n = (int)(rng_next(&r) % (uint64_t)(c->max_chunk + 1));
                if (step % 3 == 1 && left > 0 && n == 0) n = 1;
                if (n > left) n = left;
            }
            from[b] = pos[b];
            cu_new[b + 1] = cu_new[b] + n;
            if (n > max_new) max_new = n;
            any |= left > 0;
        }
        if (step > 0 && !any) break;
        const int tn = cu_new[batch];
        /* gather the step's k, v (and q) rows */
        uint16_t *sk = xcalloc((size_t)tn * hkv * d, 2), *sv = xcalloc((size_t)tn * hkv * d, 2);
        uint16_t *sq = xcalloc((size_t)tn * hq * d, 2);
        double *skd = xcalloc((size_t)tn * hkv * d, 8), *svd = xcalloc((size_t)tn * hkv * d, 8);
        double *sqd = xcalloc((size_t)tn * hq * d, 8);
        for (int b = 0; b < batch; b++) {
            size_t n = (size_t)(cu_new[b + 1] - cu_new[b]), src = (size_t)(cu[b] + from[b]), dst = (size_t)cu_new[b];
            memcpy(sk + dst * hkv * d, k + src * hkv * d, 2 * n * hkv * d);
            memcpy(sv + dst * hkv * d, v + src * hkv * d, 2 * n * hkv * d);
            memcpy(sq + dst * hq * d, q + src * hq * d, 2 * n * hq * d);
            memcpy(skd + dst * hkv * d, kd + src * hkv * d, 8 * n * hkv * d);
            memcpy(svd + dst * hkv * d, vd + src * hkv * d, 8 * n * hkv * d);
            memcpy(sqd + dst * hq * d, qd + src * hq * d, 8 * n * hq * d);
        }
        gpu_upload(&env, dk, sk, 2 * (size_t)tn * hkv * d);
        gpu_upload(&env, dvn, sv, 2 * (size_t)tn * hkv * d);
        gpu_upload(&env, dq, sq, 2 * (size_t)tn * hq * d);
        gpu_upload(&env, dcu, cu_new, 4 * (batch + 1));
        moba_ref_cfg acfg = cfg;
        acfg.cu_seqlens_k = acfg.cu_seqlens_q = cu_new;
        assert_int_equal(moba_ref_decode_append(&acfg, &rc, skd, svd, wd), 0);
        if (c->W) round_ref_cache(c, &cfg, &rc, max_blocks);
        mobagen_append_args aa = {.batch = batch, .max_new = max_new, .total_new = tn, .k = tn ? dk : 0,
                                  .v = tn ? dvn : 0, .cu_seqlens_new = dcu, .conv_weight = dw};
        if (mobagen_append(op, &cache, &aa, NULL) != MOBAGEN_OK)
            fail_msg("%s step %d: mobagen_append: %s", c->label, step, mobagen_op_errmsg(op));
        for (int b = 0; b < batch; b++) pos[b] += cu_new[b + 1] - cu_new[b];
        if (step > 0 && tn > 0) {
            mobagen_decode_args da = {.batch = batch, .hq = hq, .max_q_len = c->max_chunk, .total_q = tn,
                                      .max_seqlen = longest, .q = dq, .out = dout, .lse = dlse, .sel = dsel,
                                      .cu_seqlens_q = dcu};
            size_t need;
            if (mobagen_decode_workspace_size(op, &cache, &da, &need) != MOBAGEN_OK)
                fail_msg("%s: workspace: %s", c->label, mobagen_op_errmsg(op));
            if (need > ws_bytes) {
                if (ws) gpu_free(&env, ws);
                ws = gpu_alloc(&env, need);
                ws_bytes = need;
            }
            gpu_fill32(&env, dout, POISON, 2 * (size_t)tn * hq * d);
            gpu_fill32(&env, dlse, POISON, 4 * (size_t)tn * hq);
            gpu_fill32(&env, dsel, POISON, 4 * (size_t)tn * hq * c->k);
            gpu_fill32(&env, ws, 0x7fc00001u, ws_bytes);
            if (mobagen_decode(op, &cache, &da, ws, ws_bytes, NULL) != MOBAGEN_OK)
                fail_msg("%s step %d: mobagen_decode: %s", c->label, step, mobagen_op_errmsg(op));
            uint16_t *go = xcalloc((size_t)tn * hq * d, 2);
            float *gl = xcalloc((size_t)tn * hq, 4);
            int *gs = xcalloc((size_t)tn * hq * c->k, sizeof(int));
            gpu_sync(&env);
            gpu_download(&env, go, dout, 2 * (size_t)tn * hq * d);
            gpu_download(&env, gl, dlse, 4 * (size_t)tn * hq);
            gpu_download(&env, gs, dsel, 4 * (size_t)tn * hq * c->k);
            double *ro = xcalloc((size_t)tn * hq * d, 8), *rl = xcalloc((size_t)tn * hq, 8);
            int *rs = xcalloc((size_t)tn * hq * c->k, sizeof(int));
            assert_int_equal(moba_ref_decode(&acfg, &rc, sqd, ro, rl, rs), 0);
            for (int b = 0; b < batch; b++)
                for (int row = cu_new[b]; row < cu_new[b + 1]; row++)
                    for (int h = 0; h < hq; h++) {
                        size_t at = (size_t)row * hq + h;
                        char what[256];
                        snprintf(what, sizeof what, "%s step %d seq %d row %d head %d", c->label, step, b,
                                 row - cu_new[b], h);
                        int sw = check_sel(c, &cfg, &rc, sqd + at * d, b, h, gs + at * c->k, rs + at * c->k, what);
                        st->swaps += sw;
                        st->rows++;
                        double e2 = 0, r2 = 0;
                        for (int i = 0; i < d; i++) {
                            float g = gpu_from_elem(c->dtype, go[at * d + i]);
                            if (isnan(g)) fail_msg("%s: o[%d] not written", what, i);
                            e2 += (g - ro[at * d + i]) * (g - ro[at * d + i]);
                            r2 += ro[at * d + i] * ro[at * d + i];
                        }
                        if (isnan(gl[at])) fail_msg("%s: lse not written", what);
                        if (sw) continue;   /* another (tied) block: another output */
                        double oe = sqrt(e2 / (r2 > 0 ? r2 : 1)), le = fabs(gl[at] - rl[at]) / fmax(1, fabs(rl[at]));
                        if (oe > (c->dtype == MG_BF16 ? 1.5e-2 : 3e-3)) fail_msg("%s: o error %.3g", what, oe);
                        if (le > (c->W ? 1e-3 : 2e-4)) fail_msg("%s: lse %.7g, reference %.7g", what, gl[at], rl[at]);
                        st->o_err = fmax(st->o_err, oe);
                        st->lse_err = fmax(st->lse_err, le);
                    }
            /* keep the GPU's answers by absolute row for the forward comparison */
            for (int b = 0; b < batch; b++)
                for (int row = cu_new[b]; row < cu_new[b + 1]; row++) {
                    size_t abs_row = (size_t)(cu[b] + from[b] + row - cu_new[b]);
                    decoded_row[abs_row] = 1;
                    memcpy(dec_o + abs_row * hq * d, go + (size_t)row * hq * d, 2 * (size_t)hq * d);
                    memcpy(dec_lse + abs_row * hq, gl + (size_t)row * hq, 4 * (size_t)hq);
                    memcpy(dec_sel + abs_row * hq * c->k, gs + (size_t)row * hq * c->k, 4 * (size_t)hq * c->k);
                }
            free(go); free(gl); free(gs); free(ro); free(rl); free(rs);
        }
        free(sk); free(sv); free(sq); free(skd); free(svd); free(sqd);
    }
    int err_bits = -1;
    assert_int_equal(mobagen_kv_cache_check(op, &cache, NULL, &err_bits), MOBAGEN_OK);
    assert_int_equal(err_bits, 0);

    /* the cache: lengths, centroid sums of every block in use, pages of every token */
    int *glens = xcalloc((size_t)batch, sizeof(int));
    float *gcent = xcalloc(cn, 4);
    uint16_t *gkp = xcalloc(pool, 2);
    gpu_download(&env, glens, dlens, 4 * (size_t)batch);
    gpu_download(&env, gcent, dcent, 4 * cn);
    gpu_download(&env, gkp, dkp, 2 * pool);
    for (int b = 0; b < batch; b++) {
        assert_int_equal(glens[b], c->lens[b]);
        for (int j = 0; j * c->B < c->lens[b]; j++)
            for (int h = 0; h < hkv; h++)
                for (int i = 0; i < d; i++) {
                    size_t at = (((size_t)b * max_blocks + j) * hkv + h) * d + i;
                    double e = fabs(gcent[at] - rc.centroid_sum[at]) / (1 + fabs(rc.centroid_sum[at]));
                    /* with a conv, an element of k' may round the other way in fp32 than in double */
                    if (isnan(gcent[at]) || e > (c->W ? 1e-2 : 1e-4))
                        fail_msg("%s: centroid sum seq %d block %d head %d dim %d: %g, reference %g", c->label, b,
                                 j, h, i, gcent[at], rc.centroid_sum[at]);
                    st->cent_err = fmax(st->cent_err, e);
                }
        for (int t = 0; t < c->lens[b]; t++)
            for (int h = 0; h < hkv; h++) {
                const double *want = moba_ref_paged_row(&cfg, &rc, rc.kprime_pages, b, t, h);
                size_t at = (size_t)(want - rc.kprime_pages);
                for (int i = 0; i < d; i++) {
                    float g = gpu_from_elem(c->dtype, gkp[at + i]);
                    /* one rounding step apart at most: fp32 on the GPU, double here */
                    if (!(fabs(g - want[i]) <= 8e-3 * (1 + fabs(want[i]))))
                        fail_msg("%s: k' of seq %d token %d head %d dim %d: %g, reference %g", c->label, b, t, h, i,
                                 g, want[i]);
                }
            }
    }

    /* the forward over the whole sequences: the decoded rows must agree */
    {
        cu_deviceptr fq = gpu_alloc(&env, 2 * qn), fk = gpu_alloc(&env, 2 * kn), fv = gpu_alloc(&env, 2 * kn);
        cu_deviceptr fo = gpu_alloc(&env, 2 * qn), fl = gpu_alloc(&env, 4 * (size_t)total * hq);
        cu_deviceptr fcu = gpu_alloc(&env, 4 * (batch + 1));
        gpu_upload(&env, fq, q, 2 * qn);
        gpu_upload(&env, fk, k, 2 * kn);
        gpu_upload(&env, fv, v, 2 * kn);
        gpu_upload(&env, fcu, cu, 4 * (batch + 1));
        gpu_fill32(&env, fo, POISON, 2 * qn);
        mobagen_fwd_args fa = {.batch = batch, .hq = hq, .hkv = hkv, .head_dim = d, .total_q = total,
                               .total_k = total, .max_seqlen_q = longest, .max_seqlen_k = longest,
                               .dtype = c->dtype, .q = fq, .k = fk, .v = fv, .out = fo, .cu_seqlens_q = fcu,
                               .cu_seqlens_k = fcu, .conv_weight = dw, .lse = fl};
        size_t fws_bytes;
        assert_int_equal(mobagen_fwd_workspace_size(op, &fa, &fws_bytes), MOBAGEN_OK);
        cu_deviceptr fws = gpu_alloc(&env, fws_bytes);
        if (mobagen_fwd(op, &fa, fws, fws_bytes, NULL) != MOBAGEN_OK)
            fail_msg("%s: mobagen_fwd: %s", c->label, mobagen_op_errmsg(op));
        gpu_sync(&env);
        uint16_t *fo_h = xcalloc(qn, 2);
        float *fl_h = xcalloc((size_t)total * hq, 4);
        int *fs_h = xcalloc((size_t)total * hq * c->k, sizeof(int));
        gpu_download(&env, fo_h, fo, 2 * qn);
        gpu_download(&env, fl_h, fl, 4 * (size_t)total * hq);
        gpu_download(&env, fs_h, mobagen_fwd_selection(op, &fa, fws), 4 * (size_t)total * hq * c->k);
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < c->lens[b]; t++) {
                size_t row = (size_t)(cu[b] + t);
                if (!decoded_row[row]) continue;
                for (int h = 0; h < hq; h++) {
                    size_t at = row * hq + h;
                    char what[256];
                    snprintf(what, sizeof what, "%s vs forward: seq %d token %d head %d", c->label, b, t, h);
                    int sw = check_sel(c, &cfg, &rc, qd + at * d, b, h, dec_sel + at * c->k, fs_h + at * c->k, what);
                    st->fwd_swaps += sw;
                    st->fwd_rows++;
                    if (sw) continue;
                    double e2 = 0, r2 = 0;
                    for (int i = 0; i < d; i++) {
                        double g = gpu_from_elem(c->dtype, dec_o[at * d + i]), f = gpu_from_elem(c->dtype, fo_h[at * d + i]);
                        e2 += (g - f) * (g - f);
                        r2 += f * f;
                    }
                    double oe = sqrt(e2 / (r2 > 0 ? r2 : 1)), le = fabs(dec_lse[at] - fl_h[at]) / fmax(1, fabs(fl_h[at]));
                    if (oe > (c->dtype == MG_BF16 ? 1.5e-2 : 3e-3)) fail_msg("%s: o differs by %.3g", what, oe);
                    if (le > 2e-4) fail_msg("%s: lse %.7g, forward %.7g", what, dec_lse[at], fl_h[at]);
                    st->fwd_o_err = fmax(st->fwd_o_err, oe);
                    st->fwd_lse_err = fmax(st->fwd_lse_err, le);
                }
            }
        free(fo_h); free(fl_h); free(fs_h);
        gpu_free(&env, fq); gpu_free(&env, fk); gpu_free(&env, fv); gpu_free(&env, fo); gpu_free(&env, fl);
        gpu_free(&env, fcu); gpu_free(&env, fws);
    }
    printf("  %-28s rows %lld swaps %lld |o-ref| %.2e lse %.2e | vs fwd rows %lld swaps %lld |o| %.2e lse %.2e | "
           "centroids %.2e\n", c->label, st->rows, st->swaps, st->o_err, st->lse_err, st->fwd_rows, st->fwd_swaps,
           st->fwd_o_err, st->fwd_lse_err, st->cent_err);
    /* ties are rare with continuous inputs: a few swaps, not a systematic difference */
    assert_true(st->swaps * 20 <= st->rows * hq / hq + 20);
    assert_true(st->fwd_swaps * 20 <= st->fwd_rows + 20);

    free(glens); free(gcent); free(gkp);
    gpu_free(&env, dkp); gpu_free(&env, dv); gpu_free(&env, dkr); gpu_free(&env, dcent); gpu_free(&env, dtable);
    gpu_free(&env, dlens); gpu_free(&env, derr); gpu_free(&env, dw); gpu_free(&env, dk); gpu_free(&env, dvn);
    gpu_free(&env, dq); gpu_free(&env, dout); gpu_free(&env, dlse); gpu_free(&env, dsel); gpu_free(&env, dcu);
    if (ws) gpu_free(&env, ws);
    free(q); free(k); free(v); free(w); free(qd); free(kd); free(vd); free(wd); free(perm); free(table);
    free(rc.kraw_pages); free(rc.kprime_pages); free(rc.v_pages); free(rc.seq_lens); free(rc.centroid_sum);
    free(dec_o); free(dec_lse); free(dec_sel); free(decoded_row);
    mobagen_op_destroy(op);
}

static uint64_t test_seed(void)
{
    const char *s = getenv("MOBAGEN_TEST_SEED");
    return s ? strtoull(s, NULL, 0) : 0xdec00000ull ^ (uint64_t)time(NULL);
}

/* MOBAGEN_TEST_CASE=text runs only the cases whose label contains text. */
static int case_wanted(const dec_case *c)
{
    const char *only = getenv("MOBAGEN_TEST_CASE");
    return !only || strstr(c->label, only) != NULL;
}

static void test_against_reference_and_forward(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed();
    printf("seed 0x%llx\n", (unsigned long long)seed);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!case_wanted(&cases[i])) continue;
        stats s;
        run_case(&cases[i], seed + i, &s);
        assert_true(s.rows > 0);
    }
}

/* ---- truncate (speculative rollback) --------------------------------------------------------- */

typedef struct gpu_cache {
    mobagen_kv_cache c;
    size_t pool, cent;
} gpu_cache;

static void gpu_cache_alloc(gpu_cache *g, const dec_case *c, int n_pages, int max_pages, int max_blocks,
                            cu_deviceptr table)
{
    g->pool = (size_t)n_pages * c->page_size * c->hkv * c->d;
    g->cent = (size_t)c->batch * max_blocks * c->hkv * c->d;
    g->c = (mobagen_kv_cache){.n_pages = n_pages, .page_size = c->page_size, .max_pages = max_pages, .hkv = c->hkv,
                              .head_dim = c->d, .dtype = c->dtype, .k_pages = gpu_alloc(&env, 2 * g->pool),
                              .v_pages = gpu_alloc(&env, 2 * g->pool),
                              .kraw_pages = c->W ? gpu_alloc(&env, 2 * g->pool) : 0,
                              .centroid_sum = gpu_alloc(&env, 4 * g->cent), .page_table = table,
                              .seq_lens = gpu_alloc(&env, 4 * (size_t)c->batch), .error = gpu_alloc(&env, 4)};
    gpu_fill32(&env, g->c.k_pages, POISON, 2 * g->pool);
    gpu_fill32(&env, g->c.v_pages, POISON, 2 * g->pool);
    if (c->W) gpu_fill32(&env, g->c.kraw_pages, POISON, 2 * g->pool);
    gpu_fill32(&env, g->c.centroid_sum, POISON, 4 * g->cent);
    gpu_fill32(&env, g->c.seq_lens, 0, 4 * (size_t)c->batch);
    gpu_fill32(&env, g->c.error, 0, 4);
}

static void gpu_cache_free(gpu_cache *g)
{
    gpu_free(&env, g->c.k_pages); gpu_free(&env, g->c.v_pages); gpu_free(&env, g->c.kraw_pages);
    gpu_free(&env, g->c.centroid_sum); gpu_free(&env, g->c.seq_lens); gpu_free(&env, g->c.error);
}

/* Appends rows (host, [n][hkv][d] elements) with per-sequence counts. */
static void gpu_append_rows(mobagen_op *op, gpu_cache *g, const dec_case *c, const uint16_t *k, const uint16_t *v,
                            const int *cu_new, cu_deviceptr dk, cu_deviceptr dv, cu_deviceptr dcu, cu_deviceptr dw)
{
    int max_new = 0;
    for (int b = 0; b < c->batch; b++)
        if (cu_new[b + 1] - cu_new[b] > max_new) max_new = cu_new[b + 1] - cu_new[b];
    const size_t row = (size_t)c->hkv * c->d, tn = (size_t)cu_new[c->batch];
    gpu_upload(&env, dk, k, 2 * tn * row);
    gpu_upload(&env, dv, v, 2 * tn * row);
    gpu_upload(&env, dcu, cu_new, 4 * (size_t)(c->batch + 1));
    mobagen_append_args aa = {.batch = c->batch, .max_new = max_new, .total_new = (int)tn, .k = tn ? dk : 0,
                              .v = tn ? dv : 0, .cu_seqlens_new = dcu, .conv_weight = dw};
    if (mobagen_append(op, &g->c, &aa, NULL) != MOBAGEN_OK) fail_msg("%s: append: %s", c->label, mobagen_op_errmsg(op));
}

/* Rows of sequence b's element data at positions < len, through the page table, of two caches. */
static void expect_same_cache(const dec_case *c, gpu_cache *a, gpu_cache *b, const int *table, int max_pages,
                              int max_blocks, const char *what)
{
    int *la = xcalloc((size_t)c->batch, sizeof(int)), *lb = xcalloc((size_t)c->batch, sizeof(int));
    uint32_t *ca = xcalloc(a->cent, 4), *cb = xcalloc(a->cent, 4);
    uint16_t *pa = xcalloc(a->pool, 2), *pb = xcalloc(a->pool, 2);
    gpu_sync(&env);
    gpu_download(&env, la, a->c.seq_lens, 4 * (size_t)c->batch);
    gpu_download(&env, lb, b->c.seq_lens, 4 * (size_t)c->batch);
    gpu_download(&env, ca, a->c.centroid_sum, 4 * a->cent);
    gpu_download(&env, cb, b->c.centroid_sum, 4 * a->cent);
    const size_t row = (size_t)c->hkv * c->d;
    for (int s = 0; s < c->batch; s++) {
        if (la[s] != lb[s]) fail_msg("%s: seq %d holds %d tokens, %d wanted", what, s, la[s], lb[s]);
        /* bit for bit: the kept blocks' sums were added in the same order */
        for (int j = 0; j * c->B < la[s]; j++) {
            size_t at = ((size_t)s * max_blocks + j) * row;
            for (size_t i = 0; i < row; i++)
                if (ca[at + i] != cb[at + i])
                    fail_msg("%s: centroid sum seq %d block %d element %zu: 0x%08x, never appended 0x%08x", what, s,
                             j, i, ca[at + i], cb[at + i]);
        }
    }
    const mobagen_devptr pools[3][2] = {{a->c.k_pages, b->c.k_pages}, {a->c.v_pages, b->c.v_pages},
                                        {a->c.kraw_pages, b->c.kraw_pages}};
    static const char *const names[3] = {"k'", "v", "raw k"};
    for (int pool = 0; pool < (c->W ? 3 : 2); pool++) {
        gpu_download(&env, pa, pools[pool][0], 2 * a->pool);
        gpu_download(&env, pb, pools[pool][1], 2 * a->pool);
        for (int s = 0; s < c->batch; s++)
            for (int t = 0; t < la[s]; t++) {
                size_t at = ((size_t)table[s * max_pages + t / c->page_size] * c->page_size + t % c->page_size) * row;
                if (memcmp(pa + at, pb + at, 2 * row))
                    fail_msg("%s: %s of seq %d token %d differs from never appending the dropped tokens", what,
                             names[pool], s, t);
            }
    }
    free(la); free(lb); free(ca); free(cb); free(pa); free(pb);
}

/* Prefill, then steps of real tokens followed by drafts, appended and decoded together (the
 * verification step), then truncated: the drafts always, sometimes real tokens too (across
 * blocks, now and then the whole sequence), re-appended in later steps. Drop counts and new
 * lengths alternate. At the end the cache equals, bit for bit, a cache that got only the kept
 * tokens in one prefill, and decodes the same; bad drops are flagged and change nothing. */
static void run_truncate_case(const dec_case *c, uint64_t seed)
{
    mobagen_op *op = make_op(c);
    rng r = rng_seeded(seed, 7);
    const int d = c->d, hkv = c->hkv, hq = hkv * c->gqa, batch = c->batch, ps = c->page_size;
    const int max_q = DECODE_ROWS_MAX / c->gqa < 4 ? DECODE_ROWS_MAX / c->gqa : 4;
    const size_t row = (size_t)hkv * d, qrow = (size_t)hq * d;
    int longest = 0, cu[MAX_SEQS + 1] = {0};
    for (int b = 0; b < batch; b++) {
        cu[b + 1] = cu[b] + c->lens[b];
        if (c->lens[b] > longest) longest = c->lens[b];
    }
    const int total = cu[batch];
    uint16_t *k = xcalloc((size_t)total * row, 2), *v = xcalloc((size_t)total * row, 2);
    uint16_t *w = xcalloc((size_t)hkv * c->W * d + 1, 2);
    for (size_t i = 0; i < (size_t)total * row; i++) {
        k[i] = gpu_to_elem(c->dtype, (float)rng_normal(&r));
        v[i] = gpu_to_elem(c->dtype, (float)rng_normal(&r));
    }
    for (size_t i = 0; i < (size_t)hkv * c->W * d; i++) w[i] = gpu_to_elem(c->dtype, (float)(0.5 * rng_normal(&r)));
    /* pages for every token plus room for drafts; shuffled */
    const int slack = 8;
    int max_pages = (longest + slack + ps - 1) / ps + 1, n_pages = batch * max_pages;
    int *table = xcalloc((size_t)batch * max_pages, sizeof(int)), *perm = xcalloc((size_t)n_pages, sizeof(int));
    for (int i = 0; i < n_pages; i++) perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)(rng_next(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(table, perm, sizeof(int) * (size_t)n_pages);
    const int max_blocks = (max_pages * ps + c->B - 1) / c->B;
    cu_deviceptr dtable = gpu_alloc(&env, 4 * (size_t)n_pages);
    gpu_upload(&env, dtable, table, 4 * (size_t)n_pages);
    gpu_cache spec, plain;
    gpu_cache_alloc(&spec, c, n_pages, max_pages, max_blocks, dtable);
    gpu_cache_alloc(&plain, c, n_pages, max_pages, max_blocks, dtable);
    const size_t most_rows = (size_t)total + (size_t)batch * 8;
    cu_deviceptr dk = gpu_alloc(&env, 2 * most_rows * row + 16), dv = gpu_alloc(&env, 2 * most_rows * row + 16);
    cu_deviceptr dq = gpu_alloc(&env, 2 * most_rows * qrow + 16), dout = gpu_alloc(&env, 2 * most_rows * qrow + 16);
    cu_deviceptr dlse = gpu_alloc(&env, 4 * most_rows * hq + 16), dcu = gpu_alloc(&env, 4 * (batch + 1));
    cu_deviceptr ddrop = gpu_alloc(&env, 4 * (size_t)batch);
    cu_deviceptr dw = c->W ? gpu_alloc(&env, 2 * (size_t)hkv * c->W * d) : 0;
    if (dw) gpu_upload(&env, dw, w, 2 * (size_t)hkv * c->W * d);
    uint16_t *sk = xcalloc(most_rows * row, 2), *sv = xcalloc(most_rows * row, 2), *sq = xcalloc(most_rows * qrow, 2);
    int held[MAX_SEQS], cu_new[MAX_SEQS + 1] = {0}, drop[MAX_SEQS];
    /* prefill half of each sequence */
    for (int b = 0; b < batch; b++) {
        held[b] = c->lens[b] / 2;
        cu_new[b + 1] = cu_new[b] + held[b];
        memcpy(sk + (size_t)cu_new[b] * row, k + (size_t)cu[b] * row, 2 * (size_t)held[b] * row);
        memcpy(sv + (size_t)cu_new[b] * row, v + (size_t)cu[b] * row, 2 * (size_t)held[b] * row);
    }
    gpu_append_rows(op, &spec, c, sk, sv, cu_new, dk, dv, dcu, dw);
    size_t ws_bytes = 0;
    cu_deviceptr ws = 0;
    int steps = 0, dropped = 0, crossed = 0, zeroed = 0;
    for (int step = 0; step < 40; step++) {
        int any = 0, keep[MAX_SEQS], junk[MAX_SEQS];
        for (int b = 0; b < batch; b++) {
            int left = c->lens[b] - held[b];
            keep[b] = (int)(rng_next(&r) % (uint64_t)((left < max_q ? left : max_q) + 1));
            junk[b] = (int)(rng_next(&r) % (uint64_t)(max_q - keep[b] + 1));
            cu_new[b + 1] = cu_new[b] + keep[b] + junk[b];
            for (int i = 0; i < keep[b] + junk[b]; i++) {
                size_t dst = (size_t)cu_new[b] + i, src = (size_t)cu[b] + held[b] + i;
                for (size_t x = 0; x < row; x++) {
                    sk[dst * row + x] = i < keep[b] ? k[src * row + x] : gpu_to_elem(c->dtype, (float)(3 * rng_normal(&r)));
                    sv[dst * row + x] = i < keep[b] ? v[src * row + x] : gpu_to_elem(c->dtype, (float)rng_normal(&r));
                }
                for (size_t x = 0; x < qrow; x++) sq[dst * qrow + x] = gpu_to_elem(c->dtype, (float)rng_normal(&r));
            }
            any |= left > 0;
        }
        if (!any) break;
        steps++;
        gpu_append_rows(op, &spec, c, sk, sv, cu_new, dk, dv, dcu, dw);
        /* the verification step: decode every appended row */
        const int tn = cu_new[batch];
        if (tn > 0) {
            gpu_upload(&env, dq, sq, 2 * (size_t)tn * qrow);
            mobagen_decode_args da = {.batch = batch, .hq = hq, .max_q_len = max_q, .total_q = tn,
                                      .max_seqlen = longest + slack, .q = dq, .out = dout, .lse = dlse,
                                      .cu_seqlens_q = dcu};
            size_t need;
            assert_int_equal(mobagen_decode_workspace_size(op, &spec.c, &da, &need), MOBAGEN_OK);
            if (need > ws_bytes) {
                if (ws) gpu_free(&env, ws);
                ws = gpu_alloc(&env, ws_bytes = need);
            }
            if (mobagen_decode(op, &spec.c, &da, ws, ws_bytes, NULL) != MOBAGEN_OK)
                fail_msg("%s: decode: %s", c->label, mobagen_op_errmsg(op));
        }
        /* reject the drafts; sometimes real tokens too */
        int new_len[MAX_SEQS];
        for (int b = 0; b < batch; b++) {
            int len = held[b] + keep[b] + junk[b], back = 0;
            if (step < 25 && rng_next(&r) % 4 == 0) back = (int)(rng_next(&r) % (uint64_t)(2 * c->B + 2));
            if (step < 25 && rng_next(&r) % 16 == 0) back = len;
            if (back > held[b] + keep[b]) back = held[b] + keep[b];
            drop[b] = junk[b] + back;
            new_len[b] = len - drop[b];
            held[b] = new_len[b];
            dropped += drop[b];
            crossed += drop[b] > 0 && (len - 1) / c->B != new_len[b] / c->B;
            zeroed += len > 0 && new_len[b] == 0;
        }
        mobagen_truncate_args ta = {.batch = batch};
        if (step % 2) {
            gpu_upload(&env, ddrop, drop, 4 * (size_t)batch);
            ta.drop = ddrop;
        } else {
            gpu_upload(&env, ddrop, new_len, 4 * (size_t)batch);
            ta.new_lens = ddrop;
        }
        if (mobagen_kv_truncate(op, &spec.c, &ta, NULL) != MOBAGEN_OK)
            fail_msg("%s: truncate: %s", c->label, mobagen_op_errmsg(op));
    }
    int bits = -1;
    if (mobagen_kv_cache_check(op, &spec.c, NULL, &bits) != MOBAGEN_OK)
        fail_msg("%s: device errors after the steps: %s", c->label, mobagen_op_errmsg(op));
    /* the cache that never saw a draft: one prefill of the kept tokens */
    for (int b = 0; b < batch; b++) {
        cu_new[b + 1] = cu_new[b] + held[b];
        memcpy(sk + (size_t)cu_new[b] * row, k + (size_t)cu[b] * row, 2 * (size_t)held[b] * row);
        memcpy(sv + (size_t)cu_new[b] * row, v + (size_t)cu[b] * row, 2 * (size_t)held[b] * row);
    }
    gpu_append_rows(op, &plain, c, sk, sv, cu_new, dk, dv, dcu, dw);
    char what[200];
    snprintf(what, sizeof what, "%s after %d speculative steps", c->label, steps);
    expect_same_cache(c, &spec, &plain, table, max_pages, max_blocks, what);

    /* both append the rest of the sequences (the conv reads the kept raw keys) and decode it alike */
    int rows_left = 0;
    for (int b = 0; b < batch; b++) {
        int n = c->lens[b] - held[b];
        cu_new[b + 1] = cu_new[b] + n;
        memcpy(sk + (size_t)cu_new[b] * row, k + ((size_t)cu[b] + held[b]) * row, 2 * (size_t)n * row);
        memcpy(sv + (size_t)cu_new[b] * row, v + ((size_t)cu[b] + held[b]) * row, 2 * (size_t)n * row);
        rows_left += n;
    }
    gpu_append_rows(op, &spec, c, sk, sv, cu_new, dk, dv, dcu, dw);
    gpu_append_rows(op, &plain, c, sk, sv, cu_new, dk, dv, dcu, dw);
    expect_same_cache(c, &spec, &plain, table, max_pages, max_blocks, c->label);
    {
        int one[MAX_SEQS + 1] = {0};
        for (int b = 0; b < batch; b++) one[b + 1] = one[b] + (c->lens[b] > 0);
        const int tn = one[batch];
        for (size_t x = 0; x < (size_t)tn * qrow; x++) sq[x] = gpu_to_elem(c->dtype, (float)rng_normal(&r));
        gpu_upload(&env, dq, sq, 2 * (size_t)tn * qrow);
        gpu_upload(&env, dcu, one, 4 * (size_t)(batch + 1));
        uint16_t *o[2];
        float *l[2];
        gpu_cache *both[2] = {&spec, &plain};
        for (int i = 0; i < 2; i++) {
            mobagen_decode_args da = {.batch = batch, .hq = hq, .max_q_len = 1, .total_q = tn,
                                      .max_seqlen = longest + slack, .q = dq, .out = dout, .lse = dlse,
                                      .cu_seqlens_q = dcu};
            size_t need;
            assert_int_equal(mobagen_decode_workspace_size(op, &both[i]->c, &da, &need), MOBAGEN_OK);
            if (need > ws_bytes) {
                if (ws) gpu_free(&env, ws);
                ws = gpu_alloc(&env, ws_bytes = need);
            }
            gpu_fill32(&env, dout, POISON, 2 * (size_t)tn * qrow);
            assert_int_equal(mobagen_decode(op, &both[i]->c, &da, ws, ws_bytes, NULL), MOBAGEN_OK);
            o[i] = xcalloc((size_t)tn * qrow, 2);
            l[i] = xcalloc((size_t)tn * hq, 4);
            gpu_sync(&env);
            gpu_download(&env, o[i], dout, 2 * (size_t)tn * qrow);
            gpu_download(&env, l[i], dlse, 4 * (size_t)tn * hq);
        }
        for (size_t x = 0; x < (size_t)tn * qrow; x++)
            if (isnan(gpu_from_elem(c->dtype, o[0][x]))) fail_msg("%s: o[%zu] not written", c->label, x);
        if (memcmp(o[0], o[1], 2 * (size_t)tn * qrow) || memcmp(l[0], l[1], 4 * (size_t)tn * hq))
            fail_msg("%s: the decode after truncations differs from the never-appended cache's", c->label);
        free(o[0]); free(o[1]); free(l[0]); free(l[1]);
    }

    /* bad drops: flagged, nothing changes */
    {
        int *lens_before = xcalloc((size_t)batch, sizeof(int)), *lens_after = xcalloc((size_t)batch, sizeof(int));
        uint32_t *cent_before = xcalloc(spec.cent, 4), *cent_after = xcalloc(spec.cent, 4);
        gpu_sync(&env);
        gpu_download(&env, lens_before, spec.c.seq_lens, 4 * (size_t)batch);
        gpu_download(&env, cent_before, spec.c.centroid_sum, 4 * spec.cent);
        for (int b = 0; b < batch; b++) drop[b] = b % 2 ? -1 : lens_before[b] + 1;
        gpu_upload(&env, ddrop, drop, 4 * (size_t)batch);
        mobagen_truncate_args ta = {.batch = batch, .drop = ddrop};
        assert_int_equal(mobagen_kv_truncate(op, &spec.c, &ta, NULL), MOBAGEN_OK);
        assert_int_equal(mobagen_kv_cache_check(op, &spec.c, NULL, &bits), MOBAGEN_E_ARG);
        assert_int_equal(bits, MOBAGEN_KV_E_DROP);
        assert_non_null(strstr(mobagen_op_errmsg(op), "truncation"));
        gpu_download(&env, lens_after, spec.c.seq_lens, 4 * (size_t)batch);
        gpu_download(&env, cent_after, spec.c.centroid_sum, 4 * spec.cent);
        assert_memory_equal(lens_before, lens_after, 4 * (size_t)batch);
        assert_memory_equal(cent_before, cent_after, 4 * spec.cent);
        free(lens_before); free(lens_after); free(cent_before); free(cent_after);
    }
    printf("  %-28s %d steps, %d tokens dropped, %d rollbacks across a block, %d to zero: cache and decode equal "
           "to never appending them\n", c->label, steps, dropped, crossed, zeroed);
    assert_true(dropped > 0);

    gpu_cache_free(&spec);
    gpu_cache_free(&plain);
    gpu_free(&env, dtable); gpu_free(&env, dk); gpu_free(&env, dv); gpu_free(&env, dq); gpu_free(&env, dout);
    gpu_free(&env, dlse); gpu_free(&env, dcu); gpu_free(&env, ddrop); gpu_free(&env, dw);
    if (ws) gpu_free(&env, ws);
    free(k); free(v); free(w); free(table); free(perm); free(sk); free(sv); free(sq);
    mobagen_op_destroy(op);
}

static void test_truncate_equals_never_appended(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed();
    printf("seed 0x%llx\n", (unsigned long long)seed);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!case_wanted(&cases[i])) continue;
        if (cases[i].lens[0] > 4000) continue;   /* the long case adds time, not coverage */
        run_truncate_case(&cases[i], seed + 100 + i);
    }
}

/* Device-side checks: a page table entry outside the pool is flagged, not written through. */
static void test_device_errors(void **state)
{
    if (!have_device) skip();
    const dec_case *c = &cases[0];
    mobagen_op *op = make_op(c);
    int d = c->d, hkv = c->hkv, ps = 16;
    cu_deviceptr pages = gpu_alloc(&env, 2 * (size_t)4 * ps * hkv * d), vpages = gpu_alloc(&env, 2 * (size_t)4 * ps * hkv * d);
    cu_deviceptr cent = gpu_alloc(&env, 4 * (size_t)hkv * d * 4), table = gpu_alloc(&env, 16), lens = gpu_alloc(&env, 4);
    cu_deviceptr err = gpu_alloc(&env, 4), kv = gpu_alloc(&env, 2 * (size_t)hkv * d * 4), cu = gpu_alloc(&env, 8);
    int bad_table[4] = {7, 0, 0, 0}, cu_h[2] = {0, 3};
    gpu_upload(&env, table, bad_table, 16);
    gpu_upload(&env, cu, cu_h, 8);
    gpu_fill32(&env, lens, 0, 4);
    gpu_fill32(&env, err, 0, 4);
    mobagen_kv_cache cache = {.n_pages = 4, .page_size = ps, .max_pages = 4, .hkv = hkv, .head_dim = d,
                              .dtype = c->dtype, .k_pages = pages, .v_pages = vpages, .centroid_sum = cent,
                              .page_table = table, .seq_lens = lens, .error = err};
    mobagen_append_args a = {.batch = 1, .max_new = 3, .total_new = 3, .k = kv, .v = kv, .cu_seqlens_new = cu};
    assert_int_equal(mobagen_append(op, &cache, &a, NULL), MOBAGEN_OK);
    int bits = 0;
    assert_int_equal(mobagen_kv_cache_check(op, &cache, NULL, &bits), MOBAGEN_E_ARG);
    assert_int_equal(bits, MOBAGEN_KV_E_PAGE);
    assert_non_null(strstr(mobagen_op_errmsg(op), "page table"));
    assert_int_equal(mobagen_kv_cache_check(op, &cache, NULL, &bits), MOBAGEN_OK);   /* cleared */
    gpu_free(&env, pages); gpu_free(&env, vpages); gpu_free(&env, cent); gpu_free(&env, table);
    gpu_free(&env, lens); gpu_free(&env, err); gpu_free(&env, kv); gpu_free(&env, cu);
    mobagen_op_destroy(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_reference_and_forward),
        cmocka_unit_test(test_device_errors),
        cmocka_unit_test(test_truncate_equals_never_appended),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
