"""One engine step in process, eager against compiled, on the machine at hand: what
``lm/runtime/backend/compiled.py`` buys, and what building its graphs costs, first and from
Inductor's on-disk cache.

A model of ``--model``'s shape (random weights, built from a config: nothing is downloaded) is packed
for the CPU as a server packs it (:mod:`maaskit.lm.runtime.backend.packing`), then its forward pass is
compiled (:class:`~maaskit.lm.runtime.backend.compiled.CompiledForward`) in two fresh processes, the
second reading the first's graphs from a cache folder of its own. Each process times a step of 1, 4
and 16 decoding rows and of one 128-token prompt chunk, eager and compiled taking turns: medians of
``--rounds`` rounds, each the mean of 5 steps. The second also times, in the same turns, the decoding
rows of the same model compiled without its weights in column blocks: every product through oneDNN's
call, as before maaskit's row kernel (``row_products.cpp``) ran products of a few rows.

    python benchmarks/compiled_step.py [--model qwen2-53m] [--dtype float32] [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import BUILD_MODEL, SHAPES  # noqa: E402

CHILD = (
    r"""
import json, resource, statistics, sys, time
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from maaskit.lm.models.attention import SlotCache
from maaskit.lm.runtime.backend.compiled import CompiledForward
from maaskit.lm.runtime.backend import kernels
from maaskit.lm.runtime.backend.packing import PackedLinear, pack_for_cpu

kernels.load()  # as a server's cache does, in the background (lm/runtime/backend/__init__.py)


def build(blocks):  # a model as a server packs it; without its weights in column blocks, if not ``blocks``
"""
    + textwrap.indent(BUILD_MODEL, "    ")
    + r"""
    for layer in model.modules():
        if isinstance(layer, PackedLinear) and not blocks:
            layer.blocked = None
    return model

model = build(True)
compiled = CompiledForward(model)
start = time.perf_counter()
compiled.warm_up(16)
built = time.perf_counter() - start
cache = SlotCache.empty(model, 16)
eager = lambda tokens, batch, select: model(tokens, batch, select=select)
cells = {"1 row": (1, 0), "4 rows": (4, 0), "16 rows": (16, 0), "128-token chunk": (0, 128)}
times = {(side, cell): [] for side in ("eager", "compiled") for cell in cells}
forwards = {"eager": eager, "compiled": compiled}
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before a second model, if any
if spec["onednn_only"]:  # the same model, every product through oneDNN's call
    forwards["oneDNN only"] = CompiledForward(build(False))
    forwards["oneDNN only"].warm_up(16)
    times.update({("oneDNN only", cell): [] for cell in ("1 row", "4 rows", "16 rows")})

def step(forward, rows, chunk):
    batch = cache.batch([(s, 200) for s in range(rows)], [(15, 0, chunk)] if chunk else [])
    return forward(torch.randint(0, model.vocab_size, (1, batch.tokens)), batch, torch.tensor(batch.last))

with torch.inference_mode():
    for _ in range(spec["rounds"]):
        for (side, cell) in times:
            forward = forwards[side]
            step(forward, *cells[cell])
            start = time.perf_counter()
            for _ in range(5):
                step(forward, *cells[cell])
            times[(side, cell)].append((time.perf_counter() - start) / 5 * 1000)
print(json.dumps({"built_s": built, "cached_graphs": compiled.cached_graphs,
                  "peak_rss_mb": peak_rss,
                  "ms": {f"{side}|{cell}": statistics.median(v) for (side, cell), v in times.items()}}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2-53m", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    family, config = SHAPES[args.model]
    spec = {"family": family, "config": config, "dtype": args.dtype, "threads": args.threads, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="maaskit-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for start in ("first start", "second start"):
            spec["onednn_only"] = start == "second start"  # its graphs mostly from the cache
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True,
                                  text=True, check=False)  # fmt: skip
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{start}: graphs built in {result['built_s']:.1f} s ({result['cached_graphs']} of 3 from the "
                  f"cache), peak RSS {result['peak_rss_mb']:,.0f} MB")  # fmt: skip
            for cell in ("1 row", "4 rows", "16 rows", "128-token chunk"):
                e, c = result["ms"][f"eager|{cell}"], result["ms"][f"compiled|{cell}"]
                print(f"  {cell:<16} eager {e:7.2f} ms   compiled {c:7.2f} ms   {e / c:.2f}x")
        # the second start's
        print("compiled, every product through oneDNN's call against maaskit's row kernel at a few rows:")
        for cell in ("1 row", "4 rows", "16 rows"):
            o, c = result["ms"][f"oneDNN only|{cell}"], result["ms"][f"compiled|{cell}"]
            print(f"  {cell:<16} oneDNN {o:7.2f} ms   row kernel {c:7.2f} ms   {o / c:.2f}x")


if __name__ == "__main__":
    main()
