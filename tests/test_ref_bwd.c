/* Checks the backward reference (tests/ref/moba_ref_bwd.c) against central finite differences
 * of the forward reference with the selection held fixed, on every input element of small
 * random problems, plus hand-computed cases and checks that a dropped term gets caught.
 * The loss is L = sum(dout * o) + sum(dlse * lse) over the rows with a finite lse.
 * Random inputs come from splitmix64; MOBAGEN_TEST_SEED changes the base seed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref/moba_ref.h"
#include "ref/moba_ref_bwd.h"
#include "util/rng.h"

#define MAX_BATCH 8

/* Central differences in double: truncation ~ FD_STEP^2 * L''' and rounding ~ eps * |L| /
 * FD_STEP, both near 1e-10 here; the tolerance leaves a wide margin above that while a
 * dropped term (of order 1e-2 and more on these inputs) is far outside it. */
#define FD_STEP 1e-5
#define RTOL 1e-6
#define ATOL 1e-8

/* ---- random numbers ------------------------------------------------------------------------ */

static uint64_t base_seed = 0x6477626d;

static rng rng_new(uint64_t salt) { return rng_seeded(base_seed, salt); }

/* Uniform in [-1, 1), never exactly zero in practice: zero inputs would hide dropped terms. */
static void fill_random(rng *r, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rng_signed(r);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

/* ---- a random problem ---------------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    int batch;
    int len_q[MAX_BATCH], len_k[MAX_BATCH];
    int hq, hkv, d, block_size, top_k, causal, conv_width;
} shape;

typedef struct problem {
    moba_ref_cfg cfg;
    int cu_q[MAX_BATCH + 1], cu_k[MAX_BATCH + 1];
    size_t n_q, n_kv, n_w, n_rows, n_sel;
    double *q, *k, *v, *conv_w;  /* inputs */
    double *dout, *dlse;         /* upstream gradients; dlse NULL when the loss has no lse term */
    int *sel;
    double *o, *lse;             /* the forward's outputs for sel */
} problem;

/* The four gradients, in the order of the inputs. */
typedef struct grads {
    double *dq, *dk, *dv, *dw;
} grads;

enum selection_kind { ROUTED, RANDOM_SELECTION };

/* Random valid-or-ignored selection entries: blocks in any order, repeats, -1 and blocks the
 * sequence lacks; the forward takes the union of the valid ones and so must the backward. */
static void random_selection(rng *r, problem *p)
{
    const moba_ref_cfg *cfg = &p->cfg;
    for (int b = 0; b < cfg->batch; b++) {
        int n = (p->cu_k[b + 1] - p->cu_k[b] + cfg->block_size - 1) / cfg->block_size;
        for (int row = p->cu_q[b]; row < p->cu_q[b + 1]; row++)
            for (int h = 0; h < cfg->hq; h++) {
                int *out = p->sel + ((size_t)row * cfg->hq + h) * cfg->top_k;
                for (int i = 0; i < cfg->top_k; i++)
                    out[i] = (int)(rng_next(r) % (uint64_t)(n + 2)) - 1;
            }
    }
}

static void problem_init(problem *p, const shape *s, uint64_t salt, int with_dlse,
                         enum selection_kind selection)
{
    memset(p, 0, sizeof *p);
    for (int b = 0; b < s->batch; b++) {
        p->cu_q[b + 1] = p->cu_q[b] + s->len_q[b];
        p->cu_k[b + 1] = p->cu_k[b] + s->len_k[b];
    }
    p->cfg = (moba_ref_cfg){
        .batch = s->batch, .cu_seqlens_q = p->cu_q, .cu_seqlens_k = p->cu_k,
        .hq = s->hq, .hkv = s->hkv, .d = s->d, .block_size = s->block_size, .top_k = s->top_k,
        .causal = s->causal, .conv_width = s->conv_width, .scale = 1.0 / sqrt((double)s->d),
    };
    assert_int_equal(moba_ref_check_cfg(&p->cfg), 0);
    p->n_rows = (size_t)p->cu_q[s->batch] * s->hq;
    p->n_q = p->n_rows * s->d;
    p->n_kv = (size_t)p->cu_k[s->batch] * s->hkv * s->d;
    p->n_w = (size_t)s->hkv * s->conv_width * s->d;
    p->n_sel = p->n_rows * s->top_k;

