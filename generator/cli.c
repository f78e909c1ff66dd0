/* mobagen command line: gen, build, list, cache, doctor. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "build.h"
#include "cli_deploy.h"
#include "cache.h"
#include "cuda_driver.h"
#include "nvrtc.h"
#include "spec.h"
#include "textbuf.h"
#include "variants.h"

/* Exit codes a script can rely on (README.md lists them). */
enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_SPEC = 3,
    EXIT_TEMPLATE = 4,
    EXIT_COMPILE = 5,
    EXIT_NO_NVRTC = 6,
    EXIT_CACHE = 7,
    EXIT_CUDA = 8,
};

static int exit_code(mg_status s)
{
    switch (s) {
    case MG_OK: return EXIT_OK;
    case MG_E_ARG: return EXIT_USAGE;
    case MG_E_SPEC: return EXIT_SPEC;
    case MG_E_TEMPLATE: return EXIT_TEMPLATE;
    case MG_E_COMPILE: return EXIT_COMPILE;
    case MG_E_NO_NVRTC: return EXIT_NO_NVRTC;
    case MG_E_CACHE:
    case MG_E_IO: return EXIT_CACHE;
    case MG_E_NO_DRIVER:
    case MG_E_NO_DEVICE:
    case MG_E_CUDA: return EXIT_CUDA;
    default: return EXIT_FAILED;
    }
}

static int fail(mg_status s, const mg_diag *d)
{
    fprintf(stderr, "mobagen: error: %s\n", d->msg);
    return exit_code(s);
}

static const char usage_text[] =
    "usage: mobagen COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  gen SPEC      write the generated CUDA sources of every variant under out/\n"
    "  build SPEC    compile every valid variant into the kernel cache\n"
    "  list SPEC     print the variants a spec expands to\n"
    "  cache ls      list cache entries;  cache clean: remove them (other files stay)\n"
    "  doctor        NVRTC, CUDA driver, GPUs and cache location\n"
    "  tune SPEC     check and time every variant on this GPU, record the winners\n"
    "                (--seqlens L1,L2 --batch B --hkv H --reps N --db FILE --no-save)\n"
    "  bench SPEC    time the dispatched forward next to PyTorch SDPA (--seqlens, --batch, --hkv)\n"
    "  bundle SPEC... --arch A,B -o FILE [--tuning DB]  CUBINs of every variant in one file\n"
    "  inspect FILE  list what a bundle holds\n"
    "\n"
    "options (where they apply):\n"
    "  --arch A,B    target archs instead of the spec's (gen, build, list)\n"
    "  --templates DIR  read templates from DIR instead of the embedded copies\n"
    "  --out DIR     output directory for gen (default out/SPECNAME)\n"
    "  --jobs N      parallel NVRTC compiles for build (default: all cores)\n"
    "  -h, --help    this text;  --version: the version\n"
    "\n"
    "exit codes: 0 ok, 1 failed, 2 usage, 3 spec, 4 template, 5 compile, 6 no NVRTC,\n"
    "            7 cache or I/O, 8 CUDA driver or device\n"
    "environment: MOBAGEN_CACHE_DIR, MOBAGEN_TEMPLATE_DIR, CUDA_HOME, MOBAGEN_NVRTC,\n"
    "             MOBAGEN_TUNING_DB, MOBAGEN_AUTOTUNE, MOBAGEN_BUNDLE\n";

typedef struct cli_args {
    const char *command;
    const char *subcommand;
    const char *spec_path;
    const char *template_dir;
    const char *out_dir;
    int jobs;
    int n_archs;
    const char *archs[MG_MAX_ARCHS];
} cli_args;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "mobagen: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun 'mobagen --help' for usage\n");
    return EXIT_USAGE;
}

