// MatMulEngine on every weight type and ISA tier: the same outputs whatever
// the thread count, a row's output independent of the other rows sharing the
// call (on the integer route), and close to the product computed in double.
#include "runtime/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "runtime/kernels/kernels.h"
#include "tests/runtime/quant_ref.h"

namespace appliance::runtime {
namespace {

using kernels::Isa;

class MatMulTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void TearDown() override { kernels::OverrideIsaForTesting(std::nullopt); }
};

void CheckProducts(uint32_t type, int64_t cols);

TEST_P(MatMulTest, AgreesAcrossThreadsBatchesAndWithDouble) {
  // Odd row count, split unevenly among threads; 256 and 512 columns are one
  // and two Q8_K super-blocks (the packed products keep per-block state).
  // Large enough that every product goes to the pool.
  for (const int64_t cols : {256, 512}) {
    SCOPED_TRACE("cols=" + std::to_string(cols));
    CheckProducts(GetParam(), cols);
  }
}

void CheckProducts(uint32_t type, int64_t cols) {
  const int64_t rows = 333, max_n = 130;
  testing::TestRng rng(17 + type);
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  for (float& v : wf) v = rng.Symmetric(1.0f);
  const std::vector<uint8_t> wq = testing::Encode(type, wf.data(), rows * cols);
  const std::vector<double> wd = testing::Decode(type, wq.data(), rows * cols);
  Matrix w_rows;
  w_rows.type = static_cast<TensorType>(type);
  w_rows.rows = rows;
  w_rows.cols = cols;
  w_rows.row_bytes = wq.size() / rows;
  w_rows.data = wq.data();
  std::vector<float> x(static_cast<size_t>(max_n * cols));
  for (float& v : x) v = rng.Symmetric(1.0f);

  ThreadPool one(1), three(3);
  MatMulEngine e1, e3;
  ASSERT_TRUE(e1.Allocate(cols, max_n, 1).ok());
  ASSERT_TRUE(e3.Allocate(cols, max_n, 3).ok());
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    if (!kernels::IsaAvailable(isa)) continue;
    kernels::OverrideIsaForTesting(isa);
    const kernels::TypeKernels& k = *kernels::Find(w_rows.type);
    // The packed layout where this tier has one (as Model::Load does).
    Matrix w = w_rows;
    PackedStorage packed;
    ASSERT_TRUE(PackMatrix(&w, &packed).ok());
    EXPECT_EQ(w.packed != nullptr, k.gemm_packed != nullptr);
    // Each activation row alone (single decode).
    std::vector<float> single(static_cast<size_t>(max_n * rows));
    for (int64_t j = 0; j < max_n; ++j) e3.Run(three, w, x.data() + j * cols, 1, single.data() + j * rows);
    for (int64_t n : {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 40, 130}) {
      SCOPED_TRACE(std::string(testing::Format(type).name) + " " + kernels::IsaName(isa) + " n=" + std::to_string(n));
      std::vector<float> y1(static_cast<size_t>(n * rows)), y3(y1.size());
      e1.Run(one, w, x.data(), n, y1.data());
      e3.Run(three, w, x.data(), n, y3.data());
      EXPECT_EQ(y1, y3) << "thread counts disagree";
      if (k.sgemm_min_rows == 0 || n < k.sgemm_min_rows) {  // the integer route
        EXPECT_EQ(y3, std::vector<float>(single.begin(), single.begin() + n * rows)) << "batching changed a row";
      }
      // Against the exact product: activations are rounded to at most 8 bits
      // (Q8 steps of max|x| / 127), so allow 1% of the sum of magnitudes; a
      // wrong layout or tile index is off by the order of the sum itself.
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < rows; ++r) {
          double want = 0, mag = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double p = wd[static_cast<size_t>(r * cols + c)] * x[static_cast<size_t>(j * cols + c)];
            want += p;
            mag += std::fabs(p);
          }
          ASSERT_NEAR(y3[static_cast<size_t>(j * rows + r)], want, 1e-2 * mag) << "row " << r << " activation " << j;
        }
      }
    }
  }
}

std::string Name(const ::testing::TestParamInfo<uint32_t>& p) { return testing::Format(p.param).name; }

INSTANTIATE_TEST_SUITE_P(Types, MatMulTest,
                         ::testing::Values(testing::kTypeF32, testing::kTypeF16, testing::kTypeBF16, testing::kTypeQ8_0,
                                           testing::kTypeQ4_0, testing::kTypeQ4_1, testing::kTypeQ5_0,
                                           testing::kTypeQ5_1, testing::kTypeQ4_K, testing::kTypeQ5_K,
                                           testing::kTypeQ6_K),
                         Name);

}  // namespace
}  // namespace appliance::runtime
