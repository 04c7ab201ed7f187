// Multi-tensor l2 normalisation used by the conv power iteration: for every tensor t_l of a list,
//   norms[l] = ||t_l||_2 (fp32, fp64 for fp64 tensors),   t_l <- t_l / max(norms[l], eps) if `scale`.
// One pass to reduce and one to scale per tensor, all tensors in one call (one launch per 32 on CUDA).
// Tensors must be contiguous, of one dtype and on one device.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace lmdeq {

at::Tensor normalize_tensors_cpu(const std::vector<at::Tensor>& ts, bool scale);
#ifdef LMDEQ_WITH_CUDA
at::Tensor normalize_tensors_cuda(const std::vector<at::Tensor>& ts, bool scale);
#endif

}  // namespace lmdeq
