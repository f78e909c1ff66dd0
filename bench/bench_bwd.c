/* Times mobagen's backward on the FlashMoBA paper's shapes (batch 2, 16 heads, d 128, causal,
 * bf16): the forward, the backward alone (given the forward's selection, as the PyTorch binding
 * calls it), forward + backward, and the backward's deterministic mode. Useful TFLOP/s count the
 * selected keys only: each query sees about k*B keys, the forward does 2 matmuls over them
 * (4*L*k*B*d FLOP per sequence and head) and the backward 5 (10*L*k*B*d).
 *
 *   bench_bwd [--csv FILE] [SPEC:L ...]     (default: the grid below)
 *
 * Median of CUDA-event timings after a warm-up, on random (never zero) inputs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define MAX_CASES 64

typedef struct bench_case { char spec[64]; int L; } bench_case;

static const bench_case default_grid[] = {
    {"moba_d128_b128_k8", 8192}, {"moba_d128_b128_k8", 32768}, {"moba_d128_b128_k8", 65536},
    {"moba_d128_b128_k8", 131072},
    {"moba_d128_b64_k16", 8192}, {"moba_d128_b64_k16", 32768}, {"moba_d128_b64_k16", 65536},
    {"moba_d128_b64_k16", 131072},
    {"moba_d128_b32_k32", 8192}, {"moba_d128_b32_k32", 32768}, {"moba_d128_b32_k32", 65536},
    {"moba_d128_b32_k32", 131072},
};

static int compare_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef struct bench_call {
    mobagen_op *op;
    const mobagen_fwd_args *fwd;
    const mobagen_bwd_args *bwd;
    cu_deviceptr fws, bws;
    size_t fws_bytes, bws_bytes;
    int run_fwd, run_bwd;
} bench_call;

static void run_once(const bench_call *c)
{
    if (c->run_fwd && mobagen_fwd(c->op, c->fwd, c->fws, c->fws_bytes, NULL) != MG_OK) {
        fprintf(stderr, "forward failed: %s\n", mobagen_op_errmsg(c->op));
        exit(1);
    }
    if (c->run_bwd && mobagen_bwd(c->op, c->bwd, c->bws, c->bws_bytes, NULL) != MG_OK) {
        fprintf(stderr, "backward failed: %s\n", mobagen_op_errmsg(c->op));
        exit(1);
    }
}

/* Median milliseconds of reps runs after one warm-up. */
static float time_call(gpu_env *env, const bench_call *c, int reps)
{
    cu_event start, stop;
    float t[16];
    env->cu.EventCreate(&start, 0);
    env->cu.EventCreate(&stop, 0);
    run_once(c);
    for (int r = 0; r < reps; r++) {
        env->cu.EventRecord(start, NULL);
        run_once(c);
        env->cu.EventRecord(stop, NULL);
        env->cu.EventSynchronize(stop);
        env->cu.EventElapsedTime(&t[r], start, stop);
    }
    env->cu.EventDestroy(start);
    env->cu.EventDestroy(stop);
    qsort(t, (size_t)reps, sizeof t[0], compare_float);
    return t[reps / 2];
}

/* Uniform values in [-2, 2) as bf16: random enough to route on, and fast for 10^9 elements. */
static void fill_random(gpu_env *env, cu_deviceptr p, size_t n, rng *r)
{
    uint16_t *h = malloc(2 * n);
    for (size_t i = 0; i < n; i += 4) {
        uint64_t x = rng_next(r);
        for (size_t j = 0; j < 4 && i + j < n; j++, x >>= 16)
            h[i + j] = float_to_bf16((float)((double)(x & 0xffff) / 16384.0 - 2.0));
    }
    gpu_upload(env, p, h, 2 * n);
    free(h);
}

static int parse_case(const char *arg, bench_case *c)
{
    const char *colon = strrchr(arg, ':');
    if (!colon || (size_t)(colon - arg) >= sizeof c->spec) return -1;
    memcpy(c->spec, arg, (size_t)(colon - arg));
    c->spec[colon - arg] = 0;
    c->L = atoi(colon + 1);
    return c->L > 0 ? 0 : -1;
}

