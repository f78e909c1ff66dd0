#include "util/rng.h"

#include <math.h>

#define GOLDEN 0x9e3779b97f4a7c15ull

rng rng_seeded(uint64_t base, uint64_t salt)
{
    rng r = {base ^ (salt * GOLDEN)};
    return r;
}

uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += GOLDEN);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

double rng_signed(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-52 - 1.0; }

double rng_normal(rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
