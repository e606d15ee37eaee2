#pragma once
// Tile sizes of the fused loop, and why.
//
//   query tile  BQ  = tile::kQRows = 64 rows (4 AVX-512 or 8 AVX2 vectors of lanes): the width
//                     of S^T; Q^T (Dqk x 64 floats = 32 KiB at D = 128) is
//                     packed once per tile and re-read from L1/L2 for every key block.
//   key block   BKV = 64 keys: S^T (64 x 64 floats = 16 KiB) stays in L1 between the three
//                     passes over it (score, max, exp); the V block (64 x Dv) streams from
//                     L2 once per register tile of O. Larger blocks amortise the O rescale
//                     (one pass over O per block) but push S^T out of L1.
//   decode      Sq * group <= kDecodeMaxRows: the query rows of one KV head are too few to
//                     fill the lanes, so the split-KV decode kernel reads each K/V row once
//                     for all of them and splits the keys across threads instead.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__has_include)
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf: the L2 size
#endif
#endif

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/tile/gemm.hpp"

namespace sinkattn::detail {

inline constexpr index_t kBlockQ = tile::kQRows;
inline constexpr index_t kBlockKV = 64;

// Whether P.V reads V rows where they are when they are not contiguous (token-major layouts:
// Hkv * Dv floats apart; a key slot map or a key list: through one pointer per row), instead
// of copying each key block into a contiguous panel first. Such rows fall into a fraction of
// the L1 sets, so every register tile of O streams the block's V rows from L2 again. With
// the AVX-512 register tile (6 rows x 4 vectors) each V row loaded feeds 24 FMAs and the L2
// keeps pace; the copy, whose loads wait on rows that have only just been asked for, cost
// more: reading in place took 0.93x the time of dense attention (B1 H4 S4096 D64 BSHD),
// 0.95-0.97x at D128 and at a 4 KiB row stride, 0.96x for 8x8 blocked neighborhoods (Zen 4,
// bench/RESULTS.md run M). The AVX2 tile (6 x 2, 12 FMAs per row chunk) took 1.12-1.15x
// in place at a 4 KiB stride and through row pointers: there the copy stays.
inline constexpr bool kVRowsInPlace = tile::kRegisters >= 32;

// The size of cpu0's level-`level` (2, 3) cache in bytes: Linux's figure (sysfs, "16384K")
// first, then the C library's, 0 when neither says. glibc reports the whole package's L3 on
// some AMD parts (256 MiB on an EPYC whose core complex, the L3 a core can use, has 16 MiB).
inline std::size_t cache_bytes(int level) {
  (void)level;  // (read by neither source on some platforms)
#if defined(__linux__)
  const auto read = [](int index, const char* file, char* buf, int n) {
    char path[80];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/%s", index, file);
    std::FILE* f = std::fopen(path, "r");
    if (f == nullptr) return false;
    const bool ok = std::fgets(buf, n, f) != nullptr;
    std::fclose(f);
    return ok;
  };
  char buf[32];
  for (int i = 0; i < 8; ++i) {
    if (!read(i, "level", buf, sizeof buf) || std::atoi(buf) != level) continue;
    if (!read(i, "size", buf, sizeof buf)) break;
    char* end = nullptr;
    const unsigned long n = std::strtoul(buf, &end, 10);
    const int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : 0;
    if (n > 0) return static_cast<std::size_t>(n) << shift;
    break;
  }
#endif
  long n = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  n = sysconf(level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
#endif
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

// The L2 size of this core in bytes; 1 MiB when nothing says (a common size: Zen 4, Ice Lake
// server).
inline std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
    const std::size_t n = cache_bytes(2);
    return n > 0 ? n : std::size_t{1} << 20;
  }();
  return bytes;
}

// The last-level cache (L3) one core shares, in bytes; 32 MiB when nothing says.
inline std::size_t l3_cache_bytes() {
  static const std::size_t bytes = [] {
    const std::size_t n = cache_bytes(3);
    return n > 0 ? n : std::size_t{32} << 20;
  }();
  return bytes;
}

// Whether the fused loop writes O with non-temporal stores (Options::output_stores,
// KernelArgs::stream_o): only where they can be (vector-aligned rows: address and every
// stride), and under `automatic` when O would not stay cached for the next operation anyway
// (Q, K, V and O together at least the last-level cache: its first rows are evicted before
// the call ends) and is larger than an L2 (then its read-for-ownership traffic, one read of
// every O line before it is overwritten, is worth saving). On short tasks that read is a large
// share of the memory traffic: streaming took 0.86x the time of a blocked 8x8 neighborhood
// call, 0.96x for 13x13 and for 1-D 256-key blocks, 1.00x for dense (B1 H4 S4096 D64 BSHD:
// 16 MiB of tensors, a 16 MiB L3; Zen 2, bench/RESULTS.md run W).
// Bytes of Q, K, V and O one call reads and writes (whole tensors, every batch and head).
struct CallBytes {
  double o = 0, all = 0;
};
inline CallBytes call_bytes(const Problem& p) {
  const double f = sizeof(float);
  CallBytes c;
  c.o = f * static_cast<double>(p.batch * p.seq_q * p.heads_q * p.dim_v);
  c.all = c.o + f * static_cast<double>(p.batch * p.seq_q * p.heads_q * p.dim_qk) +
          f * static_cast<double>(p.batch * p.seq_kv * p.heads_kv * (p.dim_qk + p.dim_v));
  return c;
}

inline bool output_streams(const Problem& p, const TensorView<float>& o, OutputStores how,
                           std::size_t llc_bytes = l3_cache_bytes(), std::size_t l2_bytes = l2_cache_bytes()) {
  if (!tile::kStreamStores || how == OutputStores::cached || o.data == nullptr) return false;
  const auto vec = static_cast<std::uintptr_t>(sizeof(float) * tile::kWidth);
  if (reinterpret_cast<std::uintptr_t>(o.data) % vec != 0 || o.stride[3] != 1) return false;
  for (int d = 0; d < 3; ++d)
    if (o.stride[d] % tile::kWidth != 0) return false;
  if (how == OutputStores::streamed) return true;
  const CallBytes c = call_bytes(p);
  return c.all >= static_cast<double>(llc_bytes) && c.o > static_cast<double>(l2_bytes);
}

// Whether the prefill tasks ask for rows before they use them (KernelArgs::prefetch_rows:
// the next task's Q, K, V, a block's V and next K rows, O). Not when Q, K, V and O together
// fit in the L2: then they are mostly there already (from the previous call, or from the
// operation that wrote them), and a prefetch of a line in L2 still takes a fill buffer that
// the products' own L1 misses wait for. Without them a call whose tensors take 0.5-0.8 of a 2 MiB
// L2 took 0.89-0.97x the time (2-D neighborhoods 8x8 blocked, 16x16 blocked and 13x13, dense;
// both layouts), 0.97-0.99x with 64-key blocks. At 1.1-2x the L2 dense, 64-key blocks and
// blocked 8x8 lost or gained nothing (0.99-1.02; 13x13 and 16x16 blocked 0.95-0.98: not enough
// to draw the line there), and at 8x (16 MiB) the streams pay for k = s = 16 and 1-D 256-key
// blocks (bench/RESULTS.md, run AG).
// prefetch_in_l2 keeps them on for every call (tests compare both; results are identical).
inline bool prefetch_in_l2 = false;
inline bool prefetch_pays(const Problem& p, std::size_t l2_bytes = l2_cache_bytes()) {
  return prefetch_in_l2 || call_bytes(p).all > static_cast<double>(l2_bytes);
}

// Whether a task of one key block (blocked 8x8 neighborhoods, 64-key blocks) whose P.V reads
// V in place (kVRowsInPlace) asks for its own O rows during its only S^T
// (KernelArgs::o_prefetch_one_block). The two AVX-512 cores measured disagree, so the rule
// follows the vendor. On an Intel Xeon (Sapphire Rapids class) that prefetch held fill buffers
// the rows needed sooner waited for (this block's V, the next task's K/V): k = s = 8 took
// 0.95-0.96x the time without it (run AF). On a Zen 4 the same change took 1.13-1.19x the time
// (in-binary A/B, B1 H4 S4096 D64 token-major; run AN): its L1 tracks more misses at once, and
// the stores at the task's end then wait on O lines from memory. Other CPUs keep the prefetch,
// the older rule. o_prefetch_one_block_override (tests): -1 the rule, 0 never, 1 always.
inline int o_prefetch_one_block_override = -1;
inline bool o_prefetch_one_block() {
  if (o_prefetch_one_block_override >= 0) return o_prefetch_one_block_override != 0;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return !intel;
#else
  return true;
#endif
}

// Task order (KernelArgs::heads_inner): true when the keys one query tile visits, over all
// KV heads, take at most half of the L2. Then the heads of a tile can run back to back with
// their K/V in L2 together, and a token's Q and O rows (every head, adjacent in token-major
// layouts) are used by consecutive tasks. Short tiles pay for their scattered or strided Q/O
// rows: block attention with 256-key blocks (B1 H2 D128) 0.94-0.97x the time, 2-D
// neighborhood 13x13 (342 keys, 4 KV heads, D64) 0.95-0.97x with a 2 MiB L2. Past it the
// (b, h, tile) order, reusing one head's K/V across neighbouring tiles, is faster: 3-D 7^3
// (614 keys, 1.2 MiB) measured 1.05x heads-inner with a 2 MiB L2, 1.09x with 1 MiB.
// l2_fraction: the share of the L2 those keys may take (kernel/permute.hpp passes all of it).
inline bool heads_inner_fits(double keys_per_tile, const Problem& p, double l2_fraction = 0.5) {
  const double bytes =
      keys_per_tile * static_cast<double>(p.dim_qk + p.dim_v) * sizeof(float) * static_cast<double>(p.heads_kv);
  return bytes <= l2_fraction * static_cast<double>(l2_cache_bytes());
}

}  // namespace sinkattn::detail
