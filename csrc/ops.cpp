// Operator schemas of nst_ext: the single place that declares them.
//
// Kernels live per backend (csrc/cpu, csrc/cuda) and register themselves with
// TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd are registered from
// Python (nst_ext/_ops.py) so that torch.compile can trace through the ops.
//
// Shape and dtype contracts (B batch, C channels, H*W = n spatial positions):
//   gram(features[B,C,H,W]) -> gram[B,C,C]
//   gram_backward(grad_gram[B,C,C], features[B,C,H,W]) -> grad_features[B,C,H,W]
//   style_loss(features[B,C,H,W], target[C,C] | [1,C,C] | [B,C,C])
//       -> (loss[], residual[B,C,C])       residual = gram(features) - target
//   style_loss_backward(grad_loss[], features[B,C,H,W], residual[B,C,C])
//       -> grad_features[B,C,H,W]
// Gram, loss and residual use the accumulation dtype: float32 for
// float16/bfloat16/float32 features, float64 for float64 features. Gradients
// with respect to features have the features' dtype.

#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing nst_ext._C runs the static TORCH_LIBRARY initialisers below; the
// module itself exposes nothing else.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "nst_ext compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(nst_ext, m) {
  m.def("gram(Tensor features) -> Tensor");
  m.def("gram_backward(Tensor grad_gram, Tensor features) -> Tensor");
  m.def("style_loss(Tensor features, Tensor target) -> (Tensor, Tensor)");
  m.def(
      "style_loss_backward(Tensor grad_loss, Tensor features, Tensor residual) -> Tensor");
}
