/* Times mobagen's forward on the FlashMoBA paper's shapes (batch 2, 16 heads, causal, bf16) for
 * every shipped paper spec and sequence length: first what a user gets (the runtime's default
 * choice, stage by stage and whole), then every variant of each stage and the best combination.
 * Reports useful TFLOP/s, the workspace and the device memory the call needs, and writes a CSV
 * that bench/report.py turns into the results table and the chart.
 *
 *   bench_fwd [--csv FILE] [SPEC:L ...]     (default: the grid below)
 *
 * Median of CUDA-event timings after a warm-up, on fresh random (never zero) inputs. */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime_internal.h"
#include "util/gpu_harness.h"

#define REPS 7
#define SLOW_MS 150.0f   /* a variant slower than this per run gets 3 repetitions, not REPS */
#define MAX_CASES 64

typedef struct bench_case { char spec[64]; int L; } bench_case;

/* Every shipped configuration; the paper's three at every length, the small-block one where its
 * workspace fits, the key-convolution and d = 64 ones at the lengths users run them. */
static const bench_case default_grid[] = {
    {"moba_d128_b128_k8", 8192}, {"moba_d128_b128_k8", 32768}, {"moba_d128_b128_k8", 65536},
    {"moba_d128_b128_k8", 131072},
    {"moba_d128_b64_k16", 8192}, {"moba_d128_b64_k16", 32768}, {"moba_d128_b64_k16", 65536},
    {"moba_d128_b64_k16", 131072},
    {"moba_d128_b32_k32", 8192}, {"moba_d128_b32_k32", 32768}, {"moba_d128_b32_k32", 65536},
    {"moba_d128_b32_k32", 131072},
    {"moba_d128_b16_k64", 8192}, {"moba_d128_b16_k64", 32768},
    {"moba_d128_b128_k8_kconv3", 65536}, {"moba_d128_b64_k16_kconv3", 65536},
    {"moba_d128_b32_k32_kconv3", 65536}, {"moba_d64_b128_k8", 32768}, {"default", 32768},
};

typedef struct timing { float stage[3], total; } timing;

static int compare_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void run_or_die(mobagen_op *op, const mobagen_fwd_args *a, cu_deviceptr ws, size_t ws_bytes,
                       unsigned stages)
{
    if (mg_fwd_stages(op, a, ws, ws_bytes, NULL, stages) != MG_OK) {
        fprintf(stderr, "forward failed: %s\n", mobagen_op_errmsg(op));
        exit(1);
    }
}

/* Median milliseconds of `stages`; a first run slower than cap_ms (when > 0) is not repeated:
 * a variant that slow cannot be the best, and repeating it would cost the device minutes. */
static float time_stages_capped(gpu_env *env, mobagen_op *op, const mobagen_fwd_args *a,
                                cu_deviceptr ws, size_t ws_bytes, unsigned stages, float cap_ms)
{
    cu_event start, stop;
    env->cu.EventCreate(&start, 0);
    env->cu.EventCreate(&stop, 0);
    float t[REPS], first;
    env->cu.EventRecord(start, NULL);
    run_or_die(op, a, ws, ws_bytes, stages);   /* warm-up, and a guess of the cost */
    env->cu.EventRecord(stop, NULL);
    env->cu.EventSynchronize(stop);
    env->cu.EventElapsedTime(&first, start, stop);
    if (cap_ms > 0 && first > cap_ms) {
        env->cu.EventDestroy(start);
        env->cu.EventDestroy(stop);
        return first;
    }
    int reps = first > SLOW_MS ? 3 : REPS;
    for (int r = 0; r < reps; r++) {
        env->cu.EventRecord(start, NULL);
        run_or_die(op, a, ws, ws_bytes, stages);
        env->cu.EventRecord(stop, NULL);
        env->cu.EventSynchronize(stop);
        env->cu.EventElapsedTime(&t[r], start, stop);
    }
    env->cu.EventDestroy(start);
    env->cu.EventDestroy(stop);
    qsort(t, (size_t)reps, sizeof t[0], compare_float);
    return t[reps / 2];
}

