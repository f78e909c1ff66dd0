/* The sandboxed Lua state a template runs in: base (without file and code loading), string,
 * table and math (bounded where they loop in C: template_bounded.c); a memory cap, an
 * instruction budget, a wall-clock deadline and a cap on the rendered text. A limit that trips
 * stays tripped, and every error leaves with a template file and line. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "embedded.h"
#include "template_internal.h"

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mg_sandbox *mg_sandbox_of(lua_State *L)
{
    mg_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    return sb;
}

static void instruction_hook(lua_State *L, lua_Debug *ar);

/* From now on every Lua instruction raises sb->fatal (a hook on each one) and every allocation
 * that grows fails, so neither pcall nor a C loop can carry on past a tripped limit. Safe to
 * call from the allocator: lua_sethook only sets fields, as it must for signal handlers. */
static void arm_fatal(mg_sandbox *sb)
{
    sb->hook_count = 1;
    if (sb->L) lua_sethook(sb->L, instruction_hook, LUA_MASKCOUNT, 1);
}

/* "path:line" of the innermost template (Lua) frame at or above `level`, else of the place
 * the hook last saw running, else the template's path. */
static void template_location(lua_State *L, int level, char *buf, size_t size)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    lua_Debug ar;
    for (; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.source[0] == '@' && ar.currentline > 0) {
            snprintf(buf, size, "%s:%d", ar.source + 1, ar.currentline);
            return;
        }
    }
    if (sb->seen_line > 0)
        snprintf(buf, size, "%s:%d", sb->seen_source, sb->seen_line);
    else
        snprintf(buf, size, "%s", sb->tpl->path);
}

static void raise_fatal(lua_State *L)
{
    lua_pushstring(L, mg_sandbox_of(L)->fatal);  /* may itself fail for memory: also an error */
    lua_error(L);
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void trip(lua_State *L, const char *fmt, ...)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    if (!sb->fatal[0]) {
        char where[300], what[200];
        template_location(L, 0, where, sizeof where);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        snprintf(sb->fatal, sizeof sb->fatal, "%s: %s", where, what);
        arm_fatal(sb);
    }
    raise_fatal(L);
}

#define TIME_LIMIT_MESSAGE "template ran past its time limit of %.1f s"

static void check_limits(lua_State *L, double now)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    if (sb->fatal[0]) raise_fatal(L);
    if (sb->instructions > MG_LUA_INSTRUCTION_CAP)
        trip(L, "template exceeded its budget of %lld Lua instructions",
             (long long)MG_LUA_INSTRUCTION_CAP);
    if (now > sb->deadline)
        trip(L, TIME_LIMIT_MESSAGE, MG_LUA_TIME_LIMIT_MS / 1000.0);
}

void mg_sandbox_charge(lua_State *L, long long work)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    sb->instructions += work;
    if (sb->fatal[0]) raise_fatal(L);
    if (sb->instructions > MG_LUA_INSTRUCTION_CAP) check_limits(L, monotonic_seconds());
}

/* The allocator cannot walk Lua's stack (it may be halfway through moving it): the message
 * names the line where the hook last saw the template running. */
static void *refuse_for_good(mg_sandbox *sb, const char *what)
{
    if (sb->seen_line > 0)
        snprintf(sb->fatal, sizeof sb->fatal, "%s:%d: %s (the line it was last seen running)",
                 sb->seen_source, sb->seen_line, what);
    else
        snprintf(sb->fatal, sizeof sb->fatal, "%s: %s", sb->tpl->path, what);
    arm_fatal(sb);
    return NULL;
}

/* Lua refuses to grow past the cap; a refusal is fatal (see arm_fatal), and so is the deadline,
 * which is also read here because a single instruction or library call can allocate for long. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mg_sandbox *sb = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        sb->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old) {  /* Lua requires that shrinking never fails */
        if (sb->fatal[0]) return NULL;
        if (sb->used + (nsize - old) > MG_LUA_MEMORY_CAP) {
            /* Lua answers a refusal with an emergency collection and asks again at once: only
             * a request refused twice in a row is over the cap for good. */
            if (ptr != sb->refused_ptr || osize != sb->refused_osize || nsize != sb->refused_nsize) {
                sb->refused_ptr = ptr;
                sb->refused_osize = osize;
                sb->refused_nsize = nsize;
                return NULL;
            }
            char what[100];
            snprintf(what, sizeof what, "template exceeded its memory cap of %u MiB",
                     (unsigned)(MG_LUA_MEMORY_CAP >> 20));
            return refuse_for_good(sb, what);
        }
        if ((++sb->allocations % 32 == 0 || nsize - old > 65536) && sb->L &&
            monotonic_seconds() > sb->deadline) {
            char what[100];
            snprintf(what, sizeof what, TIME_LIMIT_MESSAGE, MG_LUA_TIME_LIMIT_MS / 1000.0);
            return refuse_for_good(sb, what);
        }
    }
    void *p = realloc(ptr, nsize);
    if (p) {
        sb->used = sb->used - old + nsize;
        if (nsize > old) sb->refused_nsize = 0;  /* a later refusal starts afresh */
    }
    return p;
}

