/* The content-addressed kernel cache: keys, round trips, damage detection, hits on a rebuild,
 * concurrent builders sharing one directory, cleaning, and where the cache lives. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "build.h"
#include "cache.h"
#include "spec.h"
#include "variants.h"
#include "util/testutil.h"

/* ---- keys ------------------------------------------------------------------------------------ */

static void test_key_covers_every_input(void **state)
{
    (void)state;
    const char *opts[] = {"-std=c++17", "-lineinfo"};
    const char *opts_changed[] = {"-std=c++17", "-lineinfo -G"};
    const char *opts_more[] = {"-std=c++17", "-lineinfo", "-DX"};
    const char *opts_swapped[] = {"-lineinfo", "-std=c++17"};
    const char *roles[] = {"main"}, *roles_changed[] = {"prep"};
    const char *names[] = {"k<1>"};
    const char *names_changed[] = {"k<2>"};
    const mg_key_input base = {.source = "__global__ void k() {}", .arch = "sm_80",
                               .options = opts, .n_options = 2, .roles = roles,
                               .name_exprs = names, .n_names = 1};
    enum { N = 8 };
    mg_key_input variants[N];
    for (int i = 0; i < N; i++) variants[i] = base;
    variants[0].source = "__global__ void k() { }";
    variants[1].arch = "sm_90a";
    variants[2].options = opts_changed;
    variants[3].options = opts_more;
    variants[3].n_options = 3;
    variants[4].name_exprs = names_changed;
    variants[5].roles = roles_changed;   /* the entry maps roles to kernels: part of the key */
    variants[6].options = opts_swapped;  /* option order matters to a compiler */
    variants[7].n_names = 0;

    mg_cache_key k0, again, keys[N];
    mg_cache_key_compute(&base, &k0);
    mg_cache_key_compute(&base, &again);
    assert_string_equal(k0.hex, again.hex);
    assert_int_equal(strlen(k0.hex), 64);
    assert_int_equal(strspn(k0.hex, "0123456789abcdef"), 64);
    for (int i = 0; i < N; i++) {
        mg_cache_key_compute(&variants[i], &keys[i]);
        if (!strcmp(keys[i].hex, k0.hex)) print_error("input change %d kept the key\n", i);
        assert_string_not_equal(keys[i].hex, k0.hex);
        for (int j = 0; j < i; j++) assert_string_not_equal(keys[i].hex, keys[j].hex);
    }
    /* Parts are delimited: moving text from one option to the next changes the key. */
    const char *split_a[] = {"-DA", "B"}, *split_b[] = {"-DAB", ""};
    mg_key_input a = base, b = base;
    a.options = split_a;
    b.options = split_b;
    mg_cache_key_compute(&a, &keys[0]);
    mg_cache_key_compute(&b, &keys[1]);
    assert_string_not_equal(keys[0].hex, keys[1].hex);
}

/* The kernels of a variant are a set: any order of them gives one key. */
static void test_key_ignores_kernel_order(void **state)
{
    (void)state;
    const char *roles[] = {"main", "merge", "prep"}, *names[] = {"a<1>", "b<2>", "c<3>"};
    const char *roles_p[] = {"prep", "main", "merge"}, *names_p[] = {"c<3>", "a<1>", "b<2>"};
    const char *names_x[] = {"b<2>", "a<1>", "c<3>"};   /* roles kept, kernels swapped */
    mg_key_input in = {.source = "s", .arch = "sm_90a", .roles = roles, .name_exprs = names,
                       .n_names = 3};
    mg_cache_key k1, k2, k3;
    mg_cache_key_compute(&in, &k1);
    in.roles = roles_p;
    in.name_exprs = names_p;
    mg_cache_key_compute(&in, &k2);
    assert_string_equal(k1.hex, k2.hex);
    in.roles = roles;
    in.name_exprs = names_x;
    mg_cache_key_compute(&in, &k3);
    assert_string_not_equal(k1.hex, k3.hex);
}

/* A template's kernels() table reaches the variant in role order, whatever order Lua's table
 * iteration (randomised per process) gives: they enter the key, the entry and NVRTC. */
static void test_rendered_kernels_in_role_order(void **state)
{
    (void)state;
    static const char tpl[] =
        "%! function kernels() return { zeta = 'k<7>', main = 'k<0>', alpha = 'k<1>', prep = 'k<2>',\n"
        "%!   merge = 'k<3>', beta = 'k<4>', omega = 'k<5>', gamma = 'k<6>' } end\n"
        "%! function launch() return { threads = 128, smem = 0, rows = 4, list_rows = 64 } end\n"
        "template<int N> __global__ void k() {}\n";
    static const char spec_text[] = "name: order\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n";
    mg_diag d;
    mg_spec spec;
    mg_template *t = NULL;
    assert_int_equal(mg_spec_parse(spec_text, strlen(spec_text), "order.yaml", &spec, &d), MG_OK);
    assert_int_equal(mg_template_from_text("order.cu.tpl", tpl, strlen(tpl), &t, &d), MG_OK);
    mg_point p = {0};
    mg_rendered r;
    assert_int_equal(mg_template_render(t, &spec, "sm_80", &p, &r, &d), MG_OK);
    static const char *const want[] = {"alpha", "beta", "gamma", "main", "merge", "omega", "prep", "zeta"};
    assert_int_equal(r.n_kernels, 8);
    for (int i = 0; i < 8; i++) assert_string_equal(r.kernels[i].role, want[i]);
    assert_string_equal(mg_rendered_kernel(&r, "zeta"), "k<7>");
    assert_int_equal(r.n_launch, 4);
    for (int i = 1; i < r.n_launch; i++) assert_true(strcmp(r.launch[i - 1].name, r.launch[i].name) < 0);
    assert_int_equal(mg_rendered_launch(&r, "rows", 0), 4);
    mg_rendered_free(&r);
    mg_template_free(t);
}

/* ---- entries --------------------------------------------------------------------------------- */

static const unsigned char cubin_bytes[] = {0x7f, 'E', 'L', 'F', 0, 1, 2, 0, 0, 255, 42, 0};

static void make_key(const char *source, mg_cache_key *key)
{
    const mg_key_input in = {.source = source, .arch = "sm_80"};
    mg_cache_key_compute(&in, key);
}

