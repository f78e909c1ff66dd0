/* Template translation (text -> Lua) and sandboxed expansion. */
#include "template.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "embedded.h"
#include "textbuf.h"

struct mg_template {
    char *path;          /* as given; used in messages and #line */
    char *name;          /* file name without .cu.tpl */
    char *dir;           /* directory part, for include() */
    int embedded;        /* include() reads the embedded copies, not the disk */
    char *manifest_lua;  /* one Lua line per template line */
    char *body_lua;
};

/* ---------- translation ---------- */

static void append_lua_string(mg_buf *b, const char *s, size_t n)
{
    mg_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            mg_buf_printf(b, "\\%c", c);
        else if (c < 32 || c == 127)
            mg_buf_printf(b, "\\%03u", c);
        else
            mg_buf_putc(b, (char)c);
    }
    mg_buf_putc(b, '"');
}

/* Index just past the ')' matching the '(' at s[open], skipping Lua string literals; 0 if none. */
static size_t match_paren(const char *s, size_t n, size_t open)
{
    int depth = 0;
    for (size_t i = open; i < n; i++) {
        char c = s[i];
        if (c == '"' || c == '\'') {
            for (i++; i < n && s[i] != c; i++)
                if (s[i] == '\\') i++;
            continue;
        }
        if (c == '(') depth++;
        if (c == ')' && --depth == 0) return i + 1;
    }
    return 0;
}

/* A text line becomes one call: _L(lineno, "lit", (expr), "lit", ...). */
static mg_status translate_text_line(mg_buf *b, const char *s, size_t n, int lineno,
                                     const char *path, mg_diag *diag)
{
    mg_buf_printf(b, "_L(%d", lineno);
    size_t lit = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '$') continue;
        if (i + 1 < n && s[i + 1] == '$') {          /* "$$" -> "$" */
            mg_buf_puts(b, ", ");
            append_lua_string(b, s + lit, i + 1 - lit);
            lit = i + 2;
            i++;
            continue;
        }
        if (i + 1 < n && s[i + 1] == '(') {
            size_t end = match_paren(s, n, i + 1);
            if (!end)
                return mg_fail(diag, MG_E_TEMPLATE, "%s:%d:%zu: unclosed $( inline expression",
                               path, lineno, i + 1);
            if (i > lit) {
                mg_buf_puts(b, ", ");
                append_lua_string(b, s + lit, i - lit);
            }
            mg_buf_puts(b, ", _V(");
            mg_buf_put(b, s + i + 2, end - 1 - (i + 2));
            mg_buf_puts(b, ")");
            lit = end;
            i = end - 1;
        }
    }
    if (n > lit) {
        mg_buf_puts(b, ", ");
        append_lua_string(b, s + lit, n - lit);
    }
    mg_buf_puts(b, ")\n");
    return MG_OK;
}

/* Splits a template into its manifest chunk and its body chunk, line for line. */
static mg_status translate(const char *path, const char *text, size_t len, char **manifest,
                           char **body, mg_diag *diag)
{
    mg_buf m = {0}, bd = {0};
    int lineno = 0;
    mg_status st = MG_OK;
    for (size_t pos = 0; pos < len && st == MG_OK;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        lineno++;
        if (n && line[n - 1] == '\r') n--;
        size_t ind = 0;
        while (ind < n && (line[ind] == ' ' || line[ind] == '\t')) ind++;
        if (ind + 1 < n + 1 && ind < n && line[ind] == '%' && ind + 1 < n && line[ind + 1] == '!') {
            mg_buf_put(&m, line + ind + 2, n - ind - 2);
            mg_buf_putc(&m, '\n');
            mg_buf_putc(&bd, '\n');
        } else if (ind < n && line[ind] == '%') {
            mg_buf_put(&bd, line + ind + 1, n - ind - 1);
            mg_buf_putc(&bd, '\n');
            mg_buf_putc(&m, '\n');
        } else {
            st = translate_text_line(&bd, line, n, lineno, path, diag);
            mg_buf_putc(&m, '\n');
        }
    }
    if (st != MG_OK || m.oom || bd.oom) {
        if (st == MG_OK) st = mg_fail(diag, MG_E_NOMEM, "out of memory translating %s", path);
        mg_buf_free(&m);
        mg_buf_free(&bd);
        return st;
    }
    *manifest = mg_buf_take(&m);
    *body = mg_buf_take(&bd);
    return MG_OK;
}

static char *dup_range(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = 0;
    }
    return r;
}

