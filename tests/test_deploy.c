/* Deployment without a GPU: the tuning database (format, hostile files, merge, concurrent
 * writers), fingerprints and buckets, spec identity, bundles (write, read, reproducibility,
 * every kind of damage), arch choice and `mobagen inspect`. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bundle.h"
#include "bundle_write.h"
#include "deploy.h"
#include "fingerprint.h"
#include "mobagen.h"
#include "tunedb.h"
#include "util/testutil.h"

static char work[512];

static int setup(void **state)
{
    tu_mkdtemp(work, sizeof work, "deploy");
    return 0;
}

static int teardown(void **state)
{
    tu_rm_rf(work);
    return 0;
}

/* ---------------- tuning database ---------------- */

static mg_tune_record record(const char *gpu, int seqlen, const char *route_point)
{
    mg_tune_record r;
    memset(&r, 0, sizeof r);
    snprintf(r.fp.gpu, sizeof r.fp.gpu, "%s", gpu);
    r.fp.cc_major = 9;
    r.fp.cc_minor = 0;
    r.fp.sm_count = 132;
    r.fp.mem_mib = 81559;
    r.fp.driver = 12040;
    snprintf(r.fp.nvrtc, sizeof r.fp.nvrtc, "12.4");
    snprintf(r.fp.mobagen, sizeof r.fp.mobagen, "%s", MG_VERSION_TEXT);
    memset(r.bucket.spec, 'a', 64);
    r.bucket.seqlen = seqlen;
    r.bucket.bh = 32;
    r.bucket.gqa = 4;
    snprintf(r.spec_name, sizeof r.spec_name, "test spec");
    r.n_stages = 3;
    const char *tpl[3] = {"kconv_centroid", "route", "attn_fwd"};
    const char *pt[3] = {"threads=256", route_point, "impl=2,warps=4"};
    for (int i = 0; i < 3; i++) {
        snprintf(r.tpl[i], MG_NAME_MAX, "%s", tpl[i]);
        snprintf(r.point[i], MG_POINT_MAX, "%s", pt[i]);
        r.us[i] = 10.5 * (i + 1);
    }
    return r;
}

static void assert_same_record(const mg_tune_record *a, const mg_tune_record *b)
{
    assert_true(mg_fingerprint_equal(&a->fp, &b->fp));
    assert_true(mg_bucket_equal(&a->bucket, &b->bucket));
    assert_int_equal(a->n_stages, b->n_stages);
    for (int i = 0; i < a->n_stages; i++) {
        assert_string_equal(a->tpl[i], b->tpl[i]);
        assert_string_equal(a->point[i], b->point[i]);
        assert_true(a->us[i] - b->us[i] < 1e-3 && b->us[i] - a->us[i] < 1e-3);
    }
    assert_string_equal(a->spec_name, b->spec_name);
}

static void test_db_roundtrip(void **state)
{
    mg_tunedb db = {0};
    mg_diag d;
    mg_tune_record a = record("NVIDIA H100 80GB HBM3 100%", 4096, "block_m=64,impl=2,tile_n=16");
    mg_tune_record b = record("NVIDIA A100-SXM4-40GB", 1024, "block_m=128,impl=1,tile_n=16");
    assert_int_equal(mg_tunedb_put(&db, &a, &d), MG_OK);
    assert_int_equal(mg_tunedb_put(&db, &b, &d), MG_OK);
    char *text = mg_tunedb_format(&db);
    assert_non_null(text);
    /* One record per line; spaces and '%' in the GPU name escaped. */
    assert_non_null(strstr(text, "gpu=NVIDIA%20H100%2080GB%20HBM3%20100%25 "));
    assert_non_null(strstr(text, " win.route=block_m=64,impl=2,tile_n=16"));
    mg_tunedb back = {0};
    assert_int_equal(mg_tunedb_parse(&back, text, strlen(text), "mem", 0, &d), MG_OK);
    assert_int_equal(back.warnings, 0);
    assert_int_equal(back.n, 2);
    assert_same_record(mg_tunedb_find(&back, &a.fp, &a.bucket), &a);
    assert_same_record(mg_tunedb_find(&back, &b.fp, &b.bucket), &b);
    /* Formatting is canonical: the same records in another order give the same bytes. */
    mg_tunedb rev = {0};
    mg_tunedb_put(&rev, &b, &d);
    mg_tunedb_put(&rev, &a, &d);
    char *text2 = mg_tunedb_format(&rev);
    assert_string_equal(text, text2);
    free(text);
    free(text2);
    mg_tunedb_free(&db);
    mg_tunedb_free(&back);
    mg_tunedb_free(&rev);
}