    rng r = rng_new(salt);
    p->q = xcalloc(p->n_q, sizeof(double));
    p->k = xcalloc(p->n_kv, sizeof(double));
    p->v = xcalloc(p->n_kv, sizeof(double));
    p->conv_w = xcalloc(p->n_w, sizeof(double));
    p->dout = xcalloc(p->n_q, sizeof(double));
    fill_random(&r, p->q, p->n_q);
    fill_random(&r, p->k, p->n_kv);
    fill_random(&r, p->v, p->n_kv);
    fill_random(&r, p->conv_w, p->n_w);
    fill_random(&r, p->dout, p->n_q);
    if (with_dlse) {
        p->dlse = xcalloc(p->n_rows, sizeof(double));
        fill_random(&r, p->dlse, p->n_rows);
    }
    p->sel = xcalloc(p->n_sel, sizeof(int));
    p->o = xcalloc(p->n_q, sizeof(double));
    p->lse = xcalloc(p->n_rows, sizeof(double));
    if (selection == ROUTED)
        assert_int_equal(moba_ref_forward(&p->cfg, p->q, p->k, p->v, p->conv_w, p->o, p->lse, p->sel), 0);
    else
        random_selection(&r, p);
    assert_int_equal(moba_ref_forward_with_sel(&p->cfg, p->q, p->k, p->v, p->conv_w, p->sel, p->o,
                                               p->lse), 0);
}

static void problem_free(problem *p)
{
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->conv_w);
    free(p->dout);
    free(p->dlse);
    free(p->sel);
    free(p->o);
    free(p->lse);
}

static grads grads_new(const problem *p)
{
    grads g = { xcalloc(p->n_q, sizeof(double)), xcalloc(p->n_kv, sizeof(double)),
                xcalloc(p->n_kv, sizeof(double)), xcalloc(p->n_w, sizeof(double)) };
    return g;
}

static void grads_free(grads *g)
{
    free(g->dq);
    free(g->dk);
    free(g->dv);
    free(g->dw);
}

static grads analytic_grads(const problem *p)
{
    grads g = grads_new(p);
    assert_int_equal(moba_ref_backward(&p->cfg, p->q, p->k, p->v, p->conv_w, p->sel, p->o, p->lse,
                                       p->dout, p->dlse, g.dq, g.dk, g.dv, g.dw), 0);
    return g;
}

/* ---- finite differences -------------------------------------------------------------------- */

/* The loss at the current inputs; o and lse go to the caller's scratch. Rows with lse = -inf
 * stay -inf under any perturbation (the selection is fixed), so leaving them out is exact. */
static double loss(const problem *p, double *o, double *lse)
{
    assert_int_equal(moba_ref_forward_with_sel(&p->cfg, p->q, p->k, p->v, p->conv_w, p->sel, o, lse), 0);
    double sum = 0.0;
    for (size_t i = 0; i < p->n_q; i++)
        sum += p->dout[i] * o[i];
    if (p->dlse)
        for (size_t i = 0; i < p->n_rows; i++)
            if (lse[i] != -INFINITY)
                sum += p->dlse[i] * lse[i];
    return sum;
}

/* dL/dx[i] for every element of x (one of p's inputs), into out. */
static void fd_gradient(const problem *p, double *x, size_t n, double *out)
{
    double *o = xcalloc(p->n_q, sizeof(double)), *lse = xcalloc(p->n_rows, sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + FD_STEP;
        double up = loss(p, o, lse);
        x[i] = saved - FD_STEP;
        double down = loss(p, o, lse);
        x[i] = saved;
        out[i] = (up - down) / (2 * FD_STEP);
    }
    free(o);
    free(lse);
}

static grads fd_grads(problem *p)
{
    grads g = grads_new(p);
    fd_gradient(p, p->q, p->n_q, g.dq);
    fd_gradient(p, p->k, p->n_kv, g.dk);
    fd_gradient(p, p->v, p->n_kv, g.dv);
    fd_gradient(p, p->conv_w, p->n_w, g.dw);
    return g;
}

typedef struct mismatch {
    double ratio;        /* worst |got - want| / (RTOL |want| + ATOL); <= 1 passes */
    const char *array;
    size_t index;
    double got, want;
} mismatch;

