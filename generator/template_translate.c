/* Template text -> two Lua chunks (manifest and body), one Lua line per template line. */
#include <stdio.h>
#include <string.h>

#include "template_internal.h"
#include "textbuf.h"

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
mg_status mg_template_translate(const char *path, const char *text, size_t len, char **manifest,
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
        if (ind + 1 < n && line[ind] == '%' && line[ind + 1] == '!') {
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
