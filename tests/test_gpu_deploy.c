/* Deployment on the GPU: a bundle runs with NVRTC unavailable (and says which archs it lacks on
 * a device it does not fit), `mobagen_op_tune` checks, times and records every variant, a new
 * op dispatches by the record, MOBAGEN_AUTOTUNE tunes on first use, and a bundle carries its
 * tuning records. Every forward is checked against the C reference on fresh random inputs with
 * poisoned outputs. Without a CUDA device every test is skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mobagen.h"
#include "ref/moba_ref.h"
#include "runtime_internal.h"
#include "tunedb.h"
#include "util/gpu_harness.h"
#include "util/testutil.h"

#define POISON 0xffffffffu

static gpu_env env;
static int have_device;
static char work[512], spec_path[700], cli[1024];
static mg_spec spec;
static const char spec_yaml[] =
    "name: deploytest\nhead_dim: 64\nblock_size: 64\ntop_k: 4\ncausal: true\nconv_width: 3\n"
    "gqa_group: 2\ndtype: bf16\n";

static int setup(void **state)
{
    have_device = gpu_env_open(&env) == 0;
    if (!have_device) {
        printf("skipped: no CUDA device (%s)\n", env.why_not);
        return 0;
    }
    printf("device: %s (%s)\n", mobagen_ctx_device_name(env.ctx), mobagen_ctx_arch(env.ctx));
    tu_mkdtemp(work, sizeof work, "gpu-deploy");
    tu_write_file(work, "deploytest.yaml", spec_yaml, spec_path, sizeof spec_path);
    mg_diag d;
    if (mg_spec_load(spec_path, &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    const char *e = getenv("MOBAGEN_TEST_CLI");
    snprintf(cli, sizeof cli, "%s", e && *e ? e : "build/mobagen");
    if (!(e && *e)) snprintf(cli, sizeof cli, "%s/build/mobagen", tu_repo_root());
    return 0;
}

static int teardown(void **state)
{
    if (have_device) {
        gpu_env_close(&env);
        tu_rm_rf(work);
    }
    return 0;
}

#define NEED_DEVICE() \
    do {                                                          \
        if (!have_device) {                                       \
            printf("skipped: no CUDA device\n");                  \
            skip();                                               \
        }                                                         \
    } while (0)

/* One forward through mobagen_fwd (so through dispatch) on fresh random inputs, against the C
 * reference: the selection must agree up to rare near-tie swaps, and the attention output,
 * recomputed by the reference over the GPU's selection, to bf16 accuracy. */
