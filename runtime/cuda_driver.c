#include "cuda_driver.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_ERROR_NO_DEVICE 100

mg_status mg_cuda_load(mg_cuda *cu, mg_diag *diag)
{
    memset(cu, 0, sizeof *cu);
    const char *path = getenv("MOBAGEN_LIBCUDA");
    if (!path || !*path) path = "libcuda.so.1";
    cu->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!cu->lib)
        return mg_fail(diag, MG_E_NO_DRIVER, "no CUDA driver: cannot load %s (%s)", path, dlerror());
#define BIND(field, sym)                                                                  \
    do {                                                                                  \
        *(void **)&cu->field = dlsym(cu->lib, sym);                                      \
        if (!cu->field) {                                                                 \
            mg_cuda_unload(cu);                                                           \
            return mg_fail(diag, MG_E_NO_DRIVER, "%s lacks %s: driver too old?", path, sym); \
        }                                                                                 \
    } while (0)
    BIND(Init, "cuInit");
    BIND(DriverGetVersion, "cuDriverGetVersion");
    BIND(DeviceGetCount, "cuDeviceGetCount");
    BIND(DeviceGet, "cuDeviceGet");
    BIND(DeviceGetName, "cuDeviceGetName");
    BIND(DeviceGetAttribute, "cuDeviceGetAttribute");
    BIND(DeviceTotalMem, "cuDeviceTotalMem_v2");
    BIND(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    BIND(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    BIND(CtxPushCurrent, "cuCtxPushCurrent_v2");
    BIND(CtxPopCurrent, "cuCtxPopCurrent_v2");
    BIND(CtxSynchronize, "cuCtxSynchronize");
    BIND(ModuleLoadData, "cuModuleLoadData");
    BIND(ModuleUnload, "cuModuleUnload");
    BIND(ModuleGetFunction, "cuModuleGetFunction");
    BIND(FuncSetAttribute, "cuFuncSetAttribute");
    BIND(FuncGetAttribute, "cuFuncGetAttribute");
    BIND(LaunchKernel, "cuLaunchKernel");
    BIND(MemAlloc, "cuMemAlloc_v2");
    BIND(MemFree, "cuMemFree_v2");
    BIND(MemcpyHtoD, "cuMemcpyHtoD_v2");
    BIND(MemcpyDtoH, "cuMemcpyDtoH_v2");
    BIND(MemsetD32, "cuMemsetD32_v2");
    BIND(MemsetD32Async, "cuMemsetD32Async");
    BIND(StreamSynchronize, "cuStreamSynchronize");
    BIND(EventCreate, "cuEventCreate");
    BIND(EventDestroy, "cuEventDestroy_v2");
    BIND(EventRecord, "cuEventRecord");
    BIND(EventSynchronize, "cuEventSynchronize");
    BIND(EventElapsedTime, "cuEventElapsedTime");
    BIND(GetErrorName, "cuGetErrorName");
    BIND(GetErrorString, "cuGetErrorString");
#undef BIND
    cu_result r = cu->Init(0);
    if (r != 0) {
        char what[256];
        mg_cuda_describe(cu, r, what, sizeof what);
        mg_cuda_unload(cu);
        return mg_fail(diag, r == CUDA_ERROR_NO_DEVICE ? MG_E_NO_DEVICE : MG_E_NO_DRIVER,
                       "cuInit failed: %s", what);
    }
    return MG_OK;
}

void mg_cuda_unload(mg_cuda *cu)
{
    if (cu->lib) dlclose(cu->lib);
    memset(cu, 0, sizeof *cu);
}

void mg_cuda_describe(const mg_cuda *cu, cu_result r, char *buf, size_t size)
{
    const char *name = NULL, *text = NULL;
    if (cu->GetErrorName) cu->GetErrorName(r, &name);
    if (cu->GetErrorString) cu->GetErrorString(r, &text);
    snprintf(buf, size, "%s (%d): %s", name ? name : "CUDA error", r, text ? text : "unknown");
}

mg_status mg_cuda_check(const mg_cuda *cu, cu_result r, const char *what, mg_diag *diag)
{
    if (r == 0) return MG_OK;
    char desc[256];
    mg_cuda_describe(cu, r, desc, sizeof desc);
    return mg_fail(diag, MG_E_CUDA, "%s failed: %s", what, desc);
}
