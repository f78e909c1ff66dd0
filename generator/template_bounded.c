/* Bounded replacements for the library functions whose loops run in C, where the instruction
 * hook never fires (string.rep('', 1e10), table.move over math.maxinteger, a backtracking
 * pattern): each call's work is bounded before it starts, and charged to the budget, so the
 * hook and the deadline are never out of reach for long. And setmetatable without __gc: Lua
 * runs finalizers with hooks off, beyond every limit. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "template_internal.h"

/* Calls the library's own function (upvalue 1) with this call's arguments. */
static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* string.rep without the loop over empty pieces, and refusing results over the memory cap
 * before building them. */
static int bounded_rep(lua_State *L)
{
    size_t len, sep_len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &sep_len);
    mg_sandbox_charge(L, 0);
    if (n <= 0 || len + sep_len == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if ((lua_Unsigned)n > MG_LUA_MEMORY_CAP / (len + sep_len) + 1)
        return luaL_error(L, "string.rep: the result would exceed the memory cap of %d MiB",
                          (int)(MG_LUA_MEMORY_CAP >> 20));
    size_t total = len * (size_t)n + sep_len * (size_t)(n - 1);
    if (total > MG_LUA_MEMORY_CAP)
        return luaL_error(L, "string.rep: the result would exceed the memory cap of %d MiB",
                          (int)(MG_LUA_MEMORY_CAP >> 20));
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, total);
    for (lua_Integer i = 0; i < n; i++) {
        memcpy(p, s, len);
        p += len;
        if (i + 1 < n) {
            memcpy(p, sep, sep_len);
            p += sep_len;
        }
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* ---- patterns -------------------------------------------------------------------------------- */

enum pattern_fn { FIND, MATCH, GMATCH, GSUB };
static const char *const pattern_fn_names[] = {"string.find", "string.match", "string.gmatch",
                                               "string.gsub"};

/* An upper bound on the steps of Lua's backtracking matcher for a pattern of m bytes on a
 * subject of n: every '*', '+', '-' or '?' can make each later item retry at up to n + 1
 * places; %b, %f and back-references scan up to n bytes each; without an anchor every start
 * position is tried. Plain finds (or patterns without magic characters) compare bytes only. */
static double pattern_steps(const char *p, size_t m, size_t n, int plain, int anchored)
{
    if (!plain) {
        plain = 1;
        for (size_t i = 0; i < m; i++)
            if (p[i] && strchr("^$*+?.([%-", p[i])) plain = 0;
    }
    double starts = anchored ? 1.0 : (double)n + 1;
    if (plain) return starts * ((double)m / 16 + 1);
    int quantifiers = 0, scans = 0;
    for (size_t i = 0; i < m; i++) {
        if (p[i] == '%' && i + 1 < m) {
            char c = p[++i];
            if (c == 'b' || c == 'f' || (c >= '1' && c <= '9')) scans = 1;
        } else if (p[i] == '*' || p[i] == '+' || p[i] == '-' || p[i] == '?') {
            quantifiers++;
        }
    }
    return starts * pow((double)n + 1, quantifiers) * ((double)m + 1) * (scans ? (double)n + 1 : 1);
}

static int bounded_pattern(lua_State *L, enum pattern_fn fn)
{
    size_t n, m;
    luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &m);
    mg_sandbox_charge(L, 0);
    int plain = fn == FIND && lua_toboolean(L, 4);
    int anchored = fn != GMATCH && m > 0 && p[0] == '^';
    double steps = pattern_steps(p, m, n, plain, anchored);
    if (steps > MG_LUA_PATTERN_STEP_CAP) {
        char msg[300];  /* lua_pushfstring knows neither precisions nor %e */
        snprintf(msg, sizeof msg, "%s: pattern '%.40s' could take about %.0e steps on a subject "
                 "of %zu bytes (the cap is %.0e; Lua's matcher backtracks): use a shorter subject "
                 "or fewer repetitions", pattern_fn_names[fn], p, steps, n,
                 (double)MG_LUA_PATTERN_STEP_CAP);
        return luaL_error(L, "%s", msg);
    }
    return call_original(L);
}

