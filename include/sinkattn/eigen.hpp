#pragma once
// Optional Eigen adapters: single-head TensorViews over Eigen matrices, without copies.
//
// The core does not need Eigen; include this header only if you use it. A matrix with one
// row per token and one column per feature becomes a view of logical shape [1, rows, 1, cols]
// (Q, K, V or O of one head, batch 1). Row and column strides come from the matrix itself
// (outerStride/innerStride), so a Block of a bigger matrix or a Map with an outer stride works.
//
// Why templates and not `const Eigen::Ref<const RowMatrixXf>&`: a const Ref silently copies
// its argument into a temporary when it cannot map it (a column-major matrix, an expression
// like `a + b`), and that temporary dies at the end of the call, leaving the view dangling.
// These functions accept only objects with direct memory access (Matrix, Map, Ref, Block of
// those) and refuse, at compile time, expressions and temporary matrices.

#include <type_traits>

#include <Eigen/Core>

#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {
namespace eigen {

// The natural storage for tokens x features: one contiguous row per token.
using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {

template <class M>
using plain_t = std::remove_cv_t<std::remove_reference_t<M>>;

template <class M>
constexpr bool is_dense_v = std::is_base_of_v<Eigen::DenseBase<plain_t<M>>, plain_t<M>>;

// The matrix object owns its memory (Matrix), as opposed to viewing someone else's (Map, Ref,
// Block): a view of a temporary owner would dangle.
template <class M>
constexpr bool owns_memory_v = std::is_base_of_v<Eigen::PlainObjectBase<plain_t<M>>, plain_t<M>>;

template <class M>
constexpr void check_viewable() {
  static_assert(is_dense_v<M>, "sinkattn::eigen: expected an Eigen matrix, Map, Ref or Block");
  if constexpr (is_dense_v<M>) {
    using P = plain_t<M>;
    static_assert(std::is_same_v<typename P::Scalar, float>, "sinkattn::eigen: the scalar type must be float");
    static_assert((int(P::Flags) & Eigen::DirectAccessBit) != 0,
                  "sinkattn::eigen: the argument has no direct memory access (an expression?); evaluate it into "
                  "a matrix first");
    static_assert(!(std::is_rvalue_reference_v<M&&> && owns_memory_v<M>),
                  "sinkattn::eigen: a view of a temporary matrix would dangle; pass a named matrix");
  }
}

// [1, rows, 1, cols] over m's memory, in m's storage order.
template <class T, class P>
TensorView<T> make_view(T* data, const P& m) {
  const index_t rows = static_cast<index_t>(m.rows());
  const index_t cols = static_cast<index_t>(m.cols());
  const index_t outer = static_cast<index_t>(m.outerStride());
  const index_t inner = static_cast<index_t>(m.innerStride());
  const index_t row_stride = P::IsRowMajor ? outer : inner;  // between tokens
  const index_t col_stride = P::IsRowMajor ? inner : outer;  // between features
  // Batch and head have extent 1; their strides are never multiplied by a non-zero index, so
  // we give the values a dense [1, rows, 1, cols] array would have.
  return TensorView<T>(data, {1, rows, 1, cols}, {rows * row_stride, row_stride, cols * col_stride, col_stride});
}

}  // namespace detail

// Read-only single-head view, logical [1, rows, 1, cols], for Q, K, V (or a gate).
template <class M>
TensorView<const float> view(M&& m) {
  detail::check_viewable<M>();
  return detail::make_view<const float>(m.data(), m);
}

// Writable single-head view, logical [1, rows, 1, cols], for O. The argument must be an
// lvalue expression of Eigen (a Matrix, a Map of mutable data, a mutable Ref, a Block of those).
template <class M>
TensorView<float> mutable_view(M&& m) {
  detail::check_viewable<M>();
  using P = detail::plain_t<M>;
  static_assert(!std::is_const_v<std::remove_reference_t<M>> || !detail::owns_memory_v<M>,
                "sinkattn::eigen::mutable_view: the matrix is const");
  static_assert((int(P::Flags) & Eigen::LvalueBit) != 0,
                "sinkattn::eigen::mutable_view: the argument is read-only (a Map/Ref/Block of const data)");
  return detail::make_view<float>(const_cast<float*>(m.data()), m);
}

// The Problem of single-head attention between these matrices: batch 1, one query head, one
// KV head, seq_q = q.rows(), seq_kv = k.rows(), dim_qk = q.cols(), dim_v = v.cols(). Shapes
// are not checked here; validate() (called by every entry point) reports a mismatch, e.g. k
// with a different number of columns than q, naming the argument.
template <class Q, class K, class V>
Problem problem_for(const Eigen::DenseBase<Q>& q, const Eigen::DenseBase<K>& k, const Eigen::DenseBase<V>& v) {
  Problem p;
  p.batch = 1;
  p.heads_q = 1;
  p.heads_kv = 1;
  p.seq_q = static_cast<index_t>(q.rows());
  p.seq_kv = static_cast<index_t>(k.rows());
  p.dim_qk = static_cast<index_t>(q.cols());
  p.dim_v = static_cast<index_t>(v.cols());
  return p;
}

}  // namespace eigen
}  // namespace sinkattn
