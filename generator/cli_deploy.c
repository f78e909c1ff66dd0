#include "cli_deploy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_USAGE 2

static int usage(const char *what, const char *arg)
{
    fprintf(stderr, "mobagen: %s%s\nrun 'mobagen --help' for usage\n", what, arg);
    return EXIT_USAGE;
}

static int parse_count(const char *opt, const char *value, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(value, &end, 10);
    if (*end || end == value || v < lo || v > hi) {
        fprintf(stderr, "mobagen: %s takes %d..%d, got '%s'\n", opt, lo, hi, value);
        return 0;
    }
    *out = (int)v;
    return 1;
}

int cli_deploy_fail(const deploy_args *a, mg_status st, const char *msg)
{
    fprintf(stderr, "mobagen: error: %s\n", msg);
    return a->exit_code(st);
}

int mg_cli_deploy(int argc, char **argv, int (*exit_code)(mg_status))
{
    static const char *const commands[] = {"tune", "bench", "bundle", "inspect"};
    deploy_args a;
    memset(&a, 0, sizeof a);
    a.exit_code = exit_code;
    for (size_t i = 0; argc > 1 && i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i])) a.command = commands[i];
    if (!a.command) return -1;
    for (int i = 2; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **str = !strcmp(s, "-o") || !strcmp(s, "--out") ? &a.out
                         : !strcmp(s, "--arch") ? &a.archs
                         : !strcmp(s, "--seqlens") || !strcmp(s, "--seqlen") ? &a.seqlens
                         : !strcmp(s, "--tuning") ? &a.tuning
                         : !strcmp(s, "--db") ? &a.db
                         : !strcmp(s, "--templates") ? &a.templates : NULL;
        int *num = !strcmp(s, "--batch") ? &a.batch : !strcmp(s, "--hkv") ? &a.hkv
                 : !strcmp(s, "--reps") ? &a.reps : !strcmp(s, "--warmup") ? &a.warmup
                 : !strcmp(s, "--device") ? &a.device : NULL;
        if (str || num) {
            if (!v) return usage(s, " needs a value");
            i++;
            if (str) *str = v;
            else if (!parse_count(s, v, !strcmp(s, "--device") || !strcmp(s, "--warmup") ? 0 : 1, 1000000, num))
                return EXIT_USAGE;
        } else if (!strcmp(s, "--no-save")) {
            a.no_save = 1;
        } else if (s[0] == '-' && s[1]) {
            return usage("unknown option ", s);
        } else if (a.n_specs == DEPLOY_MAX_SPECS) {
            return usage("too many files, at most 64: ", s);
        } else {
            a.specs[a.n_specs++] = s;
        }
    }
    if (a.n_specs == 0)
        return usage(!strcmp(a.command, "inspect") ? "'inspect' needs a bundle FILE" : "a SPEC file is needed by ", a.command);
    if (strcmp(a.command, "bundle") && a.n_specs > 1) return usage("one file only for ", a.command);
    if (!strcmp(a.command, "tune")) return cli_tune(&a);
    if (!strcmp(a.command, "bench")) return cli_bench(&a);
    if (!strcmp(a.command, "bundle")) {
        if (!a.out) return usage("bundle needs -o FILE", "");
        if (!a.archs) return usage("bundle needs --arch A,B,...", "");
        return cli_bundle(&a);
    }
    return cli_inspect(&a);
}
