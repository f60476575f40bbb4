// The masked (weighted) ops of spatial control (Gatys et al. 2017): a Gram
// matrix taken over a region, each position weighted by w >= 0,
//   G_w = F diag(w) F^T / sum(w),
// and the style loss against it, forward and backward. Both backends share
// this code and differ only in their Gram product and their product S @ F
// (csrc/cpu, csrc/cuda), which is why it is a template over those two: the
// per-shape algorithm choice of the unmasked forward serves the masked one.
//
// The forward is the unmasked Gram of the features scaled by sqrt(w) (a
// weighted Gram is the Gram of F diag(sqrt(w))), so the symmetric product,
// the triangle and the split of the long axis are those of the plain kernel;
// the scaling costs one elementwise pass (and, for float16/bfloat16 features,
// a float32 copy of them for the forward's duration). A region of zero total weight has
// G_w = 0 and no gradient. The weights are not differentiable (a mask is an
// input the user draws, not a quantity being optimised).
//
// Contracts (B batch, C channels, n = H*W):
//   masked_gram(features[B,C,H,W], weights[1|B,H,W]) -> gram[B,C,C]
//   masked_gram_backward(grad_gram[B,C,C], features, weights) -> grad_features
//   masked_style_loss(features, weights, target[C,C]|[1,C,C]|[B,C,C])
//       -> (loss[], residual[B,C,C])        residual = masked_gram - target
//   masked_style_loss_backward(grad_loss[], features, weights, residual[B,C,C])
//       -> grad_features
// weights have the accumulation dtype (common.h); gram, loss and residual too.
// grad_features has the features' dtype and layout rules of the unmasked ops.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common.h"

namespace nst_ext {

inline void check_weights(const at::Tensor& weights, const at::Tensor& features) {
    const int64_t B = features.size(0), H = features.size(2), W = features.size(3);
    TORCH_CHECK(weights.dim() == 3 && (weights.size(0) == 1 || weights.size(0) == B) &&
                    weights.size(1) == H && weights.size(2) == W,
                "nst_ext: weights must have shape (1, ", H, ", ", W, ") or (", B, ", ", H, ", ", W,
                "), got ", weights.sizes());
    TORCH_CHECK(weights.scalar_type() == accumulation_dtype(features.scalar_type()),
                "nst_ext: weights must have dtype ", accumulation_dtype(features.scalar_type()),
                ", got ", weights.scalar_type());
    TORCH_CHECK(weights.device() == features.device(), "nst_ext: weights are on ", weights.device(),
                " but features are on ", features.device());
}

// 1 / sum(w) per picture as (B, 1, 1), 0 where the region is empty.
inline at::Tensor inverse_mass(const at::Tensor& weights, int64_t batch) {
    const at::Tensor mass = weights.sum({1, 2}).expand({batch});
    return at::where(mass > 0, mass.reciprocal(), at::zeros_like(mass)).view({batch, 1, 1});
}

template <at::Tensor (*Gram)(const at::Tensor&),
          at::Tensor (*MultiplySymmetric)(const at::Tensor&, const at::Tensor&)>
struct MaskedOps {
    // G_w, (B, C, C): the unmasked Gram (which divides by n) of F diag(sqrt(w)), times n / sum(w).
    static at::Tensor forward(const at::Tensor& features, const at::Tensor& weights) {
        // Scaled in the accumulation dtype: sqrt(w) * F rounded to float16/bfloat16 would cost the
        // Gram a relative error of 1e-3 to 1e-2 that the unmasked ops do not have.
        const at::Tensor root = weights.sqrt().unsqueeze(1);  // (1|B, 1, H, W)
        const at::Tensor gram = Gram(features.to(weights.scalar_type()) * root);
        return gram.mul_(inverse_mass(weights, features.size(0)) *
                         static_cast<double>(spatial_size(features)));
    }

    // (S + S^T) scaled per picture, times F, times w at each position; S's scale (B, 1, 1).
    static at::Tensor symmetrized_times_weighted(const at::Tensor& X, const at::Tensor& scale,
                                                 const at::Tensor& features,
                                                 const at::Tensor& weights) {
        const at::Tensor S = (X + X.transpose(1, 2)) * scale;
        at::Tensor grad = MultiplySymmetric(S.contiguous(), features);
        return grad.mul_(
            weights.unsqueeze(1));  // in place: the gradient keeps its layout and dtype
    }

    static at::Tensor gram(const at::Tensor& features, const at::Tensor& weights) {
        check_features(features);
        check_weights(weights, features);
        return forward(features, weights);
    }

    static at::Tensor gram_backward(const at::Tensor& grad_gram, const at::Tensor& features,
                                    const at::Tensor& weights) {
        check_features(features);
        check_weights(weights, features);
        check_square(grad_gram, features, "grad_gram", /*allow_broadcast=*/false);
        return symmetrized_times_weighted(grad_gram, inverse_mass(weights, features.size(0)),
                                          features, weights);
    }

    static std::tuple<at::Tensor, at::Tensor> style_loss(const at::Tensor& features,
                                                         const at::Tensor& weights,
                                                         const at::Tensor& target) {
        check_features(features);
        check_weights(weights, features);
        check_square(target, features, "target", /*allow_broadcast=*/true);
        at::Tensor residual = forward(features, weights).sub_(target_as_batched(target));
        return {residual.square().mean(), residual};
    }

    // L = mean(R^2) over B*C*C entries, G_w = F diag(w) F^T / m_b, R = G_w - A
    //   =>  dL/dF = 2 / (B C^2 m_b) * (R + R^T) F diag(w).
    static at::Tensor style_loss_backward(const at::Tensor& grad_loss, const at::Tensor& features,
                                          const at::Tensor& weights, const at::Tensor& residual) {
        check_features(features);
        check_weights(weights, features);
        check_square(residual, features, "residual", /*allow_broadcast=*/false);
        TORCH_CHECK(grad_loss.numel() == 1, "nst_ext: grad_loss must be a scalar");
        const double entries =
            static_cast<double>(features.size(0) * features.size(1) * features.size(1));
        // The incoming gradient stays a tensor on the device: no host synchronisation on a GPU.
        const at::Tensor scale = inverse_mass(weights, features.size(0)) *
                                 grad_loss.reshape({}).to(residual.scalar_type()) * (2.0 / entries);
        return symmetrized_times_weighted(residual, scale, features, weights);
    }
};

}  // namespace nst_ext
