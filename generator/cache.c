#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
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
#define TEMP_PREFIX ".tmp."
#define LAYOUT_DIR "v1"
#define KEY_FORMAT "2"            /* changes whenever the key's inputs change */
#define KEY_HEX 64
#define STALE_TEMP_SECONDS 3600   /* a temporary file this old has no live writer */
#define MAX_KEY_KERNELS 64

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

/* Each part is length-prefixed so that no two different inputs hash the same bytes. */
static void hash_part(crypto_generichash_state *h, const char *label, const void *p, size_t n)
{
    uint64_t len = n;
    crypto_generichash_update(h, (const unsigned char *)label, strlen(label) + 1);
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof len);
    if (n) crypto_generichash_update(h, p, n);
}

static void hash_string(crypto_generichash_state *h, const char *label, const char *s)
{
    hash_part(h, label, s ? s : "", s ? strlen(s) : 0);
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

/* ---------- entry files ---------- */

static void entry_digest(const mg_cache_key *key, const char *meta, size_t meta_len,
                         const char *log, size_t log_len, const void *cubin, size_t cubin_len,
                         unsigned char out[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    hash_part(&h, "key", key->hex, KEY_HEX);
    hash_part(&h, "meta", meta, meta_len);
    hash_part(&h, "log", log, log_len);
    hash_part(&h, "cubin", cubin, cubin_len);
    crypto_generichash_final(&h, out, 32);
}

/* Parses and verifies an entry file's bytes; 1 if sound (and fills e when non-NULL), 0 if
 * damaged, -1 out of memory. */
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

static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    return "not a regular file";
}

enum { READ_OK = 1, READ_ABSENT = 0, READ_DAMAGED = -1, READ_UNREADABLE = -2, READ_NOMEM = -3 };

/* Reads name in dir_fd if it is a regular file of at most MG_CACHE_ENTRY_MAX bytes: never
 * follows a link, never blocks on a FIFO, never reads a device. st is filled when the name
 * could be examined; why says what is wrong otherwise. */
static int read_entry_file(int dir_fd, const char *name, char **data, size_t *len,
                           struct stat *st, char *why, size_t why_size)
{
    *data = NULL;
    memset(st, 0, sizeof *st);
    int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT) return READ_ABSENT;
        if (fstatat(dir_fd, name, st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st->st_mode)) {
            snprintf(why, why_size, "%s", file_kind(st->st_mode));
            return READ_DAMAGED;
        }
        snprintf(why, why_size, "cannot open it: %s", strerror(err));
        return READ_UNREADABLE;
    }
    int rc = READ_OK;
    if (fstat(fd, st) != 0) {
        snprintf(why, why_size, "cannot examine it: %s", strerror(errno));
        rc = READ_UNREADABLE;
    } else if (!S_ISREG(st->st_mode)) {
        snprintf(why, why_size, "%s", file_kind(st->st_mode));
        rc = READ_DAMAGED;
    } else if ((uint64_t)st->st_size > MG_CACHE_ENTRY_MAX) {
        snprintf(why, why_size, "%lld bytes, over the %u MiB limit", (long long)st->st_size,
                 MG_CACHE_ENTRY_MAX >> 20);
        rc = READ_DAMAGED;
    }
    size_t want = rc == READ_OK ? (size_t)st->st_size : 0, got = 0;
    char *buf = rc == READ_OK ? malloc(want + 1) : NULL;
    if (rc == READ_OK && !buf) rc = READ_NOMEM;
    /* One byte more than fstat said, to notice a file that changes under the reader. */
    while (rc == READ_OK && got <= want) {
        ssize_t r = read(fd, buf + got, want + 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(why, why_size, "cannot read it: %s", strerror(errno));
            rc = READ_UNREADABLE;
        }
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (rc == READ_OK && got != want) {
        snprintf(why, why_size, "changed size while being read");
        rc = READ_DAMAGED;
    }
    if (rc != READ_OK) {
        free(buf);
        return rc;
    }
    *data = buf;
    *len = got;
    return READ_OK;
}

static int is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int is_fanout_name(const char *name) { return strlen(name) == 2 && is_lower_hex(name, 2); }

