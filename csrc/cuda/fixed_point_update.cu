// CUDA kernel of the fused fixed-point update over a list state (one tensor is a list of one):
//   z_next = (1 - tau) z + tau fz,   res[b]^2 = sum_i ||fz_i,b - z_i,b||^2,   fzn[b]^2 = sum_i ||fz_i,b||^2
// Pass 1: one block per (sample, chunk of kChunk elements of one tensor) reads z and fz once (16-byte
// loads when aligned), writes z_next once and stores two fp32 partial sums (fp64 for fp64). Up to
// kMaxTensors tensors of a list state go in one launch. Pass 2: one tiny block per sample adds its
// partials in a fixed order and takes the square roots. Deterministic: no atomics anywhere.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../op_args.h"
#include "common.cuh"

namespace lmdeq {
namespace cuda {
namespace {

constexpr int kMaxTensors = 8;
constexpr int kElemsPerThread = 16;
constexpr int kChunk = kThreads * kElemsPerThread;

template <typename scalar_t>
struct UpdateArgs {
  const scalar_t* z[kMaxTensors];
  const scalar_t* f[kMaxTensors];
  scalar_t* out[kMaxTensors];
  int64_t n[kMaxTensors];              // elements per sample
  int first_chunk[kMaxTensors + 1];    // this launch's chunk range of tensor t
  bool vec[kMaxTensors];               // 16-byte packs allowed (aligned, n a multiple of the pack)
  int count;
  int col_offset;                      // partial-sum column of this launch's chunk 0
  int cols;                            // partial-sum columns per sample, all launches
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void update_one(scalar_t zs, scalar_t fs, scalar_t* out, acc_t keep, acc_t tau, acc_t& r2,
                                           acc_t& f2) {
  const acc_t z = static_cast<acc_t>(zs), f = static_cast<acc_t>(fs);
  *out = static_cast<scalar_t>(keep * z + tau * f);
  const acc_t d = f - z;
  r2 += d * d;
  f2 += f * f;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    update_kernel(UpdateArgs<scalar_t> a, acc_t keep, acc_t tau, acc_t* part_r, acc_t* part_f) {
  __shared__ acc_t smem[kWarps + 1];
  const int64_t b = blockIdx.x;
  const int col = blockIdx.y;
  int t = 0;
  while (t + 1 < a.count && col >= a.first_chunk[t + 1]) ++t;
  const int64_t n = a.n[t];
  const int64_t start = static_cast<int64_t>(col - a.first_chunk[t]) * kChunk;
  const int64_t len = min(static_cast<int64_t>(kChunk), n - start);
  const int64_t base = b * n + start;
  const scalar_t* z = a.z[t] + base;
  const scalar_t* f = a.f[t] + base;
  scalar_t* out = a.out[t] + base;
  acc_t r2 = 0, f2 = 0;
  constexpr int V = 16 / sizeof(scalar_t);
  if (a.vec[t]) {
    using P = Pack<scalar_t, V>;
    constexpr int kPacks = kElemsPerThread / V;
    P zp[kPacks], fp[kPacks];
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t i = (static_cast<int64_t>(p) * kThreads + threadIdx.x) * V;
      if (i < len) {
        zp[p] = *reinterpret_cast<const P*>(z + i);
        fp[p] = *reinterpret_cast<const P*>(f + i);
      }
    }
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t i = (static_cast<int64_t>(p) * kThreads + threadIdx.x) * V;
      if (i < len) {
        P op;
#pragma unroll
        for (int e = 0; e < V; ++e) update_one(zp[p].v[e], fp[p].v[e], &op.v[e], keep, tau, r2, f2);
        *reinterpret_cast<P*>(out + i) = op;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) update_one(z[i], f[i], out + i, keep, tau, r2, f2);
  }
  r2 = block_sum(r2, smem);
  f2 = block_sum(f2, smem);
  if (threadIdx.x == 0) {
    const int64_t p = b * a.cols + a.col_offset + col;
    part_r[p] = r2;
    part_f[p] = f2;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const acc_t* part_r, const acc_t* part_f, int cols, acc_t* res, acc_t* fzn) {
  __shared__ acc_t smem[kWarps + 1];
  const int64_t b = blockIdx.x;
  acc_t r = 0, f = 0;
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    r += part_r[b * cols + c];
    f += part_f[b * cols + c];
  }
  r = block_sum(r, smem);
  f = block_sum(f, smem);
  if (threadIdx.x == 0) {
    res[b] = sqrt(r);
    fzn[b] = sqrt(f);
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> fixed_point_update_multi(at::TensorList zs,
                                                                                     at::TensorList fzs, double tau) {
  const char* op = "lmdeq_C::fixed_point_update_multi";
  check_fixed_point_args(zs, fzs, at::kCUDA, op);
  const c10::cuda::CUDAGuard guard(zs[0].device());
  const int64_t B = zs[0].size(0);
  const size_t T = zs.size();
  std::vector<SampleRows> rows;
  std::vector<at::Tensor> outs;
  std::vector<int64_t> chunks;
  int64_t cols = 0;
  for (size_t t = 0; t < T; ++t) {
    rows.push_back(sample_rows(zs[t], fzs[t]));
    outs.push_back(at::empty_like(rows.back().a));
    chunks.push_back(ceil_div(rows.back().n, kChunk));
    cols += chunks.back();
  }
  TORCH_CHECK(cols <= 65535, op, ": a sample of ", cols * kChunk, " elements is too large for this kernel");
  const auto acc = acc_type(zs[0].scalar_type());
  auto res = at::empty({B}, zs[0].options().dtype(acc));
  auto fzn = at::empty({B}, zs[0].options().dtype(acc));
  if (B == 0) return {outs, res, fzn};
  if (cols == 0) {
    res.zero_();
    fzn.zero_();
    return {outs, res, fzn};
  }
  auto part_r = at::empty({B, cols}, res.options());
  auto part_f = at::empty({B, cols}, res.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zs[0].scalar_type(), "lmdeq_fixed_point_update_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    int col_offset = 0;
    for (size_t t0 = 0; t0 < T; t0 += kMaxTensors) {
      UpdateArgs<scalar_t> a{};
      a.count = static_cast<int>(std::min(T - t0, static_cast<size_t>(kMaxTensors)));
      a.col_offset = col_offset;
      a.cols = static_cast<int>(cols);
      a.first_chunk[0] = 0;
      for (int i = 0; i < a.count; ++i) {
        const SampleRows& r = rows[t0 + i];
        a.z[i] = r.a.const_data_ptr<scalar_t>();
        a.f[i] = r.b.const_data_ptr<scalar_t>();
        a.out[i] = outs[t0 + i].mutable_data_ptr<scalar_t>();
        a.n[i] = r.n;
        a.vec[i] = r.n % V == 0 && aligned16(a.z[i]) && aligned16(a.f[i]) && aligned16(a.out[i]);
        a.first_chunk[i + 1] = a.first_chunk[i] + static_cast<int>(chunks[t0 + i]);
      }
      const int launch_cols = a.first_chunk[a.count];
      if (launch_cols > 0) {
        update_kernel<scalar_t, acc_t><<<dim3(B, launch_cols), kThreads, 0, stream>>>(
            a, static_cast<acc_t>(1.0 - tau), static_cast<acc_t>(tau), part_r.mutable_data_ptr<acc_t>(),
            part_f.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      col_offset += launch_cols;
    }
    finalize_kernel<acc_t><<<B, kThreads, 0, stream>>>(part_r.const_data_ptr<acc_t>(), part_f.const_data_ptr<acc_t>(),
                                                       static_cast<int>(cols), res.mutable_data_ptr<acc_t>(),
                                                       fzn.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {outs, res, fzn};
}


}  // namespace
}  // namespace cuda
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CUDA, m) {
  m.impl("fixed_point_update_multi", &lmdeq::cuda::fixed_point_update_multi);
}
