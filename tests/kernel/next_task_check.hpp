#pragma once
// The prefill loop's look-ahead (sinkattn::detail::next_task_streams): for every task of a call, the
// rows it names must be the rows that task reads: its Q rows (through a query slot map when
// there is one; padding slots none), and K and V rows of its first key block, inside the
// tensors, the same row of K and of V, and at least one of them visible from the tile; and
// task_o_stream the O rows it writes. A look-ahead that pointed elsewhere would not change any
// result (prefetches only), so this is the one place a wrong guess shows. (One KV segment:
// key j is row j, or kv_rows[j].) With kv = false only the Q stream comes back, the same one.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "sinkattn/kernel/prefill.hpp"

namespace sinkattn::test {

template <class Mask>
::testing::AssertionResult next_task_streams_ok(const sinkattn::detail::KernelArgs& a, const Mask& mask_all) {
  const Problem& p = a.p;
  const index_t nqb = (p.seq_q + sinkattn::detail::kBlockQ - 1) / sinkattn::detail::kBlockQ;
  tile::RowStream s[3];
  index_t keys[sinkattn::detail::kBlockKV];
  if (sinkattn::detail::next_task_streams(s, keys, a, mask_all, sinkattn::detail::PrefillTask{}) != 0)
    return ::testing::AssertionFailure() << "streams for no task";
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.heads_q; ++h)
      for (index_t qb = 0; qb < nqb; ++qb) {
        const int n =
            sinkattn::detail::next_task_streams(s, keys, a, mask_all, sinkattn::detail::PrefillTask{b, h, qb});
        const index_t i0 = qb * sinkattn::detail::kBlockQ, nq = std::min(sinkattn::detail::kBlockQ, p.seq_q - i0),
                      g = p.kv_head(h);
        const auto where = [&] { return ::testing::Message() << "b " << b << " h " << h << " tile " << qb << ": "; };
        // The row of stream st's r-th entry in `view` at head `head`; -1 for a skipped entry.
        const auto row_at = [&](const tile::RowStream& st, const float* base, index_t r) -> index_t {
          const std::ptrdiff_t off = st.p - base;
          const index_t r0 = static_cast<index_t>(off / st.ld);
          if (st.map) return st.map[r] < 0 ? -1 : r0 + st.map[r];
          return r0 + r;
        };
        if (n != 1 && n != 3) return ::testing::AssertionFailure() << where() << n << " streams";
        // Without the K/V rows (kv = false: the next head of the same tile): the same Q.
        tile::RowStream q1[3];
        index_t keys_q1[sinkattn::detail::kBlockKV];
        if (sinkattn::detail::next_task_streams(q1, keys_q1, a, mask_all, sinkattn::detail::PrefillTask{b, h, qb},
                                                false) != 1)
          return ::testing::AssertionFailure() << where() << "K/V streams with kv = false";
        if (q1[0].p != s[0].p || q1[0].ld != s[0].ld || q1[0].rows != s[0].rows || q1[0].map != s[0].map ||
            q1[0].bytes != s[0].bytes)
          return ::testing::AssertionFailure() << where() << "the Q stream differs with kv = false";
        const tile::RowStream o = sinkattn::detail::task_o_stream(a, sinkattn::detail::PrefillTask{b, h, qb});
        if (s[0].rows != nq || o.rows != nq) return ::testing::AssertionFailure() << where() << "Q/O rows";
        if (s[0].bytes != p.dim_qk * static_cast<index_t>(sizeof(float)) ||
            o.bytes != p.dim_v * static_cast<index_t>(sizeof(float)))
          return ::testing::AssertionFailure() << where() << "Q/O row bytes";
        for (index_t r = 0; r < nq; ++r) {
          const index_t want = a.q_row(i0 + r);
          if (row_at(s[0], a.q.ptr(b, 0, h), r) != want || row_at(o, a.o.ptr(b, 0, h), r) != want)
            return ::testing::AssertionFailure() << where() << "Q/O row " << r << " is not " << want;
        }
        decltype(auto) mask = policy::bind(mask_all, b, h);
        bool tile_sees = false;
        for (index_t i = i0; i < i0 + nq && !tile_sees; ++i)
          for (index_t j = 0; j < p.seq_kv && !tile_sees; ++j) tile_sees = mask.visible(i, j);
        if (n == 1) {
          if (tile_sees) return ::testing::AssertionFailure() << where() << "no K/V streams, but keys are visible";
          continue;
        }
        if (s[1].rows < 1 || s[1].rows > sinkattn::detail::kBlockKV || s[2].rows != s[1].rows)
          return ::testing::AssertionFailure() << where() << "K/V rows " << s[1].rows << ", " << s[2].rows;
        // The first block the kernel visits: the mask's first list block, or its first block.
        std::vector<index_t> first;
        if constexpr (sinkattn::detail::has_block_lists<std::decay_t<decltype(mask)>>::value) {
          if (mask.has_lists(i0, nq))
            mask.for_each_block_list(i0, [&](index_t j0, const index_t* ks, index_t bn, policy::BlockKind,
                                             policy::RowSpan, const std::uint64_t*) {
              if (first.empty())
                for (index_t x = 0; x < bn; ++x) first.push_back(ks ? ks[x] : j0 + x);
            });
        }
        if (first.empty())
          policy::for_each_kv_block_rows(mask, i0, i0 + nq, sinkattn::detail::kBlockKV, tile::kWidth,
                                         [&](index_t j0, index_t j1, policy::BlockKind, policy::RowSpan) {
                                           if (first.empty())
                                             for (index_t j = j0; j < j1; ++j) first.push_back(j);
                                         });
        if (static_cast<std::size_t>(s[1].rows) != first.size())
          return ::testing::AssertionFailure() << where() << s[1].rows << " K/V rows, the block has " << first.size();
        bool sees = false;
        for (index_t r = 0; r < s[1].rows; ++r) {
          const index_t kr = row_at(s[1], a.k.ptr(b, 0, g), r), vr = row_at(s[2], a.v.ptr(b, 0, g), r);
          const index_t key = first[static_cast<std::size_t>(r)];
          const index_t want = a.kv_rows ? a.kv_rows[key] : key;
          if (kr != want || vr != want || kr < 0 || kr >= a.k.shape[1])
            return ::testing::AssertionFailure()
                   << where() << "K/V row " << r << ": " << kr << ", " << vr << " for " << want;
          for (index_t i = i0; i < i0 + nq && !sees; ++i) sees = mask.visible(i, key);
        }
        if (!sees) return ::testing::AssertionFailure() << where() << "the first block sees nothing";
      }
  return ::testing::AssertionSuccess();
}

}  // namespace sinkattn::test
