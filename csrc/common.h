// What the CPU and CUDA kernels share: argument checks, the accumulation
// dtype, the gradient formulas' constants, the operands and the gradient
// product on the features as they lie in memory (NCHW or channels-last, no
// copy), and the per-shape choice between our own Gram kernel and the BLAS
// library's product. What one backend alone needs lives beside its kernels
// (csrc/cpu/blas_cpu.h, csrc/cuda/blas_cuda.h).
// The Python wrappers already reject bad input with a readable
// ValueError/TypeError; these checks guard direct calls of torch.ops.nst_ext.*
// so a kernel never reads out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

namespace nst_ext {

// The dtypes the ops claim; at::isFloatingType would also admit float8 types.
inline bool is_supported_dtype(at::ScalarType dtype) {
    return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
           dtype == at::kDouble;
}

inline void check_features(const at::Tensor& features) {
    TORCH_CHECK(features.dim() == 4, "nst_ext: features must be 4-D (B, C, H, W), got ",
                features.dim(), "-D");
    TORCH_CHECK(is_supported_dtype(features.scalar_type()),
                "nst_ext: features must be float16, bfloat16, float32 or float64, got ",
                features.scalar_type());
    TORCH_CHECK(features.numel() > 0, "nst_ext: features must not be empty");
}

// float16/bfloat16/float32 accumulate (and return Grams) in float32.
inline at::ScalarType accumulation_dtype(at::ScalarType features_dtype) {
    return features_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_square(const at::Tensor& matrix, const at::Tensor& features, const char* name,
                         bool allow_broadcast) {
    const int64_t B = features.size(0), C = features.size(1);
    const bool shape_ok =
        (allow_broadcast && matrix.dim() == 2 && matrix.size(0) == C && matrix.size(1) == C) ||
        (matrix.dim() == 3 && matrix.size(1) == C && matrix.size(2) == C &&
         (matrix.size(0) == B || (allow_broadcast && matrix.size(0) == 1)));
    TORCH_CHECK(shape_ok, "nst_ext: ", name, " must have shape (", B, ", ", C, ", ", C, ")",
                allow_broadcast ? " or (C, C)" : "", ", got ", matrix.sizes());
    TORCH_CHECK(matrix.scalar_type() == accumulation_dtype(features.scalar_type()),
                "nst_ext: ", name, " must have dtype ", accumulation_dtype(features.scalar_type()),
                ", got ", matrix.scalar_type());
    TORCH_CHECK(matrix.device() == features.device(), "nst_ext: ", name, " is on ", matrix.device(),
                " but features are on ", features.device());
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
    const double entries =
        static_cast<double>(features.size(0) * features.size(1) * features.size(1));
    return 2.0 / (entries * static_cast<double>(spatial_size(features)));
}

// How the features lie in memory. NCHW-contiguous features are F (B, C, n)
// with rows contiguous; channels-last ones (what cuDNN's channels-last
// convolutions produce) are X = F^T (B, n, C). Anything else is copied to NCHW.
// A tensor that is both (C == 1 or H*W == 1) counts as NCHW.
enum class Layout : int { kNCHW = 0, kChannelsLast = 1, kOther = 2 };

inline Layout layout_of(const at::Tensor& features) {
    if (features.is_contiguous()) return Layout::kNCHW;
    if (features.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::kChannelsLast;
    return Layout::kOther;
}

// The operands (a, b) of G = a @ b = F F^T for features of any layout, as
// views where the layout allows: F and F^T for NCHW, X^T and X for
// channels-last; a copy to NCHW otherwise.
inline std::pair<at::Tensor, at::Tensor> gram_operands(const at::Tensor& features) {
    const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
    if (layout_of(features) == Layout::kChannelsLast) {
        const at::Tensor X = features.permute({0, 2, 3, 1}).reshape({B, n, C});
        return {X.transpose(1, 2), X};
    }
    const at::Tensor F = features.contiguous().view({B, C, n});
    return {F, F.transpose(1, 2)};
}

// grad_features = S @ F for a symmetric S (B, C, C) in the accumulation dtype,
// shaped and typed like features, on the features as they lie: for
// channels-last features it is computed as X @ S (= (S F)^T since S = S^T)
// and returned channels-last, with no copy of the features. With
// reduced_product, float16/bfloat16 features multiply in their own dtype with
// float32 accumulation (tensor cores on CUDA, oneDNN's bfloat16 on a CPU that
// has it): S is rounded to bfloat16 as it is, and to float16 after division by
// max|S| (its range would under- or overflow), the product then taken in
// float32 and scaled back. Otherwise the product is in S's dtype. Each
// backend's multiply_symmetric (csrc/cpu, csrc/cuda) decides which.
inline at::Tensor multiply_symmetric_as_laid(const at::Tensor& S, const at::Tensor& features,
                                             bool reduced_product) {
    const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
    const at::ScalarType dtype = features.scalar_type(), acc = S.scalar_type();
    const bool channels_last = layout_of(features) == Layout::kChannelsLast;
    auto multiply = [&](const at::Tensor& s, std::optional<at::ScalarType> out_dtype) {
        if (channels_last) {
            const at::Tensor X = features.permute({0, 2, 3, 1}).reshape({B, n, C});
            return out_dtype ? at::bmm(X, s, *out_dtype) : at::bmm(X, s);
        }
        const at::Tensor F = features.contiguous().view({B, C, n});
        return out_dtype ? at::bmm(s, F, *out_dtype) : at::bmm(s, F);
    };
    at::Tensor product;
    if (reduced_product && dtype == at::kHalf) {
        const at::Tensor range = S.abs().amax().clamp_min_(1e-30);
        product = multiply(S.div(range).to(dtype), acc).mul_(range);
    } else if (reduced_product) {
        product = multiply(S.to(dtype), std::nullopt);
    } else {
        product = multiply(S, std::nullopt);
    }
    const at::Tensor shaped =
        channels_last
            ? product.view({B, features.size(2), features.size(3), C}).permute({0, 3, 1, 2})
            : product.view(features.sizes());
    return shaped.to(dtype);
}

// ---------------------------------------------------------------------------
// The forward's safety net, like cuDNN's benchmark mode: on the first call for
// a device, op, dtype, shape and layout, our own Gram kernel is checked against
// the BLAS path on that input, then both are timed and the faster is kept for
// every later call, so the compiled op is never wrong where the library is
// right, nor slower than the library's product. NST_EXT_GRAM_ALGORITHM=own or
// =blas (or nst_ext.set_gram_algorithm) forces one; "auto" is the default.
// Defined in ops.cpp, the one place that holds the choices.

enum class Algorithm : int { kOwn = 0, kBlas = 1 };

struct ForwardKey {
    int device_type;  // c10::DeviceType
    int device_index;
    int op;     // 0 gram, 1 style_loss
    int dtype;  // at::ScalarType
    int64_t batch, channels, spatial;
    int layout;  // Layout
    bool operator<(const ForwardKey& other) const;
};

ForwardKey forward_key(const at::Tensor& features, int op);

// run(algorithm) runs one candidate as the op would; gram_of(algorithm) runs it and returns the
// Gram it computed, (B, C, C) in the accumulation dtype; time(run_once) returns its seconds (the
// backend's clock: wall time on the CPU, CUDA events on the GPU). Before any timing our kernel's
// Gram is checked against the BLAS product's on the same input: where it disagrees beyond the
// dtype's bound, is not finite where BLAS is, or raises, it is never chosen for that key (the
// choice is recorded as BLAS with our kernel failed, and one warning names the kernel, shape,
// device and error). When can_time is false (a CUDA graph being captured) and nothing is cached
// yet, returns kBlas without caching.
Algorithm choose_forward_algorithm(const ForwardKey& key, const std::function<void(Algorithm)>& run,
                                   const std::function<at::Tensor(Algorithm)>& gram_of,
                                   const std::function<double(const std::function<void()>&)>& time,
                                   bool can_time);

}  // namespace nst_ext
