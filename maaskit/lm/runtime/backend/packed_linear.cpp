// A compiled step's packed products, called from the graph by their place in the model
// (maaskit/lm/runtime/backend/compiled.py; built and loaded by kernels.py).
//
// oneDNN's packed weights are no tensors a graph can take as inputs, so the graph names each product by
// its number and the step's products are looked up here: a compiled pass registers its model's packed
// weights once (register_products), says before each step which set its thread runs (use_products),
// and each call runs oneDNN's product (mkldnn::_linear_pointwise) on that weight, or, at a decode step's few
// rows, maaskit's own on the weight's copy in column blocks (row_products.cpp). The same lookup in
// Python cost about 40 us a call, 2 ms of a 4-row step of 49 products (benchmarks/FIGURES.md, "packed
// products called from C++").
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/constant_pad_nd.h>
#include <torch/library.h>

#include <deque>
#include <mutex>
#include <optional>
#include <vector>

namespace {

struct Product {
  at::Tensor packed;
  std::optional<at::Tensor> bias;
  int64_t min_rows;  // a product of fewer rows is padded to this many (measured faster on some CPUs)
  std::optional<at::Tensor> blocked;  // the weight in column blocks, for products of up to row_rows rows
  int64_t row_rows;
};

std::mutex mutex;
std::deque<std::vector<Product>> sets;  // a deque: a set's address never moves while others are added
thread_local const std::vector<Product>* current = nullptr;

int64_t register_products(at::TensorList packed, const c10::List<std::optional<at::Tensor>>& bias,
                          at::IntArrayRef min_rows, const c10::List<std::optional<at::Tensor>>& blocked,
                          int64_t rows) {
  TORCH_CHECK(packed.size() == bias.size() && packed.size() == min_rows.size() && packed.size() == blocked.size(),
              "one bias, one row count and one blocked weight (or None) per product");
  std::vector<Product> set;
  for (size_t i = 0; i < packed.size(); ++i) set.push_back({packed[i], bias.get(i), min_rows[i], blocked.get(i), rows});
  std::lock_guard<std::mutex> hold(mutex);
  sets.push_back(std::move(set));
  return static_cast<int64_t>(sets.size()) - 1;
}

void use_products(int64_t handle) {
  std::lock_guard<std::mutex> hold(mutex);
  TORCH_CHECK(0 <= handle && handle < static_cast<int64_t>(sets.size()), "no products registered as ", handle);
  current = &sets[handle];
}

void release_products(int64_t handle) {  // the weights go; the handle is never reused
  std::lock_guard<std::mutex> hold(mutex);
  if (0 <= handle && handle < static_cast<int64_t>(sets.size())) sets[handle].clear();
}

at::Tensor linear(const at::Tensor& x, const Product& p) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, p.packed, p.bias, "none", c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// x: ... x in features; product: its number in the set this thread uses; out: its out features
at::Tensor packed_linear(const at::Tensor& x, int64_t product, int64_t out) {
  TORCH_CHECK(current != nullptr, "packed_linear called with no products in use (use_products first)");
  TORCH_CHECK(0 <= product && product < static_cast<int64_t>(current->size()), "no product ", product, " in use");
  const Product& p = (*current)[product];
  const int64_t rows = x.numel() / x.size(-1);
  if (p.blocked && rows <= p.row_rows) {  // through the dispatcher: a profile says which product ran
    static const auto row_product = c10::Dispatcher::singleton()
        .findSchemaOrThrow("maaskit_cpu::row_product", "")
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t)>();
    return row_product.call(x, *p.blocked, p.bias, out);
  }
  if (rows >= p.min_rows) return linear(x, p);
  at::Tensor padded = at::constant_pad_nd(x.reshape({rows, x.size(-1)}), {0, 0, 0, p.min_rows - rows});
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out);
  return linear(padded, p).narrow(0, 0, rows).reshape(shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(maaskit_cpu, m) {
  m.def("register_products(Tensor[] packed, Tensor?[] bias, int[] min_rows, Tensor?[] blocked, int rows) -> int",
        TORCH_FN(register_products));
  m.def("use_products(int handle) -> ()", TORCH_FN(use_products));
  m.def("release_products(int handle) -> ()", TORCH_FN(release_products));
  m.def("packed_linear(Tensor x, int product, int out) -> Tensor");
}

TORCH_LIBRARY_IMPL(maaskit_cpu, CPU, m) { m.impl("packed_linear", &packed_linear); }
