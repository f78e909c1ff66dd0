/* The content-addressed kernel cache: keys, round trips, damage detection, hits on a rebuild,
 * concurrent builders sharing one directory, cleaning, and where the cache lives. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
        cmocka_unit_test(test_concurrent_builders_share_a_cache),
        cmocka_unit_test(test_rebuild_is_all_hits_and_fast),
        cmocka_unit_test(test_default_dir_resolution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
