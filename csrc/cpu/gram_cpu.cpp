// CPU kernels of nst_ext: Gram matrix and fused style loss, forward and
// backward.
//
// The Gram matrix G = F F^T / n of F (C x n, rows contiguous) is symmetric, so
// only its upper triangle is computed and then mirrored: half the arithmetic of
// a general matrix product. The work is cut into
//   * row blocks of kRowBlock channels: a pair of blocks (bi <= bj) is one
//     tile of the upper triangle;
//   * splits of the long n axis when there are too few tiles to keep every
//     thread busy (shallow VGG layers have C = 64 and n in the hundreds of
//     thousands); each split accumulates into its own partial buffer and the
//     partials are summed in a fixed order, so results are deterministic;
//   * chunks of kChunkBytes per row inside a tile, so that the rows being
//     multiplied stay in L1/L2 while every pair of them is formed.
// The innermost register tile (MR x NR rows, W-wide vectors) is written with
// GCC vector types and compiled once per instruction set (AVX-512, AVX2+FMA,
// baseline); the widest one the CPU supports is picked at run time.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../common.h"
#include "../masked.h"
#include "blas_cpu.h"

namespace nst_ext {
namespace {

#define NST_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr int64_t kRowBlock = 64;
constexpr int64_t kChunkBytes = 4096;

template <typename T, int W>
struct VectorOf {
    typedef T type __attribute__((vector_size(W * sizeof(T))));
};

template <typename V, typename T>
NST_ALWAYS_INLINE V load_unaligned(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
}

#if defined(__GNUC__) && !defined(__clang__)
#define NST_HAVE_SHUFFLE 1
// Horizontal sums of 16 vectors of 16 floats at once: lane t of the result is
// the sum of v[t]'s lanes. Four levels of "add the two halves of a pair" cost
// 15 additions and 30 shuffles, where 16 separate horizontal sums cost ~10
// instructions each; on short rows (H*W of a few hundred) those sums would
// otherwise cost as much as the products.
NST_ALWAYS_INLINE VectorOf<float, 16>::type sum_lanes_of_16(
    const VectorOf<float, 16>::type (&v)[16]) {
    using V = VectorOf<float, 16>::type;
    typedef int32_t Mask __attribute__((vector_size(64)));
    const Mask lo1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const Mask hi1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const Mask lo2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const Mask hi2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const Mask lo3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const Mask hi3 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const Mask lo4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const Mask hi4 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    V level1[8], level2[4], level3[2];
    for (int t = 0; t < 8; ++t)  // [8 partials of v[2t] | 8 of v[2t+1]]
        level1[t] = __builtin_shuffle(v[2 * t], v[2 * t + 1], lo1) +
                    __builtin_shuffle(v[2 * t], v[2 * t + 1], hi1);
    for (int t = 0; t < 4; ++t)  // 4 partials each of v[4t .. 4t+3]
        level2[t] = __builtin_shuffle(level1[2 * t], level1[2 * t + 1], lo2) +
                    __builtin_shuffle(level1[2 * t], level1[2 * t + 1], hi2);
    for (int t = 0; t < 2; ++t)  // 2 partials each of v[8t .. 8t+7]
        level3[t] = __builtin_shuffle(level2[2 * t], level2[2 * t + 1], lo3) +
                    __builtin_shuffle(level2[2 * t], level2[2 * t + 1], hi3);
    return __builtin_shuffle(level3[0], level3[1], lo4) +
           __builtin_shuffle(level3[0], level3[1], hi4);
}
#endif

// out[r * ldo + c] += sum_k rows_i[r * ld + k] * rows_j[c * ld + k] for
// r < MR, c < NR, k < len: one register tile of dot products.
template <typename T, int W, int MR, int NR>
NST_ALWAYS_INLINE void dot_tile(const T* rows_i, const T* rows_j, int64_t ld, int64_t len, T* out,
                                int64_t ldo) {
    using V = typename VectorOf<T, W>::type;
    V acc[MR][NR];
    for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NR; ++c) acc[r][c] = V{};
    int64_t k = 0;
    for (; k + W <= len; k += W) {
        V a[MR];
        for (int r = 0; r < MR; ++r) a[r] = load_unaligned<V>(rows_i + r * ld + k);
        for (int c = 0; c < NR; ++c) {
            const V b = load_unaligned<V>(rows_j + c * ld + k);
            for (int r = 0; r < MR; ++r) acc[r][c] += a[r] * b;
        }
    }
    T sums[MR][NR];
#ifdef NST_HAVE_SHUFFLE
    if constexpr (std::is_same_v<T, float> && W == 16 && MR * NR == 16) {
        const auto lane_sums = sum_lanes_of_16(reinterpret_cast<const V(&)[16]>(acc));
        for (int r = 0; r < MR; ++r)
            for (int c = 0; c < NR; ++c) sums[r][c] = lane_sums[r * NR + c];
    } else
#endif
    {
        for (int r = 0; r < MR; ++r)
            for (int c = 0; c < NR; ++c) {
                sums[r][c] = 0;
                for (int lane = 0; lane < W; ++lane) sums[r][c] += acc[r][c][lane];
            }
    }
    for (int r = 0; r < MR; ++r) {
        for (int c = 0; c < NR; ++c) {
            T sum = sums[r][c];
            for (int64_t t = k; t < len; ++t) sum += rows_i[r * ld + t] * rows_j[c * ld + t];
            out[r * ldo + c] += sum;
        }
    }
}

// Accumulates F F^T over columns [kb, ke) for rows [ib, ie) x [jb, je) into
// out (C x C, row-major). Every entry with j >= i in that range is produced;
// register tiles straddling the diagonal also produce a few entries below it,
// which the caller overwrites when it mirrors the upper triangle.
template <typename T, int W, int MR, int NR>
NST_ALWAYS_INLINE void gram_block(const T* F, int64_t n, int64_t C, int64_t ib, int64_t ie,
                                  int64_t jb, int64_t je, int64_t kb, int64_t ke, T* out) {
    constexpr int64_t chunk = kChunkBytes / static_cast<int64_t>(sizeof(T));
    for (int64_t k0 = kb; k0 < ke; k0 += chunk) {
        const int64_t len = std::min(chunk, ke - k0);
        for (int64_t i = ib; i < ie; i += MR) {
            const int64_t mr = std::min<int64_t>(MR, ie - i);
            // First register tile whose last column reaches the diagonal.
            const int64_t j_first = i <= jb ? jb : jb + (i - jb) / NR * NR;
            for (int64_t j = j_first; j < je; j += NR) {
                const int64_t nr = std::min<int64_t>(NR, je - j);
                const T* rows_i = F + i * n + k0;
                const T* rows_j = F + j * n + k0;
                T* tile_out = out + i * C + j;
                if (mr == MR && nr == NR) {
                    dot_tile<T, W, MR, NR>(rows_i, rows_j, n, len, tile_out, C);
                } else {
                    for (int64_t r = 0; r < mr; ++r)
                        for (int64_t c = 0; c < nr; ++c)
                            dot_tile<T, W, 1, 1>(rows_i + r * n, rows_j + c * n, n, len,
                                                 tile_out + r * C + c, C);
                }
            }
        }
    }
}

template <typename T>
using BlockKernel = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, T*);