static void put_entry(mg_cache *c, const mg_cache_key *key)
{
    mg_cache_entry e = {.meta = "template=fix\narch=sm_80\npoint=default\nkernel.main=_Z1kv\n",
                        .log = "warning: something",
                        .cubin = (void *)cubin_bytes,
                        .cubin_size = sizeof cubin_bytes};
    mg_diag d;
    assert_int_equal(mg_cache_put(c, key, &e, &d), MG_OK);
}

typedef struct listing {
    int n, valid, damaged;
    char path[8][1024];
} listing;

static void collect(const mg_cache_item *it, void *ctx)
{
    listing *l = ctx;
    if (l->n < 8) snprintf(l->path[l->n], sizeof l->path[0], "%s", it->path);
    l->n++;
    if (it->valid) {
        l->valid++;
        assert_non_null(it->meta);
        assert_int_equal(strlen(it->key_hex), 64);
        assert_true(it->bytes > sizeof cubin_bytes);
    } else {
        l->damaged++;
        assert_null(it->meta);
    }
}

static listing list_cache(mg_cache *c)
{
    listing l;
    memset(&l, 0, sizeof l);
    mg_diag d;
    assert_int_equal(mg_cache_list(c, collect, NULL, &l, &d), MG_OK);
    return l;
}

static void test_put_get_roundtrip_and_miss(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    assert_string_equal(mg_cache_dir(c), dir);

    mg_cache_key key, other;
    make_key("a", &key);
    make_key("b", &other);
    mg_cache_entry e;
    int found = -1, damaged = -1;
    assert_int_equal(mg_cache_get(c, &key, &e, &found, &damaged, &d), MG_OK);
    assert_int_equal(found, 0);
    assert_int_equal(damaged, 0);

    put_entry(c, &key);
    assert_int_equal(mg_cache_get(c, &key, &e, &found, &damaged, &d), MG_OK);
    assert_int_equal(found, 1);
    assert_int_equal(damaged, 0);
    assert_string_equal(e.meta, "template=fix\narch=sm_80\npoint=default\nkernel.main=_Z1kv\n");
    assert_string_equal(e.log, "warning: something");
    assert_int_equal(e.cubin_size, sizeof cubin_bytes);
    assert_memory_equal(e.cubin, cubin_bytes, sizeof cubin_bytes);
    char buf[64];
    assert_true(mg_entry_lowered_name(&e, "main", buf, sizeof buf));
    assert_string_equal(buf, "_Z1kv");
    assert_false(mg_entry_lowered_name(&e, "prep", buf, sizeof buf));
    assert_true(mg_cache_meta_get(e.meta, "point", buf, sizeof buf));
    assert_string_equal(buf, "default");
    assert_false(mg_cache_meta_get(e.meta, "poin", buf, sizeof buf));
    mg_cache_entry_free(&e);
    assert_null(e.meta);

    /* Another key still misses; NULL damaged is allowed. */
    assert_int_equal(mg_cache_get(c, &other, &e, &found, NULL, &d), MG_OK);
    assert_int_equal(found, 0);

    /* Overwriting an entry keeps exactly one valid file. */
    put_entry(c, &key);
    listing l = list_cache(c);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.valid, 1);
    assert_int_equal(tu_count_files(dir, ".tmp"), 0);
    mg_cache_close(c);
    tu_rm_rf(dir);
}

static void damage_and_check(mg_cache *c, const mg_cache_key *key, void (*damage)(const char *))
{
    put_entry(c, key);
    listing l = list_cache(c);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.valid, 1);
    damage(l.path[0]);
    l = list_cache(c);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.damaged, 1);  /* ls shows it damaged, and leaves it */
    mg_cache_entry e = {0};
    int found = -1, damaged = -1;
    mg_diag d;
    assert_int_equal(mg_cache_get(c, key, &e, &found, &damaged, &d), MG_OK);
    assert_int_equal(found, 0);
    assert_int_equal(damaged, 1);
    assert_null(e.cubin);
    assert_int_not_equal(access(l.path[0], F_OK), 0);  /* removed */
    l = list_cache(c);
    assert_int_equal(l.n, 0);
    /* After removal it is a plain miss. */
    assert_int_equal(mg_cache_get(c, key, &e, &found, &damaged, &d), MG_OK);
    assert_int_equal(found, 0);
    assert_int_equal(damaged, 0);
}

static void flip_byte_at(const char *path, long offset_from_end)
{
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    assert_true((size_t)offset_from_end <= len);
    data[len - (size_t)offset_from_end] ^= 0x01;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    free(data);
}

static void truncate_by_one(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 1), 0);
}
static void truncate_to_header(const char *path) { assert_int_equal(truncate(path, 20), 0); }
static void truncate_to_zero(const char *path) { assert_int_equal(truncate(path, 0), 0); }
static void flip_last(const char *path) { flip_byte_at(path, 1); }
static void flip_in_log(const char *path) { flip_byte_at(path, (long)sizeof cubin_bytes + 3); }
static void flip_in_meta(const char *path) { flip_byte_at(path, (long)sizeof cubin_bytes + 25); }
static void append_byte(const char *path)
{
    FILE *f = fopen(path, "ab");
    assert_non_null(f);
    fputc('x', f);
    fclose(f);
}

static void flip_magic(const char *path)
{
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    data[0] ^= 0x20;
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    free(data);
}

static void test_damaged_entries_detected_and_removed(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-dmg");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_cache_key key;
    make_key("damage me", &key);
    void (*damages[])(const char *) = {truncate_by_one, truncate_to_header, truncate_to_zero,
                                       flip_last,       flip_in_log,        flip_in_meta,
                                       flip_magic,      append_byte};
    for (size_t i = 0; i < sizeof damages / sizeof damages[0]; i++) damage_and_check(c, &key, damages[i]);

    /* An intact entry stored under another key's name (a renamed file) is damaged too. */
    mg_cache_key other;
    make_key("other", &other);
    put_entry(c, &key);
    listing l = list_cache(c);
    char moved[1100];
    snprintf(moved, sizeof moved, "%s/v1/%.2s", dir, other.hex);
    mkdir(moved, 0755);
    snprintf(moved + strlen(moved), sizeof moved - strlen(moved), "/%s.mgc", other.hex);
    assert_int_equal(rename(l.path[0], moved), 0);
    mg_cache_entry e;
    int found = -1, damaged = -1;
    assert_int_equal(mg_cache_get(c, &other, &e, &found, &damaged, &d), MG_OK);
    assert_int_equal(found, 0);
    assert_int_equal(damaged, 1);
    mg_cache_close(c);
    tu_rm_rf(dir);
}

