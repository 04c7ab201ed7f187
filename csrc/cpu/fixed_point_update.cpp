// CPU kernel of the fused fixed-point update over a list state (one tensor is a list of one), one pass:
//   z_next = (1 - tau) z + tau fz,   res[b]^2 = sum_i ||fz_i,b - z_i,b||^2,   fzn[b]^2 = sum_i ||fz_i,b||^2
// (i over the tensors of a list state). Each (tensor, sample, chunk) task reads z and fz once, writes
// z_next once and leaves two partial sums; samples add their partials in a fixed order.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../op_args.h"
#include "lanes.h"

namespace lmdeq {
namespace cpu {
namespace {

template <typename scalar_t, typename acc_t>
void update_chunk(const scalar_t* z, const scalar_t* f, scalar_t* out, int64_t n, acc_t keep, acc_t tau, acc_t* r2,
                  acc_t* f2) {
  Lanes<acc_t> rl, fl;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t zv = static_cast<acc_t>(z[i + j]), fv = static_cast<acc_t>(f[i + j]);
      out[i + j] = static_cast<scalar_t>(keep * zv + tau * fv);
      const acc_t d = fv - zv;
      rl.v[j] += d * d;
      fl.v[j] += fv * fv;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const acc_t zv = static_cast<acc_t>(z[i + j]), fv = static_cast<acc_t>(f[i + j]);
    out[i + j] = static_cast<scalar_t>(keep * zv + tau * fv);
    const acc_t d = fv - zv;
    rl.v[j] += d * d;
    fl.v[j] += fv * fv;
  }
  *r2 = rl.sum();
  *f2 = fl.sum();
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> fixed_point_update_multi(at::TensorList zs,
                                                                                     at::TensorList fzs, double tau) {
  const char* op = "lmdeq_C::fixed_point_update_multi";
  check_fixed_point_args(zs, fzs, at::kCPU, op);
  const int64_t B = zs[0].size(0);
  const size_t T = zs.size();
  std::vector<SampleRows> rows;
  std::vector<at::Tensor> outs;
  std::vector<int64_t> first_chunk(T + 1, 0);  // chunk columns of tensor t: [first_chunk[t], first_chunk[t+1])
  for (size_t t = 0; t < T; ++t) {
    rows.push_back(sample_rows(zs[t], fzs[t]));
    outs.push_back(at::empty_like(rows.back().a));
    first_chunk[t + 1] = first_chunk[t] + ceil_div(rows.back().n, kChunk);
  }
  const int64_t C = first_chunk[T];
  const auto acc = acc_type(zs[0].scalar_type());
  auto res = at::empty({B}, zs[0].options().dtype(acc));
  auto fzn = at::empty({B}, zs[0].options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zs[0].scalar_type(), "lmdeq_fixed_point_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> r2(B * C, acc_t(0)), f2(B * C, acc_t(0));
    const acc_t tau_a = static_cast<acc_t>(tau), keep = static_cast<acc_t>(1.0 - tau);
    at::parallel_for(0, B * C, grain_for(kChunk), [&](int64_t begin, int64_t end) {
      size_t t = 0;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / C, col = task % C;
        while (col >= first_chunk[t + 1]) ++t;
        while (col < first_chunk[t]) --t;
        const int64_t n = rows[t].n, start = (col - first_chunk[t]) * kChunk;
        const int64_t len = std::min(kChunk, n - start), off = b * n + start;
        update_chunk<scalar_t, acc_t>(rows[t].a.const_data_ptr<scalar_t>() + off,
                                      rows[t].b.const_data_ptr<scalar_t>() + off,
                                      outs[t].mutable_data_ptr<scalar_t>() + off, len, keep, tau_a, &r2[task],
                                      &f2[task]);
      }
    });
    acc_t* res_p = res.mutable_data_ptr<acc_t>();
    acc_t* fzn_p = fzn.mutable_data_ptr<acc_t>();
    for (int64_t b = 0; b < B; ++b) {
      acc_t rs = 0, fs = 0;
      for (int64_t c = 0; c < C; ++c) {
        rs += r2[b * C + c];
        fs += f2[b * C + c];
      }
      res_p[b] = std::sqrt(rs);
      fzn_p[b] = std::sqrt(fs);
    }
  });
  return {outs, res, fzn};
}


}  // namespace
}  // namespace cpu
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CPU, m) {
  m.impl("fixed_point_update_multi", &lmdeq::cpu::fixed_point_update_multi);
}