static void compare_array(const char *name, const double *got, const double *want, size_t n,
                          mismatch *worst)
{
    for (size_t i = 0; i < n; i++) {
        double ratio = fabs(got[i] - want[i]) / (RTOL * fabs(want[i]) + ATOL);
        if (!(ratio <= worst->ratio))  /* a NaN anywhere becomes the worst */
            *worst = (mismatch){ isnan(ratio) ? INFINITY : ratio, name, i, got[i], want[i] };
    }
}

static mismatch compare_grads(const problem *p, const grads *got, const grads *want)
{
    mismatch worst = { 0.0, "none", 0, 0.0, 0.0 };
    compare_array("dq", got->dq, want->dq, p->n_q, &worst);
    compare_array("dk", got->dk, want->dk, p->n_kv, &worst);
    compare_array("dv", got->dv, want->dv, p->n_kv, &worst);
    compare_array("dw", got->dw, want->dw, p->n_w, &worst);
    return worst;
}

static double max_abs(const double *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* A comparison against an all-zero gradient would prove nothing. */
static void expect_substantial(const problem *p, const grads *g)
{
    assert_true(max_abs(g->dq, p->n_q) > 1e-2);
    assert_true(max_abs(g->dk, p->n_kv) > 1e-2);
    assert_true(max_abs(g->dv, p->n_kv) > 1e-2);
    if (p->n_w)
        assert_true(max_abs(g->dw, p->n_w) > 1e-2);
}

static void expect_match(const char *label, const problem *p, const grads *got, const grads *fd)
{
    mismatch m = compare_grads(p, got, fd);
    print_message("%-40s worst error %.3g of tolerance\n", label, m.ratio);
    if (!(m.ratio <= 1.0))
        fail_msg("%s: %s[%zu] analytic %.17g, finite differences %.17g (%.3g x tolerance)", label,
                 m.array, m.index, m.got, m.want, m.ratio);
}

/* ---- shapes -------------------------------------------------------------------------------- */

/* Between them: causal and not, B = 2..8 with partial last blocks, top_k 1..4 (and above the
 * block count), GQA groups 1, 2, 4, W = 0, 3, 5, L_q < L_k and L_q > L_k (causal rows with
 * t < 0), empty sequences, queries without keys and keys without queries. */
static const shape shapes[] = {
    { "causal gqa2 B3 top2 kconv3 varlen", 6, { 7, 0, 3, 9, 5, 4 }, { 7, 0, 5, 4, 11, 0 },
      4, 2, 4, 3, 2, 1, 3 },
    { "noncausal gqa4 B4 top2 kconv5", 3, { 6, 0, 4 }, { 9, 6, 0 }, 4, 1, 3, 4, 2, 0, 5 },
    { "causal mha B2 top1 kconv0", 2, { 10, 6 }, { 10, 13 }, 2, 2, 4, 2, 1, 1, 0 },
    { "causal gqa2 B8 top4 kconv5 Lq>Lk", 2, { 12, 20 }, { 20, 9 }, 2, 1, 4, 8, 4, 1, 5 },
    { "noncausal mha B5 top3 kconv3 Lq<Lk", 3, { 5, 8, 0 }, { 23, 12, 4 }, 2, 2, 3, 5, 3, 0, 3 },
    { "causal gqa4 B7 top3 kconv0 varlen", 4, { 0, 17, 8, 11 }, { 3, 17, 13, 6 }, 4, 1, 2, 7, 3, 1, 0 },
    { "noncausal gqa2 B6 top1 kconv0", 2, { 9, 4 }, { 14, 6 }, 4, 2, 3, 6, 1, 0, 0 },
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static void check_against_fd(const shape *s, uint64_t salt, int with_dlse,
                             enum selection_kind selection)
{
    problem p;
    problem_init(&p, s, salt, with_dlse, selection);
    grads fd = fd_grads(&p), got = analytic_grads(&p);
    expect_substantial(&p, &fd);
    expect_match(s->name, &p, &got, &fd);
    grads_free(&fd);
    grads_free(&got);
    problem_free(&p);
}

/* ---- tests against finite differences ------------------------------------------------------ */

static void test_gradients_match_finite_differences(void **state)
{
    (void)state;
    for (size_t s = 0; s < N_SHAPES; s++)
        check_against_fd(&shapes[s], 100 + s, 1, ROUTED);
}

static void test_gradients_without_dlse_match_finite_differences(void **state)
{
    (void)state;
    check_against_fd(&shapes[0], 200, 0, ROUTED);
    check_against_fd(&shapes[1], 201, 0, ROUTED);
}

/* Selections routing never makes (causal rows whose blocks all lie after t, repeats, -1 in the
 * middle, blocks past the end) must be differentiated as the forward reads them. */
static void test_gradients_on_random_selections_match_finite_differences(void **state)
{
    (void)state;
    check_against_fd(&shapes[0], 300, 1, RANDOM_SELECTION);
    check_against_fd(&shapes[3], 301, 1, RANDOM_SELECTION);
    check_against_fd(&shapes[4], 302, 1, RANDOM_SELECTION);
}

/* Each term of docs/backward.md removed in turn, and a single wrong element in each gradient,
 * must fail the same comparison the tests above pass. */
static void test_dropped_terms_are_caught(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[0], 400, 1, ROUTED);
    grads fd = fd_grads(&p), g = analytic_grads(&p);
    const moba_ref_cfg *cfg = &p.cfg;
    assert_true(compare_grads(&p, &g, &fd).ratio <= 1.0);

    /* D_t dropped: the backward fed o = 0. */
    double *zeros = xcalloc(p.n_q, sizeof(double));
    grads bad = grads_new(&p);
    assert_int_equal(moba_ref_backward(cfg, p.q, p.k, p.v, p.conv_w, p.sel, zeros, p.lse, p.dout,
                                       p.dlse, bad.dq, bad.dk, bad.dv, bad.dw), 0);
    assert_true(compare_grads(&p, &bad, &fd).ratio > 1e3);

    /* The dlse term dropped. */
    assert_int_equal(moba_ref_backward(cfg, p.q, p.k, p.v, p.conv_w, p.sel, p.o, p.lse, p.dout,
                                       NULL, bad.dq, bad.dk, bad.dv, bad.dw), 0);
    assert_true(compare_grads(&p, &bad, &fd).ratio > 1e3);

    /* The conv chain dropped (dk = dk'), then the residual dropped (dk = dk - dk'). */
    double *kprime = xcalloc(p.n_kv, sizeof(double)), *dkprime = xcalloc(p.n_kv, sizeof(double));
    moba_ref_kconv(cfg, p.k, p.conv_w, kprime);
    moba_ref_attention_backward(cfg, p.q, kprime, p.v, p.sel, p.o, p.lse, p.dout, p.dlse, bad.dq,
                                dkprime, bad.dv);
    memcpy(bad.dk, dkprime, p.n_kv * sizeof(double));
    memcpy(bad.dw, g.dw, p.n_w * sizeof(double));
    mismatch m = compare_grads(&p, &bad, &fd);
    assert_string_equal(m.array, "dk");
    assert_true(m.ratio > 1e3);
    for (size_t i = 0; i < p.n_kv; i++)
        bad.dk[i] = g.dk[i] - dkprime[i];
    assert_true(compare_grads(&p, &bad, &fd).ratio > 1e3);

    /* One element off by a few tolerances, in each gradient. */
    double *arrays[4] = { g.dq, g.dk, g.dv, g.dw };
    const double *want[4] = { fd.dq, fd.dk, fd.dv, fd.dw };
    size_t sizes[4] = { p.n_q, p.n_kv, p.n_kv, p.n_w };
    for (int a = 0; a < 4; a++) {
        size_t i = sizes[a] / 2;
        double saved = arrays[a][i];
        arrays[a][i] = want[a][i] + 5 * (RTOL * fabs(want[a][i]) + ATOL);
        assert_true(compare_grads(&p, &g, &fd).ratio > 4.0);
        arrays[a][i] = saved;
    }
    assert_true(compare_grads(&p, &g, &fd).ratio <= 1.0);

    free(zeros);
    free(kprime);
    free(dkprime);
    grads_free(&bad);
    grads_free(&fd);
    grads_free(&g);
    problem_free(&p);
}

/* ---- exact properties ---------------------------------------------------------------------- */

/* Rows with no visible key (L_q > L_k causal, or no keys at all) get dq = 0 exactly, keys that
 * no query sees get dk = dv = 0, and nothing is NaN. */
static void test_rows_without_visible_keys_get_zero_gradients(void **state)
{
    (void)state;
    const shape s = { "empty rows", 3, { 6, 4, 0 }, { 2, 0, 5 }, 2, 1, 3, 2, 2, 1, 3 };
    problem p;
    problem_init(&p, &s, 500, 1, ROUTED);
    grads g = analytic_grads(&p);
    int empty_rows = 0;
    for (size_t at = 0; at < p.n_rows; at++) {
        if (p.lse[at] != -INFINITY)
            continue;
        empty_rows++;
        for (int c = 0; c < s.d; c++)
            assert_true(g.dq[at * s.d + c] == 0.0);
    }
    assert_int_equal(empty_rows, 2 * (4 + 4));  /* rows t = -4..-1 of seq 0, all of seq 1 */
    /* Sequence 2's keys have no query. */
    for (size_t i = (size_t)p.cu_k[2] * s.hkv * s.d; i < p.n_kv; i++) {
        assert_true(g.dk[i] == 0.0);
        assert_true(g.dv[i] == 0.0);
    }
    for (size_t i = 0; i < p.n_q; i++)
        assert_false(isnan(g.dq[i]));
    for (size_t i = 0; i < p.n_kv; i++)
        assert_false(isnan(g.dk[i]) || isnan(g.dv[i]));
    grads_free(&g);
    problem_free(&p);
}

/* One query, one key, width-1 conv: o = v, lse = scale q.k', so dv = dout, and only dlse moves
 * q and k': dq = scale dlse k', dk' = scale dlse q, dk = dk' (1 + w SiLU'(w k)),
 * dw = dk' SiLU'(w k) k. */
static void test_single_key_hand_computed(void **state)
{
    (void)state;
    int cu[2] = { 0, 1 };
    moba_ref_cfg cfg = { .batch = 1, .cu_seqlens_q = cu, .cu_seqlens_k = cu, .hq = 1, .hkv = 1,
                         .d = 2, .block_size = 4, .top_k = 1, .causal = 1, .conv_width = 1,
                         .scale = 0.5 };
    const double q[2] = { 0.3, -0.7 }, k[2] = { 0.9, 0.4 }, v[2] = { -0.2, 0.6 };
    const double w[2] = { 0.5, -1.5 }, dout[2] = { 0.8, -0.1 }, dlse[1] = { 0.25 };
    const int sel[1] = { 0 };
    double o[2], lse[1], dq[2], dk[2], dv[2], dw[2];
    assert_int_equal(moba_ref_forward_with_sel(&cfg, q, k, v, w, sel, o, lse), 0);
    assert_int_equal(moba_ref_backward(&cfg, q, k, v, w, sel, o, lse, dout, dlse, dq, dk, dv, dw), 0);
    for (int c = 0; c < 2; c++) {
        double x = w[c] * k[c], sig = 1.0 / (1.0 + exp(-x));
        double kprime = k[c] + x * sig, silu_grad = sig + x * sig * (1.0 - sig);
        double dkprime = 0.5 * 0.25 * q[c];
        assert_true(fabs(o[c] - v[c]) < 1e-14);
        assert_true(fabs(dv[c] - dout[c]) < 1e-14);
        assert_true(fabs(dq[c] - 0.5 * 0.25 * kprime) < 1e-14);
        assert_true(fabs(dk[c] - dkprime * (1.0 + w[c] * silu_grad)) < 1e-14);
        assert_true(fabs(dw[c] - dkprime * silu_grad * k[c]) < 1e-14);
    }
}

static void test_forward_with_sel_matches_forward(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[0], 600, 0, ROUTED);
    double *o = xcalloc(p.n_q, sizeof(double)), *lse = xcalloc(p.n_rows, sizeof(double));
    assert_int_equal(moba_ref_forward(&p.cfg, p.q, p.k, p.v, p.conv_w, o, lse, NULL), 0);
    assert_memory_equal(o, p.o, p.n_q * sizeof(double));
    assert_memory_equal(lse, p.lse, p.n_rows * sizeof(double));
    free(o);
    free(lse);
    problem_free(&p);
}

