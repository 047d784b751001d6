#include "runtime/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <new>

#include "runtime/kernels/kernels.h"

namespace appliance::runtime {
namespace {

// Rows of a weight matrix per sgemm-path task: one dequantized panel of
// 64 rows stays in L2 while OpenBLAS streams the activations past it.
constexpr int64_t kPanelRows = 64;
// Which route a product takes is the weight type's measured choice
// (TypeKernels::sgemm_min_rows). The tiled integer kernels (AVX-512) always
// win: CPU time per multiply-add on one core, Q4_K 768x768, they run at ~32
// GMAC/s for 1 row, ~74 for 8, ~70 for 512, where dequantize + OpenBLAS sgemm
// reaches ~35 for 16 rows and ~38 for 512; and they give the same logits for
// a prompt as for decoding it token by token.
// Below this many multiply-adds a job runs on the calling thread: waking the
// workers costs more than the work (stories260K's matrices are all below it).
constexpr int64_t kMinParallelWork = 1 << 15;
// Integer-path tasks: contiguous ranges of units of kernels::kPackRows weight
// rows (each range read sequentially) over the group's products taken end to
// end, claimed in order and shrinking: each takes 1 / (kTasksPerThread x
// threads) of the units not yet handed out, at least kMinTaskUnits. A job
// ends when its last task does, and the other threads wait for it: with
// equal ranges (4 per thread, as before) that wait averaged half a range,
// ~3% of a 1B model's decode; shrinking ranges end together. The first
// ranges stay a small share too: a thread preempted while it holds one (on
// this shared 2-core VM under load, the worker of a 2-thread pool ran as few
// as 3% of the tasks of 2-task jobs) stalls the product by no more than that.
// Each call of a kernel has a cost in the activation rows alone (the AMX Q4_K
// kernel lays out its A tiles: 8% of a 512-token prefill with tasks of 2
// units), so a task takes at least kMinTaskUnits units, more with more rows.
constexpr int64_t kTasksPerThread = 4;
constexpr int64_t kMinTaskUnits = 2;
constexpr int64_t kRowsPerMinUnit = 64;
constexpr int64_t kMaxTasks = 64;  // the last one takes what is left

// Bytes per element of the widest converted activation row (F16/BF16; Q8_0
// takes 34/32, Q8_K 292/256, F32 is used in place).
constexpr int64_t kMaxActBytes = 2;

}  // namespace

uint64_t MatMulEngine::ScratchBytes(int64_t max_cols, int64_t max_n, int n_threads) {
  const uint64_t cols = static_cast<uint64_t>(max_cols);
  const uint64_t n = static_cast<uint64_t>(max_n);
  return kMaxActBytes * n * cols + 4 * n * cols + 4 * static_cast<uint64_t>(n_threads) * kPanelRows * cols;
}

Status MatMulEngine::Allocate(int64_t max_cols, int64_t max_n, int n_threads) {
  try {
    xq_.assign(static_cast<size_t>(kMaxActBytes * max_n * max_cols), 0);
    xr_.assign(static_cast<size_t>(max_n * max_cols), 0.0f);
    panel_.resize(static_cast<size_t>(n_threads));
    for (auto& p : panel_) p.assign(static_cast<size_t>(kPanelRows * max_cols), 0.0f);
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory allocating the matrix product scratch");
  }
  return Status::Ok();
}

void MatMulEngine::Run(ThreadPool& pool, const Matrix& w, const float* x, int64_t n, float* y, const TaskFn* prep) {
  const Product product{&w, y};
  RunGroup(pool, std::span(&product, 1), x, n, prep);
}

std::pair<const void*, size_t> MatMulEngine::ConvertActivations(ThreadPool& pool, const kernels::TypeKernels& k,
                                                                const float* x, int64_t cols, int64_t n, bool parallel,
                                                                const TaskFn* prep) {
  const bool as_is = k.vec_dot_type == TensorType::kF32;
  const kernels::TypeKernels& vk = *kernels::Find(k.vec_dot_type);
  const size_t x_stride = as_is ? static_cast<size_t>(cols) * sizeof(float) : kernels::RowBytes(k.vec_dot_type, cols);
  uint8_t* xq = xq_.data();
  auto row = [&](int64_t i, int thread) {
    if (prep != nullptr) (*prep)(i, thread);
    if (!as_is) vk.from_float(x + i * cols, xq + i * x_stride, cols);
  };
  // Contiguous rows per thread; a pool job only when each gets two or more.
  auto rows = [&](int64_t t, int thread) {
    const int64_t i1 = n * (t + 1) / pool.size();
    for (int64_t i = n * t / pool.size(); i < i1; ++i) row(i, thread);
  };
  if (as_is && prep == nullptr) return {x, x_stride};
  if (parallel && n >= 2 * pool.size()) {
    pool.For(pool.size(), rows);
  } else {
    for (int64_t i = 0; i < n; ++i) row(i, 0);
  }
  if (as_is) return {x, x_stride};
  return {xq, x_stride};
}

void MatMulEngine::RunGroup(ThreadPool& pool, std::span<const Product> products, const float* x, int64_t n,
                            const TaskFn* prep) {
  const Matrix& w0 = *products[0].w;
  const kernels::TypeKernels& k0 = *kernels::Find(w0.type);
  bool shared = products.size() <= kMaxGroup;
  int64_t work = 0;
  for (const Product& p : products) {
    const kernels::TypeKernels& k = *kernels::Find(p.w->type);
    shared = shared && p.w->cols == w0.cols && k.vec_dot_type == k0.vec_dot_type &&
             (k.sgemm_min_rows == 0 || n < k.sgemm_min_rows);
    work += p.w->rows * p.w->cols * n;
  }
  if (!shared) {
    // Prepared once, for all the products (a conversion to F32 is none).
    if (prep != nullptr) {
      const kernels::TypeKernels& f32 = *kernels::Find(TensorType::kF32);
      ConvertActivations(pool, f32, x, w0.cols, n, work > kMinParallelWork, prep);
    }
    for (const Product& p : products) {
      const kernels::TypeKernels& k = *kernels::Find(p.w->type);
      const bool parallel = p.w->rows * p.w->cols * n > kMinParallelWork;
      if (k.sgemm_min_rows != 0 && n >= k.sgemm_min_rows) {
        RunSgemm(pool, k, *p.w, x, n, p.y, parallel);
      } else {
        const Product one = p;
        RunGroup(pool, std::span(&one, 1), x, n);
      }
    }
    return;
  }
  const bool parallel = work > kMinParallelWork;
  const int64_t cols = w0.cols;
  // Activations are converted once for all the products, not once per weight row.
  // (Not a structured binding: clang 14, which builds the fuzzer, cannot capture one.)
  const std::pair<const void*, size_t> converted = ConvertActivations(pool, k0, x, cols, n, parallel, prep);
  const void* xv = converted.first;
  const size_t x_stride = converted.second;
  // The products' units end to end: product i is units [unit0[i], unit0[i + 1]).
  std::array<int64_t, kMaxGroup + 1> unit0{};
  for (size_t i = 0; i < products.size(); ++i) {
    unit0[i + 1] = unit0[i] + (products[i].w->rows + kernels::kPackRows - 1) / kernels::kPackRows;
  }
  const int64_t units = unit0[products.size()];
  // Task t is units [bound[t], bound[t + 1]).
  std::array<int64_t, kMaxTasks + 1> bound{};
  int64_t tasks = 0;
  const int64_t share = kTasksPerThread * pool.size();
  const int64_t min_units = std::max(kMinTaskUnits, n / kRowsPerMinUnit);
  while (bound[static_cast<size_t>(tasks)] < units) {
    const int64_t from = bound[static_cast<size_t>(tasks)];
    const int64_t size = std::max(min_units, (units - from + share - 1) / share);
    const bool last = !parallel || tasks + 1 == kMaxTasks;
    ++tasks;
    bound[static_cast<size_t>(tasks)] = last ? units : std::min(units, from + size);
  }
  // Every output element is computed by gemm the same way whichever range
  // (and thread) it falls in.
  auto task = [&](int64_t t, int /*thread*/) {
    const int64_t u0 = bound[static_cast<size_t>(t)], u1 = bound[static_cast<size_t>(t) + 1];
    for (size_t i = 0; i < products.size(); ++i) {
      const int64_t g0 = std::max(u0, unit0[i]) - unit0[i], g1 = std::min(u1, unit0[i + 1]) - unit0[i];
      if (g1 <= g0) continue;
      const Matrix& w = *products[i].w;
      const int64_t r0 = g0 * kernels::kPackRows, r1 = std::min(w.rows, g1 * kernels::kPackRows);
      const kernels::TypeKernels& k = *kernels::Find(w.type);
      if (w.packed != nullptr && k.gemm_packed != nullptr) {
        k.gemm_packed(cols, w.packed + static_cast<size_t>(g0) * k.packed_bytes(kernels::kPackRows, cols), r1 - r0, xv,
                      x_stride, n, products[i].y + r0, w.rows);
      } else {
        k.gemm(cols, w.row(r0), w.row_bytes, r1 - r0, xv, x_stride, n, products[i].y + r0, w.rows);
      }
    }
  };
  if (parallel) {
    pool.For(tasks, task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  }
}

void MatMulEngine::RunSgemm(ThreadPool& pool, const kernels::TypeKernels& k, const Matrix& w, const float* x, int64_t n,
                            float* y, bool parallel) {
  // llama.cpp multiplies F16/BF16/Q8_0 weights with activations converted to
  // that type, so round the activations through it first; the product itself
  // is then plain F32 GEMM on a dequantized panel.
  const int64_t rows = w.rows;
  const int64_t cols = w.cols;
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
