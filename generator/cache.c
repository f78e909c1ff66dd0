#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "textbuf.h"

#define ENTRY_MAGIC "MGCACHE1"
#define ENTRY_SUFFIX ".mgc"
#define LAYOUT_DIR "v1"

/* On-disk header; all integers little-endian as written by this (x86-64/arm64) host. */
typedef struct entry_header {
    char magic[8];
    uint64_t meta_len, log_len, cubin_len;
    unsigned char digest[32];   /* BLAKE2b-256 of key hex, meta, log and cubin */
} entry_header;

struct mg_cache {
    char dir[PATH_MAX];
};

static mg_status make_dirs(const char *path, mg_diag *diag)
{
    if (mg_mkdir_p(path) != 0)
        return mg_fail(diag, MG_E_CACHE, "cannot create cache directory %s: %s", path, strerror(errno));
    return MG_OK;
}

mg_status mg_cache_default_dir(char *buf, size_t size, mg_diag *diag)
{
    const char *env = getenv("MOBAGEN_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(buf, size, "%s", env);
    else if (xdg && *xdg)
        snprintf(buf, size, "%s/mobagen", xdg);
    else if (home && *home)
        snprintf(buf, size, "%s/.cache/mobagen", home);
    else
        return mg_fail(diag, MG_E_CACHE,
                       "no cache directory: set MOBAGEN_CACHE_DIR (XDG_CACHE_HOME and HOME are unset)");
    return MG_OK;
}

mg_status mg_cache_open(const char *dir, mg_cache **out, mg_diag *diag)
{
    *out = NULL;
    if (sodium_init() < 0) return mg_fail(diag, MG_E_CACHE, "libsodium failed to initialise");
    mg_cache *c = calloc(1, sizeof *c);
    if (!c) return mg_fail(diag, MG_E_NOMEM, "out of memory");
    mg_status st = MG_OK;
    if (dir)
        snprintf(c->dir, sizeof c->dir, "%s", dir);
    else
        st = mg_cache_default_dir(c->dir, sizeof c->dir, diag);
    if (st == MG_OK) {
        char layout[PATH_MAX + 8];
        snprintf(layout, sizeof layout, "%s/%s", c->dir, LAYOUT_DIR);
        st = make_dirs(layout, diag);
    }
    if (st != MG_OK) {
        free(c);
        return st;
    }
    *out = c;
    return MG_OK;
}

void mg_cache_close(mg_cache *c) { free(c); }
const char *mg_cache_dir(const mg_cache *c) { return c->dir; }

/* Each part is length-prefixed so that no two different inputs hash the same bytes. */
static void hash_part(crypto_generichash_state *h, const char *label, const void *p, size_t n)
{
    uint64_t len = n;
    crypto_generichash_update(h, (const unsigned char *)label, strlen(label) + 1);
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof len);
    if (n) crypto_generichash_update(h, p, n);
}

void mg_cache_key_compute(const mg_key_input *in, mg_cache_key *key)
{
    crypto_generichash_state h;
    unsigned char digest[32];
    char version[32];
    crypto_generichash_init(&h, NULL, 0, sizeof digest);
    hash_part(&h, "mobagen-cache-layout", LAYOUT_DIR, strlen(LAYOUT_DIR));
    snprintf(version, sizeof version, "%d.%d", in->nvrtc_major, in->nvrtc_minor);
    hash_part(&h, "nvrtc", version, strlen(version));
    hash_part(&h, "arch", in->arch, strlen(in->arch));
    for (int i = 0; i < in->n_options; i++)
        hash_part(&h, "option", in->options[i], strlen(in->options[i]));
    for (int i = 0; i < in->n_names; i++)
        hash_part(&h, "name", in->name_exprs[i], strlen(in->name_exprs[i]));
    hash_part(&h, "headers", "", 0);
    hash_part(&h, "source", in->source, strlen(in->source));
    crypto_generichash_final(&h, digest, sizeof digest);
    sodium_bin2hex(key->hex, sizeof key->hex, digest, sizeof digest);
}

