/* Structures shared by the runtime's files; not part of the public API. */
#ifndef MOBAGEN_RUNTIME_INTERNAL_H
#define MOBAGEN_RUNTIME_INTERNAL_H

#include "build.h"
#include "cuda_driver.h"
#include "mobagen.h"
#include "variants.h"

struct mobagen_ctx {
    mg_cuda cu;
    int driver_loaded;
    int device_ordinal;
    cu_device device;
    cu_context context;          /* the device's primary context, retained */
    char arch[16];
    char device_name[256];
    int sm_count;
    int max_smem_optin;
    char *cache_dir;             /* malloc'd copies of the options; "" when not given */
    char *template_dir;
    mobagen_log_level log_level; /* resolved: never MOBAGEN_LOG_DEFAULT */
    mobagen_log_fn log;
    void *log_user;
    mobagen_progress_fn progress;
    void *progress_user;
    mg_diag err;
    struct mg_ctx_deploy *deploy;   /* deploy.c: attached bundles */
};

/* A log line through the ctx's sink when level is enabled (NULL ctx: nothing). */
void mg_ctx_log(const mobagen_ctx *ctx, mobagen_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* mg_build_options.on_result for op creation (user: the ctx): a line per compile at info, so
 * that a cold start that compiles for a minute never looks like a hang, and the ctx's progress
 * callback. */
void mg_ctx_on_build_result(void *user, const mg_variant *v, const mg_build_result *r, int done,
                            int total);
/* MOBAGEN_LOG's value as a level; 0 (MOBAGEN_LOG_DEFAULT) for NULL, "" or an unknown word. */
mobagen_log_level mg_log_level_parse(const char *text);

/* One loaded variant: its module, entry function and launch shape. */
typedef struct mg_loaded_variant {
    char template_name[MG_NAME_MAX];
    char id[320];
    cu_module module;
    cu_function fn;              /* the "main" kernel */
    int n_kernels;               /* every kernel of the variant, "main" included */
    char roles[MG_MAX_KERNELS][MG_NAME_MAX];
    cu_function fns[MG_MAX_KERNELS];
    int threads;
    int smem;
    int rows;                    /* rows per CTA, where the template tiles rows */
    int ctas_per_sm;             /* persistent grids: CTAs per multiprocessor */
    int list_rows;               /* rows per CTA of the list-building kernels */
} mg_loaded_variant;

/* A kernel of the variant by role (runtime/kernel_contract.h), or NULL. */
cu_function mg_variant_kernel(const mg_loaded_variant *v, const char *role);
/* Launches the variant's kernel of that role on `stream` with one parameter block (`params`
 * points at the struct the kernels read); an empty grid launches nothing. Errors name the
 * variant and the role. */
mg_status mg_launch_role(mobagen_op *op, const mg_loaded_variant *v, const char *role, unsigned gx,
                         unsigned gy, unsigned gz, unsigned threads, unsigned smem, void *params,
                         mobagen_stream stream);

#define MG_MAX_LOADED 128

struct mobagen_op {
    mobagen_ctx *ctx;
    mg_spec spec;
    int n_variants;
    mg_loaded_variant variants[MG_MAX_LOADED];
    int selected_kconv, selected_route, selected_attn;  /* indices into variants */
    int selected_decode;         /* valid once decode_loaded (mg_op_load_decode) */
    int decode_loaded;
    int selected_bwd;            /* the backward's variant (attn_bwd), or -1 where none was built */
    int has_block_lists;         /* some attention variant transposes the selection (impl 2) */
    long long attn_chunk_rows;   /* impl 2's query rows per chunk and ring bytes; 0: defaults */
    long long attn_ring_bytes;
    mg_diag err;
    struct mg_op_deploy *deploy;  /* deploy.c: dispatch by tuning records */
};

/* Builds (or loads from the cache) the decode template's variants on first use; MG_OK at once
 * when they are loaded. */
mg_status mg_op_load_decode(mobagen_op *op);

/* Builds (or loads from the cache) every variant of an already parsed spec. */
mg_status mg_op_create_from_spec(mobagen_ctx *ctx, const mg_spec *spec, mobagen_op **out);
const mg_spec *mg_op_spec(const mobagen_op *op);
/* For tests without a GPU: an op with the spec and no ctx or kernels, on which the argument
 * checks and workspace sizing run for real and any launch is refused. */
mg_status mg_op_create_detached(const mg_spec *spec, mobagen_op **out);

/* The public parameters as a spec, checked like a YAML spec (MG_E_SPEC naming the field). */
mg_status mg_spec_from_params(const mobagen_spec_params *p, mg_spec *out, mg_diag *d);
/* Every field but tuning; name points into s. */
void mg_spec_to_params(const mg_spec *s, mobagen_spec_params *out);
/* Tests: small chunks and a short ring, so that short sequences exercise the ring's reuse. */
void mg_op_set_attn_chunking(mobagen_op *op, long long chunk_rows, long long ring_bytes);

/* Runs fn with the ctx's context current on this thread, then restores the caller's. */
mg_status mg_ctx_push(mobagen_ctx *ctx, mg_diag *diag);
void mg_ctx_pop(mobagen_ctx *ctx);

/* The forward's stages, for benchmarks that time them one by one (each reads what the earlier
 * ones left in the workspace). */
enum { MG_STAGE_CENTROIDS = 1, MG_STAGE_ROUTE = 2, MG_STAGE_ATTN = 4, MG_STAGE_ALL = 7 };
mg_status mg_fwd_stages(mobagen_op *op, const mobagen_fwd_args *args, mobagen_devptr workspace,
                        size_t workspace_bytes, mobagen_stream stream, unsigned stages);

/* The decode's stages, for benchmarks that time them one by one (each reads what the earlier
 * ones left in the workspace), and the split count it runs with (-1 on invalid arguments). */
enum { MG_DECODE_ROUTE = 1, MG_DECODE_SELECT = 2, MG_DECODE_ATTN = 4, MG_DECODE_MERGE = 8, MG_DECODE_ALL = 15 };
mg_status mg_decode_stages(mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_decode_args *a,
                           mobagen_devptr workspace, size_t workspace_bytes, mobagen_stream stream, unsigned stages);
long long mg_decode_splits(const mobagen_op *op, const mobagen_kv_cache *cache, const mobagen_decode_args *a);
/* The backward (bwd.c) builds on the forward: its argument checks, and the regions where the
 * forward's stages leave k' and the selection. */
typedef struct mg_fwd_region_offsets {
    size_t kprime, sel, total;
} mg_fwd_region_offsets;
mg_status mg_fwd_regions(mobagen_op *op, const mobagen_fwd_args *a, mg_fwd_region_offsets *out);
/* q, k, v, out row and head strides, packed ones where the caller gave 0. */
void mg_fwd_strides(const mobagen_fwd_args *a, long long strides[8]);
/* Whether rows x heads with these strides stay within 2^63 bytes. */
int mg_extent_fits(long long rows, long long heads, long long row_stride, long long head_stride,
                   long long head_dim);

#endif
