// The index math of the tensor-core Gram kernel (gram_mma.cu), written once for the GPU and for
// the CPU test that checks it exhaustively and emulates a block's whole dataflow through it
// (tests/csrc/mma_layout_test.cpp): which tile a block computes, how the inner dimension is
// split, where each 16-byte chunk of the features lands in shared memory, which row address each
// lane hands ldmatrix, and which (row, column) each fragment register holds. Plain C++ on the
// host: no CUDA header is needed.
//
// Terms. The Gram G = F F^T of features F (C channels x n positions) is computed in square tiles
// of `tile` channels (64 or 128) of the upper triangle only. Per pipeline stage a block stages,
// for each of its two channel ranges (the tile's rows i and columns j; one range on the
// diagonal), 128 bytes of the inner dimension per channel: stage_k = 128 / element_bytes
// positions. NCHW features are staged as they lie, one row of 8 chunks per channel
// ("position-contiguous"); channels-last features as they lie too, one row per position of
// tile * element_bytes / 16 chunks ("channel-contiguous").
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NST_MMA_HD __host__ __device__ __forceinline__
#define NST_MMA_HD_CONSTEXPR __host__ __device__ constexpr
#else
#define NST_MMA_HD inline
#define NST_MMA_HD_CONSTEXPR constexpr
#endif

