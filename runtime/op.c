#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy.h"
#include "kernel_contract.h"
#include "runtime_internal.h"

static const char *const kernel_templates[] = {"kconv_centroid", "route", "attn_fwd"};

static mg_status build_and_load(mobagen_op *op, int decode, mg_diag *diag);

static mg_status load_variant(mobagen_op *op, const mg_variant *v, const mg_build_result *r,
                              mg_diag *diag)
{
    mobagen_ctx *ctx = op->ctx;
    mg_cuda *cu = &ctx->cu;
    if (op->n_variants == MG_MAX_LOADED)
        return mg_fail(diag, MG_E_UNSUPPORTED, "spec '%s' expands to more than %d variants",
                       op->spec.name, MG_MAX_LOADED);
    mg_loaded_variant *lv = &op->variants[op->n_variants];
    memset(lv, 0, sizeof *lv);
    snprintf(lv->template_name, sizeof lv->template_name, "%.*s", (int)strcspn(v->id, "/"), v->id);
    snprintf(lv->id, sizeof lv->id, "%s", v->id);
    mg_status st = mg_contract_check(v->id, &v->rendered, diag);
    if (st != MG_OK) return st;
    lv->threads = (int)mg_contract_launch(&v->rendered, MG_LAUNCH_THREADS);
    lv->smem = (int)mg_contract_launch(&v->rendered, MG_LAUNCH_SMEM);
    lv->rows = (int)mg_contract_launch(&v->rendered, MG_LAUNCH_ROWS);
    lv->ctas_per_sm = (int)mg_contract_launch(&v->rendered, MG_LAUNCH_CTAS_PER_SM);
    lv->list_rows = (int)mg_contract_launch(&v->rendered, MG_LAUNCH_LIST_ROWS);
    if (lv->smem > ctx->max_smem_optin)
        return mg_fail(diag, MG_E_UNSUPPORTED, "%s needs %d bytes of shared memory; %s allows %d",
                       v->id, lv->smem, ctx->device_name, ctx->max_smem_optin);
    st = mg_cuda_check(cu, cu->ModuleLoadData(&lv->module, r->entry.cubin),
                                 "cuModuleLoadData", diag);
    for (int k = 0; k < v->rendered.n_kernels && st == MG_OK; k++) {
        const char *role = v->rendered.kernels[k].role;
        char lowered[512];
        if (!mg_entry_lowered_name(&r->entry, role, lowered, sizeof lowered)) {
            st = mg_fail(diag, MG_E_CACHE, "%s: cache entry names no '%s' kernel", v->id, role);
            break;
        }
        snprintf(lv->roles[k], sizeof lv->roles[k], "%s", role);
        st = mg_cuda_check(cu, cu->ModuleGetFunction(&lv->fns[k], lv->module, lowered),
                           "cuModuleGetFunction", diag);
        lv->n_kernels = k + 1;
    }
    if (st == MG_OK) lv->fn = mg_variant_kernel(lv, MG_ROLE_MAIN);
    /* Every kernel of the variant may be launched with launch()'s shared memory (impl 2 runs
     * two passes of its tile kernel), but the backward's helpers (bwd_*), which have static
     * shared memory of their own, run with none. */
    for (int k = 0; k < lv->n_kernels && st == MG_OK && lv->smem > 48 * 1024; k++)
        if (strncmp(lv->roles[k], "bwd_", 4))
            st = mg_cuda_check(cu, cu->FuncSetAttribute(lv->fns[k], CU_FUNC_ATTR_MAX_DYNAMIC_SMEM, lv->smem),
                               "cuFuncSetAttribute(max dynamic shared memory)", diag);
    if (st != MG_OK) {
        if (lv->module) cu->ModuleUnload(lv->module);
        char why[MG_ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", diag->msg);   /* mg_fail writes where it reads */
        return mg_fail(diag, st, "%s: %s", v->id, why);
    }
    if (!strcmp(lv->template_name, "attn_fwd") && mg_variant_kernel(lv, MG_ROLE_SCATTER))
        op->has_block_lists = 1;
    op->n_variants++;
    return MG_OK;
}

mg_status mg_op_load_decode(mobagen_op *op)
{
    if (op->decode_loaded) return MG_OK;
    if (!op->ctx) return mg_fail(&op->err, MG_E_NO_DEVICE, "the op has no device to run on");
    return build_and_load(op, 1, &op->err);
}

cu_function mg_variant_kernel(const mg_loaded_variant *v, const char *role)
{
    for (int k = 0; k < v->n_kernels; k++)
        if (!strcmp(v->roles[k], role)) return v->fns[k];
    return NULL;
}

mg_status mg_launch_role(mobagen_op *op, const mg_loaded_variant *v, const char *role, unsigned gx,
                         unsigned gy, unsigned gz, unsigned threads, unsigned smem, void *params,
                         mobagen_stream stream)
{
    if (gx == 0 || gy == 0 || gz == 0) return MG_OK;
    cu_function fn = mg_variant_kernel(v, role);
    if (!fn) return mg_fail(&op->err, MG_E_TEMPLATE, "%s has no '%s' kernel", v->id, role);
    void *args[] = {params};
    mg_cuda *cu = &op->ctx->cu;
    char what[400];
    snprintf(what, sizeof what, "launch of %s (%s)", v->id, role);
    return mg_cuda_check(cu, cu->LaunchKernel(fn, gx, gy, gz, threads, 1, 1, smem, (cu_stream)stream, args, NULL),
                         what, &op->err);
}

static int first_variant_of(const mobagen_op *op, const char *template_name)
{
    for (int i = 0; i < op->n_variants; i++)
        if (!strcmp(op->variants[i].template_name, template_name)) return i;
    return -1;
}

/* Decode variants are built on an op's first append or decode (mg_op_load_decode), so that
 * creating a forward-only op compiles and loads none of them. */
static int is_decode_template(const char *variant_id)
{
    return !strncmp(variant_id, "decode/", 7);
}

/* Moves the variants this load wants (decode ones or the others) to the front, with their
 * results when there are any; returns how many. */
static int partition_variants(mg_variant *vars, mg_build_result *results, int n, int decode)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (is_decode_template(vars[i].id) != decode) continue;
        if (i != m) {
            mg_variant tv = vars[m];
            vars[m] = vars[i];
            vars[i] = tv;
            if (results) {
                mg_build_result tr = results[m];
                results[m] = results[i];
                results[i] = tr;
            }
        }
        m++;
    }
    return m;
}

