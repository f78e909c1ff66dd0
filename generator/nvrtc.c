#include "nvrtc.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "textbuf.h"

/* NVRTC's C ABI, declared here so that building mobagen needs no CUDA headers. */
typedef int nvrtc_result;
typedef struct nvrtc_program_s *nvrtc_program;

struct mg_nvrtc {
    void *lib;
    char path[512];
    int major, minor;
    int n_archs;
    int archs[64];
    const char *(*get_error_string)(nvrtc_result);
    nvrtc_result (*version)(int *, int *);
    nvrtc_result (*get_num_supported_archs)(int *);
    nvrtc_result (*get_supported_archs)(int *);
    nvrtc_result (*create_program)(nvrtc_program *, const char *, const char *, int,
                                   const char *const *, const char *const *);
    nvrtc_result (*destroy_program)(nvrtc_program *);
    nvrtc_result (*compile_program)(nvrtc_program, int, const char *const *);
    nvrtc_result (*get_program_log_size)(nvrtc_program, size_t *);
    nvrtc_result (*get_program_log)(nvrtc_program, char *);
    nvrtc_result (*get_cubin_size)(nvrtc_program, size_t *);
    nvrtc_result (*get_cubin)(nvrtc_program, char *);
    nvrtc_result (*add_name_expression)(nvrtc_program, const char *);
    nvrtc_result (*get_lowered_name)(nvrtc_program, const char *, const char **);
};

const char *const mg_nvrtc_base_options[] = {"-std=c++17", "-default-device", "-lineinfo",
                                             "-DNDEBUG"};
const int mg_nvrtc_n_base_options = 4;

static int bind_symbols(mg_nvrtc *n, char *missing, size_t size)
{
#define BIND(field, sym)                                        \
    do {                                                        \
        *(void **)&n->field = dlsym(n->lib, sym);               \
        if (!n->field) {                                        \
            snprintf(missing, size, "%s", sym);                 \
            return 0;                                           \
        }                                                       \
    } while (0)
    BIND(get_error_string, "nvrtcGetErrorString");
    BIND(version, "nvrtcVersion");
    BIND(get_num_supported_archs, "nvrtcGetNumSupportedArchs");
    BIND(get_supported_archs, "nvrtcGetSupportedArchs");
    BIND(create_program, "nvrtcCreateProgram");
    BIND(destroy_program, "nvrtcDestroyProgram");
    BIND(compile_program, "nvrtcCompileProgram");
    BIND(get_program_log_size, "nvrtcGetProgramLogSize");
    BIND(get_program_log, "nvrtcGetProgramLog");
    BIND(get_cubin_size, "nvrtcGetCUBINSize");
    BIND(get_cubin, "nvrtcGetCUBIN");
    BIND(add_name_expression, "nvrtcAddNameExpression");
    BIND(get_lowered_name, "nvrtcGetLoweredName");
#undef BIND
    return 1;
}

mg_status mg_nvrtc_open(mg_nvrtc **out, mg_diag *diag)
{
    *out = NULL;
    char candidates[8][512];
    int nc = 0;
    const char *explicit_path = getenv("MOBAGEN_NVRTC");
    const char *cuda_home = getenv("CUDA_HOME");
    if (explicit_path && *explicit_path) snprintf(candidates[nc++], 512, "%s", explicit_path);
    if (cuda_home && *cuda_home) snprintf(candidates[nc++], 512, "%s/lib64/libnvrtc.so", cuda_home);
    if (MG_DEFAULT_CUDA_HOME[0])
        snprintf(candidates[nc++], 512, "%s/lib64/libnvrtc.so", MG_DEFAULT_CUDA_HOME);
    snprintf(candidates[nc++], 512, "libnvrtc.so.13");
    snprintf(candidates[nc++], 512, "libnvrtc.so.12");
    snprintf(candidates[nc++], 512, "libnvrtc.so");

    mg_buf tried = {0};
    void *lib = NULL;
    int which = -1;
    /* RTLD_NODELETE: NVRTC (and the C++ runtime it pulls in) keep process-lifetime state that
     * they never free; unloading them on mg_nvrtc_close would orphan it, and reloading is
     * cheaper when the library stays mapped. */
    for (int i = 0; i < nc && !lib; i++) {
        lib = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (lib)
            which = i;
        else
            mg_buf_printf(&tried, "\n  %s: %s", candidates[i], dlerror());
        if (explicit_path && *explicit_path && !lib) break;  /* an explicit choice is final */
    }
    if (!lib) {
        mg_status st = mg_fail(diag, MG_E_NO_NVRTC,
                               "cannot load NVRTC (the CUDA runtime compiler); set CUDA_HOME to a "
                               "CUDA toolkit or MOBAGEN_NVRTC to libnvrtc.so. Tried:%s",
                               tried.data ? tried.data : "");
        mg_buf_free(&tried);
        return st;
    }
    mg_buf_free(&tried);
    mg_nvrtc *n = calloc(1, sizeof *n);
    if (!n) {
        dlclose(lib);
        return mg_fail(diag, MG_E_NOMEM, "out of memory");
    }
    n->lib = lib;
    memcpy(n->path, candidates[which], sizeof n->path);
    char missing[128];
    if (!bind_symbols(n, missing, sizeof missing)) {
        mg_status st = mg_fail(diag, MG_E_NO_NVRTC, "%s is not a usable NVRTC: it lacks %s",
                               n->path, missing);
        mg_nvrtc_close(n);
        return st;
    }
    n->version(&n->major, &n->minor);
    if (n->get_num_supported_archs(&n->n_archs) != 0 || n->n_archs > 64) n->n_archs = 0;
    if (n->n_archs) n->get_supported_archs(n->archs);
    *out = n;
    return MG_OK;
}