static int is_entry_name(const char *fan, const char *name)
{
    return strlen(name) == KEY_HEX + strlen(ENTRY_SUFFIX) && is_lower_hex(name, KEY_HEX) &&
           !strcmp(name + KEY_HEX, ENTRY_SUFFIX) && !strncmp(name, fan, 2);
}

/* ".tmp.KEY.PID.RANDOM": *pid receives the writer's process id. */
static int is_temp_name(const char *fan, const char *name, long *pid)
{
    size_t p = strlen(TEMP_PREFIX);
    if (strncmp(name, TEMP_PREFIX, p) || strlen(name) < p + KEY_HEX + 1 + 1 + 1 + 16) return 0;
    const char *key = name + p, *rest = key + KEY_HEX;
    if (!is_lower_hex(key, KEY_HEX) || strncmp(key, fan, 2) || *rest++ != '.') return 0;
    if (*rest < '1' || *rest > '9') return 0;   /* digits as written, no sign or blank */
    char *end;
    *pid = strtol(rest, &end, 10);
    if (end == rest || *pid <= 0 || *pid > INT_MAX || *end++ != '.') return 0;
    return strlen(end) == 16 && is_lower_hex(end, 16);
}

static void entry_name(const mg_cache_key *key, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s", key->hex, ENTRY_SUFFIX);
}

/* Removes what sits under one of the cache's own names, unless it was replaced since st was
 * taken (a writer may have published a good entry meanwhile). 1 removed, 0 not, errno set. */
static int remove_own_name(int dir_fd, const char *name, const struct stat *seen)
{
    struct stat now;
    if (fstatat(dir_fd, name, &now, AT_SYMLINK_NOFOLLOW) != 0) return 0;
    if (seen && seen->st_ino && (now.st_ino != seen->st_ino || now.st_dev != seen->st_dev)) {
        errno = EEXIST;
        return 0;
    }
    return unlinkat(dir_fd, name, S_ISDIR(now.st_mode) ? AT_REMOVEDIR : 0) == 0;
}

/* The fan-out directory of a key, without following links; -1 with errno (ENOTDIR/ELOOP for a
 * non-directory there). */