static int parse_archs(cli_args *a, const char *list)
{
    char *buf = strdup(list);
    if (!buf) return usage_error("out of memory parsing --arch %s", list);
    int rc = EXIT_OK;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && rc == EXIT_OK;
         tok = strtok_r(NULL, ",", &save)) {
        const mg_arch_info *known = mg_arch_lookup(tok);
        if (!known) {
            fprintf(stderr, "mobagen: unknown arch '%s' in --arch; known: %s\n", tok,
                    mg_arch_known_list());
            rc = EXIT_USAGE;
            break;
        }
        for (int i = 0; i < a->n_archs && rc == EXIT_OK; i++)
            if (!strcmp(a->archs[i], known->name)) {
                fprintf(stderr, "mobagen: arch '%s' is given twice in --arch; list each arch once\n",
                        known->name);
                rc = EXIT_USAGE;
            }
        if (rc == EXIT_OK && a->n_archs == MG_MAX_ARCHS) rc = usage_error("too many archs in --arch %s", list);
        if (rc == EXIT_OK) a->archs[a->n_archs++] = known->name;   /* static storage */
    }
    free(buf);
    if (rc == EXIT_OK && a->n_archs == 0) return usage_error("--arch needs at least one arch%s", "");
    return rc;
}

/* Returns -1 when parsing succeeded, else an exit code (help printed = 0). */
static int parse_args(int argc, char **argv, cli_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            fputs(usage_text, stdout);
            return EXIT_OK;
        } else if (!strcmp(s, "--version")) {
            printf("mobagen %s\n", mobagen_version());
            return EXIT_OK;
        } else if (!strcmp(s, "--arch") || !strcmp(s, "--templates") || !strcmp(s, "--out") ||
                   !strcmp(s, "--jobs")) {
            if (!value) return usage_error("%s needs a value", s);
            i++;
            if (!strcmp(s, "--arch")) {
                int rc = parse_archs(a, value);
                if (rc != EXIT_OK) return rc;
            } else if (!strcmp(s, "--templates")) {
                a->template_dir = value;
            } else if (!strcmp(s, "--out")) {
                a->out_dir = value;
            } else {
                char *end;
                long j = strtol(value, &end, 10);
                if (*end || j < 1 || j > 256) return usage_error("--jobs takes 1..256, got '%s'", value);
                a->jobs = (int)j;
            }
        } else if (s[0] == '-' && s[1]) {
            return usage_error("unknown option '%s'", s);
        } else if (!a->command) {
            a->command = s;
        } else if (!strcmp(a->command, "cache") && !a->subcommand) {
            a->subcommand = s;
        } else if (!a->spec_path && strcmp(a->command, "cache") && strcmp(a->command, "doctor")) {
            a->spec_path = s;
        } else {
            return usage_error("unexpected argument '%s'", s);
        }
    }
    if (!a->command) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    return -1;
}

/* A spec with its templates and variants, as gen, build and list need them. */
typedef struct expansion {
    mg_spec spec;
    mg_template_set *set;
    mg_variant *vars;
    int n;
} expansion;

/* Loads spec and templates and expands (or, without render, only enumerates) the variants. */
static int expand_spec(const cli_args *a, int render, expansion *x)
{
    memset(x, 0, sizeof *x);
    mg_diag d;
    mg_status st = mg_spec_load(a->spec_path, &x->spec, &d);
    if (st == MG_OK) st = mg_template_set_open(a->template_dir, &x->set, &d);
    if (st == MG_OK) {
        const char *const *archs = a->n_archs ? a->archs : NULL;
        st = render ? mg_variants_expand(x->set, &x->spec, archs, a->n_archs, &x->vars, &x->n, &d)
                    : mg_variants_enumerate(x->set, &x->spec, archs, a->n_archs, &x->vars, &x->n, &d);
    }
    if (st != MG_OK) {
        mg_template_set_free(x->set);
        x->set = NULL;
        return fail(st, &d);
    }
    return EXIT_OK;
}

