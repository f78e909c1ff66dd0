/* The cache's on-disk forms: entry files (header, digest, bounded reading that follows no link
 * and never blocks) and the names of entries, temporary files and fan-out directories. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "cache_internal.h"

/* Each part is length-prefixed so that no two different inputs hash the same bytes. */
void mg_cache_hash_part(crypto_generichash_state *h, const char *label, const void *p, size_t n)
{
    uint64_t len = n;
    crypto_generichash_update(h, (const unsigned char *)label, strlen(label) + 1);
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof len);
    if (n) crypto_generichash_update(h, p, n);
}

void mg_cache_entry_digest(const mg_cache_key *key, const char *meta, size_t meta_len,
                           const char *log, size_t log_len, const void *cubin, size_t cubin_len,
                           unsigned char out[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    mg_cache_hash_part(&h, "key", key->hex, KEY_HEX);
    mg_cache_hash_part(&h, "meta", meta, meta_len);
    mg_cache_hash_part(&h, "log", log, log_len);
    mg_cache_hash_part(&h, "cubin", cubin, cubin_len);
    crypto_generichash_final(&h, out, 32);
}

/* Parses and verifies an entry file's bytes; 1 if sound (and fills e when non-NULL), 0 if
 * damaged, -1 out of memory. */
int mg_cache_decode_entry(const mg_cache_key *key, const char *data, size_t len, mg_cache_entry *e)
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
    mg_cache_entry_digest(key, meta, h.meta_len, log, h.log_len, cubin, h.cubin_len, digest);
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

const char *mg_cache_file_kind(mode_t mode)
{
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    return "not a regular file";
}


/* Reads name in dir_fd if it is a regular file of at most MG_CACHE_ENTRY_MAX bytes: never
 * follows a link, never blocks on a FIFO, never reads a device. st is filled when the name
 * could be examined; why says what is wrong otherwise. */
int mg_cache_read_entry_file(int dir_fd, const char *name, char **data, size_t *len,
                             struct stat *st, char *why, size_t why_size)
{
    *data = NULL;
    memset(st, 0, sizeof *st);
    int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT) return READ_ABSENT;
        if (fstatat(dir_fd, name, st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st->st_mode)) {
            snprintf(why, why_size, "%s", mg_cache_file_kind(st->st_mode));
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
        snprintf(why, why_size, "%s", mg_cache_file_kind(st->st_mode));
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

int mg_cache_is_fanout_name(const char *name) { return strlen(name) == 2 && is_lower_hex(name, 2); }

int mg_cache_is_entry_name(const char *fan, const char *name)
{
    return strlen(name) == KEY_HEX + strlen(ENTRY_SUFFIX) && is_lower_hex(name, KEY_HEX) &&
           !strcmp(name + KEY_HEX, ENTRY_SUFFIX) && !strncmp(name, fan, 2);
}

/* ".tmp.KEY.PID.RANDOM": *pid receives the writer's process id. */
int mg_cache_is_temp_name(const char *fan, const char *name, long *pid)
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

void mg_cache_entry_name(const mg_cache_key *key, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s", key->hex, ENTRY_SUFFIX);
}

void mg_cache_temp_name(const mg_cache_key *key, char *buf, size_t size)
{
    unsigned char rnd[8];
    char rnd_hex[17];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(rnd_hex, sizeof rnd_hex, rnd, sizeof rnd);
    snprintf(buf, size, "%s%s.%ld.%s", TEMP_PREFIX, key->hex, (long)getpid(), rnd_hex);
}

/* Removes what sits under one of the cache's own names, unless it was replaced since st was
 * taken (a writer may have published a good entry meanwhile). 1 removed, 0 not, errno set. */
int mg_cache_remove_own_name(int dir_fd, const char *name, const struct stat *seen)
{
    struct stat now;
    if (fstatat(dir_fd, name, &now, AT_SYMLINK_NOFOLLOW) != 0) return 0;
    if (seen && seen->st_ino && (now.st_ino != seen->st_ino || now.st_dev != seen->st_dev)) {
        errno = EEXIST;
        return 0;
    }
    return unlinkat(dir_fd, name, S_ISDIR(now.st_mode) ? AT_REMOVEDIR : 0) == 0;
}

