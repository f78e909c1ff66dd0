/* GPU forward against the C reference: a grid of specs, every tuning variant, fresh random
 * inputs, poisoned outputs. On a machine without a CUDA device every test is skipped. */
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

#include "util/gpu_harness.h"
#include "ref/moba_ref.h"
#include "runtime_internal.h"

#define MAX_SEQS 8
#define POISON_ELEM 0xffffffffu   /* bf16/fp16 NaN pairs, fp32 NaN, int32 -1 */

typedef struct fwd_case {
    const char *label;
    int head_dim, block_size, top_k, causal, conv_width, gqa_group;
    mg_dtype dtype;
    int hkv, batch;
    int lens_q[MAX_SEQS], lens_k[MAX_SEQS];
    int check_every;      /* compare every n-th row (1 = all); long cases sample */
    int strided;          /* q, k, v interleaved in one [total][hq + 2 hkv][d] buffer, and out
                             rows padded: exercises the stride arguments (needs L_q = L_k) */
    int tie_period;       /* > 0: key block j repeats block j % tie_period of its sequence (and
                             head), so scores tie exactly and the tie rule alone decides; the
                             selection must then equal the reference's (needs conv_width 0) */
    double q_gain;        /* > 0: q scaled by this, so that a row's scores span hundreds (log2
                             units) and the attention's reference sits far below the row's max:
                             the sums overflow and the exact fallback must redo those rows */
} fwd_case;

typedef struct case_stats {
    double worst_o_err, worst_lse_err;
    long long rows_checked, routing_swaps;
    int runs;
} case_stats;

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

static void make_spec(const fwd_case *c, mg_spec *spec)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: %s\nhead_dim: %d\nblock_size: %d\ntop_k: %d\ncausal: %s\nconv_width: %d\n"
             "dtype: %s\ngqa_group: %d\n",
             c->label, c->head_dim, c->block_size, c->top_k, c->causal ? "true" : "false",
             c->conv_width, c->dtype == MG_BF16 ? "bf16" : "fp16", c->gqa_group);
    mg_diag d;
    mg_status st = mg_spec_parse(yaml, strlen(yaml), c->label, spec, &d);
    if (st != MG_OK) fail_msg("spec for %s: %s", c->label, d.msg);
}

/* Inputs with structure: per-block mean directions make routing choose, noise keeps it random. */
static void random_inputs(const fwd_case *c, rng *r, int total_q, int total_k, const int *cu_k,
                          uint16_t *q, uint16_t *k, uint16_t *v, uint16_t *w, double *qd, double *kd,
                          double *vd, double *wd)
{
    int d = c->head_dim, hq = c->hkv * c->gqa_group;
    for (size_t i = 0; i < (size_t)total_q * hq * d; i++) {
        q[i] = gpu_to_elem(c->dtype, (float)(rng_normal(r) * (c->q_gain > 0 ? c->q_gain : 1.0)));
        qd[i] = gpu_from_elem(c->dtype, q[i]);
    }
    double *dir = malloc(sizeof(double) * (size_t)d);
    for (int b = 0; b < c->batch; b++)
        for (int t0 = cu_k[b]; t0 < cu_k[b + 1]; t0 += c->block_size)
            for (int h = 0; h < c->hkv; h++) {
                int blk = (t0 - cu_k[b]) / c->block_size;
                int src0 = c->tie_period > 0 && blk >= c->tie_period && t0 + c->block_size <= cu_k[b + 1]
                               ? cu_k[b] + blk % c->tie_period * c->block_size : -1;
                for (int i = 0; i < d; i++) dir[i] = 0.7 * rng_normal(r);
                for (int t = t0; t < t0 + c->block_size && t < cu_k[b + 1]; t++)
                    for (int i = 0; i < d; i++) {
                        size_t at = ((size_t)t * c->hkv + h) * d + i;
                        if (src0 >= 0) k[at] = k[((size_t)(src0 + t - t0) * c->hkv + h) * d + i];
                        else k[at] = gpu_to_elem(c->dtype, (float)(dir[i] + rng_normal(r)));
                        kd[at] = gpu_from_elem(c->dtype, k[at]);
                    }
            }
    free(dir);
    for (size_t i = 0; i < (size_t)total_k * c->hkv * d; i++) {
        v[i] = gpu_to_elem(c->dtype, (float)rng_normal(r));
        vd[i] = gpu_from_elem(c->dtype, v[i]);
    }
    for (size_t i = 0; i < (size_t)c->hkv * c->conv_width * d; i++) {
        w[i] = gpu_to_elem(c->dtype, (float)(0.5 * rng_normal(r)));
        wd[i] = gpu_from_elem(c->dtype, w[i]);
    }
}

