// Deterministic fp32/fp64 reductions for the CPU kernels: a fixed number of independent accumulator
// lanes (vectorisable without -ffast-math) summed in a fixed order at the end.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lmdeq {
namespace cpu {

constexpr int kLanes = 16;
// Elements per parallel task. Partial sums are per (sample, chunk) and added in chunk order, so the
// result does not depend on the number of threads.
constexpr int64_t kChunk = 8192;

template <typename acc_t>
struct Lanes {
  acc_t v[kLanes] = {};
  acc_t sum() const {
    acc_t s = 0;
    for (int j = 0; j < kLanes; ++j) s += v[j];
    return s;
  }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Work below this many elements runs on the calling thread: waking the thread pool costs more than
// it saves, and on a busy machine a descheduled worker can stall a parallel region for milliseconds.
constexpr int64_t kMinParallelElements = int64_t(1) << 18;

// at::parallel_for grain (in tasks) for tasks of `task_elements` elements each.
inline int64_t grain_for(int64_t task_elements) {
  return std::max<int64_t>(1, ceil_div(kMinParallelElements, std::max<int64_t>(1, task_elements)));
}

}  // namespace cpu
}  // namespace lmdeq
