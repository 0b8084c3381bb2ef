"""The forward pass of a server's step, compiled with ``torch.compile`` (Inductor).

Outside its matrix products, a step of a model of real shape is a few thousand small operations
(norms, rotations, reshapes), each paying eager PyTorch's cost of a call; Inductor fuses them into a
few C++ loops (``benchmarks/open_models.py`` measures a compiled server beside the eager one).

The price is the compilation: a minute or more per graph on two cores. So one graph serves every
step, whatever its mix of decodes and prompt chunks: attention, the only part that depends on the
mix, is one opaque operation (``maaskit::attention``) that the graph calls with its queries, keys and
values, and that runs the step's :class:`~maaskit.lm.models.attention.FlatBatch` eagerly (vLLM compiles its
model around its attention the same way). The rest of the graph sees a row of N tokens and the
positions of the S tokens it scores; PyTorch specializes sizes of 1, so three graphs (N = 1; S = 1
beside a longer row; both longer) serve a server's life, all built by :meth:`CompiledForward.warm_up`
on a scratch cache of its own, so that it can run while the engine serves with the eager pass.

On a CPU the products stay the served model's own (oneDNN's packed weights, :mod:`.packing`), each
called as one opaque operation by its place in the model (``maaskit_cpu::packed_linear``, which looks the
weight up in C++: ``packed_linear.cpp``; a fused q/k/v or gate/up product once, :class:`_MergeProducts`):
oneDNN's packed layout is no tensor a graph can take as an input or Inductor can keep in its cache;
at a decode step's few rows the same call runs maaskit's row kernel on the weight's copy in column blocks
(:mod:`.packing`, ``row_products.cpp``). So the graphs hold no weights: they run on the model's own, and
Inductor keeps them in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the system's
temporary folder), keyed by the graph (the model's shapes and dtype, not its weights' values), the
thread count, PyTorch's version, the C++ compiler and the CPU's instruction set: a second start of a
model of the same shapes reads them instead of building them. (Inductor's own kernels for weights
frozen into the graph, its other way, ran a step at one row faster, but no such graph can be cached
and each start built them for minutes: benchmarks/FIGURES.md, "the compiled forward pass". Inductor's
loop over a weight as stored, fused with the operations around it, ran one row at 1.5x oneDNN's call
and served a step of one row (on each weight kept as stored too) until the row kernel took every step of
1-16 rows: benchmarks/FIGURES.md, "a few rows".)
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref
from typing import Any

import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from ...models.attention import FlatBatch, SlotCache
from ...models.base import CausalLM
from . import kernels
from .packing import ROW_PRODUCT_ROWS, Fused, FusedPart, PackedLinear

__all__ = ["CompiledForward"]

# the step being run by this thread: its batch, set around each call of the compiled graph
_running = threading.local()

# defined through torch.library.Library rather than the @custom_op decorator, whose wrapper costs about as
# long as a small product (benchmarks/FIGURES.md, "packing")
_LIBRARY = torch.library.Library("maaskit", "FRAGMENT")
_LIBRARY.define("attention(Tensor q, Tensor k, Tensor v, int layer, bool gqa, int? window) -> Tensor")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, gqa: bool,
               window: int | None) -> torch.Tensor:  # fmt: skip
    return _running.batch.attention(layer, q, k, v, gqa, window=window).contiguous()


_LIBRARY.impl("attention", _attention, "CompositeExplicitAutograd")


@torch.library.register_fake("maaskit::attention")
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, gqa: bool, window: int | None) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous, as _attention returns it


class _Traced:
    """The batch the compiled graph sees: the positions it is given, and attention as one opaque call."""

    def __init__(self, where: torch.Tensor):
        self.where = where

    def positions(self, tokens: torch.Tensor, context: int) -> torch.Tensor:
        return self.where

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0, window: int | None = None) -> torch.Tensor:  # fmt: skip
        return torch.ops.maaskit.attention(q, k, v, layer, gqa, window)

    def advance(self, tokens: int) -> None:
        pass


class _MergeProducts(CustomGraphPass):
    """Inductor's pass over each graph: calls of ``maaskit_cpu::packed_linear`` on the same input and
    product become one (each part of a fused q/k/v or gate/up product asks for the whole product)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        seen: dict[Any, torch.fx.Node] = {}
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target is torch.ops.maaskit_cpu.packed_linear.default:
                key = (node.args, tuple(sorted(node.kwargs.items())))
                if key in seen:
                    node.replace_all_uses_with(seen[key])
                    graph.erase_node(node)
                else:
                    seen[key] = node

    def uuid(self) -> bytes:  # part of the on-disk cache's key: a change to this file builds anew
        return get_hash_for_files((__file__,))


_log = logging.getLogger(__name__)