static void bench_one(gpu_env *env, const bench_case *c, FILE *csv)
{
    const char *root = getenv("MOBAGEN_TEST_ROOT");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/specs/%s.yaml", root ? root : ".", c->spec) >= (int)sizeof path) {
        fprintf(stderr, "MOBAGEN_TEST_ROOT is too long\n");
        exit(2);
    }
    mobagen_op *op;
    if (mobagen_op_create(env->ctx, path, &op) != MG_OK) {
        fprintf(stderr, "%s: %s\n", path, mobagen_ctx_errmsg(env->ctx));
        exit(1);
    }
    const mg_spec *s = mg_op_spec(op);
    int batch = 2, heads = 16, d = s->head_dim, L = c->L, hkv = heads / s->gqa_group;
    size_t nq = (size_t)batch * L * heads * d, nk = (size_t)batch * L * hkv * d;
    rng r = {0xbe5c0000ull + (uint64_t)L * 131 + (uint64_t)s->block_size};
    cu_deviceptr q = gpu_alloc(env, 2 * nq), k = gpu_alloc(env, 2 * nk), v = gpu_alloc(env, 2 * nk);
    cu_deviceptr o = gpu_alloc(env, 2 * nq), lse = gpu_alloc(env, 4 * (size_t)batch * L * heads);
    cu_deviceptr dout = gpu_alloc(env, 2 * nq), dq = gpu_alloc(env, 2 * nq);
    cu_deviceptr dk = gpu_alloc(env, 2 * nk), dv = gpu_alloc(env, 2 * nk);
    cu_deviceptr cu = gpu_alloc(env, 4 * (batch + 1)), conv = 0, dconv = 0;
    fill_random(env, q, nq, &r);
    fill_random(env, k, nk, &r);
    fill_random(env, v, nk, &r);
    fill_random(env, dout, nq, &r);
    if (s->conv_width > 0) {
        size_t nw = (size_t)hkv * s->conv_width * d;
        conv = gpu_alloc(env, 2 * nw);
        dconv = gpu_alloc(env, 4 * nw);
        fill_random(env, conv, nw, &r);
    }
    int cu_host[3] = {0, L, 2 * L};
    gpu_upload(env, cu, cu_host, sizeof cu_host);
    mobagen_fwd_args a = {.batch = batch, .hq = heads, .hkv = hkv, .head_dim = d,
                          .total_q = batch * L, .total_k = batch * L, .max_seqlen_q = L,
                          .max_seqlen_k = L, .dtype = s->dtype, .q = q, .k = k, .v = v,
                          .out = o, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .lse = lse,
                          .conv_weight = conv};
    size_t fws_bytes = 0, bws_bytes = 0, det_bytes = 0;
    if (mobagen_fwd_workspace_size(op, &a, &fws_bytes) != MG_OK) {
        fprintf(stderr, "%s L=%d: %s\n", c->spec, L, mobagen_op_errmsg(op));
        exit(1);
    }
    cu_deviceptr fws = gpu_alloc(env, fws_bytes);
    mobagen_bwd_args b = {.fwd = a, .dout = dout, .selection = mobagen_fwd_selection(op, &a, fws),
                          .dq = dq, .dk = dk, .dv = dv, .dconv_weight = dconv};
    mobagen_bwd_args bdet = b;
    bdet.deterministic = 1;
    if (mobagen_bwd_workspace_size(op, &b, &bws_bytes) != MG_OK ||
        mobagen_bwd_workspace_size(op, &bdet, &det_bytes) != MG_OK) {
        fprintf(stderr, "%s L=%d: %s\n", c->spec, L, mobagen_op_errmsg(op));
        exit(1);
    }
    size_t ws_max = bws_bytes > det_bytes ? bws_bytes : det_bytes;
    cu_deviceptr bws = gpu_alloc(env, ws_max);
    int reps = L >= 65536 ? 3 : 5;
    bench_call call = {.op = op, .fwd = &a, .bwd = &b, .fws = fws, .bws = bws, .fws_bytes = fws_bytes,
                       .bws_bytes = ws_max, .run_fwd = 1, .run_bwd = 0};
    float fwd_ms = time_call(env, &call, reps);   /* also leaves o, LSE and the selection */
    call.run_fwd = 0;
    call.run_bwd = 1;
    float bwd_ms = time_call(env, &call, reps);
    call.bwd = &bdet;
    float det_ms = time_call(env, &call, reps);
    call.bwd = &b;
    call.run_fwd = 1;
    float both_ms = time_call(env, &call, reps);
    /* Every backward variant, fast mode (the runtime's default is the first). */
    call.run_fwd = 0;
    char variants[512] = "";
    float best_ms = INFINITY;
    const char *best_id = "-";
    for (int i = 0; i < mobagen_op_variant_count(op, "attn_bwd"); i++) {
        if (mobagen_op_select(op, "attn_bwd", i) != MG_OK) continue;
        float ms = time_call(env, &call, reps);
        const char *id = strrchr(mobagen_op_variant_id(op, "attn_bwd", i), '/') + 1;
        snprintf(variants + strlen(variants), sizeof variants - strlen(variants), "  %s %.3f", id, ms);
        if (ms < best_ms) {
            best_ms = ms;
            best_id = id;
        }
    }
    mobagen_op_select(op, "attn_bwd", 0);

    double fwd_flop = 4.0 * batch * heads * (double)L * s->top_k * s->block_size * d;
    double bwd_flop = 2.5 * fwd_flop;
    double bwd_tf = bwd_flop / (bwd_ms * 1e-3) / 1e12, both_tf = (fwd_flop + bwd_flop) / (both_ms * 1e-3) / 1e12;
    printf("%-26s %7d  fwd %8.3f  bwd %8.3f (%6.1f TFLOP/s)  det %8.3f (x%.2f)  fwd+bwd %8.3f (%6.1f TFLOP/s)"
           "  ws fwd %.2f GiB bwd %.2f GiB det %.2f GiB\n    bwd variants:%s\n",
           c->spec, L, fwd_ms, bwd_ms, bwd_tf, det_ms, det_ms / bwd_ms, both_ms, both_tf,
           fws_bytes / 1073741824.0, bws_bytes / 1073741824.0, det_bytes / 1073741824.0, variants);
    if (csv) {
        fprintf(csv, "%s,%d,%d,%d,%d,%.4f,%.4f,%.4f,%.4f,%.2f,%.2f,%zu,%zu,%zu,%s,%.4f\n", c->spec, L,
                s->block_size, s->top_k, d, fwd_ms, bwd_ms, det_ms, both_ms, bwd_tf, both_tf, fws_bytes,
                bws_bytes, det_bytes, best_id, best_ms);
        fflush(csv);
    }
    cu_deviceptr bufs[] = {q, k, v, o, lse, dout, dq, dk, dv, cu, conv, dconv, fws, bws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gpu_free(env, bufs[i]);
    mobagen_op_destroy(op);
}