/* The hook runs every hook_count instructions; the count adapts so that it runs about every
 * millisecond whatever an instruction costs (a concatenation of 30 MB takes milliseconds),
 * which keeps the deadline within reach. */
#define HOOK_COUNT_MAX 10000

static void instruction_hook(lua_State *L, lua_Debug *ar)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    if (sb->fatal[0]) raise_fatal(L);
    sb->instructions += sb->hook_count;
    if (lua_getinfo(L, "Sl", ar) && ar->source[0] == '@' && ar->currentline > 0) {
        snprintf(sb->seen_source, sizeof sb->seen_source, "%s", ar->source + 1);
        sb->seen_line = ar->currentline;
    }
    double now = monotonic_seconds();
    check_limits(L, now);
    double spent = now - sb->last_hook;
    int count = sb->hook_count;
    if (spent < 0.0005 && count < HOOK_COUNT_MAX)
        count = count * 2 < HOOK_COUNT_MAX ? count * 2 : HOOK_COUNT_MAX;
    else if (spent > 0.004 && count > 1)
        count = count / 4 > 1 ? count / 4 : 1;
    if (count != sb->hook_count) {
        /* lua_sethook walks the whole call stack: in deep recursion that costs more than the
         * instructions in between, so its time is kept out of the next interval. */
        sb->hook_count = count;
        lua_sethook(L, instruction_hook, LUA_MASKCOUNT, count);
        now = monotonic_seconds();
    }
    sb->last_hook = now;
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
    mg_sandbox *sb = mg_sandbox_of(L);
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


/* "a.cu.tpl -> b.cuh.tpl -> name" into buf: the chain of includes that led here. */
static void include_chain(const mg_sandbox *sb, const char *name, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i <= sb->include_depth && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s -> ", sb->include_stack[i]);
    if (used < size) snprintf(buf + used, size - used, "%s", name);
}

/* include("name.cuh.tpl"): expands another template from the same directory in place. Each
 * call reads and translates a file outside the hook's sight, so calls are counted and charged
 * to the instruction budget, and a cycle is refused at once, naming it. */
static int lua_include(lua_State *L)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    const char *name = luaL_checkstring(L, 1);
    mg_sandbox_charge(L, 0);
    if (strchr(name, '/') || strstr(name, ".."))
        return luaL_error(L, "include('%s'): only a file name in the template's directory", name);
    char chain[1200];
    include_chain(sb, name, chain, sizeof chain);
    for (int i = 0; i <= sb->include_depth; i++)
        if (!strcmp(sb->include_stack[i], name))
            return luaL_error(L, "include('%s'): include cycle %s", name, chain);
    if (sb->include_depth >= MG_INCLUDE_MAX_DEPTH)
        return luaL_error(L, "include('%s'): includes nested deeper than %d: %s", name,
                          MG_INCLUDE_MAX_DEPTH, chain);
    if (strlen(name) >= sizeof sb->include_stack[0])
        return luaL_error(L, "include: file name longer than %zu bytes",
                          sizeof sb->include_stack[0] - 1);
    if (++sb->include_calls > MG_INCLUDE_MAX_CALLS)
        return luaL_error(L, "include('%s'): more than %d include() calls", name,
                          MG_INCLUDE_MAX_CALLS);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", sb->tpl->dir, name);
    size_t len;
    char *text = NULL;
    if (sb->tpl->embedded) {
        const char *e = mg_embedded_template(name, &len);
        text = e ? mg_dup_range(e, len) : NULL;
        if (!text) return luaL_error(L, "include('%s'): no embedded template of that name", name);
    } else if (!(text = mg_template_read(path, &len))) {
        return luaL_error(L, "include('%s'): cannot read %s: %s", name, path,
                          mg_template_read_error(errno));
    }
    mg_sandbox_charge(L, (long long)len);
    char *manifest = NULL, *body = NULL;
    mg_diag d;
    mg_status st = mg_template_translate(path, text, len, &manifest, &body, &d);
    free(text);
    if (st != MG_OK) return luaL_error(L, "%s", d.msg);
    free(manifest);
    sb->include_depth++;
    snprintf(sb->include_stack[sb->include_depth], sizeof sb->include_stack[0], "%s", name);
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