namespace nst_ext {
namespace mma {

constexpr int kChunkBytes = 16;      // one cp.async, one ldmatrix row
constexpr int kStageRowBytes = 128;  // inner-dimension bytes per channel per stage
constexpr int kSwizzleSpan = 8;      // chunks permuted among themselves by the swizzle

NST_MMA_HD_CONSTEXPR int elements_per_chunk(int element_bytes) {
    return kChunkBytes / element_bytes;
}
NST_MMA_HD_CONSTEXPR int stage_positions(int element_bytes) {
    return kStageRowBytes / element_bytes;
}
// m16n8k16 for float16/bfloat16, m16n8k8 for TF32 (float32 features).
NST_MMA_HD_CONSTEXPR int mma_k(int element_bytes) { return element_bytes == 2 ? 16 : 8; }
NST_MMA_HD_CONSTEXPR int threads_per_block(int tile) { return 2 * tile; }
NST_MMA_HD_CONSTEXPR int operand_bytes(int tile) { return tile * kStageRowBytes; }

// The staged operand of one stage: rows of row_chunks 16-byte chunks.
NST_MMA_HD_CONSTEXPR int operand_rows(bool channels_last, int tile, int element_bytes) {
    return channels_last ? stage_positions(element_bytes) : tile;
}
NST_MMA_HD_CONSTEXPR int operand_row_chunks(bool channels_last, int tile, int element_bytes) {
    return channels_last ? tile * element_bytes / kChunkBytes : kStageRowBytes / kChunkBytes;
}

// Tile side for C channels: 64 up to 128 channels (more blocks for the shallow layers), 128 above.
NST_MMA_HD int tile_for_channels(int64_t channels) { return channels <= 128 ? 64 : 128; }

// ---------------------------------------------------------------------------------------------
// Which tile: index (0 .. tiles(tiles+1)/2) of the upper triangle of a tiles x tiles grid,
// row-major, to (row, col), row <= col. Closed form with an exact integer correction.
// The index of row r's first tile.
NST_MMA_HD int first_upper_tile_of_row(int r, int tiles) { return r * tiles - r * (r - 1) / 2; }

NST_MMA_HD void upper_tile(int index, int tiles, int& row, int& col) {
    // r is the largest row with first(r) <= index: the root of r^2 - (2 tiles + 1) r + 2 index = 0,
    // then corrected to the exact integer.
    const double t = 2.0 * tiles + 1.0;
    int r = static_cast<int>((t - sqrt(t * t - 8.0 * index)) / 2.0);
    if (r < 0) r = 0;
    if (r > tiles - 1) r = tiles - 1;
    while (r > 0 && first_upper_tile_of_row(r, tiles) > index) --r;
    while (r + 1 < tiles && first_upper_tile_of_row(r + 1, tiles) <= index) ++r;
    row = r;
    col = r + (index - first_upper_tile_of_row(r, tiles));
}

// ---------------------------------------------------------------------------------------------
// How the inner dimension n is split: into `splits` ranges of split_length positions (a multiple
// of stage_k; the last one shorter), enough to give target_blocks blocks in all where the tiles
// alone are fewer, but never a split_length under min_stages stages. Every range is non-empty.
struct SplitPlan {
    int splits;
    int64_t split_length;
};

NST_MMA_HD SplitPlan plan_splits(int64_t tile_blocks, int64_t n, int64_t target_blocks,
                                 int64_t stage_k, int64_t min_stages) {
    int64_t splits = 1;
    if (tile_blocks < target_blocks) splits = (target_blocks + tile_blocks - 1) / tile_blocks;
    const int64_t shortest = stage_k * min_stages;
    const int64_t most = n / shortest;
    if (splits > most) splits = most;
    if (splits > 65535) splits = 65535;
    if (splits < 1) splits = 1;
    int64_t length = (n + splits - 1) / splits;
    length = (length + stage_k - 1) / stage_k * stage_k;
    SplitPlan plan;
    plan.split_length = length;
    plan.splits = static_cast<int>((n + length - 1) / length);
    return plan;
}

// ---------------------------------------------------------------------------------------------
// Where chunks lie. The swizzle permutes the chunks of a row within each group of eight by XOR,
// so that the eight rows one ldmatrix phase reads (or the four rows a scalar TF32 fragment load
// reads, 2 chunks each) fall in distinct 16-byte bank groups.
NST_MMA_HD int swizzled_chunk(int row, int chunk, bool scalar_fragments) {
    const int pattern = scalar_fragments ? 2 * (row % 4) : row % kSwizzleSpan;
    return chunk ^ pattern;
}

// Byte offset of chunk `chunk` of row `row` in a staged operand.
NST_MMA_HD int chunk_offset(int row, int chunk, int row_chunks, bool scalar_fragments) {
    return (row * row_chunks + swizzled_chunk(row, chunk, scalar_fragments)) * kChunkBytes;
}

// The (channel, position) of the first element of a staged chunk, relative to the operand's first
// channel and the stage's first position.
NST_MMA_HD void chunk_source(bool channels_last, int row, int chunk, int element_bytes,
                             int& channel, int& position) {
    const int per_chunk = elements_per_chunk(element_bytes);
    if (channels_last) {
        channel = chunk * per_chunk;
        position = row;
    } else {
        channel = row;
        position = chunk * per_chunk;
    }
}

// The byte offset of element (channel, position) in a staged operand: the inverse of chunk_source.
NST_MMA_HD int element_offset(bool channels_last, int channel, int position, int tile,
                              int element_bytes, bool scalar_fragments) {
    const int per_chunk = elements_per_chunk(element_bytes);
    const int row_chunks = operand_row_chunks(channels_last, tile, element_bytes);
    const int row = channels_last ? position : channel;
    const int along = channels_last ? channel : position;
    return chunk_offset(row, along / per_chunk, row_chunks, scalar_fragments) +
           (along % per_chunk) * element_bytes;
}

// Thread `thread` copies the chunks slot, slot + threads, ... of each staged operand; slot s is
// chunk s % row_chunks of row s / row_chunks. Every operand has exactly 4 chunks per thread.
constexpr int kChunksPerThread = 4;
NST_MMA_HD void copy_slot(int slot, int row_chunks, int& row, int& chunk) {
    row = slot / row_chunks;
    chunk = slot % row_chunks;
}

// ---------------------------------------------------------------------------------------------
// The warps. A block of 2 * tile threads has tile / 16 warps in 2 rows of tile / 32; each warp
// owns a (tile / 2) x 32 part of the tile, in (tile / 32) x 4 mma tiles of 16 x 8.
NST_MMA_HD_CONSTEXPR int warp_rows(int tile) { return tile / 2; }
constexpr int kWarpCols = 32;
NST_MMA_HD void warp_origin(int warp, int tile, int& row, int& col) {
    const int per_row = tile / kWarpCols;
    row = (warp / per_row) * warp_rows(tile);
    col = (warp % per_row) * kWarpCols;
}
// In a diagonal tile a warp whose part lies wholly below the diagonal has nothing to compute.
NST_MMA_HD bool warp_has_work(int warp, int tile, bool diagonal) {
    int row, col;
    warp_origin(warp, tile, row, col);
    return !diagonal || row <= col + kWarpCols - 1;
}

// ---------------------------------------------------------------------------------------------
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16" and "mma.m16n8k8" with .tf32). g is
// lane / 4, t is lane % 4. For 16-bit types register r holds elements 2r and 2r + 1.
//
// Element e of a lane's A fragment (16 x k): its (row m, column k).
NST_MMA_HD void a_fragment_element(int element_bytes, int lane, int e, int& m, int& k) {
    const int g = lane / 4, t = lane % 4;
    if (element_bytes == 2) {  // a0..a7
        m = g + 8 * ((e / 2) % 2);
        k = 2 * t + (e % 2) + 8 * (e / 4);
    } else {  // a0..a3, TF32
        m = g + 8 * (e % 2);
        k = t + 4 * (e / 2);
    }
}
// Element e of a lane's B fragment (k x 8): its (row k, column n).
NST_MMA_HD void b_fragment_element(int element_bytes, int lane, int e, int& k, int& n) {
    const int g = lane / 4, t = lane % 4;
    n = g;
    k = element_bytes == 2 ? 2 * t + (e % 2) + 8 * (e / 2) : t + 4 * e;
}
// Element e (0..3) of a lane's accumulator (16 x 8, float32): its (row m, column n).
NST_MMA_HD void accumulator_element(int lane, int e, int& m, int& n) {
    m = lane / 4 + 8 * (e / 2);
    n = 2 * (lane % 4) + (e % 2);
}

// The element a lane's row address points at in an ldmatrix.x4 that loads one A fragment (16
// channels from m0) or the B fragments of two 8-channel blocks (from n0), for the mma step's
// first position k0: (channel, position) relative to (m0 or n0, k0). Matrix q = lane / 8 of the
// four: for A, q covers channels 8 (q % 2) and positions per_chunk (q / 2) on; for B, channels
// 8 (q / 2) and positions per_chunk (q % 2) on. Lane % 8 picks the matrix's row: a channel in
// position-contiguous operands (ldmatrix), a position in channel-contiguous ones (ldmatrix.trans,
// 16-bit types only; TF32 fragments of those are loaded one element at a time).
NST_MMA_HD void ldmatrix_lane_source(bool channels_last, bool a_operand, int lane,
                                     int element_bytes, int& channel, int& position) {
    const int q = lane / 8, r = lane % 8, per_chunk = elements_per_chunk(element_bytes);
    const int channel_block = 8 * (a_operand ? q % 2 : q / 2);
    const int position_block = per_chunk * (a_operand ? q / 2 : q % 2);
    channel = channel_block + (channels_last ? 0 : r);
    position = position_block + (channels_last ? r : 0);
}

}  // namespace mma
}  // namespace nst_ext
