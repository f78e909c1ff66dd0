/* The C reference for MoBA's backward pass (../shared/moba.md section 4, docs/backward.md):
 * analytic gradients in double precision, the oracle for the GPU backward kernels. It is
 * checked against central finite differences of moba_ref_forward_with_sel in
 * tests/test_ref_bwd.c.
 *
 * Layouts are those of moba_ref.h; gradients have the layout of what they differentiate:
 *   dout, dq  [total_q][hq][d]         dk, dv, dkprime  [total_k][hkv][d]
 *   dlse, delta [total_q][hq]          dconv_w          [hkv][conv_width][d]
 * Routing is a hard choice: the selection `sel` is an input, and nothing flows through the gate.
 * The visible keys of query (row, h) are those whose block is listed in its sel row (entries
 * outside 0..n-1, -1 padding included, and repeats are ignored, as the forward does), and in
 * causal mode only those at key position <= t. Rows with LSE = -inf (no visible key) get zero
 * gradients and contribute nothing. Outputs are overwritten, never accumulated into. */
#ifndef MOBA_REF_BWD_H
#define MOBA_REF_BWD_H

#include "moba_ref.h"

/* The forward with a fixed selection (k' then attention), i.e. the function whose gradients
 * moba_ref_backward computes. Returns 0, or -1 on a bad cfg, a missing array or no memory. */
int moba_ref_forward_with_sel(const moba_ref_cfg *cfg, const double *q, const double *k,
                              const double *v, const double *conv_w, const int *sel, double *o,
                              double *lse);

/* delta_t = rowsum(dout_t * o_t) (FlashAttention-2's D); 0 for a row with LSE = -inf. */
void moba_ref_bwd_delta(const moba_ref_cfg *cfg, const double *o, const double *lse,
                        const double *dout, double *delta);

/* Attention backward with respect to q, k' and v, given the forward's o and lse. dlse, the
 * upstream gradient of the LSE output, may be NULL (zero). dk' and dv are summed over the
 * query heads that share a kv head. */
void moba_ref_attention_backward(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                                 const double *v, const int *sel, const double *o,
                                 const double *lse, const double *dout, const double *dlse,
                                 double *dq, double *dkprime, double *dv);

/* Key-convolution backward: from dk' to dk (residual plus conv) and dconv_w. With
 * conv_width == 0, dk = dk' and conv_w, dconv_w are not read. dconv_w may be NULL to skip it. */
void moba_ref_kconv_backward(const moba_ref_cfg *cfg, const double *k, const double *conv_w,
                             const double *dkprime, double *dk, double *dconv_w);

/* The whole backward: k' from k and conv_w, the attention backward, the conv backward.
 * o and lse are the forward's outputs for this sel (moba_ref_forward or _with_sel); dlse may
 * be NULL; dconv_w may be NULL (and is not written) when conv_width == 0 or it is not wanted.
 * Returns 0, or -1 on a bad cfg, a missing array or no memory. */
int moba_ref_backward(const moba_ref_cfg *cfg, const double *q, const double *k, const double *v,
                      const double *conv_w, const int *sel, const double *o, const double *lse,
                      const double *dout, const double *dlse, double *dq, double *dk, double *dv,
                      double *dconv_w);

#endif
