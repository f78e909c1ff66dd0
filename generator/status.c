#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char *mobagen_status_name(mobagen_status s)
{
    switch (s) {
    case MG_OK: return "MOBAGEN_OK";
    case MG_E_ARG: return "MOBAGEN_E_ARG";
    case MG_E_SPEC: return "MOBAGEN_E_SPEC";
    case MG_E_TEMPLATE: return "MOBAGEN_E_TEMPLATE";
    case MG_E_COMPILE: return "MOBAGEN_E_COMPILE";
    case MG_E_NO_NVRTC: return "MOBAGEN_E_NO_NVRTC";
    case MG_E_CACHE: return "MOBAGEN_E_CACHE";
    case MG_E_IO: return "MOBAGEN_E_IO";
    case MG_E_NOMEM: return "MOBAGEN_E_NOMEM";
    case MG_E_NO_DRIVER: return "MOBAGEN_E_NO_DRIVER";
    case MG_E_NO_DEVICE: return "MOBAGEN_E_NO_DEVICE";
    case MG_E_CUDA: return "MOBAGEN_E_CUDA";
    case MG_E_UNSUPPORTED: return "MOBAGEN_E_UNSUPPORTED";
    }
    return "MOBAGEN_E_UNKNOWN";
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

const char *mobagen_version(void) { return MOBAGEN_VERSION_STRING; }
