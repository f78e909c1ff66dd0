/* Log lines of a ctx: a level read once at ctx creation and a sink, both per ctx. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime_internal.h"

static const char *const level_names[] = {"default", "error", "warn", "info", "debug"};

mobagen_log_level mg_log_level_parse(const char *text)
{
    if (!text) return MOBAGEN_LOG_DEFAULT;
    for (int l = MOBAGEN_LOG_ERROR; l <= MOBAGEN_LOG_DEBUG; l++)
        if (!strcmp(text, level_names[l])) return (mobagen_log_level)l;
    return MOBAGEN_LOG_DEFAULT;
}

void mg_ctx_log(const mobagen_ctx *ctx, mobagen_log_level level, const char *fmt, ...)
{
    if (!ctx || level > ctx->log_level || level < MOBAGEN_LOG_ERROR) return;
    char line[MG_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (ctx->log)
        ctx->log(ctx->log_user, level, line);
    else
        /* One fprintf call: stdio locks the stream, so lines of concurrent ctxs do not mix. */
        fprintf(stderr, "mobagen: %s: %s\n", level_names[level], line);
}

void mg_ctx_on_build_result(void *user, const mg_variant *v, const mg_build_result *r, int done,
                            int total)
{
    const mobagen_ctx *ctx = user;
    int compiled = r->status == MG_OK && !r->hit;
    if (compiled)
        mg_ctx_log(ctx, MOBAGEN_LOG_INFO, "[%d/%d] compiled %s in %.1f s (cache miss)", done, total,
                   v->id, r->seconds);
    else if (r->status == MG_OK)
        mg_ctx_log(ctx, MOBAGEN_LOG_DEBUG, "[%d/%d] %s from the cache", done, total, v->id);
    if (ctx->progress) ctx->progress(ctx->progress_user, done, total, v->id, compiled);
}
