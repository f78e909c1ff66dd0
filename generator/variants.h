/* The set of templates a build uses, and a spec's expansion into variants: one per template,
 * target arch and valid tuning point. */
#ifndef MOBAGEN_VARIANTS_H
#define MOBAGEN_VARIANTS_H

#include "spec.h"
#include "status.h"
#include "template.h"

typedef struct mg_template_set mg_template_set;

/* dir NULL: $MOBAGEN_TEMPLATE_DIR when set, else the templates embedded in the library.
 * Loads every *.cu.tpl (files named *.cuh.tpl are only include()d). */
mg_status mg_template_set_open(const char *dir, mg_template_set **out, mg_diag *diag);
void mg_template_set_free(mg_template_set *s);
int mg_template_set_count(const mg_template_set *s);
const mg_template *mg_template_set_get(const mg_template_set *s, int i);
const mg_template *mg_template_set_find(const mg_template_set *s, const char *name);
/* Where the set came from: a directory, or "(embedded)". */
const char *mg_template_set_origin(const mg_template_set *s);

typedef struct mg_variant {
    const mg_template *tpl;
    char arch[16];
    mg_point point;
    char id[320];            /* "route/sm_90a/block_m=64" */
    mg_rendered rendered;
} mg_variant;

/* Expands every template of the set for each arch (NULL: the spec's archs). The spec's tuning
 * section may only name templates of the set and their knobs (errors point at the spec). */
mg_status mg_variants_expand(const mg_template_set *set, const mg_spec *spec,
                             const char *const *archs, int n_archs, mg_variant **out, int *n,
                             mg_diag *diag);
/* Only the points, without rendering (for `mobagen list`): rendered stays empty. */
mg_status mg_variants_enumerate(const mg_template_set *set, const mg_spec *spec,
                                const char *const *archs, int n_archs, mg_variant **out, int *n,
                                mg_diag *diag);
void mg_variants_free(mg_variant *v, int n);

#endif
