#pragma once
// V panels kept per thread from one task to the next.
//
// Where P.V cannot read a key block's V rows in place (strided token-major rows on a
// 16-register ISA: kVRowsInPlace in kernel/config.hpp), the prefill loop copies them into a
// contiguous panel, during S^T, per block and per task. Block-aligned masks then copy each
// block once per query tile that sees it: a 1-D block of 256 keys four times per head (the
// copy took 5.8% of that call; bench/RESULTS.md, run Z), though the tiles of one block run
// back to back on a thread. The thread keeps the last few panels, tagged with the rows they
// hold, so the later tiles read the first one's copy from L2. Packing V once per call instead
// costs a pass over V before the tasks (1.007x the time; run Z).
//
// A panel is valid for one run of the loop (KernelArgs::v_panels, a fresh generation per
// call: V is the caller's and may change between calls); its padding columns stay zero.

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "sinkattn/core/types.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/workspace.hpp"

namespace sinkattn::detail {

// Whether run() keeps panels where they pay (tests turn it off to compare; set it only while
// no call runs).
inline bool keep_v_panels = true;

// A generation no earlier call has used (never 0, which means "no panels kept").
inline std::uint64_t next_v_panel_generation() {
  static std::atomic<std::uint64_t> counter{0};
  return counter.fetch_add(1, std::memory_order_relaxed) + 1;
}

class VPanels {
 public:
  static constexpr int kSlots = 8;  // 64-key blocks: 16 KiB each at D 64

  // What a panel holds: rows [0, nk) of V from `src` (consecutive, or through `map`).
  struct Tag {
    std::uint64_t gen = 0;
    const float* src = nullptr;
    const index_t* map = nullptr;
    index_t nk = 0;
  };
  struct Panel {
    float* data = nullptr;  // null: no memory (copy into the task's own panel)
    bool hit = false;       // data already holds the rows
  };

  // The panel for block j0 with tag t, rows ld floats apart and `cols` of them copied (the
  // columns past them zero): hit when its slot holds those rows (or more of them); otherwise
  // the slot is the caller's to fill (its tag set now: the caller copies the rows before
  // anything else runs on this thread).
  Panel get(const Tag& t, index_t j0, index_t ld, index_t cols) {
    if (ld != ld_ || cols != cols_) {
      float* p = ws_.try_floats(static_cast<std::size_t>(kSlots * kBlockKV * ld));
      if (p == nullptr) return {};
      std::fill(p, p + kSlots * kBlockKV * ld, 0.f);  // the padding columns, once
      base_ = p;
      for (Tag& x : tags_) x = Tag{};
      ld_ = ld, cols_ = cols;
    }
    const int s = static_cast<int>((j0 / kBlockKV) % kSlots);
    float* data = base_ + s * kBlockKV * ld;
    Tag& x = tags_[s];
    if (x.gen == t.gen && x.src == t.src && x.map == t.map && x.nk >= t.nk) {
      ++hits_;
      return {data, true};
    }
    x = t;
    return {data, false};
  }
  // Blocks found in a panel so far (tests: whether the panels served).
  long hits() const { return hits_; }

 private:
  Workspace ws_;
  float* base_ = nullptr;
  Tag tags_[kSlots];
  index_t ld_ = 0, cols_ = 0;
  long hits_ = 0;
};

// Whether the prefill loop copies some V rows into panels: the conditions of its per-block
// v_copy (prefill_task), mapped or not (the affine-scaled normalization, which also copies
// mapped rows, never runs on mapped keys: kernel/permute.hpp). They stay written out there:
// routing the loop's through one shared function changed GCC's inlining of mma_pv and cost
// ~1% (bench/RESULTS.md, run AA).
inline bool copies_v_rows(const KernelArgs& a) {
  if (a.v_packed) return false;
  const auto copies = [&](const TensorView<const float>& v) {
    if (v.empty() || v.stride[3] != 1) return false;
    const bool whole = a.p.dim_v % tile::kWidth == 0;
    return !(whole && (v.stride[1] == a.p.dim_v || kVRowsInPlace));
  };
  if (a.nseg == 0) return copies(a.v);
  for (index_t s = 0; s < a.nseg; ++s)
    if (copies(a.seg[s].v)) return true;
  return false;
}

inline VPanels& thread_v_panels() {
  thread_local VPanels p;
  return p;
}

}  // namespace sinkattn::detail
