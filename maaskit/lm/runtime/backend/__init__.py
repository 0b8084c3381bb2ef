"""One place for speed on the machine a language model serves on.

A server hands this module a model and an :class:`EngineConfig`; it gets back an engine whose model
is prepared for the machine: in the dtype that runs fast there, its sibling products fused and
its large products packed for the CPU's kernels (:mod:`.packing`), its step compiled when asked
(:mod:`.compiled`), its key/value cache sized to the memory given and read by maaskit's own attention
kernel on a CPU (:mod:`.kernels`), and its prefix cache beside it.
The model files and the engine know none of this; the serving layer passes its settings and nothing
else.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ...models.attention import SlotCache
from ...models.base import CausalLM
from ..constrain import Guide
from ..engine import Engine
from ..prefix import PrefixCache
from .budget import FALLBACK, prefill_budget
from .kernels import attach
from .packing import can_pack, pack_for_cpu

__all__ = ["EngineConfig", "build_engine", "cache_slots", "serving_dtype"]


@dataclass(frozen=True)
class EngineConfig:
    """How a served language model runs (``maaskit serve``'s options of the same names)."""

    dtype: str = "auto"
    max_sequences: int = 16
    kv_cache_gb: float | None = None
    prefix_cache_gb: float = 0.0
    prefill_chunk: int | None = None  # None: measured on a CPU (budget.py), else budget.FALLBACK
    prefill_stall: float | None = None
    compile: bool = False


def serving_dtype(name: str, model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype a language model is served in: "auto" keeps the checkpoint's own, but on a CPU only
    where it runs fast: bfloat16 where oneDNN has bfloat16 products (lm/backend/packing.py; PyTorch's own are
    slower than its float32), float32 otherwise. A model trained in float32 is served exactly as trained."""
    if name == "auto":
        own = next(model.parameters()).dtype
        fast_on_cpu = own == torch.float32 or (own == torch.bfloat16 and can_pack(own))
        return own if device.type != "cpu" or fast_on_cpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def cache_slots(model: CausalLM, max_sequences: int, kv_cache_gb: float | None) -> int:
    """Sequences that run at once: ``max_sequences``, or fewer if ``kv_cache_gb`` holds fewer caches
    of the whole context (a request beyond them waits for a slot: admission, never out of memory)."""
    layers, heads, width = model.cache_shape()
    per_slot = 2 * layers * heads * width * model.context * next(model.parameters()).element_size()
    if kv_cache_gb is None:
        return max_sequences
    fits = int(kv_cache_gb * 2**30 // per_slot)
    if fits < 1:
        raise ValueError(
            f"one sequence's key/value cache takes {per_slot / 2**30:.3g} GB at a context of {model.context}; "
            f"--kv-cache-gb {kv_cache_gb:g} holds none: raise it or lower --context"
        )
    return min(fits, max_sequences)


def build_engine(model: CausalLM, device: torch.device, config: EngineConfig, *, guide: Guide | None = None,
                 thread_setup: Callable[[int], Callable[[], None]] | None = None,
                 owned: bool = True) -> Engine:  # fmt: skip
    """The engine serving ``model`` on ``device``. ``thread_setup(bytes a step reads)``: what the engine's
    thread runs first (its thread count); ``owned``: the model is the server's own copy, which may be
    rewritten for the CPU's kernels (a caller's model is served as it is)."""
    model = model.to(device=device, dtype=serving_dtype(config.dtype, model, device)).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # what a step reads
    slots = cache_slots(model, config.max_sequences, config.kv_cache_gb)
    cache = SlotCache.empty(model, slots)
    prefix = PrefixCache.sized(cache, int(config.prefix_cache_gb * 2**30))
    if owned and device.type == "cpu":
        pack_for_cpu(model, rows=slots)  # before the engine: its compiled pass calls the packed products
        _off_the_file(model)
    setup = thread_setup(weights) if thread_setup else None
    chunk = config.prefill_chunk
    if chunk is None:  # timed before the kernel's build below takes a core, with the engine's thread count
        chunk = _on_a_thread(setup, prefill_budget, model) if owned and device.type == "cpu" else FALLBACK
    attach(cache)  # in the background: PyTorch's attention serves until the kernel is built (seconds, once)
    engine = Engine(model, max_sequences=slots, thread_setup=setup,
                    guide=guide, prefill_chunk=chunk, prefill_stall=config.prefill_stall,
                    prefix_cache=prefix, cache=cache, compile=config.compile)  # fmt: skip
    return engine


def _on_a_thread(setup: Callable[[], None] | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread of its own that ran ``setup`` first (PyTorch's thread count is per thread)."""
    with ThreadPoolExecutor(1, "maaskit-lm-measure", initializer=setup) as pool:
        return pool.submit(fn, *args).result()


def _off_the_file(model: torch.nn.Module) -> None:
    """Every tensor the model still reads (embeddings, norms) copied out of the checkpoint's memory-mapped
    file, which is then unmapped: while one tensor read it, the whole file stayed resident beside the
    packed copies of its products (202 of a 53M model's 1,842 MB; benchmarks/lm_memory.py)."""
    copies: dict[tuple, torch.Tensor] = {}  # a tensor read in two places (a tied head's weight) copied once
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            key = (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype)
            if key not in copies:
                copies[key] = tensor.data.clone()
            tensor.data = copies[key]