static int bounded_find(lua_State *L) { return bounded_pattern(L, FIND); }
static int bounded_match(lua_State *L) { return bounded_pattern(L, MATCH); }
static int bounded_gmatch(lua_State *L) { return bounded_pattern(L, GMATCH); }
static int bounded_gsub(lua_State *L) { return bounded_pattern(L, GSUB); }

/* ---- tables ---------------------------------------------------------------------------------- */

/* The table functions loop in C over a length and reads that metamethods could make endless
 * (a __len of math.maxinteger, a C function as __index), so they take plain tables only; a
 * plain table's length is bounded by the memory cap. */
static void require_plain_table(lua_State *L, int arg, const char *fn)
{
    if (!lua_getmetatable(L, arg)) return;
    static const char *const fields[] = {"__index", "__newindex", "__len"};
    for (int i = 0; i < 3; i++) {
        lua_pushstring(L, fields[i]);
        if (lua_rawget(L, -2) != LUA_TNIL)
            luaL_error(L, "%s: a table with a %s metamethod; templates pass plain tables to the "
                       "table library", fn, fields[i]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int bounded_table_fn(lua_State *L, const char *fn)
{
    require_plain_table(L, 1, fn);
    mg_sandbox_charge(L, lua_type(L, 1) == LUA_TTABLE ? (long long)lua_rawlen(L, 1) : 0);
    return call_original(L);
}

static int bounded_concat(lua_State *L) { return bounded_table_fn(L, "table.concat"); }
static int bounded_insert(lua_State *L) { return bounded_table_fn(L, "table.insert"); }
static int bounded_remove(lua_State *L) { return bounded_table_fn(L, "table.remove"); }
static int bounded_unpack(lua_State *L) { return bounded_table_fn(L, "table.unpack"); }

static int bounded_sort(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE && lua_rawlen(L, 1) > MG_LUA_TABLE_SORT_CAP)
        return luaL_error(L, "table.sort: %I elements; at most %d", (LUA_INTEGER)lua_rawlen(L, 1),
                          MG_LUA_TABLE_SORT_CAP);
    return bounded_table_fn(L, "table.sort");
}

/* table.move's count comes from its arguments alone: nils move without end and without memory. */
static int bounded_move(lua_State *L)
{
    lua_Integer first = luaL_checkinteger(L, 2), last = luaL_checkinteger(L, 3);
    require_plain_table(L, 1, "table.move");
    if (!lua_isnoneornil(L, 5)) require_plain_table(L, 5, "table.move");
    lua_Unsigned count = last >= first ? (lua_Unsigned)last - (lua_Unsigned)first + 1 : 0;
    if (count > MG_LUA_TABLE_MOVE_CAP)
        return luaL_error(L, "table.move: %I elements; at most %d", (LUA_INTEGER)count,
                          MG_LUA_TABLE_MOVE_CAP);
    mg_sandbox_charge(L, (long long)count);
    return call_original(L);
}

/* ---- metatables ------------------------------------------------------------------------------ */

/* Lua marks an object for finalization when its metatable has __gc at setmetatable time, and
 * runs the finalizer with hooks off (and once more at lua_close): no budget could stop it. */
static int bounded_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc metamethods are not allowed in templates "
                              "(finalizers run outside the sandbox's limits)");
        lua_pop(L, 1);
    }
    return call_original(L);
}

static void wrap(lua_State *L, const char *lib, const char *name, lua_CFunction fn)
{
    if (lib)
        lua_getglobal(L, lib);
    else
        lua_pushglobaltable(L);
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

void mg_sandbox_bound_libs(lua_State *L)
{
    wrap(L, NULL, "setmetatable", bounded_setmetatable);
    wrap(L, "string", "rep", bounded_rep);
    wrap(L, "string", "find", bounded_find);
    wrap(L, "string", "match", bounded_match);
    wrap(L, "string", "gmatch", bounded_gmatch);
    wrap(L, "string", "gsub", bounded_gsub);
    wrap(L, "table", "concat", bounded_concat);
    wrap(L, "table", "insert", bounded_insert);
    wrap(L, "table", "remove", bounded_remove);
    wrap(L, "table", "unpack", bounded_unpack);
    wrap(L, "table", "sort", bounded_sort);
    wrap(L, "table", "move", bounded_move);
}
