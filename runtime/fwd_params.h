/* The forward's parameter block for the C side: defined once, in templates/fwd_params.cuh.tpl,
 * which the kernels include too (through common.cuh.tpl). */
#ifndef MOBAGEN_FWD_PARAMS_H
#define MOBAGEN_FWD_PARAMS_H

#include <stddef.h>

#define MG_PARAMS_OFFSETOF offsetof
#include "../templates/fwd_params.cuh.tpl"
#undef MG_PARAMS_OFFSETOF

#endif
