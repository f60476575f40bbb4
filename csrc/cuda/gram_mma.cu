// The tensor-core Gram G = F F^T / n and fused style loss, one launch, for sm_80 and newer.
//
// Why its own kernel: the Gram of a style layer is a tall-skinny product with a tiny output
// (C <= 512) and a huge inner dimension (n = H W, up to 10^6), where cuBLAS is weak (BENCHMARKS
// "GPU: first run"). Each block computes one tile of the upper triangle only (the lower one is
// its mirror) over one range of the inner dimension:
//  * cp.async copies 16-byte chunks of the features as they lie (NCHW rows, or channels-last
//    rows: no copy of the tensor) into 3 stages of XOR-swizzled shared memory;
//  * ldmatrix (NCHW) or ldmatrix.trans (channels-last) loads the fragments, conflict-free;
//    float32 channels-last fragments are loaded one element at a time (no 32-bit transpose);
//  * mma.sync m16n8k16 multiplies float16/bfloat16 with float32 accumulation; float32 features
//    take 3xTF32 on m16n8k8 (x = big + small, both TF32; small*big + big*small + big*big), which
//    keeps float32's accuracy (tests/csrc/mma_layout_test.cpp emulates it against float64);
//  * where the tiles alone cannot fill the GPU the inner dimension is split; each split writes its
//    partial tile to global scratch and the last block of the tile to arrive sums them in split
//    order (deterministic), then applies 1/n, the mirror and, fused, the residual G - target and
//    its sum of squares; the last tile to finish sums those in tile order into the loss.
// All index math is in mma_layout.h, which the CPU test suite checks exhaustively. This unit needs
// the CUDA runtime only (no ATen), so tests/test_mma_layout.py compiles it alone to check its PTX.
#include "gram_mma.h"

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "mma_layout.h"