/* The id of a process that has exited. */
static pid_t dead_pid(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    return pid;
}

static void test_clean_removes_everything(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-clean");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    const char *sources[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++) {
        mg_cache_key k;
        make_key(sources[i], &k);
        put_entry(c, &k);
    }
    listing l = list_cache(c);
    assert_int_equal(l.n, 5);
    assert_int_equal(l.valid, 5);
    /* A temporary file left by a crashed writer, and one of a writer still running (us). */
    char sub[1100], key_hex[65], name[200];
    snprintf(sub, sizeof sub, "%s", l.path[0]);
    *strrchr(sub, '/') = 0;
    snprintf(key_hex, sizeof key_hex, "%.64s", strrchr(l.path[0], '/') + 1);
    snprintf(name, sizeof name, ".tmp.%s.%ld.0123456789abcdef", key_hex, (long)dead_pid());
    tu_write_file(sub, name, "partial", NULL, 0);
    snprintf(name, sizeof name, ".tmp.%s.%ld.0123456789abcdef", key_hex, (long)getpid());
    tu_write_file(sub, name, "in flight", NULL, 0);
    mg_cache_clean_stats cs;
    assert_int_equal(mg_cache_clean(c, &cs, NULL, NULL, &d), MG_OK);
    assert_int_equal(cs.removed, 6);
    assert_int_equal(cs.in_use, 1);
    assert_int_equal(cs.failed, 0);
    assert_int_equal(cs.skipped, 0);
    l = list_cache(c);
    assert_int_equal(l.n, 0);
    assert_int_equal(tu_count_files(dir, ""), 1);
    assert_int_equal(tu_count_files(dir, name), 1);
    char in_flight[1400];
    snprintf(in_flight, sizeof in_flight, "%s/%s", sub, name);
    unlink(in_flight);
    /* The cache stays usable. */
    mg_cache_key k;
    make_key("a", &k);
    put_entry(c, &k);
    assert_int_equal(list_cache(c).valid, 1);
    assert_int_equal(mg_cache_clean(c, &cs, NULL, NULL, &d), MG_OK);
    assert_int_equal(cs.removed, 1);
    mg_cache_close(c);
    tu_rm_rf(dir);
}

/* ---- what the cache may touch --------------------------------------------------------------- */

typedef struct skip_log {
    int n;
    char text[16][1200];
} skip_log;

static void log_skip(const char *path, const char *why, void *ctx)
{
    skip_log *l = ctx;
    if (l->n < 16) snprintf(l->text[l->n], sizeof l->text[0], "%s: %s", path, why);
    l->n++;
}

typedef struct ls_ctx {
    listing l;
    skip_log skips;
} ls_ctx;

static void collect_entry(const mg_cache_item *it, void *ctx) { collect(it, &((ls_ctx *)ctx)->l); }
static void log_skip_ls(const char *path, const char *why, void *ctx)
{
    log_skip(path, why, &((ls_ctx *)ctx)->skips);
}

static int skip_logged(const skip_log *l, const char *part)
{
    for (int i = 0; i < l->n && i < 16; i++)
        if (strstr(l->text[i], part)) return 1;
    return 0;
}

static int exists(const char *dir, const char *rel)
{
    char path[1400];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    return lstat(path, &st) == 0;
}

/* The repro (a cache directory holding someone's files), names under the layout that
 * are not the cache's, and a fan-out that is a link out of the cache: clean and ls leave them
 * all alone (a link is removed, never followed) and say what they skipped. */
static void test_clean_touches_only_its_own_names(void **state)
{
    (void)state;
    char dir[512], outside[512];
    tu_mkdtemp(dir, sizeof dir, "cache-victim");
    tu_mkdtemp(outside, sizeof outside, "cache-outside");
    tu_write_file(dir, "notes.txt", "keep", NULL, 0);
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_cache_key key;
    make_key("mine", &key);
    put_entry(c, &key);

    char v1[700], fan[800], zz[800], other_fan[800], name[200];
    snprintf(v1, sizeof v1, "%s/v1", dir);
    snprintf(fan, sizeof fan, "%s/%.2s", v1, key.hex);
    snprintf(zz, sizeof zz, "%s/ZZ", v1);
    tu_write_file(v1, "notes.txt", "keep", NULL, 0);
    tu_write_file(zz, "data", "keep", NULL, 0);
    tu_write_file(fan, "notes.txt", "keep", NULL, 0);
    tu_write_file(fan, ".tmp.not-a-writer", "keep", NULL, 0);
    /* An entry name whose key belongs to another fan-out is not the cache's either. */
    snprintf(name, sizeof name, "%s%.62s.mgc", key.hex[0] == 'f' ? "00" : "ff", key.hex + 2);
    tu_write_file(fan, name, "keep", NULL, 0);
    /* A fan-out that links out of the cache, to a directory holding an entry-like file. */
    const char *link_fan = key.hex[0] == 'c' ? "dd" : "cd";
    snprintf(name, sizeof name, "%s%.62s.mgc", link_fan, key.hex + 2);
    tu_write_file(outside, name, "keep", NULL, 0);
    snprintf(other_fan, sizeof other_fan, "%s/%s", v1, link_fan);
    assert_int_equal(symlink(outside, other_fan), 0);

    /* ls: one entry, and the others reported, the link included. */
    ls_ctx lc;
    memset(&lc, 0, sizeof lc);
    assert_int_equal(mg_cache_list(c, collect_entry, log_skip_ls, &lc, &d), MG_OK);
    assert_int_equal(lc.l.n, 1);
    assert_int_equal(lc.l.valid, 1);
    assert_int_equal(lc.skips.n, 6);
    assert_true(skip_logged(&lc.skips, "a symbolic link where a cache directory belongs"));

    skip_log skips = {0};
    mg_cache_clean_stats cs;
    assert_int_equal(mg_cache_clean(c, &cs, log_skip, &skips, &d), MG_OK);
    assert_int_equal(cs.removed, 2);        /* the entry, and the link (not what it points at) */
    assert_int_equal(cs.failed, 0);
    assert_int_equal(cs.skipped, 5);
    assert_int_equal(skips.n, 5);
    assert_true(skip_logged(&skips, "/v1/notes.txt: not a cache"));
    assert_true(skip_logged(&skips, "/v1/ZZ: not a cache"));
    assert_true(skip_logged(&skips, "/notes.txt: not a cache file"));
    assert_true(skip_logged(&skips, ".tmp.not-a-writer"));
    assert_true(exists(dir, "notes.txt"));
    assert_true(exists(v1, "notes.txt"));
    assert_true(exists(zz, "data"));
    assert_true(exists(fan, "notes.txt"));
    assert_true(exists(fan, ".tmp.not-a-writer"));
    assert_true(exists(outside, name));
    assert_false(exists(v1, link_fan));
    /* Another clean finds nothing of its own and skips the same names. */
    assert_int_equal(mg_cache_clean(c, &cs, NULL, NULL, &d), MG_OK);
    assert_int_equal(cs.removed, 0);
    assert_int_equal(cs.skipped, 5);
    mg_cache_close(c);
    tu_rm_rf(dir);
    tu_rm_rf(outside);
}

