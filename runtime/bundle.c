#include "bundle.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>
#include <sqlite3.h>

#include "textbuf.h"

const char *const mg_bundle_schema[] = {
    "CREATE TABLE manifest(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE specs(identity TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, "
    "yaml TEXT NOT NULL, checksum TEXT NOT NULL)",
    "CREATE TABLE kernels(id INTEGER PRIMARY KEY, spec TEXT NOT NULL, arch TEXT NOT NULL, "
    "seq INTEGER NOT NULL, template TEXT NOT NULL, point TEXT NOT NULL, launch TEXT NOT NULL, entry TEXT NOT NULL, "
    "cubin BLOB NOT NULL, checksum TEXT NOT NULL, UNIQUE(spec, arch, template, point))",
};
const int mg_bundle_schema_count = (int)(sizeof mg_bundle_schema / sizeof mg_bundle_schema[0]);

/* ---- checksums ---- */

static void hash_part(crypto_generichash_state *h, const void *p, size_t n)
{
    uint64_t len = n;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
    crypto_generichash_update(h, le, sizeof le);
    if (n) crypto_generichash_update(h, p, n);
}

static void hash_str(crypto_generichash_state *h, const char *s) { hash_part(h, s, strlen(s)); }

static void hash_done(crypto_generichash_state *h, char hex[65])
{
    unsigned char d[32];
    crypto_generichash_final(h, d, sizeof d);
    sodium_bin2hex(hex, 65, d, sizeof d);
}

static void hash_begin(crypto_generichash_state *h, const char *label)
{
    if (sodium_init() < 0) abort();   /* only fails when the CPU lacks what libsodium needs */
    crypto_generichash_init(h, NULL, 0, 32);
    hash_str(h, label);
}

void mg_bundle_kernel_checksum(const mg_bundle_kernel *k, char hex[65])
{
    crypto_generichash_state h;
    hash_begin(&h, "mobagen-bundle-kernel");
    hash_str(&h, k->spec);
    hash_str(&h, k->arch);
    char seq[16];
    snprintf(seq, sizeof seq, "%d", k->seq);
    hash_str(&h, seq);
    hash_str(&h, k->tpl);
    hash_str(&h, k->point);
    hash_str(&h, k->launch);
    hash_str(&h, k->entry);
    hash_part(&h, k->cubin, k->cubin_size);
    hash_done(&h, hex);
}

void mg_bundle_spec_checksum(const mg_bundle_spec *s, char hex[65])
{
    crypto_generichash_state h;
    hash_begin(&h, "mobagen-bundle-spec");
    hash_str(&h, s->identity);
    hash_str(&h, s->name);
    hash_str(&h, s->yaml);
    hash_done(&h, hex);
}

void mg_bundle_text_checksum(const char *label, const char *text, char hex[65])
{
    crypto_generichash_state h;
    hash_begin(&h, label);
    hash_str(&h, text);
    hash_done(&h, hex);
}

/* ---- arch choice ---- */

static int parse_arch(const char *a, int *major, int *minor, int *suffix_a)
{
    int num = 0, len = 0;
    if (strncmp(a, "sm_", 3)) return 0;
    for (a += 3; *a >= '0' && *a <= '9' && len < 4; a++, len++) num = num * 10 + (*a - '0');
    if (len < 2 || len > 3) return 0;
    *suffix_a = *a == 'a';
    if (*a && !(*suffix_a && !a[1])) return 0;
    *major = num / 10;
    *minor = num % 10;
    return 1;
}

int mg_arch_pick(const char *const *archs, int n, int major, int minor)
{
    int best = -1, best_minor = -1, best_a = 0;
    for (int i = 0; i < n; i++) {
        int M, m, a;
        if (!archs[i] || !parse_arch(archs[i], &M, &m, &a)) continue;
        if (M != major || m > minor || (a && m != minor)) continue;
        if (m > best_minor || (m == best_minor && a && !best_a)) {
            best = i;
            best_minor = m;
            best_a = a;
        }
    }
    return best;
}

void mg_arch_needed(int major, int minor, char *buf, size_t size)
{
    if (minor == 0)
        snprintf(buf, size, "sm_%d0a or sm_%d0", major, major);
    else
        snprintf(buf, size, "sm_%d%da, or sm_%dx with x <= %d", major, minor, major, minor);
}