namespace nst_ext {
namespace mma {
namespace {

constexpr int kStages = 3;
constexpr int kMinStagesPerSplit = 4;

constexpr int element_bytes_of(ElementType element) {
    return element == ElementType::kFloat32 ? 4 : 2;
}

template <int kTile_, ElementType kElement_, bool kChannelsLast_>
struct Shape {
    static constexpr int kTile = kTile_;
    static constexpr ElementType kElement = kElement_;
    static constexpr bool kChannelsLast = kChannelsLast_;
    static constexpr int kElementBytes = element_bytes_of(kElement);
    static constexpr int kThreads = threads_per_block(kTile);
    static constexpr int kWarps = kThreads / 32;
    static constexpr int kStageK = stage_positions(kElementBytes);
    static constexpr int kMmaK = mma_k(kElementBytes);
    static constexpr int kSteps = kStageK / kMmaK;
    static constexpr int kMTiles = warp_rows(kTile) / 16;
    static constexpr int kNTiles = kWarpCols / 8;
    static constexpr int kOperandBytes = operand_bytes(kTile);
    static constexpr int kSharedBytes = kStages * 2 * kOperandBytes;
    static constexpr int kRowChunks = operand_row_chunks(kChannelsLast, kTile, kElementBytes);
    static constexpr bool kScalarFragments = kElementBytes == 4 && kChannelsLast;
    static constexpr int kAccumulators = kMTiles * kNTiles * 4;
};

struct Params {
    const unsigned char* features;
    int64_t C, n;
    int tiles;
    int64_t split_length;
    float inv_n, inv_entries;
    float* out;
    const float* target;
    int64_t target_batch_stride;
    float* loss;
    float* workspace;
    unsigned* arrivals;  // per tile and batch item: the splits done
    unsigned* finished;  // the tiles done
    float* loss_partials;
};

// ---- the instructions ------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async_16(uint32_t shared_dst, const void* global_src,
                                            int src_bytes) {
    // src_bytes 0 fills the chunk with zeros (rows past C, positions past the split).
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_dst),
                 "l"(global_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
    if constexpr (kTrans) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
    }
}

template <ElementType kElement>
__device__ __forceinline__ void mma_step(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
    if constexpr (kElement == ElementType::kBFloat16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, "
            "%7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else if constexpr (kElement == ElementType::kFloat16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
            "{%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, "
            "%7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

// x (float32 bits) = big + small, both rounded to TF32 (cvt.rna: to nearest, ties away).
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& big, uint32_t& small) {
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(big) : "f"(__uint_as_float(x)));
    asm("cvt.rna.tf32.f32 %0, %1;\n"
        : "=r"(small)
        : "f"(__uint_as_float(x) - __uint_as_float(big)));
}

// One stage's products for one warp: kSteps mma steps over the staged operands at byte offsets
// a_offset and b_offset of shared memory.
template <class S>
__device__ __forceinline__ void multiply_stage(const unsigned char* shared, uint32_t shared_base,
                                               int a_offset, int b_offset, int lane, int warp_m,
                                               int warp_n,
                                               float (&acc)[S::kMTiles][S::kNTiles][4]) {
#pragma unroll
    for (int step = 0; step < S::kSteps; ++step) {
        const int k0 = step * S::kMmaK;
        uint32_t a[S::kMTiles][4];
        uint32_t b[S::kNTiles][2];
        if constexpr (!S::kScalarFragments) {
            // One ldmatrix.x4: the A fragment of 16 channels from first_channel, or the B fragments
            // of two 8-channel blocks from it, this lane's row address from mma_layout.h.
            auto load = [&](bool a_operand, int operand_offset, int first_channel,
                            uint32_t (&r)[4]) {
                int channel, position;
                ldmatrix_lane_source(S::kChannelsLast, a_operand, lane, S::kElementBytes, channel,
                                     position);
                ldmatrix_x4<S::kChannelsLast>(
                    r, shared_base + operand_offset +
                           element_offset(S::kChannelsLast, first_channel + channel, k0 + position,
                                          S::kTile, S::kElementBytes, false));
            };
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) load(true, a_offset, warp_m + 16 * mt, a[mt]);
#pragma unroll
            for (int pair = 0; pair < S::kNTiles / 2; ++pair) {
                uint32_t r[4];
                load(false, b_offset, warp_n + 16 * pair, r);
                b[2 * pair][0] = r[0];
                b[2 * pair][1] = r[1];
                b[2 * pair + 1][0] = r[2];
                b[2 * pair + 1][1] = r[3];
            }
        } else {
            // The float32 element (channel, position) of a channel-contiguous operand, as TF32
            // input bits.
            auto element = [&](int operand_offset, int channel, int position) {
                return *reinterpret_cast<const uint32_t*>(
                    shared + operand_offset +
                    element_offset(true, channel, k0 + position, S::kTile, 4, true));
            };
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int m, k;
                    a_fragment_element(4, lane, e, m, k);
                    a[mt][e] = element(a_offset, warp_m + 16 * mt + m, k);
                }
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int k, n;
                    b_fragment_element(4, lane, e, k, n);
                    b[nt][e] = element(b_offset, warp_n + 8 * nt + n, k);
                }
        }
        if constexpr (S::kElement == ElementType::kFloat32) {
            uint32_t b_big[S::kNTiles][2], b_small[S::kNTiles][2];
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) split_tf32(b[nt][e], b_big[nt][e], b_small[nt][e]);
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) {
                uint32_t a_big[4], a_small[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) split_tf32(a[mt][e], a_big[e], a_small[e]);
#pragma unroll
                for (int nt = 0; nt < S::kNTiles; ++nt) {
                    // The small products first, so the big one adds to the least-rounded sum.
                    mma_step<ElementType::kFloat32>(acc[mt][nt], a_small, b_big[nt]);
                    mma_step<ElementType::kFloat32>(acc[mt][nt], a_big, b_small[nt]);
                    mma_step<ElementType::kFloat32>(acc[mt][nt], a_big, b_big[nt]);
                }
            }
        } else {
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
                for (int nt = 0; nt < S::kNTiles; ++nt)
                    mma_step<S::kElement>(acc[mt][nt], a[mt], b[nt]);
        }
    }
}

// The sum of value over the block in a fixed order (deterministic); valid in thread 0.
template <class S>
__device__ __forceinline__ float block_sum(float value, float* warp_sums) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
    __syncthreads();
    float total = 0;
    if (threadIdx.x == 0)
        for (int w = 0; w < S::kWarps; ++w) total += warp_sums[w];
    return total;
}
#endif  // __CUDA_ARCH__ >= 800

