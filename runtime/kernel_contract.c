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
                                               MG_ROLE_SCAN_DOWN, MG_ROLE_SCATTER, MG_ROLE_FALLBACK,
                                               MG_ROLE_FINALIZE};
#define N_BLOCK_LIST_ROLES ((int)(sizeof block_list_roles / sizeof block_list_roles[0]))
static const char *const decode_roles[] = {MG_ROLE_DECODE_ROUTE, MG_ROLE_DECODE_SELECT,
                                           MG_ROLE_DECODE_MERGE, MG_ROLE_APPEND, MG_ROLE_APPEND_COMMIT,
                                           MG_ROLE_APPEND_STEP, MG_ROLE_TRUNCATE};
#define N_DECODE_ROLES ((int)(sizeof decode_roles / sizeof decode_roles[0]))
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

static int in_roles(const char *const *roles, int n, const char *role)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(roles[i], role)) return 1;
    return 0;
}

/* A group of roles comes whole or not at all: the name of the first one missing, or NULL. */
static const char *missing_role(const mg_rendered *r, const char *const *roles, int n, int present)
{
    if (present && present != n)
        for (int i = 0; i < n; i++)
            if (!has_role(r, roles[i])) return roles[i];
    return NULL;
}

mg_status mg_contract_check(const char *variant_id, const mg_rendered *r, mg_diag *diag)
{
    int block_list = 0, decode = 0, bwd = 0;
    for (int i = 0; i < r->n_kernels; i++) {
        const char *role = r->kernels[i].role;
        if (in_roles(block_list_roles, N_BLOCK_LIST_ROLES, role)) {
            block_list++;
        } else if (in_roles(decode_roles, N_DECODE_ROLES, role)) {
            decode++;
        } else if (in_roles(bwd_roles, N_BWD_ROLES, role)) {
            bwd++;
        } else if (strcmp(role, MG_ROLE_MAIN)) {
            return mg_fail(diag, MG_E_TEMPLATE, "%s: kernel role '%s' is not one the runtime launches "
                           "(runtime/kernel_contract.h)", variant_id, role);
        }
    }
    if (!has_role(r, MG_ROLE_MAIN))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: kernels() has no '%s' kernel", variant_id, MG_ROLE_MAIN);
    const char *missing = missing_role(r, block_list_roles, N_BLOCK_LIST_ROLES, block_list);
    if (missing)
        return mg_fail(diag, MG_E_TEMPLATE, "%s: a block-list attention needs a '%s' kernel too",
                       variant_id, missing);
    if ((missing = missing_role(r, decode_roles, N_DECODE_ROLES, decode)))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: a decode variant needs a '%s' kernel too", variant_id,
                       missing);
    if ((missing = missing_role(r, bwd_roles, N_BWD_ROLES, bwd)))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: a backward needs a '%s' kernel too", variant_id, missing);
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
