/* The runtime-to-template contract (runtime/kernel_contract.h): every variant the shipped
 * templates expand to, for every arch the generator knows and a range of specs, keeps it; and
 * each kind of breach is refused with a message that names the variant and the breach. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "kernel_contract.h"
#include "spec.h"
#include "variants.h"

static void test_shipped_templates_keep_the_contract(void **state)
{
    (void)state;
    static const char *const specs[] = {
        "name: a\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n",
        "name: b\nhead_dim: 64\nblock_size: 16\ntop_k: 64\ncausal: false\ndtype: fp16\n",
        "name: c\nhead_dim: 128\nblock_size: 32\ntop_k: 32\nconv_width: 3\ngqa_group: 2\n",
        "name: d\nhead_dim: 256\nblock_size: 512\ntop_k: 2\nconv_width: 5\n",
        "name: e\nhead_dim: 32\nblock_size: 48\ntop_k: 3\n",
    };
    static const char *const archs[] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"};
    mg_diag d = {{0}};
    mg_template_set *set = NULL;
    assert_int_equal(mg_template_set_open(NULL, &set, &d), MG_OK);
    int checked = 0, block_lists = 0, decode = 0, backward = 0;
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        mg_spec spec;
        if (mg_spec_parse(specs[i], strlen(specs[i]), "contract.yaml", &spec, &d) != MG_OK)
            fail_msg("%s", d.msg);
        mg_variant *v = NULL;
        int n = 0;
        if (mg_variants_expand(set, &spec, archs, 5, &v, &n, &d) != MG_OK) fail_msg("%s", d.msg);
        for (int j = 0; j < n; j++, checked++) {
            mg_status st = mg_contract_check(v[j].id, &v[j].rendered, &d);
            if (st != MG_OK) print_error("%s\n", d.msg);
            assert_int_equal(st, MG_OK);
            block_lists += mg_rendered_kernel(&v[j].rendered, MG_ROLE_SCATTER) != NULL;
            decode += mg_rendered_kernel(&v[j].rendered, MG_ROLE_DECODE_ROUTE) != NULL;
            backward += mg_rendered_kernel(&v[j].rendered, MG_ROLE_BWD_SORT) != NULL;
        }
        mg_variants_free(v, n);
    }
    mg_template_set_free(set);
    assert_true(checked > 50);
    assert_true(block_lists > 0);   /* the block-list attention was among them */
    assert_true(decode > 0);        /* and the decode template (stubs for specs it does not serve) */
    assert_true(backward >= 5 * 5);   /* a backward for every spec and arch */
}

static mg_rendered rendered(const char *const *roles, int n_roles, const char *const *keys,
                            const long long *values, int n_keys)
{
    mg_rendered r;
    memset(&r, 0, sizeof r);
    for (int i = 0; i < n_roles; i++) snprintf(r.kernels[i].role, sizeof r.kernels[i].role, "%s", roles[i]);
    r.n_kernels = n_roles;
    for (int i = 0; i < n_keys; i++) {
        snprintf(r.launch[i].name, sizeof r.launch[i].name, "%s", keys[i]);
        r.launch[i].value = values[i];
    }
    r.n_launch = n_keys;
    return r;
}

static void expect_breach(const mg_rendered *r, const char *phrase)
{
    mg_diag d = {{0}};
    assert_int_equal(mg_contract_check("t/sm_80/x=1", r, &d), MG_E_TEMPLATE);
    if (!strstr(d.msg, phrase) || !strstr(d.msg, "t/sm_80/x=1"))
        print_error("message '%s' lacks '%s'\n", d.msg, phrase);
    assert_non_null(strstr(d.msg, phrase));
    assert_non_null(strstr(d.msg, "t/sm_80/x=1"));
}