static void check_forward(mobagen_op *op, const char *label, unsigned seed)
{
    enum { BATCH = 2, HKV = 2 };
    const int lens[BATCH] = {700, 1024};
    int d = spec.head_dim, hq = HKV * spec.gqa_group, k = spec.top_k, cw = spec.conv_width;
    int cu[BATCH + 1] = {0};
    for (int b = 0; b < BATCH; b++) cu[b + 1] = cu[b] + lens[b];
    int total = cu[BATCH];
    size_t nq = (size_t)total * hq * d, nk = (size_t)total * HKV * d, nw = (size_t)HKV * cw * d;
    uint16_t *q = malloc(2 * nq), *kk = malloc(2 * nk), *v = malloc(2 * nk), *w = malloc(2 * nw + 2);
    double *qd = malloc(8 * nq), *kd = malloc(8 * nk), *vd = malloc(8 * nk), *wd = malloc(8 * nw + 8);
    rng r = {seed};
    for (size_t i = 0; i < nq; i++) qd[i] = bf16_to_float(q[i] = float_to_bf16((float)rng_normal(&r)));
    for (size_t i = 0; i < nk; i++) kd[i] = bf16_to_float(kk[i] = float_to_bf16((float)rng_normal(&r)));
    for (size_t i = 0; i < nk; i++) vd[i] = bf16_to_float(v[i] = float_to_bf16((float)rng_normal(&r)));
    for (size_t i = 0; i < nw; i++) wd[i] = bf16_to_float(w[i] = float_to_bf16((float)(0.3 * rng_normal(&r))));
    cu_deviceptr dq = gpu_alloc(&env, 2 * nq), dk = gpu_alloc(&env, 2 * nk), dv = gpu_alloc(&env, 2 * nk);
    cu_deviceptr dw = gpu_alloc(&env, 2 * nw), dout = gpu_alloc(&env, 2 * nq);
    cu_deviceptr dlse = gpu_alloc(&env, 4 * (size_t)total * hq), dcu = gpu_alloc(&env, sizeof cu);
    gpu_upload(&env, dq, q, 2 * nq);
    gpu_upload(&env, dk, kk, 2 * nk);
    gpu_upload(&env, dv, v, 2 * nk);
    gpu_upload(&env, dw, w, 2 * nw);
    gpu_upload(&env, dcu, cu, sizeof cu);
    mobagen_fwd_args a = {.batch = BATCH, .hq = hq, .hkv = HKV, .head_dim = d, .total_q = total,
                          .total_k = total, .max_seqlen_q = 1024, .max_seqlen_k = 1024,
                          .dtype = MG_BF16, .q = dq, .k = dk, .v = dv, .out = dout,
                          .cu_seqlens_q = dcu, .cu_seqlens_k = dcu, .conv_weight = dw, .lse = dlse};
    size_t ws_bytes;
    if (mobagen_fwd_workspace_size(op, &a, &ws_bytes) != MG_OK) fail_msg("%s", mobagen_op_errmsg(op));
    cu_deviceptr ws = gpu_alloc(&env, ws_bytes);
    gpu_fill32(&env, dout, POISON, 2 * nq);
    gpu_fill32(&env, dlse, POISON, 4 * (size_t)total * hq);
    gpu_fill32(&env, ws, 0x7fc00001u, ws_bytes);
    if (mobagen_fwd(op, &a, ws, ws_bytes, NULL) != MG_OK)
        fail_msg("%s: mobagen_fwd: %s", label, mobagen_op_errmsg(op));
    gpu_sync(&env);
    uint16_t *out = malloc(2 * nq);
    float *lse = malloc(4 * (size_t)total * hq);
    int *sel = malloc(4 * (size_t)total * hq * k), *sel_ref = malloc(4 * (size_t)total * hq * k);
    gpu_download(&env, out, dout, 2 * nq);
    gpu_download(&env, lse, dlse, 4 * (size_t)total * hq);
    gpu_download(&env, sel, mobagen_fwd_selection(op, &a, ws), 4 * (size_t)total * hq * k);

    moba_ref_cfg cfg = {.batch = BATCH, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = hq, .hkv = HKV,
                        .d = d, .block_size = spec.block_size, .top_k = k, .causal = spec.causal,
                        .conv_width = cw, .scale = 1.0 / sqrt((double)d)};
    double *o_ref = malloc(8 * nq), *lse_ref = malloc(8 * (size_t)total * hq), *kp = malloc(8 * nk);
    assert_int_equal(moba_ref_forward(&cfg, qd, kd, vd, wd, o_ref, lse_ref, sel_ref), 0);
    long differing = 0;
    for (size_t i = 0; i < (size_t)total * hq; i++)
        differing += memcmp(sel + i * k, sel_ref + i * k, 4 * (size_t)k) != 0;
    if (differing > (long)total * hq / 100)
        fail_msg("%s: selection differs from the reference on %ld of %d rows", label, differing, total * hq);
    moba_ref_kconv(&cfg, kd, wd, kp);
    /* The GPU keeps k' in the element type: the reference attends over the same rounded keys. */
    if (cw > 0)
        for (size_t i = 0; i < nk; i++) kp[i] = bf16_to_float(float_to_bf16((float)kp[i]));
    moba_ref_attention(&cfg, qd, kp, vd, sel, o_ref, lse_ref);
    double err2 = 0, ref2 = 0, worst_lse = 0;
    for (size_t i = 0; i < nq; i++) {
        double g = bf16_to_float(out[i]);
        if (isnan(g)) fail_msg("%s: out[%zu] not written", label, i);
        err2 += (g - o_ref[i]) * (g - o_ref[i]);
        ref2 += o_ref[i] * o_ref[i];
    }
    for (size_t i = 0; i < (size_t)total * hq; i++) {
        if (isnan(lse[i])) fail_msg("%s: lse[%zu] not written", label, i);
        if (isinf(lse_ref[i]) || isinf(lse[i])) {
            if (!(isinf(lse_ref[i]) && isinf(lse[i]))) fail_msg("%s: lse[%zu] %g vs %g", label, i, lse[i], lse_ref[i]);
            continue;
        }
        worst_lse = fmax(worst_lse, fabs(lse[i] - lse_ref[i]) / fmax(1.0, fabs(lse_ref[i])));
    }
    double o_err = sqrt(err2 / ref2);
    printf("  %s: o rel err %.3g, lse err %.3g, %ld rows routed otherwise (near ties)\n", label, o_err,
           worst_lse, differing);
    if (o_err > 1e-2) fail_msg("%s: relative error of o %.3g exceeds 1e-2", label, o_err);
    if (worst_lse > 2e-4) fail_msg("%s: LSE error %.3g exceeds 2e-4", label, worst_lse);
    cu_deviceptr bufs[] = {dq, dk, dv, dw, dout, dlse, dcu, ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gpu_free(&env, bufs[i]);
    void *host[] = {q, kk, v, w, qd, kd, vd, wd, out, lse, sel, sel_ref, o_ref, lse_ref, kp};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* A failed test leaves by longjmp: the environment it changed is restored here. */
static int reset_env(void **state)
{
    const char *vars[] = {"MOBAGEN_NVRTC", "MOBAGEN_TEMPLATE_DIR", "MOBAGEN_TUNING_DB", "MOBAGEN_AUTOTUNE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
    return 0;
}

static mobagen_fwd_args bucket_args(int seqlen)
{
    return (mobagen_fwd_args){.batch = 2, .hkv = 2, .hq = 2 * spec.gqa_group, .head_dim = spec.head_dim,
                              .max_seqlen_q = seqlen, .max_seqlen_k = seqlen};
}

static void run_cli(const char *const *argv, int want_rc, char **out)
{
    char *o, *e;
    int rc = tu_run(argv, NULL, &o, &e);
    if (rc != want_rc) fail_msg("%s %s exited %d (want %d): %s%s", argv[0], argv[1], rc, want_rc, o, e);
    free(e);
    if (out) *out = o;
    else free(o);
}

static int nvrtc_mapped(void)
{
    size_t n;
    char *maps = tu_read_file("/proc/self/maps", &n);
    int found = maps && strstr(maps, "libnvrtc") != NULL;
    free(maps);
    return found;
}

/* First in the file, so that nothing in this process has loaded NVRTC before it. */
static void test_bundle_without_nvrtc(void **state)
{
    NEED_DEVICE();
    char bundle[700], wrong[700];
    snprintf(bundle, sizeof bundle, "%s/deploy.mgb", work);
    snprintf(wrong, sizeof wrong, "%s/wrong.mgb", work);
    const char *arch = mobagen_ctx_arch(env.ctx);
    const char *make[] = {cli, "bundle", spec_path, "--arch", arch, "-o", bundle, NULL};
    run_cli(make, 0, NULL);
    assert_false(nvrtc_mapped());

    setenv("MOBAGEN_NVRTC", "/nonexistent/libnvrtc.so", 1);
    setenv("MOBAGEN_TEMPLATE_DIR", "/nonexistent/templates", 1);
    mobagen_ctx *ctx;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MG_OK);
    assert_int_equal(mobagen_ctx_add_bundle(ctx, bundle), MG_OK);
    mobagen_op *op;
    if (mg_op_create_from_spec(ctx, &spec, &op) != MG_OK) fail_msg("%s", mobagen_ctx_errmsg(ctx));
    printf("  kernels from %s\n", mobagen_op_origin(op));
    assert_true(!strncmp(mobagen_op_origin(op), "bundle ", 7));
    assert_false(nvrtc_mapped());
    assert_int_equal(mobagen_op_variant_count(op, "attn_fwd") > 0, 1);
    /* Every variant the bundle holds runs and is right. */
    int n_route = mobagen_op_variant_count(op, "route"), n_attn = mobagen_op_variant_count(op, "attn_fwd");
    int runs = n_route > n_attn ? n_route : n_attn;
    for (int i = 0; i < runs; i++) {
        assert_int_equal(mobagen_op_select(op, "route", i % n_route), MG_OK);
        assert_int_equal(mobagen_op_select(op, "attn_fwd", i % n_attn), MG_OK);
        char label[400];
        snprintf(label, sizeof label, "bundle [%s | %s]", mobagen_op_variant_id(op, "route", i % n_route),
                 mobagen_op_variant_id(op, "attn_fwd", i % n_attn));
        check_forward(op, label, 100 + (unsigned)i);
    }
    assert_false(nvrtc_mapped());
    mobagen_op_destroy(op);
    mobagen_ctx_destroy(ctx);

    /* A bundle for an arch this device cannot run says what it has and what is needed. */
    if (strncmp(arch, "sm_8", 4)) {
        unsetenv("MOBAGEN_NVRTC");
        unsetenv("MOBAGEN_TEMPLATE_DIR");
        const char *make_wrong[] = {cli, "bundle", spec_path, "--arch", "sm_80", "-o", wrong, NULL};
        run_cli(make_wrong, 0, NULL);
        assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MG_OK);
        assert_int_equal(mobagen_ctx_add_bundle(ctx, wrong), MG_OK);
        assert_int_equal(mg_op_create_from_spec(ctx, &spec, &op), MG_E_UNSUPPORTED);
        printf("  %s\n", mobagen_ctx_errmsg(ctx));
        assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "for sm_80; device"));
        assert_non_null(strstr(mobagen_ctx_errmsg(ctx), "needs sm_"));
        mobagen_ctx_destroy(ctx);
    }
    unsetenv("MOBAGEN_NVRTC");
    unsetenv("MOBAGEN_TEMPLATE_DIR");
}

