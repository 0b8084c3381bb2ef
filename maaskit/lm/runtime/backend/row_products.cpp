// A product of a few rows by a weight, for a decode step on a CPU (maaskit/lm/runtime/backend/kernels.py
// builds it; packed_linear.cpp and packing.py call it).
//
// A decode step of a few streams is a read of every weight: at 1-16 rows a product is the time to stream
// its weight from memory, not arithmetic. oneDNN's packed products read a weight at about 12 GB/s at 2-16
// rows where ``tensor.sum()`` reads 20 on the same cores (benchmarks/linear_kernels.py). Here the weight is
// laid out once in column blocks (packing.py's ``lay_out``: blocks x in features x 16 columns, the last
// block zero-filled), so that each thread streams whole blocks front to back; each block is read from
// memory once for the first four rows, and from the cache for the next four.
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

// ``R`` rows of x (stride ``ldx``) by one block (in x B): ``out`` (stride ``ldo``) gets ``cols`` columns
template <int R>
void block_product(const float* x, int64_t ldx, const float* w, int64_t in, const float* bias, float* out,
                   int64_t ldo, int64_t cols) {
  Vf acc[2 * R] = {};
  for (int64_t k = 0; k < in; ++k) {
    const Vf w0 = *reinterpret_cast<const Vf*>(w + k * B), w1 = *reinterpret_cast<const Vf*>(w + k * B + V);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * ldx + k];
      acc[2 * r] += xr * w0;  // one fused multiply-add each (-ffp-contract=fast, GCC's default for C++)
      acc[2 * r + 1] += xr * w1;
    }
  }
  float row[B];
  for (int r = 0; r < R; ++r) {
    std::memcpy(row, &acc[2 * r], sizeof(Vf));
    std::memcpy(row + V, &acc[2 * r + 1], sizeof(Vf));
    for (int64_t j = 0; j < cols; ++j) out[r * ldo + j] = row[j] + (bias != nullptr ? bias[j] : 0.f);
  }
}

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
  // a task per run of blocks; each block's weight is read for every four rows while it is in the cache
  maaskit::split(blocks, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const float* w = wp + blk * in * B;
      const float* bb = bp ? bp + blk * B : nullptr;
      const int64_t cols = std::min(B, out - blk * B);
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) block_product<4>(xp + r * in, in, w, in, bb, yp + r * out + blk * B, out, cols);
      switch (rows - r) {
        case 3: block_product<3>(xp + r * in, in, w, in, bb, yp + r * out + blk * B, out, cols); break;
        case 2: block_product<2>(xp + r * in, in, w, in, bb, yp + r * out + blk * B, out, cols); break;
        case 1: block_product<1>(xp + r * in, in, w, in, bb, yp + r * out + blk * B, out, cols); break;
        default: break;
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
