#include "util/gpu_harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die_on(gpu_env *env, cu_result r, const char *what)
{
    if (r == 0) return;
    char desc[256];
    mg_cuda_describe(&env->cu, r, desc, sizeof desc);
    fprintf(stderr, "gpu harness: %s failed: %s\n", what, desc);
    abort();
}

int gpu_env_open(gpu_env *env)
{
    memset(env, 0, sizeof *env);
    mg_diag d;
    if (mg_cuda_load(&env->cu, &d) != MG_OK) {
        snprintf(env->why_not, sizeof env->why_not, "%s", d.msg);
        return -1;
    }
    int count = 0;
    if (env->cu.DeviceGetCount(&count) != 0 || count == 0) {
        snprintf(env->why_not, sizeof env->why_not, "no CUDA device");
        mg_cuda_unload(&env->cu);
        return -1;
    }
    const char *dev_env = getenv("MOBAGEN_TEST_DEVICE");
    int ordinal = dev_env ? atoi(dev_env) : 0;
    die_on(env, env->cu.DeviceGet(&env->device, ordinal), "cuDeviceGet");
    die_on(env, env->cu.DevicePrimaryCtxRetain(&env->context, env->device), "cuDevicePrimaryCtxRetain");
    die_on(env, env->cu.CtxPushCurrent(env->context), "cuCtxPushCurrent");
    if (mobagen_ctx_create(ordinal, NULL, &env->ctx) != MG_OK) {
        snprintf(env->why_not, sizeof env->why_not, "%s", mobagen_ctx_errmsg(env->ctx));
        fprintf(stderr, "gpu harness: mobagen_ctx_create: %s\n", env->why_not);
        abort();  /* a device exists but mobagen cannot use it: that is a failure, not a skip */
    }
    return 0;
}

void gpu_env_close(gpu_env *env)
{
    if (env->ctx) mobagen_ctx_destroy(env->ctx);
    if (env->context) {
        cu_context popped;
        env->cu.CtxPopCurrent(&popped);
        env->cu.DevicePrimaryCtxRelease(env->device);
    }
    if (env->cu.lib) mg_cuda_unload(&env->cu);
    memset(env, 0, sizeof *env);
}

cu_deviceptr gpu_alloc(gpu_env *env, size_t bytes)
{
    cu_deviceptr p = 0;
    die_on(env, env->cu.MemAlloc(&p, bytes ? bytes : 256), "cuMemAlloc");
    return p;
}

void gpu_free(gpu_env *env, cu_deviceptr p)
{
    if (p) die_on(env, env->cu.MemFree(p), "cuMemFree");
}

void gpu_upload(gpu_env *env, cu_deviceptr dst, const void *src, size_t bytes)
{
    if (bytes) die_on(env, env->cu.MemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD");
}

void gpu_download(gpu_env *env, void *dst, cu_deviceptr src, size_t bytes)
{
    if (bytes) die_on(env, env->cu.MemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH");
}

void gpu_fill32(gpu_env *env, cu_deviceptr p, uint32_t pattern, size_t bytes)
{
    if (bytes >= 4) die_on(env, env->cu.MemsetD32(p, pattern, bytes / 4), "cuMemsetD32");
}

void gpu_sync(gpu_env *env) { die_on(env, env->cu.CtxSynchronize(), "cuCtxSynchronize"); }

uint16_t float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t float_to_fp16(float f)
{
    /* Round to nearest even through the exact value; inputs here are small normals. */
    if (isnan(f)) return 0x7e00;
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a >= 65520.0) return sign | 0x7c00;
    if (a < ldexp(1.0, -24) * 0.5) return sign;
    int e;
    frexp(a, &e);                       /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1;                    /* a = 1.x * 2^exp */
    if (exp < -14) exp = -14;           /* subnormal range: fixed spacing 2^-24 */
    double q = nearbyint(ldexp(a, 10 - exp));   /* ties to even in the default rounding mode */
    if (q >= 2048.0) {
        q /= 2;
        exp++;
    }
    if (exp > 15) return sign | 0x7c00;
    if (q < 1024.0) return sign | (uint16_t)q;  /* subnormal */
    return sign | (uint16_t)(((exp + 15) << 10) | ((int)q - 1024));
}

float fp16_to_float(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp(frac, -24);
    else if (exp == 31)
        v = frac ? NAN : INFINITY;
    else
        v = ldexp(1024 + frac, exp - 25);
    return (float)(sign ? -v : v);
}

uint16_t gpu_to_elem(mobagen_dtype t, float f)
{
    return t == MOBAGEN_BF16 ? float_to_bf16(f) : float_to_fp16(f);
}

float gpu_from_elem(mobagen_dtype t, uint16_t h)
{
    return t == MOBAGEN_BF16 ? bf16_to_float(h) : fp16_to_float(h);
}

int gpu_env_open_reported(gpu_env *env)
{
    int have = gpu_env_open(env) == 0;
    if (!have) printf("skipped: no CUDA device (%s)\n", env->why_not);
    else printf("device: %s (%s)\n", mobagen_ctx_device_name(env->ctx), mobagen_ctx_arch(env->ctx));
    return have;
}
