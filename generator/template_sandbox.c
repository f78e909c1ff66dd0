/* The sandboxed Lua state a template runs in: base (without file and code loading), string,
 * table and math; a memory cap, an instruction budget and a cap on the rendered text. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "embedded.h"
#include "template_internal.h"

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mg_sandbox *sb = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        sb->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && sb->used + (nsize - old) > MG_LUA_MEMORY_CAP) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) sb->used = sb->used - old + nsize;
    return p;
}

#define HOOK_EVERY 10000

static void instruction_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    mg_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    sb->instructions += HOOK_EVERY;
    if (sb->instructions > MG_LUA_INSTRUCTION_CAP)
        luaL_error(L, "template exceeded its budget of %I Lua instructions",
                   (LUA_INTEGER)MG_LUA_INSTRUCTION_CAP);
}

static mg_sandbox *sandbox_of(lua_State *L)
{
    mg_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    return sb;
}

/* _V(x): an inline expression's value as text; nil and tables are template bugs. */
static int lua_value_text(lua_State *L)
{
    int type = lua_type(L, 1);
    if (type == LUA_TNUMBER) {
        if (lua_isinteger(L, 1))
            lua_pushfstring(L, "%I", (LUA_INTEGER)lua_tointeger(L, 1));
        else {
            char buf[64];
            snprintf(buf, sizeof buf, "%.9g", (double)lua_tonumber(L, 1));
            if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");  /* keep it a float literal */
            lua_pushstring(L, buf);
        }
        return 1;
    }
    if (type == LUA_TSTRING) {
        lua_settop(L, 1);
        return 1;
    }
    if (type == LUA_TBOOLEAN) {
        lua_pushstring(L, lua_toboolean(L, 1) ? "true" : "false");
        return 1;
    }
    return luaL_error(L, "inline expression gave a %s, expected a number, string or boolean",
                      luaL_typename(L, 1));
}

/* _L(line, parts...): appends one text line, preceded by #line when out of step. */
static int lua_emit_line(lua_State *L)
{
    mg_sandbox *sb = sandbox_of(L);
    int lineno = (int)luaL_checkinteger(L, 1);
    lua_Debug ar;
    const char *path = sb->tpl->path;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) && ar.source[0] == '@')
        path = ar.source + 1;
    if (lineno != sb->next_line || !sb->out_path || strcmp(path, sb->out_path)) {
        mg_buf_printf(&sb->out, "#line %d \"%s\"\n", lineno, path);
        sb->out_path = lua_pushstring(L, path);
        lua_setfield(L, LUA_REGISTRYINDEX, "mg_out_path");  /* keeps the string alive */
    }
    int top = lua_gettop(L);
    size_t total = 0;
    for (int i = 2; i <= top; i++) {
        size_t n;
        luaL_checklstring(L, i, &n);
        total += n;
    }
    /* The output lives outside Lua's capped heap: cap it too, or a loop of text lines could
     * grow it until the host runs out of memory long before the instruction budget ends. */
    if (total > MG_LUA_MEMORY_CAP || sb->out.len + total + 64 > MG_LUA_MEMORY_CAP)
        return luaL_error(L, "template output exceeds its memory budget of %d MiB",
                          (int)(MG_LUA_MEMORY_CAP >> 20));
    for (int i = 2; i <= top; i++) {
        size_t n;
        const char *s = lua_tolstring(L, i, &n);
        mg_buf_put(&sb->out, s, n);
    }
    mg_buf_putc(&sb->out, '\n');
    if (sb->out.oom) return luaL_error(L, "out of memory rendering template");
    sb->next_line = lineno + 1;
    return 0;
}


/* include("name.cuh.tpl"): expands another template from the same directory in place. */
static int lua_include(lua_State *L)
{
    mg_sandbox *sb = sandbox_of(L);
    const char *name = luaL_checkstring(L, 1);
    if (strchr(name, '/') || strstr(name, ".."))
        return luaL_error(L, "include('%s'): only a file name in the template's directory", name);
    if (sb->include_depth >= 8) return luaL_error(L, "include('%s'): nested too deep", name);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", sb->tpl->dir, name);
    size_t len;
    char *text = NULL;
    if (sb->tpl->embedded) {
        const char *e = mg_embedded_template(name, &len);
        text = e ? mg_dup_range(e, len) : NULL;
        if (!text) return luaL_error(L, "include('%s'): no embedded template of that name", name);
    } else if (!(text = mg_read_file(path, &len))) {
        return luaL_error(L, "include('%s'): cannot read %s: %s", name, path, strerror(errno));
    }
    char *manifest = NULL, *body = NULL;
    mg_diag d;
    mg_status st = mg_template_translate(path, text, len, &manifest, &body, &d);
    free(text);
    if (st != MG_OK) return luaL_error(L, "%s", d.msg);
    free(manifest);
    sb->include_depth++;
    sb->next_line = -1;
    int rc = mg_run_chunk(L, body, path);
    free(body);
    sb->include_depth--;
    sb->next_line = -1;  /* back in the includer: resync its line numbers */
    if (rc != LUA_OK) return lua_error(L);
    return 0;
}