/* Every fingerprint field and every bucket field takes part in matching. */
static void test_fingerprint_matching(void **state)
{
    mg_tunedb db = {0};
    mg_diag d;
    mg_tune_record a = record("GPU X", 4096, "impl=1");
    mg_tunedb_put(&db, &a, &d);
    assert_non_null(mg_tunedb_find(&db, &a.fp, &a.bucket));
    for (int field = 0; field < 11; field++) {
        mg_tune_record b = a;
        switch (field) {
        case 0: snprintf(b.fp.gpu, sizeof b.fp.gpu, "GPU Y"); break;
        case 1: b.fp.cc_minor = 9; break;
        case 2: b.fp.sm_count = 114; break;
        case 3: b.fp.mem_mib += 1; break;
        case 4: b.fp.driver = 12080; break;
        case 5: snprintf(b.fp.nvrtc, sizeof b.fp.nvrtc, "13.0"); break;
        case 6: snprintf(b.fp.mobagen, sizeof b.fp.mobagen, "0.0.1"); break;
        case 7: b.bucket.spec[0] = 'b'; break;
        case 8: b.bucket.seqlen = 8192; break;
        case 9: b.bucket.bh = 64; break;
        case 10: b.bucket.gqa = 8; break;
        }
        assert_null(mg_tunedb_find(&db, &b.fp, &b.bucket));
    }
    mg_tunedb_free(&db);
}

static void test_bucket(void **state)
{
    mg_bucket b;
    mg_bucket_for("abc", 2, 16, 4, 3000, &b);
    assert_int_equal(b.seqlen, 4096);
    assert_int_equal(b.bh, 32);
    assert_int_equal(b.gqa, 4);
    assert_string_equal(b.spec, "abc");
    mg_bucket_for("abc", 3, 16, 16, 4096, &b);
    assert_int_equal(b.seqlen, 4096);
    assert_int_equal(b.bh, 64);
    assert_int_equal(b.gqa, 1);
    mg_bucket_for("abc", 1, 1, 1, 1, &b);
    assert_int_equal(b.seqlen, 64);
    assert_int_equal(b.bh, 1);
}

static void test_db_hostile(void **state)
{
    mg_tunedb db = {0};
    mg_diag d;
    mg_tune_record good = record("GPU", 4096, "impl=1");
    char line[MG_TUNEDB_MAX_LINE + 1];
    mg_tune_record_format(&good, line, sizeof line);
    char *long_line = malloc(10000);
    memset(long_line, 'x', 9999);
    long_line[9999] = 0;
    const char *missing = strstr(line, " sms=");   /* the record without its gpu and cc */
    char text[30000];
    snprintf(text, sizeof text,
             "mobagen-tuning-db 1\n"
             "# a comment\n"
             "%s\n"                                   /* line 3: good */
             "tuned%s\n"                              /* 4: fields missing */
             "tuned gpu=A%%zz cc=9.0\n"               /* 5: bad escape */
             "%s\n"                                   /* 6: too long */
             "something else\n"                       /* 7 */
             "tuned gpu=A gpu=B\n"                    /* 8: repeated */
             "tuned noequals\n",                      /* 9 */
             line, missing, long_line);
    free(long_line);
    assert_int_equal(mg_tunedb_parse(&db, text, strlen(text), "hostile.db", 0, &d), MG_OK);
    assert_int_equal(db.n, 1);
    assert_int_equal(db.warnings, 6);
    assert_non_null(strstr(db.first_warning, "hostile.db:4:"));
    mg_tunedb_free(&db);

    /* A NUL inside a line, a file that is not a database, binary junk: warnings only. */
    const char nul[] = "mobagen-tuning-db 1\ntuned gpu=\0A\n";
    mg_tunedb db2 = {0};
    assert_int_equal(mg_tunedb_parse(&db2, nul, sizeof nul - 1, "nul.db", 0, &d), MG_OK);
    assert_int_equal(db2.warnings, 1);
    assert_non_null(strstr(db2.first_warning, "nul.db:2:"));
    mg_tunedb_free(&db2);
    mg_tunedb db3 = {0};
    assert_int_equal(mg_tunedb_parse(&db3, "hello\nworld\n", 12, "other.txt", 0, &d), MG_OK);
    assert_int_equal(db3.n, 0);
    assert_non_null(strstr(db3.first_warning, "other.txt:1: not a mobagen tuning database"));
    mg_tunedb_free(&db3);
    unsigned char junk[4096];
    uint64_t s = 42;
    for (size_t i = 0; i < sizeof junk; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        junk[i] = (unsigned char)(s >> 56);
    }
    mg_tunedb db4 = {0};
    assert_int_equal(mg_tunedb_parse(&db4, (const char *)junk, sizeof junk, "junk", 0, &d), MG_OK);
    assert_int_equal(db4.n, 0);
    mg_tunedb_free(&db4);
    /* Another format version is an error (saving over it would destroy it). */
    mg_tunedb db5 = {0};
    assert_int_equal(mg_tunedb_parse(&db5, "mobagen-tuning-db 2\n", 20, "v2.db", 0, &d), MG_E_UNSUPPORTED);
    assert_non_null(strstr(d.msg, "v2.db:1:"));
    mg_tunedb_free(&db5);
}

