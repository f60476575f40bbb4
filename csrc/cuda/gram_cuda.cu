// CUDA kernels of nst_ext: Gram matrix and fused style loss, forward and
// backward.
//
// Forward, two algorithms, the faster kept per shape (common.h, ops.cpp):
//  * our own: on sm_80 and newer, where the features' rows are 16-byte aligned,
//    the tensor-core kernel of gram_mma.cu (one launch for the Gram, or the
//    residual and the loss, on the features as they lie, NCHW or channels-last).
//    Elsewhere (float64, older GPUs, unaligned rows) the FFMA kernel below: one
//    thread block per 64 x 64 tile of the upper triangle of G = F F^T / n (the
//    lower triangle is its mirror, so half the arithmetic of a general
//    product). Rows of F are staged through shared memory 32 columns at a
//    time, converted to the accumulation type (float for half/bfloat16), and
//    every thread accumulates a 4 x 4 block of outputs in registers. Where
//    there are too few tiles to fill the GPU (shallow layers: C = 64, n large)
//    the n axis is split across blocks; the splits' partial sums are added in
//    a fixed order by a second kernel, so results are deterministic. It reads
//    NCHW rows, so channels-last features are copied first.
//  * cuBLAS: the full product on the features as they lie (X^T X for
//    channels-last), half/bfloat16 on tensor cores with float32 accumulation,
//    then one epilogue kernel.
// The fused style loss computes residual = G - target and per-block sums of
// residual^2 in the epilogue of whichever kernel produces G; the FFMA and
// cuBLAS paths then sum those in a fixed order into the loss in one more
// small kernel.
// Backward: (X + X^T) is formed with the loss scale read on the device (no
// host synchronisation), then one batched GEMM with the features as they lie.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <functional>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "../common.h"
#include "../masked.h"
#include "blas_cuda.h"
#include "gram_mma.h"

namespace nst_ext {
namespace {

constexpr int kTile = 64;
constexpr int kDepth = 32;
constexpr int kThreadsPerDim = 16;
constexpr int kPerThread = kTile / kThreadsPerDim;
constexpr int kThreads = kThreadsPerDim * kThreadsPerDim;
constexpr int64_t kMinSplitLength = 256;

// Index of a tile in the upper triangle of a tiles x tiles grid, row-major,
// to its (row, col) with row <= col.
__device__ inline void decode_upper_tile(int index, int tiles, int& row, int& col) {
    row = 0;
    int first_of_row = 0;
    while (first_of_row + (tiles - row) <= index) {
        first_of_row += tiles - row;
        ++row;
    }
    col = row + (index - first_of_row);
}

// staged[kk][r] = F[row0 + r][k0 + kk], zero outside the matrix or past k_end.
// Consecutive threads read consecutive columns of one row (coalesced); the
// +1 padding of the row makes the transposed shared-memory stores conflict-free.
template <typename scalar_t, typename acc_t>
__device__ inline void stage_rows(const scalar_t* __restrict__ F, int64_t C, int64_t n,
                                  int64_t row0, int64_t k0, int64_t k_end,
                                  acc_t (*staged)[kTile + 1]) {
    for (int e = threadIdx.x; e < kTile * kDepth; e += kThreads) {
        const int r = e / kDepth, kk = e % kDepth;
        const int64_t row = row0 + r, k = k0 + kk;
        staged[kk][r] = (row < C && k < k_end) ? static_cast<acc_t>(F[row * n + k]) : acc_t(0);
    }
}

// Sum of value over the block (blockDim.x == kThreads); the result is valid
// in thread 0.
template <typename acc_t>
__device__ inline acc_t block_sum(acc_t value) {
    __shared__ acc_t scratch[kThreads];
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    return scratch[0];
}

// grid: (upper tiles, splits, B). Without kFused, writes the tile and its
// mirror into out[split][b] (scaled by inv_n when there is one split). With
// kFused (one split only), writes residual = G - target into out[b] and the
// block's sum of residual^2 into loss_partials[b][tile].
template <typename scalar_t, typename acc_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    gram_tiles_kernel(const scalar_t* __restrict__ F, int64_t C, int64_t n, int tiles,
                      int64_t split_length, acc_t inv_n, acc_t* __restrict__ out,
                      const acc_t* __restrict__ target, int64_t target_batch_stride,
                      acc_t* __restrict__ loss_partials) {
    __shared__ acc_t rows_i[kDepth][kTile + 1];
    __shared__ acc_t rows_j[kDepth][kTile + 1];

    int tile_row, tile_col;
    decode_upper_tile(blockIdx.x, tiles, tile_row, tile_col);
    const int64_t split = blockIdx.y, splits = gridDim.y;
    const int64_t b = blockIdx.z, B = gridDim.z;
    const int64_t i0 = static_cast<int64_t>(tile_row) * kTile;
    const int64_t j0 = static_cast<int64_t>(tile_col) * kTile;
    const int64_t k_begin = split * split_length;
    const int64_t k_end = k_begin + split_length < n ? k_begin + split_length : n;
    const scalar_t* Fb = F + b * C * n;
    const int tx = threadIdx.x % kThreadsPerDim, ty = threadIdx.x / kThreadsPerDim;

    acc_t acc[kPerThread][kPerThread];
#pragma unroll
    for (int p = 0; p < kPerThread; ++p)
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) acc[p][q] = acc_t(0);