static int open_fanout(const mg_cache *c, const char *fan)
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
    entry_name(key, name, sizeof name);
    int fan_fd = open_fanout(c, fan);
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
    int r = read_entry_file(fan_fd, name, &data, &len, &st, why, sizeof why);
    mg_status status = MG_OK;
    if (r == READ_OK) {
        int ok = decode_entry(key, data, len, out);
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
        int removed = r == READ_DAMAGED && remove_own_name(fan_fd, name, &st);
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
        int fd = open_fanout(c, fan);
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
    unsigned char rnd[8];
    char rnd_hex[17], tmp[KEY_HEX + 64], name[KEY_HEX + 8];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(rnd_hex, sizeof rnd_hex, rnd, sizeof rnd);
    snprintf(tmp, sizeof tmp, "%s%s.%ld.%s", TEMP_PREFIX, key->hex, (long)getpid(), rnd_hex);
    entry_name(key, name, sizeof name);
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
    entry_digest(key, meta, h.meta_len, log, h.log_len, e->cubin, e->cubin_size, h.digest);
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

/* ---------- walking the layout ---------- */

typedef struct name_list {
    char **names;
    int n, cap;
} name_list;

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void names_free(name_list *l)
{
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    memset(l, 0, sizeof *l);
}

/* The names in directory fd (not . and ..), sorted; -1 with errno. */
static int read_names(int fd, name_list *l)
{
    memset(l, 0, sizeof *l);
    int own = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  /* a position of our own */
    DIR *d = own >= 0 ? fdopendir(own) : NULL;
    if (!d) {
        int err = errno;
        if (own >= 0) close(own);
        errno = err;
        return -1;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (l->n == l->cap) {
            int cap = l->cap ? 2 * l->cap : 64;
            char **grown = realloc(l->names, (size_t)cap * sizeof *grown);
            if (!grown) {
                rc = -1;
                break;
            }
            l->names = grown;
            l->cap = cap;
        }
        if (!(l->names[l->n] = strdup(de->d_name))) {
            rc = -1;
            break;
        }
        l->n++;
    }
    closedir(d);
    if (rc) {
        names_free(l);
        errno = ENOMEM;
        return -1;
    }
    if (l->n) qsort(l->names, (size_t)l->n, sizeof *l->names, compare_names);
    return 0;
}

typedef struct walker {
    mg_cache *c;
    mg_cache_skip_fn skip;
    void *ctx;
    /* Called for each name of the cache's own forms; may be NULL. */
    void (*entry)(struct walker *w, int fan_fd, const char *fan, const char *name);
    void (*temp)(struct walker *w, int fan_fd, const char *fan, const char *name, long pid);
    void (*bad_fanout)(struct walker *w, const char *fan, const char *why);
    void *op;                   /* the operation's own state */
} walker;

static void skipped(walker *w, const char *fan, const char *name, const char *why)
{
    if (!w->skip) return;
    char path[PATH_MAX + 200];
    snprintf(path, sizeof path, "%s/%s%s%s%s%s", w->c->dir, LAYOUT_DIR, fan ? "/" : "",
             fan ? fan : "", name ? "/" : "", name ? name : "");
    w->skip(path, why, w->ctx);
}

/* Visits DIR/v1/XY/NAME in name order; a name of no form of the cache's is left alone and
 * reported. Concurrent writers and cleaners are expected: vanished names are not errors. */
static mg_status walk(walker *w, mg_diag *diag)
{
    mg_cache *c = w->c;
    if (c->layout_fd < 0) {
        /* Nothing to walk only when there is no layout at all; an unreachable one is an error. */
        char layout[PATH_MAX + 8];
        struct stat st;
        snprintf(layout, sizeof layout, "%s/%s", c->dir, LAYOUT_DIR);
        if (lstat(layout, &st) != 0 && errno == ENOENT) return MG_OK;
        return mg_fail(diag, MG_E_CACHE, "cannot open %s: %s", layout, c->read_only_why);
    }
    name_list fans;
    if (read_names(c->layout_fd, &fans) != 0)
        return mg_fail(diag, MG_E_CACHE, "cannot read %s/%s: %s", c->dir, LAYOUT_DIR, strerror(errno));
    for (int i = 0; i < fans.n; i++) {
        const char *fan = fans.names[i];
        if (!is_fanout_name(fan)) {
            skipped(w, NULL, fan, "not a cache directory");
            continue;
        }
        int fan_fd = open_fanout(c, fan);
        if (fan_fd < 0) {
            struct stat st;
            if (errno == ENOENT) continue;
            if ((errno == ENOTDIR || errno == ELOOP) &&
                fstatat(c->layout_fd, fan, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                if (w->bad_fanout) w->bad_fanout(w, fan, file_kind(st.st_mode));
            } else {
                skipped(w, NULL, fan, strerror(errno));
            }
            continue;
        }
        name_list files;
        if (read_names(fan_fd, &files) != 0) {
            skipped(w, NULL, fan, strerror(errno));
            close(fan_fd);
            continue;
        }
        for (int j = 0; j < files.n; j++) {
            const char *name = files.names[j];
            long pid;
            if (is_entry_name(fan, name)) {
                if (w->entry) w->entry(w, fan_fd, fan, name);
            } else if (is_temp_name(fan, name, &pid)) {
                if (w->temp) w->temp(w, fan_fd, fan, name, pid);
            } else {
                skipped(w, fan, name, "not a cache file");
            }
        }
        names_free(&files);
        close(fan_fd);
    }
    names_free(&fans);
    return MG_OK;
}

/* ---------- ls ---------- */

typedef struct list_op {
    void (*fn)(const mg_cache_item *, void *);
} list_op;

static void list_entry(walker *w, int fan_fd, const char *fan, const char *name)
{
    list_op *op = w->op;
    char path[PATH_MAX + 200], why[160] = "";
    snprintf(path, sizeof path, "%s/%s/%s/%s", w->c->dir, LAYOUT_DIR, fan, name);
    mg_cache_key key;
    memcpy(key.hex, name, KEY_HEX);
    key.hex[KEY_HEX] = 0;
    char *data;
    size_t len = 0;
    struct stat st;
    int r = read_entry_file(fan_fd, name, &data, &len, &st, why, sizeof why);
    if (r == READ_ABSENT) return;   /* removed since the directory was read */
    mg_cache_entry e = {0};
    int ok = 0;
    if (r == READ_OK) {
        ok = decode_entry(&key, data, len, &e);
        free(data);
        if (ok == 0) snprintf(why, sizeof why, "truncated or altered: it fails its checksum");
        if (ok < 0) snprintf(why, sizeof why, "out of memory reading it");
    } else if (r == READ_NOMEM) {
        snprintf(why, sizeof why, "out of memory reading it");
    }
    mg_cache_item item = {path, key.hex, (size_t)st.st_size, st.st_mtime, ok == 1,
                          ok == 1 ? e.meta : NULL, ok == 1 ? NULL : why};
    op->fn(&item, w->ctx);
    mg_cache_entry_free(&e);
}

static void list_bad_fanout(walker *w, const char *fan, const char *why)
{
    char text[200];
    snprintf(text, sizeof text, "damaged: %s where a cache directory belongs", why);
    skipped(w, NULL, fan, text);
}

mg_status mg_cache_list(mg_cache *c, void (*fn)(const mg_cache_item *, void *),
                        mg_cache_skip_fn skip, void *ctx, mg_diag *diag)
{
    list_op op = {fn};
    walker w = {.c = c, .skip = skip, .ctx = ctx, .entry = list_entry,
                .bad_fanout = list_bad_fanout, .op = &op};
    return walk(&w, diag);
}

/* ---------- clean ---------- */

typedef struct clean_op {
    mg_cache_clean_stats *stats;
    char first_failure[PATH_MAX + 300];
} clean_op;

static void count_removal(walker *w, int ok, const char *fan, const char *name)
{
    clean_op *op = w->op;
    if (ok) {
        op->stats->removed++;
        return;
    }
    if (errno == ENOENT) return;   /* someone else removed it first */
    if (errno == ENOTEMPTY || errno == EEXIST) {
        skipped(w, fan, name, errno == EEXIST ? "replaced while being cleaned"
                                              : "damaged: a directory with contents where an entry belongs");
        return;
    }
    if (!op->stats->failed++)
        snprintf(op->first_failure, sizeof op->first_failure, "%s/%s/%s%s%s: %s", w->c->dir,
                 LAYOUT_DIR, fan, name ? "/" : "", name ? name : "", strerror(errno));
}

static void clean_entry(walker *w, int fan_fd, const char *fan, const char *name)
{
    count_removal(w, remove_own_name(fan_fd, name, NULL), fan, name);
}

static void clean_temp(walker *w, int fan_fd, const char *fan, const char *name, long pid)
{
    clean_op *op = w->op;
    struct stat st;
    if (fstatat(fan_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    /* A writer on this host that is still running keeps its file; so does a recent one that
     * may run elsewhere (no pid can tell), until it is an hour old. */
    int writer_gone = kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    int old = time(NULL) - st.st_mtime > STALE_TEMP_SECONDS;
    if (!writer_gone && !old) {
        op->stats->in_use++;
        return;
    }
    count_removal(w, remove_own_name(fan_fd, name, &st), fan, name);
}

static void clean_bad_fanout(walker *w, const char *fan, const char *why)
{
    (void)why;
    count_removal(w, unlinkat(w->c->layout_fd, fan, 0) == 0, fan, NULL);
}

typedef struct skip_relay {
    mg_cache_skip_fn skip;
    void *ctx;
    mg_cache_clean_stats *stats;
} skip_relay;

static void clean_skip_counter(const char *path, const char *why, void *p)
{
    skip_relay *r = p;
    r->stats->skipped++;
    if (r->skip) r->skip(path, why, r->ctx);
}

mg_status mg_cache_clean(mg_cache *c, mg_cache_clean_stats *stats, mg_cache_skip_fn skip,
                         void *ctx, mg_diag *diag)
{
    memset(stats, 0, sizeof *stats);
    clean_op op = {stats, ""};
    skip_relay relay = {skip, ctx, stats};
    walker w = {.c = c, .skip = clean_skip_counter, .ctx = &relay, .entry = clean_entry,
                .temp = clean_temp, .bad_fanout = clean_bad_fanout, .op = &op};
    mg_status st = walk(&w, diag);
    if (st == MG_OK && stats->failed)
        st = mg_fail(diag, MG_E_CACHE, "could not remove %d of %d cache files in %s (first: %s)",
                     stats->failed, stats->failed + stats->removed, c->dir, op.first_failure);
    return st;
}
