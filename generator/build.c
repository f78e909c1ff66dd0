#include "build.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "textbuf.h"

struct mg_builder {
    mg_nvrtc *nvrtc;
    mg_cache *cache;
};

mg_status mg_builder_open(const char *cache_dir, mg_builder **out, mg_diag *diag)
{
    *out = NULL;
    mg_builder *b = calloc(1, sizeof *b);
    if (!b) return mg_fail(diag, MG_E_NOMEM, "out of memory");
    mg_status st = mg_nvrtc_open(&b->nvrtc, diag);
    if (st == MG_OK) st = mg_cache_open(cache_dir, &b->cache, diag);
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
    free(b);
}

const mg_nvrtc *mg_builder_nvrtc(const mg_builder *b) { return b->nvrtc; }
mg_cache *mg_builder_cache(mg_builder *b) { return b->cache; }

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

static char *entry_meta(const mg_variant *v, const mg_compiled *c)
{
    mg_buf m = {0};
    char pt[256];
    mg_point_format(&v->point, pt, sizeof pt);
    mg_buf_printf(&m, "template=%s\narch=%s\npoint=%s\n", mg_template_name(v->tpl), v->arch, pt);
    for (int i = 0; i < v->rendered.n_kernels && i < c->n_names; i++)
        mg_buf_printf(&m, "kernel.%s=%s\n", v->rendered.kernels[i].role, c->lowered[i]);
    return mg_buf_take(&m);
}

/* Builds one variant: cache lookup, else compile and publish. */
static mg_status build_one(mg_builder *b, const mg_variant *v, mg_build_result *r, int *damaged,
                           mg_diag *diag)
{
    const char *names[MG_MAX_KERNELS];
    for (int i = 0; i < v->rendered.n_kernels; i++) names[i] = v->rendered.kernels[i].name_expr;
    mg_key_input in = {.source = v->rendered.source,
                       .arch = v->arch,
                       .options = mg_nvrtc_base_options,
                       .n_options = mg_nvrtc_n_base_options,
                       .name_exprs = names,
                       .n_names = v->rendered.n_kernels};
    mg_nvrtc_version(b->nvrtc, &in.nvrtc_major, &in.nvrtc_minor);
    mg_cache_key key;
    mg_cache_key_compute(&in, &key);
    int found = 0;
    mg_status st = mg_cache_get(b->cache, &key, &r->entry, &found, damaged, diag);
    if (st != MG_OK || found) {
        r->hit = found;
        return st;
    }
    char source_name[400];
    snprintf(source_name, sizeof source_name, "%s.cu", v->id);
    mg_compiled c;
    st = mg_nvrtc_compile(b->nvrtc, v->rendered.source, source_name, v->arch, NULL, 0, names,
                          v->rendered.n_kernels, &c, diag);
    if (st == MG_OK) {
        r->entry.meta = entry_meta(v, &c);
        r->entry.log = c.log ? c.log : strdup("");
        r->entry.cubin = c.cubin;
        r->entry.cubin_size = c.cubin_size;
        c.log = NULL;
        c.cubin = NULL;
        if (!r->entry.meta || !r->entry.log) st = mg_fail(diag, MG_E_NOMEM, "out of memory");
        if (st == MG_OK) st = mg_cache_put(b->cache, &key, &r->entry, diag);
    }
    mg_compiled_free(&c);
    return st;
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
        int damaged = 0;
        double t0 = now_seconds();
        r->status = build_one(job->b, &job->variants[i], r, &damaged, &d);
        r->seconds = now_seconds() - t0;
        if (r->status != MG_OK) r->error = strdup(d.msg);
        pthread_mutex_lock(&job->lock);
        job->done++;
        job->stats->hits += r->status == MG_OK && r->hit;
        job->stats->misses += r->status == MG_OK && !r->hit;
        job->stats->damaged += damaged;
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
    for (int i = 0; i < jobs && i < 256; i++)
        if (pthread_create(&threads[started], NULL, worker, &job) == 0) started++;
    if (started == 0) worker(&job);  /* no threads to be had: build serially */
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
    }
    free(r);
}
