// The CPU's side of the BLAS paths (used by gram_cpu.cpp alone): MKL/oneDNN
// have no mixed-dtype batched GEMM, so float16/bfloat16 features are widened to
// float32 a slab at a time, except where the CPU multiplies bfloat16 natively.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"

namespace nst_ext {
namespace cpu_blas {

// Widening all the features at once would cost, for relu1_1 of a 2048 px
// picture, a 1 GiB copy and, in the backward, a 1 GiB float32 product besides
// the result: so they are widened a slab of spatial positions at a time, each
// slab about this many bytes.
constexpr int64_t kWideningSlabBytes = int64_t{16} << 20;

inline int64_t widening_slab(int64_t channels) {
    return std::max<int64_t>(1024, kWideningSlabBytes / (channels * 4));
}

// Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): oneDNN's
// own answer, the one nst_ext.plan.options.cpu_has_native_bfloat16 reads.
inline bool cpu_has_native_bfloat16() {
    static const bool native = [] {
        const auto handle =
            c10::Dispatcher::singleton().findSchema({"mkldnn::_is_mkldnn_bf16_supported", ""});
        return handle.has_value() && handle->typed<bool()>().call();
    }();
    return native;
}

// The unscaled product F F^T, (B, C, C) in the accumulation dtype, by MKL/oneDNN
// (float16/bfloat16 widened to float32 a slab at a time, the products summed).
inline at::Tensor blas_gram_product(const at::Tensor& features) {
    const at::ScalarType acc = accumulation_dtype(features.scalar_type());
    const auto [a, b] = gram_operands(features);
    if (features.scalar_type() == acc) return at::bmm(a, b);
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

// grad_features = S @ F (common.h, multiply_symmetric_as_laid). bfloat16
// features on a CPU with native bfloat16 multiply in bfloat16 with float32
// accumulation (oneDNN; 3-6x faster than widening on VGG19's 512 px shapes,
// BENCHMARKS.md); other float16/bfloat16 features are widened a slab at a time,
// each slab's product written into the result.
inline at::Tensor multiply_symmetric(const at::Tensor& S, const at::Tensor& features) {
    const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
    const at::ScalarType dtype = features.scalar_type(), acc = S.scalar_type();
    const bool native_bfloat16 = dtype == at::kBFloat16 && cpu_has_native_bfloat16();
    if (dtype == acc || native_bfloat16)
        return multiply_symmetric_as_laid(S, features, native_bfloat16);
    const bool channels_last = layout_of(features) == Layout::kChannelsLast;
    at::Tensor result = at::empty_like(
        features, channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
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

}  // namespace cpu_blas
}  // namespace nst_ext
