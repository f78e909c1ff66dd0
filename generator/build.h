/* Compiling variants through NVRTC into the cache, in parallel. */
#ifndef MOBAGEN_BUILD_H
#define MOBAGEN_BUILD_H

#include "cache.h"
#include "nvrtc.h"
#include "status.h"
#include "variants.h"

typedef struct mg_builder mg_builder;

/* cache_dir NULL: the default cache location. Fails with MG_E_NO_NVRTC without NVRTC. */
mg_status mg_builder_open(const char *cache_dir, mg_builder **out, mg_diag *diag);
void mg_builder_close(mg_builder *b);
const mg_nvrtc *mg_builder_nvrtc(const mg_builder *b);
mg_cache *mg_builder_cache(mg_builder *b);

typedef struct mg_build_stats {
    int total, hits, misses, damaged, failed;
    double seconds;
} mg_build_stats;

/* What one variant's build produced; entry holds the CUBIN, log and lowered names. */
typedef struct mg_build_result {
    mg_status status;
    int hit;
    double seconds;
    mg_cache_entry entry;
    char *error;         /* malloc'd message when status != MG_OK */
} mg_build_result;

typedef struct mg_build_options {
    int jobs;            /* worker threads; <= 0: one per online core */
    int progress;        /* a progress line on stderr */
    /* Called as each variant finishes (done of n so far), one call at a time, from the
     * worker threads; may be NULL. */
    void (*on_result)(void *user, const mg_variant *v, const mg_build_result *r, int done, int n);
    void *on_result_user;
} mg_build_options;

/* Builds every variant (hits come from the cache). results (n entries, may be NULL) receive
 * each variant's outcome; free them with mg_build_results_free. Returns MG_E_COMPILE with the
 * first failure's message when any variant fails. */
mg_status mg_builder_build(mg_builder *b, const mg_variant *variants, int n,
                           const mg_build_options *opts, mg_build_result *results,
                           mg_build_stats *stats, mg_diag *diag);
void mg_build_results_free(mg_build_result *r, int n);

/* The kernel's lowered name for a role, from a built entry's meta; 0 when absent. */
int mg_entry_lowered_name(const mg_cache_entry *e, const char *role, char *buf, size_t size);

#endif
