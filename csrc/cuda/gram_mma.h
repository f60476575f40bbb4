// The tensor-core Gram and fused style loss (gram_mma.cu): the host interface that gram_cuda.cu
// calls. Plain CUDA runtime types only, so gram_mma.cu compiles without ATen (the PTX check in
// tests/test_mma_layout.py compiles it alone).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace nst_ext {
namespace mma {

enum class ElementType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

// One forward: features (B, C, n) with rows of n positions (NCHW) or (B, n, C) (channels-last),
// of `element` type. out is (B, C, C) float32: the Gram G = F F^T / n, or with a target (B_t, C,
// C) float32 (B_t = 1 broadcast: target_batch_stride 0) the residual G - target, and then *loss =
// mean of the residual's squares over B C C entries.
struct Problem {
    const void* features;
    ElementType element;
    bool channels_last;
    int64_t batch, channels, positions;
    float* out;
    const float* target;          // null for the Gram alone
    int64_t target_batch_stride;  // C * C, or 0 for a broadcast target
    float* loss;                  // one float32, with a target
};

// Whether the kernel takes this problem: compute capability 8.0 or newer (mma.sync with bf16,
// cp.async), 16-byte aligned features and rows (NCHW: n a multiple of 16 / element bytes;
// channels-last: C one), batch and channel counts within the grid's limits.
bool supports(const Problem& problem, int compute_capability_major);

// The launch for a problem on a GPU: its tile, grid and the scratch memory it needs.
struct Plan {
    int tile;                 // 64 or 128
    int tiles;                // per side of C x C
    int upper_tiles;          // in the upper triangle
    int splits;               // of the inner dimension
    int64_t split_length;     // positions per split
    size_t workspace_floats;  // the splits' partial tiles (0 without a split)
    size_t
        counter_count;  // unsigned counters, zeroed before the launch; the kernel leaves them zero
    size_t loss_partials;  // floats, one per tile and batch item
};

Plan plan(const Problem& problem, int multiprocessors);

// Launches the kernel on stream. workspace, counters (zeroed) and loss_partials as the plan says.
cudaError_t launch(const Problem& problem, const Plan& plan, float* workspace, unsigned* counters,
                   float* loss_partials, cudaStream_t stream);

}  // namespace mma
}  // namespace nst_ext
