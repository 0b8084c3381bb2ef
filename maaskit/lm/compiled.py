"""The decode step, and one prompt's pass, compiled with ``torch.compile`` (Inductor), for a server.

Outside its matrix products, a decode step of a model of real shape is a few thousand small
operations (norms, rotations, the cache's writes and reads, attention's reshapes), each paying eager
PyTorch's cost of a call. Inductor fuses them into a few C++ loops. Measured side by side in one
process on this project's 2-core machine, SmolLM2-135M's shape, one thread, 100 positions: a step at
1 / 4 / 16 rows took 43 / 42 / 66 ms compiled against 62 / 58 / 88 ms eager in bfloat16.

On a CPU the products are Inductor's too. Its weights frozen into the graph as constants, Inductor
lays each product's weight out once for a C++ kernel of its own (AMX or AVX-512 micro-kernels) and
keeps it where it benchmarks faster than oneDNN's, while it builds the graph. oneDNN's call costs
~35 us before any arithmetic; a 12.6M GPT's step makes 25. The 6 x 384 GPT, one thread, compiled
both ways in one process (oneDNN's packed products as opaque calls, :mod:`.packing`, against frozen):
a bfloat16 step at 1 / 4 / 16 rows took 2.1 / 2.9 / 9.1 ms against 5.2 / 8.3 / 13.9, a 200-token
prompt 14.1 ms against 25.9; float32 on two threads, 1 row, 2.5 ms against 4.9. The frozen copies
and the kernels cost memory: 211 MiB more than the packed graphs' 86 for that GPT (24 MiB of weights).

The price is the compilation: a minute or more per graph on 2 cores (a server with SmolLM2's shape
took eight to ten minutes to start with its products laid out, three to four before, and about as
long again the next time, though Inductor keeps part of its work on disk). So the step is given one
shape of input only: every row's keys gathered (no view for consecutive slots) and a mask always
(none is needed when all rows have one length). Then one graph serves one row and one serves any
more (PyTorch specializes a size of 1), both built by :meth:`CompiledDecode.warm_up` before the
first request. Each graph holds its own copy of the weights, as they were when it was built: a
change to the model's parameters after :meth:`CompiledDecode.warm_up` is not seen.

A third graph takes one prompt of two tokens or more (:meth:`CompiledDecode.prefill`; a prompt of one
is a decode step): what a request that finds the server idle waits for before its first token. On
the same machine, SmolLM2-135M's shape in bfloat16 on two threads, a 6-token prompt's pass took
41.2 ms against 58.9 eager (medians of 10 rounds, alternating; 0.69-0.73x in every round).

Short prompts that arrive together, or join running streams, need no graph of their own: the engine
gives the decode graph each of their tokens as a row on its prompt's slot (``Engine._as_rows``).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace

import torch

from .model import CausalLM, DecodeStep, SlotCache
from .packing import PackedLinear

__all__ = ["CompiledDecode"]


def _one_shape(step: DecodeStep) -> DecodeStep:
    """The same step with its rows gathered and a mask: what the compiled graph takes, whatever the rows."""
    mask = step.mask
    if mask is None:
        mask = (torch.arange(step.span, device=step.positions.device)[None, None, :] <= step.positions[:, :, None])[
            :, None
        ]
    return replace(step, mask=mask, block=None)


# on a CPU the graph's weights are frozen into it as constants, which lets Inductor lay each product's
# weight out once for a C++ kernel of its own (AMX or AVX-512 micro-kernels), fused with what follows it,
# where it benchmarks faster than oneDNN's (``ATEN``) on that shape; silently: no autotuning tables.
# In force while the graphs are traced and built (torch.compile's ``options`` come too late for freezing,
# which decides how the model's weights are traced), not around each step, where a patch would cost time.
_CPU = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
        "autotune_num_choices_displayed": 0}  # fmt: skip


class CompiledDecode:
    """``CompiledDecode(model)(tokens, step)``: ``model(tokens, step)`` for decode steps (one new token
    per row), through ``torch.compile``; call :meth:`warm_up` first, or the first steps compile."""

    def __init__(self, model: CausalLM):
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise RuntimeError("compiling the decode step needs a C++ compiler (g++ or clang++), and none is on PATH")
        self.model = model
        on_cpu = next(model.parameters()).device.type == "cpu"
        # a model already packed for oneDNN (lm/packing.py) keeps its products as they are: opaque calls
        packed = any(isinstance(m, PackedLinear) for m in model.modules())
        self.frozen = on_cpu and not packed
        self.compiled = torch.compile(model, dynamic=True)

    def __call__(self, tokens: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        return self.compiled(tokens, _one_shape(step))

    def prefill(self, tokens: torch.Tensor, step: DecodeStep, select: torch.Tensor) -> torch.Tensor:
        """``model(tokens, step, select=select)`` for one row of prompt tokens (1 x T): through the
        decode graph when T is 1, else through the prompt graph (any T above 1, any start)."""
        if tokens.shape[0] != 1:
            raise ValueError(f"a compiled prompt pass takes one row, got {tuple(tokens.shape)}")
        if tokens.shape[1] == 1:
            return self(tokens, step)
        return self.compiled(tokens, _one_shape(step), select=select)

    @torch.inference_mode()
    def warm_up(self, cache: SlotCache, slots: int) -> None:
        """Build the graphs a server needs: one row, (if it has the slots) several, and a prompt. What
        these steps write lands in free slots, past anything a sequence will read before writing it."""
        with torch._inductor.config.patch(_CPU) if self.frozen else contextlib.nullcontext():
            self._build(cache, slots)

    def _build(self, cache: SlotCache, slots: int) -> None:
        device = cache.keys[0].device
        for kept in [*cache.keys, *cache.values]:  # fixed for the server's life: no size of theirs is a variable
            torch._dynamo.mark_static(kept)
        for rows in sorted({1, min(slots, 3)}):
            tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
            self(tokens, cache.decode(list(range(rows)), list(range(1, rows + 1))))
        prompt = torch.zeros(1, 3, dtype=torch.long, device=device)
        self.prefill(prompt, cache.decode([0], [1], tokens=3), torch.tensor([2], device=device))
