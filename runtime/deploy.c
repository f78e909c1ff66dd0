#include "deploy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "kernel_contract.h"

#define MAX_BUNDLES 16
#define MAX_CHOICES 256
#define N_STAGES 3

static const char *const stage_templates[N_STAGES] = {"kconv_centroid", "route", "attn_fwd"};

typedef struct mg_ctx_deploy {
    int env_read;
    int n;
    mg_bundle *bundles[MAX_BUNDLES];
} mg_ctx_deploy;

typedef struct choice {
    mg_bucket bucket;
    int idx[N_STAGES];
    const char *source;
} choice;

typedef struct mg_op_deploy {
    mg_fingerprint fp;
    char identity[65];
    mg_tunedb db;
    char db_path[1024];
    int autotune;
    int pinned[N_STAGES];
    choice choices[MAX_CHOICES];
    int n_choices;
    char origin[1200];
} mg_op_deploy;

static int *selected_slot(mobagen_op *op, int stage)
{
    return stage == 0 ? &op->selected_kconv : stage == 1 ? &op->selected_route : &op->selected_attn;
}

static int stage_index(const char *template_name)
{
    for (int i = 0; i < N_STAGES; i++)
        if (!strcmp(stage_templates[i], template_name)) return i;
    return -1;
}

static mg_status op_deploy(mobagen_op *op, mg_op_deploy **out, mg_diag *diag)
{
    if (!op->deploy && !(op->deploy = calloc(1, sizeof(mg_op_deploy))))
        return mg_fail(diag, MG_E_NOMEM, "out of memory");
    *out = op->deploy;
    return MG_OK;
}

/* ---- bundles ---- */

void mg_deploy_ctx_free(mobagen_ctx *ctx)
{
    mg_ctx_deploy *d = ctx->deploy;
    if (!d) return;
    for (int i = 0; i < d->n; i++) mg_bundle_close(d->bundles[i]);
    free(d);
    ctx->deploy = NULL;
}

static mg_status ctx_deploy(mobagen_ctx *ctx, mg_ctx_deploy **out, mg_diag *diag)
{
    if (!ctx->deploy && !(ctx->deploy = calloc(1, sizeof(mg_ctx_deploy))))
        return mg_fail(diag, MG_E_NOMEM, "out of memory");
    *out = ctx->deploy;
    return MG_OK;
}

static mg_status add_bundle(mobagen_ctx *ctx, const char *path, mg_diag *diag)
{
    mg_ctx_deploy *d = NULL;
    mg_status st = ctx_deploy(ctx, &d, diag);
    if (st != MG_OK) return st;
    if (d->n == MAX_BUNDLES)
        return mg_fail(diag, MG_E_ARG, "at most %d bundles per context", MAX_BUNDLES);
    mg_bundle *b;
    st = mg_bundle_open(path, &b, diag);
    if (st == MG_OK) d->bundles[d->n++] = b;
    return st;
}

mg_status mobagen_ctx_add_bundle(mobagen_ctx *ctx, const char *path)
{
    if (!ctx) return MG_E_ARG;
    if (!path) return mg_fail(&ctx->err, MG_E_ARG, "bundle path is NULL");
    return add_bundle(ctx, path, &ctx->err);
}

static mg_status read_env_bundles(mobagen_ctx *ctx, mg_diag *diag)
{
    mg_ctx_deploy *d = NULL;
    mg_status st = ctx_deploy(ctx, &d, diag);
    if (st != MG_OK || d->env_read) return st;
    d->env_read = 1;
    const char *env = getenv("MOBAGEN_BUNDLE");
    if (!env || !*env) return MG_OK;
    char list[4096];
    snprintf(list, sizeof list, "%s", env);
    for (char *save = NULL, *p = strtok_r(list, ":", &save); p && st == MG_OK; p = strtok_r(NULL, ":", &save)) {
        st = add_bundle(ctx, p, diag);
        if (st != MG_OK) {
            char why[MG_ERRMSG_MAX];
            snprintf(why, sizeof why, "%s", diag->msg);   /* mg_fail writes where it reads */
            st = mg_fail(diag, st, "MOBAGEN_BUNDLE: %s", why);
        }
    }
    return st;
}

