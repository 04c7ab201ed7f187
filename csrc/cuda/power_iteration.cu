// CUDA kernels of the spectral-norm power iterations.
//
// (a) power_iteration_matrices, all layers W_l (rows_l x cols_l) batched in each launch:
//       transposed_kernel:  t_l = W_l^T u_l                                 (block: layer, 32 columns)
//       forward_kernel:     u_l = W_l t_l / max(||t_l||, eps)   (each block recomputes ||t_l||; block: 8 rows)
//       finalize_kernel:    out_l = u_l / max(||u_l||, eps),  sigma_l = ||u_l||^2 / max(||u_l||, eps)
//     2 launches per iteration + 1 (per group of kMaxLayers layers). u is kept unnormalised between
//     iterations: v = t / ||t|| does not depend on u's scale. Vectors are fp32 (fp64 for fp64).
// (b) normalize_tensors_cuda (see normalize_tensors.h): partial sums of squares per (tensor, chunk),
//     then one launch that adds each tensor's partials in order and scales the chunk.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../normalize_tensors.h"
#include "../op_args.h"
#include "common.cuh"

namespace lmdeq {
namespace cuda {
namespace {

constexpr int kMaxLayers = 32;
constexpr int kTileCols = 32;               // transposed_kernel: 32 columns x kWarps row groups
constexpr int kTileRows = kWarps;           // forward_kernel: one warp per row

template <typename scalar_t, typename acc_t>
struct MatArgs {
  const scalar_t* W[kMaxLayers];
  scalar_t* u_out[kMaxLayers];
  int64_t rows[kMaxLayers];
  int64_t cols[kMaxLayers];
  int64_t u_off[kMaxLayers];                // offsets into the flat work vectors
  int64_t t_off[kMaxLayers];
  int first_tile[kMaxLayers + 1];
  int count;
  int layer_offset;                         // index of this group's first layer in sigmas
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ int find_layer(const MatArgs<scalar_t, acc_t>& a, int tile) {
  int l = 0;
  while (l + 1 < a.count && tile >= a.first_tile[l + 1]) ++l;
  return l;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    transposed_kernel(MatArgs<scalar_t, acc_t> a, const acc_t* u_work, acc_t* t_work) {
  __shared__ acc_t smem[kWarps][kTileCols];
  const int l = find_layer(a, blockIdx.x);
  const int64_t rows = a.rows[l], cols = a.cols[l];
  const int lane = threadIdx.x & 31, group = threadIdx.x >> 5;
  const int64_t c = static_cast<int64_t>(blockIdx.x - a.first_tile[l]) * kTileCols + lane;
  const scalar_t* W = a.W[l];
  const acc_t* u = u_work + a.u_off[l];
  acc_t acc = 0;
  if (c < cols) {
#pragma unroll 4
    for (int64_t r = group; r < rows; r += kWarps) acc += static_cast<acc_t>(W[r * cols + c]) * u[r];
  }
  smem[group][lane] = acc;
  __syncthreads();
  if (group == 0 && c < cols) {
    acc_t s = 0;
#pragma unroll
    for (int g = 0; g < kWarps; ++g) s += smem[g][lane];
    t_work[a.t_off[l] + c] = s;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(MatArgs<scalar_t, acc_t> a, const acc_t* t_work, acc_t* u_work) {
  __shared__ acc_t smem[kWarps + 1];
  const int l = find_layer(a, blockIdx.x);
  const int64_t rows = a.rows[l], cols = a.cols[l];
  const acc_t* t = t_work + a.t_off[l];
  acc_t sq = 0;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) sq += t[c] * t[c];
  const acc_t inv = acc_t(1) / max(sqrt(block_sum(sq, smem)), static_cast<acc_t>(kNormEps));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = static_cast<int64_t>(blockIdx.x - a.first_tile[l]) * kTileRows + warp;
  if (r < rows) {
    const scalar_t* Wr = a.W[l] + r * cols;
    acc_t acc = 0;
    for (int64_t c = lane; c < cols; c += 32) acc += static_cast<acc_t>(Wr[c]) * t[c];
    acc = warp_sum(acc);
    if (lane == 0) u_work[a.u_off[l] + r] = acc * inv;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(MatArgs<scalar_t, acc_t> a, const acc_t* u_work, scalar_t* sigmas) {
  __shared__ acc_t smem[kWarps + 1];
  const int l = blockIdx.x;
  const int64_t rows = a.rows[l];
  const acc_t* u = u_work + a.u_off[l];
  acc_t sq = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) sq += u[r] * u[r];
  const acc_t nrm = sqrt(block_sum(sq, smem));
  const acc_t denom = max(nrm, static_cast<acc_t>(kNormEps));
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) a.u_out[l][r] = static_cast<scalar_t>(u[r] / denom);
  if (threadIdx.x == 0) sigmas[a.layer_offset + l] = static_cast<scalar_t>(nrm * nrm / denom);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> power_iteration_matrices(at::TensorList weights, at::TensorList us,
                                                                          int64_t n_iter) {
  const char* op = "lmdeq_C::power_iteration_matrices";
  MatrixLayers L = check_matrix_layers(weights, us, n_iter, at::kCUDA, op);
  const size_t n_layers = L.W.size();
  std::vector<at::Tensor> new_us;
  if (n_layers == 0) return {at::empty({0}, at::TensorOptions().dtype(at::kFloat)), new_us};
  const c10::cuda::CUDAGuard guard(L.W[0].device());
  const auto dtype = L.W[0].scalar_type();
  auto sigmas = at::empty({static_cast<int64_t>(n_layers)}, L.W[0].options());
  for (size_t l = 0; l < n_layers; ++l) new_us.push_back(at::empty({L.rows[l]}, L.u[l].options()));
  at::Tensor u_work = at::cat(L.u).to(acc_type(dtype));
  int64_t total_cols = 0;
  for (auto c : L.cols) total_cols += c;
  at::Tensor t_work = at::empty({total_cols}, u_work.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lmdeq_power_iteration_matrices_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Args = MatArgs<scalar_t, acc_t>;
    // Argument blocks per group of kMaxLayers layers; tiles of the two matvec kernels.
    std::vector<Args> t_args, f_args;
    int64_t u_off = 0, t_off = 0;
    for (size_t l0 = 0; l0 < n_layers; l0 += kMaxLayers) {
      Args ta{}, fa{};
      const int count = static_cast<int>(std::min(n_layers - l0, static_cast<size_t>(kMaxLayers)));
      ta.count = fa.count = count;
      ta.layer_offset = fa.layer_offset = static_cast<int>(l0);
      for (int i = 0; i < count; ++i) {
        const size_t l = l0 + i;
        for (Args* p : {&ta, &fa}) {
          p->W[i] = L.W[l].const_data_ptr<scalar_t>();
          p->u_out[i] = new_us[l].mutable_data_ptr<scalar_t>();
          p->rows[i] = L.rows[l];
          p->cols[i] = L.cols[l];
          p->u_off[i] = u_off;
          p->t_off[i] = t_off;
        }
        ta.first_tile[i + 1] = ta.first_tile[i] + static_cast<int>(ceil_div(L.cols[l], kTileCols));
        fa.first_tile[i + 1] = fa.first_tile[i] + static_cast<int>(ceil_div(L.rows[l], kTileRows));
        u_off += L.rows[l];
        t_off += L.cols[l];
      }
      t_args.push_back(ta);
      f_args.push_back(fa);
    }
    acc_t* u_p = u_work.mutable_data_ptr<acc_t>();
    acc_t* t_p = t_work.mutable_data_ptr<acc_t>();
    for (int64_t it = 0; it < n_iter; ++it) {
      for (const Args& ta : t_args) {
        if (ta.first_tile[ta.count] == 0) continue;
        transposed_kernel<scalar_t, acc_t><<<ta.first_tile[ta.count], kThreads, 0, stream>>>(ta, u_p, t_p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      for (const Args& fa : f_args) {
        if (fa.first_tile[fa.count] == 0) continue;
        forward_kernel<scalar_t, acc_t><<<fa.first_tile[fa.count], kThreads, 0, stream>>>(fa, t_p, u_p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    for (const Args& fa : f_args) {
      finalize_kernel<scalar_t, acc_t><<<fa.count, kThreads, 0, stream>>>(fa, u_p,
                                                                           sigmas.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {sigmas, new_us};
}

// ---- (b) multi-tensor normalisation ------------------------------------------------------------------

constexpr int kMaxTensors = 32;
constexpr int kNormChunk = kThreads * 16;

template <typename scalar_t>
struct NormArgs {
  scalar_t* x[kMaxTensors];
  int64_t n[kMaxTensors];
  int first_chunk[kMaxTensors + 1];
  int count;
  int part_offset;   // partial index of this group's chunk 0
  int norm_offset;   // index of this group's first tensor in norms
};

template <typename scalar_t>
__device__ __forceinline__ int find_tensor(const NormArgs<scalar_t>& a, int chunk) {
  int t = 0;
  while (t + 1 < a.count && chunk >= a.first_chunk[t + 1]) ++t;
  return t;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(NormArgs<scalar_t> a, acc_t* part) {
  __shared__ acc_t smem[kWarps + 1];
  const int t = find_tensor(a, blockIdx.x);
  const int64_t start = static_cast<int64_t>(blockIdx.x - a.first_chunk[t]) * kNormChunk;
  const int64_t end = min(start + kNormChunk, a.n[t]);
  acc_t sq = 0;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const acc_t v = static_cast<acc_t>(a.x[t][i]);
    sq += v * v;
  }
  sq = block_sum(sq, smem);
  if (threadIdx.x == 0) part[a.part_offset + blockIdx.x] = sq;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) scale_kernel(NormArgs<scalar_t> a, const acc_t* part, bool scale,
                                                         acc_t* norms) {
  const int t = find_tensor(a, blockIdx.x);
  acc_t sq = 0;
  for (int c = a.first_chunk[t]; c < a.first_chunk[t + 1]; ++c) sq += part[a.part_offset + c];
  const acc_t nrm = sqrt(sq);
  if (threadIdx.x == 0 && blockIdx.x == a.first_chunk[t]) norms[a.norm_offset + t] = nrm;
  if (!scale) return;
  const acc_t inv = acc_t(1) / max(nrm, static_cast<acc_t>(kNormEps));
  const int64_t start = static_cast<int64_t>(blockIdx.x - a.first_chunk[t]) * kNormChunk;
  const int64_t end = min(start + kNormChunk, a.n[t]);
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads)
    a.x[t][i] = static_cast<scalar_t>(static_cast<acc_t>(a.x[t][i]) * inv);
}

}  // namespace
}  // namespace cuda

at::Tensor normalize_tensors_cuda(const std::vector<at::Tensor>& ts, bool scale) {
  using namespace cuda;
  const c10::cuda::CUDAGuard guard(ts.at(0).device());
  const auto dtype = ts[0].scalar_type();
  auto norms = at::empty({static_cast<int64_t>(ts.size())}, ts[0].options().dtype(acc_type(dtype)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lmdeq_normalize_tensors_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<NormArgs<scalar_t>> groups;
    int total = 0;
    for (size_t t0 = 0; t0 < ts.size(); t0 += kMaxTensors) {
      NormArgs<scalar_t> a{};
      a.count = static_cast<int>(std::min(ts.size() - t0, static_cast<size_t>(kMaxTensors)));
      a.part_offset = total;
      a.norm_offset = static_cast<int>(t0);
      for (int i = 0; i < a.count; ++i) {
        a.x[i] = ts[t0 + i].mutable_data_ptr<scalar_t>();
        a.n[i] = ts[t0 + i].numel();
        // an empty tensor still gets one (empty) chunk so that its norm is written
        a.first_chunk[i + 1] = a.first_chunk[i] + static_cast<int>(std::max<int64_t>(1, ceil_div(a.n[i], kNormChunk)));
      }
      total += a.first_chunk[a.count];
      groups.push_back(a);
    }
    auto part = at::empty({total}, norms.options());
    for (const auto& a : groups) {
      sumsq_kernel<scalar_t, acc_t><<<a.first_chunk[a.count], kThreads, 0, stream>>>(a, part.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (const auto& a : groups) {
      scale_kernel<scalar_t, acc_t><<<a.first_chunk[a.count], kThreads, 0, stream>>>(
          a, part.const_data_ptr<acc_t>(), scale, norms.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return norms;
}

}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CUDA, m) {
  m.impl("power_iteration_matrices", &lmdeq::cuda::power_iteration_matrices);
}
