#pragma once
// The validated arguments of one call, as the kernels and policies see them.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/kernel/workspace.hpp"

namespace sinkattn::detail {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.69314718055994531f;

struct KernelArgs {
  Problem p;
  TensorView<const float> q, k, v;
  TensorView<float> o;
  TensorView<float> lse;  // empty: not requested
  float scale = 1.f;      // natural units
  float softcap = 0.f;
  TensorView<const float> bias;         // [B, Hq, Sq, Skv]
  const float* alibi_slopes = nullptr;  // [Hq]
  const float* sink_logits = nullptr;   // [Hq], raw
  TensorView<const float> gate;         // [B, Sq, Hq, Dv or 1]; empty: no gate
  // Parameters of the non-softmax normalizations (read by the matching policy only).
  Sigmoid sigmoid;
  Softpick softpick;
  ScalableSoftmax ssmax;
  AffineScaled affine;

  // K/V as segments (core/kv_segments.hpp): seg[s] holds keys [seg_start[s], seg_start[s + 1]).
  // nseg == 0: one segment, k and v above.
  const KvSegment* seg = nullptr;
  const index_t* seg_start = nullptr;
  index_t nseg = 0;
  // RoPE on load (Options::rope); table null: off.
  const RopeTable* rope = nullptr;
  index_t rope_q0 = 0;         // position of query row 0
  index_t rope_sink_keys = 0;  // keys j < this see the query at min(position, rope_sink_qmax)
  index_t rope_sink_qmax = 0;
  // K (or the segments' K) holds the keys packed once per call (kernel/packed_kv.hpp): rows
  // contiguous and already rotated, so RoPE on load applies to the queries only. v_packed: V
  // (or the segments' V) holds contiguous rows of whole vectors (zero past Dv) that P.V reads
  // in place.
  bool k_packed = false;
  bool v_packed = false;

  // The K/V rows of the segment holding key j: keys [base, end) are rows [0, end - base) of k, v.
  struct KvPiece {
    const TensorView<const float>* k;
    const TensorView<const float>* v;
    index_t base, end;
  };
  KvPiece piece(index_t j) const {
    if (nseg == 0) return {&k, &v, 0, p.seq_kv};
    // The last segment starting at or before j that is not empty.
    const index_t s = static_cast<index_t>(std::upper_bound(seg_start, seg_start + nseg + 1, j) - seg_start) - 1;
    return {&seg[s].k, &seg[s].v, seg_start[s], seg_start[s + 1]};
  }
  // Blocks must not straddle the end of the sink keys when the query rotates differently there.
  bool rope_two_queries() const { return rope != nullptr && rope_sink_keys > 0; }
  // Whether the loop rotates each key block as it loads it.
  bool rope_keys() const { return rope != nullptr && !k_packed; }
  // Calls f(j0, j1, piece) for the parts of keys [j0, j1) that lie in one segment (and on one
  // side of rope_sink_keys).
  template <class F>
  void for_each_piece(index_t j0, index_t j1, F&& f) const {
    while (j0 < j1) {
      const KvPiece pc = piece(j0);
      index_t e = std::min(j1, pc.end);
      if (rope_two_queries() && j0 < rope_sink_keys) e = std::min(e, rope_sink_keys);
      f(j0, e, pc);
      j0 = e;
    }
  }

  // Query rows in a permuted order (neighborhood attention on multi-dimensional tiles,
  // kernel/permute.hpp): query slot i reads row q_rows[i] of Q and of the gate and writes that
  // row of O and LSE; slots < 0 are padding (zero queries, nothing written). Null: slot i = row
  // i. Read by the prefill loop only (run() never sends a call with a slot map to decode).
  const index_t* q_rows = nullptr;
  // Key rows in a permuted order (the same neighborhood calls, when each key serves about one
  // query tile): key slot j reads row kv_rows[j] of K and of V, K in place, V copied into the
  // packed panel. Null: slot j = row j.
  const index_t* kv_rows = nullptr;
  // Task order with the heads innermost, (b, query block, h): set for slot-mapped calls whose
  // K/V blocks of one query tile, over all KV heads, fit in L2 (kernel/permute.hpp).
  bool heads_inner = false;
  // Query tiles in ascending order (run_tasks): set for the permuted neighborhood calls.
  bool tiles_ascending = false;
  // O written with non-temporal stores where the prefill loop writes it from P.V
  // (output_streams in kernel/config.hpp): rows vector-aligned.
  bool stream_o = false;
  // Whether tasks prefetch the rows of their next task, blocks and O (prefetch_pays in
  // kernel/config.hpp: not when the call's tensors fit in L2). Copies are made either way.
  bool prefetch_rows = true;
  // Whether a task of one key block with V read in place also asks for its own O rows
  // (o_prefetch_one_block in kernel/config.hpp: by CPU vendor).
  bool o_prefetch_one_block = true;
  // Non-zero: the generation under which tasks keep the V panels they copy (kernel/v_panels.hpp)
  // for the next tasks on their thread, set by run() where tiles revisit key blocks.
  std::uint64_t v_panels = 0;
  // Where tasks note scratch they could not get (kernel/workspace.hpp), set by run(); the
  // call then returns Errc::out_of_memory.
  NoMemory* no_memory = nullptr;

  // The caller's row of query slot i (< 0: padding).
  index_t q_row(index_t i) const { return q_rows ? q_rows[i] : i; }
  bool want_lse() const { return lse.data != nullptr && !lse.empty(); }
  bool has_gate() const { return gate.data != nullptr && !gate.empty(); }
};

}  // namespace sinkattn::detail
