/* Times the routing stages (centroids with their high/low split, then gate scores and top-k) on
 * the FlashMoBA shapes (batch 2, 16 heads, d = 128, causal, bf16) for B/k pairs from 128/8 to
 * 16/64, each tensor-core route variant; at 32K it also checks that impl 3 selects what impl 2
 * selects (they differ only where two scores are within fp32 accumulation error).
 *   bench_route [min_L max_L [B]]   (default 8192 131072, every B; B16 stops at 32K)
 * MOBAGEN_BENCH_ROUTE_DEFAULT=1 times only the default route variant (the first), and impl 2
 * where it is the check (32K); =2 the default alone (a short call on a lent GPU); =3 the first
 * two (on sm_90a impl 4 and impl 3 at 256 rows: wgmma against mma.sync scores). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define REPS 5

static int compare_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float time_stage(gpu_env *env, mobagen_op *op, const mobagen_fwd_args *a, cu_deviceptr ws,
                        size_t ws_bytes, unsigned stages)
{
    cu_event start, stop;
    env->cu.EventCreate(&start, 0);
    env->cu.EventCreate(&stop, 0);
    float t[REPS];
    mg_fwd_stages(op, a, ws, ws_bytes, NULL, stages);   /* warm-up */
    for (int r = 0; r < REPS; r++) {
        env->cu.EventRecord(start, NULL);
        if (mg_fwd_stages(op, a, ws, ws_bytes, NULL, stages) != MG_OK) {
            fprintf(stderr, "forward failed: %s\n", mobagen_op_errmsg(op));
            exit(1);
        }
        env->cu.EventRecord(stop, NULL);
        if (env->cu.EventSynchronize(stop) != 0) {
            fprintf(stderr, "launch failed\n");
            exit(1);
        }
        env->cu.EventElapsedTime(&t[r], start, stop);
    }
    env->cu.EventDestroy(start);
    env->cu.EventDestroy(stop);
    qsort(t, REPS, sizeof t[0], compare_float);
    return t[REPS / 2];
}

/* Uniform in (-2, 2) from xorshift64*: at 128K there are 2^29 elements per tensor, too many
 * for rng_normal's logarithms; the spread of the scores, not their distribution, matters here. */
static void fill_random(gpu_env *env, cu_deviceptr p, size_t n, rng *r)
{
    uint16_t *h = malloc(2 * n);
    uint64_t x = rng_next(r) | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint32_t u = (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 40);   /* 24 random bits */
        h[i] = float_to_bf16((float)u * (4.0f / 16777216.0f) - 2.0f);
    }
    gpu_upload(env, p, h, 2 * n);
    free(h);
}

static mobagen_op *make_op(gpu_env *env, int block, int top_k)
{
    char yaml[512], name[64];
    snprintf(name, sizeof name, "route_b%d_k%d", block, top_k);
    /* attention impl 1 needs no block lists, so the workspace stays small at 128K */
    snprintf(yaml, sizeof yaml,
             "name: %s\nhead_dim: 128\nblock_size: %d\ntop_k: %d\ncausal: true\ndtype: bf16\n"
             "tuning:\n  kconv_centroid: { threads: 256 }\n  route: { impl: [4, 3, 2] }\n"
             "  attn_fwd: { impl: 1, warps: 4 }\n", name, block, top_k);
    mg_spec spec;
    mg_diag d;
    mobagen_op *op;
    if (mg_spec_parse(yaml, strlen(yaml), name, &spec, &d) != MG_OK) {
        fprintf(stderr, "spec: %s\n", d.msg);
        exit(1);
    }
    if (mg_op_create_from_spec(env->ctx, &spec, &op) != MG_OK) {
        fprintf(stderr, "%s: %s\n", name, mobagen_ctx_errmsg(env->ctx));
        exit(1);
    }
    return op;
}