static void test_breaches_are_refused(void **state)
{
    (void)state;
    const char *main_only[] = {"main"}, *threads[] = {"threads"};
    const long long t128[] = {128};
    mg_rendered ok = rendered(main_only, 1, threads, t128, 1);
    mg_diag d = {{0}};
    assert_int_equal(mg_contract_check("t/sm_80/x=1", &ok, &d), MG_OK);
    assert_int_equal(mg_contract_launch(&ok, MG_LAUNCH_THREADS), 128);
    assert_int_equal(mg_contract_launch(&ok, MG_LAUNCH_LIST_ROWS), 128);   /* the default */
    assert_int_equal(mg_contract_launch(&ok, MG_LAUNCH_ROWS), 1);

    const char *unknown_role[] = {"main", "prep"};
    mg_rendered r = rendered(unknown_role, 2, threads, t128, 1);
    expect_breach(&r, "kernel role 'prep'");
    const char *no_main[] = {"count"};
    r = rendered(no_main, 1, threads, t128, 1);
    expect_breach(&r, "no 'main' kernel");
    const char *half[] = {"main", "count", "scatter"};
    r = rendered(half, 3, threads, t128, 1);
    expect_breach(&r, "needs a 'scan_reduce' kernel");
    const char *half_decode[] = {"main", "decode_route", "append"};
    r = rendered(half_decode, 3, threads, t128, 1);
    expect_breach(&r, "decode variant needs a 'decode_select' kernel");
    const char *half_bwd[] = {"main", "bwd_count", "bwd_alloc"};
    r = rendered(half_bwd, 3, threads, t128, 1);
    expect_breach(&r, "a backward needs a 'bwd_scatter' kernel");
    const char *keys[] = {"threads", "warps"};
    const long long values[] = {128, 4};
    r = rendered(main_only, 1, keys, values, 2);
    expect_breach(&r, "launch() value 'warps'");
    r = rendered(main_only, 1, NULL, NULL, 0);
    expect_breach(&r, "threads = 0");
    const char *smem[] = {"threads", "smem"};
    const long long too_much[] = {128, 1LL << 40};
    r = rendered(main_only, 1, smem, too_much, 2);
    expect_breach(&r, "smem = 1099511627776");
}

/* Routing impl 3's shape: at k = 32 the 256-row CTA (the default) takes 2 stages and 16-column
 * staging so that two CTAs share an sm_90a SM (233,472 B, 1 KB reserved per CTA); at k = 8 and 16,
 * where two fit already, it keeps 3 stages and 32 columns. */
