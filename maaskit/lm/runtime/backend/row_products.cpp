// A product of a few rows by a weight, for a decode step on a CPU (maaskit/lm/runtime/backend/kernels.py
// builds it; packed_linear.cpp and packing.py call it).
//
// A decode step of a few streams is a read of every weight: at 1-16 rows a product is the time to stream
// its weight from memory, not arithmetic. oneDNN's packed products read a weight at about 12 GB/s at 2-16
// rows where ``tensor.sum()`` reads 20 on the same cores (benchmarks/linear_kernels.py). Here the weight is
// laid out once in column blocks (packing.py's ``lay_out``: blocks x in features x 16 columns, the last
// block zero-filled), so that each thread streams whole blocks front to back, a tile of 256 features at a
// time: each tile is read from memory once, then from L1 by every further group of four rows (at 16 rows, the
// step's products 1.2-1.3x oneDNN's, from 1.0-1.1x when each group read the whole block again from L2).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "parallel.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

// Blocks of 16 columns, whatever the CPU: two of GCC's 8-float vectors (AVX2's registers; halves of AVX512's),
// so that a weight's layout is known without the library. (at::vec::Vectorized accumulators in an array
// stayed on the stack, stored at every step of the loop; these stay in registers.)
constexpr int64_t V = 8, B = 2 * V;  // floats in a vector, columns of a block
typedef float Vf __attribute__((vector_size(V * sizeof(float)), aligned(alignof(float))));

// ``R`` rows of x (stride ``ldx``) by features [k0, k1) of one block (``w``: in x B): adds their products to
// ``acc`` (R x B floats: a running sum over the block's feature tiles)
template <int R>
void block_product(const float* x, int64_t ldx, const float* w, int64_t k0, int64_t k1, float* acc) {
  Vf a[2 * R];
  for (int r = 0; r < R; ++r) {
    std::memcpy(&a[2 * r], acc + r * B, sizeof(Vf));
    std::memcpy(&a[2 * r + 1], acc + r * B + V, sizeof(Vf));
  }
  for (int64_t k = k0; k < k1; ++k) {
    const Vf w0 = *reinterpret_cast<const Vf*>(w + k * B), w1 = *reinterpret_cast<const Vf*>(w + k * B + V);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * ldx + k];
      a[2 * r] += xr * w0;  // one fused multiply-add each (-ffp-contract=fast, GCC's default for C++)
      a[2 * r + 1] += xr * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    std::memcpy(acc + r * B, &a[2 * r], sizeof(Vf));
    std::memcpy(acc + r * B + V, &a[2 * r + 1], sizeof(Vf));
  }
}

// rows of x by a tile of features, four rows at a time
void rows_product(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t k0, int64_t k1, float* acc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) block_product<4>(x + r * ldx, ldx, w, k0, k1, acc + r * B);
  switch (rows - r) {
    case 3: block_product<3>(x + r * ldx, ldx, w, k0, k1, acc + r * B); break;
    case 2: block_product<2>(x + r * ldx, ldx, w, k0, k1, acc + r * B); break;
    case 1: block_product<1>(x + r * ldx, ldx, w, k0, k1, acc + r * B); break;
    default: break;
  }
}

// features per tile: a tile of a block's weight (KT x B floats, 16 KiB) stays in L1 while every group of four rows
// reads it (a whole block of 1,536 features, 96 KiB, was read from L2 again by each group)
constexpr int64_t KT = 256;
constexpr int64_t MAX_ROWS = 16;  // rows summed at once (more are taken 16 at a time)

at::Tensor row_product(const at::Tensor& x, const at::Tensor& blocked, const std::optional<at::Tensor>& bias,
                       int64_t out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && blocked.scalar_type() == at::kFloat, "row_product is float32 only");
  TORCH_CHECK(blocked.dim() == 3 && blocked.size(2) == B && blocked.is_contiguous(),
              "row_product takes a weight laid out in blocks of ", B, " columns (packing.lay_out)");
  const int64_t in = blocked.size(1), blocks = blocked.size(0);
  TORCH_CHECK(x.size(-1) == in, "row_product: x has ", x.size(-1), " features, the weight ", in);
  TORCH_CHECK(0 < out && out <= blocks * B && out > (blocks - 1) * B, "row_product: ", out, " out features for ",
              blocks, " blocks");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->numel() == out), "row_product: one bias per out feature");
  const at::Tensor flat = x.reshape({-1, in}).contiguous();
  const int64_t rows = flat.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out);
  at::Tensor y = at::empty(shape, x.options());
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  const float* xp = flat.data_ptr<float>();
  const float* wp = blocked.data_ptr<float>();
  const float* bp = bias ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // a task per run of blocks; each tile of a block's weight is read from memory once for up to MAX_ROWS rows
  maaskit::split(blocks, [&](int64_t first, int64_t last) {
    alignas(64) float acc[MAX_ROWS * B];
    for (int64_t blk = first; blk < last; ++blk) {
      const float* w = wp + blk * in * B;
      const int64_t cols = std::min(B, out - blk * B);
      for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
        const int64_t n = std::min(MAX_ROWS, rows - r0);
        std::fill(acc, acc + n * B, 0.f);
        for (int64_t k0 = 0; k0 < in; k0 += KT) rows_product(xp + r0 * in, in, n, w, k0, std::min(in, k0 + KT), acc);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j = 0; j < cols; ++j)
            yp[(r0 + r) * out + blk * B + j] = acc[r * B + j] + (bp != nullptr ? bp[blk * B + j] : 0.f);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(maaskit_cpu, m) {
  m.def("row_product(Tensor x, Tensor blocked, Tensor? bias, int out) -> Tensor");
}

TORCH_LIBRARY_IMPL(maaskit_cpu, CPU, m) { m.impl("row_product", &row_product); }
