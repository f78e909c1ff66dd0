#include "tunedb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "textbuf.h"

#define DB_HEADER "mobagen-tuning-db 1"
#define DB_HEADER_PREFIX "mobagen-tuning-db "

mg_status mg_tunedb_default_path(char *buf, size_t size, mg_diag *diag)
{
    const char *env = getenv("MOBAGEN_TUNING_DB");
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(buf, size, "%s", env);
    else if (xdg && *xdg)
        snprintf(buf, size, "%s/mobagen/tuning.db", xdg);
    else if (home && *home)
        snprintf(buf, size, "%s/.local/share/mobagen/tuning.db", home);
    else
        return mg_fail(diag, MG_E_IO, "no tuning database path: set MOBAGEN_TUNING_DB "
                       "(XDG_DATA_HOME and HOME are unset)");
    return MG_OK;
}

void mg_tunedb_free(mg_tunedb *db)
{
    free(db->recs);
    memset(db, 0, sizeof *db);
}

/* Values are written with every byte outside '!'..'~' and '%' as %XX, so that a record is one
 * line of space-separated key=value words and GPU names with spaces survive. */
static void escape(mg_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || c == '%')
            mg_buf_printf(b, "%%%02X", c);
        else
            mg_buf_putc(b, (char)c);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decodes in place; 0 on a malformed escape or a decoded NUL. */
static int unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);
        if (lo < 0 || (hi == 0 && lo == 0)) return 0;
        *w++ = (char)(hi * 16 + lo);
        r += 2;
    }
    *w = 0;
    return 1;
}

void mg_tune_record_format(const mg_tune_record *r, char *buf, size_t size)
{
    mg_buf b = {0};
    const mg_fingerprint *f = &r->fp;
    mg_buf_puts(&b, "tuned gpu=");
    escape(&b, f->gpu);
    mg_buf_printf(&b, " cc=%d.%d sms=%d mem_mib=%lld driver=%d nvrtc=", f->cc_major, f->cc_minor,
                  f->sm_count, f->mem_mib, f->driver);
    escape(&b, f->nvrtc);
    mg_buf_puts(&b, " mobagen=");
    escape(&b, f->mobagen);
    mg_buf_printf(&b, " spec=%s seqlen=%d bh=%d gqa=%d", r->bucket.spec, r->bucket.seqlen,
                  r->bucket.bh, r->bucket.gqa);
    for (int i = 0; i < r->n_stages; i++) {
        mg_buf_printf(&b, " win.%s=", r->tpl[i]);
        escape(&b, r->point[i]);
    }
    for (int i = 0; i < r->n_stages; i++)
        if (r->us[i] >= 0) mg_buf_printf(&b, " us.%s=%.3f", r->tpl[i], r->us[i]);
    if (r->spec_name[0]) {
        mg_buf_puts(&b, " spec_name=");
        escape(&b, r->spec_name);
    }
    snprintf(buf, size, "%s", b.oom || !b.data ? "" : b.data);
    mg_buf_free(&b);
}

