%! -- Key convolution (when conv_width > 0) fused with the block centroids.
%! -- One CTA per (key block, kv head, sequence); THREADS threads cover the head dim in
%! -- THREADS / head_dim row groups that stride over the block's keys.
%! knobs = { threads = {128, 256} }
%! function valid(spec, arch, p)
%!   if p.threads % spec.head_dim ~= 0 then
%!     return false, "threads must be a multiple of head_dim " .. spec.head_dim
%!   end
%!   if p.threads > 1024 then return false, "at most 1024 threads" end
%!   return true
%! end
%! function kernels(spec, p) return { main = "moba_kconv_centroid<" .. p.threads .. ">" } end
%! function launch(spec, p)
%!   return { threads = p.threads, smem = 0 }
%! end
% include("common.cuh.tpl")
% include("centroid_split.cuh.tpl")
% local groups = point.threads // spec.head_dim

// Rows of the block are split among $(groups) row group(s); each thread owns one dim.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) moba_kconv_centroid(const FwdParams p)
{
    constexpr int D = MOBA_HEAD_DIM, GROUPS = THREADS / D;
    const int block = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int *cu_k = reinterpret_cast<const int *>(p.cu_seqlens_k);
    const int seq_start = cu_k[b], len = cu_k[b + 1] - seq_start;
    const int key0 = block * MOBA_BLOCK;
    if (key0 >= len) return;                       // this sequence has fewer blocks
    const int keys = min(MOBA_BLOCK, len - key0);  // a partial last block averages its real keys
    const int dim = threadIdx.x % D, group = threadIdx.x / D;
    const elem_t *k = reinterpret_cast<const elem_t *>(p.k);
% if spec.conv_width > 0 then
    const elem_t *w = reinterpret_cast<const elem_t *>(p.conv_w) + (long long)kvh * MOBA_CONV_WIDTH * D;
    elem_t *kprime = reinterpret_cast<elem_t *>(p.kprime);
    float taps[MOBA_CONV_WIDTH];
#pragma unroll
    for (int l = 0; l < MOBA_CONV_WIDTH; l++) taps[l] = elem_to_float(w[l * D + dim]);
% end
    float sum = 0.f;
    for (int r = group; r < keys; r += GROUPS) {
        const int t = key0 + r;                    // position within the sequence
        const long long row = seq_start + t;
        float x = elem_to_float(k[row * p.k_row_stride + kvh * p.k_head_stride + dim]);
% if spec.conv_width > 0 then
        // k'_t = k_t + SiLU(sum_l w_l k_{t-l}); zero padding before the sequence's first key.
        float acc = 0.f;
#pragma unroll
        for (int l = 0; l < MOBA_CONV_WIDTH; l++) {
            if (t - l >= 0)
                acc += taps[l] * elem_to_float(k[(row - l) * p.k_row_stride + kvh * p.k_head_stride + dim]);
        }
        x += acc / (1.f + __expf(-acc));
        // Attention reads k' in the input dtype, so round once here and average what it reads.
        const elem_t xr = float_to_elem(x);
        kprime[(row * p.hkv + kvh) * D + dim] = xr;
        x = elem_to_float(xr);
% end
        sum += x;
    }
% if groups > 1 then
    __shared__ float partial[THREADS];
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (group != 0) return;
#pragma unroll
    for (int g = 1; g < GROUPS; g++) sum += partial[g * D + dim];
% end
    const long long at = ((long long)b * p.max_blocks + block) * p.hkv + kvh;
    const float c = sum / (float)keys;
    reinterpret_cast<float *>(p.centroid)[at * D + dim] = c;
    const elem_t hi = float_to_elem(c);
    elem_t *split = centroid_split(p) + at * 2 * D;
    split[dim] = hi;
    split[D + dim] = float_to_elem(c - elem_to_float(hi));
}
