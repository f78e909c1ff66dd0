/* MoBA backward reference. The formulas, with their derivation, are in docs/backward.md; each
 * function below names the ones it implements. Written for clarity, in double, like the
 * forward; it visits only the keys of the selected blocks, so it is O(k * B * d) per query row
 * and stays usable as the oracle of long GPU runs. */
#include "moba_ref_bwd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t q_elems(const moba_ref_cfg *cfg)
{
    return (size_t)cfg->cu_seqlens_q[cfg->batch] * cfg->hq * cfg->d;
}

static size_t kv_elems(const moba_ref_cfg *cfg)
{
    return (size_t)cfg->cu_seqlens_k[cfg->batch] * cfg->hkv * cfg->d;
}

/* d SiLU(x) / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x))). */
static double silu_grad(double x)
{
    double sig = 1.0 / (1.0 + exp(-x));
    return sig * (1.0 + x * (1.0 - sig));
}

/* Whether sel entry i names block j for the first time: repeats and blocks the sequence does
 * not have are skipped, matching the forward's "union of the selected blocks". */
static int first_valid_entry(const int *blocks, int i, int n_blocks)
{
    int j = blocks[i];
    if (j < 0 || j >= n_blocks)
        return 0;
    for (int e = 0; e < i; e++)
        if (blocks[e] == j)
            return 0;
    return 1;
}

int moba_ref_forward_with_sel(const moba_ref_cfg *cfg, const double *q, const double *k,
                              const double *v, const double *conv_w, const int *sel, double *o,
                              double *lse)
{
    if (moba_ref_check_cfg(cfg) != 0 || !q || !k || !v || !sel || !o || !lse ||
        (cfg->conv_width > 0 && !conv_w))
        return -1;
    double *kprime = malloc((kv_elems(cfg) + 1) * sizeof *kprime);
    if (!kprime)
        return -1;
    moba_ref_kconv(cfg, k, conv_w, kprime);
    moba_ref_attention(cfg, q, kprime, v, sel, o, lse);
    free(kprime);
    return 0;
}

void moba_ref_bwd_delta(const moba_ref_cfg *cfg, const double *o, const double *lse,
                        const double *dout, double *delta)
{
    size_t rows = (size_t)cfg->cu_seqlens_q[cfg->batch] * cfg->hq;
    for (size_t at = 0; at < rows; at++)
        delta[at] = lse[at] == -INFINITY ? 0.0
                                         : moba_ref_dot(dout + at * cfg->d, o + at * cfg->d, cfg->d);
}

/* One (query row, head): P_s = exp(scale q.k'_s - lse), dP_s = do.v_s,
 * dS_s = P_s (dP_s - D + dlse), then dq += scale dS_s k'_s, dk'_s += scale dS_s q,
 * dv_s += P_s do, over the visible keys s. */
static void attention_backward_row(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                                   const double *v, const int *blocks, int k_start, int len_k,
                                   int t, int row, int h, double lse, double delta, double dlse,
                                   const double *dout_row, double *dq_row, double *dkprime,
                                   double *dv)
{
    int d = cfg->d, B = cfg->block_size;
    int hk = h / (cfg->hq / cfg->hkv);
    int n_blocks = (len_k + B - 1) / B;
    const double *q_row = q + ((size_t)row * cfg->hq + h) * d;
    for (int i = 0; i < cfg->top_k; i++) {
        if (!first_valid_entry(blocks, i, n_blocks))
            continue;
        int first = blocks[i] * B, end = first + B < len_k ? first + B : len_k;
        for (int p = first; p < end; p++) {
            if (cfg->causal && p > t)
                break;
            size_t at = ((size_t)(k_start + p) * cfg->hkv + hk) * d;
            double prob = exp(cfg->scale * moba_ref_dot(q_row, kprime + at, d) - lse);
            double dscore = prob * (moba_ref_dot(dout_row, v + at, d) - delta + dlse);
            for (int c = 0; c < d; c++) {
                dq_row[c] += cfg->scale * dscore * kprime[at + c];
                dkprime[at + c] += cfg->scale * dscore * q_row[c];
                dv[at + c] += prob * dout_row[c];
            }
        }
    }
}

