%! -- Where the centroids' high/low split lives, include()d by kconv_centroid (which writes it)
%! -- and route impl 3 (which reads it). The workspace's centroid region holds the fp32
%! -- centroids [batch][max_blocks][hkv][d] and after them the same centroids as
%! -- [batch][max_blocks][hkv][2][d] elements: hi = c rounded to the element type, lo = c - hi
%! -- rounded again, so hi + lo is within about 2^-16 of c (bf16) and two tensor-core products
%! -- give fp32-grade scores. Written once per forward, so no routing CTA converts centroids.
__device__ __forceinline__ elem_t *centroid_split(const FwdParams &p)
{
    return reinterpret_cast<elem_t *>(reinterpret_cast<float *>(p.centroid) +
                                      p.batch * p.max_blocks * p.hkv * MOBA_HEAD_DIM);
}
