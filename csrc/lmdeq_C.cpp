// The lmdeq._C extension: op schemas (namespace lmdeq_C) and the Python module that carries the build
// facts the Python side checks on load (torch version compiled against, CUDA, compiler).
//
// Kernels register themselves per device in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA);
// conv_power_iteration.cpp holds the device-generic conv power iteration registered for both.
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#ifdef LMDEQ_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#define LMDEQ_STR2(x) #x
#define LMDEQ_STR(x) LMDEQ_STR2(x)

TORCH_LIBRARY(lmdeq_C, m) {
  m.def("fixed_point_update_multi(Tensor[] zs, Tensor[] fzs, float tau) -> (Tensor[], Tensor, Tensor)");
  m.def("anderson_gram_row(Tensor X, Tensor F, int k) -> Tensor");
  m.def("anderson_mix(Tensor X, Tensor F, Tensor alpha, float tau) -> Tensor");
  m.def("power_iteration_matrices(Tensor[] weights, Tensor[] us, int n_iter) -> (Tensor, Tensor[])");
  m.def(
      "conv_power_iteration(Tensor[] weights, Tensor[] vs, int[] strides, int[] paddings, int n_iter)"
      " -> (Tensor, Tensor[])");
}

static PyModuleDef lmdeq_C_module = {PyModuleDef_HEAD_INIT, "_C",
                                     "lmdeq's compiled kernels; the ops live in torch.ops.lmdeq_C.", -1,
                                     nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&lmdeq_C_module);
  if (mod == nullptr) return nullptr;
  PyModule_AddStringConstant(mod, "torch_version",
                             LMDEQ_STR(TORCH_VERSION_MAJOR) "." LMDEQ_STR(TORCH_VERSION_MINOR) "." LMDEQ_STR(
                                 TORCH_VERSION_PATCH));
#if defined(__clang__)
  PyModule_AddStringConstant(mod, "compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  PyModule_AddStringConstant(mod, "compiler", "gcc " __VERSION__);
#else
  PyModule_AddStringConstant(mod, "compiler", "unknown");
#endif
#ifdef LMDEQ_WITH_CUDA
  PyModule_AddIntConstant(mod, "with_cuda", 1);
  PyModule_AddIntConstant(mod, "cuda_runtime_version", CUDART_VERSION);
#else
  PyModule_AddIntConstant(mod, "with_cuda", 0);
  PyModule_AddIntConstant(mod, "cuda_runtime_version", 0);
#endif
  return mod;
}
