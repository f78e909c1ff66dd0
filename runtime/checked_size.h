/* Size arithmetic that cannot wrap: every byte count and index bound computed from caller
 * arguments goes through these, so that hostile sizes are refused instead of wrapping into a
 * small allocation or a negative grid. The overflow flag is sticky, so a whole layout can be
 * computed and checked once at the end; `what` remembers the first region that overflowed. */
#ifndef MOBAGEN_CHECKED_SIZE_H
#define MOBAGEN_CHECKED_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* a * b and a + b into *out; 0 (and *out untouched) when the result does not fit. */
static inline int mg_size_mul(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return 0;
    *out = r;
    return 1;
}

static inline int mg_size_add(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) return 0;
    *out = r;
    return 1;
}

/* x rounded up to a multiple of align (a power of two or not). */
static inline int mg_size_align(size_t x, size_t align, size_t *out)
{
    size_t r;
    if (!mg_size_add(x, align - 1, &r)) return 0;
    *out = r / align * align;
    return 1;
}

/* ceil(a / b) for a >= 0, b > 0, without the a + b - 1 that overflows. */
static inline long long mg_ceil_div(long long a, long long b) { return a / b + (a % b != 0); }

/* The product of up to 5 factors (unused ones 1); 0 on overflow or a negative factor. */
static inline int mg_size_product(size_t *out, long long f0, long long f1, long long f2, long long f3,
                                  long long f4)
{
    const long long f[5] = {f0, f1, f2, f3, f4};
    size_t r = 1;
    for (int i = 0; i < 5; i++)
        if (f[i] < 0 || !mg_size_mul(r, (size_t)f[i], &r)) return 0;
    *out = r;
    return 1;
}

/* A device workspace laid out region by region. */
typedef struct mg_layout {
    size_t align;          /* every region starts at a multiple of it */
    size_t total;          /* bytes so far */
    const char *overflow;  /* the first region whose size or offset did not fit, or NULL */
} mg_layout;

/* Appends a region of bytes = f0 x f1 x f2 x f3 x f4 and returns its offset (0 once the layout
 * has overflowed; check l->overflow before using any offset). */
static inline size_t mg_layout_add(mg_layout *l, const char *what, long long f0, long long f1,
                                   long long f2, long long f3, long long f4)
{
    size_t bytes, padded, end, offset = l->total;
    if (l->overflow) return 0;
    if (!mg_size_product(&bytes, f0, f1, f2, f3, f4) || !mg_size_align(bytes, l->align, &padded) ||
        !mg_size_add(offset, padded, &end)) {
        l->overflow = what;
        return 0;
    }
    l->total = end;
    return offset;
}

#endif
