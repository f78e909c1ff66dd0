/* Helpers shared by the generator tests: temporary directories, files, the repo root and
 * running a program with captured output. */
#ifndef MOBAGEN_TESTUTIL_H
#define MOBAGEN_TESTUTIL_H

#include <stddef.h>

/* The source tree: $MOBAGEN_TEST_ROOT, else ".". */
const char *tu_repo_root(void);
/* A fresh directory under $TMPDIR (or /tmp) into buf (>= 256 bytes); aborts on failure. */
void tu_mkdtemp(char *buf, size_t size, const char *tag);
/* rm -rf path (only ever called on directories the tests created). */
void tu_rm_rf(const char *path);
/* Writes text to dir/name, creating dir; the full path goes to out (may be NULL). */
void tu_write_file(const char *dir, const char *name, const char *text, char *out, size_t size);
/* Whole file, malloc'd and NUL-terminated, or NULL. */
char *tu_read_file(const char *path, size_t *len);
/* Number of files (recursively) under dir whose name contains part ("" counts all). */
int tu_count_files(const char *dir, const char *part);

/* Runs argv[0] with argv; env_set holds "NAME=value" (or "NAME=" to unset NAME) changes for the
 * child, NULL-terminated. stdout and stderr are captured into malloc'd strings (free them).
 * Returns the exit status, or 128 + signal. */
int tu_run(const char *const *argv, const char *const *env_set, char **out, char **err);

double tu_now(void);

#endif