static void select_decode(mobagen_op *op)
{
    for (int i = 0; i < op->n_variants && !op->decode_loaded; i++)
        if (is_decode_template(op->variants[i].id)) {
            op->selected_decode = i;
            op->decode_loaded = 1;
        }
}

/* decode 0: the forward's templates at op creation (from a bundle, every variant it holds);
 * decode 1: the decode template, through the cache and NVRTC. */
static mg_status build_and_load(mobagen_op *op, int decode, mg_diag *diag)
{
    mobagen_ctx *ctx = op->ctx;
    mg_template_set *set = NULL;
    mg_variant *vars = NULL;
    int n = 0;
    mg_builder *b = NULL;
    mg_build_result *results = NULL;
    const char *arch = ctx->arch;
    int from_bundle = 0;
    char nvrtc_version[16] = "";
    mg_status st = decode ? MG_OK : mg_deploy_bundle_variants(op, &vars, &results, &n, &from_bundle, diag);
    int n_load = n;
    if (st == MG_OK && !from_bundle) {
        st = mg_template_set_open(ctx->template_dir[0] ? ctx->template_dir : NULL, &set, diag);
        if (st == MG_OK) st = mg_variants_expand(set, &op->spec, &arch, 1, &vars, &n, diag);
        n_load = st == MG_OK ? partition_variants(vars, NULL, n, decode) : 0;
        if (st == MG_OK && decode && n_load == 0)
            st = mg_fail(diag, MG_E_UNSUPPORTED, "spec '%s' has no decode variant for %s (templates %s): "
                         "decode needs causal, head_dim 64 or 128, gqa_group <= 16, sm_80+",
                         op->spec.name, ctx->arch, mg_template_set_origin(set));
        for (int t = 0; t < 3 && st == MG_OK && !decode; t++)
            if (!mg_template_set_find(set, kernel_templates[t]))
                st = mg_fail(diag, MG_E_TEMPLATE, "templates (%s) lack '%s'", mg_template_set_origin(set),
                             kernel_templates[t]);
        if (st == MG_OK) st = mg_builder_open(ctx->cache_dir[0] ? ctx->cache_dir : NULL, &b, diag);
        if (st == MG_OK && !(results = calloc((size_t)(n ? n : 1), sizeof *results)))
            st = mg_fail(diag, MG_E_NOMEM, "out of memory");
        mg_build_options opts = {.on_result = mg_ctx_on_build_result, .on_result_user = ctx};
        mg_build_stats stats = {0};
        if (st == MG_OK) {
            mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "spec '%s': %d %svariants for %s (cache %s)", op->spec.name,
                       n_load, decode ? "decode " : "", ctx->arch, mg_cache_dir(mg_builder_cache(b)));
            st = mg_builder_build(b, vars, n_load, &opts, results, &stats, diag);
            mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "spec '%s': %d cached, %d compiled, %d failed in %.1f s",
                       op->spec.name, stats.hits, stats.misses, stats.failed, stats.seconds);
        }
        /* The NVRTC that compiled the kernels, as their cache entries recorded it: a warm start
         * never loads NVRTC just to name it. */
        if (st == MG_OK && n_load > 0 && !decode)
            mg_cache_meta_get(results[0].entry.meta, "nvrtc", nvrtc_version, sizeof nvrtc_version);
    }
    if (st == MG_OK) st = mg_ctx_push(ctx, diag);
    if (st == MG_OK) {
        for (int i = 0; i < n_load && st == MG_OK; i++) st = load_variant(op, &vars[i], &results[i], diag);
        mg_ctx_pop(ctx);
    }
    if (st == MG_OK) select_decode(op);
    if (st == MG_OK && !decode) {
        op->selected_kconv = first_variant_of(op, "kconv_centroid");
        op->selected_route = first_variant_of(op, "route");
        op->selected_attn = first_variant_of(op, "attn_fwd");
        op->selected_bwd = first_variant_of(op, "attn_bwd");
        st = mg_deploy_op_init(op, nvrtc_version, diag);
    }
    mg_build_results_free(results, n);
    mg_builder_close(b);
    mg_variants_free(vars, n);
    mg_template_set_free(set);
    return st;
}