    for (int64_t k0 = k_begin; k0 < k_end; k0 += kDepth) {
        stage_rows(Fb, C, n, i0, k0, k_end, rows_i);
        stage_rows(Fb, C, n, j0, k0, k_end, rows_j);
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < kDepth; ++kk) {
            acc_t a[kPerThread], c[kPerThread];
#pragma unroll
            for (int p = 0; p < kPerThread; ++p) {
                a[p] = rows_i[kk][ty + p * kThreadsPerDim];
                c[p] = rows_j[kk][tx + p * kThreadsPerDim];
            }
#pragma unroll
            for (int p = 0; p < kPerThread; ++p)
#pragma unroll
                for (int q = 0; q < kPerThread; ++q) acc[p][q] += a[p] * c[q];
        }
        __syncthreads();
    }

    if constexpr (!kFused) {
        const acc_t scale = splits == 1 ? inv_n : acc_t(1);
        acc_t* dst = out + (split * B + b) * C * C;
#pragma unroll
        for (int p = 0; p < kPerThread; ++p)
#pragma unroll
            for (int q = 0; q < kPerThread; ++q) {
                const int64_t i = i0 + ty + p * kThreadsPerDim, j = j0 + tx + q * kThreadsPerDim;
                // In a diagonal tile the pair (i, j), i > j, is the thread (j, i)'s.
                if (i < C && j < C && i <= j) {
                    const acc_t value = acc[p][q] * scale;
                    dst[i * C + j] = value;
                    if (i != j) dst[j * C + i] = value;
                }
            }
    } else {
        const acc_t* target_b = target + b * target_batch_stride;
        acc_t* residual = out + b * C * C;
        acc_t sum_sq = 0;
#pragma unroll
        for (int p = 0; p < kPerThread; ++p)
#pragma unroll
            for (int q = 0; q < kPerThread; ++q) {
                const int64_t i = i0 + ty + p * kThreadsPerDim, j = j0 + tx + q * kThreadsPerDim;
                // In a diagonal tile the pair (i, j), i > j, is the thread (j, i)'s.
                if (i < C && j < C && i <= j) {
                    const acc_t g = acc[p][q] * inv_n;
                    const acc_t upper = g - target_b[i * C + j];
                    residual[i * C + j] = upper;
                    sum_sq += upper * upper;
                    if (i != j) {
                        const acc_t lower = g - target_b[j * C + i];
                        residual[j * C + i] = lower;
                        sum_sq += lower * lower;
                    }
                }
            }
        const acc_t block_total = block_sum(sum_sq);
        if (threadIdx.x == 0) loss_partials[b * gridDim.x + blockIdx.x] = block_total;
    }
}

