#pragma once
// Basic vocabulary: the index type and the shape of one attention call.

#include <cstdint>

namespace sinkattn {

// Signed on purpose: sizes come from engines as int64 and a negative size must be
// reported, not wrapped around.
using index_t = std::int64_t;

// The largest size, position, offset or window a call accepts (2^40, a trillion tokens):
// sums of a few such values then stay far inside index_t in the kernels and the reference,
// and INT64_MAX passed as "unbounded" is refused by name instead of wrapping around.
inline constexpr index_t kMaxIndex = index_t{1} << 40;

// The shape of one attention call. Q is [B, Sq, Hq, Dqk], K [B, Skv, Hkv, Dqk],
// V [B, Skv, Hkv, Dv], O [B, Sq, Hq, Dv], LSE [B, Hq, Sq] (logical orders; any strides).
struct Problem {
  index_t batch = 0;
  index_t heads_q = 0;
  index_t heads_kv = 0;
  index_t seq_q = 0;
  index_t seq_kv = 0;
  index_t dim_qk = 0;
  index_t dim_v = 0;

  // Query heads that share one KV head (GQA group size; Hq for MQA, 1 for MHA).
  index_t group_size() const { return heads_kv > 0 ? heads_q / heads_kv : 0; }
  // KV head read by query head h.
  index_t kv_head(index_t h) const { return h / group_size(); }
  // Offset-aligned position of query row i (SEMANTICS: p_i = i + Skv - Sq).
  index_t query_pos(index_t i) const { return i + (seq_kv - seq_q); }
};

}  // namespace sinkattn
