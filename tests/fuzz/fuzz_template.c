/* libFuzzer target: any bytes as a template, through translation, its manifest (the tuning
 * points) and the expansion of its first two points, as an embedded template (include() reads
 * the embedded copies, never the disk, and nothing is written). Only the sandbox's limits keep
 * a looping input from hanging; the fuzz build lowers them (Makefile, FUZZ_LIMITS) so that
 * such an input costs a fraction of a second. Every refusal must say where it comes from. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "template.h"
#include "template_internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mg_spec spec;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const char yaml[] = "name: fuzz\nhead_dim: 128\nblock_size: 64\ntop_k: 8\nconv_width: 3\n";
    mg_diag d;
    if (mg_spec_parse(yaml, sizeof yaml - 1, "fuzz.yaml", &spec, &d) != MG_OK) abort();
    return 0;
}

static void check_refusal(mg_status st, const mg_diag *d)
{
    if (st == MG_OK || st == MG_E_NOMEM) return;
    if (!strstr(d->msg, ".tpl") && !strstr(d->msg, "fuzz.yaml")) {
        fprintf(stderr, "%s without a location: %s\n", mg_status_name(st), d->msg);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_template *t = NULL;
    mg_diag d = {{0}};
    mg_status st = mg_template_from_text("templates/fuzz.cu.tpl", (const char *)data, size, &t, &d);
    check_refusal(st, &d);
    if (st != MG_OK) return 0;
    t->embedded = 1;
    mg_point *points = NULL;
    int n = 0;
    st = mg_template_points(t, &spec, "sm_90a", &points, &n, &d);
    check_refusal(st, &d);
    for (int i = 0; st == MG_OK && i < n && i < 2; i++) {
        mg_rendered r;
        mg_status rs = mg_template_render(t, &spec, "sm_90a", &points[i], &r, &d);
        check_refusal(rs, &d);
        if (rs == MG_OK && (!r.source || r.n_kernels < 1)) abort();
        mg_rendered_free(&r);
    }
    free(points);
    mg_template_free(t);
    return 0;
}