static float time_stages(gpu_env *env, mobagen_op *op, const mobagen_fwd_args *a, cu_deviceptr ws,
                         size_t ws_bytes, unsigned stages)
{
    return time_stages_capped(env, op, a, ws, ws_bytes, stages, 0);
}

static timing time_all_stages(gpu_env *env, mobagen_op *op, const mobagen_fwd_args *a,
                              cu_deviceptr ws, size_t ws_bytes)
{
    static const unsigned stage[3] = {MG_STAGE_CENTROIDS, MG_STAGE_ROUTE, MG_STAGE_ATTN};
    timing t;
    for (int s = 0; s < 3; s++) t.stage[s] = time_stages(env, op, a, ws, ws_bytes, stage[s]);
    t.total = time_stages(env, op, a, ws, ws_bytes, MG_STAGE_ALL);
    return t;
}

/* Inputs are drawn in chunks of FILL_CHUNK values, each from its own stream seeded by (one draw
 * of the case's stream, chunk index), so that they do not depend on the number of threads, and
 * by every host core: one core takes ~20 s for a 64K case's 805 M values. */
#define FILL_CHUNK ((size_t)1 << 20)
#define FILL_MAX_THREADS 32

typedef struct fill_job {
    uint16_t *h;
    size_t n;
    uint64_t seed;
    int thread, threads;
} fill_job;

static void *fill_worker(void *arg)
{
    const fill_job *j = arg;
    size_t chunks = (j->n + FILL_CHUNK - 1) / FILL_CHUNK;
    for (size_t c = (size_t)j->thread; c < chunks; c += (size_t)j->threads) {
        rng r = rng_seeded(j->seed, c);
        size_t end = (c + 1) * FILL_CHUNK < j->n ? (c + 1) * FILL_CHUNK : j->n;
        for (size_t i = c * FILL_CHUNK; i < end; i++) j->h[i] = float_to_bf16((float)rng_normal(&r));
    }
    return NULL;
}