#define NST_BLOCK_KERNEL(NAME, ATTRIBUTE, T, W, MR, NR)                                       \
    ATTRIBUTE void NAME(const T* F, int64_t n, int64_t C, int64_t ib, int64_t ie, int64_t jb, \
                        int64_t je, int64_t kb, int64_t ke, T* out) {                         \
        gram_block<T, W, MR, NR>(F, n, C, ib, ie, jb, je, kb, ke, out);                       \
    }

// Register tiles sized to the register file: AVX-512 has 32 vector
// registers (16 accumulators + 5 operands), AVX2 and SSE have 16.
NST_BLOCK_KERNEL(gram_block_baseline_f32, , float, 4, 2, 4)
NST_BLOCK_KERNEL(gram_block_baseline_f64, , double, 2, 2, 4)
#if defined(__x86_64__) || defined(__i386__)
#define NST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define NST_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
NST_BLOCK_KERNEL(gram_block_avx2_f32, NST_TARGET_AVX2, float, 8, 3, 4)
NST_BLOCK_KERNEL(gram_block_avx2_f64, NST_TARGET_AVX2, double, 4, 3, 4)
NST_BLOCK_KERNEL(gram_block_avx512_f32, NST_TARGET_AVX512, float, 16, 4, 4)
NST_BLOCK_KERNEL(gram_block_avx512_f64, NST_TARGET_AVX512, double, 8, 4, 4)
#endif

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
    return Isa::kBaseline;
}

