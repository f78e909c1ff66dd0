/* Kernel bundles: one SQLite file holding the CUBINs of every variant of some specs for some
 * archs, with everything the runtime needs to launch them (docs/bundles.md), so that a
 * deployment runs without NVRTC, CUDA headers or templates.
 *
 * Opening reads and checks the whole file (size limits, SQLite's own integrity check, the
 * expected schema exactly, format and mobagen versions, a BLAKE2b-256 checksum per item), then
 * keeps the contents in memory: nothing later depends on the file. */
#ifndef MOBAGEN_BUNDLE_H
#define MOBAGEN_BUNDLE_H

#include <stddef.h>

#include "fingerprint.h"
#include "status.h"

#define MG_BUNDLE_FORMAT 1
#define MG_BUNDLE_APPLICATION_ID 0x4d6f4261   /* "MoBa" in SQLite's header */
#define MG_BUNDLE_MAX_BYTES (512u << 20)
#define MG_BUNDLE_MAX_ITEMS 65536
#define MG_BUNDLE_MAX_TEXT (64u << 10)
#define MG_BUNDLE_MAX_CUBIN (64u << 20)

/* The schema, statement by statement, as the writer creates it and the reader demands it. */
extern const char *const mg_bundle_schema[];
extern const int mg_bundle_schema_count;

typedef struct mg_bundle_spec {
    char identity[65];        /* mg_spec_identity */
    char name[MG_NAME_MAX];
    char *yaml;               /* the spec file as it was bundled */
} mg_bundle_spec;

typedef struct mg_bundle_kernel {
    char spec[65];
    char arch[16];
    char tpl[MG_NAME_MAX];
    char point[256];
    int seq;                  /* position in the spec's expansion for the arch: dispatch order */
    char *launch;             /* "name=value" lines: every integer the template's launch() gave */
    char *entry;              /* "kernel.ROLE=lowered_name" lines */
    void *cubin;
    size_t cubin_size;
} mg_bundle_kernel;

typedef struct mg_bundle {
    char path[1024];
    char mobagen[32], nvrtc[32];
    int n_specs, n_kernels;
    mg_bundle_spec *specs;
    mg_bundle_kernel *kernels;
    char *tuning;             /* tuning database text (its lines), "" when none */
} mg_bundle;

mg_status mg_bundle_open(const char *path, mg_bundle **out, mg_diag *diag);
/* From bytes in memory (name stands for the file in messages); the bytes may be freed after. */
mg_status mg_bundle_open_memory(const void *data, size_t size, const char *name, mg_bundle **out,
                                mg_diag *diag);
void mg_bundle_close(mg_bundle *b);

const mg_bundle_spec *mg_bundle_find_spec(const mg_bundle *b, const char *identity);
/* The distinct archs the bundle holds for a spec, sorted, comma-separated, into buf. */
void mg_bundle_archs(const mg_bundle *b, const char *identity, char *buf, size_t size);

/* Which of the archs (names like "sm_90a") runs on a device of compute capability
 * major.minor: the same major, a minor not above the device's, an 'a' arch only on exactly its
 * own capability; the highest minor wins, an exact 'a' before the plain one. -1 when none
 * fits. A pure function. */
int mg_arch_pick(const char *const *archs, int n, int major, int minor);
/* "sm_90a, or sm_9x with x <= 0" into buf: what a device of that capability can run. */
void mg_arch_needed(int major, int minor, char *buf, size_t size);

/* BLAKE2b-256 hex of one kernel item's fields, as the writer stores and the reader checks. */
void mg_bundle_kernel_checksum(const mg_bundle_kernel *k, char hex[65]);
void mg_bundle_spec_checksum(const mg_bundle_spec *s, char hex[65]);
/* Over the manifest's key=value pairs in key order, the checksum row excluded. */
void mg_bundle_text_checksum(const char *label, const char *text, char hex[65]);

#endif
