// A decode step's attention on a CPU: one new query per row against its own slot's cached keys and values
// (maaskit/lm/runtime/backend/kernels.py builds and loads it; maaskit/lm/models/attention.py calls it).
//
// PyTorch's attention (SDPA) runs each row's few query heads as a tiny matrix product and read the cache at
// a third of the memory's speed at a server's shapes; here each (row, key/value head) is one task, and each
// of its query heads reads the keys and values once, its query and its output held in registers
// (benchmarks/attention_kernels.py; benchmarks/FIGURES.md, "decode attention"). The rows' slots and
// their visible positions [start, end) are arguments: rows in any slots, of any lengths, any window, with
// no gather and no mask. float32 only; the query scale is width ** -0.5, as SDPA's.
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

// One query head against ``span`` keys and values of ``NV`` vectors each: the query and the output held in
// registers, four keys' dot products at once (independent chains), then softmax, then the weighted sum.
template <int NV>
void head_attention(const float* q, const float* k, const float* v, int64_t span, float scale, float* scores,
                    float* out) {
  constexpr int64_t W = NV * Vec::size();
  Vec qv[NV];
  for (int i = 0; i < NV; ++i) qv[i] = Vec::loadu(q + i * Vec::size()) * Vec(scale);
  auto sum = [](Vec& a, Vec& b) { return a + b; };
  int64_t s = 0;
  for (; s + 4 <= span; s += 4) {
    const float* ks = k + s * W;
    Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    for (int i = 0; i < NV; ++i) {
      const int64_t o = i * Vec::size();
      a0 = at::vec::fmadd(qv[i], Vec::loadu(ks + o), a0);
      a1 = at::vec::fmadd(qv[i], Vec::loadu(ks + W + o), a1);
      a2 = at::vec::fmadd(qv[i], Vec::loadu(ks + 2 * W + o), a2);
      a3 = at::vec::fmadd(qv[i], Vec::loadu(ks + 3 * W + o), a3);
    }
    scores[s] = at::vec::vec_reduce_all<float>(sum, a0);
    scores[s + 1] = at::vec::vec_reduce_all<float>(sum, a1);
    scores[s + 2] = at::vec::vec_reduce_all<float>(sum, a2);
    scores[s + 3] = at::vec::vec_reduce_all<float>(sum, a3);
  }
  for (; s < span; ++s) {
    Vec a(0.f);
    for (int i = 0; i < NV; ++i) a = at::vec::fmadd(qv[i], Vec::loadu(k + s * W + i * Vec::size()), a);
    scores[s] = at::vec::vec_reduce_all<float>(sum, a);
  }
  const float top = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, scores, span);
  at::vec::map([top](Vec x) { return (x - Vec(top)).exp(); }, scores, scores, span);
  const float inv = 1.f / at::vec::reduce_all<float>(sum, scores, span);
  Vec acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = Vec(0.f);
  for (s = 0; s < span; ++s) {
    const Vec p(scores[s]);
    for (int i = 0; i < NV; ++i) acc[i] = at::vec::fmadd(p, Vec::loadu(v + s * W + i * Vec::size()), acc[i]);
  }
  for (int i = 0; i < NV; ++i) (acc[i] * Vec(inv)).store(out + i * Vec::size());
}

// The same, for a width of no such number of vectors: plain loops.
void head_attention_any(const float* q, const float* k, const float* v, int64_t span, int64_t width, float scale,
                        float* scores, float* out) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < span; ++s) {
    float dot = 0.f;
    for (int64_t w = 0; w < width; ++w) dot += q[w] * k[s * width + w];
    scores[s] = dot * scale;
    top = std::max(top, scores[s]);
  }
  float total = 0.f;
  for (int64_t s = 0; s < span; ++s) total += scores[s] = std::exp(scores[s] - top);
  std::fill(out, out + width, 0.f);
  for (int64_t s = 0; s < span; ++s)
    for (int64_t w = 0; w < width; ++w) out[w] += scores[s] / total * v[s * width + w];
}

// q: rows x heads x width; keys, values: one layer's cache, slots x key/value heads x context x width; slots,
// starts, ends: each row's slot and the positions it sees. Returns rows x heads x width.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& slots, const at::Tensor& starts, const at::Tensor& ends, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.scalar_type() == at::kFloat,
              "q: rows x heads x width, contiguous float32");
  TORCH_CHECK(keys.dim() == 4 && keys.is_contiguous() && keys.scalar_type() == at::kFloat &&
                  values.sizes() == keys.sizes() && values.is_contiguous() && values.scalar_type() == at::kFloat,
              "keys, values: slots x key/value heads x context x width, contiguous float32");
  const int64_t rows = q.size(0), heads = q.size(1), width = q.size(2);
  const int64_t kv = keys.size(1), context = keys.size(2);
  TORCH_CHECK(keys.size(3) == width && heads % kv == 0, "q and keys disagree on width or heads");
  for (const auto* t : {&slots, &starts, &ends})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == rows && t->scalar_type() == at::kLong && t->is_contiguous(),
                "slots, starts, ends: one int64 per row");
  const int64_t *slot = slots.data_ptr<int64_t>(), *first = starts.data_ptr<int64_t>(), *last = ends.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(0 <= slot[r] && slot[r] < keys.size(0) && 0 <= first[r] && first[r] < last[r] && last[r] <= context,
                "row ", r, ": slot ", slot[r], ", positions [", first[r], ", ", last[r], ") out of the cache");
  const int64_t group = heads / kv;
  at::Tensor out = at::empty_like(q);
  const float *qp = q.data_ptr<float>(), *kp = keys.data_ptr<float>(), *vp = values.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  maaskit::split(rows * kv, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / kv, h = task % kv, span = last[r] - first[r];
      const int64_t offset = ((slot[r] * kv + h) * context + first[r]) * width;
      scores.resize(span);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t head = (r * heads + h * group + g) * width;
        if (width == 8 * Vec::size())
          head_attention<8>(qp + head, kp + offset, vp + offset, span, scale_f, scores.data(), op + head);
        else if (width == 16 * Vec::size())
          head_attention<16>(qp + head, kp + offset, vp + offset, span, scale_f, scores.data(), op + head);
        else if (width == 4 * Vec::size())
          head_attention<4>(qp + head, kp + offset, vp + offset, span, scale_f, scores.data(), op + head);
        else
          head_attention_any(qp + head, kp + offset, vp + offset, span, width, scale_f, scores.data(), op + head);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(maaskit_cpu, m) {
  m.def("decode_attention(Tensor q, Tensor keys, Tensor values, Tensor slots, Tensor starts, Tensor ends, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(maaskit_cpu, CPU, m) { m.impl("decode_attention", &decode_attention); }