static int device_cc(const mobagen_ctx *ctx, int *major, int *minor)
{
    const mg_arch_info *a = mg_arch_lookup(ctx->arch);
    if (!a) return 0;
    *major = a->sm / 10;
    *minor = a->sm % 10;
    return 1;
}

/* "name=value" lines into named integers; 0 on a malformed line. */
static int parse_launch(const char *text, mg_rendered *r)
{
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[256], *eq, *end;
        if (len >= sizeof line) return 0;
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (nl != NULL);
        if (!len) continue;
        if (!(eq = strchr(line, '=')) || eq == line || eq - line >= MG_NAME_MAX ||
            r->n_launch == MG_MAX_LAUNCH_VALUES)
            return 0;
        *eq = 0;
        long long v = strtoll(eq + 1, &end, 10);
        if (end == eq + 1 || *end) return 0;
        snprintf(r->launch[r->n_launch].name, MG_NAME_MAX, "%.63s", line);
        r->launch[r->n_launch++].value = v;
    }
    return 1;
}

/* "kernel.ROLE=lowered" lines into the rendered kernel list (roles; name_expr holds the
 * lowered name, as nothing is compiled). */
static int parse_entry(const char *text, mg_rendered *r)
{
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512], *eq;
        if (len >= sizeof line) return 0;
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (nl != NULL);
        if (!len) continue;
        if (strncmp(line, "kernel.", 7) || !(eq = strchr(line, '=')) || eq - line - 7 < 1 ||
            eq - line - 7 >= MG_NAME_MAX || r->n_kernels == MG_MAX_KERNELS || !eq[1])
            return 0;
        *eq = 0;
        mg_kernel_ref *k = &r->kernels[r->n_kernels++];
        snprintf(k->role, sizeof k->role, "%.63s", line + 7);
        snprintf(k->name_expr, sizeof k->name_expr, "%.255s", eq + 1);
    }
    return 1;
}

mg_status mg_deploy_variants_from_bundle(const mg_bundle *b, const char *identity, const char *arch,
                                         mg_variant **vars_out, mg_build_result **res_out, int *n_out,
                                         mg_diag *diag)
{
    int n = 0;
    for (int i = 0; i < b->n_kernels; i++) n += !strcmp(b->kernels[i].spec, identity) && !strcmp(b->kernels[i].arch, arch);
    if (n == 0) return mg_fail(diag, MG_E_IO, "%s: no kernels for %s", b->path, arch);
    mg_variant *vars = calloc((size_t)n, sizeof *vars);
    mg_build_result *res = calloc((size_t)n, sizeof *res);
    mg_status st = vars && res ? MG_OK : mg_fail(diag, MG_E_NOMEM, "out of memory");
    int j = 0;
    for (int i = 0; i < b->n_kernels && st == MG_OK; i++) {
        const mg_bundle_kernel *k = &b->kernels[i];
        if (strcmp(k->spec, identity) || strcmp(k->arch, arch)) continue;
        mg_variant *v = &vars[j];
        mg_build_result *r = &res[j++];
        snprintf(v->arch, sizeof v->arch, "%s", k->arch);
        snprintf(v->id, sizeof v->id, "%.63s/%.15s/%.230s", k->tpl, k->arch, k->point);
        mg_diag why;
        if (!parse_launch(k->launch, &v->rendered) || !parse_entry(k->entry, &v->rendered)) {
            st = mg_fail(diag, MG_E_IO, "%s: kernel %s: malformed launch parameters or entry names",
                         b->path, v->id);
            break;
        }
        if (mg_contract_check(v->id, &v->rendered, &why) != MG_OK) {
            st = mg_fail(diag, MG_E_IO, "%s: %s", b->path, why.msg);
            break;
        }
        r->entry.meta = strdup(k->entry);
        r->entry.log = strdup("");
        r->entry.cubin = malloc(k->cubin_size);
        r->entry.cubin_size = k->cubin_size;
        if (!r->entry.meta || !r->entry.log || !r->entry.cubin) {
            st = mg_fail(diag, MG_E_NOMEM, "out of memory");
            break;
        }
        memcpy(r->entry.cubin, k->cubin, k->cubin_size);
        r->hit = 1;
    }
    for (int t = 0; t < N_STAGES && st == MG_OK; t++) {
        size_t len = strlen(stage_templates[t]);
        int have = 0;
        for (int i = 0; i < n; i++) have |= !strncmp(vars[i].id, stage_templates[t], len) && vars[i].id[len] == '/';
        if (!have) st = mg_fail(diag, MG_E_IO, "%s: no %s kernel for %s", b->path, stage_templates[t], arch);
    }
    if (st != MG_OK) {
        mg_build_results_free(res, n);
        free(vars);   /* rendered holds no allocations here */
        return st;
    }
    *vars_out = vars;
    *res_out = res;
    *n_out = n;
    return MG_OK;
}