static int in_selection(const int *s, int k, int blk)
{
    for (int i = 0; i < k; i++)
        if (s[i] == blk) return 1;
    return 0;
}

/* GPU and reference selections agree, or differ only by swaps between blocks whose scores
 * are equal up to fp32 accumulation. Returns the number of swapped blocks. */
static int compare_selection(const moba_ref_cfg *cfg, const double *q, const double *centroid,
                             int row, int h, const int *gpu, const int *ref, const char *label)
{
    int k = cfg->top_k, swaps = 0, n_gpu = 0, n_ref = 0;
    for (int i = 0; i < k; i++) {
        n_gpu += gpu[i] >= 0;
        n_ref += ref[i] >= 0;
        if (i > 0 && gpu[i] >= 0 && gpu[i] <= gpu[i - 1])
            fail_msg("%s: row %d head %d: selection not ascending", label, row, h);
    }
    if (n_gpu != n_ref)
        fail_msg("%s: row %d head %d: GPU selected %d blocks, reference %d", label, row, h, n_gpu, n_ref);
    double mag = 0;
    for (int i = 0; i < cfg->d; i++) mag += fabs(q[((size_t)row * cfg->hq + h) * cfg->d + i]);
    for (int i = 0; i < k && gpu[i] >= 0; i++) {
        if (in_selection(ref, k, gpu[i])) continue;
        /* gpu[i] replaced some reference block: it must tie with the weakest reference pick. */
        double s_gpu = moba_ref_gate_score(cfg, q, centroid, row, h, gpu[i]);
        double weakest = INFINITY;
        for (int j = 0; j < k && ref[j] >= 0; j++)
            if (!in_selection(gpu, k, ref[j])) {
                double s = moba_ref_gate_score(cfg, q, centroid, row, h, ref[j]);
                if (s < weakest) weakest = s;
            }
        double tol = 1e-5 * mag * 4 + 1e-6;
        if (fabs(s_gpu - weakest) > tol)
            fail_msg("%s: row %d head %d: GPU chose block %d (score %.9g), reference's weakest "
                     "differing pick scores %.9g; tolerance %.3g", label, row, h, gpu[i], s_gpu,
                     weakest, tol);
        swaps++;
    }
    return swaps;
}

/* One case, every variant: returns stats; fails the test on any mismatch. chunk_rows > 0 sets
 * the block-centric attention's query rows per chunk and the shortest ring of chunks. */
