/* The runtime-to-template contract beside the parameter block (templates/fwd_params.cuh.tpl):
 * the kernel roles a variant may provide and the launch() values the runtime reads, with the
 * ranges it accepts. Written once here: fwd.c launches by these roles, op.c and the bundle
 * loader check every variant against this table before loading it, and test_nvrtc checks every
 * shipped template's manifest against it. */
#ifndef MOBAGEN_KERNEL_CONTRACT_H
#define MOBAGEN_KERNEL_CONTRACT_H

#include "status.h"
#include "template.h"

/* Every variant has a main kernel. */
#define MG_ROLE_MAIN "main"
/* The block-list attention (attn_fwd impl 2) has all of these besides main, or none. */
#define MG_ROLE_COUNT "count"
#define MG_ROLE_SCAN_REDUCE "scan_reduce"
#define MG_ROLE_SCAN_TOP "scan_top"
#define MG_ROLE_SCAN_DOWN "scan_down"
#define MG_ROLE_SCATTER "scatter"
#define MG_ROLE_FALLBACK "fallback"
#define MG_ROLE_FINALIZE "finalize"
/* The decode template (decode.cu.tpl, docs/decode.md) has all of these besides main (its
 * split-KV attention), and launch()'s rows is its routing chunk (centroid blocks per CTA). */
#define MG_ROLE_DECODE_ROUTE "decode_route"
#define MG_ROLE_DECODE_SELECT "decode_select"
#define MG_ROLE_DECODE_MERGE "decode_merge"
#define MG_ROLE_APPEND "append"
#define MG_ROLE_APPEND_COMMIT "append_commit"
#define MG_ROLE_TRUNCATE "truncate"
#define MG_ROLE_APPEND_STEP "append_step"
/* The backward (attn_bwd) has all of these besides main, or none. */
#define MG_ROLE_BWD_COUNT "bwd_count"
#define MG_ROLE_BWD_ALLOC "bwd_alloc"
#define MG_ROLE_BWD_SCATTER "bwd_scatter"
#define MG_ROLE_BWD_SORT "bwd_sort"
#define MG_ROLE_BWD_DQ "bwd_dq"
#define MG_ROLE_BWD_KCONV "bwd_kconv"
#define MG_ROLE_BWD_DW "bwd_dw"

/* The launch() values the runtime reads: default when a template leaves one out, and range. */
typedef struct mg_launch_key {
    const char *name;
    long long def, lo, hi;
} mg_launch_key;

enum { MG_LAUNCH_THREADS, MG_LAUNCH_SMEM, MG_LAUNCH_ROWS, MG_LAUNCH_CTAS_PER_SM, MG_LAUNCH_LIST_ROWS,
       MG_N_LAUNCH_KEYS };
extern const mg_launch_key mg_launch_keys[MG_N_LAUNCH_KEYS];

/* MG_OK when the variant's kernel roles and launch values keep the contract; otherwise
 * MG_E_TEMPLATE naming the variant and what is wrong (an unknown role or key, a missing main,
 * half of the block-list or backward roles, a value out of range). */
mg_status mg_contract_check(const char *variant_id, const mg_rendered *r, mg_diag *diag);

/* A launch value of a variant that passed mg_contract_check (its default when absent). */
long long mg_contract_launch(const mg_rendered *r, int key);

#endif