// out[e] = inv_n * sum_s partials[s][e] for e < total (= B*C*C), summed in
// split order. With kFused, out becomes the residual G - target and
// loss_partials[block] the block's sum of residual^2.
template <typename acc_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    reduce_splits_kernel(const acc_t* __restrict__ partials, int64_t splits, int64_t total,
                         int64_t CC, acc_t inv_n, acc_t* __restrict__ out,
                         const acc_t* __restrict__ target, int64_t target_batch_stride,
                         acc_t* __restrict__ loss_partials) {
    acc_t sum_sq = 0;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        acc_t sum = 0;
        for (int64_t s = 0; s < splits; ++s) sum += partials[s * total + e];
        const acc_t g = sum * inv_n;
        if constexpr (kFused) {
            const acc_t r = g - target[(e / CC) * target_batch_stride + e % CC];
            out[e] = r;
            sum_sq += r * r;
        } else {
            out[e] = g;
        }
    }
    if constexpr (kFused) {
        const acc_t block_total = block_sum(sum_sq);
        if (threadIdx.x == 0) loss_partials[blockIdx.x] = block_total;
    }
}

// loss[0] = inv_entries * sum of partials[0 .. count), summed in a fixed
// order by one block: the loss in one launch, deterministic.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finish_loss_kernel(const acc_t* __restrict__ partials, int64_t count, acc_t inv_entries,
                       acc_t* __restrict__ loss) {
    acc_t sum = 0;
    for (int64_t e = threadIdx.x; e < count; e += kThreads) sum += partials[e];
    const acc_t total = block_sum(sum);
    if (threadIdx.x == 0) *loss = total * inv_entries;
}

// S[b][i][j] = scale * (*device_scale if given) * (X[b][i][j] + X[b][j][i]).
template <typename acc_t>
__global__ void symmetrize_kernel(const acc_t* __restrict__ X, int64_t B, int64_t C, acc_t scale,
                                  const acc_t* __restrict__ device_scale, acc_t* __restrict__ S) {
    const int64_t total = B * C * C;
    const acc_t factor = device_scale != nullptr ? scale * *device_scale : scale;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t b = e / (C * C), i = (e / C) % C, j = e % C;
        S[e] = factor * (X[e] + X[(b * C + j) * C + i]);
    }
}

int grid_for(int64_t total) {
    return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
}

struct Launch {
    int tiles;             // tiles per side of C x C
    int upper_tiles;       // tiles in the upper triangle
    int64_t splits;        // splits of the n axis
    int64_t split_length;  // columns per split, a multiple of kDepth
};

// An attribute of a device, asked once per device and attribute. (ATen/cuda/CUDAContext.h would
// also pull in cuBLAS/cuSPARSE headers, which a bare CUDA toolkit may lack; the runtime API is all
// that is needed.)
template <cudaDeviceAttr kAttribute>
int device_attribute(int device) {
    static std::array<std::atomic<int>, 64> values{};
    if (device < 0 || device >= static_cast<int>(values.size())) device = 0;
    int value = values[device].load(std::memory_order_relaxed);
    if (value == 0) {
        C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttribute, device));
        values[device].store(value, std::memory_order_relaxed);
    }
    return value;
}

int multiprocessor_count(int device) {
    return device_attribute<cudaDevAttrMultiProcessorCount>(device);
}
int compute_capability_major(int device) {
    return device_attribute<cudaDevAttrComputeCapabilityMajor>(device);
}

Launch plan_launch(int64_t B, int64_t C, int64_t n, int device) {
    Launch plan{};
    plan.tiles = static_cast<int>((C + kTile - 1) / kTile);
    plan.upper_tiles = plan.tiles * (plan.tiles + 1) / 2;
    const int64_t sms = multiprocessor_count(device);
    const int64_t blocks = B * plan.upper_tiles;
    int64_t splits = 1;
    if (blocks < 2 * sms) {
        splits =
            std::min((2 * sms + blocks - 1) / blocks, (n + kMinSplitLength - 1) / kMinSplitLength);
    }
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
    int64_t length = (n + splits - 1) / splits;
    length = (length + kDepth - 1) / kDepth * kDepth;
    plan.split_length = length;
    plan.splits = (n + length - 1) / length;
    return plan;
}

