// The GPU's side of the BLAS paths (used by gram_cuda.cu alone): cuBLAS takes
// float16/bfloat16 operands on tensor cores with float32 accumulation and
// output, so nothing is widened.
#pragma once

#include <ATen/ATen.h>

#include "../common.h"

namespace nst_ext {
namespace cuda_blas {

// The unscaled product F F^T, (B, C, C) in the accumulation dtype, by cuBLAS.
inline at::Tensor blas_gram_product(const at::Tensor& features) {
    const at::ScalarType acc = accumulation_dtype(features.scalar_type());
    const auto [a, b] = gram_operands(features);
    return features.scalar_type() == acc ? at::bmm(a, b) : at::bmm(a, b, acc);
}

// grad_features = S @ F (common.h, multiply_symmetric_as_laid); float16/bfloat16
// features multiply on tensor cores.
inline at::Tensor multiply_symmetric(const at::Tensor& S, const at::Tensor& features) {
    return multiply_symmetric_as_laid(S, features, features.scalar_type() != S.scalar_type());
}

}  // namespace cuda_blas
}  // namespace nst_ext
