// Argument checks and memory-layout preparation shared by the CPU and CUDA kernels of every op.
// Errors name the op and the argument (TORCH_CHECK raises RuntimeError/ValueError-like c10::Error).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "numerics.h"

namespace lmdeq {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline std::string indexed(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

inline void check_float(const at::Tensor& t, const char* op, const std::string& arg) {
  TORCH_CHECK(t.defined(), op, ": argument '", arg, "' is undefined");
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": argument '", arg,
              "' must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same_dtype_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                                    const std::string& arg, const std::string& ref_arg) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": argument '", arg, "' has dtype ", t.scalar_type(),
              " but '", ref_arg, "' has dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", arg, "' is on ", t.device(), " but '", ref_arg,
              "' is on ", ref.device());
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& ref, const char* op, const std::string& arg,
                             const std::string& ref_arg) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": argument '", arg, "' has shape ", t.sizes(), " but '", ref_arg,
              "' has shape ", ref.sizes());
}

inline void check_device(const at::Tensor& t, at::DeviceType type, const char* op, const std::string& arg) {
  TORCH_CHECK(t.device().type() == type, op, ": argument '", arg, "' is on ", t.device(), ", this kernel runs on ",
              c10::DeviceTypeName(type));
}

// A pair (z, fz) of equal shape (B, ...) viewed as B rows of n elements: sample b occupies elements
// [b n, (b+1) n) of both buffers. Dense tensors with equal strides and the batch as outermost
// dimension (contiguous, channels_last, ...) are used in place; anything else is made contiguous.
// The update is elementwise and the norms are sums over a sample, so the order inside a row is free.
struct SampleRows {
  at::Tensor a, b;
  int64_t batch = 0, n = 0;
};

inline bool rows_in_place(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || a.strides() != b.strides() || !a.is_non_overlapping_and_dense()) return false;
  const int64_t n = a.numel() / a.size(0);
  return a.size(0) == 1 || a.stride(0) == n;
}

inline SampleRows sample_rows(const at::Tensor& a, const at::Tensor& b) {
  SampleRows r;
  r.batch = a.size(0);
  r.n = 1;
  for (int64_t d = 1; d < a.dim(); ++d) r.n *= a.size(d);
  if (rows_in_place(a, b)) {
    r.a = a;
    r.b = b;
  } else {
    r.a = a.contiguous();
    r.b = b.contiguous();
  }
  return r;
}

// Checks of fixed_point_update_multi's arguments.
inline void check_fixed_point_args(at::TensorList zs, at::TensorList fzs, at::DeviceType type, const char* op) {
  TORCH_CHECK(!zs.empty(), op, ": argument 'zs' must hold at least one tensor");
  TORCH_CHECK(zs.size() == fzs.size(), op, ": 'zs' has ", zs.size(), " tensors but 'fzs' has ", fzs.size());
  for (size_t i = 0; i < zs.size(); ++i) {
    const std::string zn = indexed("zs", i), fn = indexed("fzs", i);
    check_float(zs[i], op, zn);
    check_float(fzs[i], op, fn);
    check_device(zs[i], type, op, zn);
    TORCH_CHECK(zs[i].dim() >= 1, op, ": argument '", zn, "' must have a batch dimension, got a 0-d tensor");
    check_same_dtype_device(fzs[i], zs[i], op, fn, zn);
    check_same_shape(fzs[i], zs[i], op, fn, zn);
    if (i > 0) {
      check_same_dtype_device(zs[i], zs[0], op, zn, "zs[0]");
      TORCH_CHECK(zs[i].size(0) == zs[0].size(0), op, ": argument '", zn, "' has batch size ", zs[i].size(0),
                  " but 'zs[0]' has ", zs[0].size(0));
    }
  }
}

// X, F: (B, m, n) history buffers with unit stride along n (made so if needed).
struct History {
  at::Tensor X, F;
  int64_t batch = 0, m = 0, n = 0;
};

inline History check_history(const at::Tensor& X, const at::Tensor& F, at::DeviceType type, const char* op) {
  check_float(X, op, "X");
  check_float(F, op, "F");
  check_device(X, type, op, "X");
  TORCH_CHECK(X.dim() == 3, op, ": argument 'X' must be 3-d (B, m, n), got shape ", X.sizes());
  check_same_dtype_device(F, X, op, "F", "X");
  check_same_shape(F, X, op, "F", "X");
  History h;
  h.X = X.stride(2) == 1 ? X : X.contiguous();
  h.F = F.stride(2) == 1 ? F : F.contiguous();
  h.batch = X.size(0);
  h.m = X.size(1);
  h.n = X.size(2);
  return h;
}

inline at::Tensor check_alpha(const at::Tensor& alpha, const History& h, const char* op) {
  check_float(alpha, op, "alpha");
  TORCH_CHECK(alpha.device() == h.X.device(), op, ": argument 'alpha' is on ", alpha.device(), " but 'X' is on ",
              h.X.device());
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == h.batch && alpha.size(1) == h.m, op,
              ": argument 'alpha' must have shape (B, m) = (", h.batch, ", ", h.m, "), got ", alpha.sizes());
  return alpha.to(acc_type(h.X.scalar_type())).contiguous();
}

// Power iteration on matrices: weights[l] (out_l, ...) reshaped to (out_l, in_l); us[l] (out_l,).
struct MatrixLayers {
  std::vector<at::Tensor> W, u;
  std::vector<int64_t> rows, cols;
};

inline MatrixLayers check_matrix_layers(at::TensorList weights, at::TensorList us, int64_t n_iter,
                                        at::DeviceType type, const char* op) {
  TORCH_CHECK(weights.size() == us.size(), op, ": 'weights' has ", weights.size(), " tensors but 'us' has ",
              us.size());
  TORCH_CHECK(n_iter >= 1, op, ": argument 'n_iter' must be >= 1, got ", n_iter);
  MatrixLayers L;
  for (size_t l = 0; l < weights.size(); ++l) {
    const std::string wn = indexed("weights", l), un = indexed("us", l);
    check_float(weights[l], op, wn);
    check_float(us[l], op, un);
    check_device(weights[l], type, op, wn);
    TORCH_CHECK(weights[l].dim() >= 2, op, ": argument '", wn, "' must have at least 2 dims, got shape ",
                weights[l].sizes());
    check_same_dtype_device(us[l], weights[l], op, un, wn);
    if (l > 0) check_same_dtype_device(weights[l], weights[0], op, wn, "weights[0]");
    const int64_t rows = weights[l].size(0);
    TORCH_CHECK(us[l].dim() == 1 && us[l].size(0) == rows, op, ": argument '", un, "' must have shape (", rows,
                ",), got ", us[l].sizes());
    L.W.push_back(weights[l].reshape({rows, -1}).contiguous());
    L.u.push_back(us[l].contiguous());
    L.rows.push_back(rows);
    L.cols.push_back(L.W.back().size(1));
  }
  return L;
}

}  // namespace lmdeq