// The float or the double variant, by T.
template <typename T>
BlockKernel<T> by_dtype(BlockKernel<float> for_float, BlockKernel<double> for_double) {
    if constexpr (std::is_same_v<T, float>) {
        return for_float;
    } else {
        return for_double;
    }
}

template <typename T>
BlockKernel<T> block_kernel_for(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
    if (isa == Isa::kAvx512) return by_dtype<T>(gram_block_avx512_f32, gram_block_avx512_f64);
    if (isa == Isa::kAvx2) return by_dtype<T>(gram_block_avx2_f32, gram_block_avx2_f64);
#endif
    return by_dtype<T>(gram_block_baseline_f32, gram_block_baseline_f64);
}

template <typename T>
BlockKernel<T> block_kernel() {
    static const BlockKernel<T> kernel = block_kernel_for<T>(detect_isa());
    return kernel;
}

// Number of splits of the n axis: enough tiles for every thread, but no
// split shorter than a few row chunks.
int64_t choose_splits(int64_t tiles, int64_t n, int64_t chunk) {
    const int64_t wanted_items = 8 * static_cast<int64_t>(at::get_num_threads());
    if (tiles >= wanted_items) return 1;
    const int64_t by_threads = (wanted_items + tiles - 1) / tiles;
    const int64_t by_length = std::max<int64_t>(1, n / (4 * chunk));
    return std::min(by_threads, by_length);
}

// gram (B, C, C) = the sum of the splits' partial products (splits, B, C, C),
// added in a fixed order, times 1/n; the kernels fill one triangle of each
// partial (the upper one, or with upper_filled false the lower one, diagonal
// included), and the other is mirrored from it.
template <typename T>
void sum_splits_and_mirror(const T* partial, int64_t splits, int64_t B, int64_t C, int64_t n,
                           bool upper_filled, T* gram) {
    const T inv_n = T(1) / static_cast<T>(n);
    at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t b = row / C, r = row % C;
            const int64_t first = upper_filled ? r : 0, last = upper_filled ? C : r + 1;
            for (int64_t c = first; c < last; ++c) {
                T sum = 0;
                for (int64_t s = 0; s < splits; ++s) sum += partial[((s * B + b) * C + r) * C + c];
                gram[(b * C + r) * C + c] = sum * inv_n;
            }
        }
    });
    at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t b = row / C, r = row % C;
            const int64_t first = upper_filled ? 0 : r + 1, last = upper_filled ? r : C;
            for (int64_t c = first; c < last; ++c)
                gram[(b * C + r) * C + c] = gram[(b * C + c) * C + r];
        }
    });
}

// gram[b] = F[b] F[b]^T / n for F of shape (B, C, n), contiguous, T = float
// or double; gram is (B, C, C), contiguous, same dtype.
template <typename T>
void gram_into(const T* F, int64_t B, int64_t C, int64_t n, T* gram) {
    const int64_t blocks = (C + kRowBlock - 1) / kRowBlock;
    const int64_t block_pairs = blocks * (blocks + 1) / 2;
    constexpr int64_t chunk = kChunkBytes / static_cast<int64_t>(sizeof(T));
    const int64_t splits = choose_splits(B * block_pairs, n, chunk);

    at::Tensor partial_storage;
    T* partial = gram;
    if (splits > 1) {
        partial_storage = at::empty({splits * B * C * C},
                                    at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
        partial = partial_storage.data_ptr<T>();
    }
    std::fill(partial, partial + splits * B * C * C, T(0));

    const BlockKernel<T> kernel = block_kernel<T>();
    at::parallel_for(0, splits * B * block_pairs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t split = item % splits;
            const int64_t pair = (item / splits) % block_pairs;
            const int64_t b = item / (splits * block_pairs);
            int64_t bi = 0, first_of_row = 0;
            while (first_of_row + (blocks - bi) <= pair) {
                first_of_row += blocks - bi;
                ++bi;
            }
            const int64_t bj = bi + (pair - first_of_row);
            // Split boundaries on multiples of 64 elements keep vector loads aligned.
            const int64_t kb = (n * split / splits) / 64 * 64;
            const int64_t ke = split + 1 == splits ? n : (n * (split + 1) / splits) / 64 * 64;
            kernel(F + b * C * n, n, C, bi * kRowBlock, std::min(C, (bi + 1) * kRowBlock),
                   bj * kRowBlock, std::min(C, (bj + 1) * kRowBlock), kb, ke,
                   partial + (split * B + b) * C * C);
        }
    });

    sum_splits_and_mirror<T>(partial, splits, B, C, n, /*upper_filled=*/true, gram);
}

