/* Times mobagen's decode step over a paged KV cache: 32 query heads / 8 kv heads, d 128, bf16,
 * one new token per sequence, for B128/k8 and B32/k32 at batch 1..64 and cached contexts
 * 8K..512K (as memory allows). Reports the median step time (CUDA events, L2 flushed before each
 * repetition), the bytes the step must read (centroid sums plus k*B keys and values per kv head
 * and sequence: the target's count; and with the union U of the blocks the kv head's query heads
 * actually chose), the achieved bandwidth on both, each stage alone, and the append of one
 * token per sequence (kernels and centroid update) against the step. Steps run back to back
 * over enough layers (separate caches in one pool) that a pass reads 1 GiB, so the L2 holds no
 * layer's data when its turn comes, as in a model; time = pass / layers, median of passes.
 * Dense decode (SDPA) runs in bench/peers_decode.py on the same shapes.
 *
 *   bench_decode [--csv FILE] [B:k:batch:ctx ...]
 *
 * The pool holds random (never zero) keys and values, uploaded once and shared by every case;
 * centroid sums are random too (the kernels read them exactly as real ones). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define HQ 32
#define HKV 8
#define D 128
#define PAGE 16
#define MAX_TOKENS (8LL << 20)        /* pool tokens (k and v: 32 GiB): layers of small cases */
#define CENT_BYTES (2ull << 30)       /* centroid sums of all layers */
#define LAYER_READS (1024.0 * (1 << 20)) /* bytes the layers of a pass read: many times the L2 */
#define MAX_LAYERS 128
#define STEPS 400                     /* decode steps timed per case and stage, about */
#define MAX_PASSES 64
#define MAX_CASES 64

typedef struct bench_case { int B, k, batch, ctx; } bench_case;

static const bench_case default_grid[] = {
    {128, 8, 1, 8192}, {128, 8, 1, 131072}, {128, 8, 1, 524288}, {128, 8, 8, 8192}, {128, 8, 8, 32768},
    {128, 8, 8, 131072}, {128, 8, 8, 524288}, {128, 8, 32, 32768}, {128, 8, 32, 131072}, {128, 8, 64, 8192},
    {128, 8, 64, 65536},
    {32, 32, 1, 8192}, {32, 32, 1, 131072}, {32, 32, 1, 524288}, {32, 32, 8, 8192}, {32, 32, 8, 32768},
    {32, 32, 8, 131072}, {32, 32, 8, 524288}, {32, 32, 32, 32768}, {32, 32, 32, 131072}, {32, 32, 64, 8192},
    {32, 32, 64, 65536},
};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void check(mobagen_status st, mobagen_op *op, const char *what)
{
    if (st != MOBAGEN_OK) {
        fprintf(stderr, "%s failed: %s\n", what, op ? mobagen_op_errmsg(op) : "");
        exit(1);
    }
}

/* Random bf16 in [-2, 2) uploaded in 64 MiB pieces. */
static void fill_random(gpu_env *env, cu_deviceptr p, size_t bytes, rng *r)
{
    size_t chunk = 64u << 20;
    uint16_t *h = malloc(chunk);
    for (size_t i = 0; i < chunk / 2; i++) h[i] = float_to_bf16((float)(4 * rng_uniform(r) - 2));
    for (size_t off = 0; off < bytes; off += chunk) gpu_upload(env, p + off, h, bytes - off < chunk ? bytes - off : chunk);
    free(h);
}

