// The control of scripts/direct_calls.py's crash diagnosis: one op, nst_ext_control::checked, that
// checks its argument as nst_ext's ops do (TORCH_CHECK, a C++ exception that torch turns into a
// Python RuntimeError) and otherwise copies it. Built with the same torch.utils.cpp_extension
// toolchain as nst_ext (nvcc for the CUDA unit beside it), it tells a crash in nst_ext's own code
// from one in how this machine's build carries a C++ error into Python: if a bad call of this op
// crashes too, the fault is not in nst_ext's kernels.
#include <torch/library.h>
#include <ATen/ATen.h>

namespace nst_ext_control {

at::Tensor checked(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "nst_ext_control: features must be 4-D (B, C, H, W), got ", features.dim(), "-D");
  return features.clone();
}

TORCH_LIBRARY(nst_ext_control, m) { m.def("checked(Tensor features) -> Tensor"); }

TORCH_LIBRARY_IMPL(nst_ext_control, CPU, m) { m.impl("checked", &checked); }

}  // namespace nst_ext_control
