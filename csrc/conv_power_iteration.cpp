// Power iteration on convolution operators A_l x = conv2d(x, W_l, stride_l, padding_l), all layers in
// one op call (no Python round trip per layer). Device-generic: the convolutions are ATen's (cuDNN on
// CUDA); the per-iteration normalisation of all layers is one multi-tensor kernel (normalize_tensors.h).
//   v_l <- v_l / max(||v_l||, eps);  n_iter times: v_l <- A_l^T A_l v_l / max(||A_l^T A_l v_l||, eps)
//   sigma_l = ||A_l v_l||  (a lower estimate of ||A_l||_2)
// A_l^T is conv_transpose2d with the output padding that restores v_l's spatial size (numerics.h).
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "normalize_tensors.h"
#include "op_args.h"

namespace lmdeq {
namespace {

at::Tensor normalize(const std::vector<at::Tensor>& ts, bool scale, bool cuda) {
#ifdef LMDEQ_WITH_CUDA
  if (cuda) return normalize_tensors_cuda(ts, scale);
#endif
  TORCH_CHECK(!cuda, "lmdeq_C::conv_power_iteration: built without CUDA");
  return normalize_tensors_cpu(ts, scale);
}

template <bool kCuda>
std::tuple<at::Tensor, std::vector<at::Tensor>> conv_power_iteration(at::TensorList weights, at::TensorList vs,
                                                                      at::IntArrayRef strides,
                                                                      at::IntArrayRef paddings, int64_t n_iter) {
  const char* op = "lmdeq_C::conv_power_iteration";
  const size_t L = weights.size();
  TORCH_CHECK(vs.size() == L && strides.size() == L && paddings.size() == L, op,
              ": 'weights', 'vs', 'strides' and 'paddings' must have equal lengths, got ", L, ", ", vs.size(), ", ",
              strides.size(), ", ", paddings.size());
  TORCH_CHECK(n_iter >= 0, op, ": argument 'n_iter' must be >= 0, got ", n_iter);
  const auto type = kCuda ? at::kCUDA : at::kCPU;
  std::vector<at::Tensor> v, u(L);
  std::vector<std::vector<int64_t>> out_pad(L);
  for (size_t l = 0; l < L; ++l) {
    const std::string wn = indexed("weights", l), vn = indexed("vs", l);
    check_float(weights[l], op, wn);
    check_float(vs[l], op, vn);
    check_device(weights[l], type, op, wn);
    check_same_dtype_device(vs[l], weights[l], op, vn, wn);
    if (l > 0) check_same_dtype_device(weights[l], weights[0], op, wn, "weights[0]");
    TORCH_CHECK(weights[l].dim() == 4, op, ": argument '", wn, "' must be 4-d (C_out, C_in, kH, kW), got shape ",
                weights[l].sizes());
    TORCH_CHECK(vs[l].dim() == 4 && vs[l].size(0) == 1 && vs[l].size(1) == weights[l].size(1), op, ": argument '",
                vn, "' must have shape (1, ", weights[l].size(1), ", H, W), got ", vs[l].sizes());
    TORCH_CHECK(strides[l] >= 1, op, ": argument 'strides[", l, "]' must be >= 1, got ", strides[l]);
    TORCH_CHECK(paddings[l] >= 0, op, ": argument 'paddings[", l, "]' must be >= 0, got ", paddings[l]);
    for (int d = 0; d < 2; ++d) {
      const int64_t in = vs[l].size(2 + d), k = weights[l].size(2 + d), s = strides[l], p = paddings[l];
      TORCH_CHECK(in + 2 * p >= k, op, ": argument '", vn, "' is spatially smaller than the kernel of '", wn, "'");
      out_pad[l].push_back(conv_transpose_output_padding(in, conv_output_size(in, k, s, p), k, s, p));
    }
    v.push_back(vs[l].contiguous().clone());
  }
  const auto dtype = L ? weights[0].scalar_type() : at::kFloat;
  if (L == 0) return {at::empty({0}, at::TensorOptions().dtype(dtype)), v};
  normalize(v, true, kCuda);
  for (int64_t it = 0; it < n_iter; ++it) {
    for (size_t l = 0; l < L; ++l) {
      const auto s = strides[l], p = paddings[l];
      at::Tensor a = at::conv2d(v[l], weights[l], {}, {s, s}, {p, p});
      v[l] = at::conv_transpose2d(a, weights[l], {}, {s, s}, {p, p}, out_pad[l]).contiguous();
    }
    normalize(v, true, kCuda);
  }
  for (size_t l = 0; l < L; ++l)
    u[l] = at::conv2d(v[l], weights[l], {}, {strides[l], strides[l]}, {paddings[l], paddings[l]}).contiguous();
  at::Tensor sigmas = normalize(u, false, kCuda).to(dtype);
  return {sigmas, v};
}

}  // namespace
}  // namespace lmdeq

TORCH_LIBRARY_IMPL(lmdeq_C, CPU, m) { m.impl("conv_power_iteration", &lmdeq::conv_power_iteration<false>); }

#ifdef LMDEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(lmdeq_C, CUDA, m) { m.impl("conv_power_iteration", &lmdeq::conv_power_iteration<true>); }
#endif
