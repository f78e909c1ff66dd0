/* NVRTC, loaded with dlopen so that everything else works (and says why) without it. */
#ifndef MOBAGEN_NVRTC_H
#define MOBAGEN_NVRTC_H

#include <stddef.h>

#include "status.h"

typedef struct mg_nvrtc mg_nvrtc;

/* Tries $MOBAGEN_NVRTC, $CUDA_HOME/lib64, the build's CUDA_HOME, then the loader's path. */
mg_status mg_nvrtc_open(mg_nvrtc **out, mg_diag *diag);
void mg_nvrtc_close(mg_nvrtc *n);
void mg_nvrtc_version(const mg_nvrtc *n, int *major, int *minor);
const char *mg_nvrtc_path(const mg_nvrtc *n);
/* Comma-separated "sm_75,sm_80,..." that this NVRTC can target, into buf. */
void mg_nvrtc_supported_archs(const mg_nvrtc *n, char *buf, size_t size);
/* Does this NVRTC accept the arch ("sm_90a" counts as sm_90)? */
int mg_nvrtc_supports(const mg_nvrtc *n, const char *arch);

typedef struct mg_compiled {
    void *cubin;
    size_t cubin_size;
    char *log;                          /* the program log, warnings included; may be "" */
    int n_names;
    char **lowered;                     /* lowered name of each name expression, in order */
} mg_compiled;

/* Compiles source to a CUBIN for a real arch. On MG_E_COMPILE, out->log still holds the log. */
mg_status mg_nvrtc_compile(const mg_nvrtc *n, const char *source, const char *source_name,
                           const char *arch, const char *const *options, int n_options,
                           const char *const *name_exprs, int n_names, mg_compiled *out,
                           mg_diag *diag);
void mg_compiled_free(mg_compiled *c);

/* The options every mobagen compile uses besides the arch (part of the cache key). */
extern const char *const mg_nvrtc_base_options[];
extern const int mg_nvrtc_n_base_options;

#endif
