"""A decode step's attention, kernel against kernel, side by side in one process: one new query per
row against each row's cached keys and values, for every layer of a model of real shape (SmolLM2-135M's
by default: 30 layers of 9 query heads sharing 3 key/value heads of 64), one thread, each kind in turn
round by round, medians.

- ``SDPA``: ``F.scaled_dot_product_attention`` with ``enable_gqa`` (PyTorch's CPU flash attention);
- ``grouped``: the textbook formula as two batched products per layer, each key/value head's group
  of query heads at once;
- ``maaskit``: :func:`maaskit.lm.models.attention.decode_attention`, what a decode step runs without the
  kernel below (SDPA with each key/value head's query heads as its queries; in bfloat16 on a CPU, on
  float32 copies);
- ``kernel``: maaskit's C++ kernel (:mod:`maaskit.lm.runtime.backend.kernels`; float32), what a server's
  step runs on a CPU once it is built, given each row's slot and positions instead of a view;

each in float32 and bfloat16, the keys read from a slot cache as the engine reads them (a view of the
first rows, positions up to the span). Printed: milliseconds per step, and each kind's ratio to SDPA in
float32.

With ``--layouts``: the cache's layout instead, ``maaskit``'s kernel in float32 on each: the slot cache
(one row of the whole context per sequence) read as a view (rows in consecutive slots, as the engine
takes the lowest free ones) and gathered (rows in scattered slots); and a paged cache (vLLM's: blocks of
``--block`` positions anywhere in one pool, a block table per row), its blocks gathered into rows each
layer, as PyTorch without a kernel of its own must.

    python benchmarks/attention_kernels.py [--rounds 15] [--rows 1,4,16] [--spans 100,500] [--layers 30 ...]
                                           [--threads 1]
    python benchmarks/attention_kernels.py --layouts [--block 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from maaskit.lm.models.attention import decode_attention
from maaskit.lm.runtime.backend import kernels


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Queries B x heads x T x width against keys and values B x kv heads x span x width; ``mask``
    True where allowed, B x 1 x T x span."""
    b, heads, t, width = q.shape
    kv = keys.shape[1]
    group = heads // kv
    scores = torch.matmul((q * width**-0.5).reshape(b, kv, group * t, width), keys.transpose(-1, -2))
    scores = scores.view(b, kv, group, t, -1).masked_fill(~mask.unsqueeze(-3), float("-inf"))
    weights = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights.view(b, kv, group * t, -1), values).view(b, heads, t, width)


def _kernel(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            where: tuple[torch.Tensor, ...]) -> torch.Tensor:  # fmt: skip
    """maaskit's kernel on a layer's whole cache, each row at its slot and positions (``where``)."""
    return kernels.decode_attention(q[:, :, 0], keys, values, *where)