static void run_case(const fwd_case *c, uint64_t seed, long long chunk_rows, case_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    mg_spec spec;
    make_spec(c, &spec);
    mobagen_op *op;
    if (mg_op_create_from_spec(env.ctx, &spec, &op) != MG_OK)
        fail_msg("%s: mobagen_op_create: %s", c->label, mobagen_ctx_errmsg(env.ctx));
    if (chunk_rows > 0) mg_op_set_attn_chunking(op, chunk_rows, 1);

    int d = c->head_dim, hq = c->hkv * c->gqa_group, hkv = c->hkv, k = c->top_k;
    int cu_q[MAX_SEQS + 1] = {0}, cu_k[MAX_SEQS + 1] = {0}, max_q = 0, max_k = 0;
    for (int b = 0; b < c->batch; b++) {
        cu_q[b + 1] = cu_q[b] + c->lens_q[b];
        cu_k[b + 1] = cu_k[b] + c->lens_k[b];
        if (c->lens_q[b] > max_q) max_q = c->lens_q[b];
        if (c->lens_k[b] > max_k) max_k = c->lens_k[b];
    }
    int total_q = cu_q[c->batch], total_k = cu_k[c->batch];
    size_t nq = (size_t)total_q * hq * d, nk = (size_t)total_k * hkv * d, nw = (size_t)hkv * c->conv_width * d;
    uint16_t *q = malloc(2 * nq + 2), *kk = malloc(2 * nk + 2), *v = malloc(2 * nk + 2), *w = malloc(2 * nw + 2);
    double *qd = malloc(8 * nq + 8), *kd = malloc(8 * nk + 8), *vd = malloc(8 * nk + 8), *wd = malloc(8 * nw + 8);
    rng r = {seed};
    random_inputs(c, &r, total_q, total_k, cu_k, q, kk, v, w, qd, kd, vd, wd);

    /* Reference: k' rounded to the input dtype as the kernels store it, then double. */
    moba_ref_cfg cfg = {.batch = c->batch, .cu_seqlens_q = cu_q, .cu_seqlens_k = cu_k, .hq = hq,
                        .hkv = hkv, .d = d, .block_size = c->block_size, .top_k = k,
                        .causal = c->causal, .conv_width = c->conv_width, .scale = 1.0 / sqrt(d)};
    assert_int_equal(moba_ref_check_cfg(&cfg), 0);
    double *kp = malloc(8 * nk + 8);
    moba_ref_kconv(&cfg, kd, wd, kp);
    if (c->conv_width > 0)
        for (size_t i = 0; i < nk; i++) kp[i] = gpu_from_elem(c->dtype, gpu_to_elem(c->dtype, (float)kp[i]));
    int max_blocks = moba_ref_max_blocks(&cfg);
    size_t ncent = (size_t)c->batch * (max_blocks ? max_blocks : 1) * hkv * d;
    double *cent = calloc(ncent, 8);
    moba_ref_centroids(&cfg, kp, cent);
    int *sel_ref = malloc(sizeof(int) * ((size_t)total_q * hq * k + 1));
    moba_ref_route(&cfg, qd, cent, sel_ref);

    /* Device buffers: packed, or (strided cases) q|k|v interleaved per token and out rows padded. */
    long long qkv_row = (long long)(hq + 2 * hkv) * d;
    long long out_row = c->strided ? (long long)hq * d + 8 : (long long)hq * d;
    size_t n_out = (size_t)total_q * (size_t)out_row;
    cu_deviceptr dq, dk, dv, dqkv = 0;
    if (c->strided) {
        assert_int_equal(total_q, total_k);
        uint16_t *packed = malloc(2 * (size_t)total_q * (size_t)qkv_row + 2);
        for (int t = 0; t < total_q; t++) {
            uint16_t *row = packed + (size_t)t * (size_t)qkv_row;
            memcpy(row, q + (size_t)t * hq * d, 2 * (size_t)hq * d);
            memcpy(row + (size_t)hq * d, kk + (size_t)t * hkv * d, 2 * (size_t)hkv * d);
            memcpy(row + (size_t)(hq + hkv) * d, v + (size_t)t * hkv * d, 2 * (size_t)hkv * d);
        }
        dqkv = gpu_alloc(&env, 2 * (size_t)total_q * (size_t)qkv_row);
        gpu_upload(&env, dqkv, packed, 2 * (size_t)total_q * (size_t)qkv_row);
        free(packed);
        dq = dqkv;
        dk = dqkv + 2 * (size_t)hq * d;
        dv = dqkv + 2 * (size_t)(hq + hkv) * d;
    } else {
        dq = gpu_alloc(&env, 2 * nq);
        dk = gpu_alloc(&env, 2 * nk);
        dv = gpu_alloc(&env, 2 * nk);
        gpu_upload(&env, dq, q, 2 * nq);
        gpu_upload(&env, dk, kk, 2 * nk);
        gpu_upload(&env, dv, v, 2 * nk);
    }
    cu_deviceptr dw = nw ? gpu_alloc(&env, 2 * nw) : 0;
    cu_deviceptr dout = gpu_alloc(&env, 2 * n_out), dlse = gpu_alloc(&env, 4 * (size_t)total_q * hq);
    cu_deviceptr dcq = gpu_alloc(&env, 4 * (c->batch + 1)), dck = gpu_alloc(&env, 4 * (c->batch + 1));
    if (nw) gpu_upload(&env, dw, w, 2 * nw);
    gpu_upload(&env, dcq, cu_q, 4 * (c->batch + 1));
    gpu_upload(&env, dck, cu_k, 4 * (c->batch + 1));
    mobagen_fwd_args a = {.batch = c->batch, .hq = hq, .hkv = hkv, .head_dim = d,
                          .total_q = total_q, .total_k = total_k, .max_seqlen_q = max_q,
                          .max_seqlen_k = max_k, .dtype = c->dtype, .q = dq, .k = dk, .v = dv,
                          .out = dout, .cu_seqlens_q = dcq, .cu_seqlens_k = dck,
                          .conv_weight = dw, .lse = dlse};
    if (c->strided) {
        a.q_row_stride = a.k_row_stride = a.v_row_stride = qkv_row;
        a.q_head_stride = a.k_head_stride = a.v_head_stride = d;
        a.out_row_stride = out_row;
    }
    size_t ws_bytes;
    if (mobagen_fwd_workspace_size(op, &a, &ws_bytes) != MG_OK)
        fail_msg("%s: workspace: %s", c->label, mobagen_op_errmsg(op));
    cu_deviceptr ws = gpu_alloc(&env, ws_bytes);

    uint16_t *out = malloc(2 * n_out + 2);
    float *lse = malloc(4 * ((size_t)total_q * hq + 1));
    int *sel = malloc(sizeof(int) * ((size_t)total_q * hq * k + 1));
    double *o_ref = malloc(8 * nq + 8), *lse_ref = malloc(8 * ((size_t)total_q * hq + 1));

    int n_kconv = mobagen_op_variant_count(op, "kconv_centroid");
    int n_route = mobagen_op_variant_count(op, "route");
    int n_attn = mobagen_op_variant_count(op, "attn_fwd");
    int runs = n_kconv > n_route ? n_kconv : n_route;
    if (n_attn > runs) runs = n_attn;
    if (c->check_every > 1) runs = 1;   /* long cases: the reference dominates; one variant */
    for (int run = 0; run < runs; run++) {
        /* Every variant of every template runs at least once. */
        assert_int_equal(mobagen_op_select(op, "kconv_centroid", run % n_kconv), MG_OK);
        assert_int_equal(mobagen_op_select(op, "route", run % n_route), MG_OK);
        assert_int_equal(mobagen_op_select(op, "attn_fwd", run % n_attn), MG_OK);
        char label[512];
        snprintf(label, sizeof label, "%s [%s | %s | %s]", c->label,
                 mobagen_op_variant_id(op, "kconv_centroid", run % n_kconv),
                 mobagen_op_variant_id(op, "route", run % n_route),
                 mobagen_op_variant_id(op, "attn_fwd", run % n_attn));
        gpu_fill32(&env, dout, POISON_ELEM, 2 * n_out);
        gpu_fill32(&env, dlse, POISON_ELEM, 4 * (size_t)total_q * hq);
        gpu_fill32(&env, ws, 0x7fc00001u, ws_bytes);
        if (mobagen_fwd(op, &a, ws, ws_bytes, NULL) != MG_OK)
            fail_msg("%s: mobagen_fwd: %s", label, mobagen_op_errmsg(op));
        gpu_sync(&env);
        gpu_download(&env, out, dout, 2 * n_out);
        gpu_download(&env, lse, dlse, 4 * (size_t)total_q * hq);
        gpu_download(&env, sel, mobagen_fwd_selection(op, &a, ws), sizeof(int) * (size_t)total_q * hq * k);

        /* Routing first; the attention reference then uses the GPU's (validated) selection so
         * that a legitimate near-tie swap does not show up as an output error. */
        long long swaps_before = stats->routing_swaps;
        for (int row = 0; row < total_q; row++)
            for (int h = 0; h < hq; h++) {
                size_t at = ((size_t)row * hq + h) * k;
                stats->routing_swaps += compare_selection(&cfg, qd, cent, row, h, sel + at, sel_ref + at, label);
            }
        /* Exact ties (repeated blocks) go to the lower block index, as in the reference. */
        if (c->tie_period > 0 && stats->routing_swaps != swaps_before)
            fail_msg("%s: %lld selections break exact score ties differently from the reference",
                     label, stats->routing_swaps - swaps_before);
        moba_ref_attention(&cfg, qd, kp, vd, sel, o_ref, lse_ref);

        double err2 = 0, ref2 = 0, worst_lse = 0;
        for (int row = 0; row < total_q; row += c->check_every)
            for (int h = 0; h < hq; h++) {
                size_t base = ((size_t)row * hq + h) * d;
                size_t gbase = (size_t)row * (size_t)out_row + (size_t)h * d;
                for (int i = 0; i < d; i++) {
                    float g = gpu_from_elem(c->dtype, out[gbase + i]);
                    if (isnan(g)) fail_msg("%s: out[%d][%d][%d] not written (NaN)", label, row, h, i);
                    err2 += (g - o_ref[base + i]) * (g - o_ref[base + i]);
                    ref2 += o_ref[base + i] * o_ref[base + i];
                }
                double lr = lse_ref[(size_t)row * hq + h];
                float lg = lse[(size_t)row * hq + h];
                if (isnan(lg)) fail_msg("%s: lse[%d][%d] not written (NaN)", label, row, h);
                if (isinf(lr) || isinf(lg)) {
                    if (!(isinf(lr) && isinf(lg) && lr < 0 && lg < 0))
                        fail_msg("%s: lse[%d][%d] = %g, reference %g", label, row, h, lg, lr);
                    continue;
                }
                double e = fabs(lg - lr) / fmax(1.0, fabs(lr));
                if (e > worst_lse) worst_lse = e;
                stats->rows_checked++;
            }
        for (int row = 0; row < total_q && out_row > (long long)hq * d; row++)
            for (long long i = (long long)hq * d; i < out_row; i++)
                if (out[(size_t)row * (size_t)out_row + (size_t)i] != 0xffff)
                    fail_msg("%s: padding of out row %d was written", label, row);
        double o_err = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
        double o_tol = c->dtype == MG_BF16 ? 1e-2 : 2e-3;
        if (o_err > o_tol) fail_msg("%s: relative error of o %.3g exceeds %.3g", label, o_err, o_tol);
        /* Grows with d: fp32 dot products, and with a key convolution, k' elements that the GPU
         * (fp32) and the reference (double) round to neighbouring bf16 values (seen: 3.9e-5 at
         * d = 256 with conv width 5). */
        double lse_tol = 1e-4 * (d > 64 ? d / 64.0 : 1.0);
        if (worst_lse > lse_tol) fail_msg("%s: LSE error %.3g exceeds %.3g", label, worst_lse, lse_tol);
        if (o_err > stats->worst_o_err) stats->worst_o_err = o_err;
        if (worst_lse > stats->worst_lse_err) stats->worst_lse_err = worst_lse;
        stats->runs++;
    }
    printf("  %-28s runs %d  rows %lld  |o-ref|/|ref| %.2e  lse err %.2e  routing swaps %lld\n",
           c->label, stats->runs, stats->rows_checked / (stats->runs ? stats->runs : 1),
           stats->worst_o_err, stats->worst_lse_err, stats->routing_swaps);

    if (c->strided) {
        gpu_free(&env, dqkv);
    } else {
        gpu_free(&env, dq); gpu_free(&env, dk); gpu_free(&env, dv);
    }
    gpu_free(&env, dw);
    gpu_free(&env, dout); gpu_free(&env, dlse); gpu_free(&env, dcq); gpu_free(&env, dck);
    gpu_free(&env, ws);
    free(q); free(kk); free(v); free(w); free(qd); free(kd); free(vd); free(wd); free(kp);
    free(cent); free(sel_ref); free(out); free(lse); free(sel); free(o_ref); free(lse_ref);
    mobagen_op_destroy(op);
}

