"""The decode step's matrix products, kernel against kernel, side by side in one process: the
linear layers of a model of real shape (SmolLM2-135M's by default: 30 layers and a 49,152-token
head) at 1, 2, 4 and 16 rows, one thread (``--threads``), each kind in turn round by round, medians.

- ``F.linear``: PyTorch's product on the weight as stored (row-major: it repacks it every call);
- ``column-major``: the same on the weight stored transposed (what maaskit did before packing);
- ``packed``: oneDNN's product on a weight packed once (:class:`maaskit.lm.runtime.backend.packing.PackedLinear`),
  fewer rows than ``MIN_ROWS`` padded to that many;
- ``packed, unpadded``: the same product on the rows as they are (what sets ``MIN_ROWS``);
- ``row kernel``: maaskit's own product of a few rows (``row_products.cpp``) on the weight laid out in
  column blocks (``packing.lay_out``), float32 only: what a server runs at up to ``ROW_PRODUCT_ROWS`` rows;

each in float32 and bfloat16 (where the kind has it). Printed: milliseconds per step (all layers and the head), and each
kind's ratio to ``F.linear`` in float32.

    python benchmarks/linear_kernels.py [--rounds 15] [--rows 1,2,4,16] [--threads 1] [--hidden 576 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from maaskit.lm.runtime.backend import kernels
from maaskit.lm.runtime.backend.packing import PackedLinear, can_pack


def shapes(a: argparse.Namespace) -> list[tuple[int, int, int]]:
    """(in, out, how many) for a Llama-family model's linear layers and its head."""
    kv = a.kv_heads * a.hidden // a.heads
    # q and o; k and v; gate and up; down
    per_layer = [(a.hidden, a.hidden, 2), (a.hidden, kv, 2)]
    per_layer += [(a.hidden, a.intermediate, 2), (a.intermediate, a.hidden, 1)]
    return [(i, o, n * a.layers) for i, o, n in per_layer] + [(a.hidden, a.vocab, 1)]


def kinds(weights: list[torch.Tensor], dtype: torch.dtype, rows: int) -> dict[str, list[nn.Module]]:
    """Every layer of the model (each its own weight, so a step streams them from memory as a
    real one does) in each kind of layer."""
    found: dict[str, list[nn.Module]] = {"F.linear": [], "column-major": []}
    for weight in weights:
        row_major = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(dtype)
        row_major.weight.data = weight.to(dtype)
        column = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(dtype)
        column.weight.data = row_major.weight.data.t().contiguous().t()
        found["F.linear"].append(row_major)
        found["column-major"].append(column)
        if can_pack(dtype):
            packed = PackedLinear(row_major, rows)
            found.setdefault("packed", []).append(OneDNN(packed))
            found.setdefault("packed, unpadded", []).append(Unpadded(packed))
            if packed.blocked is not None and kernels.loaded():
                found.setdefault("row kernel", []).append(packed)  # its product at a few rows
    return found


class OneDNN(nn.Module):
    """A :class:`PackedLinear`'s oneDNN product (padded to its ``min_rows``), at any number of rows."""

    def __init__(self, packed: PackedLinear):
        super().__init__()
        self.packed, self.in_features = packed, packed.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed.onednn(x)


class Unpadded(nn.Module):
    """A :class:`PackedLinear`'s product without its padding (no bias: the benchmark's layers have none)."""

    def __init__(self, packed: PackedLinear):
        super().__init__()
        self.packed, self.in_features = packed, packed.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed.packed, None, "none", [], "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--rows", default="1,2,4,16")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    try:
        kernels.load()
    except RuntimeError as err:  # no C++ compiler: the other kinds still run
        print(f"no row kernel: {err}")
    print(f"torch {torch.__version__}, {a.threads} thread(s); oneDNN packing: float32 {can_pack(torch.float32)}, "
          f"bfloat16 {can_pack(torch.bfloat16)}; row kernel {kernels.loaded()}")  # fmt: skip
    weights = [torch.randn(o, i) * 0.02 for i, o, n in shapes(a) for _ in range(n)]
    for rows in (int(r) for r in a.rows.split(",")):
        steps = {}
        for dtype in (torch.float32, torch.bfloat16):
            x = {width: torch.randn(rows, width).to(dtype) for width in {w.shape[1] for w in weights}}
            for kind, modules in kinds(weights, dtype, rows).items():
                steps[f"{kind} {str(dtype)[6:]}"] = [(m, x[m.in_features]) for m in modules]
        table: dict[str, list[float]] = {name: [] for name in steps}
        with torch.inference_mode():
            for _ in range(a.rounds + 1):  # the first round warms up
                for name, step in steps.items():  # every kind in turn within a round
                    start = time.perf_counter()
                    for module, x_in in step:
                        module(x_in)
                    table[name].append((time.perf_counter() - start) * 1e3)
        base = statistics.median(table["F.linear float32"][1:])
        print(f"\n{rows} row(s): ms per step (every linear layer and the head), median of {a.rounds} rounds")
        for name, times in table.items():
            ms = statistics.median(times[1:])
            print(f"  {name:<33} {ms:8.2f} ms   x{base / ms:5.2f} against F.linear float32")
        del steps


if __name__ == "__main__":
    main()
