/* Templates: loading, tuning points and expansion (translation in template_translate.c, the
 * Lua sandbox in template_sandbox.c). */
#include "template.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "embedded.h"
#include "template_internal.h"
#include "textbuf.h"

char *mg_dup_range(const char *s, size_t n)
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
    t->name = mg_dup_range(base, base_len);
    t->dir = slash ? mg_dup_range(path, (size_t)(slash - path)) : strdup(".");
    if (!t->path || !t->name || !t->dir) {
        mg_template_free(t);
        return mg_fail(diag, MG_E_NOMEM, "out of memory loading %s", path);
    }
    mg_status st = mg_template_translate(path, text, len, &t->manifest_lua, &t->body_lua, diag);
    if (st != MG_OK) {
        mg_template_free(t);
        return st;
    }
    *out = t;
    return MG_OK;
}

char *mg_template_read(const char *path, size_t *len)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0) err = errno;
    else if (!S_ISREG(st.st_mode)) err = EINVAL;
    else if (st.st_size > (off_t)MG_TEMPLATE_MAX_BYTES) err = EFBIG;
    char *text = err ? NULL : malloc(MG_TEMPLATE_MAX_BYTES + 1);
    if (!err && !text) err = ENOMEM;
    size_t n = 0;
    while (!err) {  /* up to one byte past the limit: the file may have grown since fstat */
        ssize_t got = read(fd, text + n, MG_TEMPLATE_MAX_BYTES + 1 - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) err = errno;
        else if (got == 0) break;
        else if ((n += (size_t)got) > MG_TEMPLATE_MAX_BYTES) err = EFBIG;
    }
    close(fd);
    if (err) {
        free(text);
        errno = err;
        return NULL;
    }
    text[n] = 0;
    *len = n;
    return text;
}

const char *mg_template_read_error(int err)
{
    if (err == EFBIG) return "larger than the 1 MiB a template may have";
    if (err == EINVAL) return "not a regular file";
    return strerror(err);
}

mg_status mg_template_load(const char *path, mg_template **out, mg_diag *diag)
{
    size_t len;
    char *text = mg_template_read(path, &len);
    if (!text) {
        *out = NULL;
        return mg_fail(diag, MG_E_IO, "cannot read template %s: %s", path,
                       mg_template_read_error(errno));
    }
    /* The template is known by its canonical path in messages, the first line and #line: the
     * generated source, and with it the cache key, must not depend on how its directory was
     * spelled ("templates", "./templates/"). */
    char *canonical = realpath(path, NULL);
    mg_status st = mg_template_from_text(canonical ? canonical : path, text, len, out, diag);
    free(canonical);
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
    if (mg_pcall(L, 3, 2) != LUA_OK) return -1;
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
        if (v < 0) return mg_lua_failure(L, diag, "");
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
    mg_sandbox sb;
    mg_status st = mg_sandbox_open(&sb, t, spec, arch, diag);
    if (st != MG_OK) return st;
    points_ctx pc = {.t = t, .spec = spec, .arch = arch};
    if (mg_run_chunk(sb.L, t->manifest_lua, t->path) != LUA_OK)
        st = mg_lua_failure(sb.L, diag, "");
    if (st == MG_OK) st = mg_run_protected(sb.L, enumerate_points, &pc, diag);
    mg_sandbox_close(&sb);
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
    if (mg_pcall(L, 2, 1) != LUA_OK) return mg_lua_failure(L, diag, "");
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
    /* Lua's table order differs from process to process; the kernels enter the cache key, the
     * entry and NVRTC's name list, so they take the roles' order (role is the first member). */
    qsort(r->kernels, (size_t)r->n_kernels, sizeof r->kernels[0], compare_names);
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
    if (mg_pcall(L, 2, 1) != LUA_OK) return mg_lua_failure(L, diag, "");
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
    qsort(r->launch, (size_t)r->n_launch, sizeof r->launch[0], compare_names);
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
    mg_sandbox sb;
    mg_status st = mg_sandbox_open(&sb, t, spec, arch, diag);
    if (st != MG_OK) return st;
    lua_State *L = sb.L;
    push_point(L, point);
    lua_setglobal(L, "point");

    char point_text[512];
    mg_point_format(point, point_text, sizeof point_text);
    /* The spec by name, not by the path it was loaded from: what is compiled must not depend on
     * where the spec file was found (the key hashes this text). */
    mg_buf_printf(&sb.out, "// generated by mobagen from template %s, spec %s, arch %s, point %s\n",
                  t->path, spec->name, arch, point_text);

    if (mg_run_chunk(L, t->manifest_lua, t->path) != LUA_OK) st = mg_lua_failure(L, diag, "");
    if (st == MG_OK && mg_run_chunk(L, t->body_lua, t->path) != LUA_OK) st = mg_lua_failure(L, diag, "");
    if (st == MG_OK) {
        manifest_ctx mc = {t, out};
        st = mg_run_protected(L, read_manifest_results, &mc, diag);
    }
    if (st == MG_OK && sb.out.oom) st = mg_fail(diag, MG_E_NOMEM, "out of memory rendering %s", t->path);
    if (st == MG_OK) {
        out->source_len = sb.out.len;
        out->source = mg_buf_take(&sb.out);
    }
    mg_sandbox_close(&sb);
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