/* Only base (less file and code loading), string, table and math, with the functions that can
 * loop in C for unbounded time replaced by bounded ones. */
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
    mg_sandbox_bound_libs(L);
    mg_sandbox_canonical_libs(L);
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
    const char *slash = strrchr(t->path, '/');
    snprintf(sb->include_stack[0], sizeof sb->include_stack[0], "%s", slash ? slash + 1 : t->path);
    sb->last_hook = monotonic_seconds();
    sb->deadline = sb->last_hook + MG_LUA_TIME_LIMIT_MS / 1000.0;
    sb->hook_count = 1;
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
    lua_sethook(L, instruction_hook, LUA_MASKCOUNT, sb->hook_count);
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

/* Message handler: gives an error without a template location one (error(x, 0), errors a
 * library function raised through a bounded wrapper), and turns a non-string error object
 * into text without calling its __tostring (template code, which could loop). */
static int message_handler(lua_State *L)
{
    char where[300];
    template_location(L, 1, where, sizeof where);
    if (lua_type(L, 1) != LUA_TSTRING) {
        lua_pushfstring(L, "%s: error object is a %s value, not a string", where,
                        luaL_typename(L, 1));
        return 1;
    }
    const char *msg = lua_tostring(L, 1);
    const char *colon = strrchr(where, ':');
    size_t file_len = colon ? (size_t)(colon - where) : strlen(where);
    /* Lua shortens a long chunk name to "...tail" in its messages: put the whole path back. */
    const char *msg_colon = strncmp(msg, "...", 3) ? NULL : strchr(msg, ':');  /* after the dots */
    size_t tail = msg_colon ? (size_t)(msg_colon - msg - 3) : 0;
    if (msg_colon && tail <= file_len && !strncmp(where + file_len - tail, msg + 3, tail)) {
        lua_pushlstring(L, where, file_len);
        lua_pushstring(L, msg_colon);
        lua_concat(L, 2);
    } else if (strncmp(msg, where, file_len) || msg[file_len] != ':') {
        lua_pushfstring(L, "%s: %s", where, msg);
    }
    return 1;
}

int mg_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, message_handler);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return rc;
}

/* Lua's parser reports nesting too deep for the C stack without a line. Prefixes of the chunk
 * that end before that line parse or stop at their end; find the first one that fails the
 * same way, and put its line on the message (on the stack's top). */
static void locate_parse_error(lua_State *L, const char *code, const char *chunkname)
{
    const char *msg = lua_tostring(L, -1);
    if (!msg || strcmp(msg, "C stack overflow")) return;
    int lo = 1, hi = 1;
    for (const char *c = code; *c; c++) hi += *c == '\n';
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const char *end = code;
        for (int line = 0; line < mid && *end; end++) line += *end == '\n';
        int rc = luaL_loadbufferx(L, code, (size_t)(end - code), chunkname, "t");
        int same = rc != LUA_OK && lua_type(L, -1) == LUA_TSTRING &&
                   !strcmp(lua_tostring(L, -1), "C stack overflow");
        lua_pop(L, 1);
        if (same) hi = mid;
        else lo = mid + 1;
    }
    lua_pushfstring(L, "%s:%d: expressions nested too deeply (C stack overflow)", chunkname + 1, lo);
    lua_remove(L, -2);
}

int mg_run_chunk(lua_State *L, const char *code, const char *path)
{
    char chunkname[1100];
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    int rc = luaL_loadbufferx(L, code, strlen(code), chunkname, "t");
    if (rc != LUA_OK) locate_parse_error(L, code, chunkname);
    if (rc == LUA_OK) rc = mg_pcall(L, 0, 0);
    return rc;
}

/* Never converts the error object: lua_tostring on a number allocates, and outside a
 * protected call a failed allocation would make Lua panic. */
mg_status mg_lua_failure(lua_State *L, mg_diag *diag, const char *what)
{
    mg_sandbox *sb = mg_sandbox_of(L);
    if (sb->fatal[0]) return mg_fail(diag, MG_E_TEMPLATE, "%s%s", what, sb->fatal);
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (msg && strncmp(msg, sb->tpl->dir, strlen(sb->tpl->dir)) &&
        strncmp(msg, sb->tpl->path, strlen(sb->tpl->path)))
        return mg_fail(diag, MG_E_TEMPLATE, "%s%s: %s", what, sb->tpl->path, msg);
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
    if (mg_pcall(L, 1, 0) != LUA_OK) return mg_lua_failure(L, diag, "");
    return pc.st;
}