static void expansion_free(expansion *x)
{
    mg_variants_free(x->vars, x->n);
    mg_template_set_free(x->set);
    memset(x, 0, sizeof *x);
}

static int cmd_list(const cli_args *a)
{
    expansion x;
    int rc = expand_spec(a, 0, &x);
    if (rc != EXIT_OK) return rc;
    const mg_spec *spec = &x.spec;
    const mg_variant *vars = x.vars;
    const int n = x.n;
    for (int i = 0; i < n; i++) printf("%s\n", vars[i].id);
    fprintf(stderr, "%d variants of spec '%s' (templates: %s)\n", n, spec->name,
            mg_template_set_origin(x.set));
    expansion_free(&x);
    return EXIT_OK;
}

/* Writes a file whole or not at all (temporary file, then rename). */
static int write_file_atomic(const char *path, const char *data, size_t len)
{
    char *tmp;
    if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) return -1;
    FILE *f = fopen(tmp, "wb");
    int bad = !f;
    if (f) {
        bad |= fwrite(data, 1, len, f) != len;
        bad |= fclose(f) != 0;
    }
    if (!bad && rename(tmp, path) == 0) {
        free(tmp);
        return 0;
    }
    int saved = errno;
    if (f) unlink(tmp);
    free(tmp);
    errno = saved;
    return -1;
}

/* The source file of one variant under out_dir; malloc'd (no length limit), NULL without memory. */
static char *variant_source_path(const char *out_dir, const mg_variant *v, char **dir)
{
    /* Room for every knob: name, '=', an int and a separator each, so nothing is cut off. */
    char pt[MG_MAX_KNOBS * (MG_NAME_MAX + 14) + 8], *path = NULL;
    mg_point_format(&v->point, pt, sizeof pt);
    for (char *c = pt; *c; c++)
        if (*c == ',' || *c == '=') *c = *c == ',' ? '.' : '-';
    if (asprintf(dir, "%s/%s", out_dir, v->arch) < 0) return *dir = NULL;
    if (asprintf(&path, "%s/%s.%s.cu", *dir, mg_template_name(v->tpl), pt) < 0) {
        free(*dir);
        return *dir = NULL;
    }
    return path;
}

static int cmd_gen(const cli_args *a)
{
    expansion x;
    int rc = expand_spec(a, 1, &x);
    if (rc != EXIT_OK) return rc;
    const mg_variant *vars = x.vars;
    const int n = x.n;
    char *out_dir = NULL;
    if (a->out_dir ? !(out_dir = strdup(a->out_dir)) : asprintf(&out_dir, "out/%s", x.spec.name) < 0) {
        out_dir = NULL;
        rc = EXIT_FAILED;
        fprintf(stderr, "mobagen: error: out of memory\n");
    }
    for (int i = 0; i < n && rc == EXIT_OK; i++) {
        char *dir = NULL, *path = variant_source_path(out_dir, &vars[i], &dir);
        if (!path) {
            fprintf(stderr, "mobagen: error: out of memory\n");
            rc = EXIT_FAILED;
        } else if (mg_mkdir_p(dir) != 0 ||
                   write_file_atomic(path, vars[i].rendered.source, vars[i].rendered.source_len) != 0) {
            fprintf(stderr, "mobagen: error: cannot write %s: %s\n", path, strerror(errno));
            rc = EXIT_CACHE;
        } else {
            printf("%s\n", path);
        }
        free(path);
        free(dir);
    }
    if (rc == EXIT_OK) fprintf(stderr, "wrote %d sources under %s\n", n, out_dir);
    free(out_dir);
    expansion_free(&x);
    return rc;
}

