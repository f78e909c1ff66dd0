/* mobagen status codes, shared by every component (generator and runtime). */
#ifndef MOBAGEN_STATUS_H
#define MOBAGEN_STATUS_H

#include "mobagen.h"

/* The public codes (mobagen.h) under the short names the components use internally. */
typedef mobagen_status mg_status;
#define MG_OK MOBAGEN_OK
#define MG_E_ARG MOBAGEN_E_ARG
#define MG_E_SPEC MOBAGEN_E_SPEC
#define MG_E_TEMPLATE MOBAGEN_E_TEMPLATE
#define MG_E_COMPILE MOBAGEN_E_COMPILE
#define MG_E_NO_NVRTC MOBAGEN_E_NO_NVRTC
#define MG_E_CACHE MOBAGEN_E_CACHE
#define MG_E_IO MOBAGEN_E_IO
#define MG_E_NOMEM MOBAGEN_E_NOMEM
#define MG_E_NO_DRIVER MOBAGEN_E_NO_DRIVER
#define MG_E_NO_DEVICE MOBAGEN_E_NO_DEVICE
#define MG_E_CUDA MOBAGEN_E_CUDA
#define MG_E_UNSUPPORTED MOBAGEN_E_UNSUPPORTED

/* Static name of a status ("MOBAGEN_E_SPEC"), never NULL. */
#define mg_status_name mobagen_status_name

/* Errors carry their text in a caller-owned buffer so that no component keeps global state. */
#define MG_ERRMSG_MAX 2048
typedef struct mg_diag {
    char msg[MG_ERRMSG_MAX];
} mg_diag;

/* printf into d->msg (if d is non-NULL) and return s; for one-line error returns. */
mg_status mg_fail(mg_diag *d, mg_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
