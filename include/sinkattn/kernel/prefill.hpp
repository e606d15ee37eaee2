#pragma once
// The fused forward loop (flash attention on the CPU): one task = one query tile of one
// (batch, query head); it streams the visible KV blocks through
//
//     S^T = K . Q^T                 tile::mma_kqt        (keys x query lanes)
//     Score::apply                  scale/softcap/bias/ALiBi -> log2 units
//     apply_mask                    Partial blocks only
//     Norm::update                  online softmax: weights in place, rescale factors
//     O = alpha O + P . V           tile::mma_pv (alpha only when some lane's max moved)
//
// and finishes with Sink (extra logit), Norm::finalize (1/l, LSE) and the Gate epilogue. The
// two ends of P.V (tile::PvIo): a lane vector's first block starts O from zero, and with a
// plain epilogue (O = acc / l) the last block finalizes first and writes the caller's O itself.
// Nothing of size Sq x Skv is ever materialised; the workspace is O(tile).

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/fp_env.hpp"
#include "sinkattn/kernel/v_panels.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/normalize.hpp"
#include "sinkattn/policy/score.hpp"
#include "sinkattn/tile/gemm.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn {

// A compile-time bundle of policies: one specialisation of the fused loop.
template <class ScoreP, class MaskP, class NormP, class SinkP, class GateP>
struct Variant {
  using Score = ScoreP;
  using Mask = MaskP;
  using Norm = NormP;
  using Sink = SinkP;
  using Gate = GateP;
};

