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

typedef struct mg_sandbox {
    lua_State *L;
    size_t used;                /* bytes the Lua allocator holds */
    long long instructions;
    mg_buf out;                 /* rendered text */
    const char *out_path;       /* file the last emitted line came from */
    int next_line;              /* template line that needs no #line if it comes next */
    const mg_template *tpl;
    int include_depth;
} mg_sandbox;

/* A fresh state with `spec` and `arch` set, for one template. */
mg_status mg_sandbox_open(mg_sandbox *sb, const mg_template *t, const mg_spec *spec,
                          const char *arch, mg_diag *diag);
void mg_sandbox_close(mg_sandbox *sb);
/* Loads (text only, never bytecode) and runs a chunk named "@path"; a LUA_* code. */
int mg_run_chunk(lua_State *L, const char *code, const char *path);
/* The Lua error on the stack's top as an MG_E_TEMPLATE. */
mg_status mg_lua_failure(lua_State *L, mg_diag *diag, const char *what);
/* Runs fn(L, ctx, diag) in protected mode: once template code has run, any Lua API call may
 * raise (a metamethod, the memory cap, the instruction budget), and an error outside a
 * protected call would make Lua panic and abort the process. */
mg_status mg_run_protected(lua_State *L, mg_status (*fn)(lua_State *, void *, mg_diag *),
                           void *ctx, mg_diag *diag);

char *mg_dup_range(const char *s, size_t n);

#endif