mg_status mg_template_from_text(const char *path, const char *text, size_t len,
                                mg_template **out, mg_diag *diag)
{
    *out = NULL;
    mg_template *t = calloc(1, sizeof *t);
    if (!t) return mg_fail(diag, MG_E_NOMEM, "out of memory loading %s", path);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t base_len = strlen(base);
    const char *suffix = ".cu.tpl";
    if (base_len > strlen(suffix) && !strcmp(base + base_len - strlen(suffix), suffix))
        base_len -= strlen(suffix);
    t->path = strdup(path);
    t->name = dup_range(base, base_len);
    t->dir = slash ? dup_range(path, (size_t)(slash - path)) : strdup(".");
    if (!t->path || !t->name || !t->dir) {
        mg_template_free(t);
        return mg_fail(diag, MG_E_NOMEM, "out of memory loading %s", path);
    }
    mg_status st = translate(path, text, len, &t->manifest_lua, &t->body_lua, diag);
    if (st != MG_OK) {
        mg_template_free(t);
        return st;
    }
    *out = t;
    return MG_OK;
}

mg_status mg_template_load(const char *path, mg_template **out, mg_diag *diag)
{
    size_t len;
    char *text = mg_read_file(path, &len);
    if (!text) {
        *out = NULL;
        return mg_fail(diag, MG_E_IO, "cannot read template %s: %s", path, strerror(errno));
    }
    mg_status st = mg_template_from_text(path, text, len, out, diag);
    free(text);
    return st;
}

mg_status mg_template_from_embedded(const char *file_name, mg_template **out, mg_diag *diag)
{
    size_t len;
    const char *text = mg_embedded_template(file_name, &len);
    if (!text) {
        *out = NULL;
        return mg_fail(diag, MG_E_TEMPLATE, "no embedded template named %s", file_name);
    }
    char path[512];
    snprintf(path, sizeof path, "templates/%s", file_name);
    mg_status st = mg_template_from_text(path, text, len, out, diag);
    if (st == MG_OK) (*out)->embedded = 1;
    return st;
}

void mg_template_free(mg_template *t)
{
    if (!t) return;
    free(t->path);
    free(t->name);
    free(t->dir);
    free(t->manifest_lua);
    free(t->body_lua);
    free(t);
}

const char *mg_template_name(const mg_template *t) { return t->name; }
const char *mg_template_path(const mg_template *t) { return t->path; }

/* ---------- the sandbox ---------- */

typedef struct sandbox {
    lua_State *L;
    size_t used;
    long long instructions;
    mg_buf out;                 /* rendered text */
    const char *out_path;       /* file the last emitted line came from */
    int next_line;              /* template line that needs no #line if it comes next */
    const mg_template *tpl;
    int include_depth;
} sandbox;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sandbox *sb = ud;
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
    sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    sb->instructions += HOOK_EVERY;
    if (sb->instructions > MG_LUA_INSTRUCTION_CAP)
        luaL_error(L, "template exceeded its budget of %I Lua instructions",
                   (LUA_INTEGER)MG_LUA_INSTRUCTION_CAP);
}