static void fill_random(gpu_env *env, cu_deviceptr p, size_t n, rng *r)
{
    uint16_t *h = malloc(2 * n);
    if (!h && n) {
        fprintf(stderr, "out of host memory for %zu inputs\n", n);
        exit(1);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cores < 1 ? 1 : cores > FILL_MAX_THREADS ? FILL_MAX_THREADS : (int)cores;
    fill_job jobs[FILL_MAX_THREADS];
    pthread_t tid[FILL_MAX_THREADS];
    int running[FILL_MAX_THREADS] = {0};
    uint64_t seed = rng_next(r);
    for (int t = 0; t < threads; t++) {
        jobs[t] = (fill_job){.h = h, .n = n, .seed = seed, .thread = t, .threads = threads};
        running[t] = t > 0 && pthread_create(&tid[t], NULL, fill_worker, &jobs[t]) == 0;
    }
    for (int t = 0; t < threads; t++) {
        if (running[t]) pthread_join(tid[t], NULL);
        else fill_worker(&jobs[t]);   /* this thread's share, or one whose thread did not start */
    }
    gpu_upload(env, p, h, 2 * n);
    free(h);
}

typedef int (*mem_get_info_fn)(size_t *free_bytes, size_t *total_bytes);

static size_t used_bytes(mem_get_info_fn mem_info)
{
    size_t free_b = 0, total_b = 0;
    if (!mem_info || mem_info(&free_b, &total_b) != 0) return 0;
    return total_b - free_b;
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

static const char *const templates[3] = {"kconv_centroid", "route", "attn_fwd"};

/* Indices into the op's selection for each stage, as the runtime chose them. */
static void current_choice(const mobagen_op *op, int idx[3])
{
    idx[0] = op->selected_kconv;
    idx[1] = op->selected_route;
    idx[2] = op->selected_attn;
}

static const char *variant_name(const mobagen_op *op, int loaded_index)
{
    return loaded_index >= 0 && loaded_index < op->n_variants ? op->variants[loaded_index].id : "-";
}

static void bench_one(gpu_env *env, mem_get_info_fn mem_info, const bench_case *c, FILE *csv)
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
    size_t base = used_bytes(mem_info);
    rng r = {0xbe5c0000ull + (uint64_t)L * 131 + (uint64_t)s->block_size};
    cu_deviceptr q = gpu_alloc(env, 2 * nq), k = gpu_alloc(env, 2 * nk), v = gpu_alloc(env, 2 * nk);
    cu_deviceptr o = gpu_alloc(env, 2 * nq), lse = gpu_alloc(env, 4 * (size_t)batch * L * heads);
    cu_deviceptr cu = gpu_alloc(env, 4 * (batch + 1)), conv = 0;
    fill_random(env, q, nq, &r);
    fill_random(env, k, nk, &r);
    fill_random(env, v, nk, &r);
    if (s->conv_width > 0) {
        size_t nw = (size_t)hkv * s->conv_width * d;
        conv = gpu_alloc(env, 2 * nw);
        fill_random(env, conv, nw, &r);
    }
    int cu_host[3] = {0, L, 2 * L};
    gpu_upload(env, cu, cu_host, sizeof cu_host);
    mobagen_fwd_args a = {.batch = batch, .hq = heads, .hkv = hkv, .head_dim = d,
                          .total_q = batch * L, .total_k = batch * L, .max_seqlen_q = L,
                          .max_seqlen_k = L, .dtype = s->dtype, .q = q, .k = k, .v = v,
                          .out = o, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .lse = lse,
                          .conv_weight = conv};
    size_t ws_bytes = 0;
    if (mobagen_fwd_workspace_size(op, &a, &ws_bytes) != MG_OK) {
        fprintf(stderr, "%s L=%d: %s\n", c->spec, L, mobagen_op_errmsg(op));
        exit(1);
    }
    size_t free_b = 0, total_b = 0;
    if (mem_info) mem_info(&free_b, &total_b);
    if (mem_info && ws_bytes + (64u << 20) > free_b) {
        printf("%-26s %7d  skipped: workspace %.2f GiB > free %.2f GiB\n", c->spec, L,
               ws_bytes / 1073741824.0, free_b / 1073741824.0);
        if (csv) fprintf(csv, "%s,%d,%d,%d,%d,%d,%zu,0,skipped\n", c->spec, L, s->block_size,
                         s->top_k, d, s->conv_width, ws_bytes);
        goto done;
    }
    cu_deviceptr ws = gpu_alloc(env, ws_bytes);
    size_t mem = used_bytes(mem_info) - base;   /* inputs, outputs and workspace */

    /* What a user gets: the runtime's own choice (one mobagen_fwd lets dispatch decide, from the
     * tuning database or the heuristic), nothing selected by hand. */
    if (mobagen_fwd(op, &a, ws, ws_bytes, NULL) != MG_OK) {
        fprintf(stderr, "%s L=%d: %s\n", c->spec, L, mobagen_op_errmsg(op));
        exit(1);
    }
    int def[3];
    current_choice(op, def);
    timing dflt = time_all_stages(env, op, &a, ws, ws_bytes);

    /* Every variant of each stage; the best of each, then the best combination whole. */
    float best[3] = {INFINITY, INFINITY, INFINITY};
    int best_i[3] = {0, 0, 0};
    static const unsigned stage[3] = {MG_STAGE_CENTROIDS, MG_STAGE_ROUTE, MG_STAGE_ATTN};
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < mobagen_op_variant_count(op, templates[t]); i++) {
            if (mobagen_op_select(op, templates[t], i) != MG_OK) continue;
            float ms = time_stages_capped(env, op, &a, ws, ws_bytes, stage[t], 3 * dflt.stage[t] + 0.5f);
            if (t == 2 && mobagen_op_variant_count(op, templates[t]) > 1)   /* impls side by side */
                printf("    attention %-34s %8.3f ms\n", mobagen_op_variant_id(op, templates[t], i), ms);
            if (ms < best[t]) {
                best[t] = ms;
                best_i[t] = i;
            }
        }
        mobagen_op_select(op, templates[t], best_i[t]);
    }
    int chosen[3];
    current_choice(op, chosen);
    float best_total = time_stages(env, op, &a, ws, ws_bytes, MG_STAGE_ALL);

    /* Useful attention work: each query sees about k*B keys (moba.md, costs), causal. */
    double flop = 4.0 * batch * heads * (double)L * s->top_k * s->block_size * d;
    double attn_tf_def = flop / (dflt.stage[2] * 1e-3) / 1e12;
    double attn_tf_best = flop / (best[2] * 1e-3) / 1e12;
    printf("%-26s %7d %6.2f %6.2f | %7.3f %8.3f %8.3f %8.3f %5.1f%% | %8.3f %8.3f %8.3f | %6.1f %6.1f\n",
           c->spec, L, ws_bytes / 1073741824.0, mem / 1073741824.0, dflt.stage[0], dflt.stage[1],
           dflt.stage[2], dflt.total, 100.0 * dflt.stage[1] / dflt.total, best[1], best[2],
           best_total, attn_tf_def, attn_tf_best);
    printf("    default: %s | %s | %s\n    best:    %s | %s | %s\n", variant_name(op, def[0]),
           variant_name(op, def[1]), variant_name(op, def[2]), variant_name(op, chosen[0]),
           variant_name(op, chosen[1]), variant_name(op, chosen[2]));
    fflush(stdout);
    if (csv) {
        fprintf(csv, "%s,%d,%d,%d,%d,%d,%zu,%zu,ok,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.2f,%.2f,"
                     "\"%s|%s|%s\",\"%s|%s|%s\"\n",
                c->spec, L, s->block_size, s->top_k, d, s->conv_width, ws_bytes, mem, dflt.stage[0],
                dflt.stage[1], dflt.stage[2], dflt.total, best[0], best[1], best[2], best_total,
                attn_tf_def, attn_tf_best, variant_name(op, def[0]), variant_name(op, def[1]),
                variant_name(op, def[2]), variant_name(op, chosen[0]), variant_name(op, chosen[1]),
                variant_name(op, chosen[2]));
        fflush(csv);
    }
    gpu_free(env, ws);