static void entry_digest(const mg_cache_key *key, const char *meta, size_t meta_len,
                         const char *log, size_t log_len, const void *cubin, size_t cubin_len,
                         unsigned char out[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    hash_part(&h, "key", key->hex, 64);
    hash_part(&h, "meta", meta, meta_len);
    hash_part(&h, "log", log, log_len);
    hash_part(&h, "cubin", cubin, cubin_len);
    crypto_generichash_final(&h, out, 32);
}

static void entry_path(const mg_cache *c, const mg_cache_key *key, char *buf, size_t size,
                       int dir_only)
{
    if (dir_only)
        snprintf(buf, size, "%s/%s/%.2s", c->dir, LAYOUT_DIR, key->hex);
    else
        snprintf(buf, size, "%s/%s/%.2s/%s%s", c->dir, LAYOUT_DIR, key->hex, key->hex, ENTRY_SUFFIX);
}

/* Parses and verifies an entry file's bytes; 1 if sound (and fills e when non-NULL). */
static int decode_entry(const mg_cache_key *key, const char *data, size_t len, mg_cache_entry *e)
{
    entry_header h;
    if (len < sizeof h) return 0;
    memcpy(&h, data, sizeof h);
    if (memcmp(h.magic, ENTRY_MAGIC, 8) != 0) return 0;
    uint64_t body = h.meta_len + h.log_len + h.cubin_len;
    if (h.meta_len > len || h.log_len > len || h.cubin_len > len || body != len - sizeof h ||
        h.cubin_len == 0)
        return 0;
    const char *meta = data + sizeof h, *log = meta + h.meta_len, *cubin = log + h.log_len;
    unsigned char digest[32];
    entry_digest(key, meta, h.meta_len, log, h.log_len, cubin, h.cubin_len, digest);
    if (memcmp(digest, h.digest, 32) != 0) return 0;
    if (!e) return 1;
    memset(e, 0, sizeof *e);
    e->meta = malloc(h.meta_len + 1);
    e->log = malloc(h.log_len + 1);
    e->cubin = malloc(h.cubin_len);
    if (!e->meta || !e->log || !e->cubin) {
        mg_cache_entry_free(e);
        return -1;
    }
    memcpy(e->meta, meta, h.meta_len);
    e->meta[h.meta_len] = 0;
    memcpy(e->log, log, h.log_len);
    e->log[h.log_len] = 0;
    memcpy(e->cubin, cubin, h.cubin_len);
    e->cubin_size = h.cubin_len;
    return 1;
}

mg_status mg_cache_get(mg_cache *c, const mg_cache_key *key, mg_cache_entry *out, int *found,
                       int *damaged, mg_diag *diag)
{
    *found = 0;
    if (damaged) *damaged = 0;
    char path[PATH_MAX + 128];
    entry_path(c, key, path, sizeof path, 0);
    size_t len;
    char *data = mg_read_file(path, &len);
    if (!data) {
        if (errno == ENOENT) return MG_OK;
        return mg_fail(diag, MG_E_CACHE, "cannot read cache entry %s: %s", path, strerror(errno));
    }
    int ok = decode_entry(key, data, len, out);
    free(data);
    if (ok < 0) return mg_fail(diag, MG_E_NOMEM, "out of memory reading %s", path);
    if (!ok) {
        /* A truncated or altered entry: drop it so that the caller rebuilds it. */
        unlink(path);
        if (damaged) *damaged = 1;
        return MG_OK;
    }
    *found = 1;
    return MG_OK;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

mg_status mg_cache_put(mg_cache *c, const mg_cache_key *key, const mg_cache_entry *e,
                       mg_diag *diag)
{
    char dir[PATH_MAX + 16], path[PATH_MAX + 128], tmp[PATH_MAX + 192];
    entry_path(c, key, dir, sizeof dir, 1);
    entry_path(c, key, path, sizeof path, 0);
    mg_status st = make_dirs(dir, diag);
    if (st != MG_OK) return st;

    entry_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, ENTRY_MAGIC, 8);
    const char *meta = e->meta ? e->meta : "", *log = e->log ? e->log : "";
    h.meta_len = strlen(meta);
    h.log_len = strlen(log);
    h.cubin_len = e->cubin_size;
    entry_digest(key, meta, h.meta_len, log, h.log_len, e->cubin, e->cubin_size, h.digest);

    unsigned char rnd[8];
    char rnd_hex[17];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(rnd_hex, sizeof rnd_hex, rnd, sizeof rnd);
    snprintf(tmp, sizeof tmp, "%s/.tmp.%s.%ld.%s", dir, key->hex, (long)getpid(), rnd_hex);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return mg_fail(diag, MG_E_CACHE, "cannot create %s: %s", tmp, strerror(errno));
    int bad = write_all(fd, &h, sizeof h) || write_all(fd, meta, h.meta_len) ||
              write_all(fd, log, h.log_len) || write_all(fd, e->cubin, e->cubin_size) ||
              fsync(fd) != 0;
    int err = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    if (!bad && rename(tmp, path) != 0) {
        bad = 1;
        err = errno;
    }
    if (bad) {
        unlink(tmp);
        return mg_fail(diag, MG_E_CACHE, "cannot write cache entry %s: %s", path, strerror(err));
    }
    return MG_OK;
}

void mg_cache_entry_free(mg_cache_entry *e)
{
    free(e->meta);
    free(e->log);
    free(e->cubin);
    memset(e, 0, sizeof *e);
}

int mg_cache_meta_get(const char *meta, const char *name, char *buf, size_t size)
{
    size_t n = strlen(name);
    for (const char *line = meta; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > n && !strncmp(line, name, n) && line[n] == '=') {
            snprintf(buf, size, "%.*s", (int)(len - n - 1), line + n + 1);
            return 1;
        }
        line = end ? end + 1 : NULL;
    }
    return 0;
}