static sandbox *sandbox_of(lua_State *L)
{
    sandbox *sb;
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
    sandbox *sb = sandbox_of(L);
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

static int run_chunk(lua_State *L, const char *code, const char *path);

/* include("name.cuh.tpl"): expands another template from the same directory in place. */
static int lua_include(lua_State *L)
{
    sandbox *sb = sandbox_of(L);
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
        text = e ? dup_range(e, len) : NULL;
        if (!text) return luaL_error(L, "include('%s'): no embedded template of that name", name);
    } else if (!(text = mg_read_file(path, &len))) {
        return luaL_error(L, "include('%s'): cannot read %s: %s", name, path, strerror(errno));
    }
    char *manifest = NULL, *body = NULL;
    mg_diag d;
    mg_status st = translate(path, text, len, &manifest, &body, &d);
    free(text);
    if (st != MG_OK) return luaL_error(L, "%s", d.msg);
    free(manifest);
    sb->include_depth++;
    sb->next_line = -1;
    int rc = run_chunk(L, body, path);
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

static mg_status sandbox_open(sandbox *sb, const mg_template *t, const mg_spec *spec,
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

static void sandbox_close(sandbox *sb)
{
    if (sb->L) lua_close(sb->L);
    mg_buf_free(&sb->out);
    sb->L = NULL;
}

static int run_chunk(lua_State *L, const char *code, const char *path)
{
    char chunkname[1100];
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    int rc = luaL_loadbufferx(L, code, strlen(code), chunkname, "t");
    if (rc == LUA_OK) rc = lua_pcall(L, 0, 0, 0);
    return rc;
}

static mg_status lua_failure(lua_State *L, mg_diag *diag, const char *what)
{
    const char *msg = lua_tostring(L, -1);
    return mg_fail(diag, MG_E_TEMPLATE, "%s%s", what, msg ? msg : "(error object is not a string)");
}

/* Runs fn(L, ctx, diag) in protected mode. Once template code has run, any Lua API call may
 * raise (a metamethod such as __len or _G's __index, the memory cap, the instruction budget),
 * and an error outside a protected call would make Lua panic and abort the process. */
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

static mg_status run_protected(lua_State *L, mg_status (*fn)(lua_State *, void *, mg_diag *),
                               void *ctx, mg_diag *diag)
{
    protected_call pc = {fn, ctx, diag, MG_OK};
    lua_pushcfunction(L, protected_trampoline);
    lua_pushlightuserdata(L, &pc);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) return lua_failure(L, diag, "");
    return pc.st;
}

/* ---------- tuning points ---------- */

typedef struct knob_space {
    int n;
    char names[MG_MAX_KNOBS][MG_NAME_MAX];
    int values[MG_MAX_KNOBS][MG_MAX_KNOB_VALUES];
    int n_values[MG_MAX_KNOBS];
} knob_space;

static int compare_names(const void *a, const void *b) { return strcmp(a, b); }

/* Reads the manifest's `knobs` table into *ks, names sorted. */
static mg_status read_knobs(lua_State *L, const mg_template *t, knob_space *ks, mg_diag *diag)
{
    memset(ks, 0, sizeof *ks);
    lua_getglobal(L, "knobs");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return MG_OK;
    }
    if (!lua_istable(L, -1))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: manifest 'knobs' must be a table", t->path);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1))
            return mg_fail(diag, MG_E_TEMPLATE,
                           "%s: manifest 'knobs' must map knob names to lists of integers", t->path);
        if (ks->n == MG_MAX_KNOBS)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: more than %d knobs", t->path, MG_MAX_KNOBS);
        snprintf(ks->names[ks->n], MG_NAME_MAX, "%s", lua_tostring(L, -2));
        ks->n++;
        lua_pop(L, 1);
    }
    qsort(ks->names, (size_t)ks->n, MG_NAME_MAX, compare_names);
    for (int i = 0; i < ks->n; i++) {
        lua_getfield(L, -1, ks->names[i]);
        int len = (int)luaL_len(L, -1);
        if (len < 1 || len > MG_MAX_KNOB_VALUES)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: knob '%s' needs 1..%d default values",
                           t->path, ks->names[i], MG_MAX_KNOB_VALUES);
        for (int j = 0; j < len; j++) {
            lua_geti(L, -1, j + 1);
            if (!lua_isinteger(L, -1))
                return mg_fail(diag, MG_E_TEMPLATE, "%s: knob '%s' has a non-integer value",
                               t->path, ks->names[i]);
            ks->values[i][j] = (int)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        ks->n_values[i] = len;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return MG_OK;
}

/* Replaces a knob's defaults with the spec's values; unknown knobs are errors at the spec. */
static mg_status narrow_by_spec(const mg_template *t, const mg_spec *spec, knob_space *ks,
                                mg_diag *diag)
{
    const mg_tuning *tu = mg_spec_tuning_for(spec, t->name);
    if (!tu) return MG_OK;
    for (int k = 0; k < tu->n_knobs; k++) {
        const mg_knob *kn = &tu->knobs[k];
        int idx = -1;
        for (int i = 0; i < ks->n; i++)
            if (!strcmp(ks->names[i], kn->name)) idx = i;
        if (idx < 0) {
            char known[512] = "";
            for (int i = 0; i < ks->n; i++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                         i ? ", " : "", ks->names[i]);
            return mg_fail(diag, MG_E_SPEC, "%s:%d:%d: template '%s' has no knob '%s'; its knobs: %s",
                           spec->path, kn->loc.line, kn->loc.col, t->name, kn->name,
                           ks->n ? known : "(none)");
        }
        memcpy(ks->values[idx], kn->values, sizeof(int) * (size_t)kn->n_values);
        ks->n_values[idx] = kn->n_values;
    }
    return MG_OK;
}

