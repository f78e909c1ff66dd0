/* splitmix64: the seeded, portable random source of every test and benchmark, so that a seed
 * printed by one run reproduces its inputs anywhere. */
#ifndef MOBAGEN_TEST_RNG_H
#define MOBAGEN_TEST_RNG_H

#include <stdint.h>

typedef struct rng { uint64_t s; } rng;

/* A stream for one test case: the run's base seed mixed with the case's salt. */
rng rng_seeded(uint64_t base, uint64_t salt);
uint64_t rng_next(rng *r);
double rng_uniform(rng *r);          /* [0, 1) */
double rng_signed(rng *r);           /* [-1, 1) */
double rng_normal(rng *r);

#endif