/* An empty regular file at path. */
static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

/* A lookup that must end: a timer turns a hang into a failure instead of a stuck CI job. */
static void expect_damaged_miss(mg_cache *c, const mg_cache_key *key, const char *what)
{
    mg_cache_entry e = {0};
    int found = -1, damaged = -1;
    mg_diag d = {{0}};
    alarm(20);
    mg_status st = mg_cache_get(c, key, &e, &found, &damaged, &d);
    alarm(0);
    if (st != MG_OK || found || !damaged || !strstr(d.msg, what))
        print_error("status %d found %d damaged %d: %s (wanted '%s')\n", st, found, damaged, d.msg, what);
    assert_int_equal(st, MG_OK);
    assert_int_equal(found, 0);
    assert_int_equal(damaged, 1);
    assert_non_null(strstr(d.msg, what));
    assert_null(e.cubin);
}

static void expect_hit(mg_cache *c, const mg_cache_key *key)
{
    mg_cache_entry e = {0};
    int found = 0;
    mg_diag d;
    assert_int_equal(mg_cache_get(c, key, &e, &found, NULL, &d), MG_OK);
    assert_int_equal(found, 1);
    mg_cache_entry_free(&e);
}

/* Whatever sits under an entry's or a fan-out's name, a lookup returns at once with a miss that
 * says what it found; a put repairs what it can; nothing is followed or read past its limit. */
static void test_special_files_are_damage(void **state)
{
    (void)state;
    char dir[512], fan[600], path[700];
    tu_mkdtemp(dir, sizeof dir, "cache-special");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_cache_key key;
    make_key("special", &key);
    snprintf(fan, sizeof fan, "%s/v1/%.2s", dir, key.hex);
    snprintf(path, sizeof path, "%s/%s.mgc", fan, key.hex);

    /* A FIFO: opening it for reading would block forever. ls says so, get removes it. */
    put_entry(c, &key);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0644), 0);
    listing l = list_cache(c);
    assert_int_equal(l.damaged, 1);
    expect_damaged_miss(c, &key, "a FIFO; removed");
    assert_int_not_equal(access(path, F_OK), 0);

    /* A link to an endless device. */
    assert_int_equal(symlink("/dev/zero", path), 0);
    expect_damaged_miss(c, &key, "a symbolic link; removed");
    struct stat st;
    assert_int_not_equal(lstat(path, &st), 0);

    /* Larger than any entry may be (sparse: costs no disk). */
    put_entry(c, &key);
    assert_int_equal(truncate(path, (off_t)MG_CACHE_ENTRY_MAX + 1), 0);
    expect_damaged_miss(c, &key, "over the");

    /* An empty directory is removed; one with contents is left, and a put then fails cleanly. */
    assert_int_equal(mkdir(path, 0755), 0);
    expect_damaged_miss(c, &key, "a directory; removed");
    tu_write_file(path, "someone", "x", NULL, 0);
    expect_damaged_miss(c, &key, "a directory; left in place");
    mg_cache_entry e = {.meta = "", .log = "", .cubin = (void *)cubin_bytes, .cubin_size = sizeof cubin_bytes};
    assert_int_equal(mg_cache_put(c, &key, &e, &d), MG_E_CACHE);
    assert_non_null(strstr(d.msg, key.hex));
    assert_int_equal(tu_count_files(fan, ".tmp"), 0);
    skip_log skips = {0};
    mg_cache_clean_stats cs;
    assert_int_equal(mg_cache_clean(c, &cs, log_skip, &skips, &d), MG_OK);
    assert_int_equal(cs.skipped, 1);
    assert_true(skip_logged(&skips, "a directory with contents"));
    tu_rm_rf(path);

    /* A fan-out that is a file, then one that is a link: misses, and the next put repairs. */
    tu_rm_rf(fan);
    touch(fan);
    expect_damaged_miss(c, &key, "not a directory");
    put_entry(c, &key);
    expect_hit(c, &key);
    tu_rm_rf(fan);
    char outside[512];
    tu_mkdtemp(outside, sizeof outside, "cache-special-out");
    assert_int_equal(symlink(outside, fan), 0);
    expect_damaged_miss(c, &key, "not a directory");
    put_entry(c, &key);
    expect_hit(c, &key);
    assert_int_equal(tu_count_files(outside, ""), 0);   /* nothing went through the link */
    tu_rm_rf(outside);

    /* A layout directory that is a file is replaced when the cache opens. */
    mg_cache_close(c);
    char v1[700];
    snprintf(v1, sizeof v1, "%s/v1", dir);
    tu_rm_rf(v1);
    touch(v1);
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    put_entry(c, &key);
    expect_hit(c, &key);
    mg_cache_close(c);
    tu_rm_rf(dir);
}

/* Runs check(dir, key) in a child process as another user when root (root may remove anything);
 * its exit status, or 5 when that user cannot reach the directory above dir. */