int main(int argc, char **argv)
{
    const char *csv_path = NULL;
    int n_cases = 0;
    bench_case cases[MAX_CASES];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
        else if (n_cases < MAX_CASES && sscanf(argv[i], "%d:%d:%d:%d", &cases[n_cases].B, &cases[n_cases].k,
                                               &cases[n_cases].batch, &cases[n_cases].ctx) == 4) n_cases++;
        else {
            fprintf(stderr, "usage: bench_decode [--csv FILE] [B:k:batch:ctx ...]\n");
            return 2;
        }
    }
    if (!n_cases) {
        n_cases = (int)(sizeof default_grid / sizeof default_grid[0]);
        memcpy(cases, default_grid, sizeof default_grid);
    }
    gpu_env env;
    if (gpu_env_open(&env) != 0) {
        printf("skipped: no CUDA device (%s)\n", env.why_not);
        return 0;
    }
    mg_cuda *cu = &env.cu;
    printf("bench_decode on %s (%s): hq %d hkv %d d %d bf16, page %d, q_len 1; us per step and layer, layers back to "
           "back\n", mobagen_ctx_device_name(env.ctx), mobagen_ctx_arch(env.ctx), HQ, HKV, D, PAGE);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv)
        fprintf(csv, "B,k,batch,ctx,layers,step_us,append_us,bytes_target,bytes_union,avg_union,gbps_target,gbps_union,"
                     "splits,route_us,select_us,attn_us,merge_us,truncate_us\n");

    /* One pool for every case: pages of PAGE tokens. A case runs as a model would, layer after
     * layer: each layer has its own pages (a slice of the pool), centroid sums and lengths, and
     * the layers run back to back, enough of them that their reads exceed the L2 several times;
     * the time of a step is the time of a pass over the layers divided by their number. */
    long long pool_tokens = 0;
    int max_batch = 0;
    for (int i = 0; i < n_cases; i++) {
        long long t = (long long)cases[i].batch * (cases[i].ctx + PAGE);
        if (t > pool_tokens) pool_tokens = t;
        if (cases[i].batch > max_batch) max_batch = cases[i].batch;
    }
    if (pool_tokens < MAX_TOKENS) pool_tokens = MAX_TOKENS;
    int n_pages = (int)(pool_tokens / PAGE) + 2 * max_batch;
    size_t pool = (size_t)n_pages * PAGE * HKV * D * 2, cent_bytes = CENT_BYTES;
    rng r = rng_seeded(0xdec0de, 1);
    cu_deviceptr kp = gpu_alloc(&env, pool), vp = gpu_alloc(&env, pool), cent = gpu_alloc(&env, cent_bytes);
    fill_random(&env, kp, pool, &r);
    fill_random(&env, vp, pool, &r);
    fill_random(&env, cent, cent_bytes, &r);   /* bf16 bit pairs read as fp32: finite, varied */
    printf("pool %.1f GiB (k and v), centroid sums %.2f GiB\n", 2.0 * pool / (1 << 30), (double)cent_bytes / (1 << 30));
    printf("%5s %3s %5s %7s %6s | %8s %8s %6s | %8s %8s %6s | %7s %6s | %6s %6s %6s %6s | %6s\n", "B", "k", "batch",
           "ctx", "layers", "step_us", "MiB_tgt", "U", "GB/s_tgt", "GB/s_U", "splits", "app_us", "app%", "route",
           "select", "attn", "merge", "trunc");

    cu_event e0, e1;
    cu->EventCreate(&e0, 0);
    cu->EventCreate(&e1, 0);
    for (int ci = 0; ci < n_cases; ci++) {
        const bench_case *c = &cases[ci];
        mobagen_spec_params sp = {.head_dim = D, .block_size = c->B, .top_k = c->k, .causal = 1,
                                  .dtype = MOBAGEN_BF16, .gqa_group = HQ / HKV};
        mobagen_op *op = NULL;
        check(mobagen_op_create_from_params(env.ctx, &sp, &op), NULL, "op creation");
        const int batch = c->batch, max_pages = (c->ctx + PAGE - 1) / PAGE + 1;
        const int n_blocks = (c->ctx + c->B - 1) / c->B;
        const long long max_blocks = ((long long)max_pages * PAGE + c->B - 1) / c->B;
        const size_t cent_layer = (size_t)batch * max_blocks * HKV * D * 4;
        const double cent_read = 4.0 * n_blocks * D, kv_block = 2.0 * c->B * D * 2;
        const double read_guess = (double)batch * HKV * (cent_read + 3.0 * c->k * kv_block);
        int layers = (int)ceil(LAYER_READS / read_guess);
        if (layers > MAX_LAYERS) layers = MAX_LAYERS;
        if (layers > n_pages / (batch * max_pages)) layers = n_pages / (batch * max_pages);
        if ((size_t)layers > cent_bytes / cent_layer) layers = (int)(cent_bytes / cent_layer);
        if (layers < 1) {
            printf("%5d %3d %5d %7d: does not fit the pool\n", c->B, c->k, batch, c->ctx);
            mobagen_op_destroy(op);
            continue;
        }
        int *table = malloc(sizeof(int) * (size_t)batch * max_pages), *lens = malloc(sizeof(int) * batch);
        int *cuq = malloc(sizeof(int) * (batch + 1));
        for (int b = 0; b < batch; b++) lens[b] = c->ctx;
        for (int b = 0; b <= batch; b++) cuq[b] = b;
        mobagen_kv_cache *caches = calloc((size_t)layers, sizeof *caches);
        cu_deviceptr *dtables = calloc((size_t)layers, sizeof *dtables), *dlens = calloc((size_t)layers, sizeof *dlens);
        for (int l = 0; l < layers; l++) {
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < max_pages; i++) table[b * max_pages + i] = (l * batch + b) * max_pages + i;
            dtables[l] = gpu_alloc(&env, 4 * (size_t)batch * max_pages);
            dlens[l] = gpu_alloc(&env, 4 * (size_t)batch);
            gpu_upload(&env, dtables[l], table, 4 * (size_t)batch * max_pages);
            gpu_upload(&env, dlens[l], lens, 4 * (size_t)batch);
            caches[l] = (mobagen_kv_cache){.n_pages = n_pages, .page_size = PAGE, .max_pages = max_pages, .hkv = HKV,
                                           .head_dim = D, .dtype = MOBAGEN_BF16, .k_pages = kp, .v_pages = vp,
                                           .centroid_sum = cent + (size_t)l * cent_layer, .page_table = dtables[l],
                                           .seq_lens = dlens[l]};
        }
        cu_deviceptr dcu = gpu_alloc(&env, 4 * (batch + 1));
        gpu_upload(&env, dcu, cuq, 4 * (batch + 1));
        size_t qn = (size_t)batch * HQ * D;
        cu_deviceptr dq = gpu_alloc(&env, 2 * qn), dout = gpu_alloc(&env, 2 * qn);
        cu_deviceptr dlse = gpu_alloc(&env, 4 * (size_t)batch * HQ), dsel = gpu_alloc(&env, 4 * (size_t)batch * HQ * c->k);
        fill_random(&env, dq, 2 * qn, &r);
        mobagen_decode_args da = {.batch = batch, .hq = HQ, .max_q_len = 1, .total_q = batch, .max_seqlen = c->ctx + PAGE,
                                  .q = dq, .out = dout, .lse = dlse, .sel = dsel, .cu_seqlens_q = dcu};
        size_t ws_bytes;
        check(mobagen_decode_workspace_size(op, &caches[0], &da, &ws_bytes), op, "workspace");
        cu_deviceptr ws = gpu_alloc(&env, ws_bytes);
        /* passes over the layers: enough for about STEPS steps */
        int passes = STEPS / layers;
        if (passes < 3) passes = 3;
        float t[MAX_PASSES];
        if (passes > MAX_PASSES) passes = MAX_PASSES;
        float stage_us[5];   /* whole step, then each stage alone */
        for (int sidx = 0; sidx < 5; sidx++) {
            unsigned stages = sidx == 0 ? MG_DECODE_ALL : 1u << (sidx - 1);
            for (int l = 0; l < layers; l++)   /* warm-up */
                check(mg_decode_stages(op, &caches[l], &da, ws, ws_bytes, NULL, MG_DECODE_ALL), op, "decode");
            for (int i = 0; i < passes; i++) {
                cu->EventRecord(e0, NULL);
                for (int l = 0; l < layers; l++)
                    check(mg_decode_stages(op, &caches[l], &da, ws, ws_bytes, NULL, stages), op, "decode");
                cu->EventRecord(e1, NULL);
                cu->EventSynchronize(e1);
                cu->EventElapsedTime(&t[i], e0, e1);
            }
            qsort(t, passes, sizeof(float), cmp_float);
            stage_us[sidx] = t[passes / 2] * 1e3f / layers;
        }
        /* union of the selected blocks per (sequence, kv head), from the last layer's selection */
        int *sel = malloc(sizeof(int) * (size_t)batch * HQ * c->k);
        gpu_download(&env, sel, dsel, 4 * (size_t)batch * HQ * c->k);
        long long u_total = 0;
        char *seen = calloc((size_t)n_blocks + 2, 1);
        for (int b = 0; b < batch; b++)
            for (int kvh = 0; kvh < HKV; kvh++) {
                memset(seen, 0, (size_t)n_blocks + 2);
                for (int g = 0; g < HQ / HKV; g++)
                    for (int s2 = 0; s2 < c->k; s2++) {
                        int blk = sel[((size_t)b * HQ + kvh * (HQ / HKV) + g) * c->k + s2];
                        if (blk >= 0 && blk <= n_blocks && !seen[blk]) {
                            seen[blk] = 1;
                            u_total++;
                        }
                    }
            }
        double avg_u = (double)u_total / (batch * HKV);
        double bytes_target = (double)batch * HKV * (cent_read + c->k * kv_block);
        double bytes_union = (double)batch * HKV * (cent_read + avg_u * kv_block);

        /* append of one token per sequence in every layer (k', v, centroid sums, lengths) */
        cu_deviceptr dk = gpu_alloc(&env, 2 * (size_t)batch * HKV * D), dv = gpu_alloc(&env, 2 * (size_t)batch * HKV * D);
        fill_random(&env, dk, 2 * (size_t)batch * HKV * D, &r);
        fill_random(&env, dv, 2 * (size_t)batch * HKV * D, &r);
        mobagen_append_args aa = {.batch = batch, .max_new = 1, .total_new = batch, .k = dk, .v = dv, .cu_seqlens_new = dcu};
        int app_passes = PAGE - 1;   /* stays within the spare page */
        for (int i = 0; i < app_passes; i++) {
            cu->EventRecord(e0, NULL);
            for (int l = 0; l < layers; l++) check(mobagen_append(op, &caches[l], &aa, NULL), op, "append");
            cu->EventRecord(e1, NULL);
            cu->EventSynchronize(e1);
            cu->EventElapsedTime(&t[i], e0, e1);
        }
        qsort(t, app_passes, sizeof(float), cmp_float);
        float app_us = t[app_passes / 2] * 1e3f / layers;
        /* rollback of one token per sequence in every layer (the appends above, one at a time):
         * the cut block's kept keys (ctx % B + 0..app_passes-2 of them) are summed again */
        int *ones = calloc((size_t)batch, sizeof(int));
        for (int b = 0; b < batch; b++) ones[b] = 1;
        cu_deviceptr ddrop = gpu_alloc(&env, 4 * (size_t)batch);
        gpu_upload(&env, ddrop, ones, 4 * (size_t)batch);
        free(ones);
        mobagen_truncate_args ta = {.batch = batch, .drop = ddrop};
        for (int i = 0; i < app_passes; i++) {
            cu->EventRecord(e0, NULL);
            for (int l = 0; l < layers; l++) check(mobagen_kv_truncate(op, &caches[l], &ta, NULL), op, "truncate");
            cu->EventRecord(e1, NULL);
            cu->EventSynchronize(e1);
            cu->EventElapsedTime(&t[i], e0, e1);
        }
        qsort(t, app_passes, sizeof(float), cmp_float);
        float trunc_us = t[app_passes / 2] * 1e3f / layers;
        gpu_free(&env, ddrop);

        long long splits = mg_decode_splits(op, &caches[0], &da);
        double step_s = stage_us[0] * 1e-6;
        double gbps_t = bytes_target / step_s / 1e9, gbps_u = bytes_union / step_s / 1e9;
        printf("%5d %3d %5d %7d %6d | %8.1f %8.2f %6.1f | %8.0f %8.0f %6lld | %7.1f %5.1f%% | %6.1f %6.1f %6.1f %6.1f "
               "| %6.1f\n", c->B, c->k, batch, c->ctx, layers, stage_us[0], bytes_target / (1 << 20), avg_u, gbps_t,
               gbps_u, splits, app_us, 100.0 * app_us / stage_us[0], stage_us[1], stage_us[2], stage_us[3], stage_us[4],
               trunc_us);
        if (csv)
            fprintf(csv, "%d,%d,%d,%d,%d,%.2f,%.2f,%.0f,%.0f,%.2f,%.1f,%.1f,%lld,%.2f,%.2f,%.2f,%.2f,%.2f\n", c->B, c->k,
                    batch, c->ctx, layers, stage_us[0], app_us, bytes_target, bytes_union, avg_u, gbps_t, gbps_u, splits,
                    stage_us[1], stage_us[2], stage_us[3], stage_us[4], trunc_us);
        fflush(stdout);
        free(sel); free(seen); free(table); free(lens); free(cuq);
        for (int l = 0; l < layers; l++) {
            gpu_free(&env, dtables[l]);
            gpu_free(&env, dlens[l]);
        }
        free(caches); free(dtables); free(dlens);
        gpu_free(&env, dcu); gpu_free(&env, dq); gpu_free(&env, dout);
        gpu_free(&env, dlse); gpu_free(&env, dsel); gpu_free(&env, ws); gpu_free(&env, dk); gpu_free(&env, dv);
        mobagen_op_destroy(op);
    }
    if (csv) fclose(csv);
    cu->EventDestroy(e0);
    cu->EventDestroy(e1);
    gpu_free(&env, kp); gpu_free(&env, vp); gpu_free(&env, cent);
    gpu_env_close(&env);
    return 0;
}
