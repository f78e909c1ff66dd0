/* The cache: where it lives, keys, lookups and atomic publication. */
#include "cache.h"

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

#include "cache_internal.h"
#include "textbuf.h"

#define KEY_FORMAT "2"            /* changes whenever the key's inputs change */
#define MAX_KEY_KERNELS 64

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

static int is_permission_error(int err) { return err == EACCES || err == EPERM || err == EROFS; }

/* Opens (creating it, or replacing a non-directory of that name) the layout directory. */
static mg_status open_layout(mg_cache *c, mg_diag *diag)
{
    c->layout_fd = -1;
    int err = 0;
    int root = mg_mkdir_p(c->dir) == 0 ? open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (root < 0) err = errno;
    for (int attempt = 0; root >= 0 && attempt < 3 && c->layout_fd < 0; attempt++) {
        if (mkdirat(root, LAYOUT_DIR, 0755) != 0 && errno != EEXIST) {
            err = errno;
            break;
        }
        c->layout_fd = openat(root, LAYOUT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        err = c->layout_fd < 0 ? errno : 0;
        /* The name is the cache's own; a file or link there is damage, replaced by the directory. */
        if (c->layout_fd < 0 && (err == ENOTDIR || err == ELOOP) &&
            unlinkat(root, LAYOUT_DIR, 0) != 0) {
            err = errno;
            break;
        }
    }
    if (root >= 0) close(root);
    if (c->layout_fd >= 0) return MG_OK;
    if (is_permission_error(err)) {
        snprintf(c->read_only_why, sizeof c->read_only_why, "%s", strerror(err));
        return MG_OK;
    }
    return mg_fail(diag, MG_E_CACHE, "cannot create cache directory %s/%s: %s", c->dir, LAYOUT_DIR,
                   strerror(err ? err : ENOTDIR));
}

mg_status mg_cache_open(const char *dir, mg_cache **out, mg_diag *diag)
{
    *out = NULL;
    if (sodium_init() < 0) return mg_fail(diag, MG_E_CACHE, "libsodium failed to initialise");
    mg_cache *c = calloc(1, sizeof *c);
    if (!c) return mg_fail(diag, MG_E_NOMEM, "out of memory");
    c->layout_fd = -1;
    mg_status st = MG_OK;
    if (dir)
        snprintf(c->dir, sizeof c->dir, "%s", dir);
    else
        st = mg_cache_default_dir(c->dir, sizeof c->dir, diag);
    if (st == MG_OK) st = open_layout(c, diag);
    if (st != MG_OK) {
        mg_cache_close(c);
        return st;
    }
    *out = c;
    return MG_OK;
}

void mg_cache_close(mg_cache *c)
{
    if (!c) return;
    if (c->layout_fd >= 0) close(c->layout_fd);
    free(c);
}

const char *mg_cache_dir(const mg_cache *c) { return c->dir; }

/* ---------- keys ---------- */

static void hash_string(crypto_generichash_state *h, const char *label, const char *s)
{
    mg_cache_hash_part(h, label, s ? s : "", s ? strlen(s) : 0);
}

static int kernel_before(const mg_key_input *in, int a, int b)
{
    const char *ra = in->roles ? in->roles[a] : "", *rb = in->roles ? in->roles[b] : "";
    int c = strcmp(ra, rb);
    return c < 0 || (c == 0 && strcmp(in->name_exprs[a], in->name_exprs[b]) < 0);
}

void mg_cache_key_compute(const mg_key_input *in, mg_cache_key *key)
{
    /* Kernels reach here in whatever order the template's table gave them: sort them, so that
     * the key is a function of the set. */
    int n = in->n_names < MAX_KEY_KERNELS ? in->n_names : MAX_KEY_KERNELS;
    int order[MAX_KEY_KERNELS];
    for (int i = 0; i < n; i++) {
        int j = i;
        for (; j > 0 && kernel_before(in, i, order[j - 1]); j--) order[j] = order[j - 1];
        order[j] = i;
    }
    crypto_generichash_state h;
    unsigned char digest[32];
    crypto_generichash_init(&h, NULL, 0, sizeof digest);
    hash_string(&h, "mobagen-cache-key", KEY_FORMAT);
    hash_string(&h, "arch", in->arch);
    for (int i = 0; i < in->n_options; i++) hash_string(&h, "option", in->options[i]);
    for (int i = 0; i < n; i++) {
        hash_string(&h, "role", in->roles ? in->roles[order[i]] : "");
        hash_string(&h, "name", in->name_exprs[order[i]]);
    }
    hash_string(&h, "headers", "");
    hash_string(&h, "source", in->source);
    crypto_generichash_final(&h, digest, sizeof digest);
    sodium_bin2hex(key->hex, sizeof key->hex, digest, sizeof digest);
}

/* The fan-out directory of a key, without following links; -1 with errno (ENOTDIR/ELOOP for a
 * non-directory there). */
int mg_cache_open_fanout(const mg_cache *c, const char *fan)
{
    if (c->layout_fd < 0) {
        errno = ENOENT;
        return -1;
    }
    return openat(c->layout_fd, fan, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

mg_status mg_cache_get(mg_cache *c, const mg_cache_key *key, mg_cache_entry *out, int *found,
                       int *damaged, mg_diag *diag)
{
    *found = 0;
    if (damaged) *damaged = 0;
    char fan[3] = {key->hex[0], key->hex[1], 0}, name[KEY_HEX + 8], why[160] = "";
    mg_cache_entry_name(key, name, sizeof name);
    int fan_fd = mg_cache_open_fanout(c, fan);
    if (fan_fd < 0) {
        if (errno == ENOENT) return MG_OK;
        if (damaged) *damaged = 1;
        mg_fail(diag, MG_OK, "cache fan-out %s/%s/%s is not a directory (%s); the next write repairs it",
                c->dir, LAYOUT_DIR, fan, strerror(errno));
        return MG_OK;
    }
    char *data;
    size_t len = 0;
    struct stat st;
    int r = mg_cache_read_entry_file(fan_fd, name, &data, &len, &st, why, sizeof why);
    mg_status status = MG_OK;
    if (r == READ_OK) {
        int ok = mg_cache_decode_entry(key, data, len, out);
        free(data);
        if (ok > 0) *found = 1;
        if (ok < 0) status = mg_fail(diag, MG_E_NOMEM, "out of memory reading a cache entry");
        if (ok == 0) {
            snprintf(why, sizeof why, "truncated or altered: it fails its checksum");
            r = READ_DAMAGED;
        }
    } else if (r == READ_NOMEM) {
        status = mg_fail(diag, MG_E_NOMEM, "out of memory reading a cache entry");
    }
    if (r == READ_DAMAGED || r == READ_UNREADABLE) {
        if (damaged) *damaged = 1;
        /* Only damage is removed: an unreadable file may be a permission choice. */
        int removed = r == READ_DAMAGED && mg_cache_remove_own_name(fan_fd, name, &st);
        mg_fail(diag, MG_OK, "cache entry %s/%s/%s/%s is %s; %s", c->dir, LAYOUT_DIR, fan, name,
                why, removed ? "removed" : "left in place");
    }
    close(fan_fd);
    return status;
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

/* The key's fan-out directory, created when missing and replaced when something else has its
 * name; -1 with errno. */
static int make_fanout(mg_cache *c, const char *fan)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = mg_cache_open_fanout(c, fan);
        if (fd >= 0 || c->layout_fd < 0) return fd;
        if (errno == ENOENT) {
            if (mkdirat(c->layout_fd, fan, 0755) != 0 && errno != EEXIST) return -1;
        } else if (errno == ENOTDIR || errno == ELOOP) {
            if (unlinkat(c->layout_fd, fan, 0) != 0 && errno != ENOENT) return -1;
        } else {
            return -1;
        }
    }
    errno = EAGAIN;
    return -1;
}

/* Writes the entry to a fresh temporary name in fan_fd and renames it into place; 0, or -1 with
 * errno (ENOENT: the fan-out went away under us). */
static int publish(int fan_fd, const mg_cache_key *key, const entry_header *h, const char *meta,
                   const char *log, const void *cubin)
{
    char tmp[KEY_HEX + 64], name[KEY_HEX + 8];
    mg_cache_temp_name(key, tmp, sizeof tmp);
    mg_cache_entry_name(key, name, sizeof name);
    int fd = openat(fan_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int bad = write_all(fd, h, sizeof *h) || write_all(fd, meta, h->meta_len) ||
              write_all(fd, log, h->log_len) || write_all(fd, cubin, h->cubin_len) || fsync(fd) != 0;
    int err = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    if (!bad && renameat(fan_fd, tmp, fan_fd, name) != 0) {
        bad = 1;
        err = errno;
    }
    if (bad) {
        unlinkat(fan_fd, tmp, 0);
        errno = err == ENOENT ? EIO : err;   /* ENOENT is kept for "retry" */
        return -1;
    }
    return 0;
}

mg_status mg_cache_put(mg_cache *c, const mg_cache_key *key, const mg_cache_entry *e,
                       mg_diag *diag)
{
    if (c->layout_fd < 0)
        return mg_fail(diag, MG_E_CACHE, "cache %s is read-only (%s)", c->dir, c->read_only_why);
    entry_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, ENTRY_MAGIC, 8);
    const char *meta = e->meta ? e->meta : "", *log = e->log ? e->log : "";
    h.meta_len = strlen(meta);
    h.log_len = strlen(log);
    h.cubin_len = e->cubin_size;
    if (sizeof h + h.meta_len + h.log_len + h.cubin_len > MG_CACHE_ENTRY_MAX)
        return mg_fail(diag, MG_E_CACHE, "cache entry %s would exceed the %u MiB limit", key->hex,
                       MG_CACHE_ENTRY_MAX >> 20);
    mg_cache_entry_digest(key, meta, h.meta_len, log, h.log_len, e->cubin, e->cubin_size,
                          h.digest);
    char fan[3] = {key->hex[0], key->hex[1], 0};
    int err = 0;
    /* A fan-out removed between our open and our create (by someone's rm -rf) is made again. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int fan_fd = make_fanout(c, fan);
        if (fan_fd < 0) {
            err = errno;
            break;
        }
        int rc = publish(fan_fd, key, &h, meta, log, e->cubin);
        err = rc ? errno : 0;
        close(fan_fd);
        if (rc == 0 || err != ENOENT) break;
    }
    if (err)
        return mg_fail(diag, MG_E_CACHE, "cannot write cache entry %s/%s/%s/%s%s: %s", c->dir,
                       LAYOUT_DIR, fan, key->hex, ENTRY_SUFFIX, strerror(err));
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