static void test_db_save_merge(void **state)
{
    char path[700];
    snprintf(path, sizeof path, "%s/sub/dir/tuning.db", work);
    mg_diag d;
    mg_tune_record a = record("GPU", 1024, "impl=1"), b = record("GPU", 2048, "impl=1");
    mg_tune_record a2 = record("GPU", 1024, "impl=2");
    assert_int_equal(mg_tunedb_save(path, &a, 1, &d), MG_OK);
    assert_int_equal(mg_tunedb_save(path, &b, 1, &d), MG_OK);
    assert_int_equal(mg_tunedb_save(path, &a2, 1, &d), MG_OK);
    mg_tunedb db = {0};
    assert_int_equal(mg_tunedb_load(&db, path, 0, &d), MG_OK);
    assert_int_equal(db.n, 2);
    assert_int_equal(db.warnings, 0);
    assert_same_record(mg_tunedb_find(&db, &a.fp, &a.bucket), &a2);
    assert_same_record(mg_tunedb_find(&db, &b.fp, &b.bucket), &b);
    mg_tunedb_free(&db);
    char dir[700];
    snprintf(dir, sizeof dir, "%s/sub/dir", work);
    assert_int_equal(tu_count_files(dir, ".tmp."), 0);
    /* A missing file is an empty database. */
    mg_tunedb none = {0};
    snprintf(path, sizeof path, "%s/absent.db", work);
    assert_int_equal(mg_tunedb_load(&none, path, 0, &d), MG_OK);
    assert_int_equal(none.n, 0);
}

static void test_db_default_path(void **state)
{
    char buf[1024];
    mg_diag d;
    setenv("MOBAGEN_TUNING_DB", "/x/t.db", 1);
    assert_int_equal(mg_tunedb_default_path(buf, sizeof buf, &d), MG_OK);
    assert_string_equal(buf, "/x/t.db");
    unsetenv("MOBAGEN_TUNING_DB");
    setenv("XDG_DATA_HOME", "/xdg", 1);
    assert_int_equal(mg_tunedb_default_path(buf, sizeof buf, &d), MG_OK);
    assert_string_equal(buf, "/xdg/mobagen/tuning.db");
    unsetenv("XDG_DATA_HOME");
    char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    setenv("HOME", "/home/u", 1);
    assert_int_equal(mg_tunedb_default_path(buf, sizeof buf, &d), MG_OK);
    assert_string_equal(buf, "/home/u/.local/share/mobagen/tuning.db");
    if (home) setenv("HOME", home, 1);
    free(home);
}

/* Several processes save at once: every record of every writer is in the file afterwards. */
static void test_db_concurrent_writers(void **state)
{
    char path[700];
    snprintf(path, sizeof path, "%s/concurrent.db", work);
    enum { WRITERS = 6, EACH = 8 };
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        assert_true(pids[w] >= 0);
        if (pids[w] == 0) {
            int bad = 0;
            for (int i = 0; i < EACH; i++) {
                char gpu[32];
                snprintf(gpu, sizeof gpu, "writer %d", w);
                mg_tune_record r = record(gpu, 64 << i, "impl=1");
                mg_diag d;
                bad |= mg_tunedb_save(path, &r, 1, &d) != MG_OK;
            }
            _exit(bad);
        }
    }
    for (int w = 0; w < WRITERS; w++) {
        int status;
        assert_int_equal(waitpid(pids[w], &status, 0), pids[w]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    mg_tunedb db = {0};
    mg_diag d;
    assert_int_equal(mg_tunedb_load(&db, path, 0, &d), MG_OK);
    assert_int_equal(db.warnings, 0);
    assert_int_equal(db.n, WRITERS * EACH);
    mg_tunedb_free(&db);
    assert_int_equal(tu_count_files(work, ".tmp."), 0);
}

/* ---------------- spec identity ---------------- */

static void identity_of(const char *yaml, char hex[65])
{
    mg_spec s;
    mg_diag d;
    if (mg_spec_parse(yaml, strlen(yaml), "mem", &s, &d) != MG_OK) fail_msg("%s", d.msg);
    mg_spec_identity(&s, hex);
}

static void test_spec_identity(void **state)
{
    char a[65], b[65], c[65], e[65];
    identity_of("name: one\nhead_dim: 128\nblock_size: 64\ntop_k: 16\ntuning:\n"
                "  route: { impl: 1, block_m: [64, 128] }\n  kconv_centroid: { threads: 128 }\n", a);
    /* Another name, key order and arch list: the same kernels, the same identity. */
    identity_of("top_k: 16\nblock_size: 64\nname: two\narchs: [sm_80]\nhead_dim: 128\ntuning:\n"
                "  kconv_centroid: { threads: 128 }\n  route: { block_m: [64, 128], impl: 1 }\n", b);
    identity_of("name: one\nhead_dim: 128\nblock_size: 64\ntop_k: 8\ntuning:\n"
                "  route: { impl: 1, block_m: [64, 128] }\n  kconv_centroid: { threads: 128 }\n", c);
    identity_of("name: one\nhead_dim: 128\nblock_size: 64\ntop_k: 16\ntuning:\n"
                "  route: { impl: 1, block_m: [64] }\n  kconv_centroid: { threads: 128 }\n", e);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, e);
    assert_int_equal(strlen(a), 64);
}

/* ---------------- bundles ---------------- */