// ---------------------------------------------------------------------------
// bfloat16 features on CPUs with AVX512-BF16: `vdpbf16ps` multiplies pairs of
// bfloat16 values and adds both products to a float32 lane, twice the rate of
// float32 FMAs and with no widened copy of the features (the BLAS path widens
// them to float32 a slab at a time, which cost more than the products: 54 ms of
// a 1.06 s bfloat16 step at 512 px, BENCHMARKS.md). The pairs must run along the
// summed axis, the positions; channels-last features X (n, C) hold a position's
// channels side by side, so each chunk of positions is first packed as
// packed[p][c] = (X[2p][c], X[2p+1][c]), one 32-bit word per channel (0 for the
// position after the last). A register tile then holds 32 channels i (two
// vectors of 16 lanes) against 8 channels j (each pair broadcast), an outer
// product of BLIS's kind with no horizontal sums. Lane l of the accumulator for
// (j, vector r) is G[j][i0 + 16r + l], so it is added into row j of the result:
// the kernel fills the lower triangle, which is then mirrored.
#if defined(__x86_64__)
#define NST_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

constexpr int64_t kPairTileRows = 32;    // channels i per register tile: two vectors
constexpr int64_t kPairTileColumns = 8;  // channels j per register tile
constexpr int64_t kPackedChunkBytes = 192
                                      << 10;  // a packed chunk stays in L2 while its tiles read it

// Interleaving indices for vpermt2w: words 2m and 2m+1 of the output are word m
// (+16 for the high half) of the first and of the second row.
struct alignas(64) PairIndices {
    uint16_t low[32], high[32];
    PairIndices() {
        for (int m = 0; m < 16; ++m) {
            low[2 * m] = m, low[2 * m + 1] = 32 + m;
            high[2 * m] = 16 + m, high[2 * m + 1] = 48 + m;
        }
    }
};

// Packs positions [2 first_pair, 2 (first_pair + pairs)) of X (n, C), C a
// multiple of 16, into packed (pairs, C) words.
NST_TARGET_AVX512_BF16 void pack_position_pairs(const uint16_t* X, int64_t n, int64_t C,
                                                int64_t first_pair, int64_t pairs,
                                                uint32_t* packed) {
    static const PairIndices indices;
    const __m512i low = _mm512_load_si512(indices.low), high = _mm512_load_si512(indices.high);
    for (int64_t p = 0; p < pairs; ++p) {
        const int64_t position = 2 * (first_pair + p);
        const uint16_t* first = X + position * C;
        const bool has_second = position + 1 < n;
        uint32_t* out = packed + p * C;
        int64_t c = 0;
        for (; c + 32 <= C; c += 32) {
            const __m512i a = _mm512_loadu_si512(first + c);
            const __m512i b =
                has_second ? _mm512_loadu_si512(first + C + c) : _mm512_setzero_si512();
            _mm512_storeu_si512(out + c, _mm512_permutex2var_epi16(a, low, b));
            _mm512_storeu_si512(out + c + 16, _mm512_permutex2var_epi16(a, high, b));
        }
        if (c < C) {  // the last 16 channels
            const __m512i a = _mm512_maskz_loadu_epi16(0xFFFF, first + c);
            const __m512i b = has_second ? _mm512_maskz_loadu_epi16(0xFFFF, first + C + c)
                                         : _mm512_setzero_si512();
            _mm512_storeu_si512(out + c, _mm512_permutex2var_epi16(a, low, b));
        }
    }
}