static void push_point(lua_State *L, const mg_point *p)
{
    lua_createtable(L, 0, p->n);
    for (int i = 0; i < p->n; i++) {
        lua_pushinteger(L, p->values[i]);
        lua_setfield(L, -2, p->names[i]);
    }
}

/* Calls the manifest's valid(spec, arch, point): 1 valid, 0 pruned (reason in why), -1 error. */
static int point_is_valid(lua_State *L, const mg_point *p, char *why, size_t why_size)
{
    lua_getglobal(L, "valid");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 1;
    }
    lua_getglobal(L, "spec");
    lua_getglobal(L, "arch");
    push_point(L, p);
    if (lua_pcall(L, 3, 2, 0) != LUA_OK) return -1;
    int ok = lua_toboolean(L, -2);
    if (!ok && why_size) snprintf(why, why_size, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_pop(L, 2);
    return ok;
}

/* Tuning spaces larger than this are refused rather than enumerated. */
#define MAX_POINTS 65536

typedef struct points_ctx {
    const mg_template *t;
    const mg_spec *spec;
    const char *arch;
    mg_point *list;     /* owned by the caller, so that a Lua error cannot leak it */
    int kept;
} points_ctx;

static mg_status enumerate_points(lua_State *L, void *p, mg_diag *diag)
{
    points_ctx *pc = p;
    const mg_template *t = pc->t;
    knob_space ks;
    mg_status st = read_knobs(L, t, &ks, diag);
    if (st == MG_OK) st = narrow_by_spec(t, pc->spec, &ks, diag);
    if (st != MG_OK) return st;
    long long total = 1;
    for (int i = 0; i < ks.n; i++) {
        total *= ks.n_values[i];
        if (total > MAX_POINTS)
            return mg_fail(diag, MG_E_TEMPLATE,
                           "%s: tuning space has more than %d points for spec '%s'; narrow it "
                           "in the spec's tuning section", t->path, MAX_POINTS, pc->spec->name);
    }
    pc->list = calloc((size_t)total, sizeof *pc->list);
    if (!pc->list) return mg_fail(diag, MG_E_NOMEM, "out of memory enumerating %s", t->path);
    char last_reason[256] = "";
    for (int idx = 0; idx < (int)total; idx++) {
        mg_point pt = {.n = ks.n};
        for (int i = ks.n - 1, rest = idx; i >= 0; i--) {
            snprintf(pt.names[i], MG_NAME_MAX, "%s", ks.names[i]);
            pt.values[i] = ks.values[i][rest % ks.n_values[i]];
            rest /= ks.n_values[i];
        }
        char why[256] = "";
        int v = point_is_valid(L, &pt, why, sizeof why);
        if (v < 0) return lua_failure(L, diag, "");
        if (v)
            pc->list[pc->kept++] = pt;
        else if (why[0])
            snprintf(last_reason, sizeof last_reason, "%s", why);
    }
    if (pc->kept == 0)
        return mg_fail(diag, MG_E_TEMPLATE, "%s: no valid tuning point for spec '%s' on %s%s%s",
                       t->path, pc->spec->name, pc->arch, last_reason[0] ? ": " : "",
                       last_reason);
    return MG_OK;
}

mg_status mg_template_points(const mg_template *t, const mg_spec *spec, const char *arch,
                             mg_point **points, int *n_points, mg_diag *diag)
{
    *points = NULL;
    *n_points = 0;
    sandbox sb;
    mg_status st = sandbox_open(&sb, t, spec, arch, diag);
    if (st != MG_OK) return st;
    points_ctx pc = {.t = t, .spec = spec, .arch = arch};
    if (run_chunk(sb.L, t->manifest_lua, t->path) != LUA_OK)
        st = lua_failure(sb.L, diag, "");
    if (st == MG_OK) st = run_protected(sb.L, enumerate_points, &pc, diag);
    sandbox_close(&sb);
    if (st != MG_OK) {
        free(pc.list);
        return st;
    }
    *points = pc.list;
    *n_points = pc.kept;
    return MG_OK;
}

/* ---------- rendering ---------- */