// grid: (upper tiles, splits, batch); block: S::kThreads; dynamic shared memory S::kSharedBytes.
template <class S>
__global__ void __launch_bounds__(S::kThreads) gram_mma_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) unsigned char shared[];
    __shared__ float warp_sums[S::kWarps];
    __shared__ unsigned last_to_arrive;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int tile_row, tile_col;
    upper_tile(blockIdx.x, p.tiles, tile_row, tile_col);
    const bool diagonal = tile_row == tile_col;
    const int splits = gridDim.y, split = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t k_begin = split * p.split_length;
    const int64_t k_end = k_begin + p.split_length < p.n ? k_begin + p.split_length : p.n;
    const int row_origin = tile_row * S::kTile, col_origin = tile_col * S::kTile;
    const unsigned char* F = p.features + b * p.C * p.n * S::kElementBytes;
    const uint32_t shared_base = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
    const int stages = static_cast<int>((k_end - k_begin + S::kStageK - 1) / S::kStageK);

    auto load_stage = [&](int stage, int slot) {
        const int64_t k0 = k_begin + static_cast<int64_t>(stage) * S::kStageK;
#pragma unroll
        for (int operand = 0; operand < 2; ++operand) {
            if (operand == 1 && diagonal) break;  // the diagonal's columns are its rows
            const uint32_t base = shared_base + (slot * 2 + operand) * S::kOperandBytes;
            const int first_channel = operand == 0 ? row_origin : col_origin;
#pragma unroll
            for (int c = 0; c < kChunksPerThread; ++c) {
                int row, chunk, channel, position;
                copy_slot(tid + c * S::kThreads, S::kRowChunks, row, chunk);
                chunk_source(S::kChannelsLast, row, chunk, S::kElementBytes, channel, position);
                channel += first_channel;
                const int64_t k = k0 + position;
                const bool inside = channel < p.C && k < k_end;
                const int64_t element = S::kChannelsLast ? k * p.C + channel : channel * p.n + k;
                cp_async_16(base + chunk_offset(row, chunk, S::kRowChunks, S::kScalarFragments),
                            inside ? F + element * S::kElementBytes : F, inside ? kChunkBytes : 0);
            }
        }
    };

    int warp_m, warp_n;
    warp_origin(warp, S::kTile, warp_m, warp_n);
    const bool has_work = warp_has_work(warp, S::kTile, diagonal);
    float acc[S::kMTiles][S::kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < stages) load_stage(s, s);
        cp_async_commit();
    }
    for (int stage = 0; stage < stages; ++stage) {
        cp_async_wait<kStages - 2>();
        __syncthreads();  // this stage visible to all; the slot refilled next was read by all
        const int next = stage + kStages - 1;
        if (next < stages) load_stage(next, next % kStages);
        cp_async_commit();
        if (has_work) {
            const int a_offset = (stage % kStages) * 2 * S::kOperandBytes;
            const int b_offset = diagonal ? a_offset : a_offset + S::kOperandBytes;
            multiply_stage<S>(shared, shared_base, a_offset, b_offset, lane, warp_m, warp_n, acc);
        }
    }
    cp_async_wait<0>();

    const int64_t tile_index = b * gridDim.x + blockIdx.x;
    if (splits > 1) {
        // Slot a of thread t at a * kThreads + t: coalesced writes and reads.
        float* mine = p.workspace + (tile_index * splits + split) * S::kAccumulators * S::kThreads;
        if (has_work) {
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
                for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        mine[((mt * S::kNTiles + nt) * 4 + e) * S::kThreads + tid] = acc[mt][nt][e];
        }
        __threadfence();
        __syncthreads();
        if (tid == 0)
            last_to_arrive =
                atomicAdd(&p.arrivals[tile_index], 1u) == static_cast<unsigned>(splits - 1);
        __syncthreads();
        if (!last_to_arrive) return;
        __threadfence();
        if (has_work) {
            const float* first = p.workspace + tile_index * splits * S::kAccumulators * S::kThreads;
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
                for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int slot = ((mt * S::kNTiles + nt) * 4 + e) * S::kThreads + tid;
                        float sum = 0.0f;
                        for (int s = 0; s < splits; ++s)
                            sum += __ldcg(first + s * S::kAccumulators * S::kThreads + slot);
                        acc[mt][nt][e] = sum;
                    }
        }
        if (tid == 0) p.arrivals[tile_index] = 0;  // ready for the next launch (and graph replay)
    }

    // The epilogue: the upper triangle and its mirror from each accumulator.
    float sum_sq = 0.0f;
    if (has_work) {
        float* out = p.out + b * p.C * p.C;
        const float* target = p.target != nullptr ? p.target + b * p.target_batch_stride : nullptr;
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int m, n;
                    accumulator_element(lane, e, m, n);
                    const int64_t i = row_origin + warp_m + 16 * mt + m,
                                  j = col_origin + warp_n + 8 * nt + n;
                    if (i < p.C && j < p.C && i <= j) {
                        const float g = acc[mt][nt][e] * p.inv_n;
                        if (target == nullptr) {
                            out[i * p.C + j] = g;
                            if (i != j) out[j * p.C + i] = g;
                        } else {
                            const float upper = g - target[i * p.C + j];
                            out[i * p.C + j] = upper;
                            sum_sq += upper * upper;
                            if (i != j) {
                                const float lower = g - target[j * p.C + i];
                                out[j * p.C + i] = lower;
                                sum_sq += lower * lower;
                            }
                        }
                    }
                }
    }
    if (p.target == nullptr) return;

    const float block_total = block_sum<S>(sum_sq, warp_sums);
    if (tid == 0) {
        p.loss_partials[tile_index] = block_total;
        __threadfence();
        last_to_arrive =
            atomicAdd(p.finished, 1u) == static_cast<unsigned>(gridDim.x * gridDim.z - 1);
    }
    __syncthreads();
    if (!last_to_arrive) return;
    __threadfence();
    const int64_t count = static_cast<int64_t>(gridDim.x) * gridDim.z;
    float sum = 0.0f;
    for (int64_t e = tid; e < count; e += S::kThreads) sum += __ldcg(p.loss_partials + e);
    __syncthreads();  // warp_sums is reused
    const float total = block_sum<S>(sum, warp_sums);
    if (tid == 0) {
        *p.loss = total * p.inv_entries;
        *p.finished = 0;
    }
