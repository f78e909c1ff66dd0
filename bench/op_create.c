/* What a fresh process spends to get a spec's kernels from a warm cache: mobagen_ctx_create and
 * mobagen_op_create as a program sees them (with a GPU), then the CPU side of the latter phase by
 * phase (spec, templates, expansion, cache lookups), and whether NVRTC was needed.
 *   op_create [SPEC [ARCH]]   (default specs/default.yaml; the device's arch, else sm_90a)
 * A first child process fills the cache (compiling what is missing); a second one, as fresh as
 * a program starting up, is measured. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "build.h"
#include "mobagen.h"
#include "spec.h"
#include "variants.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static int fail(const char *what, const mg_diag *d)
{
    fprintf(stderr, "op_create: %s: %s\n", what, d->msg);
    return 1;
}

/* The generator's part of mobagen_op_create, timed step by step. */
static int cpu_phases(const char *spec_path, const char *arch, int quiet)
{
    mg_diag d;
    mg_spec spec;
    mg_template_set *set = NULL;
    mg_variant *vars = NULL;
    int n = 0;
    mg_builder *b = NULL;
    double t0 = now_ms();
    if (mg_spec_load(spec_path, &spec, &d) != MG_OK) return fail("spec", &d);
    double t1 = now_ms();
    if (mg_template_set_open(NULL, &set, &d) != MG_OK) return fail("templates", &d);
    double t2 = now_ms();
    if (mg_variants_expand(set, &spec, &arch, 1, &vars, &n, &d) != MG_OK) return fail("expand", &d);
    double t3 = now_ms();
    if (mg_builder_open(NULL, &b, &d) != MG_OK) return fail("cache", &d);
    double t4 = now_ms();
    mg_build_stats stats;
    mg_status st = mg_builder_build(b, vars, n, NULL, NULL, &stats, &d);
    double t5 = now_ms();
    if (!quiet) printf("cpu side, %s on %s, %d variants: spec %.2f ms, templates %.2f ms, expand %.2f ms, "
           "cache open %.2f ms, lookups %.2f ms; total %.2f ms\n",
           spec.name, arch, n, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0);
    if (!quiet) printf("  %d cached, %d compiled, %d failed; NVRTC %s\n", stats.hits, stats.misses,
           stats.failed, mg_builder_nvrtc_loaded(b) ? "loaded (the cache was not warm)" : "not loaded");
    if (st != MG_OK) fail("build", &d);
    mg_builder_close(b);
    mg_variants_free(vars, n);
    mg_template_set_free(set);
    return st != MG_OK;
}

/* Whether this process has NVRTC mapped: a warm op creation must not load it. */
static int nvrtc_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) found = strstr(line, "libnvrtc") != NULL;
    if (f) fclose(f);
    return found;
}

/* One run in this process: creates the op (with a GPU), then times the CPU phases (not when
 * quiet). `when` names the run in its line: the first process finds the cache as it is (cold
 * when it is empty), the second finds it warm. */
static int run(const char *spec_path, const char *arch, int quiet, const char *when)
{
    double t0 = now_ms();
    mobagen_ctx *ctx = NULL;
    mg_status st = mobagen_ctx_create(0, NULL, &ctx);
    double t1 = now_ms();
    if (st == MG_OK) {
        mobagen_op *op = NULL;
        st = mobagen_op_create(ctx, spec_path, &op);
        double t2 = now_ms();
        if (st != MG_OK)
            fprintf(stderr, "op_create: mobagen_op_create: %s\n", mobagen_ctx_errmsg(ctx));
        else
            printf("%s on %s (%s): mobagen_ctx_create %.2f ms, mobagen_op_create %.2f ms"
                   " (NVRTC %s)\n", when, mobagen_ctx_device_name(ctx), mobagen_ctx_arch(ctx), t1 - t0,
                   t2 - t1, nvrtc_mapped() ? "loaded: some kernel was compiled" : "not loaded");
        mobagen_op_destroy(op);
        if (!arch) arch = mobagen_ctx_arch(ctx);
    } else if (!quiet) {
        printf("skipped: no CUDA device (%s); CPU side only\n", mobagen_ctx_errmsg(ctx));
        st = MG_OK;
    } else {
        st = MG_OK;
    }
    int rc = cpu_phases(spec_path, arch ? arch : "sm_90a", quiet) || st != MG_OK;
    mobagen_ctx_destroy(ctx);
    return rc;
}

static int in_child(const char *spec_path, const char *arch, int quiet, const char *when)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        int rc = run(spec_path, arch, quiet, when);
        fflush(NULL);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return !WIFEXITED(status) || WEXITSTATUS(status) != 0;
}

int main(int argc, char **argv)
{
    const char *spec_path = argc > 1 ? argv[1] : "specs/default.yaml";
    const char *arch = argc > 2 ? argv[2] : NULL;
    /* The parent touches nothing, so that each child starts as a program would. */
    return in_child(spec_path, arch, 1, "first process (cache as found)") ||
           in_child(spec_path, arch, 0, "second process (warm cache)");
}