mg_status mg_deploy_bundle_variants(mobagen_op *op, mg_variant **vars, mg_build_result **results,
                                    int *n, int *found, mg_diag *diag)
{
    *found = 0;
    mobagen_ctx *ctx = op->ctx;
    mg_status st = read_env_bundles(ctx, diag);
    if (st != MG_OK) return st;
    mg_ctx_deploy *d = ctx->deploy;
    char identity[65];
    mg_spec_identity(&op->spec, identity);
    for (int i = 0; i < d->n; i++) {
        const mg_bundle *b = d->bundles[i];
        if (!mg_bundle_find_spec(b, identity)) continue;
        const char *archs[64];
        int n_archs = 0;
        for (int k = 0; k < b->n_kernels && n_archs < 64; k++)
            if (!strcmp(b->kernels[k].spec, identity) &&
                (n_archs == 0 || strcmp(archs[n_archs - 1], b->kernels[k].arch)))
                archs[n_archs++] = b->kernels[k].arch;
        int major = 0, minor = 0;
        int pick = device_cc(ctx, &major, &minor) ? mg_arch_pick(archs, n_archs, major, minor) : -1;
        if (pick < 0) {
            char have[512], need[128];
            mg_bundle_archs(b, identity, have, sizeof have);
            mg_arch_needed(major, minor, need, sizeof need);
            return mg_fail(diag, MG_E_UNSUPPORTED, "bundle %s holds spec '%s' for %s; device %s "
                           "(compute capability %d.%d) needs %s", b->path, op->spec.name,
                           have[0] ? have : "no arch", ctx->device_name, major, minor, need);
        }
        mg_op_deploy *od = NULL;
        st = op_deploy(op, &od, diag);
        if (st == MG_OK) st = mg_deploy_variants_from_bundle(b, identity, archs[pick], vars, results, n, diag);
        if (st == MG_OK) {
            *found = 1;
            snprintf(od->fp.nvrtc, sizeof od->fp.nvrtc, "%.15s", b->nvrtc);
            snprintf(od->origin, sizeof od->origin, "bundle %s (%s)", b->path, archs[pick]);
        }
        return st;
    }
    return MG_OK;
}

/* ---- dispatch ---- */