static int cmd_build(const cli_args *a)
{
    expansion x;
    int rc = expand_spec(a, 1, &x);
    if (rc != EXIT_OK) return rc;
    const mg_spec *spec = &x.spec;
    const mg_variant *vars = x.vars;
    const int n = x.n;
    mg_diag d;
    mg_builder *b = NULL;
    mg_status st = mg_builder_open(NULL, &b, &d);
    mg_build_result *results = NULL;
    if (st == MG_OK && !(results = calloc((size_t)(n ? n : 1), sizeof *results)))
        st = mg_fail(&d, MG_E_NOMEM, "out of memory");
    mg_build_stats stats = {0};
    if (st == MG_OK) {
        mg_build_options opts = {.jobs = a->jobs, .progress = isatty(2)};
        st = mg_builder_build(b, vars, n, &opts, results, &stats, &d);
        for (int i = 0; i < n; i++)
            if (results[i].warning)
                fprintf(stderr, "mobagen: warning: %s: %s\n", vars[i].id, results[i].warning);
        for (int i = 0; i < n; i++)
            if (results[i].status != MG_OK)
                fprintf(stderr, "mobagen: error: %s: %s\n", vars[i].id, results[i].error);
            else if (results[i].entry.log && results[i].entry.log[0] && !results[i].hit)
                fprintf(stderr, "mobagen: NVRTC log for %s:\n%s\n", vars[i].id, results[i].entry.log);
        fflush(stderr);
        printf("spec %s: %d variants, %d cached, %d compiled, %d failed%s%s in %.2f s (cache %s)\n",
               spec->name, stats.total, stats.hits, stats.misses, stats.failed,
               stats.damaged ? " (damaged entries rebuilt)" : "",
               stats.unsaved ? " (some not cached, see the warnings)" : "", stats.seconds,
               mg_cache_dir(mg_builder_cache(b)));
        if (st != MG_OK) rc = exit_code(st);
    } else {
        rc = fail(st, &d);
    }
    mg_build_results_free(results, n);
    mg_builder_close(b);
    expansion_free(&x);
    return rc;
}

static void print_item(const mg_cache_item *it, void *ctx)
{
    int *count = ctx;
    char tpl[64] = "?", arch[16] = "?", point[256] = "?", nvrtc[16] = "?", when[32];
    if (it->meta) {
        mg_cache_meta_get(it->meta, "template", tpl, sizeof tpl);
        mg_cache_meta_get(it->meta, "arch", arch, sizeof arch);
        mg_cache_meta_get(it->meta, "point", point, sizeof point);
        mg_cache_meta_get(it->meta, "nvrtc", nvrtc, sizeof nvrtc);
    }
    struct tm tm;
    localtime_r(&it->mtime, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
    printf("%.16s  %8zu  %s  nvrtc %-5s  %s/%s/%s%s%s\n", it->key_hex, it->bytes, when, nvrtc, tpl,
           arch, point, it->valid ? "" : "  DAMAGED: ", it->valid ? "" : it->damage);
    ++*count;
}

/* Names under the cache's directory that are not its own: said, never touched. */
static void print_skipped(const char *path, const char *why, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "mobagen: left %s alone: %s\n", path, why);
}

static int cmd_cache(const cli_args *a)
{
    if (!a->subcommand || (strcmp(a->subcommand, "ls") && strcmp(a->subcommand, "clean")))
        return usage_error("cache needs 'ls' or 'clean'%s", "");
    mg_diag d;
    mg_cache *c;
    mg_status st = mg_cache_open(NULL, &c, &d);
    if (st != MG_OK) return fail(st, &d);
    if (!strcmp(a->subcommand, "ls")) {
        int count = 0;
        st = mg_cache_list(c, print_item, print_skipped, &count, &d);
        if (st == MG_OK) fprintf(stderr, "%d entries in %s\n", count, mg_cache_dir(c));
    } else {
        mg_cache_clean_stats cs;
        st = mg_cache_clean(c, &cs, print_skipped, NULL, &d);
        if (st == MG_OK) {
            printf("removed %d files from %s", cs.removed, mg_cache_dir(c));
            if (cs.in_use) printf("; kept %d being written by running builds", cs.in_use);
            if (cs.skipped) printf("; left %d names that are not the cache's alone", cs.skipped);
            printf("\n");
        }
    }
    mg_cache_close(c);
    return st == MG_OK ? EXIT_OK : fail(st, &d);
}