/* ---- reading ---- */

typedef struct reader {
    sqlite3 *db;
    const char *name;
    mg_diag *diag;
} reader;

static mg_status damaged(reader *r, const char *what)
{
    return mg_fail(r->diag, MG_E_IO, "%s: damaged mobagen bundle: %s", r->name, what);
}

static mg_status sql_error(reader *r, const char *during)
{
    int code = sqlite3_errcode(r->db);
    if (code == SQLITE_NOTADB)
        return mg_fail(r->diag, MG_E_IO, "%s: not a mobagen bundle (not an SQLite database)", r->name);
    return mg_fail(r->diag, MG_E_IO, "%s: damaged mobagen bundle: %s: %s", r->name, during,
                   sqlite3_errmsg(r->db));
}

static mg_status pragma_int(reader *r, const char *sql, long long *out)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(r->db, sql, -1, &s, NULL) != SQLITE_OK) return sql_error(r, sql);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? MG_OK : sql_error(r, sql);
}

/* A column that must be text without NUL bytes, at most max bytes; copied into dst or strdup'd. */
static int text_col(sqlite3_stmt *s, int col, size_t max, char *dst, size_t dst_size, char **dup)
{
    if (sqlite3_column_type(s, col) != SQLITE_TEXT) return 0;
    const char *t = (const char *)sqlite3_column_text(s, col);
    size_t n = (size_t)sqlite3_column_bytes(s, col);
    if (!t || n > max || strlen(t) != n) return 0;
    if (dst) {
        if (n >= dst_size) return 0;
        memcpy(dst, t, n + 1);
    }
    if (dup && !(*dup = strdup(t))) return 0;
    return 1;
}

static mg_status check_schema(reader *r)
{
    sqlite3_stmt *s = NULL;
    const char *q = "SELECT type, name, sql FROM sqlite_schema ORDER BY name";
    if (sqlite3_prepare_v2(r->db, q, -1, &s, NULL) != SQLITE_OK) return sql_error(r, "reading the schema");
    int seen[8] = {0}, rc;
    mg_status st = MG_OK;
    while (st == MG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *type = (const char *)sqlite3_column_text(s, 0);
        const char *name = (const char *)sqlite3_column_text(s, 1);
        const char *sql = (const char *)sqlite3_column_text(s, 2);
        if (!type || !name) {
            st = damaged(r, "a schema row without type or name");
        } else if (!sql) {
            if (strcmp(type, "index") || strncmp(name, "sqlite_autoindex_", 17))
                st = damaged(r, "an unexpected object in the schema");
        } else {
            int match = -1;
            for (int i = 0; i < mg_bundle_schema_count; i++)
                if (!strcmp(sql, mg_bundle_schema[i])) match = i;
            if (match < 0 || seen[match]++)
                st = mg_fail(r->diag, MG_E_IO, "%s: not a mobagen bundle of format %d: unexpected "
                             "schema object '%.60s'", r->name, MG_BUNDLE_FORMAT, name);
        }
    }
    if (st == MG_OK && rc != SQLITE_DONE) st = sql_error(r, "reading the schema");
    sqlite3_finalize(s);
    for (int i = 0; i < mg_bundle_schema_count && st == MG_OK; i++)
        if (!seen[i]) st = damaged(r, "a table of the schema is missing");
    return st;
}