typedef struct fake_bundle {
    mg_bundle_spec specs[2];
    mg_bundle_kernel kernels[6];
    unsigned char cubins[6][3000];
} fake_bundle;

static void make_fake(fake_bundle *f)
{
    memset(f, 0, sizeof *f);
    static const char *const names[2] = {"alpha", "beta"};
    for (int s = 0; s < 2; s++) {
        memset(f->specs[s].identity, s ? 'b' : 'a', 64);
        snprintf(f->specs[s].name, sizeof f->specs[s].name, "%s", names[s]);
        f->specs[s].yaml = (char *)(s ? "name: beta\nhead_dim: 64\n" : "name: alpha\nhead_dim: 128\n");
    }
    static const char *const archs[3] = {"sm_80", "sm_90a", "sm_80"};
    static const char *const tpls[3] = {"route", "attn_fwd", "kconv_centroid"};
    for (int i = 0; i < 6; i++) {
        mg_bundle_kernel *k = &f->kernels[i];
        memcpy(k->spec, f->specs[i % 2].identity, 65);
        snprintf(k->arch, sizeof k->arch, "%s", archs[i / 2]);
        snprintf(k->tpl, sizeof k->tpl, "%s", tpls[i / 2]);
        snprintf(k->point, sizeof k->point, "impl=%d,warps=4", 1 + i % 2);
        k->seq = i / 2;
        /* Launch and kernel lines in an arbitrary order: the writer sorts them. */
        k->launch = (char *)(i % 2 ? "threads=128\nsmem=4096\nrows=4\n" : "rows=4\nthreads=128\nsmem=4096\n");
        k->entry = (char *)"kernel.main=_Z4mainv\n";
        for (size_t j = 0; j < sizeof f->cubins[i]; j++) f->cubins[i][j] = (unsigned char)(j * 7 + i);
        k->cubin = f->cubins[i];
        k->cubin_size = sizeof f->cubins[i];
    }
}

static void write_fake(const char *path, const char *tuning)
{
    fake_bundle f;
    make_fake(&f);
    mg_diag d;
    if (mg_bundle_write(path, "12.4", f.specs, 2, f.kernels, 6, tuning, &d) != MG_OK) fail_msg("%s", d.msg);
}

static void test_bundle_roundtrip(void **state)
{
    char path[700];
    snprintf(path, sizeof path, "%s/rt.mgb", work);
    mg_tune_record r = record("GPU", 4096, "impl=1");
    memset(r.bucket.spec, 'a', 64);
    char line[MG_TUNEDB_MAX_LINE + 1], tuning[MG_TUNEDB_MAX_LINE + 64];
    mg_tune_record_format(&r, line, sizeof line);
    snprintf(tuning, sizeof tuning, "mobagen-tuning-db 1\n%s\n", line);
    write_fake(path, tuning);
    mg_bundle *b;
    mg_diag d;
    assert_int_equal(mg_bundle_open(path, &b, &d), MG_OK);
    assert_string_equal(b->mobagen, MG_VERSION_TEXT);
    assert_string_equal(b->nvrtc, "12.4");
    assert_int_equal(b->n_specs, 2);
    assert_int_equal(b->n_kernels, 6);
    assert_string_equal(b->tuning, tuning);
    char ida[65];
    memset(ida, 'a', 64);
    ida[64] = 0;
    const mg_bundle_spec *sa = mg_bundle_find_spec(b, ida);
    assert_non_null(sa);
    assert_string_equal(sa->name, "alpha");
    assert_string_equal(sa->yaml, "name: alpha\nhead_dim: 128\n");
    char archs[128];
    mg_bundle_archs(b, ida, archs, sizeof archs);
    assert_string_equal(archs, "sm_80, sm_90a");
    /* Sorted by (spec, arch, seq); launch lines sorted; the CUBIN bytes intact. */
    fake_bundle f;
    make_fake(&f);
    assert_string_equal(b->kernels[0].spec, ida);
    assert_string_equal(b->kernels[0].arch, "sm_80");
    assert_string_equal(b->kernels[0].tpl, "route");
    assert_string_equal(b->kernels[1].tpl, "kconv_centroid");
    assert_string_equal(b->kernels[2].arch, "sm_90a");
    assert_string_equal(b->kernels[0].launch, "rows=4\nsmem=4096\nthreads=128\n");
    assert_int_equal(b->kernels[0].cubin_size, sizeof f.cubins[0]);
    assert_memory_equal(b->kernels[0].cubin, f.cubins[0], sizeof f.cubins[0]);
    mg_bundle_close(b);
}

