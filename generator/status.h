/* mobagen status codes, shared by every component (generator and runtime). */
#ifndef MOBAGEN_STATUS_H
#define MOBAGEN_STATUS_H

typedef enum mg_status {
    MG_OK = 0,
    MG_E_ARG,            /* a caller passed an invalid argument */
    MG_E_SPEC,           /* a spec file is malformed or has an unsupported value */
    MG_E_TEMPLATE,       /* a template failed to parse, run or validate */
    MG_E_COMPILE,        /* NVRTC rejected generated source */
    MG_E_NO_NVRTC,       /* libnvrtc could not be loaded */
    MG_E_CACHE,          /* the kernel cache is unusable */
    MG_E_IO,             /* a file could not be read or written */
    MG_E_NOMEM,          /* out of host memory */
    MG_E_NO_DRIVER,      /* libcuda.so.1 could not be loaded */
    MG_E_NO_DEVICE,      /* no CUDA device, or the ordinal is out of range */
    MG_E_CUDA,           /* a CUDA driver call failed */
    MG_E_UNSUPPORTED     /* valid request this build cannot serve */
} mg_status;

/* Static name of a status ("MG_E_SPEC"), never NULL. */
const char *mg_status_name(mg_status s);

/* Errors carry their text in a caller-owned buffer so that no component keeps global state. */
#define MG_ERRMSG_MAX 2048
typedef struct mg_diag {
    char msg[MG_ERRMSG_MAX];
} mg_diag;

/* printf into d->msg (if d is non-NULL) and return s; for one-line error returns. */
mg_status mg_fail(mg_diag *d, mg_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