// The loss of a fused forward from its per-block partial sums, one launch.
template <typename acc_t>
at::Tensor finish_loss(const at::Tensor& partials, int64_t entries, cudaStream_t stream) {
    at::Tensor loss = at::empty({}, partials.options());
    finish_loss_kernel<acc_t><<<1, kThreads, 0, stream>>>(
        partials.data_ptr<acc_t>(), partials.numel(), acc_t(1) / static_cast<acc_t>(entries),
        loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return loss;
}

// The FFMA kernel for F (B, C, n) contiguous. Without a target, writes the
// Gram into out. With a target (B_t, C, C), writes the residual into out and
// returns the loss.
at::Tensor ffma_forward(const at::Tensor& F, at::Tensor& out, const at::Tensor* target) {
    const int64_t B = F.size(0), C = F.size(1), n = F.size(2);
    TORCH_CHECK(B <= 65535, "nst_ext: batch size ", B, " exceeds the CUDA kernel's limit of 65535");
    const Launch plan = plan_launch(B, C, n, F.device().index());
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const bool fused = target != nullptr;
    at::Tensor loss;

    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, F.scalar_type(), "nst_ext::gram_cuda", [&] {
            using acc_t = at::opmath_type<scalar_t>;
            const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
            const acc_t* target_ptr = fused ? target->data_ptr<acc_t>() : nullptr;
            const int64_t target_batch_stride = fused && target->size(0) != 1 ? C * C : 0;
            const dim3 grid(plan.upper_tiles, static_cast<unsigned>(plan.splits),
                            static_cast<unsigned>(B));

            if (plan.splits == 1) {
                if (fused) {
                    at::Tensor partial_loss = at::empty({B * plan.upper_tiles}, out.options());
                    gram_tiles_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(
                        F.data_ptr<scalar_t>(), C, n, plan.tiles, plan.split_length, inv_n,
                        out.data_ptr<acc_t>(), target_ptr, target_batch_stride,
                        partial_loss.data_ptr<acc_t>());
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                    loss = finish_loss<acc_t>(partial_loss, B * C * C, stream);
                } else {
                    gram_tiles_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
                        F.data_ptr<scalar_t>(), C, n, plan.tiles, plan.split_length, inv_n,
                        out.data_ptr<acc_t>(), nullptr, 0, nullptr);
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                }
                return;
            }

            at::Tensor partials = at::empty({plan.splits, B, C, C}, out.options());
            gram_tiles_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
                F.data_ptr<scalar_t>(), C, n, plan.tiles, plan.split_length, inv_n,
                partials.data_ptr<acc_t>(), nullptr, 0, nullptr);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            const int64_t total = B * C * C;
            const int reduce_blocks = grid_for(total);
            if (fused) {
                at::Tensor partial_loss = at::empty({reduce_blocks}, out.options());
                reduce_splits_kernel<acc_t, true><<<reduce_blocks, kThreads, 0, stream>>>(
                    partials.data_ptr<acc_t>(), plan.splits, total, C * C, inv_n,
                    out.data_ptr<acc_t>(), target_ptr, target_batch_stride,
                    partial_loss.data_ptr<acc_t>());
                C10_CUDA_KERNEL_LAUNCH_CHECK();
                loss = finish_loss<acc_t>(partial_loss, total, stream);
            } else {
                reduce_splits_kernel<acc_t, false><<<reduce_blocks, kThreads, 0, stream>>>(
                    partials.data_ptr<acc_t>(), plan.splits, total, C * C, inv_n,
                    out.data_ptr<acc_t>(), nullptr, 0, nullptr);
                C10_CUDA_KERNEL_LAUNCH_CHECK();
            }
        });
    return loss;
}

