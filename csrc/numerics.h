// Numerical facts shared by the CPU and CUDA kernels: the C++ copy of lmdeq/numerics.py (the Python home of
// each rule). tests/ops/test_shared_facts.py checks that the compiled kernels and the Python rules agree.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace lmdeq {

constexpr double kNormEps = 1e-12;  // NORM_EPS: the floor of a norm before it divides (F.normalize's eps)

// acc_dtype: float32 accumulation for every storage dtype except float64.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// conv_output_size, one side: conv2d with kernel k, stride s and padding p maps n to (n + 2p - k) / s + 1.
inline int64_t conv_output_size(int64_t n, int64_t k, int64_t s, int64_t p) { return (n + 2 * p - k) / s + 1; }

// conv_transpose_output_padding, one side: the output padding of conv_transpose2d that maps the conv's
// output size o back exactly to n.
inline int64_t conv_transpose_output_padding(int64_t n, int64_t o, int64_t k, int64_t s, int64_t p) {
  return n - ((o - 1) * s - 2 * p + k);
}

}  // namespace lmdeq