static mg_status read_manifest(reader *r, mg_bundle *b)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT key, value FROM manifest ORDER BY key", -1, &s, NULL) != SQLITE_OK)
        return sql_error(r, "reading the manifest");
    mg_buf text = {0};
    char format[64] = "", checksum[80] = "", key[64];
    int rc, rows = 0;
    mg_status st = MG_OK;
    while (st == MG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        char *value = NULL;
        if (++rows > 64 || !text_col(s, 0, sizeof key - 1, key, sizeof key, NULL) ||
            !text_col(s, 1, MG_BUNDLE_MAX_TEXT * 16, NULL, 0, &value)) {
            free(value);
            st = damaged(r, "a bad manifest row");
            break;
        }
        if (!strcmp(key, "checksum")) snprintf(checksum, sizeof checksum, "%s", value);
        else mg_buf_printf(&text, "%s=%s\n", key, value);
        if (!strcmp(key, "format")) snprintf(format, sizeof format, "%s", value);
        if (!strcmp(key, "mobagen")) snprintf(b->mobagen, sizeof b->mobagen, "%s", value);
        if (!strcmp(key, "nvrtc")) snprintf(b->nvrtc, sizeof b->nvrtc, "%s", value);
        if (!strcmp(key, "tuning")) {
            free(b->tuning);
            b->tuning = value;
            value = NULL;
        }
        free(value);
    }
    if (st == MG_OK && rc != SQLITE_DONE) st = sql_error(r, "reading the manifest");
    sqlite3_finalize(s);
    char want[65];
    if (st == MG_OK && text.oom) st = mg_fail(r->diag, MG_E_NOMEM, "out of memory");
    if (st == MG_OK) mg_bundle_text_checksum("mobagen-bundle-manifest", text.data ? text.data : "", want);
    mg_buf_free(&text);
    if (st != MG_OK) return st;
    if (strcmp(format, "mobagen-bundle"))
        return mg_fail(r->diag, MG_E_IO, "%s: not a mobagen bundle (manifest format '%s')", r->name, format);
    if (strcmp(checksum, want)) return damaged(r, "manifest checksum mismatch");
    if (strcmp(b->mobagen, MG_VERSION_TEXT))
        return mg_fail(r->diag, MG_E_UNSUPPORTED, "%s: bundle made by mobagen %s; this is mobagen %s, "
                       "whose kernels take other parameters: rebuild the bundle with this version",
                       r->name, b->mobagen[0] ? b->mobagen : "(unknown)", MG_VERSION_TEXT);
    if (!b->tuning && !(b->tuning = strdup(""))) return mg_fail(r->diag, MG_E_NOMEM, "out of memory");
    return MG_OK;
}

static mg_status read_specs(reader *r, mg_bundle *b)
{
    sqlite3_stmt *s = NULL;
    const char *q = "SELECT identity, name, yaml, checksum FROM specs ORDER BY identity";
    if (sqlite3_prepare_v2(r->db, q, -1, &s, NULL) != SQLITE_OK) return sql_error(r, "reading specs");
    int rc;
    mg_status st = MG_OK;
    while (st == MG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (b->n_specs == 4096) {
            st = damaged(r, "more than 4096 specs");
            break;
        }
        mg_bundle_spec *p = realloc(b->specs, (size_t)(b->n_specs + 1) * sizeof *p);
        if (!p) {
            st = mg_fail(r->diag, MG_E_NOMEM, "out of memory");
            break;
        }
        b->specs = p;
        mg_bundle_spec *sp = &b->specs[b->n_specs++];
        memset(sp, 0, sizeof *sp);
        char checksum[65], want[65];
        if (!text_col(s, 0, 64, sp->identity, sizeof sp->identity, NULL) ||
            !text_col(s, 1, MG_NAME_MAX, sp->name, sizeof sp->name, NULL) ||
            !text_col(s, 2, MG_BUNDLE_MAX_TEXT, NULL, 0, &sp->yaml) ||
            !text_col(s, 3, 64, checksum, sizeof checksum, NULL)) {
            st = damaged(r, "a bad specs row");
            break;
        }
        mg_bundle_spec_checksum(sp, want);
        if (strcmp(want, checksum)) {
            st = mg_fail(r->diag, MG_E_IO, "%s: damaged mobagen bundle: checksum mismatch in spec '%s'",
                         r->name, sp->name);
            break;
        }
    }
    if (st == MG_OK && rc != SQLITE_DONE) st = sql_error(r, "reading specs");
    sqlite3_finalize(s);
    return st;
}

