#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy.h"
#include "runtime_internal.h"

static const char *arch_for(int major, int minor, char *buf, size_t size)
{
    /* The 'a' targets (wgmma, setmaxnreg on sm_90a) run only on their own generation, which
     * is exactly the device at hand. */
    char with_a[16];
    snprintf(with_a, sizeof with_a, "sm_%d%da", major, minor);
    if (mg_arch_lookup(with_a))
        snprintf(buf, size, "%s", with_a);
    else
        snprintf(buf, size, "sm_%d%d", major, minor);
    return buf;
}

static mg_status apply_options(mobagen_ctx *ctx, const mobagen_ctx_options *opts)
{
    const mobagen_ctx_options none = {0};
    if (!opts) opts = &none;
    ctx->cache_dir = strdup(opts->cache_dir ? opts->cache_dir : "");
    ctx->template_dir = strdup(opts->template_dir ? opts->template_dir : "");
    if (!ctx->cache_dir || !ctx->template_dir) return mg_fail(&ctx->err, MG_E_NOMEM, "out of memory");
    ctx->log = opts->log;
    ctx->log_user = opts->log_user;
    ctx->progress = opts->progress;
    ctx->progress_user = opts->progress_user;
    if (opts->log_level < MOBAGEN_LOG_DEFAULT || opts->log_level > MOBAGEN_LOG_DEBUG)
        return mg_fail(&ctx->err, MG_E_ARG,
                       "opts->log_level %d is not a mobagen_log_level (0 default, 1 error .. 4 debug)",
                       (int)opts->log_level);
    ctx->log_level = opts->log_level;
    if (ctx->log_level == MOBAGEN_LOG_DEFAULT) {
        /* Read once here and kept per ctx: nothing global for threads to race on. */
        const char *env = getenv("MOBAGEN_LOG");
        ctx->log_level = mg_log_level_parse(env);
        if (ctx->log_level == MOBAGEN_LOG_DEFAULT) {
            ctx->log_level = MOBAGEN_LOG_WARN;
            if (env && *env)
                mg_ctx_log(ctx, MOBAGEN_LOG_WARN,
                           "MOBAGEN_LOG='%s' is not one of error, warn, info, debug; using warn", env);
        }
    }
    return MG_OK;
}

mg_status mobagen_ctx_create(int device, const mobagen_ctx_options *opts, mobagen_ctx **out)
{
    if (!out) return MG_E_ARG;
    mobagen_ctx *ctx = calloc(1, sizeof *ctx);
    *out = ctx;
    if (!ctx) return MG_E_NOMEM;
    mg_status st = apply_options(ctx, opts);
    if (st != MG_OK) return st;
    st = mg_cuda_load(&ctx->cu, &ctx->err);
    if (st != MG_OK) return st;
    ctx->driver_loaded = 1;
    mg_cuda *cu = &ctx->cu;
    int count = 0;
    st = mg_cuda_check(cu, cu->DeviceGetCount(&count), "cuDeviceGetCount", &ctx->err);
    if (st != MG_OK) return st;
    if (count == 0) return mg_fail(&ctx->err, MG_E_NO_DEVICE, "no CUDA device");
    if (device < 0 || device >= count)
        return mg_fail(&ctx->err, MG_E_NO_DEVICE, "device %d does not exist: %d device(s), 0..%d",
                       device, count, count - 1);
    ctx->device_ordinal = device;
    st = mg_cuda_check(cu, cu->DeviceGet(&ctx->device, device), "cuDeviceGet", &ctx->err);
    int major = 0, minor = 0;
    if (st == MG_OK)
        st = mg_cuda_check(cu, cu->DeviceGetName(ctx->device_name, sizeof ctx->device_name, ctx->device),
                           "cuDeviceGetName", &ctx->err);
    const struct { int attr; int *value; const char *what; } attrs[] = {
        {CU_ATTR_CC_MAJOR, &major, "cuDeviceGetAttribute(compute capability major)"},
        {CU_ATTR_CC_MINOR, &minor, "cuDeviceGetAttribute(compute capability minor)"},
        {CU_ATTR_MULTIPROCESSOR_COUNT, &ctx->sm_count, "cuDeviceGetAttribute(multiprocessors)"},
        {CU_ATTR_MAX_SMEM_OPTIN, &ctx->max_smem_optin, "cuDeviceGetAttribute(shared memory opt-in)"},
    };
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0] && st == MG_OK; i++)
        st = mg_cuda_check(cu, cu->DeviceGetAttribute(attrs[i].value, attrs[i].attr, ctx->device),
                           attrs[i].what, &ctx->err);
    if (st == MG_OK) {
        arch_for(major, minor, ctx->arch, sizeof ctx->arch);
        if (!mg_arch_lookup(ctx->arch))
            st = mg_fail(&ctx->err, MG_E_UNSUPPORTED, "device %d (%s) is %s; mobagen knows: %s",
                         device, ctx->device_name, ctx->arch, mg_arch_known_list());
    }
    if (st == MG_OK)
        st = mg_cuda_check(cu, cu->DevicePrimaryCtxRetain(&ctx->context, ctx->device),
                           "cuDevicePrimaryCtxRetain", &ctx->err);
    return st;
}

void mobagen_ctx_destroy(mobagen_ctx *ctx)
{
    if (!ctx) return;
    mg_deploy_ctx_free(ctx);
    if (ctx->context) ctx->cu.DevicePrimaryCtxRelease(ctx->device);
    if (ctx->driver_loaded) mg_cuda_unload(&ctx->cu);
    free(ctx->cache_dir);
    free(ctx->template_dir);
    free(ctx);
}

const char *mobagen_ctx_errmsg(const mobagen_ctx *ctx)
{
    return ctx ? ctx->err.msg
               : "no mobagen context (NULL): its creation ran out of memory or was given no out-pointer";
}

const char *mobagen_ctx_arch(const mobagen_ctx *ctx) { return ctx ? ctx->arch : NULL; }
const char *mobagen_ctx_device_name(const mobagen_ctx *ctx) { return ctx ? ctx->device_name : NULL; }

mg_status mg_ctx_push(mobagen_ctx *ctx, mg_diag *diag)
{
    if (!ctx || !ctx->context) return mg_fail(diag, MG_E_NO_DEVICE, "the context has no device");
    return mg_cuda_check(&ctx->cu, ctx->cu.CtxPushCurrent(ctx->context), "cuCtxPushCurrent", diag);
}

void mg_ctx_pop(mobagen_ctx *ctx)
{
    cu_context popped;
    ctx->cu.CtxPopCurrent(&popped);
}
