"""How many prompt tokens a step computes (vLLM's ``max_num_batched_tokens``), measured on the machine.

A step's products run faster per row the more rows they have, up to a point; past it, more prompt
tokens in one step buy no speed, and the first prompts of a burst wait for the later ones: four
512-token prompts in one step all get their first token when the fourth does. So the budget is the
fewest rows at which the model's layer products run within :data:`TOLERANCE` of their best time per
row, of :data:`CANDIDATES`, timed once when the engine is built (about a second for a 53M model on two
cores). On this kit's 2-core machine that is 256 for a Qwen2-style 53M model: against the fixed
2,048 (vLLM's CPU default), time to first token p50 at 16 streams of 128-token prompts fell from 1,550
to 650 ms, of 512-token prompts from 3,800 to 1,318 ms; tokens/s 260 against 236 and 90 against 97
(benchmarks/FIGURES.md, "prefill budget").
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter

import torch
from torch import nn

from .packing import PackedLinear

__all__ = ["CANDIDATES", "FALLBACK", "TOLERANCE", "fewest_within", "layer_products", "prefill_budget"]

CANDIDATES = (64, 128, 256, 512, 1024, 2048)
TOLERANCE = 1.1  # time per row at most this many times the best
FALLBACK = 2048  # where nothing is measured (no packed products: a GPU, a small model): vLLM's CPU default
_log = logging.getLogger(__name__)


def fewest_within(per_row: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The fewest rows whose time per row is within ``tolerance`` of the best."""
    best = min(per_row.values())
    return min(rows for rows, seconds in per_row.items() if seconds <= tolerance * best)


def layer_products(model: nn.Module) -> list[PackedLinear]:
    """One packed product of each shape the model's layers repeat: what a prompt token costs. A shape
    found once (the head, which a step computes for each sequence's last token only) is left out, unless
    no shape repeats (a one-layer model)."""
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    counts = Counter((p.in_features, p.out_features) for p in packed)
    repeated = {shape for shape, n in counts.items() if n > 1} or set(counts)
    one: dict[tuple[int, int], PackedLinear] = {}
    for p in packed:
        if (p.in_features, p.out_features) in repeated:
            one.setdefault((p.in_features, p.out_features), p)
    return list(one.values())


def prefill_budget(model: nn.Module, rounds: int = 5) -> int:
    """Prompt tokens per step for ``model`` (its products packed, :func:`.packing.pack_for_cpu`), timed on this
    thread (with its thread count: the engine's); :data:`FALLBACK` where it has no packed products."""
    products = layer_products(model)
    if not products:
        return FALLBACK
    started = time.perf_counter()
    times: dict[int, list[float]] = {rows: [] for rows in CANDIDATES}
    with torch.inference_mode():
        inputs = {rows: [torch.randn(rows, p.in_features, dtype=p.dtype) for p in products] for rows in CANDIDATES}
        for p, x in zip(products, inputs[CANDIDATES[0]]):  # warm-up: oneDNN's first call of a shape
            p.onednn(x)
        for _ in range(rounds):  # interleaved: a slow moment of the machine touches every candidate alike
            for rows, xs in inputs.items():
                repeats = max(1, CANDIDATES[-1] // 4 // rows)  # a few hundred rows at least: a long enough time
                start = time.perf_counter()
                for _ in range(repeats):
                    for p, x in zip(products, xs):
                        p.onednn(x)
                times[rows].append((time.perf_counter() - start) / (rows * repeats))
    per_row = {rows: statistics.median(t) for rows, t in times.items()}
    budget = fewest_within(per_row)
    timed = ", ".join(f"{rows}: {s * 1e6:.0f} us" for rows, s in per_row.items())
    _log.info("prefill budget: %d prompt tokens a step (layer products per row: %s; measured in %.1f s)",
              budget, timed, time.perf_counter() - started)  # fmt: skip
    return budget
