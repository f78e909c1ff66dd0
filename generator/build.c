#include "build.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "textbuf.h"

struct mg_builder {
    mg_cache *cache;
    int n_sources;
    mg_kernel_source sources[MG_MAX_KERNEL_SOURCES];
    /* NVRTC is loaded by the first worker that misses; the others wait for that outcome. */
    pthread_mutex_t nvrtc_lock;
    int nvrtc_tried;
    mg_status nvrtc_status;
    mg_diag nvrtc_diag;
    mg_nvrtc *nvrtc;
};

mg_status mg_builder_open(const char *cache_dir, mg_builder **out, mg_diag *diag)
{
    *out = NULL;
    mg_builder *b = calloc(1, sizeof *b);
    if (!b) return mg_fail(diag, MG_E_NOMEM, "out of memory");
    pthread_mutex_init(&b->nvrtc_lock, NULL);
    mg_status st = mg_cache_open(cache_dir, &b->cache, diag);
    if (st != MG_OK) {
        mg_builder_close(b);
        return st;
    }
    *out = b;
    return MG_OK;
}

void mg_builder_close(mg_builder *b)
{
    if (!b) return;
    mg_nvrtc_close(b->nvrtc);
    mg_cache_close(b->cache);
    pthread_mutex_destroy(&b->nvrtc_lock);
    free(b);
}

mg_cache *mg_builder_cache(mg_builder *b) { return b->cache; }

mg_status mg_builder_nvrtc(mg_builder *b, const mg_nvrtc **out, mg_diag *diag)
{
    pthread_mutex_lock(&b->nvrtc_lock);
    if (!b->nvrtc_tried) {
        b->nvrtc_tried = 1;
        b->nvrtc_status = mg_nvrtc_open(&b->nvrtc, &b->nvrtc_diag);
    }
    mg_status st = b->nvrtc_status;
    *out = b->nvrtc;
    if (st != MG_OK) mg_fail(diag, st, "%s", b->nvrtc_diag.msg);
    pthread_mutex_unlock(&b->nvrtc_lock);
    return st;
}

int mg_builder_nvrtc_loaded(mg_builder *b)
{
    pthread_mutex_lock(&b->nvrtc_lock);
    int loaded = b->nvrtc != NULL;
    pthread_mutex_unlock(&b->nvrtc_lock);
    return loaded;
}