def paged(blocks: torch.Tensor, table: torch.Tensor, span: int) -> torch.Tensor:
    """Rows x kv heads x span x width gathered from ``blocks`` (pool x kv heads x block x width) by each
    row's ``table`` of block numbers."""
    rows, size = table.shape[0], blocks.shape[2]
    used = -(-span // size)
    gathered = blocks[table[:, :used]]  # rows x used x kv heads x block x width
    return gathered.transpose(1, 2).reshape(rows, blocks.shape[1], used * size, -1)[:, :, :span]


def _readers(rows: int, span: int, scattered: torch.Tensor, table: torch.Tensor, block: int) -> dict:
    """Each layout's read of a layer's keys and values (slot cache ``k``, ``v``; paged pools ``pk``, ``pv``)."""
    return {
        "slot cache, consecutive rows (a view)": lambda k, v, pk, pv: (k[:rows, :, :span], v[:rows, :, :span]),
        "slot cache, scattered rows (gathered)": lambda k, v, pk, pv: (k[scattered, :, :span], v[scattered, :, :span]),
        f"paged, blocks of {block} (gathered)": lambda k, v, pk, pv: (paged(pk, table, span), paged(pv, table, span)),
    }


def layouts(a: argparse.Namespace) -> None:
    """The slot cache read as a view, gathered, and a paged cache gathered: maaskit's kernel on each."""
    shape = (a.slots, a.kv_heads, a.context, a.head_dim)
    per_slot = a.context // a.block
    for rows in (int(r) for r in a.rows.split(",")):
        for span in (int(s) for s in a.spans.split(",")):
            scattered = torch.randperm(a.slots)[:rows]
            table = torch.randperm(a.slots * per_slot).view(a.slots, per_slot)[:rows]
            layers = []
            for _ in range(a.layers):
                k, v = torch.randn(shape), torch.randn(shape)
                pool = (k.view(a.slots, a.kv_heads, per_slot, a.block, a.head_dim).transpose(1, 2)
                        .reshape(-1, a.kv_heads, a.block, a.head_dim))  # fmt: skip
                layers.append((k, v, pool, pool.clone()))
            q = torch.randn(rows, a.heads, 1, a.head_dim)
            kinds = _readers(rows, span, scattered, table, a.block)
            table_ms: dict[str, list[float]] = {name: [] for name in kinds}
            with torch.inference_mode():
                for _ in range(a.rounds + 1):  # the first round warms up
                    for name, read in kinds.items():
                        start = time.perf_counter()
                        for layer in layers:
                            decode_attention(q, *read(*layer), None)
                        table_ms[name].append((time.perf_counter() - start) * 1e3)
            base = statistics.median(table_ms[next(iter(kinds))][1:])
            print(f"\n{rows} row(s), {span} positions, float32: ms per step (every layer), median of {a.rounds} rounds")
            for name, times in table_ms.items():
                ms = statistics.median(times[1:])
                print(f"  {name:<40} {ms:8.2f} ms   x{ms / base:5.2f} the view's time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--rows", default="1,4,16")
    p.add_argument("--spans", default="100,500")
    p.add_argument("--layouts", action="store_true", help="the cache's layouts instead of the kernels")
    p.add_argument("--block", type=int, default=16, help="positions per block of the paged cache")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.layouts:
        layouts(a)
        return
    kernels.load()
    print(f"torch {torch.__version__}, {a.threads} thread(s); {a.layers} layers of {a.heads} query heads, {a.kv_heads} "
          f"key/value heads of {a.head_dim}")  # fmt: skip
    kinds = {
        "SDPA": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
        "grouped": grouped_attention,
        "maaskit": decode_attention,
    }
    for rows in (int(r) for r in a.rows.split(",")):
        for span in (int(s) for s in a.spans.split(",")):
            steps = {}
            for dtype in (torch.float32, torch.bfloat16):
                shape = (a.slots, a.kv_heads, a.context, a.head_dim)
                caches = [(torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)) for _ in range(a.layers)]
                q = torch.randn(rows, a.heads, 1, a.head_dim, dtype=dtype)
                mask = torch.ones(rows, 1, 1, span, dtype=torch.bool)
                for kind, f in kinds.items():
                    steps[f"{kind} {str(dtype)[6:]}"] = (f, q, [(k[:rows, :, :span], v[:rows, :, :span])
                                                                for k, v in caches], mask)  # fmt: skip
                if dtype == torch.float32:  # the kernel reads the whole cache, each row at its slot's positions
                    where = torch.arange(rows), torch.zeros(rows, dtype=torch.long), torch.full((rows,), span)
                    kernel = partial(_kernel, where=where)
                    steps["kernel float32"] = (kernel, q, caches, mask)
            table: dict[str, list[float]] = {name: [] for name in steps}
            with torch.inference_mode():
                for _ in range(a.rounds + 1):  # the first round warms up
                    for name, (f, q, layers, mask) in steps.items():
                        start = time.perf_counter()
                        for k, v in layers:
                            f(q, k, v, mask)
                        table[name].append((time.perf_counter() - start) * 1e3)
            base = statistics.median(table["SDPA float32"][1:])
            print(f"\n{rows} row(s), {span} positions: ms per step (every layer), median of {a.rounds} rounds")
            for name, times in table.items():
                ms = statistics.median(times[1:])
                print(f"  {name:<33} {ms:8.2f} ms   x{base / ms:5.2f} against SDPA float32")


if __name__ == "__main__":
    main()
