/* The C API end to end: one MoBA forward on random inputs with the kernels of a spec.
 *
 *   cc example_fwd.c $(pkg-config --cflags --libs mobagen) \
 *      -I$CUDA_HOME/include -L$CUDA_HOME/lib64 -lcudart -o example_fwd
 *   ./example_fwd SPEC.yaml
 *
 * Exit codes: 0 ok, 1 usage, 2 mobagen could not open a GPU, 3 any other failure. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "mobagen.h"

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define CUDA_OK(call)                                                                   \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                 \
            return 3;                                                                   \
        }                                                                               \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SPEC.yaml\n", argv[0]);
        return 1;
    }
    mobagen_ctx *ctx;
    if (mobagen_ctx_create(0, NULL, &ctx) != MOBAGEN_OK) {
        fprintf(stderr, "mobagen: %s\n", mobagen_ctx_errmsg(ctx));
        mobagen_ctx_destroy(ctx);
        return 2;
    }
    mobagen_op *op;
    if (mobagen_op_create(ctx, argv[1], &op) != MOBAGEN_OK) {   /* compiles on a cache miss */
        fprintf(stderr, "mobagen: %s\n", mobagen_ctx_errmsg(ctx));
        mobagen_ctx_destroy(ctx);
        return 3;
    }
    mobagen_spec_params spec;
    mobagen_op_params(op, &spec);
    if (spec.dtype != MOBAGEN_BF16 || spec.conv_width != 0) {
        fprintf(stderr, "this example feeds bf16 inputs without key-conv weights\n");
        return 1;
    }

    /* Two sequences of 3000 and 5000 tokens, packed; 4 kv heads. */
    const int batch = 2, hkv = 4, hq = hkv * spec.gqa_group, d = spec.head_dim;
    const int cu_seqlens[3] = {0, 3000, 8000}, total = 8000, max_len = 5000;
    size_t nq = (size_t)total * hq * d, nk = (size_t)total * hkv * d;
    uint16_t *host = malloc(2 * (nq > nk ? nq : nk));
    void *q, *k, *v, *out, *lse, *cu, *ws;
    CUDA_OK(cudaMalloc(&q, 2 * nq));
    CUDA_OK(cudaMalloc(&k, 2 * nk));
    CUDA_OK(cudaMalloc(&v, 2 * nk));
    CUDA_OK(cudaMalloc(&out, 2 * nq));
    CUDA_OK(cudaMalloc(&lse, 4 * (size_t)total * hq));
    CUDA_OK(cudaMalloc(&cu, sizeof cu_seqlens));
    void *inputs[3] = {q, k, v};
    size_t counts[3] = {nq, nk, nk};
    srand(1);
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < counts[t]; i++) host[i] = to_bf16((float)rand() / RAND_MAX * 2 - 1);
        CUDA_OK(cudaMemcpy(inputs[t], host, 2 * counts[t], cudaMemcpyHostToDevice));
    }
    CUDA_OK(cudaMemcpy(cu, cu_seqlens, sizeof cu_seqlens, cudaMemcpyHostToDevice));

    mobagen_fwd_args args = {
        .batch = batch, .hq = hq, .hkv = hkv, .head_dim = d,
        .total_q = total, .total_k = total, .max_seqlen_q = max_len, .max_seqlen_k = max_len,
        .dtype = MOBAGEN_BF16,
        .q = (mobagen_devptr)q, .k = (mobagen_devptr)k, .v = (mobagen_devptr)v,
        .out = (mobagen_devptr)out, .lse = (mobagen_devptr)lse,
        .cu_seqlens_q = (mobagen_devptr)cu, .cu_seqlens_k = (mobagen_devptr)cu,
    };
    size_t ws_bytes;
    if (mobagen_fwd_workspace_size(op, &args, &ws_bytes) != MOBAGEN_OK) {
        fprintf(stderr, "mobagen: %s\n", mobagen_op_errmsg(op));
        return 3;
    }
    CUDA_OK(cudaMalloc(&ws, ws_bytes));
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreate(&stream));
    if (mobagen_fwd(op, &args, (mobagen_devptr)ws, ws_bytes, stream) != MOBAGEN_OK) {
        fprintf(stderr, "mobagen: %s\n", mobagen_op_errmsg(op));
        return 3;
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    float lse_host[4];
    CUDA_OK(cudaMemcpy(lse_host, lse, sizeof lse_host, cudaMemcpyDeviceToHost));
    printf("spec %s on %s (%s): forward of %d tokens done; lse[0][0..3] = %.4f %.4f %.4f %.4f\n",
           spec.name, mobagen_ctx_device_name(ctx), mobagen_ctx_arch(ctx), total, lse_host[0],
           lse_host[1], lse_host[2], lse_host[3]);

    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(out); cudaFree(lse); cudaFree(cu); cudaFree(ws);
    cudaStreamDestroy(stream);
    free(host);
    mobagen_op_destroy(op);
    mobagen_ctx_destroy(ctx);
    return 0;
}
