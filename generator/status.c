#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char *mg_status_name(mg_status s)
{
    switch (s) {
    case MG_OK: return "MG_OK";
    case MG_E_ARG: return "MG_E_ARG";
    case MG_E_SPEC: return "MG_E_SPEC";
    case MG_E_TEMPLATE: return "MG_E_TEMPLATE";
    case MG_E_COMPILE: return "MG_E_COMPILE";
    case MG_E_NO_NVRTC: return "MG_E_NO_NVRTC";
    case MG_E_CACHE: return "MG_E_CACHE";
    case MG_E_IO: return "MG_E_IO";
    case MG_E_NOMEM: return "MG_E_NOMEM";
    case MG_E_NO_DRIVER: return "MG_E_NO_DRIVER";
    case MG_E_NO_DEVICE: return "MG_E_NO_DEVICE";
    case MG_E_CUDA: return "MG_E_CUDA";
    case MG_E_UNSUPPORTED: return "MG_E_UNSUPPORTED";
    }
    return "MG_E_UNKNOWN";
}

mg_status mg_fail(mg_diag *d, mg_status s, const char *fmt, ...)
{
    if (d) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->msg, sizeof d->msg, fmt, ap);
        va_end(ap);
    }
    return s;
}