static uint64_t test_seed(void)
{
    const char *s = getenv("MOBAGEN_TEST_SEED");
    return s ? strtoull(s, NULL, 0) : 0x5eed0000ull ^ (uint64_t)time(NULL);
}

/* MOBAGEN_TEST_CASE=text runs only the cases whose label contains text (sanitizer runs). */
/* MOBAGEN_TEST_CASE=text runs the cases whose label holds text; MOBAGEN_TEST_ONLY=label one case. */
static int case_wanted(const fwd_case *c)
{
    const char *part = getenv("MOBAGEN_TEST_CASE"), *only = getenv("MOBAGEN_TEST_ONLY");
    return (!part || strstr(c->label, part) != NULL) && (!only || !strcmp(only, c->label));
}

static const fwd_case grid[] = {
    /* label                 d   B   k  causal W  gqa dtype   hkv batch lens_q / lens_k, check_every, strided, tie_period */
    {"paper_d128_b128_k8", 128, 128, 8, 1, 0, 1, MG_BF16, 2, 4, {300, 0, 1000, 77}, {300, 0, 1000, 77}, 1, 0, 0},
    {"paper_b64_k16_kconv3", 128, 64, 16, 1, 3, 1, MG_BF16, 2, 2, {1500, 129}, {1500, 129}, 1, 0, 0},
    {"paper_b32_k32_fp16_gqa2", 128, 32, 32, 1, 0, 2, MG_FP16, 2, 2, {1200, 31}, {1200, 31}, 1, 0, 0},
    {"d64_b16_k1", 64, 16, 1, 1, 0, 1, MG_BF16, 1, 2, {200, 5}, {200, 5}, 1, 0, 0},
    {"d64_b512_k2_noncausal", 64, 512, 2, 0, 0, 1, MG_BF16, 2, 2, {700, 1300}, {1700, 600}, 1, 0, 0},
    {"d128_b48_k64_noncausal_fp16", 128, 48, 64, 0, 0, 1, MG_FP16, 1, 2, {333, 70}, {2000, 70}, 1, 0, 0},
    {"d64_b128_k4_lq_ne_lk", 64, 128, 4, 1, 0, 1, MG_BF16, 2, 3, {100, 900, 0}, {1000, 300, 50}, 1, 0, 0},
    {"d256_b64_k4_gqa4_kconv5", 256, 64, 4, 1, 5, 4, MG_BF16, 1, 2, {600, 64}, {600, 64}, 1, 0, 0},
    {"d32_b16_k64_kconv3_fp16", 32, 16, 64, 1, 3, 1, MG_FP16, 2, 1, {1111}, {1111}, 1, 0, 0},
    {"d64_b96_k3_noncausal_kconv4", 64, 96, 3, 0, 4, 2, MG_BF16, 1, 3, {97, 400, 1}, {95, 400, 1}, 1, 0, 0},
    {"strided_d128_b64_k4", 128, 64, 4, 1, 0, 1, MG_BF16, 2, 2, {500, 257}, {500, 257}, 1, 1, 0},
    {"strided_d64_gqa4_kconv3_fp16", 64, 32, 6, 0, 3, 4, MG_FP16, 1, 2, {300, 45}, {300, 45}, 1, 1, 0},
    {"ties_d64_b32_k8", 64, 32, 8, 1, 0, 1, MG_BF16, 2, 2, {900, 200}, {900, 200}, 1, 0, 5},
    {"ties_d128_b16_k5_noncausal_fp16", 128, 16, 5, 0, 0, 2, MG_FP16, 1, 2, {300, 40}, {500, 40}, 1, 0, 3},
    {"d128_b16_k64_2k", 128, 16, 64, 1, 0, 1, MG_BF16, 1, 2, {2500, 1100}, {2500, 1100}, 1, 0, 0},
    {"huge_scores_d128_b64_k4", 128, 64, 4, 1, 0, 1, MG_BF16, 1, 2, {700, 90}, {700, 90}, 1, 0, 0, 40.0},
    {"huge_scores_d64_b32_k3_noncausal_fp16", 64, 32, 3, 0, 2, 1, MG_FP16, 1, 1, {300}, {420}, 1, 0, 0, 12.0},
    /* More than 8192 key blocks in a sequence: the list kernels' block histogram (8192 bins)
     * then takes several windows. Few queries, so the reference stays cheap. */
    {"many_blocks_d64_b16_k8_noncausal", 64, 16, 8, 0, 0, 1, MG_BF16, 1, 2, {200, 57}, {140000, 131100}, 1, 0, 0},
    {"many_blocks_d64_b16_k6_causal_lq_lt_lk", 64, 16, 6, 1, 0, 2, MG_BF16, 1, 1, {300}, {140000}, 1, 0, 0},
};