// out[(j0 + t) * C + i0 + 16 r + l] += sum over the chunk's pairs of X[., i0 + 16 r + l] X[., j0 +
// t] for r < VECTORS, t < 8, l < 16.
template <int VECTORS>
NST_TARGET_AVX512_BF16 NST_ALWAYS_INLINE void pair_tile(const uint32_t* packed, int64_t C,
                                                        int64_t pairs, int64_t i0, int64_t j0,
                                                        float* out) {
    __m512 acc[kPairTileColumns][VECTORS];
    for (int t = 0; t < kPairTileColumns; ++t)
        for (int r = 0; r < VECTORS; ++r) acc[t][r] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
        const uint32_t* row = packed + p * C;
        __m512i a[VECTORS];
        for (int r = 0; r < VECTORS; ++r) a[r] = _mm512_loadu_si512(row + i0 + 16 * r);
        for (int t = 0; t < kPairTileColumns; ++t) {
            const __m512i b = _mm512_set1_epi32(static_cast<int>(row[j0 + t]));
            for (int r = 0; r < VECTORS; ++r)
                acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)a[r], (__m512bh)b);
        }
    }
    for (int t = 0; t < kPairTileColumns; ++t)
        for (int r = 0; r < VECTORS; ++r) {
            float* target = out + (j0 + t) * C + i0 + 16 * r;
            _mm512_storeu_ps(target, _mm512_add_ps(_mm512_loadu_ps(target), acc[t][r]));
        }
}

// Adds X^T X over pairs [first_pair, end_pair) into out (C x C, lower triangle
// and the diagonal tiles), packing a chunk at a time into `packed`.
NST_TARGET_AVX512_BF16 void pair_gram_range(const uint16_t* X, int64_t n, int64_t C,
                                            int64_t first_pair, int64_t end_pair, uint32_t* packed,
                                            int64_t chunk_pairs, float* out) {
    for (int64_t p0 = first_pair; p0 < end_pair; p0 += chunk_pairs) {
        const int64_t pairs = std::min(chunk_pairs, end_pair - p0);
        pack_position_pairs(X, n, C, p0, pairs, packed);
        for (int64_t i0 = 0; i0 < C; i0 += kPairTileRows) {
            for (int64_t j0 = i0; j0 < C; j0 += kPairTileColumns) {
                if (i0 + kPairTileRows <= C)
                    pair_tile<2>(packed, C, pairs, i0, j0, out);
                else
                    pair_tile<1>(packed, C, pairs, i0, j0, out);
            }
        }
    }
}

bool cpu_has_avx512_bf16() {
    static const bool supported = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
    }();
    return supported;
}
#endif

// Whether the bfloat16 pair kernel takes these features: bfloat16, channels-last,
// a multiple of 16 channels, on a CPU with AVX512-BF16.
bool pair_kernel_applies(const at::Tensor& features) {
#if defined(__x86_64__)
    return features.scalar_type() == at::kBFloat16 &&
           layout_of(features) == Layout::kChannelsLast && features.size(1) % 16 == 0 &&
           cpu_has_avx512_bf16();
#else
    return false;
#endif
}

// The Gram (B, C, C) float32 of bfloat16 channels-last features by the pair
// kernel (pair_kernel_applies must hold). The positions are split into one
// range per thread (enough pairs each), each summed into its own partial
// Gram; the partials are added in a fixed order, so the result is the same at
// every call with the same number of threads.
at::Tensor pair_kernel_gram(const at::Tensor& features) {
#if defined(__x86_64__)
    const int64_t B = features.size(0), C = features.size(1), n = spatial_size(features);
    const int64_t total_pairs = (n + 1) / 2;
    const int64_t splits =
        std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total_pairs / 32));
    const int64_t chunk_pairs = std::max<int64_t>(8, kPackedChunkBytes / (C * 4));
    const auto float_options =
        features.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
    at::Tensor partial = at::zeros({splits, B, C, C}, float_options);
    const uint16_t* X = reinterpret_cast<const uint16_t*>(features.data_ptr<at::BFloat16>());
    float* partial_data = partial.data_ptr<float>();
    at::parallel_for(0, B * splits, 1, [&](int64_t begin, int64_t end) {
        std::vector<uint32_t> packed(static_cast<size_t>(std::min(chunk_pairs, total_pairs) * C));
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / splits, split = item % splits;
            const int64_t first = total_pairs * split / splits,
                          last = total_pairs * (split + 1) / splits;
            pair_gram_range(X + b * n * C, n, C, first, last, packed.data(), chunk_pairs,
                            partial_data + (split * B + b) * C * C);
        }
    });
    at::Tensor gram = at::empty({B, C, C}, float_options);
    sum_splits_and_mirror<float>(partial_data, splits, B, C, n, /*upper_filled=*/false,
                                 gram.data_ptr<float>());
    return gram;
