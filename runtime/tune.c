/* The tuner: every variant of each stage is checked against the reference variant on the same
 * random inputs, then the stage alone is timed with CUDA events, the L2 flushed before each
 * repetition (docs/tuning.md says why stage by stage). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy.h"

#define N_STAGES 3
#define CU_ATTR_L2_CACHE_SIZE 38   /* CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE */
#define MAX_REPS 1000

static const char *const stage_templates[N_STAGES] = {"kconv_centroid", "route", "attn_fwd"};
static const unsigned stage_bits[N_STAGES] = {MG_STAGE_CENTROIDS, MG_STAGE_ROUTE, MG_STAGE_ATTN};

typedef struct bufs {
    cu_deviceptr q, k, v, out, lse, cu_q, cu_k, conv, ws, flush;
    size_t ws_bytes, flush_bytes;
} bufs;

typedef struct host_out {
    uint16_t *out;
    float *lse;
    int32_t *sel;
} host_out;

typedef struct tuner {
    mobagen_op *op;
    mg_cuda *cu;
    mobagen_fwd_args args;
    bufs b;
    size_t n_out, n_lse, n_sel;
    host_out ref, got;
    mg_diag *diag;
} tuner;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static float normal(uint64_t *s)
{
    double u1 = ((double)(splitmix(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(splitmix(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static uint16_t to_elem(mg_dtype t, float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if (t == MG_BF16) return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    /* fp16 for the moderate values used here: normal numbers, round to nearest. */
    uint32_t sign = (x >> 16) & 0x8000u;
    int e = (int)((x >> 23) & 0xff) - 127 + 15;
    if (e <= 0) return (uint16_t)sign;
    if (e >= 31) return (uint16_t)(sign | 0x7bffu);
    uint32_t m = (x & 0x7fffffu) + 0x1000u;
    if (m & 0x800000u) {
        m = 0;
        e++;
    }
    return (uint16_t)(sign | (uint32_t)e << 10 | m >> 13);
}

static float from_elem(mg_dtype t, uint16_t h)
{
    uint32_t x;
    if (t == MG_BF16) {
        x = (uint32_t)h << 16;
    } else {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
        if (e == 31) x = sign | 0x7f800000u | m << 13;
        else if (e == 0) return (sign ? -1.f : 1.f) * (float)m * 5.9604645e-8f;
        else x = sign | (e - 15 + 127) << 23 | m << 13;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static mg_status check(tuner *t, cu_result r, const char *what)
{
    return mg_cuda_check(t->cu, r, what, t->diag);
}

static mg_status alloc(tuner *t, cu_deviceptr *p, size_t bytes)
{
    return check(t, t->cu->MemAlloc(p, bytes ? bytes : 256), "cuMemAlloc (tuning buffers)");
}

static mg_status upload_random(tuner *t, cu_deviceptr dst, size_t n, mg_dtype dt, uint64_t *seed, float scale)
{
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) return mg_fail(t->diag, MG_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) h[i] = to_elem(dt, scale * normal(seed));
    mg_status st = check(t, t->cu->MemcpyHtoD(dst, h, n * sizeof *h), "cuMemcpyHtoD");
    free(h);
    return st;
}

static mg_status setup(tuner *t, const mg_tune_shape *sh)
{
    const mg_spec *s = &t->op->spec;
    mobagen_fwd_args *a = &t->args;
    int hq = sh->hkv * s->gqa_group, d = s->head_dim;
    long long total = (long long)sh->batch * sh->seqlen;
    if (sh->batch < 1 || sh->hkv < 1 || sh->seqlen < 1 || total > (1LL << 26) || hq > 65535)
        return mg_fail(t->diag, MG_E_ARG, "tuning shape batch=%d hkv=%d seqlen=%d is out of range",
                       sh->batch, sh->hkv, sh->seqlen);
    memset(a, 0, sizeof *a);
    *a = (mobagen_fwd_args){.batch = sh->batch, .hq = hq, .hkv = sh->hkv, .head_dim = d,
                            .total_q = (int)total, .total_k = (int)total,
                            .max_seqlen_q = sh->seqlen, .max_seqlen_k = sh->seqlen, .dtype = s->dtype};
    t->n_out = (size_t)total * hq * d;
    t->n_lse = (size_t)total * hq;
    t->n_sel = (size_t)total * hq * s->top_k;
    size_t kv = (size_t)total * sh->hkv * d, conv = (size_t)sh->hkv * s->conv_width * d;
    mg_status st = MG_OK;
    bufs *b = &t->b;
    if (st == MG_OK) st = alloc(t, &b->q, t->n_out * 2);
    if (st == MG_OK) st = alloc(t, &b->k, kv * 2);
    if (st == MG_OK) st = alloc(t, &b->v, kv * 2);
    if (st == MG_OK) st = alloc(t, &b->out, t->n_out * 2);
    if (st == MG_OK) st = alloc(t, &b->lse, t->n_lse * 4);
    if (st == MG_OK) st = alloc(t, &b->cu_q, (size_t)(sh->batch + 1) * 4);
    if (st == MG_OK && conv) st = alloc(t, &b->conv, conv * 2);
    if (st != MG_OK) return st;
    a->q = b->q, a->k = b->k, a->v = b->v, a->out = b->out, a->lse = b->lse;
    a->cu_seqlens_q = a->cu_seqlens_k = b->cu_q;
    a->conv_weight = b->conv;
    uint64_t seed = 0x6d6f626147656e31ULL;
    int32_t *cu = malloc((size_t)(sh->batch + 1) * 4);
    if (!cu) return mg_fail(t->diag, MG_E_NOMEM, "out of memory");
    for (int i = 0; i <= sh->batch; i++) cu[i] = i * sh->seqlen;
    st = check(t, t->cu->MemcpyHtoD(b->cu_q, cu, (size_t)(sh->batch + 1) * 4), "cuMemcpyHtoD");
    free(cu);
    if (st == MG_OK) st = upload_random(t, b->q, t->n_out, s->dtype, &seed, 1.f);
    if (st == MG_OK) st = upload_random(t, b->k, kv, s->dtype, &seed, 1.f);
    if (st == MG_OK) st = upload_random(t, b->v, kv, s->dtype, &seed, 1.f);
    if (st == MG_OK && conv) st = upload_random(t, b->conv, conv, s->dtype, &seed, 0.5f);
    if (st == MG_OK) st = mobagen_fwd_workspace_size(t->op, a, &b->ws_bytes) == MG_OK ? MG_OK
                          : mg_fail(t->diag, MG_E_ARG, "%s", t->op->err.msg);
    if (st == MG_OK) st = alloc(t, &b->ws, b->ws_bytes);
    /* Twice the L2, rewritten before each timed run, so that no run finds its inputs cached. */
    int l2 = 0;
    t->cu->DeviceGetAttribute(&l2, CU_ATTR_L2_CACHE_SIZE, t->op->ctx->device);
    b->flush_bytes = (size_t)(l2 > 0 ? l2 : 64 << 20) * 2;
    if (st == MG_OK) st = alloc(t, &b->flush, b->flush_bytes);
    host_out *h[2] = {&t->ref, &t->got};
    for (int i = 0; i < 2 && st == MG_OK; i++) {
        h[i]->out = malloc(t->n_out * 2 + 1);
        h[i]->lse = malloc(t->n_lse * 4 + 1);
        h[i]->sel = malloc(t->n_sel * 4 + 1);
        if (!h[i]->out || !h[i]->lse || !h[i]->sel) st = mg_fail(t->diag, MG_E_NOMEM, "out of memory");
    }
    return st;
}

static void teardown(tuner *t)
{
    cu_deviceptr *p[] = {&t->b.q, &t->b.k, &t->b.v, &t->b.out, &t->b.lse, &t->b.cu_q, &t->b.conv,
                         &t->b.ws, &t->b.flush};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (*p[i]) t->cu->MemFree(*p[i]);
    host_out *h[2] = {&t->ref, &t->got};
    for (int i = 0; i < 2; i++) {
        free(h[i]->out);
        free(h[i]->lse);
        free(h[i]->sel);
    }
}

/* The whole forward with the op's current selection, outputs poisoned first, into *h. */
static mg_status run_full(tuner *t, host_out *h)
{
    mobagen_op *op = t->op;
    mg_status st = check(t, t->cu->MemsetD32(t->b.out, 0xffffffffu, t->n_out / 2), "cuMemsetD32");
    if (st == MG_OK) st = check(t, t->cu->MemsetD32(t->b.lse, 0xffffffffu, t->n_lse), "cuMemsetD32");
    if (st == MG_OK && mg_fwd_stages(op, &t->args, t->b.ws, t->b.ws_bytes, NULL, MG_STAGE_ALL) != MG_OK)
        st = mg_fail(t->diag, MG_E_CUDA, "%s", op->err.msg);
    if (st == MG_OK) st = check(t, t->cu->CtxSynchronize(), "the forward (cuCtxSynchronize)");
    cu_deviceptr sel = mobagen_fwd_selection(op, &t->args, t->b.ws);
    if (st == MG_OK) st = check(t, t->cu->MemcpyDtoH(h->out, t->b.out, t->n_out * 2), "cuMemcpyDtoH");
    if (st == MG_OK) st = check(t, t->cu->MemcpyDtoH(h->lse, t->b.lse, t->n_lse * 4), "cuMemcpyDtoH");
    if (st == MG_OK) st = check(t, t->cu->MemcpyDtoH(h->sel, sel, t->n_sel * 4), "cuMemcpyDtoH");
    return st;
}

/* Rows whose selection equals the reference's must match it closely; rows routed otherwise
 * (near-ties between blocks, where fp32 sums in another order may pick the other block) may
 * differ, but at most 1% of them. 0 when it passes, else why in note. */
static int compare(tuner *t, char *note, size_t size)
{
    const mg_spec *s = &t->op->spec;
    int k = s->top_k, d = s->head_dim;
    size_t rows = t->n_lse, swapped = 0;
    double err2 = 0, ref2 = 0, worst_lse = 0;
    for (size_t r = 0; r < rows; r++) {
        int same = !memcmp(&t->got.sel[r * k], &t->ref.sel[r * k], (size_t)k * 4);
        swapped += !same;
        for (int i = 0; i < d; i++) {
            float g = from_elem(s->dtype, t->got.out[r * d + i]), e = from_elem(s->dtype, t->ref.out[r * d + i]);
            if (!isfinite(g)) {
                snprintf(note, size, "out row %zu not written or not finite", r);
                return 1;
            }
            if (same) {
                err2 += (double)(g - e) * (g - e);
                ref2 += (double)e * e;
            }
        }
        float lg = t->got.lse[r], le = t->ref.lse[r];
        if (isnan(lg) || (isinf(lg) != isinf(le))) {
            snprintf(note, size, "lse row %zu is %g, reference %g", r, lg, le);
            return 1;
        }
        if (same && isfinite(lg)) worst_lse = fmax(worst_lse, fabs(lg - le) / fmax(1.0, fabs(le)));
    }
    double o_err = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    double o_tol = s->dtype == MG_BF16 ? 2e-2 : 4e-3, lse_tol = 2e-4 * (d > 64 ? d / 64.0 : 1.0);
    if (swapped > rows / 100 + 1) {
        snprintf(note, size, "routing differs from the reference on %zu of %zu rows", swapped, rows);
        return 1;
    }
    if (o_err > o_tol || worst_lse > lse_tol) {
        snprintf(note, size, "differs from the reference: o rel err %.3g (tol %.3g), lse %.3g (tol %.3g)",
                 o_err, o_tol, worst_lse, lse_tol);
        return 1;
    }
    return 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median and minimum of the stage alone, in microseconds. */
static mg_status time_stage(tuner *t, unsigned stage, int warmup, int reps, double *median, double *min)
{
    mobagen_op *op = t->op;
    mg_cuda *cu = t->cu;
    cu_event ev[2 * MAX_REPS];
    int created = 0;
    mg_status st = MG_OK;
    for (; created < 2 * reps && st == MG_OK; created++)
        st = check(t, cu->EventCreate(&ev[created], 0), "cuEventCreate");
    if (st != MG_OK) created--;
    for (int i = 0; i < warmup && st == MG_OK; i++)
        if (mg_fwd_stages(op, &t->args, t->b.ws, t->b.ws_bytes, NULL, stage) != MG_OK)
            st = mg_fail(t->diag, MG_E_CUDA, "%s", op->err.msg);
    for (int i = 0; i < reps && st == MG_OK; i++) {
        st = check(t, cu->MemsetD32Async(t->b.flush, (unsigned)i, t->b.flush_bytes / 4, NULL), "L2 flush");
        if (st == MG_OK) st = check(t, cu->EventRecord(ev[2 * i], NULL), "cuEventRecord");
        if (st == MG_OK && mg_fwd_stages(op, &t->args, t->b.ws, t->b.ws_bytes, NULL, stage) != MG_OK)
            st = mg_fail(t->diag, MG_E_CUDA, "%s", op->err.msg);
        if (st == MG_OK) st = check(t, cu->EventRecord(ev[2 * i + 1], NULL), "cuEventRecord");
    }
    if (st == MG_OK) st = check(t, cu->CtxSynchronize(), "timing runs (cuCtxSynchronize)");
    float ms[MAX_REPS];
    for (int i = 0; i < reps && st == MG_OK; i++)
        st = check(t, cu->EventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]), "cuEventElapsedTime");
    for (int i = 0; i < created; i++) cu->EventDestroy(ev[i]);
    if (st != MG_OK) return st;
    qsort(ms, (size_t)reps, sizeof ms[0], cmp_float);
    *median = 1e3 * (reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]));
    *min = 1e3 * ms[0];
    return MG_OK;
}

static const char *point_of(const char *id)
{
    const char *p = strchr(id, '/');
    p = p ? strchr(p + 1, '/') : NULL;
    return p ? p + 1 : id;
}

/* The reference variant: the CUDA-core implementation (impl=1) where the template has one,
 * else its first variant. */
static int reference_of(const mobagen_op *op, const char *tpl)
{
    int first = -1;
    for (int i = 0; i < op->n_variants; i++) {
        if (strcmp(op->variants[i].template_name, tpl)) continue;
        if (first < 0) first = i;
        const char *pt = point_of(op->variants[i].id);
        if (!strncmp(pt, "impl=1", 6) || strstr(pt, ",impl=1")) return i;
    }
    return first;
}

static int *slot(mobagen_op *op, int s)
{
    return s == 0 ? &op->selected_kconv : s == 1 ? &op->selected_route : &op->selected_attn;
}

static mg_status tune_all(tuner *t, const mobagen_tune_options *o, mg_tune_record *rec)
{
    mobagen_op *op = t->op;
    int ref[N_STAGES], best[N_STAGES];
    double best_us[N_STAGES];
    for (int s = 0; s < N_STAGES; s++) {
        ref[s] = reference_of(op, stage_templates[s]);
        if (ref[s] < 0) return mg_fail(t->diag, MG_E_TEMPLATE, "the op has no %s variant", stage_templates[s]);
        *slot(op, s) = ref[s];
        best[s] = -1;
        best_us[s] = INFINITY;
    }
    mg_status st = run_full(t, &t->ref);
    if (st != MG_OK) return st;
    int warmup = o->warmup > 0 ? o->warmup : 3, reps = o->reps > 0 ? o->reps : 25;
    if (reps > MAX_REPS) reps = MAX_REPS;
    int total = 0, done = 0;
    for (int s = 0; s < N_STAGES; s++) total += mobagen_op_variant_count(op, stage_templates[s]);
    for (int s = 0; s < N_STAGES && st == MG_OK; s++) {
        int index = 0;
        for (int i = 0; i < op->n_variants && st == MG_OK; i++) {
            if (strcmp(op->variants[i].template_name, stage_templates[s])) continue;
            if (o->on_progress) o->on_progress(done, total, op->variants[i].id, o->user);
            *slot(op, s) = i;
            char note[200] = "";
            mobagen_tune_result r = {.template_name = stage_templates[s], .variant_id = op->variants[i].id,
                                     .index = index++, .median_us = -1, .min_us = -1, .note = note};
            mg_diag vd;
            tuner vt = *t;
            vt.diag = &vd;
            mg_status vs = run_full(&vt, &t->got);
            if (vs != MG_OK) {
                snprintf(note, sizeof note, "failed: %.180s", vd.msg);
            } else if (!compare(t, note, sizeof note)) {   /* else wrong: note says how */
                vs = time_stage(&vt, stage_bits[s], warmup, reps, &r.median_us, &r.min_us);
                if (vs != MG_OK) snprintf(note, sizeof note, "failed: %.180s", vd.msg);
            }
            r.ok = !note[0];
            if (r.ok && r.median_us < best_us[s]) {
                best_us[s] = r.median_us;
                best[s] = i;
            }
            if (o->on_result) o->on_result(&r, o->user);
            done++;
            /* A launch failure can leave the context unusable: stop rather than mis-time. */
            if (vs != MG_OK && t->cu->CtxSynchronize() != 0)
                st = mg_fail(t->diag, MG_E_CUDA, "%s: %s", op->variants[i].id, vd.msg);
        }
        if (st == MG_OK && best[s] < 0)
            st = mg_fail(t->diag, MG_E_UNSUPPORTED, "no %s variant passed the check against the "
                         "reference variant %s", stage_templates[s], op->variants[ref[s]].id);
        /* Later stages are checked with the reference before them, as in the reference run. */
        *slot(op, s) = ref[s];
    }
    if (o->on_progress) o->on_progress(done, total, "", o->user);
    if (st != MG_OK) return st;
    memset(rec, 0, sizeof *rec);
    rec->fp = *mg_deploy_fingerprint(op);
    rec->n_stages = N_STAGES;
    for (int s = 0; s < N_STAGES; s++) {
        snprintf(rec->tpl[s], MG_NAME_MAX, "%s", stage_templates[s]);
        snprintf(rec->point[s], MG_POINT_MAX, "%s", point_of(op->variants[best[s]].id));
        rec->us[s] = best_us[s];
    }
    return MG_OK;
}

mg_status mg_tune_run(mobagen_op *op, const mg_tune_shape *shape, const mobagen_tune_options *opts,
                      mg_tune_record *out, mg_diag *diag)
{
    tuner t = {.op = op, .cu = &op->ctx->cu, .diag = diag};
    int saved[N_STAGES] = {op->selected_kconv, op->selected_route, op->selected_attn};
    mg_status st = mg_ctx_push(op->ctx, diag);
    if (st != MG_OK) return st;
    st = setup(&t, shape);
    if (st == MG_OK) st = tune_all(&t, opts, out);
    teardown(&t);
    mg_ctx_pop(op->ctx);
    /* The caller applies the winners where the templates are not pinned. */
    for (int s = 0; s < N_STAGES; s++) *slot(op, s) = saved[s];
    if (st != MG_OK) return st;
    char identity[65];
    mg_spec_identity(&op->spec, identity);
    mg_bucket_for(identity, t.args.batch, t.args.hq, t.args.hkv, t.args.max_seqlen_k, &out->bucket);
    return MG_OK;
}

mg_status mg_bench_fwd(mobagen_op *op, const mg_tune_shape *shape, int warmup, int reps,
                       double *median_us, double *min_us, mg_diag *diag)
{
    tuner t = {.op = op, .cu = &op->ctx->cu, .diag = diag};
    mg_status st = mg_ctx_push(op->ctx, diag);
    if (st != MG_OK) return st;
    st = setup(&t, shape);
    if (st == MG_OK && mg_deploy_dispatch(op, &t.args) != MG_OK)
        st = mg_fail(diag, MG_E_CUDA, "%s", op->err.msg);
    if (st == MG_OK) st = run_full(&t, &t.got);
    if (st == MG_OK)
        st = time_stage(&t, MG_STAGE_ALL, warmup > 0 ? warmup : 3,
                        reps > 0 ? (reps > MAX_REPS ? MAX_REPS : reps) : 25, median_us, min_us);
    teardown(&t);
    mg_ctx_pop(op->ctx);
    return st;
}
