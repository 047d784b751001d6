// The matrix products of the forward pass: y[n][W.rows] = x[n][W.cols] * W^T
// for a weight matrix W of any supported type and n activation rows, threaded
// over the engine's pool. n is 1 when one sequence decodes, a few when several
// decode together, hundreds for a prompt.
//
// Two routes, chosen per weight type and ISA by TypeKernels::sgemm_min_rows:
//  - integer (every n for the AVX-512 tiled types; below sgemm_min_rows for
//    the others): the activations are converted to the weight type's
//    vec_dot_type once, then TypeKernels::gemm runs contiguous ranges of
//    weight rows against all n rows, each weight block read once per tile of
//    activation rows. A row's result does not depend on the other rows.
//    Where the matrix has a packed copy (Matrix::packed, Q4_K on AVX-512 and
//    AMX) gemm_packed runs instead, on ranges of whole 16-row groups.
//  - sgemm (from sgemm_min_rows rows on): activations rounded through the
//    vec_dot_type, weight panels dequantized to F32, OpenBLAS.
// Owns the scratch it needs (converted activations, per-thread weight
// panels), sized once by Allocate(); Run() allocates nothing.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "base/status.h"
#include "runtime/kernels/kernels.h"
#include "runtime/model.h"
#include "runtime/thread_pool.h"

namespace appliance::runtime {

class MatMulEngine {
 public:
  // Bytes Allocate() takes for rows of up to max_cols, up to max_n rows per
  // call, and n_threads pool threads (the caller bounds its total scratch).
  static uint64_t ScratchBytes(int64_t max_cols, int64_t max_n, int n_threads);
  Status Allocate(int64_t max_cols, int64_t max_n, int n_threads);

  // y[i][r] = dot(x[i], row r of w) for i < n, r < w.rows; n <= max_n,
  // w.cols <= max_cols. Each output element is computed the same way whichever
  // thread runs it, so results do not depend on the pool's size.
  //
  // prep, when given, finishes the activation rows first: prep(i, thread)
  // writes row i of x (a residual add and an RMSNorm, SwiGLU) and touches no
  // other row's data. It runs inside the conversion's tasks, so a batch's
  // rows are prepared on every thread instead of serially on the caller's.
  void Run(ThreadPool& pool, const Matrix& w, const float* x, int64_t n, float* y, const TaskFn* prep = nullptr);

  // Products of the same activations with several matrices (q, k and v; gate
  // and up): y_i = x * w_i^T. On the integer route with a shared
  // vec_dot_type the activations are converted once and all the products form
  // one pool job, so a decode step pays one wake-up and one wait instead of
  // one per matrix. Results are those of Run() on each product.
  struct Product {
    const Matrix* w;
    float* y;
  };
  static constexpr size_t kMaxGroup = 4;
  void RunGroup(ThreadPool& pool, std::span<const Product> products, const float* x, int64_t n,
                const TaskFn* prep = nullptr);

 private:
  // The activations (prepared, then converted to type's vec_dot_type, or x
  // itself for F32): the pointer and the stride of a row.
  std::pair<const void*, size_t> ConvertActivations(ThreadPool& pool, const kernels::TypeKernels& k, const float* x,
                                                    int64_t cols, int64_t n, bool parallel, const TaskFn* prep);
  void RunSgemm(ThreadPool& pool, const kernels::TypeKernels& k, const Matrix& w, const float* x, int64_t n, float* y,
                bool parallel);

  // Activations converted to a weight's vec_dot_type (n rows), and rounded
  // back to float for sgemm.
  std::vector<uint8_t> xq_;
  std::vector<float> xr_;
  // Per thread: a dequantized weight panel.
  std::vector<std::vector<float>> panel_;
};

}  // namespace appliance::runtime