#else
    TORCH_CHECK(false, "nst_ext: the bfloat16 pair kernel needs an x86-64 CPU");
#endif
}

// Features as a contiguous (B, C, n) tensor of the accumulation dtype, for
// our own kernel; half and bfloat16 are widened once here so the kernel
// accumulates in float32.
at::Tensor features_for_accumulation(const at::Tensor& features) {
    const auto acc = accumulation_dtype(features.scalar_type());
    return features.to(acc).contiguous().view(
        {features.size(0), features.size(1), features.size(2) * features.size(3)});
}

double seconds_of(const std::function<void()>& run) {
    const auto start = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// F F^T by the algorithm chosen for this shape (op 0: gram, 1: style_loss,
// timed separately), (B, C, C) in the accumulation dtype, and the factor that
// still has to be applied to make it the Gram: our kernel scales by 1/n
// itself, the BLAS product leaves that to the caller's next pass.
std::pair<at::Tensor, double> product_by_chosen_algorithm(const at::Tensor& features, int op) {
    // Our kernel reads contiguous (B, C, n) values of the accumulation dtype: for other features
    // that is a whole widened copy, which for large ones costs more memory than the slabs of the
    // BLAS path (blas_cpu.h), so they take that path.
    const bool needs_copy = features.scalar_type() != accumulation_dtype(features.scalar_type()) ||
                            layout_of(features) != Layout::kNCHW;
    const bool copy_too_large =
        needs_copy && features.numel() * 4 > 4 * cpu_blas::kWideningSlabBytes;
    const bool pairs = pair_kernel_applies(features);  // our kernel then reads them as they are
    auto blas = [&]() -> std::pair<at::Tensor, double> {
        return {cpu_blas::blas_gram_product(features),
                1.0 / static_cast<double>(spatial_size(features))};
    };
    // Both candidates would be the BLAS product: nothing to time, and no choice to record.
    if (copy_too_large && !pairs) return blas();
    auto compute = [&](Algorithm algorithm) -> std::pair<at::Tensor, double> {
        if (algorithm == Algorithm::kOwn && pairs) return {pair_kernel_gram(features), 1.0};
        if (algorithm == Algorithm::kBlas) return blas();
        const at::Tensor F = features_for_accumulation(features);
        const int64_t B = F.size(0), C = F.size(1), n = F.size(2);
        at::Tensor gram = at::empty({B, C, C}, F.options());
        AT_DISPATCH_FLOATING_TYPES(F.scalar_type(), "nst_ext::gram", [&] {
            gram_into<scalar_t>(F.data_ptr<scalar_t>(), B, C, n, gram.data_ptr<scalar_t>());
        });
        return {gram, 1.0};
    };
    auto run_op = [&](Algorithm algorithm) {
        auto [product, scale] = compute(algorithm);
        if (op == 0 && scale != 1.0) product.mul_(scale);
    };
    auto gram_of = [&](Algorithm algorithm) {
        auto [product, scale] = compute(algorithm);
        return scale != 1.0 ? product.mul_(scale) : product;
    };
    const Algorithm algorithm =
        choose_forward_algorithm(forward_key(features, op), run_op, gram_of, seconds_of,
                                 /*can_time=*/true);
    return compute(algorithm);
}

// r = scale * r - a over [begin, end) of one batch's contiguous C*C entries,
// returning the sum of the new r^2. Sixteen independent lanes let the
// compiler vectorise the sum without reassociating it; lanes are then summed
// in double.
template <typename scalar_t>
double residual_and_squares(scalar_t* r, const scalar_t* a, int64_t count, scalar_t scale) {
    constexpr int kLanes = 16;
    scalar_t lanes[kLanes] = {};
    int64_t e = 0;
    for (; e + kLanes <= count; e += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
            const scalar_t d = scale * r[e + l] - a[e + l];
            r[e + l] = d;
            lanes[l] += d * d;
        }
    }
    double sum = 0;
    for (; e < count; ++e) {
        const scalar_t d = scale * r[e] - a[e];
        r[e] = d;
        sum += static_cast<double>(d) * static_cast<double>(d);
    }
    for (int l = 0; l < kLanes; ++l) sum += static_cast<double>(lanes[l]);
    return sum;
}

