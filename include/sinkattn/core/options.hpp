#pragma once
// The runtime description of an attention variant (SEMANTICS.md sections 1-4).
//
// These structs say WHAT is computed; they hold no maths. The fp64 reference interprets
// them naively; the fast path turns them into compile-time policies once per call.
// Every pointer and view here borrows caller memory for the duration of the call.

#include <array>
#include <functional>
#include <optional>
#include <variant>
#include <vector>

#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {

// ---- 1. Scores ---------------------------------------------------------------------------
struct ScoreOptions {
  std::optional<float> scale;  // default 1/sqrt(Dqk)
  float softcap = 0.f;         // > 0: x = c * tanh(x / c), before bias and mask
  // Additive bias, logical [B, Hq, Sq, Skv]; zero strides broadcast. Empty = none.
  TensorView<const float> bias;
  // ALiBi slopes m_h, one per query head: x -= m_h * |p_i - j|. Null = none.
  const float* alibi_slopes = nullptr;
};

// ---- 2. Masks (visibility) ---------------------------------------------------------------
// Every key visible.
struct FullMask {};

// j <= p_i, p_i = i + (Skv - Sq) + offset (bottom-right aligned, like FlashAttention >= 2.1;
// offset is e.g. ONNX's past length correction).
struct CausalMask {
  index_t offset = 0;
};

// p_i - left <= j <= p_i + right (-1 = unbounded side); keys j < sink_tokens are visible
// whenever j <= p_i + right. gpt-oss "window 128" is {left = 127, right = 0}.
struct SlidingWindowMask {
  index_t left = -1;
  index_t right = -1;
  index_t sink_tokens = 0;
  index_t offset = 0;
};

// Block-diagonal over positions (query position p_i, key position j): visible iff both lie in
// the same block. Blocks are either equal (block_size) or ragged (boundaries = ascending block
// starts, the first being 0). Keys j < global_keys are visible to every query; with
// last_block_attends_all the queries of the last block see every key. With causal, every
// visible pair must also satisfy j <= p_i.
struct BlockMask {
  index_t block_size = 0;
  std::vector<index_t> boundaries;
  index_t global_keys = 0;
  bool last_block_attends_all = false;
  bool causal = false;
  index_t offset = 0;
};

// Neighborhood attention (NATTEN semantics), rank 1..3, tokens row-major over the grid
// extent[0] x extent[1] x extent[2]; requires Sq == prod(extent) and Skv == extra_keys + Sq.
// extra_keys: additional keys/values (global, register or sink tokens; NATTEN's
// additional_keys) stored as the FIRST extra_keys rows of K and V, before the grid tokens, and
// visible to every query (also under causal). They are attended in the same loop as the
// neighborhood, so softmax, learned sinks, SSMax's N_i etc. see one row of keys.
struct NeighborhoodMask {
  int rank = 1;
  std::array<index_t, 3> extent{1, 1, 1};
  std::array<index_t, 3> kernel{1, 1, 1};
  std::array<index_t, 3> dilation{1, 1, 1};
  std::array<index_t, 3> stride{1, 1, 1};
  std::array<bool, 3> causal{false, false, false};
  index_t extra_keys = 0;
};

// Block-sparse lists (FlexAttention's BlockMask, MoBA): query blocks of q_block rows, key
// blocks of kv_block keys. For (b, h, qb), flattened as r = (b * Hq + h) * n_q_blocks + qb,
// the visible key blocks are indices[offsets[r] .. offsets[r + 1]) (CSR). An optional element
// mask further restricts pairs inside the listed blocks.
struct BlockSparseMask {
  index_t q_block = 0;
  index_t kv_block = 0;
  const index_t* offsets = nullptr;
  const index_t* indices = nullptr;
  std::function<bool(index_t b, index_t h, index_t i, index_t j)> element_mask;
};

using MaskSpec = std::variant<FullMask, CausalMask, SlidingWindowMask, BlockMask, NeighborhoodMask, BlockSparseMask>;

// ---- 3. Normalizations -------------------------------------------------------------------
struct Softmax {};

// gpt-oss learned sink logit: one raw (unscaled) logit per query head, sinks[Hq].
struct SinkSoftmax {
  const float* sinks = nullptr;
};

