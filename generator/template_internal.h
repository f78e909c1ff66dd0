/* What the template files share; not part of the public API. */
#ifndef MOBAGEN_TEMPLATE_INTERNAL_H
#define MOBAGEN_TEMPLATE_INTERNAL_H

#include <lua.h>

#include "template.h"
#include "textbuf.h"

struct mg_template {
    char *path;          /* as given; used in messages and #line */
    char *name;          /* file name without .cu.tpl */
    char *dir;           /* directory part, for include() */
    int embedded;        /* include() reads the embedded copies, not the disk */
    char *manifest_lua;  /* one Lua line per template line */
    char *body_lua;
};

/* Splits a template into its manifest chunk and its body chunk, line for line. */
mg_status mg_template_translate(const char *path, const char *text, size_t len, char **manifest,
                                char **body, mg_diag *diag);

/* Limits of include(): nesting, calls per state, and the size of any template file. */
#define MG_INCLUDE_MAX_DEPTH 8
#define MG_INCLUDE_MAX_CALLS 256
#define MG_TEMPLATE_MAX_BYTES (1u << 20)
/* Per-call bounds on library functions whose C loops no instruction hook sees. */
#define MG_LUA_PATTERN_STEP_CAP 1e8
#define MG_LUA_TABLE_MOVE_CAP (1 << 24)
#define MG_LUA_TABLE_SORT_CAP (1 << 20)

typedef struct mg_sandbox {
    lua_State *L;
    size_t used;                /* bytes the Lua allocator holds */
    long long instructions;
    int hook_count;             /* instructions between two hook calls, adapted to their cost */
    double last_hook;           /* monotonic seconds at the last hook call */
    double deadline;            /* monotonic seconds past which the state must stop */
    unsigned allocations;       /* growth requests, to read the clock on every 32nd */
    void *refused_ptr;          /* the last request refused for the memory cap */
    size_t refused_osize, refused_nsize;
    char fatal[512];            /* set when a limit trips; from then on nothing runs */
    char seen_source[256];      /* where the hook last saw the template running */
    int seen_line;
    mg_buf out;                 /* rendered text */
    const char *out_path;       /* file the last emitted line came from */
    int next_line;              /* template line that needs no #line if it comes next */
    const mg_template *tpl;
    int include_depth;
    int include_calls;
    char include_stack[MG_INCLUDE_MAX_DEPTH + 1][128];  /* [0] is the template itself */
} mg_sandbox;

/* A fresh state with `spec` and `arch` set, for one template. */
mg_status mg_sandbox_open(mg_sandbox *sb, const mg_template *t, const mg_spec *spec,
                          const char *arch, mg_diag *diag);
void mg_sandbox_close(mg_sandbox *sb);
mg_sandbox *mg_sandbox_of(lua_State *L);
/* Raises the sandbox's fatal error if a limit has tripped or the deadline has passed, and
 * charges `work` instructions to the budget: C functions call it before work the hook cannot
 * see. */
void mg_sandbox_charge(lua_State *L, long long work);
/* Replaces the library functions that can loop in C for unbounded time (template_bounded.c). */
void mg_sandbox_bound_libs(lua_State *L);
/* pairs() in a canonical key order, and no math.random: template_canonical.c. */
void mg_sandbox_canonical_libs(lua_State *L);
/* Loads (text only, never bytecode) and runs a chunk named "@path"; a LUA_* code. */
int mg_run_chunk(lua_State *L, const char *code, const char *path);
/* lua_pcall with the sandbox's message handler, which gives every error a template location. */
int mg_pcall(lua_State *L, int nargs, int nresults);
/* The Lua error on the stack's top (or the limit that tripped) as an MG_E_TEMPLATE. */
mg_status mg_lua_failure(lua_State *L, mg_diag *diag, const char *what);
/* Runs fn(L, ctx, diag) in protected mode: once template code has run, any Lua API call may
 * raise (a metamethod, the memory cap, the instruction budget), and an error outside a
 * protected call would make Lua panic and abort the process. */
mg_status mg_run_protected(lua_State *L, mg_status (*fn)(lua_State *, void *, mg_diag *),
                           void *ctx, mg_diag *diag);
/* A template file: regular files only, at most MG_TEMPLATE_MAX_BYTES; NULL with errno set
 * (EFBIG when too large, EINVAL when not a regular file). */
char *mg_template_read(const char *path, size_t *len);
/* Why mg_template_read failed, from its errno. */
const char *mg_template_read_error(int err);

char *mg_dup_range(const char *s, size_t n);

#endif
