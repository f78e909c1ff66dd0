/* Resolving variants to compiled kernels: fetched by key from the cache (and any other source
 * of compiled kernels added to the builder), compiled through NVRTC only on a miss, in
 * parallel. NVRTC is loaded on the first miss, so a warm cache needs no NVRTC. */
#ifndef MOBAGEN_BUILD_H
#define MOBAGEN_BUILD_H

#include "cache.h"
#include "nvrtc.h"
#include "status.h"
#include "variants.h"

typedef struct mg_builder mg_builder;

/* cache_dir NULL: the default cache location. Needs no NVRTC. */
mg_status mg_builder_open(const char *cache_dir, mg_builder **out, mg_diag *diag);
void mg_builder_close(mg_builder *b);
mg_cache *mg_builder_cache(mg_builder *b);
/* NVRTC, loaded on the first call (MG_E_NO_NVRTC, the same message each time, without it). */
mg_status mg_builder_nvrtc(mg_builder *b, const mg_nvrtc **out, mg_diag *diag);
/* Whether this builder has loaded NVRTC (it does so only to compile). */
int mg_builder_nvrtc_loaded(mg_builder *b);

/* A read-only store of compiled variants by key, consulted after the cache and before
 * compiling (bundles shipped with a program are one). fetch sets *found = 1 and fills out on a
 * hit; an error fails the variant. */
typedef struct mg_kernel_source {
    const char *name;
    mg_status (*fetch)(void *self, const mg_cache_key *key, mg_cache_entry *out, int *found,
                       mg_diag *diag);
    void *self;
} mg_kernel_source;

#define MG_MAX_KERNEL_SOURCES 4
mg_status mg_builder_add_source(mg_builder *b, const mg_kernel_source *src, mg_diag *diag);

/* The cache key of a variant: its source, NVRTC options, arch and kernels. */
void mg_variant_key(const mg_variant *v, mg_cache_key *key);

typedef struct mg_build_stats {
    int total, hits, misses, damaged, failed;
    int unsaved;         /* compiled, but the cache could not keep them */
    double seconds;
} mg_build_stats;

/* What one variant's build produced; entry holds the CUBIN, log and lowered names. */
typedef struct mg_build_result {
    mg_status status;
    int hit;
    double seconds;
    mg_cache_entry entry;
    char *error;         /* malloc'd message when status != MG_OK */
    char *warning;       /* malloc'd, or NULL: a damaged entry replaced, a cache write failed */
} mg_build_result;

typedef struct mg_build_options {
    int jobs;            /* worker threads; <= 0: one per online core */
    int progress;        /* a progress line on stderr */
    /* Called as each variant finishes (done of n so far), one call at a time, from the
     * worker threads; may be NULL. */
    void (*on_result)(void *user, const mg_variant *v, const mg_build_result *r, int done, int n);
    void *on_result_user;
} mg_build_options;

/* Fetches only: the variant's entry from the cache or another source; *found = 0 on a miss. */
mg_status mg_builder_fetch(mg_builder *b, const mg_variant *v, mg_build_result *r, int *found,
                           mg_diag *diag);

/* Builds every variant (hits come from the cache). results (n entries, may be NULL) receive
 * each variant's outcome; free them with mg_build_results_free. Returns the first failure's
 * status and message when any variant fails. A cache that cannot take a compiled kernel is a
 * warning, never a failure. */
mg_status mg_builder_build(mg_builder *b, const mg_variant *variants, int n,
                           const mg_build_options *opts, mg_build_result *results,
                           mg_build_stats *stats, mg_diag *diag);
void mg_build_results_free(mg_build_result *r, int n);

/* The kernel's lowered name for a role, from a built entry's meta; 0 when absent. */
int mg_entry_lowered_name(const mg_cache_entry *e, const char *role, char *buf, size_t size);

#endif