static mg_status read_kernels(reader *r, mg_bundle *b)
{
    sqlite3_stmt *s = NULL;
    const char *q = "SELECT spec, arch, template, point, launch, entry, cubin, checksum, seq FROM kernels "
                    "ORDER BY id";
    if (sqlite3_prepare_v2(r->db, q, -1, &s, NULL) != SQLITE_OK) return sql_error(r, "reading kernels");
    int rc;
    mg_status st = MG_OK;
    while (st == MG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (b->n_kernels == MG_BUNDLE_MAX_ITEMS) {
            st = damaged(r, "too many kernels");
            break;
        }
        mg_bundle_kernel *p = realloc(b->kernels, (size_t)(b->n_kernels + 1) * sizeof *p);
        if (!p) {
            st = mg_fail(r->diag, MG_E_NOMEM, "out of memory");
            break;
        }
        b->kernels = p;
        mg_bundle_kernel *k = &b->kernels[b->n_kernels++];
        memset(k, 0, sizeof *k);
        char checksum[65], want[65];
        if (!text_col(s, 0, 64, k->spec, sizeof k->spec, NULL) ||
            !text_col(s, 1, 15, k->arch, sizeof k->arch, NULL) ||
            !text_col(s, 2, MG_NAME_MAX, k->tpl, sizeof k->tpl, NULL) ||
            !text_col(s, 3, 255, k->point, sizeof k->point, NULL) ||
            !text_col(s, 4, MG_BUNDLE_MAX_TEXT, NULL, 0, &k->launch) ||
            !text_col(s, 5, MG_BUNDLE_MAX_TEXT, NULL, 0, &k->entry) ||
            !text_col(s, 7, 64, checksum, sizeof checksum, NULL) ||
            sqlite3_column_type(s, 6) != SQLITE_BLOB || sqlite3_column_type(s, 8) != SQLITE_INTEGER ||
            sqlite3_column_int64(s, 8) < 0 || sqlite3_column_int64(s, 8) >= MG_BUNDLE_MAX_ITEMS) {
            st = damaged(r, "a bad kernels row");
            break;
        }
        int bytes = sqlite3_column_bytes(s, 6);
        const void *blob = sqlite3_column_blob(s, 6);
        if (bytes <= 0 || (size_t)bytes > MG_BUNDLE_MAX_CUBIN || !blob) {
            st = damaged(r, "a CUBIN of a size out of range");
            break;
        }
        if (!(k->cubin = malloc((size_t)bytes))) {
            st = mg_fail(r->diag, MG_E_NOMEM, "out of memory");
            break;
        }
        memcpy(k->cubin, blob, (size_t)bytes);
        k->cubin_size = (size_t)bytes;
        k->seq = sqlite3_column_int(s, 8);
        mg_bundle_kernel_checksum(k, want);
        if (strcmp(want, checksum))
            st = mg_fail(r->diag, MG_E_IO, "%s: damaged mobagen bundle: checksum mismatch in kernel "
                         "%s/%s/%s", r->name, k->tpl, k->arch, k->point);
    }
    if (st == MG_OK && rc != SQLITE_DONE) st = sql_error(r, "reading kernels");
    sqlite3_finalize(s);
    return st;
}

