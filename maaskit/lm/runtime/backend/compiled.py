"""The forward pass of a server's step, compiled with ``torch.compile`` (Inductor).

Outside its matrix products, a step of a model of real shape is a few thousand small operations
(norms, rotations, reshapes), each paying eager PyTorch's cost of a call; Inductor fuses them into a
few C++ loops. On a CPU, with the weights frozen into the graph as constants, it also lays each
product's weight out once for a kernel of its own where that benchmarks faster than oneDNN's
(``benchmarks/open_models.py`` measures a compiled server beside the eager one).

The price is the compilation: a minute or more per graph on two cores. So one graph serves every
step, whatever its mix of decodes and prompt chunks: attention, the only part that depends on the
mix, is one opaque operation (``maaskit::attention``) that the graph calls with its queries, keys and
values, and that runs the step's :class:`~maaskit.lm.models.attention.FlatBatch` eagerly (vLLM compiles its
model around its attention the same way). The rest of the graph sees a row of N tokens and the
positions of the S tokens it scores; PyTorch specializes sizes of 1, so three graphs (N = 1; S = 1
beside a longer row; both longer) serve a server's life, all built by :meth:`CompiledForward.warm_up`
on a scratch cache of its own, so that it can run while the engine serves with the eager pass. The
graphs are not kept between starts: with its weights frozen, Inductor bypasses its on-disk graph cache
("mkldnn tensors unpickleable"), and without freezing the products are slower than eager ones. Each
graph holds its own copy of the weights, as they were when it was built: a change to the model's
parameters after :meth:`CompiledForward.warm_up` is not seen.
"""

from __future__ import annotations

import contextlib
import shutil

import torch

from ...models.attention import FlatBatch, SlotCache
from ...models.base import CausalLM
from .packing import FusedPart, PackedLinear

__all__ = ["CompiledForward"]

# the batch of the step being run: set around each call of the compiled graph, on the engine's thread
_running: list[FlatBatch] = []

# defined through torch.library.Library rather than the @custom_op decorator, whose wrapper costs about as
# long as a small product (benchmarks/FIGURES.md, "packing"), once per layer here
_LIBRARY = torch.library.Library("maaskit", "FRAGMENT")
_LIBRARY.define("attention(Tensor q, Tensor k, Tensor v, int layer, bool gqa, int? window) -> Tensor")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, gqa: bool,
               window: int | None) -> torch.Tensor:  # fmt: skip
    return _running[-1].attention(layer, q, k, v, gqa, window=window).contiguous()


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


# on a CPU the graph's weights are frozen into it as constants, which lets Inductor lay each product's
# weight out once for a C++ kernel of its own (AMX or AVX-512 micro-kernels), fused with what follows it,
# where it benchmarks faster than oneDNN's (``ATEN``) on that shape; silently: no autotuning tables.
# In force while the graphs are traced and built (torch.compile's ``options`` come too late for freezing,
# which decides how the model's weights are traced), not around each step, where a patch would cost time.
# (Inductor's freezing_discard_parameters would release the compiled copy's own parameters, but its guards
# then fail on a tied head: `tokens.weight is head.weight`.)
_CPU = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
        "autotune_num_choices_displayed": 0}  # fmt: skip


class CompiledForward:
    """``CompiledForward(model)(tokens, batch, select)``: ``model(tokens, batch, select=select)`` for a
    server's flat batch, through ``torch.compile``; call :meth:`warm_up` first, or the first steps compile."""

    def __init__(self, model: CausalLM):
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise RuntimeError("compiling the model's step needs a C++ compiler (g++ or clang++), and none is on PATH")
        if any(isinstance(m, (PackedLinear, FusedPart)) for m in model.modules()):
            raise ValueError("compile a model as it was built, not one packed for the CPU (lm/backend/packing.py): "
                             "on a CPU Inductor lays the weights out itself")  # fmt: skip
        self.model = model
        self.frozen = next(model.parameters()).device.type == "cpu"
        self.compiled = torch.compile(self._forward, dynamic=True)

    def _forward(self, tokens: torch.Tensor, where: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, _Traced(where), select=select)

    def __call__(self, tokens: torch.Tensor, batch: FlatBatch, select: torch.Tensor) -> torch.Tensor:
        _running.append(batch)
        try:
            return self.compiled(tokens, batch.where, select)
        finally:
            _running.pop()

    @torch.inference_mode()
    def warm_up(self, slots: int) -> None:
        """Build the graphs a server needs: one token, a prompt scored at its last token, several rows
        (``slots`` sequences at most), on a scratch cache (the engine's own is never written)."""
        scratch = SlotCache.empty(self.model, min(slots, 3))
        device = scratch.keys[0].device
        with torch._inductor.config.patch(_CPU) if self.frozen else contextlib.nullcontext():
            rows = [(s, s + 1) for s in range(scratch.slots)]
            for decodes, chunks in (([(0, 1)], []), ([], [(0, 0, 3)]), (rows, [])):
                batch = scratch.batch(decodes, chunks)
                tokens = torch.zeros(1, batch.tokens, dtype=torch.long, device=device)
                self(tokens, batch, torch.tensor(batch.last, device=device))
