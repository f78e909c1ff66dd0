/* GPU backward against the C reference (tests/ref/moba_ref_bwd.h): shipped specs and random
 * configurations, fresh random inputs, poisoned outputs, fast and deterministic modes, the
 * deterministic mode run twice and compared bit for bit. Without a CUDA device every test is
 * skipped. */
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
#include "ref/moba_ref_bwd.h"
#include "runtime_internal.h"

#define MAX_SEQS 8
#define POISON 0xffffffffu   /* bf16/fp16 NaN pairs, fp32 NaN */

typedef struct bwd_case {
    char label[96];
    int head_dim, block_size, top_k, causal, conv_width, gqa_group;
    mg_dtype dtype;
    int hkv, batch;
    int lens_q[MAX_SEQS], lens_k[MAX_SEQS];
    int given_selection;  /* pass the forward's selection (else routing runs again) */
    int with_dlse;
    int long_case;        /* a single mode, for time */
} bwd_case;

static gpu_env env;
static int have_device;
static double worst_seen[4];   /* dq, dk, dv, dw: relative errors over every case */


static int setup(void **state)
{
    have_device = gpu_env_open_reported(&env);
    return 0;
}

static int teardown(void **state)
{
    if (have_device) {
        printf("worst relative errors over all cases: dq %.2e dk %.2e dv %.2e dw %.2e\n", worst_seen[0],
               worst_seen[1], worst_seen[2], worst_seen[3]);
        gpu_env_close(&env);
    }
    return 0;
}

static void make_spec(const bwd_case *c, mg_spec *spec)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: bwd_test\nhead_dim: %d\nblock_size: %d\ntop_k: %d\ncausal: %s\nconv_width: %d\n"
             "dtype: %s\ngqa_group: %d\n",
             c->head_dim, c->block_size, c->top_k, c->causal ? "true" : "false", c->conv_width,
             c->dtype == MG_BF16 ? "bf16" : "fp16", c->gqa_group);
    mg_diag d;
    if (mg_spec_parse(yaml, strlen(yaml), c->label, spec, &d) != MG_OK) fail_msg("spec for %s: %s", c->label, d.msg);
}

/* n random elements, and their values in double. */
static void random_elems(mg_dtype t, rng *r, size_t n, double sigma, uint16_t *e, double *x)
{
    for (size_t i = 0; i < n; i++) {
        e[i] = gpu_to_elem(t, (float)(sigma * rng_normal(r)));
        x[i] = gpu_from_elem(t, e[i]);
    }
}

/* Keys with a per-block mean direction, so that routing has something to choose. */
static void random_keys(const bwd_case *c, rng *r, const int *cu_k, uint16_t *k, double *kd)
{
    int d = c->head_dim;
    double *dir = malloc(sizeof(double) * (size_t)d);
    for (int b = 0; b < c->batch; b++)
        for (int t0 = cu_k[b]; t0 < cu_k[b + 1]; t0 += c->block_size)
            for (int h = 0; h < c->hkv; h++) {
                for (int i = 0; i < d; i++) dir[i] = 0.7 * rng_normal(r);
                for (int t = t0; t < t0 + c->block_size && t < cu_k[b + 1]; t++)
                    for (int i = 0; i < d; i++) {
                        size_t at = ((size_t)t * c->hkv + h) * d + i;
                        k[at] = gpu_to_elem(c->dtype, (float)(dir[i] + rng_normal(r)));
                        kd[at] = gpu_from_elem(c->dtype, k[at]);
                    }
            }
    free(dir);
}

typedef struct grads {
    uint16_t *dq, *dk, *dv;
    float *dw;
} grads;

/* ||g - r|| / ||r|| over n values; fails on a NaN (an output left unwritten). */
static double rel_error(const char *label, const char *what, const uint16_t *ge, const float *gf,
                        const double *r, size_t n, mg_dtype t)
{
    double e2 = 0, r2 = 0;
    for (size_t i = 0; i < n; i++) {
        double g = ge ? gpu_from_elem(t, ge[i]) : gf[i];
        if (isnan(g)) fail_msg("%s: %s[%zu] not written (NaN)", label, what, i);
        e2 += (g - r[i]) * (g - r[i]);
        r2 += r[i] * r[i];
    }
    return r2 > 0 ? sqrt(e2 / r2) : sqrt(e2);
}