static mg_status read_bundle(reader *r, mg_bundle *b)
{
    sqlite3_db_config(r->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    sqlite3_db_config(r->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
    sqlite3_db_config(r->db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL);
    sqlite3_db_config(r->db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, NULL);
    sqlite3_limit(r->db, SQLITE_LIMIT_LENGTH, (int)MG_BUNDLE_MAX_CUBIN + 1024);
    sqlite3_limit(r->db, SQLITE_LIMIT_SQL_LENGTH, 1 << 16);
    sqlite3_limit(r->db, SQLITE_LIMIT_COLUMN, 64);
    long long app = 0, version = 0;
    mg_status st = pragma_int(r, "PRAGMA application_id", &app);
    if (st != MG_OK) return st;
    if (app != MG_BUNDLE_APPLICATION_ID)
        return mg_fail(r->diag, MG_E_IO, "%s: not a mobagen bundle (an SQLite database of another "
                       "application)", r->name);
    if ((st = pragma_int(r, "PRAGMA user_version", &version)) != MG_OK) return st;
    if (version != MG_BUNDLE_FORMAT)
        return mg_fail(r->diag, MG_E_UNSUPPORTED, "%s: bundle format %lld; this mobagen reads format %d",
                       r->name, version, MG_BUNDLE_FORMAT);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(r->db, "PRAGMA quick_check(1)", -1, &s, NULL) != SQLITE_OK)
        return sql_error(r, "checking the file");
    int rc = sqlite3_step(s);
    const char *res = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : NULL;
    if (rc != SQLITE_ROW) st = sql_error(r, "checking the file");
    else if (!res || strcmp(res, "ok")) st = mg_fail(r->diag, MG_E_IO, "%s: damaged mobagen bundle: "
                                                     "%.200s", r->name, res ? res : "(no result)");
    sqlite3_finalize(s);
    if (st == MG_OK) st = check_schema(r);
    if (st == MG_OK) st = read_manifest(r, b);
    if (st == MG_OK) st = read_specs(r, b);
    if (st == MG_OK) st = read_kernels(r, b);
    return st;
}

mg_status mg_bundle_open_memory(const void *data, size_t size, const char *name, mg_bundle **out,
                                mg_diag *diag)
{
    *out = NULL;
    if (size > MG_BUNDLE_MAX_BYTES)
        return mg_fail(diag, MG_E_IO, "%s: bundle of %zu bytes exceeds the %u MiB limit", name, size,
                       MG_BUNDLE_MAX_BYTES >> 20);
    if (size < 100 || memcmp(data, "SQLite format 3", 16))
        return mg_fail(diag, MG_E_IO, "%s: not a mobagen bundle (%s)", name,
                       size < 100 ? "too short: truncated?" : "no SQLite header");
    mg_bundle *b = calloc(1, sizeof *b);
    /* SQLite reads from its own copy so that the caller's bytes stay untouched and may go. */
    unsigned char *copy = sqlite3_malloc64(size);
    if (!b || !copy) {
        free(b);
        sqlite3_free(copy);
        return mg_fail(diag, MG_E_NOMEM, "out of memory");
    }
    memcpy(copy, data, size);
    snprintf(b->path, sizeof b->path, "%s", name);
    reader r = {.name = name, .diag = diag};
    mg_status st = MG_OK;
    if (sqlite3_open_v2(":memory:", &r.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_free(copy);
        st = mg_fail(diag, MG_E_NOMEM, "%s: cannot open an SQLite handle", name);
    } else if (sqlite3_deserialize(r.db, "main", copy, (sqlite3_int64)size, (sqlite3_int64)size,
                                   SQLITE_DESERIALIZE_READONLY | SQLITE_DESERIALIZE_FREEONCLOSE) != SQLITE_OK) {
        st = sql_error(&r, "opening");
    } else {
        st = read_bundle(&r, b);
    }
    sqlite3_close(r.db);
    if (st != MG_OK) {
        mg_bundle_close(b);
        return st;
    }
    *out = b;
    return MG_OK;
}

mg_status mg_bundle_open(const char *path, mg_bundle **out, mg_diag *diag)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return mg_fail(diag, MG_E_IO, "cannot open bundle %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return mg_fail(diag, MG_E_IO, "bundle %s is not a regular file", path);
    if ((unsigned long long)sb.st_size > MG_BUNDLE_MAX_BYTES)
        return mg_fail(diag, MG_E_IO, "%s: bundle of %lld bytes exceeds the %u MiB limit", path,
                       (long long)sb.st_size, MG_BUNDLE_MAX_BYTES >> 20);
    size_t len;
    char *data = mg_read_file(path, &len);
    if (!data) return mg_fail(diag, MG_E_IO, "cannot read bundle %s: %s", path, strerror(errno));
    mg_status st = mg_bundle_open_memory(data, len, path, out, diag);
    free(data);
    return st;
}

void mg_bundle_close(mg_bundle *b)
{
    if (!b) return;
    for (int i = 0; i < b->n_specs; i++) free(b->specs[i].yaml);
    for (int i = 0; i < b->n_kernels; i++) {
        free(b->kernels[i].launch);
        free(b->kernels[i].entry);
        free(b->kernels[i].cubin);
    }
    free(b->specs);
    free(b->kernels);
    free(b->tuning);
    free(b);
}

const mg_bundle_spec *mg_bundle_find_spec(const mg_bundle *b, const char *identity)
{
    for (int i = 0; i < b->n_specs; i++)
        if (!strcmp(b->specs[i].identity, identity)) return &b->specs[i];
    return NULL;
}

void mg_bundle_archs(const mg_bundle *b, const char *identity, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = 0;
    /* Kernels are stored sorted by (spec, arch, ...): distinct archs come in order. */
    const char *last = "";
    for (int i = 0; i < b->n_kernels; i++) {
        const mg_bundle_kernel *k = &b->kernels[i];
        if (strcmp(k->spec, identity) || !strcmp(k->arch, last)) continue;
        len += (size_t)snprintf(buf + len, len < size ? size - len : 0, "%s%s", len ? ", " : "", k->arch);
        last = k->arch;
        if (len >= size) break;
    }
}
