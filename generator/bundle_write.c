#include "bundle_write.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

typedef struct writer {
    sqlite3 *db;
    const char *path;
    mg_diag *diag;
} writer;

static mg_status sql_fail(writer *w, const char *during)
{
    return mg_fail(w->diag, MG_E_IO, "cannot write bundle %s: %s: %s", w->path, during,
                   w->db ? sqlite3_errmsg(w->db) : "out of memory");
}

static mg_status exec(writer *w, const char *sql)
{
    return sqlite3_exec(w->db, sql, NULL, NULL, NULL) == SQLITE_OK ? MG_OK : sql_fail(w, sql);
}

static int by_string(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The lines of text sorted, each ending in '\n' (malloc'd): launch values and kernel names
 * come from Lua tables, whose order differs from run to run. */
static char *sorted_lines(const char *text)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1), *out = malloc(len + 2);
    char **lines = malloc((len / 2 + 2) * sizeof *lines);
    int n = 0;
    if (!copy || !out || !lines) {
        free(copy);
        free(out);
        free(lines);
        return NULL;
    }
    memcpy(copy, text, len + 1);
    for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        lines[n++] = l;
    qsort(lines, (size_t)n, sizeof *lines, by_string);
    size_t pos = 0;
    for (int i = 0; i < n; i++) pos += (size_t)sprintf(out + pos, "%s\n", lines[i]);
    out[pos] = 0;
    free(lines);
    free(copy);
    return out;
}

static int by_identity(const void *a, const void *b)
{
    return strcmp(((const mg_bundle_spec *)a)->identity, ((const mg_bundle_spec *)b)->identity);
}

static int by_kernel_key(const void *pa, const void *pb)
{
    const mg_bundle_kernel *a = pa, *b = pb;
    int c = strcmp(a->spec, b->spec);
    if (!c) c = strcmp(a->arch, b->arch);
    if (!c) c = (a->seq > b->seq) - (a->seq < b->seq);
    if (!c) c = strcmp(a->tpl, b->tpl);
    if (!c) c = strcmp(a->point, b->point);
    return c;
}

/* Binds text/blob values by position, steps once and resets. */
static mg_status insert(writer *w, sqlite3_stmt *s, const char *const *texts, int n_texts,
                        const void *blob, size_t blob_size, int blob_col)
{
    int rc = SQLITE_OK, total = n_texts + (blob_col ? 1 : 0), t = 0;
    for (int col = 1; col <= total && rc == SQLITE_OK; col++)
        rc = col == blob_col ? sqlite3_bind_blob64(s, col, blob, blob_size, SQLITE_STATIC)
                             : sqlite3_bind_text(s, col, texts[t++], -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_OK ? MG_OK : sql_fail(w, "inserting a row");
}

static mg_status write_manifest(writer *w, const char *nvrtc_version, const char *tuning)
{
    /* Key order, so that the checksum covers "key=value\n" lines as the reader re-reads them. */
    const char *rows[][2] = {
        {"format", "mobagen-bundle"},
        {"format_version", "1"},
        {"mobagen", MG_VERSION_TEXT},
        {"nvrtc", nvrtc_version},
        {"tuning", tuning ? tuning : ""},
    };
    size_t total = 1;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) total += strlen(rows[i][0]) + strlen(rows[i][1]) + 2;
    char *text = malloc(total);
    if (!text) return mg_fail(w->diag, MG_E_NOMEM, "out of memory");
    size_t len = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        len += (size_t)snprintf(text + len, total - len, "%s=%s\n", rows[i][0], rows[i][1]);
    char checksum[65];
    mg_bundle_text_checksum("mobagen-bundle-manifest", text, checksum);
    free(text);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(w->db, "INSERT INTO manifest VALUES (?, ?)", -1, &s, NULL) != SQLITE_OK)
        return sql_fail(w, "preparing the manifest");
    mg_status st = MG_OK;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0] && st == MG_OK; i++)
        st = insert(w, s, rows[i], 2, NULL, 0, 0);
    const char *sum_row[2] = {"checksum", checksum};
    if (st == MG_OK) st = insert(w, s, sum_row, 2, NULL, 0, 0);
    sqlite3_finalize(s);
    return st;
}