int main(int argc, char **argv)
{
    gpu_env env;
    if (gpu_env_open(&env) != 0) {
        printf("skipped: no CUDA device (%s)\n", env.why_not);
        return 0;
    }
    int min_len = argc > 2 ? atoi(argv[1]) : 8192, max_len = argc > 2 ? atoi(argv[2]) : 131072;
    int only_block = argc > 3 ? atoi(argv[3]) : 0;
    const char *only_default_env = getenv("MOBAGEN_BENCH_ROUTE_DEFAULT");
    int only_default = only_default_env ? atoi(only_default_env) : 0;
    const int pairs[][2] = {{128, 8}, {64, 16}, {32, 32}, {16, 64}};
    const int lengths[] = {8192, 32768, 65536, 131072};
    int batch = 2, heads = 16, d = 128;
    printf("device %s; batch %d, heads %d, d %d, causal, bf16; median of %d, ms\n",
           mobagen_ctx_device_name(env.ctx), batch, heads, d, REPS);
    printf("%5s %4s %7s %9s  %-28s %9s %9s %s\n", "B", "k", "L", "centroid", "route variant", "route",
           "TFLOP/s", "sel. mismatches vs impl 2");
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
        int block = pairs[pi][0], top_k = pairs[pi][1];
        if (only_block && block != only_block) continue;
        mobagen_op *op = make_op(&env, block, top_k);
        for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
            int L = lengths[li];
            if (L < min_len || L > max_len || (block == 16 && L > 32768)) continue;
            size_t n = (size_t)batch * L * heads * d;
            rng r = {0xb0e7e000ull + (uint64_t)L};
            cu_deviceptr q = gpu_alloc(&env, 2 * n), k = gpu_alloc(&env, 2 * n);
            cu_deviceptr lse = gpu_alloc(&env, 4 * (size_t)batch * L * heads);
            cu_deviceptr cu = gpu_alloc(&env, 4 * (batch + 1));
            fill_random(&env, q, n, &r);
            fill_random(&env, k, n, &r);
            int cu_host[3] = {0, L, 2 * L};
            gpu_upload(&env, cu, cu_host, sizeof cu_host);
            /* v and out are never touched by the routing stages */
            mobagen_fwd_args a = {.batch = batch, .hq = heads, .hkv = heads, .head_dim = d,
                                  .total_q = batch * L, .total_k = batch * L, .max_seqlen_q = L,
                                  .max_seqlen_k = L, .dtype = MG_BF16, .q = q, .k = k, .v = k,
                                  .out = q, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .lse = lse};
            size_t ws_bytes;
            mobagen_fwd_workspace_size(op, &a, &ws_bytes);
            cu_deviceptr ws = gpu_alloc(&env, ws_bytes);
            float centroid_ms = time_stage(&env, op, &a, ws, ws_bytes, MG_STAGE_CENTROIDS);
            size_t n_sel = (size_t)batch * L * heads * top_k;
            int *sel[2] = {NULL, NULL};
            int n_route = mobagen_op_variant_count(op, "route");
            for (int i = 0; i < n_route; i++) {
                const char *id = mobagen_op_variant_id(op, "route", i);
                int impl2 = strstr(id, "impl=2") != NULL;
                /* impl 2 costs up to seconds: the reference point at 8K and 32K only */
                if (impl2 && (L > 32768 || only_default >= 2)) continue;
                if (only_default && i >= (only_default == 3 ? 2 : 1) && !impl2) continue;
                mobagen_op_select(op, "route", i);
                float ms = time_stage(&env, op, &a, ws, ws_bytes, MG_STAGE_ROUTE);
                /* causal half of the 2 L (L / B) d score products, twice (high and low parts) */
                double flop = 2.0 * batch * heads * (double)L * (L / block) / 2 * d * 2;
                char check[64] = "";
                if (L == 32768) {
                    int *s = malloc(sizeof(int) * n_sel);
                    gpu_download(&env, s, mobagen_fwd_selection(op, &a, ws), sizeof(int) * n_sel);
                    if (impl2) sel[1] = s;
                    else if (!sel[0]) sel[0] = s;
                    else free(s);
                    if (sel[0] && sel[1]) {
                        long long diff = 0;
                        for (size_t e = 0; e < n_sel; e++) diff += sel[0][e] != sel[1][e];
                        snprintf(check, sizeof check, "%lld of %zu", diff, n_sel);
                    }
                }
                printf("%5d %4d %7d %9.3f  %-28s %9.3f %9.1f %s\n", block, top_k, L, centroid_ms,
                       id + strlen("route/"), ms, flop / (ms * 1e-3) / 1e12, check);
                fflush(stdout);
            }
            free(sel[0]);
            free(sel[1]);
            gpu_free(&env, q); gpu_free(&env, k); gpu_free(&env, lse); gpu_free(&env, cu);
            gpu_free(&env, ws);
        }
        mobagen_op_destroy(op);
    }
    gpu_env_close(&env);
    return 0;
}
