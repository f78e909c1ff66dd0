/* The runtime's deployment side: bundles attached to a ctx, the tuning records an op
 * dispatches by, and tuning on first use. Hooks called from context.c, op.c and fwd.c. */
#ifndef MOBAGEN_DEPLOY_H
#define MOBAGEN_DEPLOY_H

#include "build.h"
#include "bundle.h"
#include "runtime_internal.h"
#include "tunedb.h"

/* ctx: frees the bundles. */
void mg_deploy_ctx_free(mobagen_ctx *ctx);

/* op creation: when an attached bundle (or $MOBAGEN_BUNDLE) holds the spec, fills variants and
 * results from it (*found = 1) for op.c to load; no NVRTC, templates or headers are touched. A
 * bundle that holds the spec but no arch this device runs is an error naming both. */
mg_status mg_deploy_bundle_variants(mobagen_op *op, mg_variant **vars, mg_build_result **results,
                                    int *n, int *found, mg_diag *diag);
/* The bundle's kernels of one spec and arch as variants and build results for op.c's loader;
 * checks launch values and that every stage's template is there. */
mg_status mg_deploy_variants_from_bundle(const mg_bundle *b, const char *identity, const char *arch,
                                         mg_variant **vars, mg_build_result **results, int *n,
                                         mg_diag *diag);
/* op creation, after the variants are loaded: fingerprint, tuning records, autotune setting. */
mg_status mg_deploy_op_init(mobagen_op *op, const char *nvrtc_version, mg_diag *diag);
void mg_deploy_op_free(mobagen_op *op);
/* mobagen_op_select: that template's choice is the caller's from now on. */
void mg_deploy_pin(mobagen_op *op, const char *template_name);
/* mobagen_fwd: selects the variants for this call's bucket. */
mg_status mg_deploy_dispatch(mobagen_op *op, const mobagen_fwd_args *args);

/* The tuner (tune.c). */
typedef struct mg_tune_shape {
    int batch, hkv, seqlen;
} mg_tune_shape;

mg_status mg_tune_run(mobagen_op *op, const mg_tune_shape *shape, const mobagen_tune_options *opts,
                      mg_tune_record *out, mg_diag *diag);
/* The whole forward with the variants dispatch chooses for the shape: median and minimum in
 * microseconds, timed like the tuner times a stage. */
mg_status mg_bench_fwd(mobagen_op *op, const mg_tune_shape *shape, int warmup, int reps,
                       double *median_us, double *min_us, mg_diag *diag);
/* The device's fingerprint for an op (its kernels' NVRTC version included). */
const mg_fingerprint *mg_deploy_fingerprint(const mobagen_op *op);

#endif