typedef struct collected {
    int n, ok;
} collected;

static void on_result(const mobagen_tune_result *r, void *user)
{
    collected *c = user;
    c->n++;
    c->ok += r->ok;
    printf("  %-48s %s %9.1f us  %s\n", r->variant_id, r->ok ? "ok   " : "WRONG", r->median_us, r->note);
}

static void test_tune_and_dispatch(void **state)
{
    NEED_DEVICE();
    char db[700];
    snprintf(db, sizeof db, "%s/tuning.db", work);
    setenv("MOBAGEN_TUNING_DB", db, 1);
    mobagen_op *op;
    if (mg_op_create_from_spec(env.ctx, &spec, &op) != MG_OK) fail_msg("%s", mobagen_ctx_errmsg(env.ctx));
    int total = mobagen_op_variant_count(op, "kconv_centroid") + mobagen_op_variant_count(op, "route") +
                mobagen_op_variant_count(op, "attn_fwd");
    collected c = {0};
    mobagen_tune_options o = {.batch = 2, .hkv = 2, .seqlen = 1024, .reps = 10, .save = 1,
                              .on_result = on_result, .user = &c};
    if (mobagen_op_tune(op, &o) != MG_OK) fail_msg("tune: %s", mobagen_op_errmsg(op));
    assert_int_equal(c.n, total);
    assert_int_equal(c.ok, total);   /* every shipped variant agrees with the reference variant */
    mobagen_op_destroy(op);

    mg_tunedb tdb = {0};
    mg_diag d;
    assert_int_equal(mg_tunedb_load(&tdb, db, 1, &d), MG_OK);
    assert_int_equal(tdb.n, 1);
    assert_int_equal(tdb.warnings, 0);
    assert_string_equal(tdb.recs[0].fp.gpu, mobagen_ctx_device_name(env.ctx));
    assert_int_equal(tdb.recs[0].bucket.seqlen, 1024);
    assert_int_equal(tdb.recs[0].bucket.bh, 8);
    assert_int_equal(tdb.recs[0].bucket.gqa, 2);

    /* A new op dispatches that bucket to the recorded winners, others by the heuristic, and
     * the same inputs always to the same variants. */
    if (mg_op_create_from_spec(env.ctx, &spec, &op) != MG_OK) fail_msg("%s", mobagen_ctx_errmsg(env.ctx));
    static const char *const tpls[] = {"kconv_centroid", "route", "attn_fwd"};
    mobagen_fwd_args in_bucket = bucket_args(1000), other = bucket_args(100);
    for (int t = 0; t < 3; t++) {
        const char *source;
        int idx = mobagen_op_dispatch(op, &in_bucket, tpls[t], &source);
        assert_string_equal(source, "tuned");
        const char *id = mobagen_op_variant_id(op, tpls[t], idx);
        const char *want = mg_tune_record_point(&tdb.recs[0], tpls[t]);
        assert_non_null(want);
        assert_string_equal(strrchr(id, '/') + 1, want);
        assert_int_equal(mobagen_op_dispatch(op, &in_bucket, tpls[t], &source), idx);
        mobagen_op_dispatch(op, &other, tpls[t], &source);
        assert_string_equal(source, "heuristic");
    }
    check_forward(op, "dispatched to the tuned winners", 7);
    /* A pinned template stays pinned. */
    assert_int_equal(mobagen_op_select(op, "route", 0), MG_OK);
    const char *source;
    assert_int_equal(mobagen_op_dispatch(op, &in_bucket, "route", &source), 0);
    assert_string_equal(source, "pinned");
    mobagen_op_destroy(op);
    mg_tunedb_free(&tdb);
    unsetenv("MOBAGEN_TUNING_DB");
}

