// CPU check of the tensor-core Gram kernel's index math (csrc/cuda/mma_layout.h), run by
// tests/test_mma_layout.py. Part one checks each helper exhaustively over its whole range; part
// two emulates the kernel's dataflow for whole Grams, lane by lane: the cp.async copies into the
// swizzled stages, ldmatrix / ldmatrix.trans (or the scalar TF32 loads) as the PTX ISA defines
// them, the mma fragments, the split inner dimension and the epilogue's upper-triangle writes,
// against float64. The hardware's own behaviour is written here from the PTX ISA, independently
// of the header it checks. Prints one line per part; exit status 1 on any failure.
#include "../../csrc/cuda/mma_layout.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <vector>

using namespace nst_ext::mma;

static int failures = 0;
#define EXPECT(condition, ...)                                               \
  do {                                                                       \
    if (!(condition)) {                                                      \
      if (failures++ < 20) {                                                 \
        std::fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);          \
        std::fprintf(stderr, __VA_ARGS__);                                   \
        std::fprintf(stderr, "\n");                                          \
      }                                                                      \
    }                                                                        \
  } while (0)

struct Config {
  int element_bytes;  // 2: float16/bfloat16 (m16n8k16), 4: float32 (3xTF32, m16n8k8)
  bool channels_last;
  int tile;
  bool scalar_fragments() const { return element_bytes == 4 && channels_last; }
};

static std::vector<Config> all_configs() {
  std::vector<Config> configs;
  for (int element_bytes : {2, 4})
    for (bool channels_last : {false, true})
      for (int tile : {64, 128}) configs.push_back({element_bytes, channels_last, tile});
  return configs;
}

// ---------------------------------------------------------------------------------------------
// Part one: the helpers over their whole range.

static void check_upper_tiles() {
  for (int tiles = 1; tiles <= 600; ++tiles) {
    int index = 0;
    for (int row = 0; row < tiles; ++row)
      for (int col = row; col < tiles; ++col, ++index) {
        int r, c;
        upper_tile(index, tiles, r, c);
        EXPECT(r == row && c == col, "upper_tile(%d, %d) = (%d, %d), expected (%d, %d)", index, tiles, r, c, row, col);
      }
  }
  for (int64_t channels = 1; channels <= 600; ++channels) {
    const int tile = tile_for_channels(channels);
    EXPECT(tile == 64 || tile == 128, "tile %d", tile);
    EXPECT((channels <= 128) == (tile == 64), "C=%lld takes tile %d", static_cast<long long>(channels), tile);
  }
  std::printf("upper-triangle tiles: 1..600 tiles per side, every index\n");
}

static void check_split_plans() {
  int64_t plans = 0;
  for (int64_t stage_k : {32, 64})
    for (int64_t min_stages : {1, 4})
      for (int64_t target : {1, 132, 264, 528})
        for (int64_t tile_blocks = 1; tile_blocks <= 300; tile_blocks += (tile_blocks < 40 ? 1 : 13))
          for (int64_t n = 1; n <= 70000; n += (n < 3000 ? 1 : 997)) {
            const SplitPlan plan = plan_splits(tile_blocks, n, target, stage_k, min_stages);
            ++plans;
            EXPECT(plan.splits >= 1 && plan.splits <= 65535, "splits %d", plan.splits);
            EXPECT(plan.split_length % stage_k == 0, "length %lld not a multiple of %lld",
                   static_cast<long long>(plan.split_length), static_cast<long long>(stage_k));
            // The ranges [s L, min(n, (s + 1) L)) cover [0, n) and none is empty.
            EXPECT(static_cast<int64_t>(plan.splits) * plan.split_length >= n, "n=%lld not covered",
                   static_cast<long long>(n));
            EXPECT(static_cast<int64_t>(plan.splits - 1) * plan.split_length < n, "an empty split at n=%lld",
                   static_cast<long long>(n));
            if (plan.splits > 1) {
              EXPECT(plan.split_length >= stage_k * min_stages, "split of %lld under %lld stages",
                     static_cast<long long>(plan.split_length), static_cast<long long>(min_stages));
              EXPECT(tile_blocks * (plan.splits - 1) < target, "more splits than the target needs");
            } else {
              EXPECT(tile_blocks >= target || n < 2 * stage_k * min_stages, "no split for %lld tile blocks, n=%lld",
                     static_cast<long long>(tile_blocks), static_cast<long long>(n));
            }
          }
  std::printf("split plans: %lld, each covering n exactly with non-empty ranges\n", static_cast<long long>(plans));
}