static void test_delta_is_rowsum_of_dout_times_o(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[3], 700, 0, ROUTED);
    double *delta = xcalloc(p.n_rows, sizeof(double));
    moba_ref_bwd_delta(&p.cfg, p.o, p.lse, p.dout, delta);
    int empty_rows = 0;
    for (size_t at = 0; at < p.n_rows; at++) {
        double want = 0.0;
        for (int c = 0; c < p.cfg.d; c++)
            want += p.dout[at * p.cfg.d + c] * p.o[at * p.cfg.d + c];
        empty_rows += p.lse[at] == -INFINITY;
        assert_true(fabs(delta[at] - want) <= 1e-15);
    }
    assert_true(empty_rows > 0);  /* their o is 0, so their delta must be exactly 0 */
    free(delta);
    problem_free(&p);
}

/* Without a conv, dk is dk' and dw is neither needed nor written. */
static void test_backward_without_conv_needs_no_weights(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[2], 800, 1, ROUTED);
    grads g = grads_new(&p);
    double *dkprime = xcalloc(p.n_kv, sizeof(double)), *dq = xcalloc(p.n_q, sizeof(double));
    double *dv = xcalloc(p.n_kv, sizeof(double));
    assert_int_equal(moba_ref_backward(&p.cfg, p.q, p.k, p.v, NULL, p.sel, p.o, p.lse, p.dout,
                                       p.dlse, g.dq, g.dk, g.dv, NULL), 0);
    moba_ref_attention_backward(&p.cfg, p.q, p.k, p.v, p.sel, p.o, p.lse, p.dout, p.dlse, dq,
                                dkprime, dv);
    assert_memory_equal(g.dk, dkprime, p.n_kv * sizeof(double));
    assert_memory_equal(g.dq, dq, p.n_q * sizeof(double));
    assert_memory_equal(g.dv, dv, p.n_kv * sizeof(double));
    free(dkprime);
    free(dq);
    free(dv);
    grads_free(&g);
    problem_free(&p);
}