done:
    gpu_free(env, q); gpu_free(env, k); gpu_free(env, v); gpu_free(env, o);
    gpu_free(env, lse); gpu_free(env, cu);
    if (conv) gpu_free(env, conv);
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
            fprintf(stderr, "usage: bench_fwd [--csv FILE] [SPEC:L ...]; bad argument '%s'\n", argv[i]);
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
    mem_get_info_fn mem_info = (mem_get_info_fn)dlsym(env.cu.lib, "cuMemGetInfo_v2");
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) {
        fprintf(stderr, "cannot write %s\n", csv_path);
        return 1;
    }
    if (csv)
        fprintf(csv, "spec,L,B,k,d,conv,workspace_bytes,device_bytes,status,def_centroid_ms,"
                     "def_route_ms,def_attn_ms,def_total_ms,best_centroid_ms,best_route_ms,"
                     "best_attn_ms,best_total_ms,def_attn_tflops,best_attn_tflops,"
                     "def_variants,best_variants\n");
    printf("device %s; batch 2, heads 16, causal; median of %d (3 above %.0f ms), ms\n",
           mobagen_ctx_device_name(env.ctx), REPS, SLOW_MS);
    printf("%-26s %7s %6s %6s | %7s %8s %8s %8s %6s | %8s %8s %8s | %6s %6s\n", "spec", "L",
           "ws_GiB", "mem", "d:cent", "d:route", "d:attn", "d:total", "route", "b:route",
           "b:attn", "b:total", "TF/s d", "TF/s b");
    for (int i = 0; i < n; i++) bench_one(&env, mem_info, &cases[i], csv);
    if (csv) fclose(csv);
    gpu_env_close(&env);
    return 0;
}
