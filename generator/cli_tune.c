/* mobagen tune SPEC [--seqlens L1,L2] [--batch B] [--hkv H]; mobagen bench SPEC. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_deploy.h"
#include "deploy.h"
#include "mobagen.h"

#define MAX_SEQLENS 16
#define MAX_RESULTS 256

typedef struct table {
    int n;
    mobagen_tune_result r[MAX_RESULTS];
    char ids[MAX_RESULTS][320];
    char notes[MAX_RESULTS][200];
    int tty;
} table;

static void on_result(const mobagen_tune_result *r, void *user)
{
    table *t = user;
    if (t->n == MAX_RESULTS) return;
    t->r[t->n] = *r;
    snprintf(t->ids[t->n], sizeof t->ids[0], "%s", r->variant_id);
    snprintf(t->notes[t->n], sizeof t->notes[0], "%s", r->note);
    t->n++;
}

static void on_progress(int done, int total, const char *id, void *user)
{
    table *t = user;
    if (!t->tty) return;
    if (done < total) fprintf(stderr, "\r\033[K[%d/%d] checking and timing %s", done + 1, total, id);
    else fprintf(stderr, "\r\033[K");
    fflush(stderr);
}

static int by_time(const void *pa, const void *pb)
{
    const mobagen_tune_result *a = pa, *b = pb;
    int c = strcmp(a->template_name, b->template_name);
    if (c) return c;
    if (a->ok != b->ok) return b->ok - a->ok;
    return (a->median_us > b->median_us) - (a->median_us < b->median_us);
}

static void print_table(table *t)
{
    for (int i = 0; i < t->n; i++) {   /* the strings live in the table, sorted along */
        t->r[i].variant_id = t->ids[i];
        t->r[i].note = t->notes[i];
    }
    /* Sort indices rather than the rows so that the strings stay with their rows. */
    int order[MAX_RESULTS];
    for (int i = 0; i < t->n; i++) order[i] = i;
    for (int i = 1; i < t->n; i++)
        for (int j = i; j > 0 && by_time(&t->r[order[j - 1]], &t->r[order[j]]) > 0; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    const char *tpl = "";
    int rank = 0;
    double best = 0;
    for (int k = 0; k < t->n; k++) {
        const mobagen_tune_result *r = &t->r[order[k]];
        if (strcmp(tpl, r->template_name)) {
            tpl = r->template_name;
            rank = 0;
            best = r->median_us;
            printf("  %-4s %-52s %10s %10s %8s\n", "rank", tpl, "median us", "min us", "vs best");
        }
        if (r->ok)
            printf("  %-4d %-52s %10.1f %10.1f %7.2fx\n", ++rank, r->variant_id, r->median_us, r->min_us,
                   best > 0 ? r->median_us / best : 1.0);
        else
            printf("  %-4s %-52s %s\n", "-", r->variant_id, r->note);
    }
}

static int parse_seqlens(const char *text, int *out)
{
    char buf[256];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", text ? text : "4096");
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v < 1 || v > (1 << 24) || n == MAX_SEQLENS) return -1;
        out[n++] = (int)v;
    }
    return n;
}

typedef struct session {
    mobagen_ctx *ctx;
    mobagen_op *op;
} session;

static int open_session(const deploy_args *a, session *s)
{
    memset(s, 0, sizeof *s);
    mobagen_ctx_options o = {.template_dir = a->templates};
    mg_status st = mobagen_ctx_create(a->device, &o, &s->ctx);
    if (st == MG_OK) st = mobagen_op_create(s->ctx, a->specs[0], &s->op);
    if (st != MG_OK) {
        int rc = cli_deploy_fail(a, st, mobagen_ctx_errmsg(s->ctx));
        mobagen_ctx_destroy(s->ctx);
        return rc;
    }
    return 0;
}

static void close_session(session *s)
{
    mobagen_op_destroy(s->op);
    mobagen_ctx_destroy(s->ctx);
}

int cli_tune(const deploy_args *a)
{
    int seqlens[MAX_SEQLENS];
    int n = parse_seqlens(a->seqlens, seqlens);
    if (n < 1) {
        fprintf(stderr, "mobagen: --seqlens takes up to %d lengths 1..16777216, e.g. 1024,4096\n", MAX_SEQLENS);
        return 2;
    }
    session s;
    int rc = open_session(a, &s);
    if (rc) return rc;
    const mg_spec *spec = mg_op_spec(s.op);
    printf("tuning spec %s on %s (%s), kernels from %s\n", spec->name, mobagen_ctx_device_name(s.ctx),
           mobagen_ctx_arch(s.ctx), mobagen_op_origin(s.op));
    for (int i = 0; i < n && rc == 0; i++) {
        table t = {.tty = isatty(2)};
        mobagen_tune_options o = {.batch = a->batch ? a->batch : 2, .hkv = a->hkv ? a->hkv : 4,
                                  .seqlen = seqlens[i], .warmup = a->warmup, .reps = a->reps,
                                  .save = !a->no_save, .db_path = a->db, .on_result = on_result,
                                  .on_progress = on_progress, .user = &t};
        printf("seqlen %d, batch %d, hkv %d, hq %d:\n", o.seqlen, o.batch, o.hkv,
               o.hkv * spec->gqa_group);
        mg_status st = mobagen_op_tune(s.op, &o);
        print_table(&t);
        if (st != MG_OK) rc = cli_deploy_fail(a, st, mobagen_op_errmsg(s.op));
    }
    if (rc == 0 && !a->no_save) {
        char path[1024];
        mg_diag d;
        if (a->db) snprintf(path, sizeof path, "%s", a->db);
        else if (mg_tunedb_default_path(path, sizeof path, &d) != MG_OK) snprintf(path, sizeof path, "?");
        printf("winners recorded in %s\n", path);
    }
    close_session(&s);
    return rc;
}