static int as_other_user(int (*check)(const char *, const mg_cache_key *), const char *dir,
                         const mg_cache_key *key)
{
    char parent[600];
    snprintf(parent, sizeof parent, "%s", dir);
    *strrchr(parent, '/') = 0;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && setuid(65534) != 0) _exit(3);
        if (access(parent, X_OK) != 0) _exit(5);   /* TMPDIR is private to its owner */
        _exit(check(dir, key));
    }
    int status = -1;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* A cache the user may read but not change: clean fails and says why, lookups still hit, a put
 * says why it cannot. */
static int check_read_only(const char *dir, const mg_cache_key *key)
{
    mg_cache *c = NULL;
    mg_diag d;
    if (mg_cache_open(dir, &c, &d) != MG_OK) return 4;
    mg_cache_clean_stats cs;
    mg_status st = mg_cache_clean(c, &cs, NULL, NULL, &d);
    /* The entry it may not remove, and a fan-out it may not read. */
    int ok = st == MG_E_CACHE && cs.failed == 2 && cs.removed == 0 &&
             strstr(d.msg, "could not remove 2 of 2") && strstr(d.msg, "Permission denied");
    if (!ok) fprintf(stderr, "clean: status %d failed %d: %s\n", st, cs.failed, d.msg);
    int found = 0;
    mg_cache_entry e = {0};
    ok = ok && mg_cache_get(c, key, &e, &found, NULL, &d) == MG_OK && found;
    mg_cache_entry_free(&e);
    mg_cache_key other;
    make_key("another", &other);
    mg_cache_entry pe = {.cubin = (void *)cubin_bytes, .cubin_size = sizeof cubin_bytes};
    ok = ok && mg_cache_put(c, &other, &pe, &d) == MG_E_CACHE;
    mg_cache_close(c);
    return ok ? 0 : 1;
}

/* A cache the user may not even read: it opens (every lookup misses), clean and ls fail. */
static int check_unreadable(const char *dir, const mg_cache_key *key)
{
    mg_cache *c = NULL;
    mg_diag d;
    if (mg_cache_open(dir, &c, &d) != MG_OK) return 4;
    mg_cache_clean_stats cs;
    int found = 1;
    mg_cache_entry e = {0};
    int ok = mg_cache_clean(c, &cs, NULL, NULL, &d) == MG_E_CACHE && strstr(d.msg, "cannot open") &&
             mg_cache_list(c, collect, NULL, &(listing){0}, &d) == MG_E_CACHE &&
             mg_cache_get(c, key, &e, &found, NULL, &d) == MG_OK && !found;
    if (!ok) fprintf(stderr, "unreadable cache: %s\n", d.msg);
    mg_cache_close(c);
    return ok ? 0 : 1;
}

static void test_clean_of_read_only_cache_fails(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-ro");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_cache_key key;
    make_key("read-only", &key);
    put_entry(c, &key);
    mg_cache_close(c);
    char fan[700], v1[600], closed[700];
    snprintf(v1, sizeof v1, "%s/v1", dir);
    snprintf(fan, sizeof fan, "%s/%.2s", v1, key.hex);
    snprintf(closed, sizeof closed, "%s/%s", v1, key.hex[0] == '0' ? "ff" : "00");
    assert_int_equal(mkdir(closed, 0755), 0);
    assert_int_equal(chmod(dir, 0755), 0);   /* mkdtemp made it private */
    assert_int_equal(chmod(fan, 0555), 0);
    assert_int_equal(chmod(closed, geteuid() == 0 ? 0700 : 0), 0);
    assert_int_equal(chmod(v1, 0555), 0);
    int read_only = as_other_user(check_read_only, dir, &key);
    assert_int_equal(chmod(dir, geteuid() == 0 ? 0700 : 0), 0);
    int unreadable = as_other_user(check_unreadable, dir, &key);
    chmod(dir, 0755);
    chmod(fan, 0755);
    chmod(closed, 0755);
    chmod(v1, 0755);
    tu_rm_rf(dir);
    if (read_only == 5) skip();   /* no other user can reach the test directory */
    assert_int_equal(read_only, 0);
    assert_int_equal(unreadable, 0);
}

static void fixture_variant(mg_template **t, mg_variant *v);

/* A builder of the fixture through NVRTC: never fails, and the cache always keeps its kernel. */
static int stress_build(const char *dir, const mg_variant *v)
{
    mg_builder *b = NULL;
    mg_diag d;
    mg_build_stats stats;
    mg_status st = mg_builder_open(dir, &b, &d);
    if (st == MG_OK) st = mg_builder_build(b, v, 1, NULL, NULL, &stats, &d);
    mg_builder_close(b);
    if (st != MG_OK || stats.failed || stats.unsaved || stats.damaged) {
        fprintf(stderr, "build: failed %d unsaved %d damaged %d: %s\n", stats.failed,
                stats.unsaved, stats.damaged, d.msg);
        return 1;
    }
    return 0;
}

/* Processes putting, reading, listing, cleaning and building through one cache at once, for a
 * bounded time: every put, lookup and build succeeds (a lookup may miss, never see damage; a
 * build may recompile), and clean never takes a running writer's temporary file. */
static int stress_worker(const char *dir, int role, const mg_variant *fixture, double until)
{
    mg_cache *c = NULL;
    mg_diag d;
    if (mg_cache_open(dir, &c, &d) != MG_OK) return 2;
    int ops = 0, bad = 0;
    char source[32];
    while (!bad && tu_now() < until) {
        if (role == 4) {
            bad = stress_build(dir, fixture);
        } else if (role < 2) {
            mg_cache_key key;
            snprintf(source, sizeof source, "stress %d", ops % 48);
            make_key(source, &key);
            mg_cache_entry e = {.meta = "template=stress\n", .log = "", .cubin = (void *)cubin_bytes,
                                .cubin_size = sizeof cubin_bytes};
            if (mg_cache_put(c, &key, &e, &d) != MG_OK) {
                fprintf(stderr, "put: %s\n", d.msg);
                bad = 1;
            }
            mg_cache_entry got = {0};
            int found = 0, damaged = 0;
            if (mg_cache_get(c, &key, &got, &found, &damaged, &d) != MG_OK || damaged) {
                fprintf(stderr, "get: damaged %d: %s\n", damaged, d.msg);
                bad = 1;
            }
            if (found && (got.cubin_size != sizeof cubin_bytes ||
                          memcmp(got.cubin, cubin_bytes, sizeof cubin_bytes))) bad = 1;
            mg_cache_entry_free(&got);
        } else if (role == 2) {
            mg_cache_clean_stats cs;
            if (mg_cache_clean(c, &cs, NULL, NULL, &d) != MG_OK || cs.failed || cs.skipped) {
                fprintf(stderr, "clean: failed %d skipped %d: %s\n", cs.failed, cs.skipped, d.msg);
                bad = 1;
            }
        } else {
            listing l;
            memset(&l, 0, sizeof l);
            if (mg_cache_list(c, collect, NULL, &l, &d) != MG_OK || l.damaged) {
                fprintf(stderr, "ls: %d damaged: %s\n", l.damaged, d.msg);
                bad = 1;
            }
        }
        ops++;
    }
    mg_cache_close(c);
    if (!bad) fprintf(stderr, "stress role %d: %d operations\n", role, ops);
    return bad || ops == 0;
}

