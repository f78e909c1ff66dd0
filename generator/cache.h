/* The on-disk, content-addressed kernel cache.
 *
 * An entry's key is a BLAKE2b-256 over everything that decides the CUBIN: the generated source,
 * the compile options, the NVRTC version, the target arch, the name expressions and the headers
 * (mobagen passes none: templates are expanded into self-contained sources). Entries are
 * published atomically (temporary file, fsync, rename), carry a hash of their own bytes, and an
 * entry that fails that check is treated as a miss and replaced. */
#ifndef MOBAGEN_CACHE_H
#define MOBAGEN_CACHE_H

#include <stddef.h>
#include <time.h>

#include "status.h"

typedef struct mg_cache mg_cache;

typedef struct mg_cache_key {
    char hex[65];
} mg_cache_key;

typedef struct mg_cache_entry {
    char *meta;          /* "name=value" lines: template, arch, point, lowered kernel names */
    char *log;           /* NVRTC's log */
    void *cubin;
    size_t cubin_size;
} mg_cache_entry;

/* dir NULL: $MOBAGEN_CACHE_DIR, else $XDG_CACHE_HOME/mobagen, else ~/.cache/mobagen. */
mg_status mg_cache_open(const char *dir, mg_cache **out, mg_diag *diag);
void mg_cache_close(mg_cache *c);
const char *mg_cache_dir(const mg_cache *c);
/* The directory mg_cache_open(NULL) would use, without creating it. */
mg_status mg_cache_default_dir(char *buf, size_t size, mg_diag *diag);

typedef struct mg_key_input {
    const char *source;
    const char *arch;
    const char *const *options;
    int n_options;
    const char *const *name_exprs;
    int n_names;
    int nvrtc_major, nvrtc_minor;
} mg_key_input;

void mg_cache_key_compute(const mg_key_input *in, mg_cache_key *key);

/* *found = 1 and *out filled on a hit. A damaged entry is removed and reported as a miss with
 * *damaged = 1 (damaged may be NULL). */
mg_status mg_cache_get(mg_cache *c, const mg_cache_key *key, mg_cache_entry *out, int *found,
                       int *damaged, mg_diag *diag);
mg_status mg_cache_put(mg_cache *c, const mg_cache_key *key, const mg_cache_entry *e,
                       mg_diag *diag);
void mg_cache_entry_free(mg_cache_entry *e);
/* Value of "name=" in an entry's meta into buf; 0 when absent. */
int mg_cache_meta_get(const char *meta, const char *name, char *buf, size_t size);

typedef struct mg_cache_item {
    const char *path;
    const char *key_hex;
    size_t bytes;
    time_t mtime;
    int valid;
    const char *meta;    /* NULL when the entry is damaged */
} mg_cache_item;

/* Calls fn for each entry, in no particular order. */
mg_status mg_cache_list(mg_cache *c, void (*fn)(const mg_cache_item *item, void *ctx), void *ctx,
                        mg_diag *diag);
/* Removes every entry and leftover temporary file; *removed counts files. */
mg_status mg_cache_clean(mg_cache *c, int *removed, mg_diag *diag);

#endif