static const fwd_case long_cases[] = {
    {"long32k_d128_b128_k8", 128, 128, 8, 1, 0, 1, MG_BF16, 1, 1, {32768}, {32768}, 7, 0, 0},
    {"long40k_b64_k16_kconv3", 128, 64, 16, 1, 3, 2, MG_BF16, 1, 1, {40000}, {40000}, 13, 0, 0},
    {"long16k_b32_k32_gqa2", 128, 32, 32, 1, 0, 2, MG_BF16, 1, 1, {16384}, {16384}, 11, 0, 0},
    {"long17k_b16_k16_fp16", 128, 16, 16, 1, 0, 1, MG_FP16, 1, 2, {17000, 333}, {17000, 333}, 11, 0, 0},
};

/* MOBAGEN_TEST_ONLY=label runs just that grid case (compute-sanitizer's racecheck is slow). */
static void test_grid(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed();
    printf("seed 0x%llx\n", (unsigned long long)seed);
    for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++) {
        if (!case_wanted(&grid[i])) continue;
        case_stats s;
        run_case(&grid[i], seed + i, 0, &s);
        assert_true(s.runs > 0 && s.rows_checked > 0);
    }
}

/* The grid again with 48-row chunks and the shortest ring (one chunk): many chunks per
 * sequence, each accumulator row reused by every chunk, partial and empty chunks. */
