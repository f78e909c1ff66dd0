#include "fingerprint.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

int mg_fingerprint_equal(const mg_fingerprint *a, const mg_fingerprint *b)
{
    return !strcmp(a->gpu, b->gpu) && a->cc_major == b->cc_major && a->cc_minor == b->cc_minor &&
           a->sm_count == b->sm_count && a->mem_mib == b->mem_mib && a->driver == b->driver &&
           !strcmp(a->nvrtc, b->nvrtc) && !strcmp(a->mobagen, b->mobagen);
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void hash_line(crypto_generichash_state *h, const char *line)
{
    crypto_generichash_update(h, (const unsigned char *)line, strlen(line));
    crypto_generichash_update(h, (const unsigned char *)"\n", 1);
}

void mg_spec_identity(const mg_spec *s, char hex[65])
{
    crypto_generichash_state h;
    unsigned char digest[32];
    char line[256];
    if (sodium_init() < 0) abort();   /* only fails when the CPU lacks what libsodium needs */
    crypto_generichash_init(&h, NULL, 0, sizeof digest);
    hash_line(&h, "mobagen-spec-identity 1");
    snprintf(line, sizeof line, "head_dim=%d block_size=%d top_k=%d causal=%d conv_width=%d "
             "gqa_group=%d dtype=%s", s->head_dim, s->block_size, s->top_k, s->causal,
             s->conv_width, s->gqa_group, mg_dtype_name(s->dtype));
    hash_line(&h, line);
    /* One line per knob, "template.knob=v1,v2", sorted: YAML order must not matter. The
     * values keep their order, which is the order variants are tried in. */
    char *lines[MG_MAX_TUNED_TEMPLATES * MG_MAX_KNOBS];
    int n = 0;
    for (int t = 0; t < s->n_tuning; t++)
        for (int k = 0; k < s->tuning[t].n_knobs; k++) {
            const mg_knob *kn = &s->tuning[t].knobs[k];
            char buf[512];
            int len = snprintf(buf, sizeof buf, "%s.%s=", s->tuning[t].template_name, kn->name);
            for (int v = 0; v < kn->n_values && len < (int)sizeof buf; v++)
                len += snprintf(buf + len, sizeof buf - (size_t)len, v ? ",%d" : "%d", kn->values[v]);
            if (!(lines[n] = strdup(buf))) abort();
            n++;
        }
    qsort(lines, (size_t)n, sizeof lines[0], by_name);
    for (int i = 0; i < n; i++) {
        hash_line(&h, lines[i]);
        free(lines[i]);
    }
    crypto_generichash_final(&h, digest, sizeof digest);
    sodium_bin2hex(hex, 65, digest, sizeof digest);
}

static int pow2_at_least(long long x, int floor)
{
    long long p = floor;
    while (p < x && p < (1LL << 30)) p *= 2;
    return (int)p;
}

void mg_bucket_for(const char *spec_identity, int batch, int hq, int hkv, int max_seqlen_k,
                   mg_bucket *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->spec, sizeof out->spec, "%s", spec_identity);
    out->seqlen = pow2_at_least(max_seqlen_k, 64);
    out->bh = pow2_at_least((long long)batch * hq, 1);
    out->gqa = hkv > 0 ? hq / hkv : 0;
}

int mg_bucket_equal(const mg_bucket *a, const mg_bucket *b)
{
    return !strcmp(a->spec, b->spec) && a->seqlen == b->seqlen && a->bh == b->bh && a->gqa == b->gqa;
}
