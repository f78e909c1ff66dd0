/* The decode parameter block for the C side: defined once, in templates/decode_params.cuh.tpl,
 * which the decode kernels include too. */
#ifndef MOBAGEN_DECODE_PARAMS_H
#define MOBAGEN_DECODE_PARAMS_H

#include <stddef.h>

#define MG_PARAMS_OFFSETOF offsetof
#include "../templates/decode_params.cuh.tpl"
#undef MG_PARAMS_OFFSETOF

#endif