// Shared memory has 32 banks of 4 bytes; a warp's 16-byte accesses go in phases of 8 lanes, a
// phase conflict-free when its 8 chunks fall in 8 distinct 16-byte bank groups.
static bool distinct_bank_groups(const std::vector<int>& byte_offsets) {
  std::set<int> groups;
  for (int offset : byte_offsets) groups.insert((offset / kChunkBytes) % 8);
  return groups.size() == byte_offsets.size();
}

static void check_staging(const Config& config) {
  const int rows = operand_rows(config.channels_last, config.tile, config.element_bytes);
  const int row_chunks = operand_row_chunks(config.channels_last, config.tile, config.element_bytes);
  const int threads = threads_per_block(config.tile);
  EXPECT(rows * row_chunks * kChunkBytes == operand_bytes(config.tile), "operand size");
  EXPECT(rows * row_chunks == threads * kChunksPerThread, "copy slots");
  EXPECT(row_chunks % kSwizzleSpan == 0, "row of %d chunks", row_chunks);
  std::vector<int> used(rows * row_chunks, 0);
  for (int thread = 0; thread < threads; ++thread)
    for (int p = 0; p < kChunksPerThread; ++p) {
      int row, chunk;
      copy_slot(thread + p * threads, row_chunks, row, chunk);
      const int offset = chunk_offset(row, chunk, row_chunks, config.scalar_fragments());
      EXPECT(offset % kChunkBytes == 0 && offset >= 0 && offset < operand_bytes(config.tile), "offset %d", offset);
      ++used[offset / kChunkBytes];
      int channel, position;
      chunk_source(config.channels_last, row, chunk, config.element_bytes, channel, position);
      EXPECT(element_offset(config.channels_last, channel, position, config.tile, config.element_bytes,
                            config.scalar_fragments()) == offset,
             "element_offset does not invert chunk_source");
    }
  for (int count : used) EXPECT(count == 1, "a chunk copied %d times", count);
  // The copies' stores: each 8 consecutive threads' chunks in distinct bank groups.
  for (int p = 0; p < kChunksPerThread; ++p)
    for (int first = 0; first < threads; first += 8) {
      std::vector<int> offsets;
      for (int thread = first; thread < first + 8; ++thread) {
        int row, chunk;
        copy_slot(thread + p * threads, row_chunks, row, chunk);
        offsets.push_back(chunk_offset(row, chunk, row_chunks, config.scalar_fragments()));
      }
      EXPECT(distinct_bank_groups(offsets), "bank conflict in the copies' stores");
    }
}

