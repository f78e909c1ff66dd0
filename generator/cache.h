/* The on-disk, content-addressed kernel cache.
 *
 * An entry's key is a BLAKE2b-256 over everything that decides the CUBIN and that is known
 * without a compiler: the generated source, the compile options (in NVRTC's order), the target
 * arch and the kernels (role and name expression, sorted by role). The NVRTC version is not part
 * of the key, so that a warm cache needs no NVRTC at all; each entry records the version that
 * built it (meta "nvrtc=", shown by `mobagen cache ls`), and `mobagen cache clean` forces a
 * rebuild after a toolkit change.
 *
 * Layout: DIR/v1/XY/KEY.mgc, XY being the key's first two hex digits; writers publish through
 * DIR/v1/XY/.tmp.KEY.PID.RANDOM (written, fsync'd, renamed). The cache opens, lists, reads and
 * removes only names of that form, never follows a symbolic link below DIR, reads only regular
 * files of bounded size, and treats anything else under a name of its own (a truncated or
 * altered entry, a FIFO, a link, a directory) as damage: it is reported, removed when it can
 * be, and never fails a build. */
#ifndef MOBAGEN_CACHE_H
#define MOBAGEN_CACHE_H

#include <stddef.h>
#include <time.h>

#include "status.h"

/* Entries larger than this are damage, never read (cubins are well under a MiB). */
#define MG_CACHE_ENTRY_MAX (256u << 20)

typedef struct mg_cache mg_cache;

typedef struct mg_cache_key {
    char hex[65];
} mg_cache_key;

typedef struct mg_cache_entry {
    char *meta;          /* "name=value" lines: template, arch, point, nvrtc, lowered kernel names */
    char *log;           /* NVRTC's log */
    void *cubin;
    size_t cubin_size;
} mg_cache_entry;

/* dir NULL: $MOBAGEN_CACHE_DIR, else $XDG_CACHE_HOME/mobagen, else ~/.cache/mobagen. A cache
 * that cannot be created for lack of permission opens read-only (every lookup misses, every
 * put fails with a message); a path that is no directory is an error. */
mg_status mg_cache_open(const char *dir, mg_cache **out, mg_diag *diag);
void mg_cache_close(mg_cache *c);
const char *mg_cache_dir(const mg_cache *c);
/* The directory mg_cache_open(NULL) would use, without creating it. */
mg_status mg_cache_default_dir(char *buf, size_t size, mg_diag *diag);

typedef struct mg_key_input {
    const char *source;
    const char *arch;
    const char *const *options;      /* in the order the compiler gets them */
    int n_options;
    const char *const *roles;        /* kernel roles ("main", "merge"), parallel to name_exprs */
    const char *const *name_exprs;
    int n_names;                     /* any order: the key sorts the kernels by role */
} mg_key_input;

void mg_cache_key_compute(const mg_key_input *in, mg_cache_key *key);

/* *found = 1 and *out filled on a hit. Lookups never fail on the cache's state: anything wrong
 * under the entry's name (unreadable, damaged, not a regular file) is a miss with *damaged = 1
 * and what was wrong (and whether it was removed) in diag->msg. MG_E_NOMEM is the only error.
 * damaged may be NULL. */
mg_status mg_cache_get(mg_cache *c, const mg_cache_key *key, mg_cache_entry *out, int *found,
                       int *damaged, mg_diag *diag);
/* Publishes atomically; a damaged fan-out (a file where its directory belongs) is repaired.
 * MG_E_CACHE when the cache cannot take the entry (read-only, full, a directory in the way). */
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
    const char *damage;  /* what is wrong with a damaged entry ("a FIFO", "fails its checksum") */
} mg_cache_item;

/* Told about every name below the layout directory that the cache left alone, and why. */
typedef void (*mg_cache_skip_fn)(const char *path, const char *why, void *ctx);

/* Calls fn for each entry, in key order; skip (may be NULL) for names that are not entries. */
mg_status mg_cache_list(mg_cache *c, void (*fn)(const mg_cache_item *item, void *ctx),
                        mg_cache_skip_fn skip, void *ctx, mg_diag *diag);

typedef struct mg_cache_clean_stats {
    int removed;         /* entries, damaged entries and stale temporary files removed */
    int in_use;          /* temporary files of writers still running, left alone */
    int skipped;         /* names that are not the cache's, left alone */
    int failed;          /* removals that failed */
} mg_cache_clean_stats;

/* Removes every entry, damaged entry and stale temporary file (one whose writer has exited, or
 * older than an hour); leaves other names and running writers alone. MG_E_CACHE when a
 * removal failed (a read-only cache), with the first failure in diag. */
mg_status mg_cache_clean(mg_cache *c, mg_cache_clean_stats *stats, mg_cache_skip_fn skip,
                         void *ctx, mg_diag *diag);

#endif