/* The same contents written by two processes give byte-identical files. */
static void test_bundle_reproducible(void **state)
{
    char p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/r1.mgb", work);
    snprintf(p2, sizeof p2, "%s/r2.mgb", work);
    pid_t pid = fork();
    if (pid == 0) {
        write_fake(p1, NULL);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    sleep(1);   /* a timestamp, were one written, would differ */
    write_fake(p2, NULL);
    size_t n1, n2;
    char *a = tu_read_file(p1, &n1), *b = tu_read_file(p2, &n2);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

static void expect_open_error(const char *path, mg_status want, const char *text)
{
    mg_bundle *b = NULL;
    mg_diag d;
    mg_status st = mg_bundle_open(path, &b, &d);
    if (st == MG_OK) fail_msg("%s opened; expected '%s'", path, text);
    assert_null(b);
    if (want != MG_OK) assert_int_equal(st, want);
    if (!strstr(d.msg, text)) fail_msg("message '%s' lacks '%s'", d.msg, text);
    assert_non_null(strstr(d.msg, path));
}

static void sql(const char *path, const char *statement)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, statement, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", statement, err);
    sqlite3_close(db);
}

static void copy_bytes(const char *from, const char *to, size_t keep, long flip_at)
{
    size_t n;
    char *data = tu_read_file(from, &n);
    assert_non_null(data);
    if (keep > n) keep = n;
    if (flip_at >= 0 && (size_t)flip_at < keep) data[flip_at] ^= 0x5a;
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, keep, f), keep);
    fclose(f);
    free(data);
}

