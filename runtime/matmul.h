// The matrix products of the forward pass: y[n][W.rows] = x[n][W.cols] * W^T
// for a weight matrix W of any supported type and n activation rows, threaded
// over the engine's pool. Owns the scratch it needs (converted activations,
// per-thread weight panels), sized once by Allocate(); Run() allocates nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
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
  void Run(ThreadPool& pool, const Matrix& w, const float* x, int64_t n, float* y);

 private:
  // Activations converted to a weight's vec_dot_type (decode), and rounded
  // back to float (batched path).
  std::vector<uint8_t> xq_;
  std::vector<float> xr_;
  // Per thread: a dequantized weight panel.
  std::vector<std::vector<float>> panel_;
};

}  // namespace appliance::runtime