static void test_small_chunks(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed() ^ 0x2000;
    printf("seed 0x%llx, 48-row chunks\n", (unsigned long long)seed);
    for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++) {
        if (!case_wanted(&grid[i])) continue;
        case_stats s;
        run_case(&grid[i], seed + i, 48, &s);
        assert_true(s.runs > 0 && s.rows_checked > 0);
    }
}

static void test_long(void **state)
{
    if (!have_device) skip();
    if (getenv("MOBAGEN_TEST_QUICK")) {   /* under compute-sanitizer: the grid is enough */
        printf("long cases skipped: MOBAGEN_TEST_QUICK is set\n");
        return;
    }
    uint64_t seed = test_seed() ^ 0x1000;
    for (size_t i = 0; i < sizeof long_cases / sizeof long_cases[0]; i++) {
        if (!case_wanted(&long_cases[i])) continue;
        case_stats s;
        run_case(&long_cases[i], seed + i, 0, &s);
        assert_true(s.rows_checked > 0);
    }
}

/* Bad arguments are refused with a message naming the argument, before any launch. */
static void test_argument_errors(void **state)
{
    if (!have_device) skip();
    fwd_case c = grid[0];
    mg_spec spec;
    make_spec(&c, &spec);
    mobagen_op *op;
    assert_int_equal(mg_op_create_from_spec(env.ctx, &spec, &op), MG_OK);
    cu_deviceptr buf = gpu_alloc(&env, 1 << 20);
    mobagen_fwd_args good = {.batch = 1, .hq = 2, .hkv = 2, .head_dim = 128, .total_q = 16,
                             .total_k = 16, .max_seqlen_q = 16, .max_seqlen_k = 16, .dtype = MG_BF16,
                             .q = buf, .k = buf, .v = buf, .out = buf, .cu_seqlens_q = buf,
                             .cu_seqlens_k = buf, .lse = buf};
    size_t ws;
    assert_int_equal(mobagen_fwd_workspace_size(op, &good, &ws), MG_OK);
    struct { const char *needle; mobagen_fwd_args a; } bad[8];
    int n = 0;
    bad[n].needle = "head_dim"; bad[n].a = good; bad[n++].a.head_dim = 64;
    bad[n].needle = "dtype"; bad[n].a = good; bad[n++].a.dtype = MG_FP16;
    bad[n].needle = "gqa_group"; bad[n].a = good; bad[n++].a.hq = 4;
    bad[n].needle = "q is a null"; bad[n].a = good; bad[n++].a.q = 0;
    bad[n].needle = "k (0x"; bad[n].a = good; bad[n++].a.k = buf + 2;
    bad[n].needle = "conv_weight"; bad[n].a = good; bad[n++].a.conv_weight = buf;
    bad[n].needle = "q_row_stride"; bad[n].a = good; bad[n++].a.q_row_stride = 100;
    bad[n].needle = "max_seqlen"; bad[n].a = good; bad[n++].a.max_seqlen_q = 17;
    for (int i = 0; i < n; i++) {
        assert_int_equal(mobagen_fwd(op, &bad[i].a, buf, 1 << 20, NULL), MG_E_ARG);
        if (!strstr(mobagen_op_errmsg(op), bad[i].needle))
            fail_msg("case %d: message '%s' does not name '%s'", i, mobagen_op_errmsg(op), bad[i].needle);
    }
    assert_int_equal(mobagen_fwd(op, &good, buf, ws - 1, NULL), MG_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "too small"));
    gpu_free(&env, buf);
    mobagen_op_destroy(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_long),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
