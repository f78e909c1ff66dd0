/* Listing and cleaning the cache: a walk of its layout that visits only names of its own forms,
 * follows no link, and says what it leaves alone. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache_internal.h"

#define STALE_TEMP_SECONDS 3600   /* a temporary file this old has no live writer */

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
    /* Called for each name of the cache's own forms (entry and temp may be NULL). */
    void (*entry)(struct walker *w, int fan_fd, const char *fan, const char *name);
    void (*temp)(struct walker *w, int fan_fd, const char *fan, const char *name, long pid);
    void (*bad_fanout)(struct walker *w, const char *fan, const char *why);
    void (*unreadable)(struct walker *w, const char *fan, int err);   /* a fan-out it cannot read */
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
        if (!mg_cache_is_fanout_name(fan)) {
            skipped(w, NULL, fan, "not a cache directory");
            continue;
        }
        int fan_fd = mg_cache_open_fanout(c, fan), err = errno;
        if (fan_fd < 0) {
            struct stat st;
            if (err == ENOENT) continue;
            if ((err == ENOTDIR || err == ELOOP) &&
                fstatat(c->layout_fd, fan, &st, AT_SYMLINK_NOFOLLOW) == 0)
                w->bad_fanout(w, fan, mg_cache_file_kind(st.st_mode));
            else
                w->unreadable(w, fan, err);
            continue;
        }
        name_list files;
        if (read_names(fan_fd, &files) != 0) {
            w->unreadable(w, fan, errno);
            close(fan_fd);
            continue;
        }
        for (int j = 0; j < files.n; j++) {
            const char *name = files.names[j];
            long pid;
            if (mg_cache_is_entry_name(fan, name)) {
                if (w->entry) w->entry(w, fan_fd, fan, name);
            } else if (mg_cache_is_temp_name(fan, name, &pid)) {
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
    int r = mg_cache_read_entry_file(fan_fd, name, &data, &len, &st, why, sizeof why);
    if (r == READ_ABSENT) return;   /* removed since the directory was read */
    mg_cache_entry e = {0};
    int ok = 0;
    if (r == READ_OK) {
        ok = mg_cache_decode_entry(&key, data, len, &e);
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

static void list_unreadable(walker *w, const char *fan, int err)
{
    skipped(w, NULL, fan, strerror(err));
}

mg_status mg_cache_list(mg_cache *c, void (*fn)(const mg_cache_item *, void *),
                        mg_cache_skip_fn skip, void *ctx, mg_diag *diag)
{
    list_op op = {fn};
    walker w = {.c = c, .skip = skip, .ctx = ctx, .entry = list_entry,
                .bad_fanout = list_bad_fanout, .unreadable = list_unreadable, .op = &op};
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
    count_removal(w, mg_cache_remove_own_name(fan_fd, name, NULL), fan, name);
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
    count_removal(w, mg_cache_remove_own_name(fan_fd, name, &st), fan, name);
}

static void clean_unreadable(walker *w, const char *fan, int err)
{
    errno = err;
    count_removal(w, 0, fan, NULL);
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
                .temp = clean_temp, .bad_fanout = clean_bad_fanout,
                .unreadable = clean_unreadable, .op = &op};
    mg_status st = walk(&w, diag);
    if (st == MG_OK && stats->failed)
        st = mg_fail(diag, MG_E_CACHE, "could not remove %d of %d cache files in %s (first: %s)",
                     stats->failed, stats->failed + stats->removed, c->dir, op.first_failure);
    return st;
}