// Every ldmatrix phase conflict-free, every scalar TF32 fragment load conflict-free, for every
// warp, mma step and block of the warp's part.
static void check_fragment_loads(const Config& config) {
  const int steps = stage_positions(config.element_bytes) / mma_k(config.element_bytes);
  for (int step = 0; step < steps; ++step)
    for (int origin = 0; origin < config.tile; origin += 16) {
      const int k0 = step * mma_k(config.element_bytes);
      if (!config.scalar_fragments()) {
        for (bool a_operand : {true, false}) {
          std::vector<int> offsets;
          for (int lane = 0; lane < 32; ++lane) {
            int channel, position;
            ldmatrix_lane_source(config.channels_last, a_operand, lane, config.element_bytes, channel, position);
            const int offset = element_offset(config.channels_last, origin + channel, k0 + position, config.tile,
                                              config.element_bytes, false);
            EXPECT(offset % kChunkBytes == 0, "ldmatrix row address not 16-byte aligned");
            offsets.push_back(offset);
          }
          for (int phase = 0; phase < 4; ++phase)
            EXPECT(distinct_bank_groups(std::vector<int>(offsets.begin() + 8 * phase, offsets.begin() + 8 * phase + 8)),
                   "ldmatrix bank conflict (channels_last=%d tile=%d bytes=%d)", config.channels_last, config.tile,
                   config.element_bytes);
        }
      } else {
        for (int e = 0; e < 4; ++e) {  // A's 4 registers, then B's 2 (for one 8-channel block)
          for (bool a_operand : {true, false}) {
            if (!a_operand && e >= 2) continue;
            std::set<int> banks;
            for (int lane = 0; lane < 32; ++lane) {
              int channel, position;
              if (a_operand) a_fragment_element(4, lane, e, channel, position);
              else b_fragment_element(4, lane, e, position, channel);
              const int offset = element_offset(true, origin + channel, k0 + position, config.tile, 4, true);
              banks.insert((offset / 4) % 32);
            }
            EXPECT(banks.size() == 32, "scalar TF32 fragment load with a bank conflict");
          }
        }
      }
    }
}

static void check_warps(const Config& config) {
  const int warps = threads_per_block(config.tile) / 32;
  std::vector<int> covered(config.tile * config.tile, 0);
  for (int warp = 0; warp < warps; ++warp) {
    int row, col;
    warp_origin(warp, config.tile, row, col);
    for (int i = 0; i < warp_rows(config.tile); ++i)
      for (int j = 0; j < kWarpCols; ++j) ++covered[(row + i) * config.tile + col + j];
    // A warp skipped on the diagonal has no element on or above it.
    if (!warp_has_work(warp, config.tile, true))
      EXPECT(row > col + kWarpCols - 1, "a skipped warp owns upper elements");
  }
  for (int count : covered) EXPECT(count == 1, "a tile element owned by %d warps", count);
  // The fragment maps: each lane-element pair is one distinct matrix position.
  for (int element_bytes : {2, 4}) {
    const int k = mma_k(element_bytes);
    std::set<int> a, b, c;
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < (element_bytes == 2 ? 8 : 4); ++e) {
        int m, kk;
        a_fragment_element(element_bytes, lane, e, m, kk);
        EXPECT(m >= 0 && m < 16 && kk >= 0 && kk < k, "A element out of range");
        a.insert(m * k + kk);
      }
      for (int e = 0; e < (element_bytes == 2 ? 4 : 2); ++e) {
        int kk, n;
        b_fragment_element(element_bytes, lane, e, kk, n);
        EXPECT(n >= 0 && n < 8 && kk >= 0 && kk < k, "B element out of range");
        b.insert(kk * 8 + n);
      }
      for (int e = 0; e < 4; ++e) {
        int m, n;
        accumulator_element(lane, e, m, n);
        c.insert(m * 8 + n);
      }
    }
    EXPECT(static_cast<int>(a.size()) == 16 * k && static_cast<int>(b.size()) == 8 * k && c.size() == 128,
           "fragment maps are not one-to-one");
  }
}

// ---------------------------------------------------------------------------------------------
// Part two: the dataflow of whole Grams.

static float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}
static uint32_t to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}
// cvt.rna.tf32.f32: to nearest, ties away from zero, 10 explicit mantissa bits.
static float tf32(float value) { return from_bits((to_bits(value) + 0x1000u) & 0xFFFFE000u); }

// An element of the features as the kernel sees it in memory: bfloat16 bits (the layout is the
// same for float16) or float32 bits.
static double element_value(const uint8_t* bytes, int element_bytes) {
  if (element_bytes == 2) {
    uint16_t half;
    std::memcpy(&half, bytes, 2);
    return from_bits(static_cast<uint32_t>(half) << 16);
  }
  float value;
  std::memcpy(&value, bytes, 4);
  return value;
}

