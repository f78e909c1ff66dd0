/* What the cache's files share: its layout, on-disk forms and names. Not a public API. */
#ifndef MOBAGEN_CACHE_INTERNAL_H
#define MOBAGEN_CACHE_INTERNAL_H

#include <stdint.h>
#include <sys/stat.h>

#include <sodium.h>

#include "cache.h"

#define ENTRY_MAGIC "MGCACHE1"
#define ENTRY_SUFFIX ".mgc"
#define TEMP_PREFIX ".tmp."
#define LAYOUT_DIR "v1"
#define KEY_HEX 64

/* On-disk header; all integers little-endian as written by this (x86-64/arm64) host. */
typedef struct entry_header {
    char magic[8];
    uint64_t meta_len, log_len, cubin_len;
    unsigned char digest[32];   /* BLAKE2b-256 of key hex, meta, log and cubin */
} entry_header;

struct mg_cache {
    char dir[PATH_MAX];
    int layout_fd;              /* DIR/v1, or -1 for a read-only cache that has none */
    char read_only_why[256];    /* why layout_fd is -1 */
};

/* A length-prefixed part of a hash, so that no two different inputs hash the same bytes. */
void mg_cache_hash_part(crypto_generichash_state *h, const char *label, const void *p, size_t n);
void mg_cache_entry_digest(const mg_cache_key *key, const char *meta, size_t meta_len,
                           const char *log, size_t log_len, const void *cubin, size_t cubin_len,
                           unsigned char out[32]);
/* An entry file's bytes, verified: 1 sound (e filled when non-NULL), 0 damaged, -1 no memory. */
int mg_cache_decode_entry(const mg_cache_key *key, const char *data, size_t len, mg_cache_entry *e);

enum { READ_OK = 1, READ_ABSENT = 0, READ_DAMAGED = -1, READ_UNREADABLE = -2, READ_NOMEM = -3 };
/* Reads name in dir_fd if it is a regular file of at most MG_CACHE_ENTRY_MAX bytes: never
 * follows a link, never blocks on a FIFO, never reads a device; a READ_* code. st is filled
 * when the name could be examined; why says what is wrong otherwise. */
int mg_cache_read_entry_file(int dir_fd, const char *name, char **data, size_t *len,
                             struct stat *st, char *why, size_t why_size);
/* "a FIFO", "a directory", ... */
const char *mg_cache_file_kind(mode_t mode);

/* The names the cache creates, and the tests that a name is one of them. */
void mg_cache_entry_name(const mg_cache_key *key, char *buf, size_t size);
void mg_cache_temp_name(const mg_cache_key *key, char *buf, size_t size);
int mg_cache_is_fanout_name(const char *name);
int mg_cache_is_entry_name(const char *fan, const char *name);
int mg_cache_is_temp_name(const char *fan, const char *name, long *pid);
/* Removes one of the cache's own names in dir_fd unless it was replaced since seen (may be
 * NULL) was taken; 1 removed, 0 not (errno set). */
int mg_cache_remove_own_name(int dir_fd, const char *name, const struct stat *seen);
/* The fan-out directory fan, without following links; -1 with errno (ENOTDIR or ELOOP for a
 * non-directory there). */
int mg_cache_open_fanout(const mg_cache *c, const char *fan);

#endif
