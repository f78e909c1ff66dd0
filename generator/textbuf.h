/* A growable byte buffer that remembers running out of memory instead of failing each call,
 * whole-file reading and directory creation. */
#ifndef MOBAGEN_TEXTBUF_H
#define MOBAGEN_TEXTBUF_H

#include <stddef.h>

typedef struct mg_buf {
    char *data;
    size_t len, cap;
    int oom;
} mg_buf;

void mg_buf_put(mg_buf *b, const void *p, size_t n);
void mg_buf_puts(mg_buf *b, const char *s);
void mg_buf_putc(mg_buf *b, char c);
void mg_buf_printf(mg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the NUL-terminated data to the caller (who frees it) and resets the buffer. */
char *mg_buf_take(mg_buf *b);
void mg_buf_free(mg_buf *b);

/* Whole file, NUL-terminated, malloc'd; NULL with errno set on failure. */
char *mg_read_file(const char *path, size_t *len);

/* mkdir -p: 0, or -1 with errno set (a path that exists but is no directory gives ENOTDIR). */
int mg_mkdir_p(const char *path);

#endif