#endif  // __CUDA_ARCH__ >= 800
}

// ---- the host side ---------------------------------------------------------------------------

template <int kTile>
using TileConstant = std::integral_constant<int, kTile>;
template <ElementType kElement>
using ElementConstant = std::integral_constant<ElementType, kElement>;

// visit(Shape<...>{}) for the problem's tile, element type and layout.
template <class Visit>
cudaError_t with_shape(int tile, ElementType element, bool channels_last, Visit&& visit) {
    auto by_layout = [&](auto tile_c, auto element_c) {
        constexpr int kTile = decltype(tile_c)::value;
        constexpr ElementType kElement = decltype(element_c)::value;
        return channels_last ? visit(Shape<kTile, kElement, true>{})
                             : visit(Shape<kTile, kElement, false>{});
    };
    auto by_element = [&](auto tile_c) {
        switch (element) {
            case ElementType::kFloat16:
                return by_layout(tile_c, ElementConstant<ElementType::kFloat16>{});
            case ElementType::kBFloat16:
                return by_layout(tile_c, ElementConstant<ElementType::kBFloat16>{});
            default:
                return by_layout(tile_c, ElementConstant<ElementType::kFloat32>{});
        }
    };
    return tile == 64 ? by_element(TileConstant<64>{}) : by_element(TileConstant<128>{});
}

// Lets a kernel variant use its dynamic shared memory (over the default 48 KiB) on the current
// device, once per device: later launches, those captured into a CUDA graph included, make no call.
template <class S>
cudaError_t allow_shared_memory() {
    static std::array<std::atomic<bool>, 64> allowed{};
    int device = 0;
    cudaError_t error = cudaGetDevice(&device);
    if (error != cudaSuccess) return error;
    const bool cached = device >= 0 && device < static_cast<int>(allowed.size());
    if (cached && allowed[device].load(std::memory_order_relaxed)) return cudaSuccess;
    error = cudaFuncSetAttribute(gram_mma_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 S::kSharedBytes);
    if (error == cudaSuccess && cached) allowed[device].store(true, std::memory_order_relaxed);
    return error;
}