static void test_autotune_first_use(void **state)
{
    NEED_DEVICE();
    char db[700];
    snprintf(db, sizeof db, "%s/auto.db", work);
    setenv("MOBAGEN_TUNING_DB", db, 1);
    setenv("MOBAGEN_AUTOTUNE", "1", 1);
    mobagen_op *op;
    if (mg_op_create_from_spec(env.ctx, &spec, &op) != MG_OK) fail_msg("%s", mobagen_ctx_errmsg(env.ctx));
    check_forward(op, "autotuned on first use", 11);
    mg_tunedb tdb = {0};
    mg_diag d;
    assert_int_equal(mg_tunedb_load(&tdb, db, 1, &d), MG_OK);
    assert_int_equal(tdb.n, 1);
    mg_tunedb_free(&tdb);
    mobagen_fwd_args in_bucket = bucket_args(1024);
    const char *source;
    mobagen_op_dispatch(op, &in_bucket, "attn_fwd", &source);
    assert_string_equal(source, "tuned");
    mobagen_op_destroy(op);
    unsetenv("MOBAGEN_AUTOTUNE");
    unsetenv("MOBAGEN_TUNING_DB");
}

/* A bundle made with --tuning carries the records: a deployment with an empty database
 * dispatches by them. */
static void test_bundle_carries_tuning(void **state)
{
    NEED_DEVICE();
    char db[700], bundle[700], empty[700];
    snprintf(db, sizeof db, "%s/tuning.db", work);
    snprintf(bundle, sizeof bundle, "%s/tuned.mgb", work);
    snprintf(empty, sizeof empty, "%s/empty.db", work);
    const char *make[] = {cli, "bundle", spec_path, "--arch", mobagen_ctx_arch(env.ctx), "-o", bundle,
                          "--tuning", db, NULL};
    char *out;
    run_cli(make, 0, &out);
    assert_non_null(strstr(out, "1 tuning records"));
    free(out);
    setenv("MOBAGEN_TUNING_DB", empty, 1);
    mobagen_ctx *ctx;
    assert_int_equal(mobagen_ctx_create(0, NULL, &ctx), MG_OK);
    assert_int_equal(mobagen_ctx_add_bundle(ctx, bundle), MG_OK);
    mobagen_op *op;
    if (mg_op_create_from_spec(ctx, &spec, &op) != MG_OK) fail_msg("%s", mobagen_ctx_errmsg(ctx));
    mobagen_fwd_args in_bucket = bucket_args(1024);
    const char *source;
    mobagen_op_dispatch(op, &in_bucket, "route", &source);
    assert_string_equal(source, "tuned");
    check_forward(op, "bundle with its tuning records", 13);
    mobagen_op_destroy(op);
    mobagen_ctx_destroy(ctx);
    unsetenv("MOBAGEN_TUNING_DB");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bundle_without_nvrtc, reset_env),
        cmocka_unit_test_teardown(test_tune_and_dispatch, reset_env),
        cmocka_unit_test_teardown(test_autotune_first_use, reset_env),
        cmocka_unit_test_teardown(test_bundle_carries_tuning, reset_env),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
