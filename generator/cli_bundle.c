/* mobagen bundle SPEC... --arch A,B -o FILE [--tuning DB]; mobagen inspect FILE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build.h"
#include "bundle.h"
#include "bundle_write.h"
#include "cli_deploy.h"
#include "textbuf.h"
#include "tunedb.h"
#include "variants.h"

typedef struct spec_build {
    mg_variant *vars;
    mg_build_result *results;
    int n;
} spec_build;

static void kernel_texts(const mg_variant *v, const mg_build_result *r, char **launch, char **entry)
{
    mg_buf l = {0}, e = {0};
    for (int i = 0; i < v->rendered.n_launch; i++)
        mg_buf_printf(&l, "%s=%lld\n", v->rendered.launch[i].name, v->rendered.launch[i].value);
    for (const char *p = r->entry.meta; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) + 1 : strlen(p);
        if (!strncmp(p, "kernel.", 7)) mg_buf_put(&e, p, len);
        p += len;
    }
    *launch = mg_buf_take(&l);
    *entry = mg_buf_take(&e);
}

/* The records of the database file at path that concern the bundled specs, as file text. */
static mg_status tuning_text(const char *path, const mg_bundle_spec *specs, int n_specs, char **out,
                             int *count, mg_diag *d)
{
    mg_tunedb all = {0}, mine = {0};
    mg_status st = mg_tunedb_load(&all, path, 1, d);
    for (int i = 0; i < all.n && st == MG_OK; i++)
        for (int s = 0; s < n_specs; s++)
            if (!strcmp(all.recs[i].bucket.spec, specs[s].identity)) st = mg_tunedb_put(&mine, &all.recs[i], d);
    *count = mine.n;
    if (st == MG_OK && !(*out = mg_tunedb_format(&mine))) st = mg_fail(d, MG_E_NOMEM, "out of memory");
    mg_tunedb_free(&all);
    mg_tunedb_free(&mine);
    return st;
}

int cli_bundle(const deploy_args *a)
{
    mg_diag d;
    const char *archs[MG_MAX_ARCHS];
    char arch_buf[MG_MAX_ARCHS][16], list[512];
    int n_archs = 0;
    snprintf(list, sizeof list, "%s", a->archs);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!mg_arch_lookup(t) || n_archs == MG_MAX_ARCHS) {
            mg_fail(&d, MG_E_ARG, "unknown arch '%s' in --arch (known: %s)", t, mg_arch_known_list());
            return cli_deploy_fail(a, MG_E_ARG, d.msg);
        }
        snprintf(arch_buf[n_archs], 16, "%s", t);
        archs[n_archs] = arch_buf[n_archs];
        n_archs++;
    }
    mg_builder *b = NULL;
    mg_template_set *set = NULL;
    spec_build builds[DEPLOY_MAX_SPECS] = {{0}};
    mg_bundle_spec specs[DEPLOY_MAX_SPECS];
    mg_bundle_kernel *kernels = NULL;
    int n_specs = 0, n_kernels = 0, n_tuning = 0;
    char *tuning = NULL;
    memset(specs, 0, sizeof specs);
    const mg_nvrtc *nv = NULL;
    mg_status st = mg_builder_open(NULL, &b, &d);
    if (st == MG_OK) st = mg_builder_nvrtc(b, &nv, &d);
    for (int i = 0; i < n_archs && st == MG_OK; i++)
        if (!mg_nvrtc_supports(nv, archs[i]))
            st = mg_fail(&d, MG_E_UNSUPPORTED, "this NVRTC cannot target %s", archs[i]);
    if (st == MG_OK) st = mg_template_set_open(a->templates, &set, &d);
    for (int s = 0; s < a->n_specs && st == MG_OK; s++) {
        mg_spec spec;
        st = mg_spec_load(a->specs[s], &spec, &d);
        if (st != MG_OK) break;
        mg_bundle_spec *bs = &specs[n_specs];
        mg_spec_identity(&spec, bs->identity);
        int dup = 0;
        for (int j = 0; j < n_specs; j++) dup |= !strcmp(specs[j].identity, bs->identity);
        if (dup) {
            fprintf(stderr, "mobagen: note: %s has the same content as an earlier spec; bundled once\n",
                    a->specs[s]);
            continue;
        }
        snprintf(bs->name, sizeof bs->name, "%s", spec.name);
        size_t len;
        if (!(bs->yaml = mg_read_file(a->specs[s], &len))) {
            st = mg_fail(&d, MG_E_IO, "cannot read %s", a->specs[s]);
            break;
        }
        spec_build *sb = &builds[n_specs++];
        st = mg_variants_expand(set, &spec, archs, n_archs, &sb->vars, &sb->n, &d);
        if (st == MG_OK && !(sb->results = calloc((size_t)(sb->n ? sb->n : 1), sizeof *sb->results)))
            st = mg_fail(&d, MG_E_NOMEM, "out of memory");
        mg_build_options opts = {.progress = isatty(2)};
        if (st == MG_OK) st = mg_builder_build(b, sb->vars, sb->n, &opts, sb->results, NULL, &d);
        n_kernels += sb->n;
    }
    if (st == MG_OK && !(kernels = calloc((size_t)(n_kernels ? n_kernels : 1), sizeof *kernels)))
        st = mg_fail(&d, MG_E_NOMEM, "out of memory");
    int k = 0;
    for (int s = 0; s < n_specs && st == MG_OK; s++) {
        int seq[MG_MAX_ARCHS] = {0};
        for (int i = 0; i < builds[s].n; i++, k++) {
            const mg_variant *v = &builds[s].vars[i];
            mg_bundle_kernel *bk = &kernels[k];
            int ai = 0;
            while (ai < n_archs - 1 && strcmp(archs[ai], v->arch)) ai++;
            snprintf(bk->spec, sizeof bk->spec, "%.64s", specs[s].identity);
            snprintf(bk->arch, sizeof bk->arch, "%s", v->arch);
            snprintf(bk->tpl, sizeof bk->tpl, "%s", mg_template_name(v->tpl));
            mg_point_format(&v->point, bk->point, sizeof bk->point);
            bk->seq = seq[ai]++;
            kernel_texts(v, &builds[s].results[i], &bk->launch, &bk->entry);
            bk->cubin = builds[s].results[i].entry.cubin;
            bk->cubin_size = builds[s].results[i].entry.cubin_size;
            if (!bk->launch || !bk->entry) st = mg_fail(&d, MG_E_NOMEM, "out of memory");
        }
    }
    if (st == MG_OK && a->tuning) st = tuning_text(a->tuning, specs, n_specs, &tuning, &n_tuning, &d);
    char nvrtc[32] = "";
    if (nv) {
        int major, minor;
        mg_nvrtc_version(nv, &major, &minor);
        snprintf(nvrtc, sizeof nvrtc, "%d.%d", major, minor);
    }
    if (st == MG_OK) st = mg_bundle_write(a->out, nvrtc, specs, n_specs, kernels, n_kernels, tuning, &d);
    if (st == MG_OK)
        printf("wrote %s: %d specs, %d kernels for %s, %d tuning records\n", a->out, n_specs, n_kernels,
               a->archs, n_tuning);
    for (int i = 0; i < n_kernels && kernels; i++) {
        free(kernels[i].launch);
        free(kernels[i].entry);
    }
    free(kernels);
    free(tuning);
    for (int s = 0; s < n_specs; s++) {
        free(specs[s].yaml);
        mg_build_results_free(builds[s].results, builds[s].n);
        mg_variants_free(builds[s].vars, builds[s].n);
    }
    mg_template_set_free(set);
    mg_builder_close(b);
    return st == MG_OK ? 0 : cli_deploy_fail(a, st, d.msg);
}

