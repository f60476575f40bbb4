// What the CPU and CUDA kernels share: argument checks, the accumulation
// dtype, the gradient formulas' constants, the BLAS paths that work on the
// features as they lie in memory (NCHW or channels-last, no copy), and the
// per-shape choice between our own Gram kernel and the BLAS library's product.
// The Python wrappers already reject bad input with a readable
// ValueError/TypeError; these checks guard direct calls of torch.ops.nst_ext.*
// so a kernel never reads out of bounds.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

namespace nst_ext {

// The dtypes the ops claim; at::isFloatingType would also admit float8 types.
inline bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

inline void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4,
              "nst_ext: features must be 4-D (B, C, H, W), got ",
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

// On the CPU, float16/bfloat16 features are widened to float32 for the BLAS
// (it has no mixed-dtype batched GEMM). Widening all of them at once would
// cost, for relu1_1 of a 2048 px picture, a 1 GiB copy and, in the backward,
// a 1 GiB float32 product besides the result: so they are widened a slab of
// spatial positions at a time, each slab about this many bytes.
constexpr int64_t kWideningSlabBytes = int64_t{16} << 20;

inline int64_t widening_slab(int64_t channels) {
  return std::max<int64_t>(1024, kWideningSlabBytes / (channels * 4));
}

// The unscaled product F F^T, (B, C, C) in the accumulation dtype, by the BLAS
// library: cuBLAS on CUDA (float16/bfloat16 on tensor cores with float32
// accumulation and output), MKL/oneDNN on the CPU (float16/bfloat16 widened to
// float32 a slab at a time, the products summed).
inline at::Tensor blas_gram_product(const at::Tensor& features) {
  const at::ScalarType acc = accumulation_dtype(features.scalar_type());
  const bool reduced = features.scalar_type() != acc;
  const auto [a, b] = gram_operands(features);
  if (!reduced) return at::bmm(a, b);
  if (features.is_cuda()) return at::bmm(a, b, acc);
  const int64_t C = features.size(1), n = spatial_size(features), slab = widening_slab(C);
  // a is (B, C, n) and b (B, n, C), either as views of the same features.
  at::Tensor product = at::zeros({features.size(0), C, C}, features.options().dtype(acc));
  for (int64_t start = 0; start < n; start += slab) {
    const int64_t length = std::min(slab, n - start);
    const at::Tensor rows = b.narrow(1, start, length).to(acc);  // (B, length, C)
    product.baddbmm_(rows.transpose(1, 2), rows);
  }
  return product;
}

// Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): oneDNN's
// own answer, the one nst_ext.options.cpu_has_native_bfloat16 reads.
inline bool cpu_has_native_bfloat16() {
  static const bool native = [] {
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_is_mkldnn_bf16_supported", ""});
    return handle.has_value() && handle->typed<bool()>().call();
  }();
  return native;
}

// grad_features = S @ F for a symmetric S (B, C, C) in the accumulation dtype,
// shaped and typed like features. For channels-last features it is computed
// as X @ S (= (S F)^T since S = S^T) and returned channels-last, with no copy
// of the features. On CUDA, float16/bfloat16 features multiply on tensor
// cores with float32 accumulation: S is rounded to bfloat16 as it is, and to
// float16 after division by max|S| (its range would under- or overflow),
// the product then taken in float32 and scaled back. On a CPU with native
// bfloat16, bfloat16 features multiply the same way as on CUDA (oneDNN,
// float32 accumulation; 3-6x faster than widening on VGG19's 512 px shapes,
// BENCHMARKS.md); elsewhere float16/bfloat16 features are widened a slab at
// a time, each slab's product written into the result.
inline at::Tensor multiply_symmetric(const at::Tensor& S, const at::Tensor& features) {
  const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
  const at::ScalarType dtype = features.scalar_type(), acc = S.scalar_type();
  const bool channels_last = layout_of(features) == Layout::kChannelsLast;
  const bool cpu_bfloat16 = !features.is_cuda() && dtype == at::kBFloat16 && cpu_has_native_bfloat16();
  if (!features.is_cuda() && dtype != acc && !cpu_bfloat16) {
    at::Tensor result = at::empty_like(features, channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous);
    const int64_t slab = widening_slab(C);
    if (channels_last) {
      const at::Tensor X = features.permute({0, 2, 3, 1}).reshape({B, n, C});
      const at::Tensor out = result.permute({0, 2, 3, 1}).view({B, n, C});
      for (int64_t start = 0; start < n; start += slab) {
        const int64_t length = std::min(slab, n - start);
        out.narrow(1, start, length).copy_(at::bmm(X.narrow(1, start, length).to(acc), S));
      }
    } else {
      const at::Tensor F = features.contiguous().view({B, C, n});
      const at::Tensor out = result.view({B, C, n});
      for (int64_t start = 0; start < n; start += slab) {
        const int64_t length = std::min(slab, n - start);
        out.narrow(2, start, length).copy_(at::bmm(S, F.narrow(2, start, length).to(acc)));
      }
    }
    return result;
  }
  // The product in the features' own dtype, float32 accumulation (tensor cores, oneDNN bfloat16).
  const bool reduced_product = (features.is_cuda() && dtype != acc) || cpu_bfloat16;
  const at::Tensor x = features;
  at::Tensor product;
  auto multiply = [&](const at::Tensor& s, std::optional<at::ScalarType> out_dtype) {
    if (channels_last) {
      const at::Tensor X = x.permute({0, 2, 3, 1}).reshape({B, n, C});
      return out_dtype ? at::bmm(X, s, *out_dtype) : at::bmm(X, s);
    }
    const at::Tensor F = x.contiguous().view({B, C, n});
    return out_dtype ? at::bmm(s, F, *out_dtype) : at::bmm(s, F);
  };
  if (reduced_product && dtype == at::kHalf) {
    const at::Tensor range = S.abs().amax().clamp_min_(1e-30);
    product = multiply(S.div(range).to(dtype), acc).mul_(range);
  } else if (reduced_product) {
    product = multiply(S.to(dtype), std::nullopt);
  } else {
    product = multiply(S, std::nullopt);
  }
  const at::Tensor shaped = channels_last
      ? product.view({B, features.size(2), features.size(3), C}).permute({0, 3, 1, 2})
      : product.view(features.sizes());
  return shaped.to(dtype);
}

// ---------------------------------------------------------------------------
// The forward's safety net, like cuDNN's benchmark mode: on the first call for
// a device, op, dtype, shape and layout, our own Gram kernel and the BLAS path
// are both timed and the faster is kept for every later call, so the compiled
// op is never slower than the library's product. NST_EXT_GRAM_ALGORITHM=own or
// =blas (or nst_ext.set_gram_algorithm) forces one; "auto" is the default.
// Defined in ops.cpp, the one place that holds the choices.

enum class Algorithm : int { kOwn = 0, kBlas = 1 };

struct ForwardKey {
  int device_type;   // c10::DeviceType
  int device_index;
  int op;            // 0 gram, 1 style_loss
  int dtype;         // at::ScalarType
  int64_t batch, channels, spatial;
  int layout;        // Layout
  bool operator<(const ForwardKey& other) const;
};

ForwardKey forward_key(const at::Tensor& features, int op);

// run(algorithm) runs one candidate; time(run_once) returns its seconds (the
// backend's clock: wall time on the CPU, CUDA events on the GPU). When
// can_time is false (a CUDA graph being captured) and nothing is cached yet,
// returns kBlas without caching.
Algorithm choose_forward_algorithm(const ForwardKey& key,
                                   const std::function<void(Algorithm)>& run,
                                   const std::function<double(const std::function<void()>&)>& time,
                                   bool can_time);

}  // namespace nst_ext
