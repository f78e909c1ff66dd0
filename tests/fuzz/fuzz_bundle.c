/* libFuzzer target: arbitrary bytes opened as a kernel bundle must give a bundle or an error,
 * never a crash, hang or leak. The tuning records a bundle carries go through the database
 * parser too, as the runtime does with them. Seeds: tests/fuzz/corpus/bundle/. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bundle.h"
#include "tunedb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_bundle *b = NULL;
    mg_diag d;
    if (mg_bundle_open_memory(data, size, "fuzz.mgb", &b, &d) != MG_OK) return 0;
    mg_tunedb db = {0};
    mg_tunedb_parse(&db, b->tuning, strlen(b->tuning), "fuzz.mgb", 0, &d);
    mg_tunedb_free(&db);
    for (int i = 0; i < b->n_specs; i++) {
        char archs[256];
        mg_bundle_archs(b, b->specs[i].identity, archs, sizeof archs);
    }
    mg_bundle_close(b);
    return 0;
}