static int parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int is_name(const char *s)
{
    if (!*s || strlen(s) >= MG_NAME_MAX) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

static int stage_of(mg_tune_record *r, const char *tpl)
{
    for (int i = 0; i < r->n_stages; i++)
        if (!strcmp(r->tpl[i], tpl)) return i;
    if (r->n_stages == MG_TUNE_MAX_STAGES) return -1;
    snprintf(r->tpl[r->n_stages], MG_NAME_MAX, "%s", tpl);
    r->us[r->n_stages] = -1;
    r->point[r->n_stages][0] = 0;
    return r->n_stages++;
}

/* One "tuned ..." line (modified in place) into *r; NULL, or what is wrong with it. */
static const char *parse_record(char *line, mg_tune_record *r, char *why, size_t why_size)
{
    memset(r, 0, sizeof *r);
    enum { GPU = 1, CC = 2, SMS = 4, MEM = 8, DRV = 16, NVRTC = 32, MOBA = 64, SPEC = 128,
           SEQ = 256, BH = 512, GQA = 1024, ALL = 2047 };
    unsigned seen = 0;
    char *save = NULL;
    strtok_r(line, " ", &save);   /* "tuned" */
    for (char *w = strtok_r(NULL, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(w, '=');
        if (!eq) return "a word without '='";
        *eq = 0;
        char *key = w, *val = eq + 1;
        if (!unescape(val)) return "a malformed %XX escape";
        long long v;
        unsigned bit = 0;
        int ok = 1;
        if (!strcmp(key, "gpu")) {
            bit = GPU;
            ok = strlen(val) < sizeof r->fp.gpu && *val;
            if (ok) strcpy(r->fp.gpu, val);
        } else if (!strcmp(key, "cc")) {
            bit = CC;
            char tail;
            ok = sscanf(val, "%2d.%2d%c", &r->fp.cc_major, &r->fp.cc_minor, &tail) == 2 &&
                 r->fp.cc_major > 0 && r->fp.cc_minor >= 0;
        } else if (!strcmp(key, "sms")) {
            bit = SMS;
            ok = parse_int(val, 1, 100000, &v);
            r->fp.sm_count = (int)v;
        } else if (!strcmp(key, "mem_mib")) {
            bit = MEM;
            ok = parse_int(val, 0, 1LL << 40, &v);
            r->fp.mem_mib = v;
        } else if (!strcmp(key, "driver")) {
            bit = DRV;
            ok = parse_int(val, 0, 1000000, &v);
            r->fp.driver = (int)v;
        } else if (!strcmp(key, "nvrtc") || !strcmp(key, "mobagen")) {
            bit = key[0] == 'n' ? NVRTC : MOBA;
            char *dst = key[0] == 'n' ? r->fp.nvrtc : r->fp.mobagen;
            ok = *val && strlen(val) < sizeof r->fp.nvrtc;
            if (ok) strcpy(dst, val);
        } else if (!strcmp(key, "spec")) {
            bit = SPEC;
            ok = strlen(val) == 64 && strspn(val, "0123456789abcdef") == 64;
            if (ok) strcpy(r->bucket.spec, val);
        } else if (!strcmp(key, "seqlen") || !strcmp(key, "bh") || !strcmp(key, "gqa")) {
            bit = key[0] == 's' ? SEQ : key[0] == 'b' ? BH : GQA;
            ok = parse_int(val, 1, 1 << 30, &v);
            *(key[0] == 's' ? &r->bucket.seqlen : key[0] == 'b' ? &r->bucket.bh : &r->bucket.gqa) = (int)v;
        } else if (!strcmp(key, "spec_name")) {
            ok = strlen(val) < sizeof r->spec_name;
            if (ok) strcpy(r->spec_name, val);
        } else if (!strncmp(key, "win.", 4) || !strncmp(key, "us.", 3)) {
            int win = key[0] == 'w';
            const char *tpl = key + (win ? 4 : 3);
            if (!is_name(tpl)) return "a template name that is not [a-z0-9_]+";
            int i = stage_of(r, tpl);
            if (i < 0) return "more templates than a record can hold";
            if (win) {
                ok = *val && strlen(val) < MG_POINT_MAX && !r->point[i][0];
                if (ok) strcpy(r->point[i], val);
            } else {
                char *end;
                double d = strtod(val, &end);
                ok = end != val && !*end && d >= 0 && d < 1e12 && r->us[i] < 0;
                r->us[i] = d;
            }
        }   /* other keys: written by a newer mobagen of the same format; ignored */
        if (!ok) {
            snprintf(why, why_size, "bad or repeated value for '%.40s'", key);
            return why;
        }
        if (seen & bit) {
            snprintf(why, why_size, "'%.40s' given twice", key);
            return why;
        }
        seen |= bit;
    }
    if ((seen & ALL) != ALL) return "a field is missing (gpu cc sms mem_mib driver nvrtc mobagen "
                                    "spec seqlen bh gqa are required)";
    for (int i = 0; i < r->n_stages; i++)
        if (!r->point[i][0]) return "a us.TEMPLATE time without its win.TEMPLATE";
    if (r->n_stages == 0) return "no win.TEMPLATE entry";
    return NULL;
}

static void warn(mg_tunedb *db, int print, const char *name, int line, const char *what)
{
    char msg[sizeof db->first_warning];
    snprintf(msg, sizeof msg, "%s:%d: %s; line ignored", name, line, what);
    if (db->warnings++ == 0) snprintf(db->first_warning, sizeof db->first_warning, "%s", msg);
    if (print && db->warnings <= 10) fprintf(stderr, "mobagen: warning: %s\n", msg);
    if (print && db->warnings == 11) fprintf(stderr, "mobagen: warning: %s: more bad lines\n", name);
}

static int same_key(const mg_tune_record *a, const mg_tune_record *b)
{
    return mg_fingerprint_equal(&a->fp, &b->fp) && mg_bucket_equal(&a->bucket, &b->bucket);
}

mg_status mg_tunedb_put(mg_tunedb *db, const mg_tune_record *r, mg_diag *diag)
{
    for (int i = 0; i < db->n; i++)
        if (same_key(&db->recs[i], r)) {
            db->recs[i] = *r;
            return MG_OK;
        }
    if (db->n == MG_TUNEDB_MAX_RECORDS)
        return mg_fail(diag, MG_E_ARG, "the tuning database holds at most %d records",
                       MG_TUNEDB_MAX_RECORDS);
    if (db->n == db->cap) {
        int cap = db->cap ? db->cap * 2 : 16;
        mg_tune_record *p = realloc(db->recs, (size_t)cap * sizeof *p);
        if (!p) return mg_fail(diag, MG_E_NOMEM, "out of memory");
        db->recs = p;
        db->cap = cap;
    }
    db->recs[db->n++] = *r;
    return MG_OK;
}

mg_status mg_tunedb_parse(mg_tunedb *db, const char *text, size_t len, const char *name,
                          int print_warnings, mg_diag *diag)
{
    if (len > MG_TUNEDB_MAX_BYTES) {
        warn(db, print_warnings, name, 0, "file larger than 16 MiB");
        return MG_OK;
    }
    int lineno = 0, saw_header = 0;
    char line[MG_TUNEDB_MAX_LINE + 1];
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        const char *start = text + pos;
        pos += n + (nl != NULL);
        lineno++;
        if (n > MG_TUNEDB_MAX_LINE) {
            warn(db, print_warnings, name, lineno, "line longer than 4096 bytes");
            continue;
        }
        memcpy(line, start, n);
        line[n] = 0;
        if (n && line[n - 1] == '\r') line[--n] = 0;
        if (memchr(line, 0, n)) {
            warn(db, print_warnings, name, lineno, "a NUL byte");
            continue;
        }
        if (n == 0 || line[0] == '#') continue;
        if (!saw_header) {
            if (!strncmp(line, DB_HEADER_PREFIX, strlen(DB_HEADER_PREFIX)) && strcmp(line, DB_HEADER))
                return mg_fail(diag, MG_E_UNSUPPORTED, "%s:%d: '%s' is another format version than "
                               "this mobagen's '%s'", name, lineno, line, DB_HEADER);
            if (strcmp(line, DB_HEADER)) {
                warn(db, print_warnings, name, lineno, "not a mobagen tuning database (the first "
                     "line must be '" DB_HEADER "'); whole file");
                return MG_OK;
            }
            saw_header = 1;
            continue;
        }
        if (strncmp(line, "tuned ", 6)) {
            warn(db, print_warnings, name, lineno, "a line that is neither '# comment' nor 'tuned ...'");
            continue;
        }
        mg_tune_record r;
        char why_buf[160];
        const char *why = parse_record(line, &r, why_buf, sizeof why_buf);
        if (why) {
            warn(db, print_warnings, name, lineno, why);
            continue;
        }
        mg_status st = mg_tunedb_put(db, &r, diag);
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

mg_status mg_tunedb_load(mg_tunedb *db, const char *path, int print_warnings, mg_diag *diag)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT) return MG_OK;
        return mg_fail(diag, MG_E_IO, "cannot read tuning database %s: %s", path, strerror(errno));
    }
    if (!S_ISREG(sb.st_mode))
        return mg_fail(diag, MG_E_IO, "tuning database %s is not a regular file", path);
    if (sb.st_size > (off_t)MG_TUNEDB_MAX_BYTES) {
        warn(db, print_warnings, path, 0, "file larger than 16 MiB");
        return MG_OK;
    }
    size_t len;
    char *text = mg_read_file(path, &len);
    if (!text) return mg_fail(diag, MG_E_IO, "cannot read tuning database %s: %s", path, strerror(errno));
    mg_status st = mg_tunedb_parse(db, text, len, path, print_warnings, diag);
    free(text);
    return st;
}