class _Product(nn.Module):
    """In the traced copy, in a packed product's place: ``maaskit_cpu::packed_linear``, by its place in the model."""

    def __init__(self, product: int, linear: PackedLinear):
        super().__init__()
        self.product, self.out_features = product, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.maaskit_cpu.packed_linear(x, self.product, self.out_features)


class _Share(nn.Module):
    """In the traced copy, in a :class:`~.packing.FusedPart`'s place: the whole fused product, then this
    part's share (each part asks for the product; :class:`_MergeProducts` leaves one call)."""

    def __init__(self, fused: Fused, part: int):
        super().__init__()
        self.part, self.group = part, [fused]  # in a list: not a child of each part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.group[0]
        return fused.product(x).split(fused.sizes, dim=-1)[self.part]


def _opaque_copy(model: CausalLM) -> tuple[CausalLM, list[PackedLinear]]:
    """The model's modules again, on the same tensors (no weight is copied), each packed product called
    as ``maaskit_cpu::packed_linear`` by its place in the model (the same for every model of the same
    layout, so that a graph from the cache serves any of them): what is traced, apart from the modules
    the engine runs meanwhile. Returns the copy and the packed products, in those places."""
    shared: dict[int, Any] = {}
    for module in model.modules():
        for value in module.__dict__.values():  # parameters, buffers, and tensors kept as attributes
            for tensor in value.values() if isinstance(value, dict) else [value]:
                if isinstance(tensor, torch.Tensor):
                    shared[id(tensor)] = tensor
    traced = copy.deepcopy(model, shared)
    products: list[PackedLinear] = []
    for parent in list(traced.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                products.append(child)
                setattr(parent, name, _Product(len(products) - 1, child))
            elif isinstance(child, FusedPart):
                setattr(parent, name, _Share(child.group[0], child.part))
    return traced, products


class CompiledForward:
    """``CompiledForward(model)(tokens, batch, select)``: ``model(tokens, batch, select=select)`` for a
    server's flat batch, through ``torch.compile``; call :meth:`warm_up` first, or the first steps compile."""

    def __init__(self, model: CausalLM):
        if kernels.compiler() is None:
            raise RuntimeError("compiling the model's step needs a C++ compiler (g++ or clang++), and none is on PATH")
        kernels.load()  # the packed products' lookup (packed_linear.cpp)
        self.model, products = _opaque_copy(model)
        self.opaque_products = len(products)
        packed, biases, rows = [p.packed for p in products], [p.bias for p in products], [p.min_rows for p in products]
        blocked = [p.blocked for p in products]  # the row kernel's, for products of a few rows
        self.products = torch.ops.maaskit_cpu.register_products(packed, biases, rows, blocked, ROW_PRODUCT_ROWS)
        weakref.finalize(self, torch.ops.maaskit_cpu.release_products, self.products)  # the packed copies' memory
        self.compiled = torch.compile(self._forward, dynamic=True)
        self.cached_graphs = 0  # of those warm_up built, how many Inductor read from its on-disk cache

    def _forward(self, tokens: torch.Tensor, where: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, _Traced(where), select=select)

    def __call__(self, tokens: torch.Tensor, batch: FlatBatch, select: torch.Tensor) -> torch.Tensor:
        _running.batch = batch
        torch.ops.maaskit_cpu.use_products(self.products)  # this thread's products, for the graph's calls
        try:
            return self.compiled(tokens, batch.where, select)
        finally:
            _running.batch = None

    @torch.inference_mode()
    def warm_up(self, slots: int) -> None:
        """Build the graphs a server needs: one token, a prompt scored at its last token, several rows
        (``slots`` sequences at most), on a scratch cache (the engine's own is never written)."""
        scratch = SlotCache.empty(self.model, min(slots, 3))
        device = scratch.keys[0].device
        started, hits = time.perf_counter(), counters["inductor"]["fxgraph_cache_hit"]
        # in force while the graphs are built (it is part of their cache key), not around each step
        with torch._inductor.config.patch(post_grad_custom_pre_pass=_MergeProducts()):
            rows = [(s, s + 1) for s in range(scratch.slots)]
            for decodes, chunks in (([(0, 1)], []), ([], [(0, 0, 3)]), (rows, [])):
                batch = scratch.batch(decodes, chunks)
                tokens = torch.zeros(1, batch.tokens, dtype=torch.long, device=device)
                self(tokens, batch, torch.tensor(batch.last, device=device))
        # counters are process-wide: another graph built meanwhile would be counted too (not in a server)
        self.cached_graphs = counters["inductor"]["fxgraph_cache_hit"] - hits
        _log.info("the compiled forward pass is built in %.0f s (%d of its 3 graphs from Inductor's on-disk cache)",
                  time.perf_counter() - started, self.cached_graphs)  # fmt: skip