/* Locates bench/sdpa_once.py: $MOBAGEN_BENCH_DIR, next to the source tree of this binary
 * (build/mobagen -> bench/), or the installed share directory. */
static int find_script(char *buf, size_t size)
{
    const char *env = getenv("MOBAGEN_BENCH_DIR");
    char exe[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    const char *candidates[3] = {env, exe, MG_INSTALL_DATADIR};
    const char *fmt[3] = {"%s/sdpa_once.py", "%s/../bench/sdpa_once.py", "%s/bench/sdpa_once.py"};
    for (int i = 0; i < 3; i++) {
        if (!candidates[i] || !*candidates[i]) continue;
        snprintf(buf, size, fmt[i], candidates[i]);
        if (access(buf, R_OK) == 0) return 1;
    }
    return 0;
}

static void bench_peers(const mg_spec *spec, int batch, int hkv, int seqlen)
{
    char script[1200], cmd[1500], line[256];
    if (!find_script(script, sizeof script)) {
        printf("  PyTorch not available (bench/sdpa_once.py not found)\n");
        return;
    }
    snprintf(cmd, sizeof cmd, "python3 '%s' %d %d %d %d %d %s %d 2>&1", script, batch,
             hkv * spec->gqa_group, hkv, seqlen, spec->head_dim, mg_dtype_name(spec->dtype), spec->causal);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("  PyTorch not available (cannot run python3)\n");
        return;
    }
    int any = 0;
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        char *eq = strchr(line, '=');
        if (eq && !strncmp(line, "sdpa_", 5)) {
            *eq = 0;
            printf("  %-40s %10s us   (dense causal attention, same q/k/v sizes)\n", line, eq + 1);
            any = 1;
        } else if (strstr(line, "PyTorch not available")) {
            printf("  %s\n", line);
            any = 1;
        }
    }
    int rc = pclose(p);
    if (!any) printf("  PyTorch not available (python3 exited with status %d)\n", rc);
}

int cli_bench(const deploy_args *a)
{
    int seqlens[MAX_SEQLENS];
    int n = parse_seqlens(a->seqlens, seqlens);
    if (n < 1) {
        fprintf(stderr, "mobagen: --seqlens takes up to %d lengths 1..16777216\n", MAX_SEQLENS);
        return 2;
    }
    session s;
    int rc = open_session(a, &s);
    if (rc) return rc;
    const mg_spec *spec = mg_op_spec(s.op);
    int batch = a->batch ? a->batch : 2, hkv = a->hkv ? a->hkv : 4;
    printf("bench spec %s on %s (%s); batch %d, hkv %d, hq %d\n", spec->name,
           mobagen_ctx_device_name(s.ctx), mobagen_ctx_arch(s.ctx), batch, hkv, hkv * spec->gqa_group);
    for (int i = 0; i < n && rc == 0; i++) {
        mg_tune_shape shape = {.batch = batch, .hkv = hkv, .seqlen = seqlens[i]};
        double median = 0, min = 0;
        mg_diag d;
        mg_status st = mg_bench_fwd(s.op, &shape, a->warmup, a->reps, &median, &min, &d);
        if (st != MG_OK) {
            rc = cli_deploy_fail(a, st, d.msg);
            break;
        }
        mobagen_fwd_args args = {.batch = batch, .hkv = hkv, .hq = hkv * spec->gqa_group,
                                 .max_seqlen_q = seqlens[i], .max_seqlen_k = seqlens[i]};
        const char *source = "";
        printf("seqlen %d:\n  %-40s %10.1f us   (min %.1f), variants:\n", seqlens[i], "mobagen forward",
               median, min);
        static const char *const tpls[] = {"kconv_centroid", "route", "attn_fwd"};
        for (int t = 0; t < 3; t++) {
            int idx = mobagen_op_dispatch(s.op, &args, tpls[t], &source);
            printf("    %s (%s)\n", idx >= 0 ? mobagen_op_variant_id(s.op, tpls[t], idx) : "?", source);
        }
        bench_peers(spec, batch, hkv, seqlens[i]);
    }
    close_session(&s);
    return rc;
}