const mg_tune_record *mg_tunedb_find(const mg_tunedb *db, const mg_fingerprint *fp,
                                     const mg_bucket *bucket)
{
    for (int i = 0; i < db->n; i++)
        if (mg_fingerprint_equal(&db->recs[i].fp, fp) && mg_bucket_equal(&db->recs[i].bucket, bucket))
            return &db->recs[i];
    return NULL;
}

const char *mg_tune_record_point(const mg_tune_record *r, const char *template_name)
{
    for (int i = 0; i < r->n_stages; i++)
        if (!strcmp(r->tpl[i], template_name)) return r->point[i];
    return NULL;
}

static int by_line(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

char *mg_tunedb_format(const mg_tunedb *db)
{
    mg_buf out = {0};
    char **lines = calloc((size_t)(db->n ? db->n : 1), sizeof *lines);
    int ok = lines != NULL;
    for (int i = 0; ok && i < db->n; i++) {
        char buf[MG_TUNEDB_MAX_LINE + 1];
        mg_tune_record_format(&db->recs[i], buf, sizeof buf);
        ok = (lines[i] = strdup(buf)) != NULL;
    }
    if (ok) {
        qsort(lines, (size_t)db->n, sizeof *lines, by_line);
        mg_buf_puts(&out, DB_HEADER "\n# mobagen tuning records, one per line: docs/tuning.md. "
                    "Written by 'mobagen tune'; edits are kept.\n");
        for (int i = 0; i < db->n; i++) {
            mg_buf_puts(&out, lines[i]);
            mg_buf_putc(&out, '\n');
        }
    }
    for (int i = 0; lines && i < db->n; i++) free(lines[i]);
    free(lines);
    if (!ok || out.oom) {
        mg_buf_free(&out);
        return NULL;
    }
    return mg_buf_take(&out);
}

static mg_status write_replace(const char *path, const char *text, mg_diag *diag)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return mg_fail(diag, MG_E_IO, "cannot write %s: %s", tmp, strerror(errno));
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    int bad = done != len || fsync(fd) != 0;
    int err = errno;
    bad |= close(fd) != 0;
    if (!bad && rename(tmp, path) == 0) return MG_OK;
    err = errno ? errno : err;
    unlink(tmp);
    return mg_fail(diag, MG_E_IO, "cannot write tuning database %s: %s", path, strerror(err));
}