namespace detail {

// Floats of workspace one prefill task needs.
inline index_t prefill_workspace_floats(const Problem& p) {
  const index_t dv_pad = tile::round_up(std::max<index_t>(p.dim_v, 1), tile::kWidth);
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  return 2 * p.dim_qk * kBlockQ  // Q^T (and Q^T rotated for the sink keys, RoPE on load)
         + kBlockKV * kBlockQ    // S^T
         + kBlockQ * dv_pad      // O accumulator
         + kBlockKV * dv_pad     // packed V (tail-y V; strided V without kVRowsInPlace)
         + kBlockKV * dqk_pad;   // packed K (strided K only)
}

// Masks that can hand a query tile's key blocks over as lists of keys (has_lists(i0, nq),
// for_each_block_list): the permuted neighborhood policy.
template <class M, class = void>
struct has_block_lists : std::false_type {};
template <class M>
struct has_block_lists<M, std::void_t<decltype(std::declval<const M&>().has_lists(index_t{}, index_t{}))>>
    : std::true_type {};

// The key blocks of query tile [i0, i0 + nq) in the order the loop visits them: f(j0, j1,
// kind, rows, piece, keys) per block inside one KV segment (KernelArgs::for_each_piece). keys
// non-null: a list block (has_block_lists; one segment, no RoPE on load, and Lists: the
// normalizations that sum V rows per block take the plain blocks), whose rows r < j1 = n are
// the keys keys[r], j0 = 0.
template <bool Lists, class Mask, class F>
void for_each_task_block(const KernelArgs& a, const Mask& mask, index_t i0, index_t nq, F&& f) {
  if constexpr (Lists && has_block_lists<Mask>::value) {
    if (a.nseg == 0 && !a.rope && mask.has_lists(i0, nq)) {
      const KernelArgs::KvPiece pc = a.piece(0);
      mask.for_each_block_list(i0, [&](index_t j0, const index_t* keys, index_t n, policy::BlockKind kind,
                                       policy::RowSpan rows, const std::uint64_t* vis) {
        if (keys == nullptr)
          f(j0, j0 + n, kind, rows, pc, nullptr, vis);
        else
          f(index_t{0}, n, kind, rows, pc, keys, vis);
      });
      return;
    }
  }
  policy::for_each_kv_block_rows(mask, i0, i0 + nq, kBlockKV, tile::kWidth,
                                 [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan rows) {
                                   a.for_each_piece(j0, j1, [&](index_t s0, index_t s1, const KernelArgs::KvPiece& pc) {
                                     f(s0, s1, kind, rows, pc, nullptr, nullptr);
                                   });
                                 });
}

// The K/V row of each of the nk rows of block [j0, ...) when they are not consecutive rows of
// its segment: a list block's keys, a key slot map's rows (KernelArgs::kv_rows), or both
// composed into buf (kBlockKV entries). Null: consecutive, from the block's first row.
inline const index_t* block_row_map(const KernelArgs& a, index_t j0, index_t nk, const index_t* keys, index_t* buf) {
  if (a.kv_rows && keys) {
    for (index_t r = 0; r < nk; ++r) buf[r] = a.kv_rows[keys[r]];
    return buf;
  }
  return a.kv_rows ? a.kv_rows + j0 : keys;
}

// One task of the prefill loop: query tile qb of head h of batch b; b < 0: none.
struct PrefillTask {
  index_t b = -1, h = 0, qb = 0;
};

// The query-side rows of task `t` (b >= 0) in x (Q, or O) as a prefetch stream, `cols` floats
// each: through the query slot map when there is one (padding slots none).
template <class T>
tile::RowStream task_rows_stream(const TensorView<T>& x, index_t cols, const KernelArgs& a, PrefillTask t) {
  const index_t i0 = t.qb * kBlockQ, nq = std::min(kBlockQ, a.p.seq_q - i0);
  const index_t bytes = cols * static_cast<index_t>(sizeof(float));
  if (a.q_rows) return {x.ptr(t.b, 0, t.h), x.stride[1], nq, bytes, nullptr, 0, a.q_rows + i0};
  return {x.ptr(t.b, i0, t.h), x.stride[1], nq, bytes};
}

// The O rows of task `t`, which it writes last.
inline tile::RowStream task_o_stream(const KernelArgs& a, PrefillTask t) {
  return task_rows_stream(a.o, a.p.dim_v, a, t);
}

// The rows task `t` reads first, as prefetch streams (at most 3 into `out`; `rows`, kBlockKV
// entries, holds a composed key map that a stream may point to): out[0] its Q rows, out[1],
// out[2] the K and V rows of its first key block (none when it sees no key, or kv is false;
// prefill_task issues them during different products).
// Without them a short task (a neighborhood or block tile that visits one to a few key
// blocks) starts by waiting for rows that nothing has asked for: its Q gather, its first V
// copy and its O store stalled on memory for about a third of a blocked 8x8 neighborhood call
// (bench/RESULTS.md); asked for while the previous task computes, they are in L2 when the
// task starts. Its O rows, written last, each task asks for itself (task_o_stream).
template <bool Lists = true, class Mask>
int next_task_streams(tile::RowStream* out, index_t* rows, const KernelArgs& a, const Mask& mask_all, PrefillTask t,
                      bool kv = true) {
  const Problem& p = a.p;
  if (t.b < 0) return 0;
  const index_t i0 = t.qb * kBlockQ, nq = std::min(kBlockQ, p.seq_q - i0);
  const index_t g = p.kv_head(t.h);
  const index_t q_bytes = p.dim_qk * static_cast<index_t>(sizeof(float));
  const index_t v_bytes = p.dim_v * static_cast<index_t>(sizeof(float));
  int n = 0;
  out[n++] = task_rows_stream(a.q, p.dim_qk, a, t);
  if (!kv) return n;
  // The first key block, read as prefill_task's block() reads it.
  decltype(auto) mask = policy::bind(mask_all, t.b, t.h);
  bool found = false;
  index_t j0 = 0, j1 = 0;
  const index_t* keys = nullptr;
  KernelArgs::KvPiece pc{};
  for_each_task_block<Lists>(a, mask, i0, nq,
                             [&](index_t s0, index_t s1, policy::BlockKind, policy::RowSpan,
                                 const KernelArgs::KvPiece& piece, const index_t* ks, const std::uint64_t*) {
                               if (!found) found = true, j0 = s0, j1 = s1, keys = ks, pc = piece;
                             });
  if (!found) return n;
  const index_t* map = block_row_map(a, j0, j1 - j0, keys, rows);
  const index_t r0 = map ? 0 : j0 - pc.base;
  out[n++] = {pc.k->ptr(t.b, r0, g), pc.k->stride[1], j1 - j0, q_bytes, nullptr, 0, map};
  out[n++] = {pc.v->ptr(t.b, r0, g), pc.v->stride[1], j1 - j0, v_bytes, nullptr, 0, map};
  return n;
}

template <class V>
void prefill_task(const KernelArgs& a, const typename V::Mask& mask_all, index_t b, index_t h, index_t qb,
                  Workspace& ws, PrefillTask next = {}) {
  const FlushToZeroScope ftz;                          // masked lanes underflow in exp2 (kernel/fp_env.hpp)
  decltype(auto) mask = policy::bind(mask_all, b, h);  // the (b, h) view of a head-dependent mask
  const Problem& p = a.p;
  const index_t i0 = qb * kBlockQ;
  const index_t nq = std::min(kBlockQ, p.seq_q - i0);
  const int vecs = static_cast<int>((nq + tile::kWidth - 1) / tile::kWidth);
  const index_t g = p.kv_head(h);
  const index_t dv_pad = tile::round_up(p.dim_v, tile::kWidth);
  const index_t dv_vecs = dv_pad / tile::kWidth;
  const index_t dqk_pad = tile::round_up(p.dim_qk, tile::kWidth);

  // No memory: the task ends before writing anything and the call reports it (NoMemory).
  float* qt = ws.floats(static_cast<std::size_t>(prefill_workspace_floats(p)), *a.no_memory,
                        "workspace (a prefill task's tiles)");  // (Dqk, BQ)
  if (qt == nullptr) return;
  float* qt_sink = qt + p.dim_qk * kBlockQ;  // (Dqk, BQ)
  float* st = qt_sink + p.dim_qk * kBlockQ;  // (BKV, BQ)
  float* acc = st + kBlockKV * kBlockQ;      // (BQ, Dv_pad)
  float* vpack = acc + kBlockQ * dv_pad;     // (BKV, Dv_pad)
  float* kpack = vpack + kBlockKV * dv_pad;  // (BKV, Dqk_pad)

  // The last key block writes its lanes' finished rows straight into the caller's O when the
  // epilogue is only O = acc * out_scale (no gate, no affine combine) and a register tile's
  // row fits the caller's row exactly (unit stride, Dv a whole number of vectors); `stored`
  // marks those lane vectors. The normalization is finalized just before that block's P.V:
  // every block's scores are in its state by then. With KernelArgs::stream_o those stores
  // bypass the caches, and nothing asks for the O rows beforehand.
  const bool direct = !V::Norm::kSumsV && V::Gate::scale_only(a) && a.o.stride[3] == 1 && dv_pad == p.dim_v;
  const bool stream_o = direct && a.stream_o;

  // Q^T carries scale * log2(e): S^T comes out of the micro-kernel in log2 units.
  const bool q_inplace = !a.rope && a.q.stride[3] == 1;
  const bool o_asked = a.q_rows && !q_inplace;  // the loop below asks for the O rows
  if (a.q_rows && !q_inplace && a.prefetch_rows) {
    // A slot map scatters the tile's rows over the caller's tensors, and the gather below
    // copies them one by one: ask for all of them at once (the Q rows to read now, the O
    // rows written at the end of this short task) rather than meeting one miss per row copy
    // and per row store. The in-place pack below needs no such loop: the previous task asked
    // for the Q rows (next_task_streams), and the pack's loads find them in L2 (asking again
    // here cost a blocked 8x8 neighborhood call 2%; bench/RESULTS.md, run O); the O rows go
    // with the last block's S^T.
    for (index_t r = 0; r < nq; ++r) {
      const index_t row = a.q_row(i0 + r);
      if (row < 0) continue;
      tile::prefetch_lines<0, 3>(a.q.ptr(b, row, h), p.dim_qk * static_cast<index_t>(sizeof(float)));
      if (!stream_o) tile::prefetch_lines<1, 3>(a.o.ptr(b, row, h), p.dim_v * static_cast<index_t>(sizeof(float)));
    }
  }
  if (a.q_rows && q_inplace) {
    // A query slot map (permuted neighborhood attention) reads its rows straight into Q^T, in
    // place of a permuted copy of Q; padding slots read a zero row.
    std::fill(kpack, kpack + p.dim_qk, 0.f);
    tile::pack_transposed_rows(
        qt,
        [&](index_t r) {
          const index_t row = a.q_rows[i0 + r];
          return row < 0 ? static_cast<const float*>(kpack) : a.q.ptr(b, row, h);
        },
        nq, p.dim_qk, a.scale * kLog2e);
  } else if (a.rope || a.q_rows) {
    // Through kpack: RoPE on load rotates the rows at their positions; a strided slot-mapped
    // Q is gathered into rows first.
    const auto pack_rows_of = [&](float* dst, bool sink) {
      for (index_t r = 0; r < nq; ++r) {
        float* d = kpack + r * dqk_pad;
        const index_t row = a.q_row(i0 + r);
        if (row < 0) {  // padding slot: a zero query
          std::fill(d, d + p.dim_qk, 0.f);
        } else if (a.rope) {
          index_t pos = a.rope_q0 + row;
          if (sink) pos = std::min(pos, a.rope_sink_qmax);
          rope_row(d, a.q.ptr(b, row, h), a.q.stride[3], p.dim_qk, a.rope->config(), a.rope->row(pos));
        } else {
          tile::pack_rows(d, dqk_pad, a.q.ptr(b, row, h), 0, a.q.stride[3], 1, p.dim_qk, p.dim_qk);
        }
      }
      tile::pack_transposed(dst, kpack, dqk_pad, 1, nq, p.dim_qk, a.scale * kLog2e);
    };
    pack_rows_of(qt, false);
    if (a.rope_two_queries()) pack_rows_of(qt_sink, true);
  } else {
    tile::pack_transposed(qt, a.q.ptr(b, i0, h), a.q.stride[1], a.q.stride[3], nq, p.dim_qk, a.scale * kLog2e);
  }
  // O's rows are not cleared up front: a lane vector's first key block starts its sum from
  // zero (tile::PvIo::from_zero); `live` has bit c set once vector c's rows hold a sum.
  unsigned live = 0;
  const auto zero_vectors = [&](unsigned bits) {
    for (int c = 0; c < tile::kQVecs; ++c)
      if (bits >> c & 1u) tile::zero(acc + c * tile::kWidth * dv_pad, dv_pad, tile::kWidth, dv_pad);
  };

  // K is read in place when its head dim is contiguous (its rows are only broadcast from),
  // through a pointer per row when a key slot map permutes them (KernelArgs::kv_rows) or a
  // list block names them. V is read in place, or through row pointers, when its rows have
  // a unit stride and a whole number of vectors (or were packed so: KernelArgs::v_packed),
  // and either are contiguous or the ISA's P.V tile keeps pace with strided rows
  // (kVRowsInPlace, kernel/config.hpp); otherwise each key block is copied into a contiguous
  // panel, by plain row copies issued during S^T when the rows have a unit stride. The
  // padding columns of the panel are zeroed once here.
  if (dv_pad > p.dim_v)
    for (index_t r = 0; r < kBlockKV; ++r) std::fill(vpack + r * dv_pad + p.dim_v, vpack + (r + 1) * dv_pad, 0.f);

  auto state = V::Norm::init(a, mask, b, h, i0, nq);
  tile::Lanes alpha;
  [[maybe_unused]] policy::VSums vsums;  // affine-scaled: running sums of the visible V rows
  if constexpr (V::Norm::kSumsV) {
    vsums = policy::VSums::make(*a.no_memory, nq, dv_pad, kBlockKV);
    if (!vsums.ok()) return;
  }
  alignas(64) float alpha_rows[kBlockQ];
  // The next task's rows are asked for during this task's last key block: early enough to
  // arrive (a block computes for microseconds), late enough that this task's own K/V stream
  // does not evict them from L2 first.
  tile::RowStream ahead[3];
  index_t ahead_rows[kBlockKV];
  constexpr bool kLists = !V::Norm::kSumsV;  // (affine-scaled sums V per plain block)
  // Not the K/V rows of the next head of this query tile in a token-major layout where P.V
  // reads V in place (kVRowsInPlace): its rows lie next to this task's in the same token rows,
  // and asking for them cost more fill-buffer time than it saved (8x8 blocked neighborhoods
  // 0.98x the time without; bench/RESULTS.md, run O). Where V is copied into a panel (AVX2)
  // the copy waits on them: there they are asked for.
  const bool next_kv = !(kVRowsInPlace && next.b == b && next.qb == qb && a.k.stride[1] > a.k.stride[2] &&
                         a.v.stride[1] > a.v.stride[2]);
  // (None of this where the call's tensors fit in L2: KernelArgs::prefetch_rows.)
  const int nahead = a.prefetch_rows ? next_task_streams<kLists>(ahead, ahead_rows, a, mask_all, next, next_kv) : 0;
  // The last block's share of them: S^T issues ahead[1 .. nahead_st) (K, V), P.V ahead_pv (Q,
  // and V when it moves there below).
  tile::RowStream ahead_pv[2];
  int nahead_pv = 0, nahead_st = nahead;
  index_t blocks_left = 0;
  bool one_block = false;  // the task visits one key block (counted below)
  unsigned stored = 0;
  bool finalized = false;
  policy::RowFinal fin;
  fin.want_lse = a.want_lse();

  // One key block [j0, j1) inside one segment (KernelArgs::for_each_piece), computed for the
  // lane vectors [v0, v1) that hold the query rows `rows` only: the mask guarantees that the
  // other rows see none of its keys, or see them in another visit of the same keys for their
  // own rows (a neighborhood tile's slabs, policy/mask.hpp), so that here their state is
  // exactly what a fully masked block would leave, and they cost nothing.
  // keys non-null: a list block (policy::NeighborhoodTiledMaskPolicy::for_each_block_list),
  // rows r < j1 = nk are keys keys[r] (K and V through row pointers, or V copied); j0 = 0.
  // vis non-null: the keys' visibility bits (policy::ScoreTile::vis), list blocks only.
  const auto block = [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan rows,
                         const KernelArgs::KvPiece& pc, const index_t* keys, const std::uint64_t* vis) {
    const TensorView<const float>& K = *pc.k;
    const TensorView<const float>& Vw = *pc.v;
    const index_t nk = j1 - j0, r0 = j0 - pc.base;  // r0: the block's first row in its segment
    const bool k_inplace = K.stride[3] == 1 && !a.rope_keys();
    index_t rowmap[kBlockKV];
    const index_t* map = block_row_map(a, j0, nk, keys, rowmap);  // null: consecutive rows
    // (packed V rows are contiguous and padded to whole vectors: kernel/packed_kv.hpp)
    const bool v_rows = Vw.stride[3] == 1 && (dv_pad == p.dim_v || a.v_packed);  // usable as P.V reads them
    const bool v_contiguous = Vw.stride[1] == p.dim_v || a.v_packed;
    const bool v_inplace = v_rows && !map && (v_contiguous || kVRowsInPlace);
    const bool v_ptrs = v_rows && map && (kVRowsInPlace || v_contiguous) && !V::Norm::kSumsV;  // (vsums reads vp)
    const bool v_copy = !v_inplace && !v_ptrs && Vw.stride[3] == 1;
    const float* kp = K.ptr(b, r0, g);
    index_t ld_k = K.stride[1];
    if (a.rope_keys()) {
      rope_rows(kpack, dqk_pad, kp, ld_k, K.stride[3], nk, p.dim_qk, dqk_pad, *a.rope, j0);
      kp = kpack;
      ld_k = dqk_pad;
    } else if (!k_inplace) {
      tile::pack_rows(kpack, dqk_pad, kp, ld_k, K.stride[3], nk, p.dim_qk, dqk_pad);
      kp = kpack;
      ld_k = dqk_pad;
    }
    // While S^T computes: fetch this block's V rows (P.V's, after the softmax) and the
    // next block's K rows (when they follow in the same segment), when the rows are strided
    // (token-major: pages apart). Contiguous rows stream through the hardware prefetchers;
    // asking for them too cost 2-4% of a neighborhood call (bench/RESULTS.md). V rows that P.V
    // takes from a packed panel (v_copy: unit-stride rows) are copied by the same stream
    // instead, through the map when there is one.
    const index_t k_bytes = p.dim_qk * static_cast<index_t>(sizeof(float));
    const index_t v_bytes = p.dim_v * static_cast<index_t>(sizeof(float));
    // A copied block may already be in a panel a previous task of this thread copied
    // (kernel/v_panels.hpp: block-aligned masks, whose tiles revisit the same blocks); then
    // neither the copy nor the prefetch of its rows is needed.
    float* vdst = vpack;
    bool v_ready = false;
    if (v_copy && a.v_panels != 0 && map != rowmap) {
      const VPanels::Panel pn =
          thread_v_panels().get({a.v_panels, Vw.ptr(b, map ? 0 : r0, g), map, nk}, j0, dv_pad, p.dim_v);
      if (pn.data) vdst = pn.data, v_ready = pn.hit;
    }
    tile::RowStream pf[tile::kMaxRowStreams];
    int npf = 0;
    if ((a.kv_rows || keys || v_copy || !v_contiguous) && !v_ready && (v_copy || a.prefetch_rows)) {
      tile::RowStream& s = pf[npf++];
      s = {Vw.ptr(b, map ? 0 : r0, g), Vw.stride[1], nk, v_bytes};
      if (v_copy) {
        s.copy_to = vdst;
        s.copy_ld = dv_pad;
      }
      s.map = map;
    }
    // The last block hands the prefetch over to the next task's rows (next_task_streams): its
    // K/V rows while S^T computes, its Q rows during P.V (together they overran the fill
    // buffers of one product: the prefetches stalled). This task's own O rows, which its P.V
    // writes at the end, go with the S^T: asked for a whole task earlier, in the previous
    // task's P.V, they cost a 13x13 neighborhood call 2-3% and a blocked 8x8 one 1%
    // (bench/RESULTS.md, run P). Where S^T also copies the block's V rows into the panel
    // (!kVRowsInPlace), a task of one block (blocked 8x8 neighborhoods) asks for the next
    // task's V rows during P.V instead: its S^T already carries that copy, its own O rows and
    // the next K rows (0.95x the time of k = s = 8 on a Zen 2; tasks of several blocks, whose
    // last P.V writes O, lost 2-3% so; run V). Where P.V reads V in place (kVRowsInPlace), a
    // task of one block asks for its O rows only where a.o_prefetch_one_block says so: on an
    // Intel Xeon that prefetch competes for fill buffers with the rows needed sooner (this
    // block's V, the next task's K/V), on a Zen 4 it pays (kernel/config.hpp; runs AF, AN).
    // Tasks of many blocks (13x13, 3-D 7^3) keep it on both (1.02x without on the Xeon).
    const bool last = --blocks_left == 0;
    const index_t nn = keys || (last && nahead > 0) || !a.prefetch_rows ? 0 : std::min(kBlockKV, pc.end - j1);
    if (nn > 0 && a.kv_rows) {
      pf[npf++] = {K.ptr(b, 0, g), K.stride[1], nn, k_bytes};
      pf[npf - 1].map = a.kv_rows + j1;
    } else if (nn > 0 && K.stride[1] != p.dim_qk && !a.k_packed) {
      pf[npf++] = {K.ptr(b, r0 + nk, g), K.stride[1], nn, k_bytes};
    }
    if (last)
      for (int x = 1; x < nahead_st; ++x) pf[npf++] = ahead[x];
    if (last && !o_asked && !stream_o && !(kVRowsInPlace && one_block && !a.o_prefetch_one_block) && a.prefetch_rows)
      pf[npf++] = task_o_stream(a, PrefillTask{b, h, qb});
    const float* q_blk = a.rope_two_queries() && j0 < a.rope_sink_keys ? qt_sink : qt;
    const int v0 = static_cast<int>(rows.lo / tile::kWidth);
    const int v1 = std::min(vecs, static_cast<int>((rows.hi + tile::kWidth - 1) / tile::kWidth));
    const index_t l0 = index_t{v0} * tile::kWidth;                      // the first lane computed
    const index_t nql = std::min(nq, index_t{v1} * tile::kWidth) - l0;  // and the lanes computed
    // A task of one block (one_block: blocked 8x8 neighborhoods) streams during its S^T a
    // whole task's rows from memory (its V panel copy, the next task's K rows): spread over
    // every register tile, not per row group, whose bursts of ~50 lines stalled on the fill
    // buffers (77% of the stream calls' samples on the prefetch instructions; 0.83-0.92x the
    // time on a Zen 2). Longer tasks, whose streams mostly hit L2/L3, gain nothing from it.
    if (map) {
      const float* krow[kBlockKV];
      for (index_t r = 0; r < nk; ++r) krow[r] = K.ptr(b, map[r], g);
      tile::mma_kqt_rows(st + l0, kBlockQ, tile::RowPointers{krow}, nk, q_blk + l0, p.dim_qk, v1 - v0, pf, npf,
                         one_block);
    } else {
      tile::mma_kqt_rows(st + l0, kBlockQ, tile::StridedRows{kp, ld_k}, nk, q_blk + l0, p.dim_qk, v1 - v0, pf, npf,
                         one_block);
    }

    const policy::ScoreTile t{st + l0, kBlockQ, nk, v1 - v0, b, h, i0 + l0, nql, j0, nk, 1, kBlockQ, keys, vis};
    V::Score::apply(a, t);
    if (kind == policy::BlockKind::partial) policy::apply_mask(mask, t);

    const bool rescale = V::Norm::update(state, st, kBlockQ, nk, v0, v1, alpha);
    const float* acc_scale = nullptr;  // O *= alpha, fused into O += P.V below
    if constexpr (V::Norm::kRescales) {
      if (rescale) {  // (alpha outside [v0, v1) is stale: not read)
        alpha.store(alpha_rows);
        acc_scale = alpha_rows + l0;
      }
    }

    const float* vp = Vw.ptr(b, r0, g);
    index_t ld_v = Vw.stride[1];
    if (v_copy) {
      vp = vdst;  // copied during S^T (or by an earlier task)
      ld_v = dv_pad;
    } else if (!v_inplace && !v_ptrs) {
      tile::pack_rows(vpack, dv_pad, vp, ld_v, Vw.stride[3], nk, p.dim_v, dv_pad);
      vp = vpack;
      ld_v = dv_pad;
    }
    const unsigned bits = (1u << v1) - (1u << v0);  // this block's lane vectors
    tile::PvIo io;
    io.from_zero = (live & bits) == 0;
    if (!io.from_zero) {
      zero_vectors(bits & ~live);  // lanes whose first block this is, beside lanes that had one
      io.row_scale = acc_scale;
    }
    live |= bits;
    float* out_rows[kBlockQ];
    if (last && direct) {
      V::Norm::finalize(state, V::Sink::logit2(a, h), fin);
      finalized = true;
      for (index_t r = 0; r < nql; ++r) {
        const index_t row = a.q_row(i0 + l0 + r);  // (permuted NA: padding slots < 0)
        out_rows[r] = row < 0 ? nullptr : a.o.ptr(b, row, h);
      }
      io.out = out_rows;
      io.out_scale = fin.out_scale + l0;
      io.stream = stream_o;
      stored = bits;
    }
    if (v_ptrs) {
      const float* vrow[kBlockKV];
      for (index_t r = 0; r < nk; ++r) vrow[r] = Vw.ptr(b, map[r], g);
      tile::mma_pv_rows(acc + l0 * dv_pad, dv_pad, nql, st + l0, kBlockQ, 1, tile::RowPointers{vrow}, nk, dv_vecs, io,
                        ahead_pv, last ? nahead_pv : 0);
    } else {
      tile::mma_pv(acc + l0 * dv_pad, dv_pad, nql, st + l0, kBlockQ, 1, vp, ld_v, nk, dv_vecs, io, ahead_pv,
                   last ? nahead_pv : 0);
    }
    if constexpr (V::Norm::kSumsV) vsums.add(mask, kind, i0, nq, j0, nk, vp, ld_v);
  };
  if (nahead > 0 || direct) for_each_task_block<kLists>(a, mask, i0, nq, [&](auto&&...) { ++blocks_left; });
  one_block = blocks_left == 1;
  if (nahead > 0) ahead_pv[nahead_pv++] = ahead[0];
  if (!kVRowsInPlace && nahead > 2 && one_block) {
    ahead_pv[nahead_pv++] = ahead[2];
    nahead_st = 2;
  }
  for_each_task_block<kLists>(a, mask, i0, nq, block);

  if (!finalized) V::Norm::finalize(state, V::Sink::logit2(a, h), fin);
  zero_vectors(((1u << vecs) - 1) & ~live);  // rows no key block reached
  if constexpr (V::Norm::kSumsV) vsums.fold();
  for (index_t r = 0; r < nq; ++r) {
    const index_t row = a.q_row(i0 + r);  // the caller's row (permuted NA: padding slots < 0)
    if (row < 0) continue;
    if constexpr (V::Norm::kSumsV) V::Norm::combine(state, r, acc + r * dv_pad, vsums.row(r), dv_pad, fin.out_scale[r]);
    if ((stored >> (r / tile::kWidth) & 1u) == 0) {
      // Rows that the last block did not write (its lanes are a slab of the tile's): streamed
      // like the others when O is (then the store is O = acc * scale: `direct`).
      if (stream_o)
        tile::stream_scaled(a.o.ptr(b, row, h), acc + r * dv_pad, p.dim_v, fin.out_scale[r]);
      else
        V::Gate::store(a, b, row, h, acc + r * dv_pad, fin.out_scale[r]);
    }
    if (a.want_lse()) a.lse(b, h, row, 0) = fin.lse[r];
  }
  if (stream_o) tile::stream_fence();
}

}  // namespace detail
}  // namespace sinkattn