static mg_status write_contents(writer *w, const char *nvrtc_version, mg_bundle_spec *specs,
                                int n_specs, mg_bundle_kernel *kernels, int n_kernels,
                                const char *tuning)
{
    /* Fixed page size, no journal, one transaction: nothing in the file depends on time or on
     * the order things were handed in. */
    char pragmas[200];
    snprintf(pragmas, sizeof pragmas, "PRAGMA page_size=4096; PRAGMA journal_mode=OFF; "
             "PRAGMA application_id=%d; PRAGMA user_version=%d;", MG_BUNDLE_APPLICATION_ID,
             MG_BUNDLE_FORMAT);
    mg_status st = exec(w, pragmas);
    if (st == MG_OK) st = exec(w, "BEGIN");
    for (int i = 0; i < mg_bundle_schema_count && st == MG_OK; i++) st = exec(w, mg_bundle_schema[i]);
    if (st == MG_OK) st = write_manifest(w, nvrtc_version, tuning);
    qsort(specs, (size_t)n_specs, sizeof *specs, by_identity);
    qsort(kernels, (size_t)n_kernels, sizeof *kernels, by_kernel_key);
    sqlite3_stmt *s = NULL;
    if (st == MG_OK && sqlite3_prepare_v2(w->db, "INSERT INTO specs VALUES (?, ?, ?, ?)", -1, &s, NULL))
        st = sql_fail(w, "preparing specs");
    for (int i = 0; i < n_specs && st == MG_OK; i++) {
        char sum[65];
        mg_bundle_spec_checksum(&specs[i], sum);
        const char *row[] = {specs[i].identity, specs[i].name, specs[i].yaml, sum};
        st = insert(w, s, row, 4, NULL, 0, 0);
    }
    sqlite3_finalize(s);
    s = NULL;
    if (st == MG_OK && sqlite3_prepare_v2(w->db, "INSERT INTO kernels(spec, arch, seq, template, "
                                          "point, launch, entry, cubin, checksum) VALUES "
                                          "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                          -1, &s, NULL))
        st = sql_fail(w, "preparing kernels");
    for (int i = 0; i < n_kernels && st == MG_OK; i++) {
        const mg_bundle_kernel *k = &kernels[i];
        if (i && !by_kernel_key(&kernels[i - 1], k)) {
            st = mg_fail(w->diag, MG_E_ARG, "bundle %s: kernel %s/%s/%s given twice", w->path, k->tpl,
                         k->arch, k->point);
            break;
        }
        char sum[65], seq[16];
        mg_bundle_kernel_checksum(k, sum);
        snprintf(seq, sizeof seq, "%d", k->seq);
        const char *row[] = {k->spec, k->arch, seq, k->tpl, k->point, k->launch, k->entry, sum};
        st = insert(w, s, row, 8, k->cubin, k->cubin_size, 8);
    }
    sqlite3_finalize(s);
    if (st == MG_OK) st = exec(w, "COMMIT");
    return st;
}

mg_status mg_bundle_write(const char *path, const char *nvrtc_version, const mg_bundle_spec *specs_in,
                          int n_specs, const mg_bundle_kernel *kernels_in, int n_kernels,
                          const char *tuning, mg_diag *diag)
{
    if (n_kernels > MG_BUNDLE_MAX_ITEMS)
        return mg_fail(diag, MG_E_ARG, "a bundle holds at most %d kernels", MG_BUNDLE_MAX_ITEMS);
    /* Sorted copies (shallow): the caller's arrays stay as they were. */
    mg_bundle_spec *specs = malloc((size_t)(n_specs ? n_specs : 1) * sizeof *specs);
    mg_bundle_kernel *kernels = malloc((size_t)(n_kernels ? n_kernels : 1) * sizeof *kernels);
    if (!specs || !kernels) {
        free(specs);
        free(kernels);
        return mg_fail(diag, MG_E_NOMEM, "out of memory");
    }
    if (n_specs) memcpy(specs, specs_in, (size_t)n_specs * sizeof *specs);
    int ok = 1;
    for (int i = 0; i < n_kernels; i++) {
        kernels[i] = kernels_in[i];
        kernels[i].launch = sorted_lines(kernels_in[i].launch);
        kernels[i].entry = sorted_lines(kernels_in[i].entry);
        ok &= kernels[i].launch && kernels[i].entry;
    }
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);
    writer w = {.path = path, .diag = diag};
    mg_status st = ok ? MG_OK : mg_fail(diag, MG_E_NOMEM, "out of memory");
    if (st == MG_OK && sqlite3_open_v2(tmp, &w.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK)
        st = sql_fail(&w, "creating the file");
    if (st == MG_OK) st = write_contents(&w, nvrtc_version, specs, n_specs, kernels, n_kernels, tuning);
    if (w.db && sqlite3_close(w.db) != SQLITE_OK && st == MG_OK) st = sql_fail(&w, "closing");
    free(specs);
    for (int i = 0; i < n_kernels; i++) {
        free(kernels[i].launch);
        free(kernels[i].entry);
    }
    free(kernels);
    if (st == MG_OK) {
        int fd = open(tmp, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) st = mg_fail(diag, MG_E_IO, "cannot sync %s: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (st == MG_OK && rename(tmp, path) != 0)
        st = mg_fail(diag, MG_E_IO, "cannot write bundle %s: %s", path, strerror(errno));
    if (st != MG_OK) unlink(tmp);
    return st;
}
