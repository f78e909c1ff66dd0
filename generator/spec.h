/* MoBA kernel-family specs: YAML files under specs/, parsed with libyaml.
 *
 * A spec is plain read-only data once parsed, so it is a transparent value type rather than a
 * handle: templates and the runtime read its fields directly.  specs/README.md documents every
 * key, its type, range and default. */
#ifndef MOBAGEN_SPEC_H
#define MOBAGEN_SPEC_H

#include <stddef.h>

#include "status.h"

#define MG_MAX_TOP_K 64
#define MG_MAX_ARCHS 16
#define MG_MAX_TUNED_TEMPLATES 8
#define MG_MAX_KNOBS 16
#define MG_MAX_KNOB_VALUES 16
#define MG_NAME_MAX 64

/* The public dtype (mobagen.h) under its internal names. */
typedef mobagen_dtype mg_dtype;
#define MG_BF16 MOBAGEN_BF16
#define MG_FP16 MOBAGEN_FP16

/* Where a value sits in its YAML file, 1-based, for error messages. */
typedef struct mg_loc {
    int line, col;
} mg_loc;

typedef struct mg_knob {
    char name[MG_NAME_MAX];
    int values[MG_MAX_KNOB_VALUES];
    int n_values;
    mg_loc loc;
} mg_knob;

/* The spec's narrowing of one template's tuning space: knob -> allowed values. */
typedef struct mg_tuning {
    char template_name[MG_NAME_MAX];
    mg_knob knobs[MG_MAX_KNOBS];
    int n_knobs;
    mg_loc loc;
} mg_tuning;

typedef struct mg_arch_info {
    const char *name;     /* "sm_90a" */
    int sm;               /* 90 */
    int max_smem_optin;   /* bytes of shared memory one block may opt into */
    int has_bf16_mma;     /* mma.sync with bf16 operands */
} mg_arch_info;

typedef struct mg_spec {
    char path[512];
    char name[MG_NAME_MAX];
    int head_dim;
    int block_size;
    int top_k;
    int causal;
    int conv_width;
    int gqa_group;
    mg_dtype dtype;
    char archs[MG_MAX_ARCHS][16];
    int n_archs;
    mg_tuning tuning[MG_MAX_TUNED_TEMPLATES];
    int n_tuning;
} mg_spec;

/* Parses and validates the YAML file at path into *out.  On error returns MG_E_SPEC (or MG_E_IO
 * when the file cannot be read) and writes "FILE:LINE:COL: what is wrong; what is allowed". */
mg_status mg_spec_load(const char *path, mg_spec *out, mg_diag *diag);

/* Same, from a string; name is used in messages in place of a file name. */
mg_status mg_spec_parse(const char *text, size_t len, const char *name, mg_spec *out, mg_diag *diag);

/* The table of archs mobagen knows, or NULL for an unknown name. */
const mg_arch_info *mg_arch_lookup(const char *name);
/* Comma-separated list of known arch names, for messages. */
const char *mg_arch_known_list(void);

const char *mg_dtype_name(mg_dtype t);

/* The spec's tuning entry for a template, or NULL when the spec does not narrow it. */
const mg_tuning *mg_spec_tuning_for(const mg_spec *s, const char *template_name);

#endif
