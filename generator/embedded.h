/* The templates/ files, compiled into the library at build time (tools/embed_templates.sh), so
 * that a program linked against libmobagen needs no source tree. */
#ifndef MOBAGEN_EMBEDDED_H
#define MOBAGEN_EMBEDDED_H

#include <stddef.h>

/* Text of an embedded file by its name ("route.cu.tpl"), or NULL. */
const char *mg_embedded_template(const char *file_name, size_t *len);
/* The i-th embedded file name, or NULL past the end; in sorted order. */
const char *mg_embedded_template_name(int i);

#endif
