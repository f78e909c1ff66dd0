/* Times mobagen's forward, stage by stage, on the FlashMoBA paper's shapes (batch 2, 16 heads,
 * d = 128, causal, bf16) for each shipped paper spec and sequence length, every variant, and
 * prints the best and the workspace bytes. Median of CUDA-event timings over several runs, on
 * random inputs.  bench_fwd [--first] [L ...]: --first times only each template's default
 * (first) variant; L overrides the sequence lengths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define REPS 7

static int compare_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median milliseconds of `stages` over REPS runs. */
static float time_stages(gpu_env *env, mobagen_op *op, const mobagen_fwd_args *a, cu_deviceptr ws,
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
        env->cu.EventSynchronize(stop);
        env->cu.EventElapsedTime(&t[r], start, stop);
    }
    env->cu.EventDestroy(start);
    env->cu.EventDestroy(stop);
    qsort(t, REPS, sizeof t[0], compare_float);
    return t[REPS / 2];
}

/* Sum of two uniforms (mean 0, variance 1): at 128K a normal draw per element costs tens of
 * seconds of the device machine's time; the selections stay as random. */
static void fill_random(gpu_env *env, cu_deviceptr p, size_t n, rng *r)
{
    uint16_t *h = malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = rng_next(r);
        float u = (float)(x >> 40) * (1.0f / 16777216.0f), v = (float)(x & 0xffffff) * (1.0f / 16777216.0f);
        h[i] = float_to_bf16((u + v - 1.0f) * 2.449f);
    }
    gpu_upload(env, p, h, 2 * n);
    free(h);
}

int main(int argc, char **argv)
{
    gpu_env env;
    if (gpu_env_open(&env) != 0) {
        printf("skipped: no CUDA device (%s)\n", env.why_not);
        return 0;
    }
    const char *root = getenv("MOBAGEN_TEST_ROOT");
    const char *specs[] = {"moba_d128_b128_k8", "moba_d128_b64_k16", "moba_d128_b32_k32"};
    int lengths[16] = {8192, 32768, 65536}, n_lengths = 3, first_only = 0;
    for (int i = 1, n = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--first")) first_only = 1;
        else if (n < 16) lengths[n++] = atoi(argv[i]), n_lengths = n;
    }
    int batch = 2, heads = 16, d = 128;
    printf("device %s; batch %d, heads %d, d %d, causal, bf16; median of %d, ms\n",
           mobagen_ctx_device_name(env.ctx), batch, heads, d, REPS);
    printf("%-20s %6s %9s %9s %9s %9s %8s %9s  %s\n", "spec", "L", "centroid", "route", "attn",
           "total", "TFLOP/s", "ws MiB", "best variants");
    for (size_t si = 0; si < sizeof specs / sizeof specs[0]; si++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/specs/%s.yaml", root ? root : ".", specs[si]);
        mobagen_op *op;
        if (mobagen_op_create(env.ctx, path, &op) != MG_OK) {
            fprintf(stderr, "%s: %s\n", path, mobagen_ctx_errmsg(env.ctx));
            return 1;
        }
        const mg_spec *s = mobagen_op_spec(op);
        for (int li = 0; li < n_lengths; li++) {
            int L = lengths[li];
            size_t n = (size_t)batch * L * heads * d;
            rng r = {0xbe5c0000ull + L};
            cu_deviceptr q = gpu_alloc(&env, 2 * n), k = gpu_alloc(&env, 2 * n), v = gpu_alloc(&env, 2 * n);
            cu_deviceptr o = gpu_alloc(&env, 2 * n), lse = gpu_alloc(&env, 4 * (size_t)batch * L * heads);
            cu_deviceptr cu = gpu_alloc(&env, 4 * (batch + 1));
            fill_random(&env, q, n, &r);
            fill_random(&env, k, n, &r);
            fill_random(&env, v, n, &r);
            int cu_host[3] = {0, L, 2 * L};
            gpu_upload(&env, cu, cu_host, sizeof cu_host);
            mobagen_fwd_args a = {.batch = batch, .hq = heads, .hkv = heads, .head_dim = d,
                                  .total_q = batch * L, .total_k = batch * L, .max_seqlen_q = L,
                                  .max_seqlen_k = L, .dtype = MG_BF16, .q = q, .k = k, .v = v,
                                  .out = o, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .lse = lse};
            size_t ws_bytes;
            mobagen_fwd_workspace_size(op, &a, &ws_bytes);
            cu_deviceptr ws = gpu_alloc(&env, ws_bytes);
            float best[3] = {INFINITY, INFINITY, INFINITY};
            int best_i[3] = {0, 0, 0};
            const char *tpl[3] = {"kconv_centroid", "route", "attn_fwd"};
            unsigned stage[3] = {MG_STAGE_CENTROIDS, MG_STAGE_ROUTE, MG_STAGE_ATTN};
            for (int t = 0; t < 3; t++)
                for (int i = 0; i < (first_only ? 1 : mobagen_op_variant_count(op, tpl[t])); i++) {
                    mobagen_op_select(op, tpl[t], i);
                    float ms = time_stages(&env, op, &a, ws, ws_bytes, stage[t]);
                    if (ms < best[t]) {
                        best[t] = ms;
                        best_i[t] = i;
                    }
                }
            for (int t = 0; t < 3; t++) mobagen_op_select(op, tpl[t], best_i[t]);
            float total = time_stages(&env, op, &a, ws, ws_bytes, MG_STAGE_ALL);
            /* Useful attention work: each query sees about k*B keys (moba.md, costs). */
            double flop = 4.0 * batch * heads * (double)L * s->top_k * s->block_size * d;
            printf("%-20s %6d %9.3f %9.3f %9.3f %9.3f %8.1f %9.1f  %s %s %s\n", s->name, L, best[0],
                   best[1], best[2], total, flop / (total * 1e-3) / 1e12, ws_bytes / 1048576.0,
                   mobagen_op_variant_id(op, tpl[0], best_i[0]), mobagen_op_variant_id(op, tpl[1], best_i[1]),
                   mobagen_op_variant_id(op, tpl[2], best_i[2]));
            fflush(stdout);
            gpu_free(&env, q); gpu_free(&env, k); gpu_free(&env, v); gpu_free(&env, o);
            gpu_free(&env, lse); gpu_free(&env, cu); gpu_free(&env, ws);
        }
        mobagen_op_destroy(op);
    }
    gpu_env_close(&env);
    return 0;
}
