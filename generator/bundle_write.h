/* Writing kernel bundles (runtime/bundle.h reads them; docs/bundles.md has the layout). */
#ifndef MOBAGEN_BUNDLE_WRITE_H
#define MOBAGEN_BUNDLE_WRITE_H

#include "bundle.h"

/* Writes the specs and kernels (in any order: they are sorted) and, when tuning is non-NULL,
 * those tuning records, to path: a temporary file, then rename. The same contents always give
 * the same bytes. Kernel checksums are computed here. */
mg_status mg_bundle_write(const char *path, const char *nvrtc_version, const mg_bundle_spec *specs,
                          int n_specs, const mg_bundle_kernel *kernels, int n_kernels,
                          const char *tuning, mg_diag *diag);

#endif