void moba_ref_attention_backward(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                                 const double *v, const int *sel, const double *o,
                                 const double *lse, const double *dout, const double *dlse,
                                 double *dq, double *dkprime, double *dv)
{
    memset(dq, 0, q_elems(cfg) * sizeof *dq);
    memset(dkprime, 0, kv_elems(cfg) * sizeof *dkprime);
    memset(dv, 0, kv_elems(cfg) * sizeof *dv);
    for (int b = 0; b < cfg->batch; b++) {
        int q_start = cfg->cu_seqlens_q[b], len_q = cfg->cu_seqlens_q[b + 1] - q_start;
        int k_start = cfg->cu_seqlens_k[b], len_k = cfg->cu_seqlens_k[b + 1] - k_start;
        for (int r = 0; r < len_q; r++) {
            int row = q_start + r;
            int t = r + len_k - len_q;  /* bottom-right alignment, as in the forward */
            for (int h = 0; h < cfg->hq; h++) {
                size_t at = (size_t)row * cfg->hq + h;
                /* No visible key: o = 0 and lse = -inf do not depend on any input. */
                if (lse[at] == -INFINITY)
                    continue;
                double delta = moba_ref_dot(dout + at * cfg->d, o + at * cfg->d, cfg->d);
                attention_backward_row(cfg, q, kprime, v, sel + at * cfg->top_k, k_start, len_k,
                                       t, row, h, lse[at], delta, dlse ? dlse[at] : 0.0,
                                       dout + at * cfg->d, dq + at * cfg->d, dkprime, dv);
            }
        }
    }
}

/* k'_t = k_t + SiLU(u_t), u_t = sum_l w_l * k_{t-l} within the sequence. With
 * du_t = dk'_t * SiLU'(u_t): dk_t = dk'_t + sum_l w_l * du_{t+l} (t + l in the sequence) and
 * dw_l = sum_t du_t * k_{t-l} over all sequences' keys. */
void moba_ref_kconv_backward(const moba_ref_cfg *cfg, const double *k, const double *conv_w,
                             const double *dkprime, double *dk, double *dconv_w)
{
    int W = cfg->conv_width, d = cfg->d, hkv = cfg->hkv;
    memcpy(dk, dkprime, kv_elems(cfg) * sizeof *dk);
    if (W == 0)
        return;
    if (dconv_w)
        memset(dconv_w, 0, (size_t)hkv * W * d * sizeof *dconv_w);
    for (int b = 0; b < cfg->batch; b++) {
        int start = cfg->cu_seqlens_k[b], end = cfg->cu_seqlens_k[b + 1];
        for (int row = start; row < end; row++)
            for (int hk = 0; hk < hkv; hk++)
                for (int c = 0; c < d; c++) {
                    /* Taps before `start` read the zero padding: they add nothing to u and
                     * receive nothing back, so sequences stay independent. */
                    int taps = row - start + 1 < W ? row - start + 1 : W;
                    double u = 0.0;
                    for (int l = 0; l < taps; l++)
                        u += conv_w[((size_t)hk * W + l) * d + c] *
                             k[((size_t)(row - l) * hkv + hk) * d + c];
                    double du = dkprime[((size_t)row * hkv + hk) * d + c] * silu_grad(u);
                    for (int l = 0; l < taps; l++) {
                        size_t src = ((size_t)(row - l) * hkv + hk) * d + c;
                        size_t tap = ((size_t)hk * W + l) * d + c;
                        dk[src] += conv_w[tap] * du;
                        if (dconv_w)
                            dconv_w[tap] += du * k[src];
                    }
                }
    }
}

int moba_ref_backward(const moba_ref_cfg *cfg, const double *q, const double *k, const double *v,
                      const double *conv_w, const int *sel, const double *o, const double *lse,
                      const double *dout, const double *dlse, double *dq, double *dk, double *dv,
                      double *dconv_w)
{
    if (moba_ref_check_cfg(cfg) != 0 || !q || !k || !v || !sel || !o || !lse || !dout || !dq ||
        !dk || !dv || (cfg->conv_width > 0 && !conv_w))
        return -1;
    /* +1 so that empty batches still get a pointer that free() and the loops accept. */
    double *kprime = malloc((kv_elems(cfg) + 1) * sizeof *kprime);
    double *dkprime = malloc((kv_elems(cfg) + 1) * sizeof *dkprime);
    int rc = -1;
    if (!kprime || !dkprime)
        goto out;
    moba_ref_kconv(cfg, k, conv_w, kprime);
    moba_ref_attention_backward(cfg, q, kprime, v, sel, o, lse, dout, dlse, dq, dkprime, dv);
    moba_ref_kconv_backward(cfg, k, conv_w, dkprime, dk, dconv_w);
    rc = 0;
out:
    free(kprime);
    free(dkprime);
    return rc;
}