// ldmatrix.x4 (.trans): lanes 8q .. 8q+7 give the row addresses of matrix q (8 rows of 16
// bytes); lane l receives in register q matrix q's elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1),
// or with .trans (2(l%4), l/4) and (2(l%4)+1, l/4), 16-bit each, the first in the low half. A
// 32-bit register carries one float32 (the non-transposing load of TF32 fragments).
static void emulate_ldmatrix(const std::vector<uint8_t>& shared, const int addresses[32], bool trans,
                             uint32_t registers[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int q = 0; q < 4; ++q) {
      uint16_t halves[2];
      for (int h = 0; h < 2; ++h) {
        const int row = trans ? 2 * (lane % 4) + h : lane / 4;
        const int col = trans ? lane / 4 : 2 * (lane % 4) + h;
        std::memcpy(&halves[h], &shared[addresses[8 * q + row] + 2 * col], 2);
      }
      registers[lane][q] = halves[0] | (static_cast<uint32_t>(halves[1]) << 16);
    }
}

// The value of element e of a lane's fragment registers (16-bit: two per register).
static double register_element(const uint32_t* registers, int e, int element_bytes) {
  if (element_bytes == 4) return from_bits(registers[e]);
  const uint16_t half = static_cast<uint16_t>(registers[e / 2] >> (16 * (e % 2)));
  return from_bits(static_cast<uint32_t>(half) << 16);
}