at::Tensor gram_cpu(const at::Tensor& features) {
    check_features(features);
    auto [product, scale] = product_by_chosen_algorithm(features, /*op=*/0);
    return scale == 1.0 ? product : product.mul_(scale);
}

// grad_features = (scale * (X + X^T)) @ F, shaped like features and of their
// dtype. One matrix product: (X + X^T) is formed first, so F is read once
// instead of twice as autograd of F @ F^T would.
at::Tensor symmetrized_times_features(const at::Tensor& X, double scale,
                                      const at::Tensor& features) {
    const at::Tensor Xc = X.contiguous();
    const int64_t B = Xc.size(0), C = Xc.size(1);
    at::Tensor S = at::empty_like(Xc);
    AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "nst_ext::symmetrize", [&] {
        const scalar_t* x = Xc.data_ptr<scalar_t>();
        scalar_t* s = S.data_ptr<scalar_t>();
        const auto k = static_cast<scalar_t>(scale);
        at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
            for (int64_t row = begin; row < end; ++row) {
                const int64_t b = row / C, i = row % C;
                for (int64_t j = 0; j < C; ++j)
                    s[(b * C + i) * C + j] = k * (x[(b * C + i) * C + j] + x[(b * C + j) * C + i]);
            }
        });
    });
    return cpu_blas::multiply_symmetric(S, features);
}

at::Tensor gram_backward_cpu(const at::Tensor& grad_gram, const at::Tensor& features) {
    check_features(features);
    check_square(grad_gram, features, "grad_gram", /*allow_broadcast=*/false);
    return symmetrized_times_features(grad_gram, gram_gradient_scale(features), features);
}

std::tuple<at::Tensor, at::Tensor> style_loss_cpu(const at::Tensor& features,
                                                  const at::Tensor& target) {
    check_features(features);
    check_square(target, features, "target", /*allow_broadcast=*/true);
    const at::Tensor A = target_as_batched(target);
    // The Gram is turned into the residual in place: no separate Gram tensor.
    auto [residual, scale] = product_by_chosen_algorithm(features, /*op=*/1);
    const int64_t B = residual.size(0), C = residual.size(1), CC = C * C;
    at::Tensor loss = at::empty({}, residual.options());
    AT_DISPATCH_FLOATING_TYPES(residual.scalar_type(), "nst_ext::style_loss", [&] {
        scalar_t* r = residual.data_ptr<scalar_t>();
        const scalar_t* a = A.data_ptr<scalar_t>();
        const int64_t target_batch_stride = A.size(0) == 1 ? 0 : CC;
        const double sum_sq = at::parallel_reduce(
            0, B * CC, 4096, 0.0,
            [&](int64_t begin, int64_t end, double partial_sum) {
                while (begin < end) {  // piecewise within one batch entry: r and a both contiguous
                    const int64_t b = begin / CC, stop = std::min(end, (b + 1) * CC);
                    partial_sum += residual_and_squares<scalar_t>(
                        r + begin, a + b * target_batch_stride + begin % CC, stop - begin,
                        static_cast<scalar_t>(scale));
                    begin = stop;
                }
                return partial_sum;
            },
            std::plus<double>());
        loss.fill_(sum_sq / static_cast<double>(B * CC));
    });
    return {loss, residual};
}

at::Tensor style_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features,
                                   const at::Tensor& residual) {
    check_features(features);
    check_square(residual, features, "residual", /*allow_broadcast=*/false);
    TORCH_CHECK(grad_loss.numel() == 1, "nst_ext: grad_loss must be a scalar");
    const double scale = grad_loss.item<double>() * style_loss_gradient_scale(features);
    return symmetrized_times_features(residual, scale, features);
}

using Masked = MaskedOps<gram_cpu, cpu_blas::multiply_symmetric>;

}  // namespace

TORCH_LIBRARY_IMPL(nst_ext, CPU, m) {
    m.impl("gram", &gram_cpu);
    m.impl("gram_backward", &gram_backward_cpu);
    m.impl("style_loss", &style_loss_cpu);
    m.impl("style_loss_backward", &style_loss_backward_cpu);
    m.impl("masked_gram", &Masked::gram);
    m.impl("masked_gram_backward", &Masked::gram_backward);
    m.impl("masked_style_loss", &Masked::style_loss);
    m.impl("masked_style_loss_backward", &Masked::style_loss_backward);
}

}  // namespace nst_ext
