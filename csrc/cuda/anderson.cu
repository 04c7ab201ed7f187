// CUDA kernels of the Anderson history work over X, F (B, m, n) with unit stride along n:
//   anderson_gram_row:  H[b, j] = <G_k, G_j>, G_j = F[b, j] - X[b, j]           (B, m) fp32 / fp64
//   anderson_mix:       x[b] = sum_j alpha[b, j] ((1 - tau) X[b, j] + tau F[b, j])  (B, n) in X's dtype
// Both: one block per (sample, chunk of kChunk elements of n), each history row read once from memory.
// The Gram row handles j in groups of kGroup (registers), stores per-chunk partials, and a second
// tiny kernel adds them per (b, j) in chunk order: deterministic, no atomics.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../op_args.h"
#include "common.cuh"

namespace lmdeq {
namespace cuda {
namespace {

constexpr int kPerThread = 4;
constexpr int kChunk = kThreads * kPerThread;
constexpr int kGroup = 8;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const scalar_t* X, const scalar_t* F, int64_t sxb, int64_t sxm, int64_t sfb, int64_t sfm,
                        int64_t m, int64_t n, int64_t k, int chunks, acc_t* part) {
  __shared__ acc_t smem[kGroup][kWarps];
  const int64_t b = blockIdx.x;
  const int c = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const scalar_t* Xb = X + b * sxb;
  const scalar_t* Fb = F + b * sfb;
  for (int64_t j0 = 0; j0 < m; j0 += kGroup) {
    acc_t acc[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) acc[g] = 0;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t i = static_cast<int64_t>(c) * kChunk + e * kThreads + threadIdx.x;
      if (i < n) {
        const acc_t gk = static_cast<acc_t>(Fb[k * sfm + i]) - static_cast<acc_t>(Xb[k * sxm + i]);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const int64_t j = j0 + g;
          if (j < m) acc[g] += (static_cast<acc_t>(Fb[j * sfm + i]) - static_cast<acc_t>(Xb[j * sxm + i])) * gk;
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const acc_t s = warp_sum(acc[g]);
      if (lane == 0) smem[g][warp] = s;
    }
    __syncthreads();
    if (threadIdx.x < kGroup && j0 + threadIdx.x < m) {
      acc_t s = 0;
      for (int w = 0; w < kWarps; ++w) s += smem[threadIdx.x][w];
      part[(b * chunks + c) * m + j0 + threadIdx.x] = s;
    }
    __syncthreads();
  }
}

template <typename acc_t>
__global__ void gram_finalize_kernel(const acc_t* part, int64_t m, int chunks, acc_t* out) {
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    acc_t s = 0;
    for (int c = 0; c < chunks; ++c) s += part[(b * chunks + c) * m + j];
    out[b * m + j] = s;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    mix_kernel(const scalar_t* X, const scalar_t* F, int64_t sxb, int64_t sxm, int64_t sfb, int64_t sfm, int64_t m,
               int64_t n, const acc_t* alpha, acc_t keep, acc_t tau, scalar_t* out) {
  const int64_t b = blockIdx.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kChunk + threadIdx.x;
  const scalar_t* Xb = X + b * sxb;
  const scalar_t* Fb = F + b * sfb;
  acc_t acc[kPerThread];
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) acc[e] = 0;
  for (int64_t j = 0; j < m; ++j) {
    const acc_t a = alpha[b * m + j], cx = a * keep, cf = a * tau;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t i = i0 + e * kThreads;
      if (i < n) acc[e] += cx * static_cast<acc_t>(Xb[j * sxm + i]) + cf * static_cast<acc_t>(Fb[j * sfm + i]);
    }
  }
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const int64_t i = i0 + e * kThreads;
    if (i < n) out[b * n + i] = static_cast<scalar_t>(acc[e]);
  }
}

at::Tensor anderson_gram_row(const at::Tensor& X_in, const at::Tensor& F_in, int64_t k) {
  const char* op = "lmdeq_C::anderson_gram_row";
  History h = check_history(X_in, F_in, at::kCUDA, op);
  TORCH_CHECK(k >= 0 && k < h.m, op, ": argument 'k' must be in [0, m) = [0, ", h.m, "), got ", k);
  const c10::cuda::CUDAGuard guard(h.X.device());
  const int64_t B = h.batch, m = h.m, n = h.n;
  const int64_t chunks = ceil_div(n, kChunk);
  TORCH_CHECK(chunks <= 65535, op, ": n = ", n, " is too large for this kernel");
  auto out = at::empty({B, m}, h.X.options().dtype(acc_type(h.X.scalar_type())));
  if (B == 0) return out;
  if (chunks == 0) return out.zero_();
  auto part = at::empty({B, chunks, m}, out.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.X.scalar_type(), "lmdeq_anderson_gram_row_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gram_partial_kernel<scalar_t, acc_t><<<dim3(B, chunks), kThreads, 0, stream>>>(
        h.X.const_data_ptr<scalar_t>(), h.F.const_data_ptr<scalar_t>(), h.X.stride(0), h.X.stride(1), h.F.stride(0),
        h.F.stride(1), m, n, k, static_cast<int>(chunks), part.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gram_finalize_kernel<acc_t><<<B, 32, 0, stream>>>(part.const_data_ptr<acc_t>(), m, static_cast<int>(chunks),
                                                      out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor anderson_mix(const at::Tensor& X_in, const at::Tensor& F_in, const at::Tensor& alpha_in, double tau) {
  const char* op = "lmdeq_C::anderson_mix";
  History h = check_history(X_in, F_in, at::kCUDA, op);
  at::Tensor alpha = check_alpha(alpha_in, h, op);
  const c10::cuda::CUDAGuard guard(h.X.device());
  const int64_t B = h.batch, m = h.m, n = h.n;
  const int64_t chunks = ceil_div(n, kChunk);
  TORCH_CHECK(chunks <= 65535, op, ": n = ", n, " is too large for this kernel");
  auto out = at::empty({B, n}, h.X.options());
  if (B == 0 || chunks == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.X.scalar_type(), "lmdeq_anderson_mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    mix_kernel<scalar_t, acc_t><<<dim3(B, chunks), kThreads, 0, stream>>>(
        h.X.const_data_ptr<scalar_t>(), h.F.const_data_ptr<scalar_t>(), h.X.stride(0), h.X.stride(1), h.F.stride(0),
        h.F.stride(1), m, n, alpha.const_data_ptr<acc_t>(), static_cast<acc_t>(1.0 - tau), static_cast<acc_t>(tau),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CUDA, m) {
  m.impl("anderson_gram_row", &lmdeq::cuda::anderson_gram_row);
  m.impl("anderson_mix", &lmdeq::cuda::anderson_mix);
}
