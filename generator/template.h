/* Templates: CUDA source with embedded Lua, expanded in a sandboxed Lua 5.4 state.
 *
 * Syntax (docs/templates.md has the full description):
 *   %! lua      manifest line: knobs, valid(), kernels(), launch(); run once per spec and arch
 *   % lua       statement line of the body (loops, conditionals, locals)
 *   $(expr)     inline Lua expression in a text line; $$ is a literal '$'
 * Every other line is CUDA text. Generated Lua keeps one line per template line so that Lua
 * errors name the template file and line; the output carries #line directives so that NVRTC's
 * errors do too. */
#ifndef MOBAGEN_TEMPLATE_H
#define MOBAGEN_TEMPLATE_H

#include <stddef.h>

#include "spec.h"
#include "status.h"

#define MG_MAX_KERNELS 8
#define MG_MAX_LAUNCH_VALUES 16

typedef struct mg_template mg_template;

/* One point of a template's tuning space: knob names (sorted) and their values. */
typedef struct mg_point {
    int n;
    char names[MG_MAX_KNOBS][MG_NAME_MAX];
    int values[MG_MAX_KNOBS];
} mg_point;

typedef struct mg_named_int {
    char name[MG_NAME_MAX];
    long long value;
} mg_named_int;

typedef struct mg_kernel_ref {
    char role[MG_NAME_MAX];     /* what the runtime asks for: "main", "prep", ... */
    char name_expr[256];        /* NVRTC name expression: "moba_route<64, 8>" */
} mg_kernel_ref;

/* A template expanded for one spec, arch and tuning point. */
typedef struct mg_rendered {
    char *source;               /* malloc'd, NUL-terminated */
    size_t source_len;
    int n_kernels;
    mg_kernel_ref kernels[MG_MAX_KERNELS];
    int n_launch;               /* integers the template's launch() returned (threads, smem, ...) */
    mg_named_int launch[MG_MAX_LAUNCH_VALUES];
} mg_rendered;

/* Loads a template from a file. Its name is the file name without ".cu.tpl". */
mg_status mg_template_load(const char *path, mg_template **out, mg_diag *diag);
/* From memory (embedded templates); path is used in messages and #line directives. */
mg_status mg_template_from_text(const char *path, const char *text, size_t len,
                                mg_template **out, mg_diag *diag);
/* A template compiled into the library (file name such as "route.cu.tpl"). */
mg_status mg_template_from_embedded(const char *file_name, mg_template **out, mg_diag *diag);
void mg_template_free(mg_template *t);
const char *mg_template_name(const mg_template *t);
const char *mg_template_path(const mg_template *t);

/* The template's valid tuning points for a spec and arch: its knobs' default values narrowed by
 * the spec's tuning section, crossed, then pruned by the manifest's valid(). *points is
 * malloc'd. A knob the spec names that the template lacks is an error at the spec's line. */
mg_status mg_template_points(const mg_template *t, const mg_spec *spec, const char *arch,
                             mg_point **points, int *n_points, mg_diag *diag);

/* Expands the template for one point; free with mg_rendered_free. */
mg_status mg_template_render(const mg_template *t, const mg_spec *spec, const char *arch,
                             const mg_point *point, mg_rendered *out, mg_diag *diag);
void mg_rendered_free(mg_rendered *r);

/* "block_m=64,warps=4" (or "default" for an empty point) into buf. */
void mg_point_format(const mg_point *p, char *buf, size_t size);
/* Value of a knob or of a launch integer by name; def when absent. */
int mg_point_get(const mg_point *p, const char *name, int def);
long long mg_rendered_launch(const mg_rendered *r, const char *name, long long def);
const char *mg_rendered_kernel(const mg_rendered *r, const char *role);

/* Budgets of the sandbox, per Lua state (a build may lower them, as the fuzz targets do). The
 * wall-clock limit backs the others up: it holds however the time is spent. */
#ifndef MG_LUA_MEMORY_CAP
#define MG_LUA_MEMORY_CAP (64u << 20)
#endif
#ifndef MG_LUA_INSTRUCTION_CAP
#define MG_LUA_INSTRUCTION_CAP 200000000LL
#endif
#ifndef MG_LUA_TIME_LIMIT_MS
#define MG_LUA_TIME_LIMIT_MS 4000
#endif

#endif
