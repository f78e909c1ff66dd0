/* The tuning database: which variant of each template won for a device and problem bucket.
 * A text file, one record per line (docs/tuning.md); loading never fails on bad content: a
 * bad line is skipped with a warning naming FILE:LINE. Saving merges under a lock. */
#ifndef MOBAGEN_TUNEDB_H
#define MOBAGEN_TUNEDB_H

#include <stddef.h>

#include "fingerprint.h"

#define MG_TUNEDB_MAX_BYTES (16u << 20)
#define MG_TUNEDB_MAX_LINE 4096
#define MG_TUNEDB_MAX_RECORDS 65536
#define MG_TUNE_MAX_STAGES 4
#define MG_POINT_MAX 256

typedef struct mg_tune_record {
    mg_fingerprint fp;
    mg_bucket bucket;
    char spec_name[MG_NAME_MAX];          /* for people reading the file; not part of the key */
    int n_stages;
    char tpl[MG_TUNE_MAX_STAGES][MG_NAME_MAX];
    char point[MG_TUNE_MAX_STAGES][MG_POINT_MAX];   /* mg_point_format of the winner */
    double us[MG_TUNE_MAX_STAGES];        /* its median time in microseconds; < 0 unknown */
} mg_tune_record;

typedef struct mg_tunedb {
    mg_tune_record *recs;
    int n, cap;
    int warnings;
    char first_warning[600];
} mg_tunedb;

/* $MOBAGEN_TUNING_DB, else $XDG_DATA_HOME/mobagen/tuning.db, else
 * ~/.local/share/mobagen/tuning.db. */
mg_status mg_tunedb_default_path(char *buf, size_t size, mg_diag *diag);

/* Adds the records of the file at path to db (a missing file adds none). Bad lines are skipped
 * and counted in db->warnings; with print_warnings each goes to stderr. Fails only on I/O
 * errors other than a missing file, or on a file of another format version. */
mg_status mg_tunedb_load(mg_tunedb *db, const char *path, int print_warnings, mg_diag *diag);
/* Same from text; name stands for the file in warnings. */
mg_status mg_tunedb_parse(mg_tunedb *db, const char *text, size_t len, const char *name,
                          int print_warnings, mg_diag *diag);
void mg_tunedb_free(mg_tunedb *db);

/* The record for this device and bucket, or NULL. */
const mg_tune_record *mg_tunedb_find(const mg_tunedb *db, const mg_fingerprint *fp,
                                     const mg_bucket *bucket);
/* Adds r, replacing a record with the same device and bucket. */
mg_status mg_tunedb_put(mg_tunedb *db, const mg_tune_record *r, mg_diag *diag);
/* The whole file's text, records sorted: the same records always give the same bytes. */
char *mg_tunedb_format(const mg_tunedb *db);
/* One record as its line (no newline). */
void mg_tune_record_format(const mg_tune_record *r, char *buf, size_t size);

/* Adds recs to the file at path, keeping what other writers put there meanwhile: takes an
 * exclusive lock on PATH.lock, re-reads the file, merges, writes a temporary file, fsyncs and
 * renames it over the old one. Creates the directory when missing. */
mg_status mg_tunedb_save(const char *path, const mg_tune_record *recs, int n, mg_diag *diag);

/* The winner's point for a template in a record, or NULL. */
const char *mg_tune_record_point(const mg_tune_record *r, const char *template_name);

#endif