static void test_bundle_damage(void **state)
{
    char good[700], bad[700];
    snprintf(good, sizeof good, "%s/good.mgb", work);
    snprintf(bad, sizeof bad, "%s/bad.mgb", work);
    write_fake(good, NULL);
    size_t size;
    char *data = tu_read_file(good, &size);
    assert_non_null(data);

    /* Truncated anywhere. */
    const size_t cuts[] = {0, 10, 99, 100, 4096, 4097, 8192, size / 2, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        copy_bytes(good, bad, cuts[i], -1);
        mg_bundle *b = NULL;
        mg_diag d;
        assert_int_not_equal(mg_bundle_open(bad, &b, &d), MG_OK);
        assert_null(b);
        assert_non_null(strstr(d.msg, bad));
    }
    copy_bytes(good, bad, 50, -1);
    expect_open_error(bad, MG_E_IO, "too short: truncated?");

    /* A flipped byte inside a CUBIN: the item's checksum names it. */
    unsigned char needle[16];
    fake_bundle f;
    make_fake(&f);
    memcpy(needle, f.cubins[3] + 100, sizeof needle);
    long at = -1;
    for (size_t i = 0; i + sizeof needle <= size; i++)
        if (!memcmp(data + i, needle, sizeof needle)) at = (long)i;
    assert_true(at > 0);
    copy_bytes(good, bad, size, at + 3);
    expect_open_error(bad, MG_E_IO, "checksum mismatch in kernel");

    /* Flipped bytes elsewhere (b-tree pages, header): never a crash, always an error or the
     * intact contents (a byte in unused space changes nothing). */
    for (long pos = 0; pos < (long)size; pos += 509) {
        copy_bytes(good, bad, size, pos);
        mg_bundle *b = NULL;
        mg_diag d;
        if (mg_bundle_open(bad, &b, &d) == MG_OK) {
            assert_int_equal(b->n_kernels, 6);
            mg_bundle_close(b);
        }
    }

    /* Not SQLite; an SQLite file of another application; another format version. */
    tu_write_file(work, "text.mgb", "just some text that is long enough to pass the size check, "
                  "certainly more than a hundred bytes of it, yes indeed, here we go\n", bad, sizeof bad);
    expect_open_error(bad, MG_E_IO, "no SQLite header");
    snprintf(bad, sizeof bad, "%s/foreign.mgb", work);
    sql(bad, "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    expect_open_error(bad, MG_E_IO, "another application");
    copy_bytes(good, bad, size, -1);
    sql(bad, "PRAGMA user_version=2");
    expect_open_error(bad, MG_E_UNSUPPORTED, "bundle format 2; this mobagen reads format 1");

    /* A changed manifest without its checksum; another mobagen version with it. */
    copy_bytes(good, bad, size, -1);
    sql(bad, "UPDATE manifest SET value='12.9' WHERE key='nvrtc'");
    expect_open_error(bad, MG_E_IO, "manifest checksum mismatch");
    copy_bytes(good, bad, size, -1);
    const char *rows = "format=mobagen-bundle\nformat_version=1\nmobagen=9.9.9\nnvrtc=12.4\ntuning=\n";
    char sum[65], stmt[400];
    mg_bundle_text_checksum("mobagen-bundle-manifest", rows, sum);
    snprintf(stmt, sizeof stmt, "UPDATE manifest SET value='9.9.9' WHERE key='mobagen';"
             "UPDATE manifest SET value='%s' WHERE key='checksum';", sum);
    sql(bad, stmt);
    expect_open_error(bad, MG_E_UNSUPPORTED, "bundle made by mobagen 9.9.9");

    /* A spec's text changed; a schema with something more in it (a trigger, a view). */
    copy_bytes(good, bad, size, -1);
    sql(bad, "UPDATE specs SET yaml='name: evil\n' WHERE name='alpha'");
    expect_open_error(bad, MG_E_IO, "checksum mismatch in spec 'alpha'");
    copy_bytes(good, bad, size, -1);
    sql(bad, "CREATE VIEW v AS SELECT 1");
    expect_open_error(bad, MG_E_IO, "unexpected schema object 'v'");
    copy_bytes(good, bad, size, -1);
    sql(bad, "CREATE TRIGGER t AFTER INSERT ON specs BEGIN SELECT 1; END");
    expect_open_error(bad, MG_E_IO, "unexpected schema object 't'");
    copy_bytes(good, bad, size, -1);
    sql(bad, "UPDATE kernels SET cubin=x'00' WHERE id=1");
    expect_open_error(bad, MG_E_IO, "checksum mismatch in kernel");
    copy_bytes(good, bad, size, -1);
    sql(bad, "UPDATE kernels SET launch=x'41' WHERE id=1");
    expect_open_error(bad, MG_E_IO, "a bad kernels row");
    /* Missing file, a directory. */
    snprintf(bad, sizeof bad, "%s/none.mgb", work);
    expect_open_error(bad, MG_E_IO, "No such file");
    expect_open_error(work, MG_E_IO, "not a regular file");
    free(data);
}

static void test_arch_pick(void **state)
{
    const char *const a[] = {"sm_80", "sm_86", "sm_90a", "sm_90", "sm_100a", "bogus", "sm_9"};
    const int n = 7;
    assert_int_equal(mg_arch_pick(a, n, 8, 0), 0);
    assert_int_equal(mg_arch_pick(a, n, 8, 6), 1);
    assert_int_equal(mg_arch_pick(a, n, 8, 9), 1);     /* sm_89 runs sm_86 */
    assert_int_equal(mg_arch_pick(a, n, 9, 0), 2);     /* the exact 'a' before plain sm_90 */
    assert_int_equal(mg_arch_pick(a, n, 10, 0), 4);
    assert_int_equal(mg_arch_pick(a, n, 10, 3), -1);   /* sm_100a only on 10.0 */
    assert_int_equal(mg_arch_pick(a, n, 7, 5), -1);
    assert_int_equal(mg_arch_pick(a, n, 12, 0), -1);
    const char *const only_a[] = {"sm_90a"};
    assert_int_equal(mg_arch_pick(only_a, 1, 9, 0), 0);
    assert_int_equal(mg_arch_pick(only_a, 1, 9, 1), -1);   /* an 'a' arch is not forward compatible */
    const char *const plain[] = {"sm_90", "sm_80"};
    assert_int_equal(mg_arch_pick(plain, 2, 9, 0), 0);
    assert_int_equal(mg_arch_pick(plain, 2, 8, 7), 1);
    assert_int_equal(mg_arch_pick(NULL, 0, 9, 0), -1);
    char need[64];
    mg_arch_needed(9, 0, need, sizeof need);
    assert_string_equal(need, "sm_90a or sm_90");
    mg_arch_needed(8, 6, need, sizeof need);
    assert_string_equal(need, "sm_86a, or sm_8x with x <= 6");
}

/* ---------------- mobagen inspect ---------------- */

static const char *cli_path(void)
{
    static char cli[1024];
    const char *env = getenv("MOBAGEN_TEST_CLI");
    snprintf(cli, sizeof cli, "%s", env && *env ? env : "build/san/mobagen");
    return cli;
}

static void test_inspect(void **state)
{
    char path[700];
    snprintf(path, sizeof path, "%s/inspect.mgb", work);
    mg_tune_record r = record("GPU", 4096, "impl=1");
    char line[MG_TUNEDB_MAX_LINE + 1], tuning[MG_TUNEDB_MAX_LINE + 64];
    mg_tune_record_format(&r, line, sizeof line);
    snprintf(tuning, sizeof tuning, "mobagen-tuning-db 1\n%s\n", line);
    write_fake(path, tuning);
    const char *argv[] = {cli_path(), "inspect", path, NULL};
    char *out, *err;
    assert_int_equal(tu_run(argv, NULL, &out, &err), 0);
    assert_non_null(strstr(out, "2 specs, 6 kernels, 18000 bytes of CUBIN, 1 tuning records"));
    assert_non_null(strstr(out, "spec alpha (identity aaaaaaaaaaaaaaaa): sm_80, sm_90a"));
    assert_non_null(strstr(out, "route/sm_80/impl=1,warps=4  3000 bytes  launch:rows=4 smem=4096 threads=128  kernels: main"));
    assert_non_null(strstr(out, "tuned gpu=GPU "));
    free(out);
    free(err);
    /* Damaged: exit 7 and the reason. */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/inspect-bad.mgb", work);
    copy_bytes(path, bad, 4000, -1);
    const char *argv2[] = {cli_path(), "inspect", bad, NULL};
    assert_int_equal(tu_run(argv2, NULL, &out, &err), 7);
    assert_non_null(strstr(err, "mobagen: error: "));
    assert_non_null(strstr(err, bad));
    free(out);
    free(err);
    const char *argv3[] = {cli_path(), "inspect", NULL};
    assert_int_equal(tu_run(argv3, NULL, &out, &err), 2);
    free(out);
    free(err);
}

/* The commands that need a GPU say why they cannot run; bad arguments are usage errors. */
static void test_cli_deploy_errors(void **state)
{
    char spec[700];
    tu_write_file(work, "e.yaml", "name: e\nhead_dim: 64\nblock_size: 64\ntop_k: 4\n", spec, sizeof spec);
    const char *no_driver[] = {"MOBAGEN_LIBCUDA=/nonexistent/libcuda.so.1", NULL};
    const struct { const char *argv[8]; int rc; const char *text; } cases[] = {
        {{"tune", spec, NULL}, 8, "no CUDA driver"},
        {{"bench", spec, "--seqlens", "1024", NULL}, 8, "no CUDA driver"},
        {{"tune", spec, "--seqlens", "0", NULL}, 2, "--seqlens"},
        {{"tune", NULL}, 2, "SPEC"},
        {{"tune", spec, "--reps", "x", NULL}, 2, "--reps"},
        {{"bundle", spec, "-o", "x.mgb", NULL}, 2, "--arch"},
        {{"bundle", spec, "--arch", "sm_80", NULL}, 2, "-o FILE"},
        {{"bundle", spec, "--arch", "sm_1", "-o", "x.mgb", NULL}, 2, "unknown arch 'sm_1'"},
        {{"inspect", "a", "b", NULL}, 2, "one file only"},
        {{"inspect", "--bogus", NULL}, 2, "unknown option"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[10] = {cli_path()};
        for (int j = 0; cases[i].argv[j]; j++) argv[j + 1] = cases[i].argv[j];
        char *out, *err;
        int rc = tu_run(argv, no_driver, &out, &err);
        if (rc != cases[i].rc || !strstr(err, cases[i].text))
            fail_msg("mobagen %s ...: exit %d (want %d), stderr '%s' lacks '%s'", cases[i].argv[0], rc,
                     cases[i].rc, err, cases[i].text);
        free(out);
        free(err);
    }
}

/* mobagen_ctx_add_bundle works (and fails clearly) on a ctx whatever its device. */
static void test_ctx_add_bundle(void **state)
{
    char good[700], bad[700];
    snprintf(good, sizeof good, "%s/ctx.mgb", work);
    snprintf(bad, sizeof bad, "%s/ctx-bad.mgb", work);
    write_fake(good, NULL);
    copy_bytes(good, bad, 5000, -1);
    mobagen_ctx *ctx;
    mobagen_ctx_create(0, NULL, &ctx);   /* no device here, or one: the bundle calls do not care */
    assert_non_null(ctx);
    assert_int_equal(mobagen_ctx_add_bundle(ctx, good), MG_OK);
    assert_int_not_equal(mobagen_ctx_add_bundle(ctx, bad), MG_OK);
    assert_non_null(strstr(mobagen_ctx_errmsg(ctx), bad));
    assert_int_equal(mobagen_ctx_add_bundle(ctx, NULL), MG_E_ARG);
    mobagen_ctx_destroy(ctx);
}

/* What the runtime's loader gets from a bundle: every launch value and kernel role, and clear
 * refusals of what would make the launches go wrong. */
static void test_bundle_to_variants(void **state)
{
    fake_bundle f;
    make_fake(&f);
    char ida[65];
    memcpy(ida, f.specs[0].identity, 65);
    /* Spec alpha gets route, kconv_centroid and attn_fwd on sm_80. */
    mg_bundle_kernel k[4];
    memcpy(k, f.kernels, 3 * sizeof k[0]);
    for (int i = 0; i < 3; i++) {
        memcpy(k[i].spec, ida, 65);
        snprintf(k[i].arch, sizeof k[i].arch, "sm_80");
        k[i].seq = i;
    }
    static const char *const tpl[3] = {"route", "kconv_centroid", "attn_fwd"};
    for (int i = 0; i < 3; i++) snprintf(k[i].tpl, sizeof k[i].tpl, "%s", tpl[i]);
    char path[700];
    snprintf(path, sizeof path, "%s/variants.mgb", work);
    mg_diag d;
    assert_int_equal(mg_bundle_write(path, "12.4", f.specs, 1, k, 3, NULL, &d), MG_OK);
    mg_bundle *b;
    assert_int_equal(mg_bundle_open(path, &b, &d), MG_OK);
    mg_variant *vars;
    mg_build_result *res;
    int n;
    assert_int_equal(mg_deploy_variants_from_bundle(b, ida, "sm_80", &vars, &res, &n, &d), MG_OK);
    assert_int_equal(n, 3);
    assert_string_equal(vars[0].id, "route/sm_80/impl=1,warps=4");
    assert_int_equal(mg_rendered_launch(&vars[0].rendered, "threads", 0), 128);
    assert_int_equal(mg_rendered_launch(&vars[0].rendered, "smem", 0), 4096);
    assert_string_equal(mg_rendered_kernel(&vars[0].rendered, "main"), "_Z4mainv");
    assert_int_equal(res[0].entry.cubin_size, 3000);
    assert_memory_equal(res[0].entry.cubin, f.cubins[0], 3000);
    char lowered[64];
    assert_true(mg_entry_lowered_name(&res[0].entry, "main", lowered, sizeof lowered));
    assert_string_equal(lowered, "_Z4mainv");
    mg_build_results_free(res, n);
    mg_variants_free(vars, n);
    /* No kernels for the arch. */
    assert_int_equal(mg_deploy_variants_from_bundle(b, ida, "sm_90a", &vars, &res, &n, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "no kernels for sm_90a"));
    mg_bundle_close(b);

    /* A stage's template missing; a launch value fwd.c would divide by zero with. */
    assert_int_equal(mg_bundle_write(path, "12.4", f.specs, 1, k, 2, NULL, &d), MG_OK);
    assert_int_equal(mg_bundle_open(path, &b, &d), MG_OK);
    assert_int_equal(mg_deploy_variants_from_bundle(b, ida, "sm_80", &vars, &res, &n, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "no attn_fwd kernel for sm_80"));
    mg_bundle_close(b);
    k[2].launch = (char *)"threads=128\nlist_rows=0\n";
    assert_int_equal(mg_bundle_write(path, "12.4", f.specs, 1, k, 3, NULL, &d), MG_OK);
    assert_int_equal(mg_bundle_open(path, &b, &d), MG_OK);
    assert_int_equal(mg_deploy_variants_from_bundle(b, ida, "sm_80", &vars, &res, &n, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "attn_fwd/sm_80/impl=1,warps=4: launch() gave list_rows = 0"));
    mg_bundle_close(b);
    /* A launch value or kernel role the runtime does not know (runtime/kernel_contract.h). */
    k[2].launch = (char *)"threads=128\nwarps_per_sm=4\n";
    assert_int_equal(mg_bundle_write(path, "12.4", f.specs, 1, k, 3, NULL, &d), MG_OK);
    assert_int_equal(mg_bundle_open(path, &b, &d), MG_OK);
    assert_int_equal(mg_deploy_variants_from_bundle(b, ida, "sm_80", &vars, &res, &n, &d), MG_E_IO);
    assert_non_null(strstr(d.msg, "launch() value 'warps_per_sm' is not one the runtime reads"));
    mg_bundle_close(b);
}

/* The real thing where NVRTC is present: two processes bundle the same spec, one compiling and
 * one from the cache, and write the same bytes. */
static void test_cli_bundle_reproducible(void **state)
{
    char spec[700], f1[700], f2[700], cache[800];
    tu_write_file(work, "small.yaml",
                  "name: small\nhead_dim: 64\nblock_size: 64\ntop_k: 4\ntuning:\n"
                  "  kconv_centroid: { threads: 128 }\n  route: { block_m: 64, impl: 1 }\n"
                  "  attn_fwd: { impl: 1, warps: 4 }\n  attn_bwd: { tile_n: 64 }\n", spec, sizeof spec);
    snprintf(f1, sizeof f1, "%s/one.mgb", work);
    snprintf(f2, sizeof f2, "%s/two.mgb", work);
    snprintf(cache, sizeof cache, "MOBAGEN_CACHE_DIR=%s/bundle-cache", work);
    const char *env[] = {cache, NULL};
    const char *argv1[] = {cli_path(), "bundle", spec, "--arch", "sm_80", "-o", f1, NULL};
    const char *argv2[] = {cli_path(), "bundle", spec, "--arch", "sm_80", "-o", f2, NULL};
    char *out, *err;
    int rc = tu_run(argv1, env, &out, &err);
    if (rc == 6) {
        printf("skipped: no NVRTC (%s)\n", err);
        free(out);
        free(err);
        skip();
    }
    if (rc != 0) fail_msg("mobagen bundle exited %d: %s", rc, err);
    assert_non_null(strstr(out, "1 specs, 4 kernels for sm_80"));   /* the backward's too */
    free(out);
    free(err);
    assert_int_equal(tu_run(argv2, env, &out, &err), 0);
    free(out);
    free(err);
    size_t n1, n2;
    char *a = tu_read_file(f1, &n1), *b = tu_read_file(f2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
    mg_bundle *bundle;
    mg_diag d;
    assert_int_equal(mg_bundle_open(f1, &bundle, &d), MG_OK);
    assert_int_equal(bundle->n_kernels, 4);
    assert_non_null(strstr(bundle->kernels[0].entry, "kernel.main="));
    mg_bundle_close(bundle);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_db_roundtrip),
        cmocka_unit_test(test_fingerprint_matching),
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_db_hostile),
        cmocka_unit_test(test_db_save_merge),
        cmocka_unit_test(test_db_default_path),
        cmocka_unit_test(test_db_concurrent_writers),
        cmocka_unit_test(test_spec_identity),
        cmocka_unit_test(test_bundle_roundtrip),
        cmocka_unit_test(test_bundle_reproducible),
        cmocka_unit_test(test_bundle_damage),
        cmocka_unit_test(test_arch_pick),
        cmocka_unit_test(test_inspect),
        cmocka_unit_test(test_cli_deploy_errors),
        cmocka_unit_test(test_ctx_add_bundle),
        cmocka_unit_test(test_bundle_to_variants),
        cmocka_unit_test(test_cli_bundle_reproducible),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