/* Visits every file in the fan-out directories: fn(dir path, file name, ctx). */
static mg_status walk(mg_cache *c, int (*fn)(const char *dir, const char *name, void *ctx),
                      void *ctx, mg_diag *diag)
{
    char root[PATH_MAX + 8];
    snprintf(root, sizeof root, "%s/%s", c->dir, LAYOUT_DIR);
    DIR *d = opendir(root);
    if (!d) return mg_fail(diag, MG_E_CACHE, "cannot open %s: %s", root, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strlen(de->d_name) != 2) continue;
        char sub[PATH_MAX + 16];
        snprintf(sub, sizeof sub, "%s/%s", root, de->d_name);
        DIR *s = opendir(sub);
        if (!s) continue;
        struct dirent *fe;
        while ((fe = readdir(s)))
            if (fe->d_name[0] != '.' || !strncmp(fe->d_name, ".tmp.", 5)) fn(sub, fe->d_name, ctx);
        closedir(s);
        rmdir(sub); /* succeeds only once emptied by clean */
    }
    closedir(d);
    return MG_OK;
}

typedef struct list_ctx {
    void (*fn)(const mg_cache_item *, void *);
    void *ctx;
} list_ctx;

static int list_one(const char *dir, const char *name, void *p)
{
    list_ctx *lc = p;
    size_t n = strlen(name);
    if (n != 64 + strlen(ENTRY_SUFFIX) || strcmp(name + 64, ENTRY_SUFFIX)) return 0;
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    mg_cache_key key;
    memcpy(key.hex, name, 64);
    key.hex[64] = 0;
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    size_t len;
    char *data = mg_read_file(path, &len);
    mg_cache_entry e = {0};
    int ok = data ? decode_entry(&key, data, len, &e) : 0;
    free(data);
    mg_cache_item item = {path, key.hex, (size_t)st.st_size, st.st_mtime, ok == 1,
                          ok == 1 ? e.meta : NULL};
    lc->fn(&item, lc->ctx);
    mg_cache_entry_free(&e);
    return 0;
}

mg_status mg_cache_list(mg_cache *c, void (*fn)(const mg_cache_item *, void *), void *ctx,
                        mg_diag *diag)
{
    list_ctx lc = {fn, ctx};
    return walk(c, list_one, &lc, diag);
}

static int clean_one(const char *dir, const char *name, void *p)
{
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) == 0) ++*(int *)p;
    return 0;
}

mg_status mg_cache_clean(mg_cache *c, int *removed, mg_diag *diag)
{
    *removed = 0;
    return walk(c, clean_one, removed, diag);
}