mg_status mg_op_create_from_spec(mobagen_ctx *ctx, const mg_spec *spec, mobagen_op **out)
{
    *out = NULL;
    if (!ctx->context) {
        char why[MG_ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", ctx->err.msg);   /* mg_fail writes where it reads */
        return mg_fail(&ctx->err, MG_E_NO_DEVICE, "the mobagen context has no device: %s", why);
    }
    mobagen_op *op = calloc(1, sizeof *op);
    if (!op) return mg_fail(&ctx->err, MG_E_NOMEM, "out of memory");
    op->ctx = ctx;
    op->spec = *spec;
    mg_status st = build_and_load(op, 0, &ctx->err);
    if (st != MG_OK) {
        mobagen_op_destroy(op);
        return st;
    }
    *out = op;
    return MG_OK;
}

mg_status mg_op_create_detached(const mg_spec *spec, mobagen_op **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return MG_E_NOMEM;
    (*out)->spec = *spec;
    (*out)->selected_bwd = -1;
    return MG_OK;
}

/* The NULL checks every creation shares; the message goes to the ctx where there is one. */
static mg_status check_create_args(mobagen_ctx *ctx, const void *source, const char *source_name,
                                   mobagen_op **out)
{
    if (out) *out = NULL;
    if (!ctx) return MG_E_ARG;
    if (!out) return mg_fail(&ctx->err, MG_E_ARG, "out (the mobagen_op ** to fill) is NULL");
    if (!source) return mg_fail(&ctx->err, MG_E_ARG, "%s is NULL", source_name);
    return MG_OK;
}

mg_status mobagen_op_create(mobagen_ctx *ctx, const char *spec_path, mobagen_op **out)
{
    mg_status st = check_create_args(ctx, spec_path, "spec_path", out);
    if (st != MG_OK) return st;
    mg_spec spec;
    st = mg_spec_load(spec_path, &spec, &ctx->err);
    if (st != MG_OK) return st;
    return mg_op_create_from_spec(ctx, &spec, out);
}

mg_status mobagen_op_create_from_params(mobagen_ctx *ctx, const mobagen_spec_params *params,
                                        mobagen_op **out)
{
    mg_status st = check_create_args(ctx, params, "params", out);
    if (st != MG_OK) return st;
    mg_spec spec;
    st = mg_spec_from_params(params, &spec, &ctx->err);
    if (st != MG_OK) return st;
    return mg_op_create_from_spec(ctx, &spec, out);
}

void mobagen_op_destroy(mobagen_op *op)
{
    if (!op) return;
    if (op->n_variants && mg_ctx_push(op->ctx, &op->err) == MG_OK) {
        for (int i = 0; i < op->n_variants; i++) op->ctx->cu.ModuleUnload(op->variants[i].module);
        mg_ctx_pop(op->ctx);
    }
    mg_deploy_op_free(op);
    free(op);
}

const char *mobagen_op_errmsg(const mobagen_op *op)
{
    return op ? op->err.msg : "no mobagen op (NULL): its creation failed or was not called";
}

const mg_spec *mg_op_spec(const mobagen_op *op) { return &op->spec; }

mg_status mobagen_op_params(const mobagen_op *op, mobagen_spec_params *out)
{
    if (!op || !out) return MG_E_ARG;
    mg_spec_to_params(&op->spec, out);
    return MG_OK;
}

static int nth_variant_of(const mobagen_op *op, const char *template_name, int index)
{
    for (int i = 0; i < op->n_variants; i++)
        if (!strcmp(op->variants[i].template_name, template_name) && index-- == 0) return i;
    return -1;
}

int mobagen_op_variant_count(const mobagen_op *op, const char *template_name)
{
    if (!op || !template_name) return -1;
    int n = 0;
    for (int i = 0; i < op->n_variants; i++) n += !strcmp(op->variants[i].template_name, template_name);
    return n;
}

const char *mobagen_op_variant_id(const mobagen_op *op, const char *template_name, int index)
{
    if (!op || !template_name) return NULL;
    int i = nth_variant_of(op, template_name, index);
    return i < 0 ? NULL : op->variants[i].id;
}

mg_status mobagen_op_select(mobagen_op *op, const char *template_name, int index)
{
    if (!op) return MG_E_ARG;
    if (!template_name) return mg_fail(&op->err, MG_E_ARG, "template_name is NULL");
    int i = nth_variant_of(op, template_name, index);
    if (i < 0)
        return mg_fail(&op->err, MG_E_ARG, "template '%s' has no variant %d (it has %d)",
                       template_name, index, mobagen_op_variant_count(op, template_name));
    if (!strcmp(template_name, "kconv_centroid")) op->selected_kconv = i;
    else if (!strcmp(template_name, "route")) op->selected_route = i;
    else if (!strcmp(template_name, "attn_fwd")) op->selected_attn = i;
    else if (!strcmp(template_name, "decode")) op->selected_decode = i;
    else if (!strcmp(template_name, "attn_bwd")) op->selected_bwd = i;
    else return mg_fail(&op->err, MG_E_ARG, "template '%s' is not selectable", template_name);
    mg_deploy_pin(op, template_name);
    return MG_OK;
}