mg_status mg_deploy_op_init(mobagen_op *op, const char *nvrtc_version, mg_diag *diag)
{
    mg_op_deploy *d = NULL;
    mg_status st = op_deploy(op, &d, diag);
    if (st != MG_OK) return st;
    mobagen_ctx *ctx = op->ctx;
    mg_fingerprint *fp = &d->fp;
    snprintf(fp->gpu, sizeof fp->gpu, "%.127s", ctx->device_name);
    device_cc(ctx, &fp->cc_major, &fp->cc_minor);
    fp->sm_count = ctx->sm_count;
    size_t mem = 0;
    if (ctx->cu.DeviceTotalMem) ctx->cu.DeviceTotalMem(&mem, ctx->device);
    fp->mem_mib = (long long)(mem >> 20);
    if (ctx->cu.DriverGetVersion) ctx->cu.DriverGetVersion(&fp->driver);
    if (!d->origin[0]) {   /* not from a bundle */
        snprintf(fp->nvrtc, sizeof fp->nvrtc, "%s", nvrtc_version && *nvrtc_version ? nvrtc_version : "none");
        snprintf(d->origin, sizeof d->origin, "nvrtc");
    }
    snprintf(fp->mobagen, sizeof fp->mobagen, "%s", MG_VERSION_TEXT);
    mg_spec_identity(&op->spec, d->identity);
    const char *at = getenv("MOBAGEN_AUTOTUNE");
    d->autotune = at && !strcmp(at, "1");
    /* Records carried by the op's bundle first; the local database's replace them per key. */
    mg_ctx_deploy *cd = ctx->deploy;
    for (int i = 0; cd && i < cd->n; i++)
        if (cd->bundles[i]->tuning[0] && mg_bundle_find_spec(cd->bundles[i], d->identity))
            mg_tunedb_parse(&d->db, cd->bundles[i]->tuning, strlen(cd->bundles[i]->tuning),
                            cd->bundles[i]->path, 1, diag);
    mg_diag ignored;
    if (mg_tunedb_default_path(d->db_path, sizeof d->db_path, &ignored) == MG_OK) {
        st = mg_tunedb_load(&d->db, d->db_path, 1, diag);
        if (st != MG_OK) fprintf(stderr, "mobagen: warning: %s; dispatching by the heuristic\n", diag->msg);
    }
    return MG_OK;
}

void mg_deploy_op_free(mobagen_op *op)
{
    mg_op_deploy *d = op->deploy;
    if (!d) return;
    mg_tunedb_free(&d->db);
    free(d);
    op->deploy = NULL;
}

const mg_fingerprint *mg_deploy_fingerprint(const mobagen_op *op) { return &op->deploy->fp; }

const char *mobagen_op_origin(const mobagen_op *op)
{
    if (!op) return NULL;
    return op->deploy ? op->deploy->origin : "nvrtc";
}

void mg_deploy_pin(mobagen_op *op, const char *template_name)
{
    int s = stage_index(template_name);
    if (op->deploy && s >= 0) op->deploy->pinned[s] = 1;
}

/* The op's variant of a template whose point is `point`, or -1. */
static int find_point(const mobagen_op *op, const char *tpl, const char *point)
{
    for (int i = 0; i < op->n_variants; i++) {
        const mg_loaded_variant *v = &op->variants[i];
        const char *slash = strchr(v->id, '/');
        slash = slash ? strchr(slash + 1, '/') : NULL;
        if (!strcmp(v->template_name, tpl) && slash && !strcmp(slash + 1, point)) return i;
    }
    return -1;
}

static int first_of(const mobagen_op *op, const char *tpl)
{
    for (int i = 0; i < op->n_variants; i++)
        if (!strcmp(op->variants[i].template_name, tpl)) return i;
    return -1;
}

/* A record's winners as variant indices; 0 when one is not among the op's variants. */
static int resolve(const mobagen_op *op, const mg_tune_record *r, int idx[N_STAGES])
{
    for (int s = 0; s < N_STAGES; s++) {
        const char *pt = mg_tune_record_point(r, stage_templates[s]);
        if (!pt || (idx[s] = find_point(op, stage_templates[s], pt)) < 0) return 0;
    }
    return 1;
}

static mg_status decide(mobagen_op *op, const mobagen_fwd_args *a, choice *out)
{
    mg_op_deploy *d = op->deploy;
    mg_bucket bucket;
    mg_bucket_for(d->identity, a->batch, a->hq, a->hkv, a->max_seqlen_k, &bucket);
    for (int i = 0; i < d->n_choices; i++)
        if (mg_bucket_equal(&d->choices[i].bucket, &bucket)) {
            *out = d->choices[i];
            return MG_OK;
        }
    memset(out, 0, sizeof *out);
    out->bucket = bucket;
    const mg_tune_record *r = mg_tunedb_find(&d->db, &d->fp, &bucket);
    if (r && resolve(op, r, out->idx)) {
        out->source = "tuned";
    } else {
        if (d->autotune) {
            mobagen_tune_options o = {.batch = a->batch, .hkv = a->hkv, .save = 1,
                                      .seqlen = a->max_seqlen_k < 64 ? 64 : a->max_seqlen_k};
            /* A failed autotune (out of device memory, an unwritable database) costs speed,
             * not the call; winners found before a failed save are used all the same. */
            if (mobagen_op_tune(op, &o) != MG_OK)
                fprintf(stderr, "mobagen: warning: autotuning spec '%s': %s\n", op->spec.name, op->err.msg);
            r = mg_tunedb_find(&d->db, &d->fp, &bucket);
        }
        if (r && resolve(op, r, out->idx)) {
            out->source = "tuned";
        } else {
            for (int s = 0; s < N_STAGES; s++) out->idx[s] = first_of(op, stage_templates[s]);
            out->source = "heuristic";
        }
    }
    if (d->n_choices < MAX_CHOICES) d->choices[d->n_choices++] = *out;
    return MG_OK;
}