// The Gram (C x C, float32 as the kernel accumulates) of features stored as `memory` (NCHW:
// C rows of n elements; channels-last: n rows of C elements) by the kernel's dataflow for one
// batch item with `target_blocks` as the split plan's target. Counts, per element, the epilogue
// writes.
static std::vector<double> emulate_gram(const Config& config, const std::vector<uint8_t>& memory, int C, int64_t n,
                                        int64_t target_blocks, std::vector<int>& writes, int& splits_used) {
  const int eb = config.element_bytes, tile = config.tile, threads = threads_per_block(tile);
  const int tiles = (C + tile - 1) / tile, upper = tiles * (tiles + 1) / 2;
  const int stage_k = stage_positions(eb), kk = mma_k(eb);
  const SplitPlan plan = plan_splits(upper, n, target_blocks, stage_k, 4);
  splits_used = plan.splits;
  const int rows = operand_rows(config.channels_last, tile, eb);
  const int row_chunks = operand_row_chunks(config.channels_last, tile, eb);
  const int warps = threads / 32, m_tiles = warp_rows(tile) / 16, n_tiles = kWarpCols / 8;
  std::vector<double> gram(static_cast<size_t>(C) * C, 0.0);
  writes.assign(static_cast<size_t>(C) * C, 0);

  for (int index = 0; index < upper; ++index) {
    int tile_row, tile_col;
    upper_tile(index, tiles, tile_row, tile_col);
    const bool diagonal = tile_row == tile_col;
    const int origins[2] = {tile_row * tile, tile_col * tile};
    std::vector<float> total(static_cast<size_t>(threads) * m_tiles * n_tiles * 4, 0.0f);
    for (int split = 0; split < plan.splits; ++split) {
      const int64_t k_begin = split * plan.split_length;
      const int64_t k_end = std::min<int64_t>(n, k_begin + plan.split_length);
      std::vector<float> acc(total.size(), 0.0f);  // [warp][lane][m_tile][n_tile][e]
      for (int64_t k0 = k_begin; k0 < k_end; k0 += stage_k) {
        std::vector<uint8_t> shared[2];
        for (int operand = 0; operand < (diagonal ? 1 : 2); ++operand) {
          shared[operand].assign(operand_bytes(tile), 0xEE);  // stale bytes, never read if all is right
          for (int thread = 0; thread < threads; ++thread)
            for (int p = 0; p < kChunksPerThread; ++p) {
              int row, chunk, channel, position;
              copy_slot(thread + p * threads, row_chunks, row, chunk);
              chunk_source(config.channels_last, row, chunk, eb, channel, position);
              channel += origins[operand];
              const int64_t k = k0 + position;
              uint8_t* dst = &shared[operand][chunk_offset(row, chunk, row_chunks, config.scalar_fragments())];
              if (channel < C && k < k_end) {  // cp.async with 16 bytes, else with 0 (zero fill)
                const int64_t element = config.channels_last ? k * C + channel : channel * n + k;
                std::memcpy(dst, &memory[element * eb], kChunkBytes);
              } else {
                std::memset(dst, 0, kChunkBytes);
              }
            }
        }
        (void)rows;
        const std::vector<uint8_t>& a_shared = shared[0];
        const std::vector<uint8_t>& b_shared = diagonal ? shared[0] : shared[1];
        for (int warp = 0; warp < warps; ++warp) {
          if (!warp_has_work(warp, tile, diagonal)) continue;
          int warp_m, warp_n;
          warp_origin(warp, tile, warp_m, warp_n);
          for (int step = 0; step < stage_k / kk; ++step) {
            const int ks = step * kk;
            // fragments[lane][...] per m tile (A) and n tile (B)
            std::vector<std::vector<std::vector<double>>> a(m_tiles, std::vector<std::vector<double>>(32)),
                b(n_tiles, std::vector<std::vector<double>>(32));
            const int a_count = eb == 2 ? 8 : 4, b_count = eb == 2 ? 4 : 2;
            if (!config.scalar_fragments()) {
              // One ldmatrix.x4 of the A operand (16 channels from first_channel) or of the B operand
              // (two 8-channel blocks), its lanes' addresses from the header.
              auto load = [&](bool a_operand, int first_channel, uint32_t registers[32][4]) {
                int addresses[32];
                for (int lane = 0; lane < 32; ++lane) {
                  int channel, position;
                  ldmatrix_lane_source(config.channels_last, a_operand, lane, eb, channel, position);
                  addresses[lane] = element_offset(config.channels_last, first_channel + channel, ks + position,
                                                   tile, eb, false);
                }
                emulate_ldmatrix(a_operand ? a_shared : b_shared, addresses, config.channels_last, registers);
              };
              for (int mt = 0; mt < m_tiles; ++mt) {
                uint32_t registers[32][4];
                load(true, warp_m + 16 * mt, registers);
                for (int lane = 0; lane < 32; ++lane)
                  for (int e = 0; e < a_count; ++e) a[mt][lane].push_back(register_element(registers[lane], e, eb));
              }
              for (int pair = 0; pair < n_tiles / 2; ++pair) {
                uint32_t registers[32][4];
                load(false, warp_n + 16 * pair, registers);
                // Registers 0-1 are the first 8-channel block's fragment, 2-3 the second's.
                for (int lane = 0; lane < 32; ++lane)
                  for (int half = 0; half < 2; ++half)
                    for (int e = 0; e < b_count; ++e)
                      b[2 * pair + half][lane].push_back(register_element(registers[lane] + 2 * half, e, eb));
              }
            } else {
              // The float32 element (channel, position) of a channel-contiguous operand, one scalar load.
              auto element = [&](const std::vector<uint8_t>& operand, int channel, int position) {
                return element_value(&operand[element_offset(true, channel, ks + position, tile, eb, true)], eb);
              };
              for (int lane = 0; lane < 32; ++lane) {
                for (int mt = 0; mt < m_tiles; ++mt)
                  for (int e = 0; e < a_count; ++e) {
                    int m, k;
                    a_fragment_element(eb, lane, e, m, k);
                    a[mt][lane].push_back(element(a_shared, warp_m + 16 * mt + m, k));
                  }
                for (int nt = 0; nt < n_tiles; ++nt)
                  for (int e = 0; e < b_count; ++e) {
                    int k, nn;
                    b_fragment_element(eb, lane, e, k, nn);
                    b[nt][lane].push_back(element(b_shared, warp_n + 8 * nt + nn, k));
                  }
              }
            }
            // mma: D = A B + D, the operands gathered from the lanes by the fragment maps; float32
            // operands as 3xTF32 (small x big + big x small + big x big).
            for (int mt = 0; mt < m_tiles; ++mt)
              for (int nt = 0; nt < n_tiles; ++nt) {
                std::vector<double> A(16 * kk, NAN), B(kk * 8, NAN);
                for (int lane = 0; lane < 32; ++lane) {
                  for (int e = 0; e < a_count; ++e) {
                    int m, k;
                    a_fragment_element(eb, lane, e, m, k);
                    A[m * kk + k] = a[mt][lane][e];
                  }
                  for (int e = 0; e < b_count; ++e) {
                    int k, nn;
                    b_fragment_element(eb, lane, e, k, nn);
                    B[k * 8 + nn] = b[nt][lane][e];
                  }
                }
                for (int lane = 0; lane < 32; ++lane)
                  for (int e = 0; e < 4; ++e) {
                    int m, nn;
                    accumulator_element(lane, e, m, nn);
                    double sum = 0;
                    for (int k = 0; k < kk; ++k) {
                      const double x = A[m * kk + k], y = B[k * 8 + nn];
                      if (eb == 2) {
                        sum += x * y;
                      } else {
                        const float xb = tf32(static_cast<float>(x)), yb = tf32(static_cast<float>(y));
                        const float xs = tf32(static_cast<float>(x) - xb), ys = tf32(static_cast<float>(y) - yb);
                        sum += static_cast<double>(xs) * yb + static_cast<double>(xb) * ys +
                               static_cast<double>(xb) * yb;
                      }
                    }
                    float& slot = acc[(((warp * 32 + lane) * m_tiles + mt) * n_tiles + nt) * 4 + e];
                    slot = static_cast<float>(slot + sum);
                  }
              }
          }
        }
      }
      // The splits' partial tiles summed in split order (the last block to arrive does it).
      for (size_t e = 0; e < total.size(); ++e) total[e] += acc[e];
    }
    // The epilogue: the upper triangle from each accumulator, the mirror from the same value.
    for (int warp = 0; warp < warps; ++warp) {
      if (!warp_has_work(warp, tile, diagonal)) continue;
      int warp_m, warp_n;
      warp_origin(warp, tile, warp_m, warp_n);
      for (int lane = 0; lane < 32; ++lane)
        for (int mt = 0; mt < m_tiles; ++mt)
          for (int nt = 0; nt < n_tiles; ++nt)
            for (int e = 0; e < 4; ++e) {
              int m, nn;
              accumulator_element(lane, e, m, nn);
              const int i = origins[0] + warp_m + 16 * mt + m, j = origins[1] + warp_n + 8 * nt + nn;
              if (i < C && j < C && i <= j) {
                const float value = total[(((warp * 32 + lane) * m_tiles + mt) * n_tiles + nt) * 4 + e];
                gram[static_cast<size_t>(i) * C + j] = value;
                ++writes[static_cast<size_t>(i) * C + j];
                if (i != j) {
                  gram[static_cast<size_t>(j) * C + i] = value;
                  ++writes[static_cast<size_t>(j) * C + i];
                }
              }
            }
    }
  }
  return gram;
}