static void doctor_gpus(void)
{
    mg_cuda cu;
    mg_diag d;
    mg_status st = mg_cuda_load(&cu, &d);
    if (st != MG_OK) {
        printf("cuda driver: none (%s)\n", d.msg);
        printf("gpus:        none\n");
        return;
    }
    int version = 0, count = 0;
    cu.DriverGetVersion(&version);
    cu.DeviceGetCount(&count);
    printf("cuda driver: %d.%d\n", version / 1000, version % 1000 / 10);
    printf("gpus:        %d\n", count);
    for (int i = 0; i < count; i++) {
        cu_device dev;
        char name[256] = "?";
        int major = 0, minor = 0, sms = 0;
        size_t mem = 0;
        if (cu.DeviceGet(&dev, i) != 0) continue;
        cu.DeviceGetName(name, sizeof name, dev);
        cu.DeviceGetAttribute(&major, CU_ATTR_CC_MAJOR, dev);
        cu.DeviceGetAttribute(&minor, CU_ATTR_CC_MINOR, dev);
        cu.DeviceGetAttribute(&sms, CU_ATTR_MULTIPROCESSOR_COUNT, dev);
        cu.DeviceTotalMem(&mem, dev);
        printf("  [%d] %s, sm_%d%d, %d SMs, %.1f GiB\n", i, name, major, minor, sms,
               (double)mem / (1 << 30));
    }
    mg_cuda_unload(&cu);
}

static int cmd_doctor(void)
{
    mg_diag d;
    mg_nvrtc *n;
    int problems = 0;
    if (mg_nvrtc_open(&n, &d) == MG_OK) {
        int major, minor;
        char archs[512];
        mg_nvrtc_version(n, &major, &minor);
        mg_nvrtc_supported_archs(n, archs, sizeof archs);
        printf("nvrtc:       %d.%d (%s)\n", major, minor, mg_nvrtc_path(n));
        printf("nvrtc archs: %s\n", archs);
        mg_nvrtc_close(n);
    } else {
        printf("nvrtc:       none (%s)\n", d.msg);
        problems++;
    }
    doctor_gpus();
    char dir[1024];
    if (mg_cache_default_dir(dir, sizeof dir, &d) == MG_OK) {
        printf("cache:       %s\n", dir);
    } else {
        printf("cache:       none (%s)\n", d.msg);
        problems++;
    }
    mg_template_set *set;
    if (mg_template_set_open(NULL, &set, &d) == MG_OK) {
        printf("templates:   %d from %s\n", mg_template_set_count(set), mg_template_set_origin(set));
        mg_template_set_free(set);
    } else {
        printf("templates:   none (%s)\n", d.msg);
        problems++;
    }
    return problems ? EXIT_FAILED : EXIT_OK;
}

int main(int argc, char **argv)
{
    int rc = mg_cli_deploy(argc, argv, exit_code);
    if (rc >= 0) return rc;
    cli_args a;
    rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    int needs_spec = !strcmp(a.command, "gen") || !strcmp(a.command, "build") ||
                     !strcmp(a.command, "list");
    if (needs_spec && !a.spec_path) return usage_error("'%s' needs a SPEC file", a.command);
    if (!strcmp(a.command, "gen")) return cmd_gen(&a);
    if (!strcmp(a.command, "build")) return cmd_build(&a);
    if (!strcmp(a.command, "list")) return cmd_list(&a);
    if (!strcmp(a.command, "cache")) return cmd_cache(&a);
    if (!strcmp(a.command, "doctor")) return cmd_doctor();
    return usage_error("unknown command '%s'", a.command);
}
