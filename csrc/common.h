// What the CPU and CUDA kernels share: argument checks, the accumulation
// dtype, and the gradient formulas' constants. The Python wrappers already
// reject bad input with a readable ValueError/TypeError; these checks guard
// direct calls of torch.ops.nst_ext.* so a kernel never reads out of bounds.
#pragma once

#include <ATen/ATen.h>

namespace nst_ext {

inline void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4,
              "nst_ext: features must be 4-D (B, C, H, W), got ",
              features.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(features.scalar_type()),
              "nst_ext: features must be a floating-point tensor, got ",
              features.scalar_type());
  TORCH_CHECK(features.numel() > 0, "nst_ext: features must not be empty");
}

// float16/bfloat16/float32 accumulate (and return Grams) in float32.
inline at::ScalarType accumulation_dtype(at::ScalarType features_dtype) {
  return features_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_square(const at::Tensor& matrix, const at::Tensor& features,
                         const char* name, bool allow_broadcast) {
  const int64_t B = features.size(0), C = features.size(1);
  const bool shape_ok =
      (allow_broadcast && matrix.dim() == 2 && matrix.size(0) == C &&
       matrix.size(1) == C) ||
      (matrix.dim() == 3 && matrix.size(1) == C && matrix.size(2) == C &&
       (matrix.size(0) == B || (allow_broadcast && matrix.size(0) == 1)));
  TORCH_CHECK(shape_ok, "nst_ext: ", name, " must have shape (", B, ", ", C,
              ", ", C, ")", allow_broadcast ? " or (C, C)" : "", ", got ",
              matrix.sizes());
  TORCH_CHECK(matrix.scalar_type() ==
                  accumulation_dtype(features.scalar_type()),
              "nst_ext: ", name, " must have dtype ",
              accumulation_dtype(features.scalar_type()), ", got ",
              matrix.scalar_type());
  TORCH_CHECK(matrix.device() == features.device(), "nst_ext: ", name,
              " is on ", matrix.device(), " but features are on ",
              features.device());
}

// The target as (B_t, C, C) contiguous, B_t in {1, B}; its batch stride is 0
// when it is broadcast over the batch.
inline at::Tensor target_as_batched(const at::Tensor& target) {
  return (target.dim() == 2 ? target.unsqueeze(0) : target).contiguous();
}

inline int64_t spatial_size(const at::Tensor& features) {
  return features.size(2) * features.size(3);
}

// G = F F^T / n  =>  dL/dF = (dL/dG + dL/dG^T) F / n.
inline double gram_gradient_scale(const at::Tensor& features) {
  return 1.0 / static_cast<double>(spatial_size(features));
}

// L = mean((G - A)^2) over B*C*C entries, G = F F^T / n, R = G - A
//   =>  dL/dF = 2 / (B C^2 n) * (R + R^T) F.
inline double style_loss_gradient_scale(const at::Tensor& features) {
  const double entries = static_cast<double>(features.size(0) * features.size(1) * features.size(1));
  return 2.0 / (entries * static_cast<double>(spatial_size(features)));
}

}  // namespace nst_ext
