/* mobagen_spec_params <-> mg_spec. Parameters become a YAML document that the spec parser
 * checks, so that a spec from a call and a spec from a file obey exactly the same rules. */
#include <stdio.h>
#include <string.h>

#include "runtime_internal.h"
#include "textbuf.h"

#define PARAMS_ORIGIN "mobagen_spec_params"

/* A YAML double-quoted scalar: whatever the caller's string holds, it stays one value, and the
 * parser's own checks then judge it. */
static void put_quoted(mg_buf *b, const char *s)
{
    mg_buf_putc(b, '"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            mg_buf_printf(b, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f)
            mg_buf_printf(b, "\\x%02x", *c);
        else
            mg_buf_putc(b, (char)*c);
    }
    mg_buf_putc(b, '"');
}

static mg_status put_tuning(mg_buf *b, const mobagen_spec_params *p, mg_diag *d)
{
    if (p->n_tuning < 0 || (p->n_tuning > 0 && !p->tuning))
        return mg_fail(d, MG_E_ARG, "params->tuning is NULL with n_tuning %d", p->n_tuning);
    for (int i = 0; i < p->n_tuning; i++) {
        const mobagen_tuning_restriction *r = &p->tuning[i];
        if (!r->template_name || !r->knob || r->n_values < 1 || !r->values)
            return mg_fail(d, MG_E_ARG,
                           "params->tuning[%d] needs a template_name, a knob and 1 or more values",
                           i);
    }
    if (p->n_tuning) mg_buf_puts(b, "tuning:\n");
    /* Grouped by template, in the order each template first appears. */
    for (int i = 0; i < p->n_tuning; i++) {
        int first = 1;
        for (int j = 0; j < i && first; j++) first = strcmp(p->tuning[j].template_name, p->tuning[i].template_name) != 0;
        if (!first) continue;
        mg_buf_puts(b, "  ");
        put_quoted(b, p->tuning[i].template_name);
        mg_buf_puts(b, ":\n");
        for (int j = i; j < p->n_tuning; j++) {
            const mobagen_tuning_restriction *r = &p->tuning[j];
            if (strcmp(r->template_name, p->tuning[i].template_name)) continue;
            mg_buf_puts(b, "    ");
            put_quoted(b, r->knob);
            mg_buf_puts(b, ": [");
            for (int v = 0; v < r->n_values; v++) mg_buf_printf(b, "%s%d", v ? ", " : "", r->values[v]);
            mg_buf_puts(b, "]\n");
        }
    }
    return MG_OK;
}

mg_status mg_spec_from_params(const mobagen_spec_params *p, mg_spec *out, mg_diag *d)
{
    if (!p) return mg_fail(d, MG_E_ARG, "params is NULL");
    if (p->dtype != MOBAGEN_BF16 && p->dtype != MOBAGEN_FP16)
        return mg_fail(d, MG_E_SPEC, "params->dtype %d is not a mobagen_dtype (bf16 %d, fp16 %d)",
                       (int)p->dtype, MOBAGEN_BF16, MOBAGEN_FP16);
    if (p->causal != 0 && p->causal != 1)
        return mg_fail(d, MG_E_SPEC, "params->causal must be 0 or 1, got %d", p->causal);
    mg_buf b = {0};
    mg_buf_puts(&b, "name: ");
    if (p->name) {
        put_quoted(&b, p->name);
    } else {
        char derived[MG_NAME_MAX];
        snprintf(derived, sizeof derived, "moba_d%d_b%d_k%d", p->head_dim, p->block_size, p->top_k);
        put_quoted(&b, derived);
    }
    mg_buf_printf(&b, "\nhead_dim: %d\nblock_size: %d\ntop_k: %d\ncausal: %s\nconv_width: %d\n"
                      "dtype: %s\ngqa_group: %d\n",
                  p->head_dim, p->block_size, p->top_k, p->causal ? "true" : "false", p->conv_width,
                  mg_dtype_name(p->dtype), p->gqa_group ? p->gqa_group : 1);
    mg_status st = put_tuning(&b, p, d);
    if (st == MG_OK && b.oom) st = mg_fail(d, MG_E_NOMEM, "out of memory");
    if (st == MG_OK) st = mg_spec_parse(b.data, b.len, PARAMS_ORIGIN, out, d);
    mg_buf_free(&b);
    return st;
}

void mg_spec_to_params(const mg_spec *s, mobagen_spec_params *out)
{
    memset(out, 0, sizeof *out);
    out->name = s->name;
    out->head_dim = s->head_dim;
    out->block_size = s->block_size;
    out->top_k = s->top_k;
    out->causal = s->causal;
    out->conv_width = s->conv_width;
    out->dtype = s->dtype;
    out->gqa_group = s->gqa_group;
}
