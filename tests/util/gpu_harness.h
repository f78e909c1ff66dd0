/* What the GPU tests and benchmarks share: the device (or the reason there is none), device
 * buffers, host-side bf16/fp16 conversion and a seeded random source. */
#ifndef MOBAGEN_GPU_HARNESS_H
#define MOBAGEN_GPU_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_driver.h"
#include "mobagen.h"
#include "util/rng.h"

typedef struct gpu_env {
    mg_cuda cu;
    cu_device device;
    cu_context context;
    mobagen_ctx *ctx;
    char why_not[MG_ERRMSG_MAX];   /* why there is no device, when ctx is NULL */
} gpu_env;

/* 0 with env ready; -1 when there is no usable device (env->why_not says why). */
int gpu_env_open(gpu_env *env);
void gpu_env_close(gpu_env *env);

cu_deviceptr gpu_alloc(gpu_env *env, size_t bytes);
void gpu_free(gpu_env *env, cu_deviceptr p);
void gpu_upload(gpu_env *env, cu_deviceptr dst, const void *src, size_t bytes);
void gpu_download(gpu_env *env, void *dst, cu_deviceptr src, size_t bytes);
/* Fills with a 32-bit pattern: NaN patterns poison outputs before a run. */
void gpu_fill32(gpu_env *env, cu_deviceptr p, uint32_t pattern, size_t bytes);
void gpu_sync(gpu_env *env);

uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);
float fp16_to_float(uint16_t h);
/* One element of a bf16 or fp16 tensor, to and from float. */
uint16_t gpu_to_elem(mobagen_dtype t, float f);
float gpu_from_elem(mobagen_dtype t, uint16_t h);

/* For a cmocka group's setup: opens the device and prints which one, or the CI line
 * `skipped: no CUDA device (why)`; returns whether there is one. */
int gpu_env_open_reported(gpu_env *env);

#endif