/* The impl knob of an attn_bwd variant (2 mma.sync, 3 wgmma; 0 where the id has none). */
static int variant_impl(mobagen_op *op, int i)
{
    const char *at = strstr(mobagen_op_variant_id(op, "attn_bwd", i), "impl=");
    return at ? atoi(at + 5) : 0;
}

static void run_case(const bwd_case *c, uint64_t seed)
{
    mg_spec spec;
    make_spec(c, &spec);
    mobagen_op *op;
    if (mg_op_create_from_spec(env.ctx, &spec, &op) != MG_OK)
        fail_msg("%s: mobagen_op_create: %s", c->label, mobagen_ctx_errmsg(env.ctx));
    int d = c->head_dim, hq = c->hkv * c->gqa_group, hkv = c->hkv, k = c->top_k, W = c->conv_width;
    int cu_q[MAX_SEQS + 1] = {0}, cu_k[MAX_SEQS + 1] = {0}, max_q = 0, max_k = 0;
    for (int b = 0; b < c->batch; b++) {
        cu_q[b + 1] = cu_q[b] + c->lens_q[b];
        cu_k[b + 1] = cu_k[b] + c->lens_k[b];
        if (c->lens_q[b] > max_q) max_q = c->lens_q[b];
        if (c->lens_k[b] > max_k) max_k = c->lens_k[b];
    }
    int total_q = cu_q[c->batch], total_k = cu_k[c->batch];
    size_t nq = (size_t)total_q * hq * d, nk = (size_t)total_k * hkv * d, nw = (size_t)hkv * W * d;
    size_t nl = (size_t)total_q * hq;
    uint16_t *q = malloc(2 * nq + 2), *kk = malloc(2 * nk + 2), *v = malloc(2 * nk + 2), *w = malloc(2 * nw + 2);
    uint16_t *dout = malloc(2 * nq + 2), *out = malloc(2 * nq + 2);
    double *qd = malloc(8 * nq + 8), *kd = malloc(8 * nk + 8), *vd = malloc(8 * nk + 8), *wd = malloc(8 * nw + 8);
    double *doutd = malloc(8 * nq + 8), *od = malloc(8 * nq + 8), *kp = malloc(8 * nk + 8);
    float *dlse = malloc(4 * nl + 4), *lse = malloc(4 * nl + 4);
    double *dlsed = malloc(8 * nl + 8), *lsed = malloc(8 * nl + 8);
    int *sel = malloc(sizeof(int) * (nl * k + 1));
    rng r = {seed};
    random_elems(c->dtype, &r, nq, 1.0, q, qd);
    random_keys(c, &r, cu_k, kk, kd);
    random_elems(c->dtype, &r, nk, 1.0, v, vd);
    random_elems(c->dtype, &r, nw, 0.5, w, wd);
    random_elems(c->dtype, &r, nq, 1.0, dout, doutd);
    for (size_t i = 0; i < nl; i++) {
        dlse[i] = c->with_dlse ? (float)rng_normal(&r) : 0.f;
        dlsed[i] = dlse[i];
    }

    cu_deviceptr dq_in = gpu_alloc(&env, 2 * nq), dk_in = gpu_alloc(&env, 2 * nk), dv_in = gpu_alloc(&env, 2 * nk);
    cu_deviceptr dw_in = nw ? gpu_alloc(&env, 2 * nw) : 0, d_out = gpu_alloc(&env, 2 * nq);
    cu_deviceptr d_lse = gpu_alloc(&env, 4 * nl), d_dout = gpu_alloc(&env, 2 * nq);
    cu_deviceptr d_dlse = c->with_dlse ? gpu_alloc(&env, 4 * nl) : 0;
    cu_deviceptr dcq = gpu_alloc(&env, 4 * (c->batch + 1)), dck = gpu_alloc(&env, 4 * (c->batch + 1));
    cu_deviceptr g_dq = gpu_alloc(&env, 2 * nq), g_dk = gpu_alloc(&env, 2 * nk), g_dv = gpu_alloc(&env, 2 * nk);
    cu_deviceptr g_dw = nw ? gpu_alloc(&env, 4 * nw) : 0;
    gpu_upload(&env, dq_in, q, 2 * nq);
    gpu_upload(&env, dk_in, kk, 2 * nk);
    gpu_upload(&env, dv_in, v, 2 * nk);
    if (nw) gpu_upload(&env, dw_in, w, 2 * nw);
    gpu_upload(&env, d_dout, dout, 2 * nq);
    if (d_dlse) gpu_upload(&env, d_dlse, dlse, 4 * nl);
    gpu_upload(&env, dcq, cu_q, 4 * (c->batch + 1));
    gpu_upload(&env, dck, cu_k, 4 * (c->batch + 1));

    mobagen_fwd_args fa = {.batch = c->batch, .hq = hq, .hkv = hkv, .head_dim = d, .total_q = total_q,
                           .total_k = total_k, .max_seqlen_q = max_q, .max_seqlen_k = max_k,
                           .dtype = c->dtype, .q = dq_in, .k = dk_in, .v = dv_in, .out = d_out,
                           .cu_seqlens_q = dcq, .cu_seqlens_k = dck, .conv_weight = dw_in, .lse = d_lse};
    size_t fws_bytes;
    if (mobagen_fwd_workspace_size(op, &fa, &fws_bytes) != MG_OK) fail_msg("%s: %s", c->label, mobagen_op_errmsg(op));
    cu_deviceptr fws = gpu_alloc(&env, fws_bytes);
    if (mobagen_fwd(op, &fa, fws, fws_bytes, NULL) != MG_OK) fail_msg("%s: mobagen_fwd: %s", c->label, mobagen_op_errmsg(op));
    gpu_sync(&env);
    gpu_download(&env, out, d_out, 2 * nq);
    gpu_download(&env, lse, d_lse, 4 * nl);
    gpu_download(&env, sel, mobagen_fwd_selection(op, &fa, fws), sizeof(int) * nl * k);

    /* The reference differentiates what the kernels computed: the GPU's o, LSE and selection,
     * and k' rounded to the element type as the forward stores it. */
    for (size_t i = 0; i < nq; i++) od[i] = gpu_from_elem(c->dtype, out[i]);
    for (size_t i = 0; i < nl; i++) lsed[i] = lse[i];
    moba_ref_cfg cfg = {.batch = c->batch, .cu_seqlens_q = cu_q, .cu_seqlens_k = cu_k, .hq = hq, .hkv = hkv,
                        .d = d, .block_size = c->block_size, .top_k = k, .causal = c->causal,
                        .conv_width = W, .scale = 1.0 / sqrt((double)d)};
    moba_ref_kconv(&cfg, kd, wd, kp);
    if (W > 0)
        for (size_t i = 0; i < nk; i++) kp[i] = gpu_from_elem(c->dtype, gpu_to_elem(c->dtype, (float)kp[i]));
    double *rq = malloc(8 * nq + 8), *rkp = malloc(8 * nk + 8), *rk = malloc(8 * nk + 8), *rv = malloc(8 * nk + 8);
    double *rw = malloc(8 * nw + 8);
    moba_ref_attention_backward(&cfg, qd, kp, vd, sel, od, lsed, doutd, c->with_dlse ? dlsed : NULL, rq, rkp, rv);
    moba_ref_kconv_backward(&cfg, kd, wd, rkp, rk, W > 0 ? rw : NULL);

    mobagen_bwd_args ba = {.fwd = fa, .dout = d_dout, .dlse = d_dlse,
                           .selection = c->given_selection ? mobagen_fwd_selection(op, &fa, fws) : 0,
                           .dq = g_dq, .dk = g_dk, .dv = g_dv, .dconv_weight = g_dw};
    grads g[2];
    for (int i = 0; i < 2; i++) {
        g[i].dq = malloc(2 * nq + 2);
        g[i].dk = malloc(2 * nk + 2);
        g[i].dv = malloc(2 * nk + 2);
        g[i].dw = malloc(4 * nw + 4);
    }
    /* Fast mode with every variant, then deterministic mode twice with one of them (long cases:
     * deterministic once), then once with the first variant of each other impl (mma.sync,
     * wgmma), so that every kind of tile kernel runs in both modes. */
    const int nv = mobagen_op_variant_count(op, "attn_bwd");
    assert_true(nv > 0 && nv <= 16);
    int det_variant[18], n_det = 0;
    det_variant[n_det++] = (int)(seed % (uint64_t)nv);
    det_variant[n_det++] = det_variant[0];
    for (int i = 0; i < nv; i++) {
        int seen = 0;
        for (int j = 0; j < n_det; j++) seen |= variant_impl(op, i) == variant_impl(op, det_variant[j]);
        if (!seen) det_variant[n_det++] = i;
    }
    const int n_runs = c->long_case ? 1 : nv + n_det;
    /* The forward test's tolerances: the outputs' own rounding (bf16 about 2.4e-3, fp16 3e-4 seen). */
    const double tol = c->dtype == MG_BF16 ? 1e-2 : 2e-3;
    for (int run = 0; run < n_runs; run++) {
        const int det = c->long_case || run >= nv;
        const int variant = c->long_case ? det_variant[0] : det ? det_variant[run - nv] : run;
        assert_int_equal(mobagen_op_select(op, "attn_bwd", variant), MG_OK);
        ba.deterministic = det;
        size_t ws_bytes;
        if (mobagen_bwd_workspace_size(op, &ba, &ws_bytes) != MG_OK)
            fail_msg("%s: mobagen_bwd_workspace_size: %s", c->label, mobagen_op_errmsg(op));
        cu_deviceptr ws = gpu_alloc(&env, ws_bytes);
        gpu_fill32(&env, ws, 0x7fc00001u, ws_bytes);
        /* The forward's workspace keeps the selection given to the backward. */
        gpu_fill32(&env, g_dq, POISON, 2 * nq);
        gpu_fill32(&env, g_dk, POISON, 2 * nk);
        gpu_fill32(&env, g_dv, POISON, 2 * nk);
        if (nw) gpu_fill32(&env, g_dw, POISON, 4 * nw);
        if (mobagen_bwd(op, &ba, ws, ws_bytes, NULL) != MG_OK)
            fail_msg("%s: mobagen_bwd: %s", c->label, mobagen_op_errmsg(op));
        gpu_sync(&env);
        grads *o = &g[run == nv + 1];   /* the two compared deterministic runs land in g[0] and g[1] */
        gpu_download(&env, o->dq, g_dq, 2 * nq);
        gpu_download(&env, o->dk, g_dk, 2 * nk);
        gpu_download(&env, o->dv, g_dv, 2 * nk);
        if (nw) gpu_download(&env, o->dw, g_dw, 4 * nw);
        gpu_free(&env, ws);
        char label[160];
        snprintf(label, sizeof label, "%s (%s, %s)", c->label, det ? "det" : "fast",
                 strrchr(mobagen_op_variant_id(op, "attn_bwd", variant), '/') + 1);
        double e[4] = {rel_error(label, "dq", o->dq, NULL, rq, nq, c->dtype),
                       rel_error(label, "dk", o->dk, NULL, rk, nk, c->dtype),
                       rel_error(label, "dv", o->dv, NULL, rv, nk, c->dtype),
                       nw ? rel_error(label, "dw", NULL, o->dw, rw, nw, c->dtype) : 0};
        printf("  %-52s ws %9.2f MiB  dq %.2e dk %.2e dv %.2e dw %.2e\n", label, ws_bytes / 1048576.0, e[0],
               e[1], e[2], e[3]);
        static const char *const names[4] = {"dq", "dk", "dv", "dw"};
        for (int i = 0; i < 4; i++) {
            if (e[i] > worst_seen[i]) worst_seen[i] = e[i];
            if (e[i] > tol) fail_msg("%s: relative error of %s %.3g exceeds %.3g", label, names[i], e[i], tol);
        }
        if (!c->long_case && run == nv + 1 && (memcmp(g[0].dq, g[1].dq, 2 * nq) || memcmp(g[0].dk, g[1].dk, 2 * nk) ||
                       memcmp(g[0].dv, g[1].dv, 2 * nk) || memcmp(g[0].dw, g[1].dw, 4 * nw)))
            fail_msg("%s: two deterministic runs differ", c->label);
    }
    for (int i = 0; i < 2; i++) {
        free(g[i].dq); free(g[i].dk); free(g[i].dv); free(g[i].dw);
    }
    cu_deviceptr bufs[] = {dq_in, dk_in, dv_in, dw_in, d_out, d_lse, d_dout, d_dlse, dcq, dck, g_dq, g_dk, g_dv, g_dw, fws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gpu_free(&env, bufs[i]);
    free(q); free(kk); free(v); free(w); free(dout); free(out); free(qd); free(kd); free(vd); free(wd);
    free(doutd); free(od); free(kp); free(dlse); free(lse); free(dlsed); free(lsed); free(sel);
    free(rq); free(rkp); free(rk); free(rv); free(rw);
    mobagen_op_destroy(op);
}

static uint64_t test_seed(void)
{
    const char *s = getenv("MOBAGEN_TEST_SEED");
    return s ? strtoull(s, NULL, 0) : 0x5eed0000ull ^ (uint64_t)time(NULL);
}

static int case_wanted(const bwd_case *c)
{
    const char *part = getenv("MOBAGEN_TEST_CASE");
    return !part || strstr(c->label, part) != NULL;
}

/* The shipped specs' shapes, and edge cases chosen by hand. */
static const bwd_case grid[] = {
    /* label  d  B  k  causal W gqa dtype hkv batch lens_q lens_k given_sel dlse long */
    {"paper_d128_b128_k8", 128, 128, 8, 1, 0, 1, MG_BF16, 2, 4, {300, 0, 1000, 77}, {300, 0, 1000, 77}, 1, 0, 0},
    {"paper_b128_k8_kconv3", 128, 128, 8, 1, 3, 1, MG_BF16, 1, 2, {700, 129}, {700, 129}, 0, 1, 0},
    {"paper_b64_k16_kconv3", 128, 64, 16, 1, 3, 1, MG_BF16, 2, 2, {1500, 129}, {1500, 129}, 1, 1, 0},
    {"paper_b64_k16", 128, 64, 16, 1, 0, 1, MG_BF16, 1, 2, {1100, 64}, {1100, 64}, 0, 0, 0},
    {"paper_b32_k32_fp16_gqa2", 128, 32, 32, 1, 0, 2, MG_FP16, 2, 2, {1200, 31}, {1200, 31}, 1, 1, 0},
    {"paper_b32_k32_kconv3", 128, 32, 32, 1, 3, 1, MG_BF16, 1, 1, {900}, {900}, 1, 0, 0},
    {"paper_b16_k64", 128, 16, 64, 1, 0, 1, MG_BF16, 1, 2, {1200, 100}, {1200, 100}, 1, 0, 0},
    {"d64_b128_k8", 64, 128, 8, 1, 0, 1, MG_BF16, 2, 2, {1000, 5}, {1000, 5}, 0, 1, 0},
    {"d64_b512_k2_noncausal", 64, 512, 2, 0, 0, 1, MG_BF16, 2, 2, {700, 1300}, {1700, 600}, 1, 1, 0},
    {"d128_b48_k64_noncausal_fp16", 128, 48, 64, 0, 0, 1, MG_FP16, 1, 2, {333, 70}, {2000, 70}, 1, 0, 0},
    {"d64_b128_k4_lq_ne_lk", 64, 128, 4, 1, 0, 1, MG_BF16, 2, 3, {100, 900, 0}, {1000, 300, 50}, 0, 1, 0},
    {"d256_b64_k4_gqa4_kconv5", 256, 64, 4, 1, 5, 4, MG_BF16, 1, 2, {600, 64}, {600, 64}, 1, 1, 0},
    /* tile_n 128 at d 256 has one Q/dO stage (shared memory): the walk's other load order */
    {"d256_b128_k3_one_stage", 256, 128, 3, 1, 0, 2, MG_BF16, 1, 2, {700, 130}, {700, 130}, 0, 1, 0},
    {"d32_b16_k64_kconv3_fp16", 32, 16, 64, 1, 3, 1, MG_FP16, 2, 1, {1111}, {1111}, 0, 0, 0},
    {"d64_b96_k3_noncausal_kconv4", 64, 96, 3, 0, 4, 2, MG_BF16, 1, 3, {97, 400, 1}, {95, 400, 1}, 1, 1, 0},
    {"empty_keys", 64, 64, 4, 1, 0, 1, MG_BF16, 1, 3, {40, 0, 70}, {0, 0, 70}, 0, 1, 0},
    {"no_queries_kconv3", 64, 32, 4, 0, 3, 1, MG_BF16, 1, 2, {0, 0}, {50, 70}, 1, 0, 0},
    /* tile_n 64 and 128 (wgmma on sm_90a): partial last tiles, L_q != L_k, short and empty
     * sequences, GQA, fp16, d 64 with two warpgroups and one dQ column block */
    {"d128_b128_k4_gqa4_noncausal_fp16_varlen", 128, 128, 4, 0, 0, 4, MG_FP16, 1, 4, {1, 0, 515, 200}, {130, 7, 600, 64}, 0, 1, 0},
    {"d128_b64_k8_gqa2_lq_ne_lk", 128, 64, 8, 1, 0, 2, MG_BF16, 2, 3, {65, 300, 3}, {700, 300, 1}, 1, 1, 0},
    {"d64_b256_k3_gqa2_kconv3_fp16", 64, 256, 3, 1, 3, 2, MG_FP16, 1, 2, {520, 17}, {520, 17}, 0, 0, 0},
    /* tile_n 16 and 32 (wgmma with queries as M on sm_90a): d 64, GQA, empty sequences, L_q != L_k */
    {"d64_b16_k8_gqa2_lq_ne_lk_varlen", 64, 16, 8, 1, 0, 2, MG_BF16, 1, 3, {0, 333, 41}, {17, 300, 0}, 0, 1, 0},
    {"d128_b96_k5_gqa4_fp16", 128, 96, 5, 1, 0, 4, MG_FP16, 1, 2, {400, 33}, {400, 33}, 1, 0, 0},
};

static const bwd_case long_cases[] = {
    {"long16k_b128_k8_gqa2", 128, 128, 8, 1, 0, 2, MG_BF16, 1, 1, {16384}, {16384}, 1, 1, 1},
    {"long17k_b64_k16_kconv3", 128, 64, 16, 1, 3, 1, MG_BF16, 1, 2, {17000, 300}, {17000, 300}, 0, 0, 1},
};

static void test_grid(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed();
    printf("seed 0x%llx\n", (unsigned long long)seed);
    int ran = 0;
    for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++)
        if (case_wanted(&grid[i])) {
            run_case(&grid[i], seed + i);
            ran++;
        }
    assert_true(ran > 0 || getenv("MOBAGEN_TEST_CASE"));
}