// w = sigmoid(x + b), b = bias + head_bias[h] (head_bias may be null). Optional row
// normalization w / (sum w + eps).
struct Sigmoid {
  float bias = 0.f;
  const float* head_bias = nullptr;
  bool normalize = false;
  float eps = 1e-6f;
};

// O = alpha * O_softmax + beta * sum_{visible j} v_j. alpha [B, Sq, Hq, 1] (already activated);
// beta [B, Sq, Hq, 1] if given, else (alpha_ma - alpha) / N with N the visible count
// (or Skv when beta_over_skv).
struct AffineScaled {
  TensorView<const float> alpha;
  TensorView<const float> beta;
  float alpha_ma = 1.f;
  bool beta_over_skv = false;
};

// Softpick: w = ReLU(e^x - 1) / (sum_visible |e^x - 1| + eps).
struct Softpick {
  float eps = 1e-6f;
};

// Scalable softmax: softmax(s_h * log(N_i) * x), N_i = visible keys of row i; s[Hq].
struct ScalableSoftmax {
  const float* s = nullptr;
};

using NormSpec = std::variant<Softmax, SinkSoftmax, Sigmoid, AffineScaled, Softpick, ScalableSoftmax>;

// ---- 4. Gating ---------------------------------------------------------------------------
struct NoGate {};
// O' = O * sigmoid(G); G elementwise [B, Sq, Hq, Dv] or headwise [B, Sq, Hq, 1], any strides.
struct SigmoidGate {
  TensorView<const float> g;
};

using GateSpec = std::variant<NoGate, SigmoidGate>;

// ---- 6. ACT calibration -------------------------------------------------------------------

// ACT calibration (Yu et al. 2024, SEMANTICS section 6): the weights of the sink keys S are
// scaled by beta and the removed mass goes back to the other keys in proportion.
struct ActCalibration {
  const index_t* keys = nullptr;  // S: key indices in [1, Skv), each once
  index_t count = 0;
  double beta = 1.0;  // finite, >= 0
};

// ---- Rotary embedding applied while loading ----------------------------------------------
// For keys cached before RoPE (StreamingLLM's position shift, SEMANTICS section 5): the kernel
// rotates Q and K as it loads them. Off when table is null. Key j (its index over all K rows;
// with KV segments, the segments concatenated) is rotated at position j; query row i at
// query_position + i (default -1: Skv - Sq + i, bottom-right). For keys j < sink_keys the
// query is rotated at min(query_position + i, sink_query_max) instead: in a StreamingLLM cache
// a query t sees the sinks at cache distance min(t, capacity - 1) - j, also when it runs in a
// chunk whose other queries keep the window keys further back (sink_query_max = capacity - 1).
class RopeTable;
struct RopeOnLoad {
  const RopeTable* table = nullptr;
  index_t query_position = -1;
  index_t sink_keys = 0;
  index_t sink_query_max = -1;  // -1: no cap
};

// ---- How the output is written ------------------------------------------------------------
// The output rows can be written past the caches (non-temporal stores): the call then does not
// read every O line from memory before overwriting it (read for ownership), which for short
// tasks (block and neighborhood tiles of one to a few key blocks) is a large share of their
// memory traffic, but the next operation reads O from memory. `automatic` streams when O
// would not stay cached for it anyway: the call's Q, K, V and O together fill the last-level
// cache, and O is larger than an L2 (kernel/config.hpp, output_streams). Streamed stores need
// vector-aligned output rows (address and strides); other outputs are written as usual, as
// are gated and affine-scaled outputs (they are finished outside the P.V product).
enum class OutputStores { automatic, cached, streamed };

// ---- The whole variant -------------------------------------------------------------------
struct Options {
  ScoreOptions score;
  MaskSpec mask = FullMask{};
  NormSpec norm = Softmax{};
  GateSpec gate = NoGate{};
  // Log-sum-exp out, logical [B, Hq, Sq, 1] (natural log); empty = not requested. Defined for
  // the softmax family (Softmax, SinkSoftmax incl. the sink, AffineScaled's softmax part,
  // ScalableSoftmax of its scaled logits); requesting it with Sigmoid or Softpick is an error.
  TensorView<float> lse;
  RopeOnLoad rope;  // Q and K given before RoPE: rotate them while loading (off by default)
  OutputStores output_stores = OutputStores::automatic;
};

}  // namespace sinkattn
