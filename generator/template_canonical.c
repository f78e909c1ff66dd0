/* What a template computes must not change from one process to the next (its output enters the
 * cache key): Lua's own pairs() walks a table in hash order, and string hashes are seeded per
 * state, so pairs() here visits keys in a canonical order instead: numbers ascending, then
 * strings bytewise, then false before true. Keys of other types have no such order and are
 * refused. math.random and math.randomseed are removed for the same reason. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "template_internal.h"

typedef struct canonical_key {
    int rank;            /* 0 number, 1 string, 2 boolean */
    lua_Number number;
    const char *str;
    size_t len;
    int boolean;
    lua_Integer slot;    /* where the key sits in the unsorted key array */
} canonical_key;

static int compare_keys(const void *pa, const void *pb)
{
    const canonical_key *a = pa, *b = pb;
    if (a->rank != b->rank) return a->rank - b->rank;
    if (a->rank == 0) return (a->number > b->number) - (a->number < b->number);
    if (a->rank == 2) return a->boolean - b->boolean;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* The iterator: upvalue 1 is the sorted key array, upvalue 2 the position reached. */
static int canonical_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    if (lua_rawgeti(L, lua_upvalueindex(1), i) == LUA_TNIL) return 1;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    lua_pushvalue(L, -1);
    lua_rawget(L, 1);
    return 2;
}

static int canonical_pairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_newtable(L);                                   /* 2: keys as found */
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        int t = lua_type(L, -1);
        if (t != LUA_TNUMBER && t != LUA_TSTRING && t != LUA_TBOOLEAN)
            return luaL_error(L, "pairs: a key of type %s has no canonical order; templates key "
                              "tables by numbers, strings or booleans", lua_typename(L, t));
        lua_pushvalue(L, -1);
        lua_rawseti(L, 2, ++n);
    }
    mg_sandbox_charge(L, (long long)n);
    canonical_key *keys = n ? lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0) : NULL;  /* 3 */
    for (lua_Integer i = 1; i <= n; i++) {
        canonical_key *k = &keys[i - 1];
        memset(k, 0, sizeof *k);
        k->slot = i;
        int t = lua_rawgeti(L, 2, i);
        if (t == LUA_TNUMBER) {
            k->rank = 0;
            k->number = lua_tonumber(L, -1);
        } else if (t == LUA_TSTRING) {
            k->rank = 1;
            k->str = lua_tolstring(L, -1, &k->len);   /* kept alive by the key array */
        } else {
            k->rank = 2;
            k->boolean = lua_toboolean(L, -1);
        }
        lua_pop(L, 1);
    }
    if (n) qsort(keys, (size_t)n, sizeof *keys, compare_keys);
    lua_createtable(L, (int)n, 0);                     /* the sorted key array */
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, keys[i - 1].slot);
        lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, canonical_next, 2);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

void mg_sandbox_canonical_libs(lua_State *L)
{
    lua_pushcfunction(L, canonical_pairs);
    lua_setglobal(L, "pairs");
    lua_getglobal(L, "math");
    lua_pushnil(L);
    lua_setfield(L, -2, "random");
    lua_pushnil(L);
    lua_setfield(L, -2, "randomseed");
    lua_pop(L, 1);
}