static void test_backward_rejects_bad_input(void **state)
{
    (void)state;
    problem p;
    problem_init(&p, &shapes[0], 900, 1, ROUTED);
    grads g = grads_new(&p);
    moba_ref_cfg cfg = p.cfg;
#define BACKWARD(conv_w, o) \
    moba_ref_backward(&cfg, p.q, p.k, p.v, conv_w, p.sel, o, p.lse, p.dout, p.dlse, g.dq, g.dk, \
                      g.dv, g.dw)
    assert_int_equal(BACKWARD(p.conv_w, p.o), 0);
    assert_int_equal(BACKWARD(NULL, p.o), -1);       /* conv_width 3 without weights */
    assert_int_equal(BACKWARD(p.conv_w, NULL), -1);  /* no forward output */
    cfg.hkv = 3;                                     /* 4 % 3 != 0 */
    assert_int_equal(BACKWARD(p.conv_w, p.o), -1);
    cfg = p.cfg;
    cfg.top_k = 0;
    assert_int_equal(BACKWARD(p.conv_w, p.o), -1);
#undef BACKWARD
    cfg = p.cfg;
    assert_int_equal(moba_ref_forward_with_sel(&cfg, p.q, p.k, p.v, p.conv_w, NULL, p.o, p.lse), -1);
    assert_int_equal(moba_ref_forward_with_sel(&cfg, p.q, p.k, p.v, NULL, p.sel, p.o, p.lse), -1);
    grads_free(&g);
    problem_free(&p);
}

int main(void)
{
    const char *seed = getenv("MOBAGEN_TEST_SEED");
    if (seed && *seed)
        base_seed = strtoull(seed, NULL, 0);
    printf("test_ref_bwd: seed 0x%llx (set MOBAGEN_TEST_SEED to change)\n",
           (unsigned long long)base_seed);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients_match_finite_differences),
        cmocka_unit_test(test_gradients_without_dlse_match_finite_differences),
        cmocka_unit_test(test_gradients_on_random_selections_match_finite_differences),
        cmocka_unit_test(test_dropped_terms_are_caught),
        cmocka_unit_test(test_rows_without_visible_keys_get_zero_gradients),
        cmocka_unit_test(test_single_key_hand_computed),
        cmocka_unit_test(test_forward_with_sel_matches_forward),
        cmocka_unit_test(test_delta_is_rowsum_of_dout_times_o),
        cmocka_unit_test(test_backward_without_conv_needs_no_weights),
        cmocka_unit_test(test_backward_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
