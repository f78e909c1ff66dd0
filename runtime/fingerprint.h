/* What a tuning record is valid for: the device it was measured on (fingerprint) and the
 * problem it was measured for (bucket). docs/tuning.md describes both. */
#ifndef MOBAGEN_FINGERPRINT_H
#define MOBAGEN_FINGERPRINT_H

#include "mobagen.h"
#include "spec.h"
#include "status.h"

/* mobagen's own version as recorded in tuning records and bundles. */
#define MG_VERSION_TEXT MOBAGEN_VERSION_STRING

/* Every field must match for a record to apply: another GPU, driver, NVRTC or mobagen may rank
 * the variants differently, so their records are ignored rather than misused. */
typedef struct mg_fingerprint {
    char gpu[128];           /* cuDeviceGetName */
    int cc_major, cc_minor;
    int sm_count;
    long long mem_mib;       /* total device memory in MiB */
    int driver;              /* cuDriverGetVersion, e.g. 12040 */
    char nvrtc[16];          /* "12.4": the NVRTC that compiled the kernels in use */
    char mobagen[16];        /* MG_VERSION_TEXT */
} mg_fingerprint;

int mg_fingerprint_equal(const mg_fingerprint *a, const mg_fingerprint *b);

/* A canonical BLAKE2b-256 (hex) of what the spec says about the kernels: every field but its
 * path, name and arch list (which do not change a kernel); tuning knobs in sorted order. Two
 * files with the same content in another order or place get the same identity. */
void mg_spec_identity(const mg_spec *spec, char hex[65]);

typedef struct mg_bucket {
    char spec[65];           /* mg_spec_identity */
    int seqlen;              /* max_seqlen_k rounded up to a power of two, at least 64 */
    int bh;                  /* batch x hq rounded up to a power of two */
    int gqa;                 /* hq / hkv */
} mg_bucket;

/* The bucket of a call's shape. */
void mg_bucket_for(const char *spec_identity, int batch, int hq, int hkv, int max_seqlen_k,
                   mg_bucket *out);
int mg_bucket_equal(const mg_bucket *a, const mg_bucket *b);

#endif