// The tensor-core kernel (gram_mma.cu) on the features as they lie, where it takes them: then
// writes the Gram (or, with a target, the residual) into out, sets loss (fused) and returns true.
bool tensor_core_forward(const at::Tensor& features, at::Tensor& out, const at::Tensor* target,
                         at::Tensor& loss) {
    const Layout layout = layout_of(features);
    const at::ScalarType dtype = features.scalar_type();
    if (layout == Layout::kOther || dtype == at::kDouble) return false;
    mma::Problem problem{};
    problem.features = features.data_ptr();
    problem.element = dtype == at::kHalf       ? mma::ElementType::kFloat16
                      : dtype == at::kBFloat16 ? mma::ElementType::kBFloat16
                                               : mma::ElementType::kFloat32;
    problem.channels_last = layout == Layout::kChannelsLast;
    problem.batch = features.size(0);
    problem.channels = features.size(1);
    problem.positions = spatial_size(features);
    const int device = features.device().index();
    if (!mma::supports(problem, compute_capability_major(device))) return false;
    problem.out = out.data_ptr<float>();
    if (target != nullptr) {
        loss = at::empty({}, out.options());
        problem.target = target->data_ptr<float>();
        problem.target_batch_stride =
            target->size(0) != 1 ? problem.channels * problem.channels : 0;
        problem.loss = loss.data_ptr<float>();
    }
    const mma::Plan plan = mma::plan(problem, multiprocessor_count(device));
    const at::Tensor workspace =
        at::empty({static_cast<int64_t>(plan.workspace_floats)}, out.options());
    const at::Tensor counters =
        at::zeros({static_cast<int64_t>(plan.counter_count)}, out.options().dtype(at::kInt));
    const at::Tensor loss_partials =
        at::empty({static_cast<int64_t>(plan.loss_partials)}, out.options());
    C10_CUDA_CHECK(mma::launch(problem, plan, workspace.data_ptr<float>(),
                               reinterpret_cast<unsigned*>(counters.data_ptr<int>()),
                               loss_partials.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
    return true;
}

// The cuBLAS path: the product on the features as they lie, then one
// epilogue kernel (the Gram scaled by 1/n, or the residual and the block sums
// of its squares) and, fused, the loss. Same outputs as ffma_forward.
at::Tensor blas_forward(const at::Tensor& features, at::Tensor& out, const at::Tensor* target) {
    const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
    const at::Tensor product = cuda_blas::blas_gram_product(features);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t total = B * C * C;
    const int blocks = grid_for(total);
    at::Tensor loss;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "nst_ext::gram_epilogue_cuda", [&] {
        const scalar_t inv_n = scalar_t(1) / static_cast<scalar_t>(n);
        if (target == nullptr) {
            reduce_splits_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
                product.data_ptr<scalar_t>(), 1, total, C * C, inv_n, out.data_ptr<scalar_t>(),
                nullptr, 0, nullptr);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            return;
        }
        const int64_t target_batch_stride = target->size(0) != 1 ? C * C : 0;
        at::Tensor partial_loss = at::empty({blocks}, out.options());
        reduce_splits_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            product.data_ptr<scalar_t>(), 1, total, C * C, inv_n, out.data_ptr<scalar_t>(),
            target->data_ptr<scalar_t>(), target_batch_stride, partial_loss.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        loss = finish_loss<scalar_t>(partial_loss, total, stream);
    });
    return loss;
}

double seconds_on_stream(const std::function<void()>& run) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    cudaEvent_t start, stop;
    C10_CUDA_CHECK(cudaEventCreate(&start));
    C10_CUDA_CHECK(cudaEventCreate(&stop));
    C10_CUDA_CHECK(cudaEventRecord(start, stream));
    run();
    C10_CUDA_CHECK(cudaEventRecord(stop, stream));
    C10_CUDA_CHECK(cudaEventSynchronize(stop));
    float milliseconds = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
    C10_CUDA_CHECK(cudaEventDestroy(start));
    C10_CUDA_CHECK(cudaEventDestroy(stop));
    return milliseconds * 1e-3;
}

bool stream_is_capturing() {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
    return status != cudaStreamCaptureStatusNone;
}

// The forward (op 0: gram into out; op 1: residual into out, returns the
// loss) by the algorithm chosen for this shape, dtype and layout. Timing
// needs a synchronisation, so it never happens while a CUDA graph is
// captured: then an uncached shape takes cuBLAS.
at::Tensor forward_by_chosen_algorithm(const at::Tensor& features, at::Tensor& out,
                                       const at::Tensor* target, int op) {
    auto compute = [&](Algorithm algorithm) {
        if (algorithm == Algorithm::kBlas) return blas_forward(features, out, target);
        at::Tensor loss;
        if (tensor_core_forward(features, out, target, loss)) return loss;
        const at::Tensor F = features.contiguous().view(
            {features.size(0), features.size(1), spatial_size(features)});
        return ffma_forward(F, out, target);
    };
    // The Gram a candidate computed: `out`, or for the loss the residual plus the target.
    auto gram_of = [&](Algorithm candidate) {
        compute(candidate);
        return op == 1 ? out + *target : out.clone();
    };
    const Algorithm algorithm = choose_forward_algorithm(
        forward_key(features, op), [&](Algorithm candidate) { compute(candidate); }, gram_of,
        seconds_on_stream,
        /*can_time=*/!stream_is_capturing());
    return compute(algorithm);
}

