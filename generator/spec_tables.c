/* The archs mobagen knows, dtype names, and lookups into a parsed spec. */
#include <stddef.h>
#include <string.h>

#include "spec.h"

static const mg_arch_info known_archs[] = {
    {"sm_80", 80, 166912, 1},   {"sm_86", 86, 101376, 1},   {"sm_87", 87, 166912, 1},
    {"sm_89", 89, 101376, 1},   {"sm_90", 90, 232448, 1},   {"sm_90a", 90, 232448, 1},
    {"sm_100", 100, 232448, 1}, {"sm_100a", 100, 232448, 1}, {"sm_120", 120, 101376, 1},
};
#define N_KNOWN_ARCHS (sizeof known_archs / sizeof known_archs[0])

/* Kept as a literal (no global mutable state); test_spec checks it against the table. */
static const char known_arch_list[] =
    "sm_80, sm_86, sm_87, sm_89, sm_90, sm_90a, sm_100, sm_100a, sm_120";

const mg_arch_info *mg_arch_lookup(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < N_KNOWN_ARCHS; i++)
        if (strcmp(known_archs[i].name, name) == 0)
            return &known_archs[i];
    return NULL;
}

const char *mg_arch_known_list(void) { return known_arch_list; }

const char *mg_dtype_name(mg_dtype t)
{
    switch (t) {
    case MG_BF16: return "bf16";
    case MG_FP16: return "fp16";
    }
    return "unknown";
}

const mg_tuning *mg_spec_tuning_for(const mg_spec *s, const char *template_name)
{
    if (!s || !template_name)
        return NULL;
    for (int i = 0; i < s->n_tuning; i++)
        if (strcmp(s->tuning[i].template_name, template_name) == 0)
            return &s->tuning[i];
    return NULL;
}

