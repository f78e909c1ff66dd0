/* The deployment commands of the CLI: tune, bench (cli_tune.c), bundle, inspect
 * (cli_bundle.c). cli.c hands them argv. */
#ifndef MOBAGEN_CLI_DEPLOY_H
#define MOBAGEN_CLI_DEPLOY_H

#include "status.h"

#define DEPLOY_MAX_SPECS 64

typedef struct deploy_args {
    const char *command;
    const char *specs[DEPLOY_MAX_SPECS];
    int n_specs;
    const char *out, *archs, *seqlens, *tuning, *db, *templates;
    int batch, hkv, reps, warmup, device, no_save;
    int (*exit_code)(mg_status);
} deploy_args;

/* Runs argv[1] when it is one of these commands and returns its exit code; -1 otherwise. */
int mg_cli_deploy(int argc, char **argv, int (*exit_code)(mg_status));

int cli_tune(const deploy_args *a);
int cli_bench(const deploy_args *a);
int cli_bundle(const deploy_args *a);
int cli_inspect(const deploy_args *a);

/* "mobagen: error: MSG" on stderr and the exit code for st. */
int cli_deploy_fail(const deploy_args *a, mg_status st, const char *msg);

#endif