void mg_nvrtc_close(mg_nvrtc *n)
{
    if (!n) return;
    if (n->lib) dlclose(n->lib);
    free(n);
}

void mg_nvrtc_version(const mg_nvrtc *n, int *major, int *minor)
{
    *major = n->major;
    *minor = n->minor;
}

const char *mg_nvrtc_path(const mg_nvrtc *n) { return n->path; }

void mg_nvrtc_supported_archs(const mg_nvrtc *n, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < n->n_archs && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%ssm_%d", i ? "," : "", n->archs[i]);
}

int mg_nvrtc_supports(const mg_nvrtc *n, const char *arch)
{
    int sm = 0;
    if (sscanf(arch, "sm_%d", &sm) != 1) return 0;
    for (int i = 0; i < n->n_archs; i++)
        if (n->archs[i] == sm) return 1;
    return 0;
}

static char *program_log(const mg_nvrtc *n, nvrtc_program prog)
{
    size_t size = 0;
    if (n->get_program_log_size(prog, &size) != 0 || size == 0) return strdup("");
    char *log = malloc(size + 1);
    if (!log) return NULL;
    if (n->get_program_log(prog, log) != 0) log[0] = 0;
    log[size] = 0;
    return log;
}

mg_status mg_nvrtc_compile(const mg_nvrtc *n, const char *source, const char *source_name,
                           const char *arch, const char *const *options, int n_options,
                           const char *const *name_exprs, int n_names, mg_compiled *out,
                           mg_diag *diag)
{
    memset(out, 0, sizeof *out);
    if (strncmp(arch, "sm_", 3) != 0)
        return mg_fail(diag, MG_E_ARG, "arch '%s' is not a real sm_XX target", arch);
    const char *opts[64];
    char arch_opt[64];
    int no = 0;
    snprintf(arch_opt, sizeof arch_opt, "--gpu-architecture=%s", arch);
    opts[no++] = arch_opt;
    for (int i = 0; i < mg_nvrtc_n_base_options; i++) opts[no++] = mg_nvrtc_base_options[i];
    for (int i = 0; i < n_options && no < 64; i++) opts[no++] = options[i];

    nvrtc_program prog = NULL;
    nvrtc_result r = n->create_program(&prog, source, source_name, 0, NULL, NULL);
    if (r != 0)
        return mg_fail(diag, MG_E_COMPILE, "%s: nvrtcCreateProgram failed: %s", source_name,
                       n->get_error_string(r));
    mg_status st = MG_OK;
    for (int i = 0; i < n_names && st == MG_OK; i++)
        if ((r = n->add_name_expression(prog, name_exprs[i])) != 0)
            st = mg_fail(diag, MG_E_COMPILE, "%s: cannot add name expression '%s': %s",
                         source_name, name_exprs[i], n->get_error_string(r));
    if (st == MG_OK) {
        r = n->compile_program(prog, no, opts);
        out->log = program_log(n, prog);
        if (r != 0)
            st = mg_fail(diag, MG_E_COMPILE, "%s: NVRTC failed for %s (%s):\n%s", source_name,
                         arch, n->get_error_string(r), out->log ? out->log : "");
    }
    if (st == MG_OK) {
        size_t size = 0;
        if ((r = n->get_cubin_size(prog, &size)) != 0 || size == 0)
            st = mg_fail(diag, MG_E_COMPILE, "%s: NVRTC returned no CUBIN for %s (%s)",
                         source_name, arch, r ? n->get_error_string(r) : "size 0");
        else if (!(out->cubin = malloc(size)))
            st = mg_fail(diag, MG_E_NOMEM, "out of memory");
        else if ((r = n->get_cubin(prog, out->cubin)) != 0)
            st = mg_fail(diag, MG_E_COMPILE, "%s: nvrtcGetCUBIN failed: %s", source_name,
                         n->get_error_string(r));
        else
            out->cubin_size = size;
    }
    if (st == MG_OK && n_names > 0) {
        out->lowered = calloc((size_t)n_names, sizeof *out->lowered);
        if (!out->lowered) st = mg_fail(diag, MG_E_NOMEM, "out of memory");
        for (int i = 0; i < n_names && st == MG_OK; i++) {
            const char *lowered = NULL;
            if ((r = n->get_lowered_name(prog, name_exprs[i], &lowered)) != 0 || !lowered)
                st = mg_fail(diag, MG_E_COMPILE, "%s: no lowered name for '%s'", source_name,
                             name_exprs[i]);
            else if (!(out->lowered[i] = strdup(lowered)))
                st = mg_fail(diag, MG_E_NOMEM, "out of memory");
            out->n_names = i + 1;
        }
    }
    n->destroy_program(&prog);
    if (st != MG_OK) {
        char *log = out->log;
        out->log = NULL;
        mg_compiled_free(out);
        out->log = log;
    }
    return st;
}

void mg_compiled_free(mg_compiled *c)
{
    free(c->cubin);
    free(c->log);
    for (int i = 0; i < c->n_names; i++) free(c->lowered[i]);
    free(c->lowered);
    memset(c, 0, sizeof *c);
}