int main(int argc, char **argv)
{
    bench_case cases[MAX_CASES];
    int n = 0;
    const char *csv_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--csv") && i + 1 < argc) {
            csv_path = argv[++i];
        } else if (n < MAX_CASES && parse_case(argv[i], &cases[n]) == 0) {
            n++;
        } else {
            fprintf(stderr, "usage: bench_bwd [--csv FILE] [SPEC:L ...]; bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (n == 0) {
        n = (int)(sizeof default_grid / sizeof default_grid[0]);
        memcpy(cases, default_grid, sizeof default_grid);
    }
    gpu_env env;
    if (gpu_env_open(&env) != 0) {
        printf("skipped: no CUDA device (%s)\n", env.why_not);
        return 0;
    }
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) {
        fprintf(stderr, "cannot write %s\n", csv_path);
        return 1;
    }
    if (csv)
        fprintf(csv, "spec,L,B,k,d,fwd_ms,bwd_ms,bwd_det_ms,fwd_bwd_ms,bwd_tflops,fwd_bwd_tflops,"
                     "fwd_workspace_bytes,bwd_workspace_bytes,bwd_det_workspace_bytes,best_bwd_variant,best_bwd_ms\n");
    printf("device %s; batch 2, heads 16, causal; median ms; useful FLOP: fwd 4*L*k*B*d, bwd 10*L*k*B*d "
           "per sequence and head\n", mobagen_ctx_device_name(env.ctx));
    for (int i = 0; i < n; i++) bench_one(&env, &cases[i], csv);
    if (csv) fclose(csv);
    gpu_env_close(&env);
    return 0;
}