static void test_concurrent_clean_ls_writers_and_builds(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-stress");
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_template *t;
    mg_variant fixture;
    fixture_variant(&t, &fixture);
    double until = tu_now() + 3.0;
    enum { WORKERS = 5 };   /* two writers, a cleaner, a lister, a builder */
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        fflush(NULL);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) _exit(stress_worker(dir, i, &fixture, until));
    }
    for (int i = 0; i < WORKERS; i++) {
        int status = -1;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        if (!WIFEXITED(status) || WEXITSTATUS(status)) print_error("worker %d: status %d\n", i, status);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    /* Every writer has exited: no temporary file may remain, and a clean leaves nothing. */
    assert_int_equal(tu_count_files(dir, ".tmp"), 0);
    mg_cache_clean_stats cs;
    assert_int_equal(mg_cache_clean(c, &cs, NULL, NULL, &d), MG_OK);
    assert_int_equal(tu_count_files(dir, ""), 0);
    mg_cache_close(c);
    mg_rendered_free(&fixture.rendered);
    mg_template_free(t);
    tu_rm_rf(dir);
}

/* ---- builds through the cache ---------------------------------------------------------------- */

static const char small_spec[] =
    "name: cachetest\nhead_dim: 128\nblock_size: 128\ntop_k: 8\narchs: [sm_80, sm_90a]\n";