/* Random configurations over the ranges the forward supports. */
static void test_random(void **state)
{
    if (!have_device) skip();
    uint64_t seed = test_seed() ^ 0x3000;
    printf("seed 0x%llx\n", (unsigned long long)seed);
    rng r = {seed};
    static const int blocks[] = {16, 32, 64, 128, 256}, convs[] = {0, 3, 4}, groups[] = {1, 2, 4};
    static const int dims[] = {64, 128};
    int n = getenv("MOBAGEN_TEST_QUICK") ? 2 : 10;
    for (int i = 0; i < n; i++) {
        bwd_case c;
        memset(&c, 0, sizeof c);
        c.head_dim = dims[rng_next(&r) % 2];
        c.block_size = blocks[rng_next(&r) % 5];
        c.top_k = 1 + (int)(rng_next(&r) % 64);
        c.causal = (int)(rng_next(&r) % 2);
        c.conv_width = convs[rng_next(&r) % 3];
        c.gqa_group = groups[rng_next(&r) % 3];
        c.dtype = rng_next(&r) % 2 ? MG_BF16 : MG_FP16;
        c.hkv = 1 + (int)(rng_next(&r) % 2);
        c.batch = 1 + (int)(rng_next(&r) % 3);
        int same = (int)(rng_next(&r) % 2);
        for (int b = 0; b < c.batch; b++) {
            c.lens_k[b] = rng_next(&r) % 5 == 0 ? 0 : (int)(rng_next(&r) % 1200);
            c.lens_q[b] = same ? c.lens_k[b] : (int)(rng_next(&r) % 1200);
        }
        c.given_selection = (int)(rng_next(&r) % 2);
        c.with_dlse = (int)(rng_next(&r) % 2);
        snprintf(c.label, sizeof c.label, "rand%d_d%d_b%d_k%d_%s_w%d_g%d_%s", i, c.head_dim, c.block_size,
                 c.top_k, c.causal ? "causal" : "full", c.conv_width, c.gqa_group,
                 c.dtype == MG_BF16 ? "bf16" : "fp16");
        if (case_wanted(&c)) run_case(&c, seed + 100 + i);
    }
}

