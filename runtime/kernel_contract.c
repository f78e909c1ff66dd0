#include "kernel_contract.h"

#include <string.h>

const mg_launch_key mg_launch_keys[MG_N_LAUNCH_KEYS] = {
    [MG_LAUNCH_THREADS] = {"threads", 0, 1, 1024},
    [MG_LAUNCH_SMEM] = {"smem", 0, 0, 1 << 20},
    [MG_LAUNCH_ROWS] = {"rows", 1, 1, 1024},
    [MG_LAUNCH_CTAS_PER_SM] = {"ctas_per_sm", 1, 1, 64},
    [MG_LAUNCH_LIST_ROWS] = {"list_rows", 128, 1, 1024},
};

static const char *const block_list_roles[] = {MG_ROLE_COUNT, MG_ROLE_SCAN_REDUCE, MG_ROLE_SCAN_TOP,
                                               MG_ROLE_SCAN_DOWN, MG_ROLE_SCATTER, MG_ROLE_TILES_MAX,
                                               MG_ROLE_FINALIZE};
#define N_BLOCK_LIST_ROLES ((int)(sizeof block_list_roles / sizeof block_list_roles[0]))
static const char *const bwd_roles[] = {MG_ROLE_BWD_COUNT, MG_ROLE_BWD_ALLOC,
                                        MG_ROLE_BWD_SCATTER, MG_ROLE_BWD_SORT, MG_ROLE_BWD_DQ,
                                        MG_ROLE_BWD_KCONV, MG_ROLE_BWD_DW};
#define N_BWD_ROLES ((int)(sizeof bwd_roles / sizeof bwd_roles[0]))

static int has_role(const mg_rendered *r, const char *role)
{
    for (int i = 0; i < r->n_kernels; i++)
        if (!strcmp(r->kernels[i].role, role)) return 1;
    return 0;
}

static int role_in(const char *role, const char *const *set, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(set[i], role)) return 1;
    return 0;
}

/* A group of roles that come all together or not at all. */
static mg_status check_group(const char *variant_id, const mg_rendered *r, const char *const *set, int n,
                             int present, const char *what, mg_diag *diag)
{
    if (present && present != n)
        for (int i = 0; i < n; i++)
            if (!has_role(r, set[i]))
                return mg_fail(diag, MG_E_TEMPLATE, "%s: %s needs a '%s' kernel too", variant_id, what,
                               set[i]);
    return MG_OK;
}

mg_status mg_contract_check(const char *variant_id, const mg_rendered *r, mg_diag *diag)
{
    int block_list = 0, bwd = 0;
    for (int i = 0; i < r->n_kernels; i++) {
        const char *role = r->kernels[i].role;
        if (role_in(role, block_list_roles, N_BLOCK_LIST_ROLES)) {
            block_list++;
        } else if (role_in(role, bwd_roles, N_BWD_ROLES)) {
            bwd++;
        } else if (strcmp(role, MG_ROLE_MAIN)) {
            return mg_fail(diag, MG_E_TEMPLATE, "%s: kernel role '%s' is not one the runtime launches "
                           "(runtime/kernel_contract.h)", variant_id, role);
        }
    }
    if (!has_role(r, MG_ROLE_MAIN))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: kernels() has no '%s' kernel", variant_id, MG_ROLE_MAIN);
    mg_status st = check_group(variant_id, r, block_list_roles, N_BLOCK_LIST_ROLES, block_list,
                               "a block-list attention", diag);
    if (st == MG_OK) st = check_group(variant_id, r, bwd_roles, N_BWD_ROLES, bwd, "a backward", diag);
    if (st != MG_OK) return st;
    for (int i = 0; i < r->n_launch; i++) {
        const mg_launch_key *key = NULL;
        for (int k = 0; k < MG_N_LAUNCH_KEYS && !key; k++)
            if (!strcmp(mg_launch_keys[k].name, r->launch[i].name)) key = &mg_launch_keys[k];
        if (!key)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: launch() value '%s' is not one the runtime reads "
                           "(runtime/kernel_contract.h)", variant_id, r->launch[i].name);
    }
    for (int k = 0; k < MG_N_LAUNCH_KEYS; k++) {
        long long v = mg_contract_launch(r, k);
        if (v < mg_launch_keys[k].lo || v > mg_launch_keys[k].hi)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: launch() gave %s = %lld; the runtime takes %lld..%lld",
                           variant_id, mg_launch_keys[k].name, v, mg_launch_keys[k].lo, mg_launch_keys[k].hi);
    }
    return MG_OK;
}

long long mg_contract_launch(const mg_rendered *r, int key)
{
    return mg_rendered_launch(r, mg_launch_keys[key].name, mg_launch_keys[key].def);
}