mg_status mg_builder_add_source(mg_builder *b, const mg_kernel_source *src, mg_diag *diag)
{
    if (!src || !src->fetch) return mg_fail(diag, MG_E_ARG, "a kernel source needs a fetch function");
    if (b->n_sources == MG_MAX_KERNEL_SOURCES)
        return mg_fail(diag, MG_E_UNSUPPORTED, "more than %d kernel sources", MG_MAX_KERNEL_SOURCES);
    b->sources[b->n_sources++] = *src;
    return MG_OK;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mg_entry_lowered_name(const mg_cache_entry *e, const char *role, char *buf, size_t size)
{
    char key[MG_NAME_MAX + 16];
    snprintf(key, sizeof key, "kernel.%s", role);
    return e->meta && mg_cache_meta_get(e->meta, key, buf, size);
}

void mg_variant_key(const mg_variant *v, mg_cache_key *key)
{
    const char *roles[MG_MAX_KERNELS], *names[MG_MAX_KERNELS];
    for (int i = 0; i < v->rendered.n_kernels; i++) {
        roles[i] = v->rendered.kernels[i].role;
        names[i] = v->rendered.kernels[i].name_expr;
    }
    mg_key_input in = {.source = v->rendered.source,
                       .arch = v->arch,
                       .options = mg_nvrtc_base_options,
                       .n_options = mg_nvrtc_n_base_options,
                       .roles = roles,
                       .name_exprs = names,
                       .n_names = v->rendered.n_kernels};
    mg_cache_key_compute(&in, key);
}

static void add_warning(mg_build_result *r, const char *text)
{
    mg_buf w = {0};
    if (r->warning) mg_buf_printf(&w, "%s; ", r->warning);
    mg_buf_puts(&w, text);
    free(r->warning);
    r->warning = mg_buf_take(&w);
}

/* The cache, then the added sources; a damaged cache entry is a miss and a warning. */
static mg_status fetch_by_key(mg_builder *b, const mg_cache_key *key, mg_build_result *r,
                              int *found, int *damaged, mg_diag *diag)
{
    mg_diag note = {{0}};
    int bad = 0;
    mg_status st = mg_cache_get(b->cache, key, &r->entry, found, &bad, &note);
    if (st != MG_OK) return mg_fail(diag, st, "%s", note.msg);
    if (bad) add_warning(r, note.msg);
    if (damaged) *damaged = bad;
    for (int i = 0; i < b->n_sources && !*found && st == MG_OK; i++)
        st = b->sources[i].fetch(b->sources[i].self, key, &r->entry, found, diag);
    return st;
}

mg_status mg_builder_fetch(mg_builder *b, const mg_variant *v, mg_build_result *r, int *found,
                           mg_diag *diag)
{
    mg_cache_key key;
    mg_variant_key(v, &key);
    *found = 0;
    mg_status st = fetch_by_key(b, &key, r, found, NULL, diag);
    r->hit = *found;
    return st;
}

static char *entry_meta(const mg_variant *v, const mg_compiled *c, const mg_nvrtc *nv)
{
    mg_buf m = {0};
    char pt[256];
    int major, minor;
    mg_point_format(&v->point, pt, sizeof pt);
    mg_nvrtc_version(nv, &major, &minor);
    mg_buf_printf(&m, "template=%s\narch=%s\npoint=%s\nnvrtc=%d.%d\n", mg_template_name(v->tpl),
                  v->arch, pt, major, minor);
    for (int i = 0; i < v->rendered.n_kernels && i < c->n_names; i++)
        mg_buf_printf(&m, "kernel.%s=%s\n", v->rendered.kernels[i].role, c->lowered[i]);
    return mg_buf_take(&m);
}

/* The compile path proper: NVRTC (loaded now if not yet) turns the variant into an entry. */
static mg_status compile_variant(mg_builder *b, const mg_variant *v, mg_cache_entry *out,
                                 mg_diag *diag)
{
    const mg_nvrtc *nv;
    mg_status st = mg_builder_nvrtc(b, &nv, diag);
    if (st != MG_OK) return st;
    if (!mg_nvrtc_supports(nv, v->arch)) {
        char archs[512];
        mg_nvrtc_supported_archs(nv, archs, sizeof archs);
        return mg_fail(diag, MG_E_UNSUPPORTED, "this NVRTC (%s) cannot target %s; it targets %s",
                       mg_nvrtc_path(nv), v->arch, archs);
    }
    const char *names[MG_MAX_KERNELS];
    for (int i = 0; i < v->rendered.n_kernels; i++) names[i] = v->rendered.kernels[i].name_expr;
    char source_name[400];
    snprintf(source_name, sizeof source_name, "%s.cu", v->id);
    mg_compiled c;
    st = mg_nvrtc_compile(nv, v->rendered.source, source_name, v->arch, NULL, 0, names,
                          v->rendered.n_kernels, &c, diag);
    if (st == MG_OK) {
        out->meta = entry_meta(v, &c, nv);
        out->log = c.log ? c.log : strdup("");
        out->cubin = c.cubin;
        out->cubin_size = c.cubin_size;
        c.log = NULL;
        c.cubin = NULL;
        if (!out->meta || !out->log) st = mg_fail(diag, MG_E_NOMEM, "out of memory");
    }
    mg_compiled_free(&c);
    return st;
}

/* Builds one variant: fetch by key, else compile and publish (a cache that cannot take it
 * costs a warning, not the kernel). */
static mg_status build_one(mg_builder *b, const mg_variant *v, mg_build_result *r, int *damaged,
                           int *unsaved, mg_diag *diag)
{
    mg_cache_key key;
    mg_variant_key(v, &key);
    int found = 0;
    mg_status st = fetch_by_key(b, &key, r, &found, damaged, diag);
    r->hit = found;
    if (st != MG_OK || found) return st;
    st = compile_variant(b, v, &r->entry, diag);
    if (st != MG_OK) return st;
    mg_diag put;
    if (mg_cache_put(b->cache, &key, &r->entry, &put) != MG_OK) {
        char text[MG_ERRMSG_MAX + 64];
        snprintf(text, sizeof text, "%s; using the compiled kernel uncached", put.msg);
        add_warning(r, text);
        *unsaved = 1;
    }
    return MG_OK;
}

typedef struct build_job {
    mg_builder *b;
    const mg_variant *variants;
    mg_build_result *results;
    int n, next, done;
    int progress;
    const mg_build_options *opts;
    mg_build_stats *stats;
    pthread_mutex_t lock;
} build_job;

static void *worker(void *p)
{
    build_job *job = p;
    for (;;) {
        pthread_mutex_lock(&job->lock);
        int i = job->next < job->n ? job->next++ : -1;
        pthread_mutex_unlock(&job->lock);
        if (i < 0) return NULL;
        mg_build_result *r = &job->results[i];
        mg_diag d;
        int damaged = 0, unsaved = 0;
        double t0 = now_seconds();
        r->status = build_one(job->b, &job->variants[i], r, &damaged, &unsaved, &d);
        r->seconds = now_seconds() - t0;
        if (r->status != MG_OK) r->error = strdup(d.msg);
        pthread_mutex_lock(&job->lock);
        job->done++;
        job->stats->hits += r->status == MG_OK && r->hit;
        job->stats->misses += r->status == MG_OK && !r->hit;
        job->stats->damaged += damaged;
        job->stats->unsaved += unsaved;
        job->stats->failed += r->status != MG_OK;
        if (job->progress) {
            fprintf(stderr, "\r\033[K[%d/%d] %s %s", job->done, job->n,
                    r->status != MG_OK ? "FAILED" : r->hit ? "cached" : "compiled",
                    job->variants[i].id);
            fflush(stderr);
        }
        if (job->opts && job->opts->on_result)
            job->opts->on_result(job->opts->on_result_user, &job->variants[i], r, job->done, job->n);
        pthread_mutex_unlock(&job->lock);
    }
}

mg_status mg_builder_build(mg_builder *b, const mg_variant *variants, int n,
                           const mg_build_options *opts, mg_build_result *results,
                           mg_build_stats *stats, mg_diag *diag)
{
    mg_build_stats local_stats;
    if (!stats) stats = &local_stats;
    memset(stats, 0, sizeof *stats);
    stats->total = n;
    mg_build_result *own = NULL;
    if (!results) {
        own = calloc((size_t)(n ? n : 1), sizeof *own);
        if (!own) return mg_fail(diag, MG_E_NOMEM, "out of memory");
        results = own;
    } else {
        memset(results, 0, (size_t)n * sizeof *results);
    }
    int jobs = opts && opts->jobs > 0 ? opts->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (jobs < 1) jobs = 1;
    if (jobs > n) jobs = n ? n : 1;
    build_job job = {.b = b, .variants = variants, .results = results, .n = n,
                     .progress = opts && opts->progress, .opts = opts, .stats = stats};
    pthread_mutex_init(&job.lock, NULL);
    double t0 = now_seconds();
    pthread_t threads[256];
    int started = 0;
    /* One variant, or one job: no thread to start. */
    for (int i = 0; jobs > 1 && i < jobs && i < 256; i++)
        if (pthread_create(&threads[started], NULL, worker, &job) == 0) started++;
    if (started == 0) worker(&job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    pthread_mutex_destroy(&job.lock);
    stats->seconds = now_seconds() - t0;
    if (job.progress && n) fprintf(stderr, "\r\033[K");

    mg_status st = MG_OK;
    for (int i = 0; i < n; i++)
        if (results[i].status != MG_OK) {
            st = mg_fail(diag, results[i].status, "%s: %s", variants[i].id,
                         results[i].error ? results[i].error : "failed");
            break;
        }
    if (own) mg_build_results_free(own, n);
    return st;
}

void mg_build_results_free(mg_build_result *r, int n)
{
    if (!r) return;
    for (int i = 0; i < n; i++) {
        mg_cache_entry_free(&r[i].entry);
        free(r[i].error);
        free(r[i].warning);
    }
    free(r);
}
