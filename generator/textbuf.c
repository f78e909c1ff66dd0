#include "textbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int reserve(mg_buf *b, size_t extra)
{
    if (b->oom) return 0;
    if (b->len + extra + 1 <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void mg_buf_put(mg_buf *b, const void *p, size_t n)
{
    if (!reserve(b, n)) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void mg_buf_puts(mg_buf *b, const char *s) { mg_buf_put(b, s, strlen(s)); }
void mg_buf_putc(mg_buf *b, char c) { mg_buf_put(b, &c, 1); }

void mg_buf_printf(mg_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *mg_buf_take(mg_buf *b)
{
    if (!b->data && !b->oom) reserve(b, 0);
    char *d = b->oom ? NULL : b->data;
    if (b->oom) free(b->data);
    if (d) d[b->len] = 0;
    memset(b, 0, sizeof *b);
    return d;
}

void mg_buf_free(mg_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

char *mg_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    mg_buf b = {0};
    char chunk[65536];
    size_t n;
    /* Stops at the first failed allocation: an endless source must not keep it reading. */
    while (!b.oom && (n = fread(chunk, 1, sizeof chunk, f)) > 0) mg_buf_put(&b, chunk, n);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err || b.oom) {
        mg_buf_free(&b);
        errno = err ? err : ENOMEM;
        return NULL;
    }
    if (len) *len = b.len;
    return mg_buf_take(&b);
}

int mg_mkdir_p(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(tmp, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}
