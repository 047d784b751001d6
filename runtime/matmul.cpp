#include "runtime/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <new>

#include "runtime/kernels/kernels.h"

namespace appliance::runtime {
namespace {

// Rows of a weight matrix per batched-path task: one dequantized panel of
// 64 rows stays in L2 while OpenBLAS streams the activations past it.
constexpr int64_t kPanelRows = 64;
// Rows per decode-path task.
constexpr int64_t kDecodeRows = 32;
// Below this many multiply-adds a job runs on the calling thread: waking the
// workers costs more than the work (stories260K's matrices are all below it).
constexpr int64_t kMinParallelWork = 1 << 15;

}  // namespace

uint64_t MatMulEngine::ScratchBytes(int64_t max_cols, int64_t max_n, int n_threads) {
  const uint64_t cols = static_cast<uint64_t>(max_cols);
  return 4 * (cols + static_cast<uint64_t>(max_n) * cols + static_cast<uint64_t>(n_threads) * kPanelRows * cols);
}

Status MatMulEngine::Allocate(int64_t max_cols, int64_t max_n, int n_threads) {
  try {
    // No vec_dot_type is wider than f32 (q8_K, the widest quantized one, takes 292 bytes per 256).
    xq_.assign(static_cast<size_t>(max_cols) * sizeof(float), 0);
    xr_.assign(static_cast<size_t>(max_n * max_cols), 0.0f);
    panel_.resize(static_cast<size_t>(n_threads));
    for (auto& p : panel_) p.assign(static_cast<size_t>(kPanelRows * max_cols), 0.0f);
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory allocating the matrix product scratch");
  }
  return Status::Ok();
}

void MatMulEngine::Run(ThreadPool& pool, const Matrix& w, const float* x, int64_t n, float* y) {
  const kernels::TypeKernels& k = *kernels::Find(w.type);
  const int64_t rows = w.rows;
  const int64_t cols = w.cols;
  const bool parallel = rows * cols * n > kMinParallelWork;

  if (n == 1) {
    // Decode: convert the activation row once, then one dot product per
    // weight row, rows split in fixed chunks across the pool.
    const void* xv = x;
    if (k.vec_dot_type != TensorType::kF32) {
      kernels::Find(k.vec_dot_type)->from_float(x, xq_.data(), cols);
      xv = xq_.data();
    }
    auto task = [&](int64_t t, int /*thread*/) {
      const int64_t r1 = std::min(rows, (t + 1) * kDecodeRows);
      for (int64_t r = t * kDecodeRows; r < r1; ++r) y[r] = k.vec_dot(cols, w.row(r), xv);
    };
    const int64_t tasks = (rows + kDecodeRows - 1) / kDecodeRows;
    if (parallel) {
      pool.For(tasks, task);
    } else {
      for (int64_t t = 0; t < tasks; ++t) task(t, 0);
    }
    return;
  }

  // Batched: llama.cpp multiplies F16/BF16/Q8_0 weights with activations
  // converted to that type, so round the activations through it first; the
  // product itself is then plain F32 GEMM on a dequantized panel.
  const float* xa = x;
  if (k.vec_dot_type != TensorType::kF32) {
    const kernels::TypeKernels& vk = *kernels::Find(k.vec_dot_type);
    for (int64_t i = 0; i < n; ++i) {
      vk.from_float(x + i * cols, xq_.data(), cols);
      vk.to_float(xq_.data(), xr_.data() + i * cols, cols);
    }
    xa = xr_.data();
  }
  auto task = [&](int64_t t, int thread) {
    const int64_t r0 = t * kPanelRows;
    const int64_t nr = std::min(kPanelRows, rows - r0);
    const float* wp = nullptr;
    if (w.type == TensorType::kF32) {
      wp = reinterpret_cast<const float*>(w.row(r0));
    } else {
      float* panel = panel_[static_cast<size_t>(thread)].data();
      for (int64_t r = 0; r < nr; ++r) k.to_float(w.row(r0 + r), panel + r * cols, cols);
      wp = panel;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(nr),
                static_cast<int>(cols), 1.0f, xa, static_cast<int>(cols), wp, static_cast<int>(cols), 0.0f, y + r0,
                static_cast<int>(rows));
  };
  const int64_t tasks = (rows + kPanelRows - 1) / kPanelRows;
  if (parallel) {
    pool.For(tasks, task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  }
}

}  // namespace appliance::runtime
