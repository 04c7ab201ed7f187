// CPU side of normalize_tensors.h: per tensor, a lane-parallel sum of squares, then one scaling pass.
#include "../normalize_tensors.h"

#include <ATen/OpMathType.h>

#include <cmath>

#include "../op_args.h"
#include "lanes.h"

namespace lmdeq {

at::Tensor normalize_tensors_cpu(const std::vector<at::Tensor>& ts, bool scale) {
  const auto dtype = ts.at(0).scalar_type();
  auto norms = at::empty({static_cast<int64_t>(ts.size())}, ts[0].options().dtype(acc_type(dtype)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lmdeq_normalize_tensors_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* out = norms.mutable_data_ptr<acc_t>();
    for (size_t l = 0; l < ts.size(); ++l) {
      scalar_t* x = ts[l].mutable_data_ptr<scalar_t>();
      const int64_t n = ts[l].numel();
      cpu::Lanes<acc_t> acc;
      int64_t i = 0;
      for (; i + cpu::kLanes <= n; i += cpu::kLanes)
        for (int j = 0; j < cpu::kLanes; ++j) {
          const acc_t v = static_cast<acc_t>(x[i + j]);
          acc.v[j] += v * v;
        }
      for (int j = 0; i + j < n; ++j) {
        const acc_t v = static_cast<acc_t>(x[i + j]);
        acc.v[j] += v * v;
      }
      out[l] = std::sqrt(acc.sum());
      if (scale) {
        const acc_t inv = acc_t(1) / std::max(out[l], static_cast<acc_t>(kNormEps));
        for (int64_t k = 0; k < n; ++k) x[k] = static_cast<scalar_t>(static_cast<acc_t>(x[k]) * inv);
      }
    }
  });
  return norms;
}

}  // namespace lmdeq
