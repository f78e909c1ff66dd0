#include "variants.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"

#define MAX_TEMPLATES 32

struct mg_template_set {
    char origin[512];
    int n;
    mg_template *items[MAX_TEMPLATES];
};

static int is_main_template(const char *name)
{
    size_t n = strlen(name), s = strlen(".cu.tpl");
    return n > s && !strcmp(name + n - s, ".cu.tpl") && name[0] != '.';
}

static int compare_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static mg_status load_from_dir(mg_template_set *s, const char *dir, mg_diag *diag)
{
    DIR *d = opendir(dir);
    if (!d) return mg_fail(diag, MG_E_IO, "cannot open template directory %s", dir);
    char *names[MAX_TEMPLATES];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < MAX_TEMPLATES)
        if (is_main_template(de->d_name)) names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, compare_str);
    mg_status st = MG_OK;
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (st == MG_OK && !names[i]) st = mg_fail(diag, MG_E_NOMEM, "out of memory");
        if (st == MG_OK) st = mg_template_load(path, &s->items[s->n], diag);
        if (st == MG_OK) s->n++;
        free(names[i]);
    }
    if (st == MG_OK && s->n == 0) st = mg_fail(diag, MG_E_TEMPLATE, "no *.cu.tpl template in %s", dir);
    return st;
}

static mg_status load_embedded(mg_template_set *s, mg_diag *diag)
{
    const char *name;
    for (int i = 0; (name = mg_embedded_template_name(i)) && s->n < MAX_TEMPLATES; i++) {
        if (!is_main_template(name)) continue;
        mg_status st = mg_template_from_embedded(name, &s->items[s->n], diag);
        if (st != MG_OK) return st;
        s->n++;
    }
    if (s->n == 0) return mg_fail(diag, MG_E_TEMPLATE, "this build embeds no template");
    return MG_OK;
}

mg_status mg_template_set_open(const char *dir, mg_template_set **out, mg_diag *diag)
{
    *out = NULL;
    mg_template_set *s = calloc(1, sizeof *s);
    if (!s) return mg_fail(diag, MG_E_NOMEM, "out of memory");
    const char *env = getenv("MOBAGEN_TEMPLATE_DIR");
    if (!dir && env && *env) dir = env;
    mg_status st;
    if (dir) {
        snprintf(s->origin, sizeof s->origin, "%s", dir);
        st = load_from_dir(s, dir, diag);
    } else {
        snprintf(s->origin, sizeof s->origin, "(embedded)");
        st = load_embedded(s, diag);
    }
    if (st != MG_OK) {
        mg_template_set_free(s);
        return st;
    }
    *out = s;
    return MG_OK;
}

void mg_template_set_free(mg_template_set *s)
{
    if (!s) return;
    for (int i = 0; i < s->n; i++) mg_template_free(s->items[i]);
    free(s);
}

int mg_template_set_count(const mg_template_set *s) { return s->n; }
const mg_template *mg_template_set_get(const mg_template_set *s, int i) { return s->items[i]; }
const char *mg_template_set_origin(const mg_template_set *s) { return s->origin; }

const mg_template *mg_template_set_find(const mg_template_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(mg_template_name(s->items[i]), name)) return s->items[i];
    return NULL;
}

static mg_status check_tuning_names(const mg_template_set *set, const mg_spec *spec, mg_diag *diag)
{
    for (int i = 0; i < spec->n_tuning; i++) {
        const mg_tuning *tu = &spec->tuning[i];
        if (mg_template_set_find(set, tu->template_name)) continue;
        char known[512] = "";
        for (int j = 0; j < set->n; j++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "",
                     mg_template_name(set->items[j]));
        return mg_fail(diag, MG_E_SPEC, "%s:%d:%d: tuning names unknown template '%s'; templates: %s",
                       spec->path, tu->loc.line, tu->loc.col, tu->template_name, known);
    }
    return MG_OK;
}

static mg_status expand(const mg_template_set *set, const mg_spec *spec, const char *const *archs,
                        int n_archs, int render, mg_variant **out, int *n_out, mg_diag *diag)
{
    *out = NULL;
    *n_out = 0;
    mg_status st = check_tuning_names(set, spec, diag);
    if (st != MG_OK) return st;
    const char *spec_archs[MG_MAX_ARCHS];
    if (!archs) {
        for (int i = 0; i < spec->n_archs; i++) spec_archs[i] = spec->archs[i];
        archs = spec_archs;
        n_archs = spec->n_archs;
    }
    for (int a = 0; a < n_archs; a++)
        if (!mg_arch_lookup(archs[a]))
            return mg_fail(diag, MG_E_ARG, "unknown arch '%s'; known: %s", archs[a],
                           mg_arch_known_list());
    mg_variant *list = NULL;
    int n = 0, cap = 0;
    for (int a = 0; a < n_archs && st == MG_OK; a++) {
        for (int t = 0; t < set->n && st == MG_OK; t++) {
            mg_point *points;
            int np;
            st = mg_template_points(set->items[t], spec, archs[a], &points, &np, diag);
            for (int p = 0; p < np && st == MG_OK; p++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    mg_variant *grown = realloc(list, (size_t)cap * sizeof *grown);
                    if (!grown) {
                        st = mg_fail(diag, MG_E_NOMEM, "out of memory");
                        break;
                    }
                    list = grown;
                }
                mg_variant *v = &list[n];
                memset(v, 0, sizeof *v);
                v->tpl = set->items[t];
                snprintf(v->arch, sizeof v->arch, "%s", archs[a]);
                v->point = points[p];
                char pt[256];
                mg_point_format(&v->point, pt, sizeof pt);
                snprintf(v->id, sizeof v->id, "%s/%s/%s", mg_template_name(v->tpl), v->arch, pt);
                if (render) st = mg_template_render(v->tpl, spec, v->arch, &v->point, &v->rendered, diag);
                if (st == MG_OK) n++;
            }
            free(points);
        }
    }
    if (st != MG_OK) {
        mg_variants_free(list, n);
        return st;
    }
    *out = list;
    *n_out = n;
    return MG_OK;
}

mg_status mg_variants_expand(const mg_template_set *set, const mg_spec *spec,
                             const char *const *archs, int n_archs, mg_variant **out, int *n,
                             mg_diag *diag)
{
    return expand(set, spec, archs, n_archs, 1, out, n, diag);
}

mg_status mg_variants_enumerate(const mg_template_set *set, const mg_spec *spec,
                                const char *const *archs, int n_archs, mg_variant **out, int *n,
                                mg_diag *diag)
{
    return expand(set, spec, archs, n_archs, 0, out, n, diag);
}

void mg_variants_free(mg_variant *v, int n)
{
    for (int i = 0; i < n; i++) mg_rendered_free(&v[i].rendered);
    free(v);
}