static void test_long(void **state)
{
    if (!have_device) skip();
    if (getenv("MOBAGEN_TEST_QUICK")) {
        printf("long cases skipped: MOBAGEN_TEST_QUICK is set\n");
        return;
    }
    uint64_t seed = test_seed() ^ 0x1000;
    for (size_t i = 0; i < sizeof long_cases / sizeof long_cases[0]; i++)
        if (case_wanted(&long_cases[i])) run_case(&long_cases[i], seed + i);
}

/* Bad arguments are refused with a message naming the argument, before any launch. */
static void test_argument_errors(void **state)
{
    if (!have_device) skip();
    mg_spec spec;
    make_spec(&grid[0], &spec);
    mobagen_op *op;
    assert_int_equal(mg_op_create_from_spec(env.ctx, &spec, &op), MG_OK);
    cu_deviceptr buf = gpu_alloc(&env, 1 << 20);
    mobagen_bwd_args good = {.fwd = {.batch = 1, .hq = 2, .hkv = 2, .head_dim = 128, .total_q = 16,
                                     .total_k = 16, .max_seqlen_q = 16, .max_seqlen_k = 16,
                                     .dtype = MG_BF16, .q = buf, .k = buf, .v = buf, .out = buf,
                                     .cu_seqlens_q = buf, .cu_seqlens_k = buf, .lse = buf},
                             .dout = buf, .dq = buf, .dk = buf, .dv = buf};
    size_t ws;
    assert_int_equal(mobagen_bwd_workspace_size(op, &good, &ws), MG_OK);
    struct { const char *needle; mobagen_bwd_args a; } bad[6];
    int n = 0;
    bad[n].needle = "head_dim"; bad[n].a = good; bad[n++].a.fwd.head_dim = 64;
    bad[n].needle = "dout is a null"; bad[n].a = good; bad[n++].a.dout = 0;
    bad[n].needle = "dk (0x"; bad[n].a = good; bad[n++].a.dk = buf + 2;
    bad[n].needle = "dconv_weight"; bad[n].a = good; bad[n++].a.dconv_weight = buf;
    bad[n].needle = "dq_row_stride"; bad[n].a = good; bad[n++].a.dq_row_stride = 100;
    bad[n].needle = "deterministic"; bad[n].a = good; bad[n++].a.deterministic = 2;
    for (int i = 0; i < n; i++) {
        assert_int_equal(mobagen_bwd(op, &bad[i].a, buf, 1 << 20, NULL), MG_E_ARG);
        if (!strstr(mobagen_op_errmsg(op), bad[i].needle))
            fail_msg("case %d: message '%s' does not name '%s'", i, mobagen_op_errmsg(op), bad[i].needle);
    }
    assert_int_equal(mobagen_bwd(op, &good, buf, ws - 1, NULL), MG_E_ARG);
    assert_non_null(strstr(mobagen_op_errmsg(op), "too small"));
    gpu_free(&env, buf);
    mobagen_op_destroy(op);
}