static void check_dataflow(const Config& config, std::mt19937& random, int& grams, int& split_grams,
                           double& worst_tf32_error) {
  const int eb = config.element_bytes, per_chunk = elements_per_chunk(eb);
  for (int C : {8, 24, 48, 64, 72, 128, 136, 200, 1, 65, 130}) {
    // The kernel's own preconditions: 16-byte rows (channels-last: C a multiple of the chunk).
    if (config.channels_last && C % per_chunk != 0) continue;
    if ((C <= 128) != (config.tile == 64)) continue;  // the tile tile_for_channels picks
    for (int64_t n : {8, 64, 200, 1032}) {
      if (!config.channels_last && n % per_chunk != 0) continue;
      for (int64_t target_blocks : {1, 40}) {
        // Features: 16-bit values k / 8 (exact in bfloat16 and float16, so every sum is exact
        // in float32); float32 values random in [0, 4).
        std::vector<uint8_t> memory(static_cast<size_t>(C) * n * eb);
        std::vector<double> F(static_cast<size_t>(C) * n);  // NCHW, exact values
        std::uniform_int_distribution<int> small(-16, 16);
        std::uniform_real_distribution<float> real(0.0f, 4.0f);
        for (int c = 0; c < C; ++c)
          for (int64_t k = 0; k < n; ++k) {
            const int64_t at = config.channels_last ? k * C + c : c * n + k;
            if (eb == 2) {
              const float value = small(random) / 8.0f;
              const uint16_t bits = static_cast<uint16_t>(to_bits(value) >> 16);
              std::memcpy(&memory[at * 2], &bits, 2);
              F[c * n + k] = value;
            } else {
              const float value = real(random);
              std::memcpy(&memory[at * 4], &value, 4);
              F[c * n + k] = value;
            }
          }
        std::vector<int> writes;
        int splits = 0;
        const std::vector<double> gram = emulate_gram(config, memory, C, n, target_blocks, writes, splits);
        ++grams;
        split_grams += splits > 1;
        double scale = 0;
        std::vector<double> exact(static_cast<size_t>(C) * C);
        for (int i = 0; i < C; ++i)
          for (int j = 0; j < C; ++j) {
            double sum = 0;
            for (int64_t k = 0; k < n; ++k) sum += F[i * n + k] * F[j * n + k];
            exact[i * C + j] = sum;
            scale = std::max(scale, std::fabs(sum));
          }
        for (int i = 0; i < C; ++i)
          for (int j = 0; j < C; ++j) {
            EXPECT(writes[i * C + j] == 1, "G[%d][%d] written %d times (C=%d n=%lld tile=%d channels_last=%d)", i, j,
                   writes[i * C + j], C, static_cast<long long>(n), config.tile, config.channels_last);
            const double error = std::fabs(gram[i * C + j] - exact[i * C + j]);
            if (eb == 2) {
              EXPECT(error == 0, "G[%d][%d] = %g, exact %g (C=%d n=%lld tile=%d channels_last=%d splits=%d)", i, j,
                     gram[i * C + j], exact[i * C + j], C, static_cast<long long>(n), config.tile,
                     config.channels_last, splits);
            } else {
              worst_tf32_error = std::max(worst_tf32_error, error / scale);
              // The tests' float32 tolerance against float64 is 1e-4 of the largest entry.
              EXPECT(error <= 1e-5 * scale, "3xTF32 G[%d][%d] off by %g of the largest entry", i, j, error / scale);
            }
          }
      }
    }
  }
}

// argv[1]: the seed of the emulated features (the Python test draws a fresh one and prints it).
int main(int argc, char** argv) {
  check_upper_tiles();
  check_split_plans();
  for (const Config& config : all_configs()) {
    check_staging(config);
    check_fragment_loads(config);
    check_warps(config);
  }
  std::printf("staging, swizzle, ldmatrix addresses, fragment maps: 8 configurations, conflict-free\n");
  const unsigned seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1u;
  std::mt19937 random(seed);
  int grams = 0, split_grams = 0;
  double worst_tf32_error = 0;
  for (const Config& config : all_configs()) check_dataflow(config, random, grams, split_grams, worst_tf32_error);
  std::printf("dataflow: %d Grams emulated lane by lane (%d with a split inner dimension); 16-bit exact, "
              "3xTF32 within %.2g of the largest entry\n",
              grams, split_grams, worst_tf32_error);
  if (failures) std::printf("%d checks FAILED\n", failures);
  return failures ? 1 : 0;
}