mg_status mg_tunedb_save(const char *path, const mg_tune_record *recs, int n, mg_diag *diag)
{
    char dir[4096], lock_path[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mg_mkdir_p(dir) != 0)
            return mg_fail(diag, MG_E_IO, "cannot create directory %s for the tuning database: %s",
                           dir, strerror(errno));
    }
    snprintf(lock_path, sizeof lock_path, "%s.lock", path);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0) return mg_fail(diag, MG_E_IO, "cannot open lock %s: %s", lock_path, strerror(errno));
    while (flock(lock, LOCK_EX) != 0)
        if (errno != EINTR) {
            int err = errno;
            close(lock);
            return mg_fail(diag, MG_E_IO, "cannot lock %s: %s", lock_path, strerror(err));
        }
    /* Under the lock: what is on disk now includes every other writer's records. */
    mg_tunedb db = {0};
    mg_status st = mg_tunedb_load(&db, path, 1, diag);
    for (int i = 0; i < n && st == MG_OK; i++) st = mg_tunedb_put(&db, &recs[i], diag);
    char *text = NULL;
    if (st == MG_OK && !(text = mg_tunedb_format(&db))) st = mg_fail(diag, MG_E_NOMEM, "out of memory");
    if (st == MG_OK) st = write_replace(path, text, diag);
    free(text);
    mg_tunedb_free(&db);
    close(lock);   /* releases the lock */
    return st;
}
