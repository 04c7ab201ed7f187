// CPU kernels of the Anderson history work, each one pass over the history buffers X, F (B, m, n):
//   anderson_gram_row:  H[b, j] = <G_k, G_j>  with G_j = F[b, j] - X[b, j]          (B, m), fp32/fp64
//   anderson_mix:       x[b]    = sum_j alpha[b, j] ((1 - tau) X[b, j] + tau F[b, j])   (B, n), X's dtype
// Work is split into (sample, chunk of n) tasks; the Gram row adds per-chunk partials in chunk order.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../op_args.h"
#include "lanes.h"

namespace lmdeq {
namespace cpu {
namespace {

constexpr int64_t kHistChunk = 2048;  // elements of n per task; G_k's chunk lives on the stack

at::Tensor anderson_gram_row(const at::Tensor& X_in, const at::Tensor& F_in, int64_t k) {
  const char* op = "lmdeq_C::anderson_gram_row";
  History h = check_history(X_in, F_in, at::kCPU, op);
  TORCH_CHECK(k >= 0 && k < h.m, op, ": argument 'k' must be in [0, m) = [0, ", h.m, "), got ", k);
  const int64_t B = h.batch, m = h.m, n = h.n, C = ceil_div(n, kHistChunk);
  auto out = at::empty({B, m}, h.X.options().dtype(acc_type(h.X.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.X.scalar_type(), "lmdeq_anderson_gram_row_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* X = h.X.const_data_ptr<scalar_t>();
    const scalar_t* F = h.F.const_data_ptr<scalar_t>();
    const int64_t sxb = h.X.stride(0), sxm = h.X.stride(1), sfb = h.F.stride(0), sfm = h.F.stride(1);
    std::vector<acc_t> part(B * C * m, acc_t(0));  // [b][chunk][j]
    at::parallel_for(0, B * C, grain_for(kHistChunk * m), [&](int64_t begin, int64_t end) {
      acc_t gk[kHistChunk];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / C, start = (task % C) * kHistChunk, len = std::min(kHistChunk, n - start);
        const scalar_t* xk = X + b * sxb + k * sxm + start;
        const scalar_t* fk = F + b * sfb + k * sfm + start;
        for (int64_t i = 0; i < len; ++i) gk[i] = static_cast<acc_t>(fk[i]) - static_cast<acc_t>(xk[i]);
        for (int64_t j = 0; j < m; ++j) {
          Lanes<acc_t> acc;
          if (j == k) {
            for (int64_t i = 0; i < len; ++i) acc.v[i % kLanes] += gk[i] * gk[i];
          } else {
            const scalar_t* xj = X + b * sxb + j * sxm + start;
            const scalar_t* fj = F + b * sfb + j * sfm + start;
            int64_t i = 0;
            for (; i + kLanes <= len; i += kLanes)
              for (int l = 0; l < kLanes; ++l)
                acc.v[l] += (static_cast<acc_t>(fj[i + l]) - static_cast<acc_t>(xj[i + l])) * gk[i + l];
            for (int l = 0; i + l < len; ++l)
              acc.v[l] += (static_cast<acc_t>(fj[i + l]) - static_cast<acc_t>(xj[i + l])) * gk[i + l];
          }
          part[task * m + j] = acc.sum();
        }
      }
    });
    acc_t* o = out.mutable_data_ptr<acc_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < m; ++j) {
        acc_t s = 0;
        for (int64_t c = 0; c < C; ++c) s += part[(b * C + c) * m + j];
        o[b * m + j] = s;
      }
  });
  return out;
}

at::Tensor anderson_mix(const at::Tensor& X_in, const at::Tensor& F_in, const at::Tensor& alpha_in, double tau) {
  const char* op = "lmdeq_C::anderson_mix";
  History h = check_history(X_in, F_in, at::kCPU, op);
  at::Tensor alpha = check_alpha(alpha_in, h, op);
  const int64_t B = h.batch, m = h.m, n = h.n, C = ceil_div(n, kHistChunk);
  auto out = at::empty({B, n}, h.X.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.X.scalar_type(), "lmdeq_anderson_mix_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* X = h.X.const_data_ptr<scalar_t>();
    const scalar_t* F = h.F.const_data_ptr<scalar_t>();
    const acc_t* a = alpha.const_data_ptr<acc_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t sxb = h.X.stride(0), sxm = h.X.stride(1), sfb = h.F.stride(0), sfm = h.F.stride(1);
    const acc_t keep = static_cast<acc_t>(1.0 - tau), tau_a = static_cast<acc_t>(tau);
    at::parallel_for(0, B * C, grain_for(kHistChunk * m), [&](int64_t begin, int64_t end) {
      acc_t acc[kHistChunk];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / C, start = (task % C) * kHistChunk, len = std::min(kHistChunk, n - start);
        for (int64_t i = 0; i < len; ++i) acc[i] = 0;
        for (int64_t j = 0; j < m; ++j) {
          const acc_t cx = a[b * m + j] * keep, cf = a[b * m + j] * tau_a;
          const scalar_t* xj = X + b * sxb + j * sxm + start;
          const scalar_t* fj = F + b * sfb + j * sfm + start;
          for (int64_t i = 0; i < len; ++i)
            acc[i] += cx * static_cast<acc_t>(xj[i]) + cf * static_cast<acc_t>(fj[i]);
        }
        scalar_t* oo = o + b * n + start;
        for (int64_t i = 0; i < len; ++i) oo[i] = static_cast<scalar_t>(acc[i]);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CPU, m) {
  m.impl("anderson_gram_row", &lmdeq::cpu::anderson_gram_row);
  m.impl("anderson_mix", &lmdeq::cpu::anderson_mix);
}
