/* The part of the CUDA driver API mobagen uses, loaded with dlopen("libcuda.so.1") so that
 * generation and bundling run on machines without a GPU or driver. */
#ifndef MOBAGEN_CUDA_DRIVER_H
#define MOBAGEN_CUDA_DRIVER_H

#include <stddef.h>

#include "status.h"

typedef int cu_result;
typedef int cu_device;
typedef struct cu_ctx_s *cu_context;
typedef struct cu_mod_s *cu_module;
typedef struct cu_func_s *cu_function;
typedef struct cu_stream_s *cu_stream;
typedef struct cu_event_s *cu_event;
typedef unsigned long long cu_deviceptr;

enum {
    CU_ATTR_MULTIPROCESSOR_COUNT = 16,
    CU_ATTR_CC_MAJOR = 75,
    CU_ATTR_CC_MINOR = 76,
    CU_ATTR_MAX_SMEM_OPTIN = 97,
    CU_FUNC_ATTR_MAX_DYNAMIC_SMEM = 8,
    CU_FUNC_ATTR_NUM_REGS = 4,
    CU_FUNC_ATTR_LOCAL_SIZE = 3,
};

typedef struct mg_cuda {
    void *lib;
    cu_result (*Init)(unsigned);
    cu_result (*DriverGetVersion)(int *);
    cu_result (*DeviceGetCount)(int *);
    cu_result (*DeviceGet)(cu_device *, int);
    cu_result (*DeviceGetName)(char *, int, cu_device);
    cu_result (*DeviceGetAttribute)(int *, int, cu_device);
    cu_result (*DeviceTotalMem)(size_t *, cu_device);
    cu_result (*DevicePrimaryCtxRetain)(cu_context *, cu_device);
    cu_result (*DevicePrimaryCtxRelease)(cu_device);
    cu_result (*CtxPushCurrent)(cu_context);
    cu_result (*CtxPopCurrent)(cu_context *);
    cu_result (*CtxSynchronize)(void);
    cu_result (*ModuleLoadData)(cu_module *, const void *);
    cu_result (*ModuleUnload)(cu_module);
    cu_result (*ModuleGetFunction)(cu_function *, cu_module, const char *);
    cu_result (*FuncSetAttribute)(cu_function, int, int);
    cu_result (*FuncGetAttribute)(int *, int, cu_function);
    cu_result (*LaunchKernel)(cu_function, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, unsigned, cu_stream, void **, void **);
    cu_result (*MemAlloc)(cu_deviceptr *, size_t);
    cu_result (*MemFree)(cu_deviceptr);
    cu_result (*MemcpyHtoD)(cu_deviceptr, const void *, size_t);
    cu_result (*MemcpyDtoH)(void *, cu_deviceptr, size_t);
    cu_result (*MemsetD32)(cu_deviceptr, unsigned, size_t);
    cu_result (*MemsetD32Async)(cu_deviceptr, unsigned, size_t, cu_stream);
    cu_result (*StreamSynchronize)(cu_stream);
    cu_result (*EventCreate)(cu_event *, unsigned);
    cu_result (*EventDestroy)(cu_event);
    cu_result (*EventRecord)(cu_event, cu_stream);
    cu_result (*EventSynchronize)(cu_event);
    cu_result (*EventElapsedTime)(float *, cu_event, cu_event);
    cu_result (*GetErrorName)(cu_result, const char **);
    cu_result (*GetErrorString)(cu_result, const char **);
} mg_cuda;

/* Loads libcuda.so.1 (or $MOBAGEN_LIBCUDA) and calls cuInit. MG_E_NO_DRIVER without a driver,
 * MG_E_NO_DEVICE when cuInit finds no device. */
mg_status mg_cuda_load(mg_cuda *cu, mg_diag *diag);
void mg_cuda_unload(mg_cuda *cu);

/* "CUDA_ERROR_X: text" for a result. */
void mg_cuda_describe(const mg_cuda *cu, cu_result r, char *buf, size_t size);

/* Formats a failed driver call as an error: returns MG_OK when r == 0. */
mg_status mg_cuda_check(const mg_cuda *cu, cu_result r, const char *what, mg_diag *diag);

#endif