static void push_spec(lua_State *L, const mg_spec *s)
{
    lua_createtable(L, 0, 10);
    lua_pushstring(L, s->name); lua_setfield(L, -2, "name");
    lua_pushstring(L, s->path); lua_setfield(L, -2, "path");
    lua_pushinteger(L, s->head_dim); lua_setfield(L, -2, "head_dim");
    lua_pushinteger(L, s->block_size); lua_setfield(L, -2, "block_size");
    lua_pushinteger(L, s->top_k); lua_setfield(L, -2, "top_k");
    lua_pushboolean(L, s->causal); lua_setfield(L, -2, "causal");
    lua_pushinteger(L, s->conv_width); lua_setfield(L, -2, "conv_width");
    lua_pushinteger(L, s->gqa_group); lua_setfield(L, -2, "gqa_group");
    lua_pushstring(L, mg_dtype_name(s->dtype)); lua_setfield(L, -2, "dtype");
}

static void push_arch(lua_State *L, const char *arch)
{
    const mg_arch_info *a = mg_arch_lookup(arch);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, arch); lua_setfield(L, -2, "name");
    lua_pushinteger(L, a ? a->sm : 0); lua_setfield(L, -2, "sm");
    lua_pushinteger(L, a ? a->max_smem_optin : 48 * 1024); lua_setfield(L, -2, "max_smem");
    lua_pushboolean(L, a ? a->has_bf16_mma : 0); lua_setfield(L, -2, "bf16_mma");
}

/* Only base (less file and code loading), string, table and math. */
static int open_sandbox_libs(lua_State *L)
{
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_settop(L, 0);
    static const char *const removed[] = {"dofile", "loadfile", "load", "require", "print",
                                          "collectgarbage", NULL};
    for (int i = 0; removed[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    lua_register(L, "_L", lua_emit_line);
    lua_register(L, "_V", lua_value_text);
    lua_register(L, "include", lua_include);
    return 0;
}

mg_status mg_sandbox_open(mg_sandbox *sb, const mg_template *t, const mg_spec *spec,
                              const char *arch, mg_diag *diag)
{
    memset(sb, 0, sizeof *sb);
    sb->tpl = t;
    sb->next_line = -1;
    sb->L = lua_newstate(capped_alloc, sb);
    if (!sb->L) return mg_fail(diag, MG_E_NOMEM, "cannot create a Lua state for %s", t->path);
    lua_State *L = sb->L;
    lua_pushcfunction(L, open_sandbox_libs);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        mg_status st = mg_fail(diag, MG_E_NOMEM, "cannot open Lua libraries: %s",
                               lua_tostring(L, -1));
        lua_close(L);
        sb->L = NULL;
        return st;
    }
    lua_sethook(L, instruction_hook, LUA_MASKCOUNT, HOOK_EVERY);
    push_spec(L, spec);
    lua_setglobal(L, "spec");
    push_arch(L, arch);
    lua_setglobal(L, "arch");
    return MG_OK;
}

void mg_sandbox_close(mg_sandbox *sb)
{
    if (sb->L) lua_close(sb->L);
    mg_buf_free(&sb->out);
    sb->L = NULL;
}

int mg_run_chunk(lua_State *L, const char *code, const char *path)
{
    char chunkname[1100];
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    int rc = luaL_loadbufferx(L, code, strlen(code), chunkname, "t");
    if (rc == LUA_OK) rc = lua_pcall(L, 0, 0, 0);
    return rc;
}

mg_status mg_lua_failure(lua_State *L, mg_diag *diag, const char *what)
{
    const char *msg = lua_tostring(L, -1);
    return mg_fail(diag, MG_E_TEMPLATE, "%s%s", what, msg ? msg : "(error object is not a string)");
}

typedef struct protected_call {
    mg_status (*fn)(lua_State *L, void *ctx, mg_diag *diag);
    void *ctx;
    mg_diag *diag;
    mg_status st;
} protected_call;

static int protected_trampoline(lua_State *L)
{
    protected_call *pc = lua_touserdata(L, 1);
    lua_settop(L, 0);
    pc->st = pc->fn(L, pc->ctx, pc->diag);
    return 0;
}

mg_status mg_run_protected(lua_State *L, mg_status (*fn)(lua_State *, void *, mg_diag *),
                               void *ctx, mg_diag *diag)
{
    protected_call pc = {fn, ctx, diag, MG_OK};
    lua_pushcfunction(L, protected_trampoline);
    lua_pushlightuserdata(L, &pc);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) return mg_lua_failure(L, diag, "");
    return pc.st;
}