static void expand_small(mg_template_set **set, mg_variant **v, int *n)
{
    mg_diag d = {{0}};
    mg_spec s;
    assert_int_equal(mg_spec_parse(small_spec, strlen(small_spec), "cachetest.yaml", &s, &d), MG_OK);
    mg_status st = mg_template_set_open(NULL, set, &d);
    if (st == MG_OK) st = mg_variants_expand(*set, &s, NULL, 0, v, n, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    assert_int_equal(st, MG_OK);
    assert_true(*n >= 2);
}

static void test_rebuild_is_all_hits_and_fast(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-rebuild");
    mg_template_set *set;
    mg_variant *v;
    int n;
    expand_small(&set, &v, &n);
    mg_builder *b = NULL;
    mg_diag d;
    assert_int_equal(mg_builder_open(dir, &b, &d), MG_OK);
    mg_build_stats first, second;
    double t0 = tu_now();
    assert_int_equal(mg_builder_build(b, v, n, NULL, NULL, &first, &d), MG_OK);
    double t1 = tu_now();
    assert_int_equal(first.misses, n);
    assert_int_equal(first.hits, 0);
    mg_build_result *res = calloc((size_t)n, sizeof *res);
    assert_int_equal(mg_builder_build(b, v, n, NULL, res, &second, &d), MG_OK);
    double t2 = tu_now();
    assert_int_equal(second.hits, n);
    assert_int_equal(second.misses, 0);
    assert_int_equal(second.damaged, 0);
    for (int i = 0; i < n; i++) {
        assert_true(res[i].hit);
        assert_true(res[i].entry.cubin_size > 0);
    }
    print_message("first build %.3f s, second %.3f s (%d variants)\n", t1 - t0, t2 - t1, n);
    assert_true(t2 - t1 < (t1 - t0) / 3);
    assert_true(second.seconds < first.seconds / 3);

    /* Damage one entry: the next build rebuilds just that one and says so. */
    listing l = list_cache(mg_builder_cache(b));
    assert_int_equal(l.n, n);
    truncate_by_one(l.path[0]);
    mg_build_stats third;
    assert_int_equal(mg_builder_build(b, v, n, NULL, NULL, &third, &d), MG_OK);
    assert_int_equal(third.damaged, 1);
    assert_int_equal(third.misses, 1);
    assert_int_equal(third.hits, n - 1);
    assert_int_equal(list_cache(mg_builder_cache(b)).valid, n);

    mg_build_results_free(res, n);
    mg_builder_close(b);
    mg_variants_free(v, n);
    mg_template_set_free(set);
    tu_rm_rf(dir);
}

static void test_concurrent_builders_share_a_cache(void **state)
{
    (void)state;
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-conc");
    mg_template_set *set;
    mg_variant *v;
    int n;
    expand_small(&set, &v, &n);

    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pids[4];
    for (int i = 0; i < 4; i++) {
        fflush(NULL);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(go[1]);
            char c;
            (void)!read(go[0], &c, 1);  /* returns 0 when the parent closes: all start at once */
            mg_builder *b = NULL;
            mg_diag d;
            mg_build_stats stats;
            mg_build_options opts = {.jobs = 2};
            mg_status st = mg_builder_open(dir, &b, &d);
            if (st == MG_OK) st = mg_builder_build(b, v, n, &opts, NULL, &stats, &d);
            if (st != MG_OK) fprintf(stderr, "child %d: %s\n", i, d.msg);
            _exit(st == MG_OK && stats.failed == 0 && stats.hits + stats.misses == n ? 0 : 1);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int i = 0; i < 4; i++) {
        int status = -1;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    mg_cache *c = NULL;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    listing l = list_cache(c);
    assert_int_equal(l.n, n);
    assert_int_equal(l.valid, n);
    assert_int_equal(tu_count_files(dir, ".tmp"), 0);
    assert_int_equal(tu_count_files(dir, ""), n);
    mg_cache_close(c);

    /* And a later builder finds them all. */
    mg_builder *b = NULL;
    mg_build_stats stats;
    assert_int_equal(mg_builder_open(dir, &b, &d), MG_OK);
    assert_int_equal(mg_builder_build(b, v, n, NULL, NULL, &stats, &d), MG_OK);
    assert_int_equal(stats.hits, n);
    mg_builder_close(b);
    mg_variants_free(v, n);
    mg_template_set_free(set);
    tu_rm_rf(dir);
}

/* What is compiled decides the key, not where the spec or the templates were found. */
static void test_keys_ignore_path_spelling(void **state)
{
    (void)state;
    char dir[512], spec_a[700], spec_b[800], tpl_a[700], tpl_b[800];
    tu_mkdtemp(dir, sizeof dir, "cache-spelling");
    tu_write_file(dir, "s.yaml", small_spec, spec_a, sizeof spec_a);
    snprintf(spec_b, sizeof spec_b, "%s/./s.yaml", dir);
    snprintf(tpl_a, sizeof tpl_a, "%s/templates", tu_repo_root());
    snprintf(tpl_b, sizeof tpl_b, "%s/./templates/", tu_repo_root());
    const char *specs[2] = {spec_a, spec_b}, *tpls[2] = {tpl_a, tpl_b};
    mg_variant *v[2];
    int n[2];
    mg_template_set *set[2];
    mg_diag d;
    for (int i = 0; i < 2; i++) {
        mg_spec s;
        assert_int_equal(mg_spec_load(specs[i], &s, &d), MG_OK);
        mg_status st = mg_template_set_open(tpls[i], &set[i], &d);
        if (st == MG_OK) st = mg_variants_expand(set[i], &s, NULL, 0, &v[i], &n[i], &d);
        if (st != MG_OK) print_error("%s\n", d.msg);
        assert_int_equal(st, MG_OK);
    }
    assert_int_equal(n[0], n[1]);
    for (int j = 0; j < n[0]; j++) {
        mg_cache_key k0, k1;
        mg_variant_key(&v[0][j], &k0);
        mg_variant_key(&v[1][j], &k1);
        if (strcmp(k0.hex, k1.hex))
            print_error("%s: the source differs by spelling:\n%.300s\n---\n%.300s\n", v[0][j].id,
                        v[0][j].rendered.source, v[1][j].rendered.source);
        assert_string_equal(k0.hex, k1.hex);
        /* The first line still names template and spec. */
        assert_non_null(strstr(v[0][j].rendered.source, "spec cachetest,"));
        assert_non_null(strstr(v[0][j].rendered.source, "/templates/"));
    }
    for (int i = 0; i < 2; i++) {
        mg_variants_free(v[i], n[i]);
        mg_template_set_free(set[i]);
    }
    tu_rm_rf(dir);
}

/* One variant of a trivial template, quick to compile. */
static void fixture_variant(mg_template **t, mg_variant *v)
{
    static const char tpl[] = "%! function kernels() return { main = 'fixture_k' } end\n"
                              "extern \"C\" __global__ void fixture_k(int *x) { x[0] = 1; }\n";
    static const char spec_text[] = "name: fix\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n";
    mg_diag d;
    mg_spec spec;
    assert_int_equal(mg_spec_parse(spec_text, strlen(spec_text), "fix.yaml", &spec, &d), MG_OK);
    assert_int_equal(mg_template_from_text("fixture.cu.tpl", tpl, strlen(tpl), t, &d), MG_OK);
    memset(v, 0, sizeof *v);
    v->tpl = *t;
    snprintf(v->arch, sizeof v->arch, "sm_80");
    snprintf(v->id, sizeof v->id, "fixture/sm_80/default");
    assert_int_equal(mg_template_render(*t, &spec, "sm_80", &v->point, &v->rendered, &d), MG_OK);
}

/* Builds the fixture into dir: 1 when it succeeded with a kernel; its warning into warning. */
static int build_fixture(const char *dir, const mg_variant *v, mg_build_stats *stats,
                         char *warning, size_t size)
{
    mg_builder *b = NULL;
    mg_diag d;
    mg_status st = mg_builder_open(dir, &b, &d);
    mg_build_result *res = calloc(1, sizeof *res);
    if (st == MG_OK) st = mg_builder_build(b, v, 1, NULL, res, stats, &d);
    if (st != MG_OK) print_error("%s\n", d.msg);
    int ok = st == MG_OK && res[0].entry.cubin && res[0].entry.cubin_size > 0;
    snprintf(warning, size, "%s", res[0].warning ? res[0].warning : "");
    mg_build_results_free(res, 1);
    mg_builder_close(b);
    return ok;
}

/* A compiled kernel the cache cannot keep (a directory where its entry belongs, a full disk)
 * is used anyway, with a warning; a damaged fan-out is repaired and the entry kept. */
static void test_builder_uses_kernels_the_cache_cannot_keep(void **state)
{
    (void)state;
    mg_template *t;
    mg_variant v;
    fixture_variant(&t, &v);
    mg_cache_key key;
    mg_variant_key(&v, &key);
    char dir[512], entry[800], fan[700], warning[4096];
    tu_mkdtemp(dir, sizeof dir, "cache-keep");
    snprintf(fan, sizeof fan, "%s/v1/%.2s", dir, key.hex);
    snprintf(entry, sizeof entry, "%s/%s.mgc", fan, key.hex);

    /* A directory with contents at the entry's path. */
    tu_write_file(dir, "v1", "", NULL, 0);   /* replaced: the layout is the cache's */
    mg_build_stats stats;
    mg_cache *c;
    mg_diag d;
    assert_int_equal(mg_cache_open(dir, &c, &d), MG_OK);
    mg_cache_close(c);
    mkdir(fan, 0755);
    tu_write_file(entry, "someone", "x", NULL, 0);
    assert_true(build_fixture(dir, &v, &stats, warning, sizeof warning));
    assert_int_equal(stats.misses, 1);
    assert_int_equal(stats.failed, 0);
    assert_int_equal(stats.unsaved, 1);
    assert_int_equal(stats.damaged, 1);
    assert_non_null(strstr(warning, "a directory; left in place"));
    assert_non_null(strstr(warning, "cannot write cache entry"));
    assert_non_null(strstr(warning, "using the compiled kernel"));
    assert_int_equal(tu_count_files(dir, ".tmp"), 0);
    tu_rm_rf(fan);

    /* A fan-out that is a file: repaired, the entry kept, the next build a hit. */
    touch(fan);
    assert_true(build_fixture(dir, &v, &stats, warning, sizeof warning));
    assert_int_equal(stats.unsaved, 0);
    assert_int_equal(stats.damaged, 1);
    assert_true(build_fixture(dir, &v, &stats, warning, sizeof warning));
    assert_int_equal(stats.hits, 1);
    assert_string_equal(warning, "");
    tu_rm_rf(dir);

    /* A full disk, simulated by a file size limit (root ignores permissions, not this). */
    tu_mkdtemp(dir, sizeof dir, "cache-full");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit small = {64, 64};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &small) != 0) _exit(3);
        int ok = build_fixture(dir, &v, &stats, warning, sizeof warning) && stats.unsaved == 1 &&
                 stats.failed == 0 && strstr(warning, "cannot write cache entry");
        if (!ok) fprintf(stderr, "full cache: unsaved %d failed %d warning '%s'\n", stats.unsaved,
                         stats.failed, warning);
        _exit(ok ? 0 : 1);
    }
    int status = -1;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(tu_count_files(dir, ".tmp"), 0);
    assert_int_equal(tu_count_files(dir, ".mgc"), 0);
    tu_rm_rf(dir);
    mg_rendered_free(&v.rendered);
    mg_template_free(t);
}

