/* The backward's parameter block for the C side: defined once, in templates/bwd_params.cuh.tpl,
 * which the backward kernels include too. */
#ifndef MOBAGEN_BWD_PARAMS_H
#define MOBAGEN_BWD_PARAMS_H

#include <stddef.h>

#define MG_PARAMS_OFFSETOF offsetof
#include "../templates/bwd_params.cuh.tpl"
#undef MG_PARAMS_OFFSETOF

#endif
