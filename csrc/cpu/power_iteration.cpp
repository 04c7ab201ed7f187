// CPU kernel of batched power iteration on matrices W_l (out_l x in_l), persistent vectors u_l:
//   per iteration:  t = W^T u,  v = t / max(||t||, eps),  w = W v,  u = w / max(||w||, eps)
//   result:         sigma_l = u^T W v = ||w||^2 / max(||w||, eps)
// One op call for all layers; vectors in fp32 (fp64 for fp64 weights). W^T u streams W row by row
// (threads own column ranges), W v gives each thread whole rows: both orders are fixed, so the
// result is deterministic.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../op_args.h"
#include "lanes.h"

namespace lmdeq {
namespace cpu {
namespace {

constexpr int64_t kColBlock = 256;

template <typename scalar_t, typename acc_t>
void transposed_matvec(const scalar_t* W, int64_t rows, int64_t cols, const acc_t* u, acc_t* t) {
  const int64_t blocks = ceil_div(cols, kColBlock);
  at::parallel_for(0, blocks, grain_for(rows * kColBlock), [&](int64_t begin, int64_t end) {
    for (int64_t cb = begin; cb < end; ++cb) {
      const int64_t c0 = cb * kColBlock, c1 = std::min(cols, c0 + kColBlock);
      for (int64_t c = c0; c < c1; ++c) t[c] = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* wr = W + r * cols;
        const acc_t ur = u[r];
        for (int64_t c = c0; c < c1; ++c) t[c] += static_cast<acc_t>(wr[c]) * ur;
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void matvec(const scalar_t* W, int64_t rows, int64_t cols, const acc_t* v, acc_t* w) {
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* wr = W + r * cols;
      Lanes<acc_t> acc;
      int64_t c = 0;
      for (; c + kLanes <= cols; c += kLanes)
        for (int l = 0; l < kLanes; ++l) acc.v[l] += static_cast<acc_t>(wr[c + l]) * v[c + l];
      for (int l = 0; c + l < cols; ++l) acc.v[l] += static_cast<acc_t>(wr[c + l]) * v[c + l];
      w[r] = acc.sum();
    }
  });
}

template <typename acc_t>
acc_t norm(const acc_t* x, int64_t n) {
  Lanes<acc_t> acc;
  for (int64_t i = 0; i < n; ++i) acc.v[i % kLanes] += x[i] * x[i];
  return std::sqrt(acc.sum());
}

std::tuple<at::Tensor, std::vector<at::Tensor>> power_iteration_matrices(at::TensorList weights, at::TensorList us,
                                                                          int64_t n_iter) {
  const char* op = "lmdeq_C::power_iteration_matrices";
  MatrixLayers L = check_matrix_layers(weights, us, n_iter, at::kCPU, op);
  const size_t n_layers = L.W.size();
  const auto dtype = n_layers ? L.W[0].scalar_type() : at::kFloat;
  auto sigmas = at::empty({static_cast<int64_t>(n_layers)}, at::TensorOptions().dtype(dtype));
  std::vector<at::Tensor> new_us;
  if (n_layers == 0) return {sigmas, new_us};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lmdeq_power_iteration_matrices_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* sig = sigmas.mutable_data_ptr<scalar_t>();
    for (size_t l = 0; l < n_layers; ++l) {
      const int64_t rows = L.rows[l], cols = L.cols[l];
      const scalar_t* W = L.W[l].const_data_ptr<scalar_t>();
      std::vector<acc_t> u(rows), t(cols), w(rows);
      const scalar_t* u_in = L.u[l].const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) u[r] = static_cast<acc_t>(u_in[r]);
      acc_t wn = norm(u.data(), rows);
      w = u;
      for (int64_t it = 0; it < n_iter; ++it) {
        // u = w / max(||w||, eps): the scale does not change v below, except for the eps clamp.
        const acc_t inv_u = acc_t(1) / std::max(wn, static_cast<acc_t>(kNormEps));
        for (int64_t r = 0; r < rows; ++r) u[r] = w[r] * inv_u;
        transposed_matvec<scalar_t, acc_t>(W, rows, cols, u.data(), t.data());
        const acc_t inv_t = acc_t(1) / std::max(norm(t.data(), cols), static_cast<acc_t>(kNormEps));
        for (int64_t c = 0; c < cols; ++c) t[c] *= inv_t;
        matvec<scalar_t, acc_t>(W, rows, cols, t.data(), w.data());
        wn = norm(w.data(), rows);
      }
      const acc_t denom = std::max(wn, static_cast<acc_t>(kNormEps));
      auto out = at::empty({rows}, L.u[l].options());
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) o[r] = static_cast<scalar_t>(w[r] / denom);
      sig[l] = static_cast<scalar_t>(wn * wn / denom);
      new_us.push_back(out);
    }
  });
  return {sigmas, new_us};
}

}  // namespace
}  // namespace cpu
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CPU, m) { m.impl("power_iteration_matrices", &lmdeq::cpu::power_iteration_matrices); }