static long long route_fast_smem(const char *yaml, const char *arch, const char **shape)
{
    mg_diag d = {{0}};
    mg_template_set *set = NULL;
    assert_int_equal(mg_template_set_open(NULL, &set, &d), MG_OK);
    mg_spec spec;
    if (mg_spec_parse(yaml, strlen(yaml), "shape.yaml", &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    const char *archs[] = {arch};
    mg_variant *v = NULL;
    int n = 0;
    if (mg_variants_expand(set, &spec, archs, 1, &v, &n, &d) != MG_OK) fail_msg("%s", d.msg);
    char id[128];
    snprintf(id, sizeof id, "route/%s/block_m=256,impl=3,tile_n=16,warp_rows=32", arch);
    long long smem = -1;
    *shape = NULL;
    for (int j = 0; j < n; j++)
        if (!strcmp(v[j].id, id)) {
            smem = mg_rendered_launch(&v[j].rendered, "smem", -1);
            *shape = strstr(v[j].rendered.source, "STAGES = 3, SCOLS = 32") ? "3/32"
                     : strstr(v[j].rendered.source, "STAGES = 2, SCOLS = 16") ? "2/16" : "?";
        }
    mg_variants_free(v, n);
    mg_template_set_free(set);
    if (smem < 0) fail_msg("no variant %s", id);
    return smem;
}

static void test_route_fast_shape(void **state)
{
    (void)state;
    const char *shape;
    const long long sm90_per_sm = 232448 + 1024;
    long long smem = route_fast_smem("name: a\nhead_dim: 128\nblock_size: 32\ntop_k: 32\n", "sm_90a", &shape);
    assert_string_equal(shape, "2/16");
    assert_true(2 * (smem + 1024) <= sm90_per_sm);
    smem = route_fast_smem("name: a\nhead_dim: 128\nblock_size: 128\ntop_k: 8\n", "sm_90a", &shape);
    assert_string_equal(shape, "3/32");
    assert_int_equal(smem, 3 * 2 * 32 * 128 * 2 + (7 * 8 + 33 * 4) * 256);
    smem = route_fast_smem("name: a\nhead_dim: 128\nblock_size: 64\ntop_k: 16\n", "sm_90a", &shape);
    assert_string_equal(shape, "3/32");
    assert_true(2 * (smem + 1024) <= sm90_per_sm);
    /* k = 64 fits one CTA either way: the 3-stage shape stays */
    route_fast_smem("name: a\nhead_dim: 128\nblock_size: 16\ntop_k: 64\n", "sm_90a", &shape);
    assert_string_equal(shape, "3/32");
    /* sm_80 (167,936 B an SM) fits one 256-row CTA at k = 32 either way */
    route_fast_smem("name: a\nhead_dim: 128\nblock_size: 32\ntop_k: 32\n", "sm_80", &shape);
    assert_string_equal(shape, "3/32");
}

/* Routing impl 4 (wgmma scores) exists on sm_90a only, comes first there (the runtime's default
 * is the first valid point), uses impl 3's shared memory and launch, and its source carries the
 * wgmma score section; other archs keep impl 3 first. */
static void test_route_wgmma_variant(void **state)
{
    (void)state;
    const char *yaml = "name: a\nhead_dim: 128\nblock_size: 32\ntop_k: 32\n";
    mg_diag d = {{0}};
    mg_template_set *set = NULL;
    assert_int_equal(mg_template_set_open(NULL, &set, &d), MG_OK);
    mg_spec spec;
    if (mg_spec_parse(yaml, strlen(yaml), "wg.yaml", &spec, &d) != MG_OK) fail_msg("%s", d.msg);
    const char *archs[] = {"sm_90a", "sm_80"};
    for (int a = 0; a < 2; a++) {
        mg_variant *v = NULL;
        int n = 0;
        if (mg_variants_expand(set, &spec, &archs[a], 1, &v, &n, &d) != MG_OK) fail_msg("%s", d.msg);
        const mg_variant *first = NULL, *impl3 = NULL, *impl4 = NULL;
        char id3[128], id4[128];
        snprintf(id3, sizeof id3, "route/%s/block_m=256,impl=3,tile_n=16,warp_rows=32", archs[a]);
        snprintf(id4, sizeof id4, "route/%s/block_m=256,impl=4,tile_n=16,warp_rows=32", archs[a]);
        for (int j = 0; j < n; j++) {
            if (strncmp(v[j].id, "route/", 6)) continue;
            if (!first) first = &v[j];
            if (!strcmp(v[j].id, id3)) impl3 = &v[j];
            if (!strcmp(v[j].id, id4)) impl4 = &v[j];
            if (a == 1) assert_null(strstr(v[j].id, "impl=4"));
        }
        assert_non_null(first);
        assert_non_null(impl3);
        if (a == 0) {
            assert_non_null(impl4);
            assert_ptr_equal(first, impl4);
            assert_int_equal(mg_rendered_launch(&impl4->rendered, "smem", -1), mg_rendered_launch(&impl3->rendered, "smem", -1));
            assert_int_equal(mg_rendered_launch(&impl4->rendered, "threads", -1), mg_rendered_launch(&impl3->rendered, "threads", -1));
            assert_non_null(strstr(impl4->rendered.source, "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16"));
            assert_null(strstr(impl3->rendered.source, "wgmma.mma_async"));
        } else {
            assert_ptr_equal(first, impl3);
        }
        mg_variants_free(v, n);
    }
    mg_template_set_free(set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_templates_keep_the_contract),
        cmocka_unit_test(test_breaches_are_refused),
        cmocka_unit_test(test_route_fast_shape),
        cmocka_unit_test(test_route_wgmma_variant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
