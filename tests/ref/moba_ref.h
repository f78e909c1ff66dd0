/* The C reference for MoBA (../shared/moba.md): plain, readable, double precision, CPU only.
 * It is the oracle for every GPU test, and is itself checked against brute force.
 *
 * Layouts (row-major, last dim contiguous), as FlashAttention's varlen API:
 *   q        [total_q][hq][d]
 *   k, v     [total_k][hkv][d]
 *   conv_w   [hkv][conv_width][d]; tap l multiplies k_{t-l} (l = 0 is the current key)
 *   centroid [batch][max_blocks][hkv][d], max_blocks = ceil(max_seqlen_k / block_size);
 *            rows of blocks a sequence does not have are left untouched
 *   sel      [total_q][hq][top_k] selected block indices (within the sequence), ascending,
 *            padded with -1 when fewer than top_k blocks are selected
 *   o        [total_q][hq][d]
 *   lse      [total_q][hq], natural log; -inf for a row with no visible key
 * Query head h reads kv head h / (hq / hkv). */
#ifndef MOBA_REF_H
#define MOBA_REF_H

#include <stddef.h>

typedef struct moba_ref_cfg {
    int batch;
    const int *cu_seqlens_q;   /* host, batch + 1 entries */
    const int *cu_seqlens_k;   /* host, batch + 1 entries */
    int hq, hkv, d;
    int block_size;
    int top_k;
    int causal;
    int conv_width;            /* 0 = no key convolution */
    double scale;              /* softmax scale, usually 1/sqrt(d) */
} moba_ref_cfg;

/* 0 when cfg is consistent (positive sizes, hq % hkv == 0, monotone cu_seqlens), else -1. */
int moba_ref_check_cfg(const moba_ref_cfg *cfg);

/* ceil(max_seqlen_k / block_size). */
int moba_ref_max_blocks(const moba_ref_cfg *cfg);

/* k'_t = k_t + SiLU(sum_l w_l * k_{t-l}), causal within each sequence, zero left padding.
 * With conv_width == 0, copies k. kprime has k's layout. */
void moba_ref_kconv(const moba_ref_cfg *cfg, const double *k, const double *conv_w, double *kprime);

/* Mean of each block's keys (a partial last block over its real keys only). */
void moba_ref_centroids(const moba_ref_cfg *cfg, const double *kprime, double *centroid);

/* Gate score q_t . centroid_j of query row `row` (global packed index), query head h, block j. */
double moba_ref_gate_score(const moba_ref_cfg *cfg, const double *q, const double *centroid,
                           int row, int h, int j);

/* Routing with moba.md's causal rules (bottom-right alignment, own block always selected and
 * counted, only whole earlier blocks as candidates, t < 0 selects nothing) or plain top-k when
 * not causal. Ties: higher score wins, equal scores go to the lower block index. */
void moba_ref_route(const moba_ref_cfg *cfg, const double *q, const double *centroid, int *sel);

/* Attention over the union of the selected blocks, token-level causal mask in causal mode. */
void moba_ref_attention(const moba_ref_cfg *cfg, const double *q, const double *kprime,
                        const double *v, const int *sel, double *o, double *lse);

/* The whole forward: kconv (when conv_width > 0), centroids, routing, attention.
 * sel may be NULL when the caller does not need it. Returns 0, or -1 on a bad cfg or no memory. */
int moba_ref_forward(const moba_ref_cfg *cfg, const double *q, const double *k, const double *v,
                     const double *conv_w, double *o, double *lse, int *sel);

/* The dot product of two d-vectors and SiLU, as every reference (forward, backward, decode)
 * computes them. */
double moba_ref_dot(const double *a, const double *b, int d);
double moba_ref_silu(double x);

#endif
