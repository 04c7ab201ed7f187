// Shared pieces of the CUDA kernels: deterministic block reductions (fixed shuffle tree + fixed
// order over warps, no atomics), 16-byte packs for vectorised loads, launch helpers.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace lmdeq {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the kThreads threads of a block, returned to every thread. smem holds kWarps + 1 values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T s = lane < kWarps ? smem[lane] : T(0);
    s = warp_sum(s);
    if (lane == 0) smem[kWarps] = s;
  }
  __syncthreads();
  const T total = smem[kWarps];
  __syncthreads();
  return total;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace cuda
}  // namespace lmdeq