/* An empty batch, and a batch whose tensors are all empty with null pointers: conv weights'
 * gradient written as zeros, nothing else touched. */
static void test_empty(void **state)
{
    if (!have_device) skip();
    bwd_case c = grid[1];
    mg_spec spec;
    make_spec(&c, &spec);
    mobagen_op *op;
    assert_int_equal(mg_op_create_from_spec(env.ctx, &spec, &op), MG_OK);
    cu_deviceptr cu = gpu_alloc(&env, 64), dw = gpu_alloc(&env, 4 * 2 * 3 * 128);
    gpu_fill32(&env, cu, 0, 64);
    for (int batch = 0; batch <= 2; batch += 2) {
        mobagen_bwd_args a = {.fwd = {.batch = batch, .hq = 2, .hkv = 2, .head_dim = 128, .dtype = MG_BF16,
                                      .cu_seqlens_q = cu, .cu_seqlens_k = cu, .conv_weight = cu},
                              .dconv_weight = dw};
        size_t ws;
        assert_int_equal(mobagen_bwd_workspace_size(op, &a, &ws), MG_OK);
        cu_deviceptr wsp = ws ? gpu_alloc(&env, ws) : 0;
        gpu_fill32(&env, dw, POISON, 4 * 2 * 3 * 128);
        if (mobagen_bwd(op, &a, wsp, ws, NULL) != MG_OK) fail_msg("batch %d: %s", batch, mobagen_op_errmsg(op));
        gpu_sync(&env);
        float host[2 * 3 * 128];
        gpu_download(&env, host, dw, sizeof host);
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) assert_true(host[i] == 0.f);
        gpu_free(&env, wsp);
    }
    gpu_free(&env, cu);
    gpu_free(&env, dw);
    mobagen_op_destroy(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_long),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
