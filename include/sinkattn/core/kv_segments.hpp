#pragma once
// Keys and values given as a list of segments, read in place: the K/V rows of one call are the
// rows of the segments concatenated (key index j runs over segment 0, then segment 1, ...).
// A StreamingLLM cache is three segments (sinks, the older and the newer part of its ring),
// a chunked prefill adds the chunk's own K/V as a fourth, and a paged KV cache is one segment
// per page. Masks, positions (ALiBi, RoPE on load) and the returned LSE see the concatenated
// index j; each segment may have its own layout (strides).

#include <string>

#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {

struct KvSegment {
  TensorView<const float> k;  // [B, n, Hkv, Dqk]
  TensorView<const float> v;  // [B, n, Hkv, Dv]; the same n
};

}  // namespace sinkattn