static mg_status read_kernels(lua_State *L, const mg_template *t, mg_rendered *r, mg_diag *diag)
{
    lua_getglobal(L, "kernels");
    if (!lua_isfunction(L, -1))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: manifest must define kernels(spec, point)", t->path);
    lua_getglobal(L, "spec");
    lua_getglobal(L, "point");
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) return lua_failure(L, diag, "");
    if (!lua_istable(L, -1))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: kernels() must return a table role -> name", t->path);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: kernels() entries must be strings", t->path);
        if (r->n_kernels == MG_MAX_KERNELS)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: more than %d kernels", t->path, MG_MAX_KERNELS);
        mg_kernel_ref *k = &r->kernels[r->n_kernels++];
        snprintf(k->role, sizeof k->role, "%s", lua_tostring(L, -2));
        snprintf(k->name_expr, sizeof k->name_expr, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (r->n_kernels == 0)
        return mg_fail(diag, MG_E_TEMPLATE, "%s: kernels() returned no kernel", t->path);
    return MG_OK;
}

static mg_status read_launch(lua_State *L, const mg_template *t, mg_rendered *r, mg_diag *diag)
{
    lua_getglobal(L, "launch");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return MG_OK;
    }
    lua_getglobal(L, "spec");
    lua_getglobal(L, "point");
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) return lua_failure(L, diag, "");
    if (!lua_istable(L, -1))
        return mg_fail(diag, MG_E_TEMPLATE, "%s: launch() must return a table", t->path);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isinteger(L, -1))
            return mg_fail(diag, MG_E_TEMPLATE, "%s: launch() must map names to integers", t->path);
        if (r->n_launch == MG_MAX_LAUNCH_VALUES)
            return mg_fail(diag, MG_E_TEMPLATE, "%s: launch() returned too many values", t->path);
        mg_named_int *v = &r->launch[r->n_launch++];
        snprintf(v->name, sizeof v->name, "%s", lua_tostring(L, -2));
        v->value = lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return MG_OK;
}

typedef struct manifest_ctx {
    const mg_template *t;
    mg_rendered *r;
} manifest_ctx;

static mg_status read_manifest_results(lua_State *L, void *p, mg_diag *diag)
{
    manifest_ctx *mc = p;
    mg_status st = read_kernels(L, mc->t, mc->r, diag);
    if (st == MG_OK) st = read_launch(L, mc->t, mc->r, diag);
    return st;
}

mg_status mg_template_render(const mg_template *t, const mg_spec *spec, const char *arch,
                             const mg_point *point, mg_rendered *out, mg_diag *diag)
{
    memset(out, 0, sizeof *out);
    sandbox sb;
    mg_status st = sandbox_open(&sb, t, spec, arch, diag);
    if (st != MG_OK) return st;
    lua_State *L = sb.L;
    push_point(L, point);
    lua_setglobal(L, "point");

    char point_text[512];
    mg_point_format(point, point_text, sizeof point_text);
    mg_buf_printf(&sb.out, "// generated by mobagen from template %s, spec %s (%s), arch %s, point %s\n",
                  t->path, spec->path[0] ? spec->path : "(inline)", spec->name, arch, point_text);

    if (run_chunk(L, t->manifest_lua, t->path) != LUA_OK) st = lua_failure(L, diag, "");
    if (st == MG_OK && run_chunk(L, t->body_lua, t->path) != LUA_OK) st = lua_failure(L, diag, "");
    if (st == MG_OK) {
        manifest_ctx mc = {t, out};
        st = run_protected(L, read_manifest_results, &mc, diag);
    }
    if (st == MG_OK && sb.out.oom) st = mg_fail(diag, MG_E_NOMEM, "out of memory rendering %s", t->path);
    if (st == MG_OK) {
        out->source_len = sb.out.len;
        out->source = mg_buf_take(&sb.out);
    }
    sandbox_close(&sb);
    if (st != MG_OK) mg_rendered_free(out);
    return st;
}

void mg_rendered_free(mg_rendered *r)
{
    free(r->source);
    memset(r, 0, sizeof *r);
}

void mg_point_format(const mg_point *p, char *buf, size_t size)
{
    if (!p || p->n == 0) {
        snprintf(buf, size, "default");
        return;
    }
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < p->n && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s=%d", i ? "," : "", p->names[i],
                                 p->values[i]);
}

int mg_point_get(const mg_point *p, const char *name, int def)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->names[i], name)) return p->values[i];
    return def;
}

long long mg_rendered_launch(const mg_rendered *r, const char *name, long long def)
{
    for (int i = 0; i < r->n_launch; i++)
        if (!strcmp(r->launch[i].name, name)) return r->launch[i].value;
    return def;
}

const char *mg_rendered_kernel(const mg_rendered *r, const char *role)
{
    for (int i = 0; i < r->n_kernels; i++)
        if (!strcmp(r->kernels[i].role, role)) return r->kernels[i].name_expr;
    return NULL;
}