// Blocks of a kernel variant resident per multiprocessor, asked once per variant (the GPUs of one
// process are taken to be of one model); 1 where the runtime cannot say.
template <class S>
int blocks_per_multiprocessor() {
    static std::atomic<int> cached{0};
    int blocks = cached.load(std::memory_order_relaxed);
    if (blocks == 0) {
        cudaError_t error = allow_shared_memory<S>();
        if (error == cudaSuccess)
            error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, gram_mma_kernel<S>,
                                                                  S::kThreads, S::kSharedBytes);
        if (error != cudaSuccess || blocks < 1) {
            (void)cudaGetLastError();  // not left for the next launch check to report
            blocks = 1;
        }
        cached.store(blocks, std::memory_order_relaxed);
    }
    return blocks;
}

}  // namespace

bool supports(const Problem& problem, int compute_capability_major) {
    const int element_bytes = element_bytes_of(problem.element);
    const int64_t row_elements = problem.channels_last ? problem.channels : problem.positions;
    return compute_capability_major >= 8 &&
           reinterpret_cast<uintptr_t>(problem.features) % kChunkBytes == 0 &&
           (row_elements * element_bytes) % kChunkBytes == 0 && problem.batch >= 1 &&
           problem.batch <= 65535 && problem.channels >= 1 && problem.channels <= 65536 &&
           problem.positions >= 1;
}

Plan plan(const Problem& problem, int multiprocessors) {
    Plan result{};
    result.tile = tile_for_channels(problem.channels);
    result.tiles = static_cast<int>((problem.channels + result.tile - 1) / result.tile);
    result.upper_tiles = result.tiles * (result.tiles + 1) / 2;
    int resident = 1;
    with_shape(result.tile, problem.element, problem.channels_last, [&](auto shape) {
        resident = blocks_per_multiprocessor<decltype(shape)>();
        return cudaSuccess;
    });
    const int element_bytes = element_bytes_of(problem.element);
    const SplitPlan split = plan_splits(problem.batch * result.upper_tiles, problem.positions,
                                        static_cast<int64_t>(multiprocessors) * resident,
                                        stage_positions(element_bytes), kMinStagesPerSplit);
    result.splits = split.splits;
    result.split_length = split.split_length;
    const size_t tiles_in_all = static_cast<size_t>(problem.batch) * result.upper_tiles;
    result.workspace_floats =
        result.splits > 1 ? tiles_in_all * result.splits * result.tile * result.tile : 0;
    result.counter_count = tiles_in_all + 1;
    result.loss_partials = tiles_in_all;
    return result;
}

cudaError_t launch(const Problem& problem, const Plan& plan, float* workspace, unsigned* counters,
                   float* loss_partials, cudaStream_t stream) {
    Params params{};
    params.features = static_cast<const unsigned char*>(problem.features);
    params.C = problem.channels;
    params.n = problem.positions;
    params.tiles = plan.tiles;
    params.split_length = plan.split_length;
    params.inv_n = 1.0f / static_cast<float>(problem.positions);
    params.inv_entries =
        1.0f / static_cast<float>(problem.batch * problem.channels * problem.channels);
    params.out = problem.out;
    params.target = problem.target;
    params.target_batch_stride = problem.target_batch_stride;
    params.loss = problem.loss;
    params.workspace = workspace;
    params.arrivals = counters;
    params.finished = counters + static_cast<size_t>(problem.batch) * plan.upper_tiles;
    params.loss_partials = loss_partials;
    return with_shape(plan.tile, problem.element, problem.channels_last, [&](auto shape) {
        using S = decltype(shape);
        const cudaError_t error = allow_shared_memory<S>();
        if (error != cudaSuccess) return error;
        const dim3 grid(static_cast<unsigned>(plan.upper_tiles), static_cast<unsigned>(plan.splits),
                        static_cast<unsigned>(problem.batch));
        gram_mma_kernel<S><<<grid, S::kThreads, S::kSharedBytes, stream>>>(params);
        return cudaGetLastError();
    });
}

}  // namespace mma
}  // namespace nst_ext
