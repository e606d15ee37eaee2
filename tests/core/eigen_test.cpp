// sinkattn/eigen.hpp: views alias the matrix memory with the right strides, and the
// Problem they describe passes validation.

#include <gtest/gtest.h>

#include <Eigen/Core>

#include "sinkattn/eigen.hpp"
#include "sinkattn/sinkattn.hpp"

namespace {

using sinkattn::index_t;
using sinkattn::eigen::RowMatrixXf;

TEST(EigenView, DenseRowMajorAliasesMemory) {
  RowMatrixXf m = RowMatrixXf::Random(5, 3);
  const auto v = sinkattn::eigen::view(m);
  EXPECT_EQ(v.data, m.data());
  EXPECT_EQ(v.shape, (std::array<index_t, 4>{1, 5, 1, 3}));
  EXPECT_EQ(v.stride[1], 3);
  EXPECT_EQ(v.stride[3], 1);
  for (index_t i = 0; i < 5; ++i)
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(v.ptr(0, i, 0, j), &m(i, j));
}

TEST(EigenView, RefUsesOuterStride) {
  RowMatrixXf big = RowMatrixXf::Random(8, 10);
  Eigen::Ref<const RowMatrixXf> r = big.middleCols(2, 4);  // maps, no copy: inner stride is 1
  ASSERT_EQ(r.data(), &big(0, 2));
  const auto v = sinkattn::eigen::view(r);
  EXPECT_EQ(v.data, &big(0, 2));
  EXPECT_EQ(v.shape, (std::array<index_t, 4>{1, 8, 1, 4}));
  EXPECT_EQ(v.stride[1], 10);
  EXPECT_EQ(v.stride[3], 1);
  EXPECT_EQ(v.ptr(0, 7, 0, 3), &big(7, 5));
}

TEST(EigenView, BlockOfBiggerMatrix) {
  RowMatrixXf big = RowMatrixXf::Random(9, 7);
  auto blk = big.block(2, 1, 4, 5);  // rows 2..5, cols 1..5
  const auto v = sinkattn::eigen::view(blk);
  EXPECT_EQ(v.data, &big(2, 1));
  EXPECT_EQ(v.shape, (std::array<index_t, 4>{1, 4, 1, 5}));
  EXPECT_EQ(v.stride[1], 7);
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) EXPECT_EQ(v(0, i, 0, j), big(2 + i, 1 + j));

  // A temporary Block (not an owner) is fine too.
  const auto w = sinkattn::eigen::view(big.bottomRows(3));
  EXPECT_EQ(w.data, &big(6, 0));
  EXPECT_EQ(w.stride[1], 7);
}

TEST(EigenView, MapWithOuterStride) {
  std::vector<float> buf(6 * 16);
  Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>> m(buf.data(), 6, 12, Eigen::OuterStride<>(16));
  const auto v = sinkattn::eigen::view(m);
  EXPECT_EQ(v.data, buf.data());
  EXPECT_EQ(v.stride[1], 16);
  EXPECT_EQ(v.ptr(0, 5, 0, 11), buf.data() + 5 * 16 + 11);
}

TEST(EigenView, ColumnMajorAndTransposeKeepTheirStorageOrder) {
  Eigen::MatrixXf cm = Eigen::MatrixXf::Random(4, 6);  // column-major: rows are strided
  const auto v = sinkattn::eigen::view(cm);
  EXPECT_EQ(v.stride[1], 1);
  EXPECT_EQ(v.stride[3], 4);
  EXPECT_EQ(v.ptr(0, 3, 0, 5), &cm(3, 5));

  RowMatrixXf rm = RowMatrixXf::Random(3, 5);
  const auto t = sinkattn::eigen::view(rm.transpose());  // [5 tokens, 3 features]
  EXPECT_EQ(t.shape, (std::array<index_t, 4>{1, 5, 1, 3}));
  EXPECT_EQ(t.ptr(0, 4, 0, 2), &rm(2, 4));
}

TEST(EigenView, MutableViewWritesThrough) {
  RowMatrixXf big = RowMatrixXf::Zero(6, 8);
  auto o = sinkattn::eigen::mutable_view(big.block(1, 2, 3, 4));
  static_assert(std::is_same_v<decltype(o), sinkattn::TensorView<float>>);
  EXPECT_EQ(o.data, &big(1, 2));
  EXPECT_EQ(o.stride[1], 8);
  o(0, 2, 0, 3) = 42.f;
  EXPECT_EQ(big(3, 5), 42.f);

  Eigen::Ref<RowMatrixXf> r = big;
  auto o2 = sinkattn::eigen::mutable_view(r);
  EXPECT_EQ(o2.data, big.data());
}

TEST(EigenView, ProblemForValidates) {
  RowMatrixXf q = RowMatrixXf::Random(5, 8), k = RowMatrixXf::Random(7, 8), v = RowMatrixXf::Random(7, 3);
  RowMatrixXf o(5, 3);
  const sinkattn::Problem p = sinkattn::eigen::problem_for(q, k, v);
  EXPECT_EQ(p.batch, 1);
  EXPECT_EQ(p.heads_q, 1);
  EXPECT_EQ(p.heads_kv, 1);
  EXPECT_EQ(p.seq_q, 5);
  EXPECT_EQ(p.seq_kv, 7);
  EXPECT_EQ(p.dim_qk, 8);
  EXPECT_EQ(p.dim_v, 3);
  namespace se = sinkattn::eigen;
  const sinkattn::Status s = sinkattn::validate(p, se::view(q), se::view(k), se::view(v), se::mutable_view(o));
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(EigenView, MismatchedKeyWidthIsReportedByValidate) {
  RowMatrixXf q = RowMatrixXf::Random(5, 8), k = RowMatrixXf::Random(7, 6), v = RowMatrixXf::Random(7, 3);
  RowMatrixXf o(5, 3);
  namespace se = sinkattn::eigen;
  const sinkattn::Status s =
      sinkattn::validate(se::problem_for(q, k, v), se::view(q), se::view(k), se::view(v), se::mutable_view(o));
  EXPECT_EQ(s.code(), sinkattn::Errc::shape_mismatch);
  EXPECT_NE(s.message().find("k:"), std::string::npos) << s.message();
}

TEST(EigenView, OutputBlockOverlappingInputIsAliasing) {
  // Q and O as two overlapping blocks of one buffer: validate must refuse.
  RowMatrixXf buf = RowMatrixXf::Random(6, 8);
  RowMatrixXf k = RowMatrixXf::Random(4, 4), v = RowMatrixXf::Random(4, 4);
  auto q = buf.leftCols(4);
  auto o = buf.middleCols(2, 4);
  namespace se = sinkattn::eigen;
  const sinkattn::Status s =
      sinkattn::validate(se::problem_for(q, k, v), se::view(q), se::view(k), se::view(v), se::mutable_view(o));
  EXPECT_EQ(s.code(), sinkattn::Errc::aliasing) << s.message();
}

}  // namespace