at::Tensor gram_cuda(const at::Tensor& features) {
    check_features(features);
    const c10::cuda::OptionalCUDAGuard guard(features.device());
    const int64_t B = features.size(0), C = features.size(1);
    at::Tensor gram =
        at::empty({B, C, C}, features.options().dtype(accumulation_dtype(features.scalar_type())));
    forward_by_chosen_algorithm(features, gram, nullptr, /*op=*/0);
    return gram;
}

std::tuple<at::Tensor, at::Tensor> style_loss_cuda(const at::Tensor& features,
                                                   const at::Tensor& target) {
    check_features(features);
    check_square(target, features, "target", /*allow_broadcast=*/true);
    const c10::cuda::OptionalCUDAGuard guard(features.device());
    const at::Tensor A = target_as_batched(target);
    const int64_t B = features.size(0), C = features.size(1);
    at::Tensor residual =
        at::empty({B, C, C}, features.options().dtype(accumulation_dtype(features.scalar_type())));
    at::Tensor loss = forward_by_chosen_algorithm(features, residual, &A, /*op=*/1);
    return {loss, residual};
}

// (scale * device_scale * (X + X^T)) @ F, shaped and typed like features.
at::Tensor symmetrized_times_features(const at::Tensor& X, double scale,
                                      const at::Tensor* device_scale, const at::Tensor& features) {
    const at::Tensor Xc = X.contiguous();
    const int64_t B = Xc.size(0), C = Xc.size(1);
    at::Tensor S = at::empty_like(Xc);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "nst_ext::symmetrize_cuda", [&] {
        const scalar_t* device_scale_ptr =
            device_scale ? device_scale->data_ptr<scalar_t>() : nullptr;
        symmetrize_kernel<scalar_t><<<grid_for(B * C * C), kThreads, 0, stream>>>(
            Xc.data_ptr<scalar_t>(), B, C, static_cast<scalar_t>(scale), device_scale_ptr,
            S.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return cuda_blas::multiply_symmetric(S, features);
}

at::Tensor gram_backward_cuda(const at::Tensor& grad_gram, const at::Tensor& features) {
    check_features(features);
    check_square(grad_gram, features, "grad_gram", /*allow_broadcast=*/false);
    const c10::cuda::OptionalCUDAGuard guard(features.device());
    return symmetrized_times_features(grad_gram, gram_gradient_scale(features), nullptr, features);
}

at::Tensor style_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& features,
                                    const at::Tensor& residual) {
    check_features(features);
    check_square(residual, features, "residual", /*allow_broadcast=*/false);
    TORCH_CHECK(grad_loss.numel() == 1, "nst_ext: grad_loss must be a scalar");
    const c10::cuda::OptionalCUDAGuard guard(features.device());
    // The incoming gradient stays on the device: no host synchronisation.
    const at::Tensor grad = grad_loss.reshape({}).to(residual.options()).contiguous();
    return symmetrized_times_features(residual, style_loss_gradient_scale(features), &grad,
                                      features);
}

using Masked = MaskedOps<gram_cuda, cuda_blas::multiply_symmetric>;

}  // namespace

TORCH_LIBRARY_IMPL(nst_ext, CUDA, m) {
    m.impl("gram", &gram_cuda);
    m.impl("gram_backward", &gram_backward_cuda);
    m.impl("style_loss", &style_loss_cuda);
    m.impl("style_loss_backward", &style_loss_backward_cuda);
    m.impl("masked_gram", &Masked::gram);
    m.impl("masked_gram_backward", &Masked::gram_backward);
    m.impl("masked_style_loss", &Masked::style_loss);
    m.impl("masked_style_loss_backward", &Masked::style_loss_backward);
}

}  // namespace nst_ext
