/* libFuzzer target: any bytes as a spec. Parsing must end quickly (nesting and size limits),
 * never crash, and every refusal must name the spec and a line and column. A spec that parses
 * goes on to the embedded route template's tuning points, where its tuning section meets the
 * template's knobs. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_spec spec;
    mg_diag d = {{0}};
    mg_status st = mg_spec_parse((const char *)data, size, "fuzz.yaml", &spec, &d);
    if (st == MG_E_SPEC && strncmp(d.msg, "fuzz.yaml:", 10)) {
        fprintf(stderr, "spec error without a location: %s\n", d.msg);
        abort();
    }
    if (st != MG_OK) return 0;
    mg_template *t = NULL;
    if (mg_template_from_embedded("route.cu.tpl", &t, &d) != MG_OK) abort();
    mg_point *points = NULL;
    int n = 0;
    if (mg_template_points(t, &spec, "sm_90a", &points, &n, &d) == MG_OK) {
        if (n < 1) abort();
        free(points);
    } else if (!d.msg[0]) {
        abort();
    }
    mg_template_free(t);
    return 0;
}