mg_status mg_deploy_dispatch(mobagen_op *op, const mobagen_fwd_args *a)
{
    mg_op_deploy *d = op->deploy;
    if (!d || !a || a->batch < 1 || a->hkv < 1 || a->hq < 1) return MG_OK;   /* fwd's checks say why */
    if (d->pinned[0] && d->pinned[1] && d->pinned[2]) return MG_OK;
    choice c;
    mg_status st = decide(op, a, &c);
    for (int s = 0; st == MG_OK && s < N_STAGES; s++)
        if (!d->pinned[s] && c.idx[s] >= 0) *selected_slot(op, s) = c.idx[s];
    return st;
}

int mobagen_op_dispatch(mobagen_op *op, const mobagen_fwd_args *a, const char *template_name,
                        const char **source)
{
    int s = stage_index(template_name);
    if (source) *source = "";
    if (s < 0 || !op || !op->deploy || !a || a->batch < 1 || a->hkv < 1 || a->hq < 1) return -1;
    int chosen = *selected_slot(op, s);
    if (op->deploy->pinned[s]) {
        if (source) *source = "pinned";
    } else {
        choice c;
        if (decide(op, a, &c) != MG_OK) return -1;
        chosen = c.idx[s];
        if (source) *source = c.source;
    }
    /* As an index among the template's variants. */
    int index = 0;
    for (int i = 0; i < chosen; i++) index += !strcmp(op->variants[i].template_name, template_name);
    return index;
}

/* Records the tuner's winners: in the op's records (this process dispatches by them at once)
 * and, with save, in the database file. */
mg_status mobagen_op_tune(mobagen_op *op, const mobagen_tune_options *opts)
{
    if (!op) return MG_E_ARG;
    if (!opts) return mg_fail(&op->err, MG_E_ARG, "tune options are NULL");
    if (!op->deploy) return mg_fail(&op->err, MG_E_ARG, "op is not initialised");
    mg_op_deploy *d = op->deploy;
    mg_tune_shape shape = {.batch = opts->batch, .hkv = opts->hkv, .seqlen = opts->seqlen};
    mg_tune_record rec;
    mg_status st = mg_tune_run(op, &shape, opts, &rec, &op->err);
    if (st != MG_OK) return st;
    snprintf(rec.spec_name, sizeof rec.spec_name, "%s", op->spec.name);
    st = mg_tunedb_put(&d->db, &rec, &op->err);
    /* A new record replaces what this process decided for its bucket. */
    for (int i = 0; i < d->n_choices; i++)
        if (mg_bucket_equal(&d->choices[i].bucket, &rec.bucket)) d->choices[i] = d->choices[--d->n_choices];
    int idx[N_STAGES];
    if (st == MG_OK && resolve(op, &rec, idx))
        for (int s = 0; s < N_STAGES; s++)
            if (!d->pinned[s]) *selected_slot(op, s) = idx[s];
    if (st == MG_OK && opts->save) {
        const char *path = opts->db_path ? opts->db_path : d->db_path;
        if (!path[0]) return mg_fail(&op->err, MG_E_IO, "no tuning database path: set MOBAGEN_TUNING_DB");
        st = mg_tunedb_save(path, &rec, 1, &op->err);
    }
    return st;
}