/* ---- location -------------------------------------------------------------------------------- */

static char *saved_env(const char *name)
{
    const char *v = getenv(name);
    return v ? strdup(v) : NULL;
}

static void restore_env(const char *name, char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
    free(value);
}

static void test_default_dir_resolution(void **state)
{
    (void)state;
    char *cache = saved_env("MOBAGEN_CACHE_DIR"), *xdg = saved_env("XDG_CACHE_HOME"),
         *home = saved_env("HOME");
    char buf[1024];
    mg_diag d = {{0}};
    mg_status s1, s2, s3, s4, s5, s6;
    char r1[1024], r2[1024], r3[1024], r4[1024], r5[1024];

    setenv("MOBAGEN_CACHE_DIR", "/c/explicit", 1);
    setenv("XDG_CACHE_HOME", "/x", 1);
    setenv("HOME", "/h", 1);
    s1 = mg_cache_default_dir(r1, sizeof r1, &d);
    unsetenv("MOBAGEN_CACHE_DIR");
    s2 = mg_cache_default_dir(r2, sizeof r2, &d);
    setenv("MOBAGEN_CACHE_DIR", "", 1);          /* empty counts as unset */
    s3 = mg_cache_default_dir(r3, sizeof r3, &d);
    unsetenv("XDG_CACHE_HOME");
    s4 = mg_cache_default_dir(r4, sizeof r4, &d);
    setenv("XDG_CACHE_HOME", "", 1);
    s5 = mg_cache_default_dir(r5, sizeof r5, &d);
    unsetenv("HOME");
    unsetenv("XDG_CACHE_HOME");
    unsetenv("MOBAGEN_CACHE_DIR");
    mg_cache *none = (mg_cache *)1;
    s6 = mg_cache_default_dir(buf, sizeof buf, &d);
    mg_diag d6 = d;
    mg_status s7 = mg_cache_open(NULL, &none, &d);

    /* mg_cache_open(NULL) uses and creates the resolved directory. */
    char dir[512];
    tu_mkdtemp(dir, sizeof dir, "cache-env");
    char want[600];
    snprintf(want, sizeof want, "%s/nested/cache", dir);
    setenv("MOBAGEN_CACHE_DIR", want, 1);
    mg_cache *c = NULL;
    mg_status s8 = mg_cache_open(NULL, &c, &d);
    restore_env("MOBAGEN_CACHE_DIR", cache);
    restore_env("XDG_CACHE_HOME", xdg);
    restore_env("HOME", home);

    assert_int_equal(s1, MG_OK);
    assert_string_equal(r1, "/c/explicit");
    assert_int_equal(s2, MG_OK);
    assert_string_equal(r2, "/x/mobagen");
    assert_int_equal(s3, MG_OK);
    assert_string_equal(r3, "/x/mobagen");
    assert_int_equal(s4, MG_OK);
    assert_string_equal(r4, "/h/.cache/mobagen");
    assert_int_equal(s5, MG_OK);
    assert_string_equal(r5, "/h/.cache/mobagen");
    assert_int_equal(s6, MG_E_CACHE);
    assert_non_null(strstr(d6.msg, "MOBAGEN_CACHE_DIR"));
    assert_int_equal(s7, MG_E_CACHE);
    assert_null(none);
    assert_int_equal(s8, MG_OK);
    assert_string_equal(mg_cache_dir(c), want);
    struct stat st;
    char layout[700];
    snprintf(layout, sizeof layout, "%s/v1", want);
    assert_int_equal(stat(layout, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    mg_cache_close(c);

    /* A cache path that is a file is refused. */
    char file[700];
    tu_write_file(dir, "plainfile", "x", file, sizeof file);
    assert_int_equal(mg_cache_open(file, &c, &d), MG_E_CACHE);
    assert_null(c);
    tu_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_covers_every_input),
        cmocka_unit_test(test_key_ignores_kernel_order),
        cmocka_unit_test(test_rendered_kernels_in_role_order),
        cmocka_unit_test(test_put_get_roundtrip_and_miss),
        cmocka_unit_test(test_damaged_entries_detected_and_removed),
        cmocka_unit_test(test_clean_removes_everything),
        cmocka_unit_test(test_clean_touches_only_its_own_names),
        cmocka_unit_test(test_special_files_are_damage),
        cmocka_unit_test(test_clean_of_read_only_cache_fails),
        cmocka_unit_test(test_concurrent_clean_ls_writers_and_builds),
        cmocka_unit_test(test_concurrent_builders_share_a_cache),
        cmocka_unit_test(test_rebuild_is_all_hits_and_fast),
        cmocka_unit_test(test_keys_ignore_path_spelling),
        cmocka_unit_test(test_builder_uses_kernels_the_cache_cannot_keep),
        cmocka_unit_test(test_default_dir_resolution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