int cli_inspect(const deploy_args *a)
{
    mg_diag d;
    mg_bundle *b;
    mg_status st = mg_bundle_open(a->specs[0], &b, &d);
    if (st != MG_OK) return cli_deploy_fail(a, st, d.msg);
    mg_tunedb db = {0};
    mg_tunedb_parse(&db, b->tuning, strlen(b->tuning), a->specs[0], 1, &d);
    size_t bytes = 0;
    for (int i = 0; i < b->n_kernels; i++) bytes += b->kernels[i].cubin_size;
    printf("bundle %s: format %d, mobagen %s, nvrtc %s\n", a->specs[0], MG_BUNDLE_FORMAT, b->mobagen,
           b->nvrtc);
    printf("%d specs, %d kernels, %zu bytes of CUBIN, %d tuning records\n", b->n_specs, b->n_kernels,
           bytes, db.n);
    for (int s = 0; s < b->n_specs; s++) {
        char archs[512];
        mg_bundle_archs(b, b->specs[s].identity, archs, sizeof archs);
        printf("spec %s (identity %.16s): %s\n", b->specs[s].name, b->specs[s].identity,
               archs[0] ? archs : "no kernels");
        for (int i = 0; i < b->n_kernels; i++) {
            const mg_bundle_kernel *k = &b->kernels[i];
            if (strcmp(k->spec, b->specs[s].identity)) continue;
            printf("  %s/%s/%s  %zu bytes  launch:", k->tpl, k->arch, k->point, k->cubin_size);
            for (const char *p = k->launch; *p; p++) putchar(*p == '\n' ? ' ' : *p);
            printf(" kernels:");
            for (const char *p = k->entry; *p; p++)
                if (!strncmp(p, "kernel.", 7) && (p == k->entry || p[-1] == '\n')) {
                    size_t role = strcspn(p + 7, "=");
                    printf(" %.*s", (int)role, p + 7);
                }
            putchar('\n');
        }
    }
    for (int i = 0; i < db.n; i++) {
        char line[MG_TUNEDB_MAX_LINE + 1];
        mg_tune_record_format(&db.recs[i], line, sizeof line);
        printf("%s\n", line);
    }
    mg_tunedb_free(&db);
    mg_bundle_close(b);
    return 0;
}
