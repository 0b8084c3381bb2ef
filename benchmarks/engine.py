"""The engine alone, in process, against the engine of another checkout: tokens/s and time to first token.

What the serving benchmarks measure through HTTP, without it: the scheduler, the model runner and the
model, as a server builds them (weights packed for the CPU, the server's thread count), on model shapes
built from a config with random weights (no download): a 6 x 384 GPT, SmolLM2-135M's shape and a
~53M Qwen2-style shape (QKV bias, grouped-query attention, an untied head). For each prompt length and
concurrency: ``concurrency`` streams at once, each ``--max-tokens`` tokens (``ignore_eos``), prompts of
random tokens, a new prompt per stream. Each side runs in a process of its own, taking turns round by
round; medians of ``--rounds`` rounds, and the ratio this / baseline.

    python benchmarks/engine.py --baseline DIR [--models qwen2-53m] [--dtypes float32] [--prompts 4,128,512]
                                [--concurrency 1,4,16] [--rounds 5] [--max-tokens 32] [--threads 2]

``--baseline DIR``: a checkout of an earlier maaskit (``git worktree add DIR <commit>``); without it,
this checkout alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "gpt-6x384": ("gpt", {"vocab_size": 4096, "context": 1024, "layers": 6, "heads": 6, "width": 384}),
    "qwen2-53m": ("llama", {"vocab_size": 16384, "hidden_size": 512, "intermediate_size": 1536,
                            "num_hidden_layers": 12, "num_attention_heads": 8, "num_key_value_heads": 2,
                            "head_dim": 64, "context": 1024, "attention_bias": True, "model_type": "qwen2"}),
    "smollm2-135m": ("llama", {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                               "head_dim": 64, "context": 1024, "tie_word_embeddings": True}),
    # the smallest shape whose products are packed (the smoke form in the tests)
    "tiny-llama": ("llama", {"vocab_size": 512, "hidden_size": 512, "intermediate_size": 1024,
                             "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
                             "head_dim": 64, "context": 256}),
}  # fmt: skip

# in a child process: `model`, of the shape `spec` names, random weights, packed as a server packs it
BUILD_MODEL = r"""
torch.manual_seed(0)
if spec["family"] == "gpt":
    from maaskit.lm import GPT, GPTConfig
    model = GPT(GPTConfig(**spec["config"]))
else:
    from maaskit.lm import Llama, LlamaConfig
    model = Llama(LlamaConfig(**spec["config"]))
model = model.to(getattr(torch, spec["dtype"])).eval()
pack_for_cpu(model, rows=16, **spec.get("pack", {}))
"""

# run in a child process with the checkout's maaskit first on the path: one JSON line of results
CHILD = (
    r"""
import asyncio, json, statistics, sys, time
import torch
spec = json.loads(sys.argv[1])
from maaskit.lm import Engine
try:  # the lm subpackages
    from maaskit.lm.runtime.backend.packing import pack_for_cpu
    from maaskit.lm.runtime.engine import SamplingParams
except ImportError:  # a baseline checkout from before them (lm's modules side by side)
    from maaskit.lm.backend.packing import pack_for_cpu
    from maaskit.lm.engine import SamplingParams
torch.set_num_threads(1)  # as a server's main thread: only the engine's thread runs parallel regions
"""
    + BUILD_MODEL
    + r"""
threads = spec["threads"]
engine = Engine(model, max_sequences=16, thread_setup=lambda: torch.set_num_threads(threads),
                prefill_chunk=512, prefill_stall=0.5)
vocab = model.vocab_size
gen = torch.Generator().manual_seed(1)

async def cell(prompt_len, streams):
    prompts = [torch.randint(3, vocab, (prompt_len,), generator=gen).tolist() for _ in range(streams)]
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0, ignore_eos=True)
    firsts = []
    async def one(p):
        start = time.perf_counter()
        n = 0
        async for e in engine.generate(p, params):
            if n == 0:
                firsts.append(time.perf_counter() - start)
            n += e.token is not None
        return n
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    return tokens / (time.perf_counter() - start), statistics.median(firsts) * 1000

async def main():
    await cell(8, 2)  # warm
    out = {}
    for p in spec["prompts"]:
        for c in spec["concurrency"]:
            out[f"{p}/{c}"] = await cell(p, c)
    return out

print(json.dumps(asyncio.run(main())))
engine.close()
"""
)


def run_side(checkout: Path, spec: dict) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                          cwd=checkout)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier maaskit")
    parser.add_argument("--models", default="qwen2-53m")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--prompts", default="4,128,512")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sides = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    print(f"torch threads {args.threads}, {args.max_tokens} tokens per stream, medians of {args.rounds} rounds")
    for name in args.models.split(","):
        family, config = SHAPES[name]
        for dtype in args.dtypes.split(","):
            spec = {"family": family, "config": config, "dtype": dtype, "threads": args.threads,
                    "max_tokens": args.max_tokens, "prompts": [int(p) for p in args.prompts.split(",")],
                    "concurrency": [int(c) for c in args.concurrency.split(",")]}  # fmt: skip
            rounds: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.rounds):  # interleaved: each round runs every side once
                for side, checkout in sides.items():
                    rounds[side].append(run_side(checkout, spec))
            print(f"\n{name} {dtype}: tokens/s (TTFT p50 ms)")
            print(
                f"{'prompt/streams':>15}"
                + "".join(f"{side:>22}" for side in sides)
                + ("   this/baseline" if len(sides) > 1 else "")
            )
            for cell in rounds["this"][0]:
                med = {side: [statistics.median(r[cell][i] for r in rounds[side]) for i in (0, 1)] for side in sides}
                line = f"{cell:>15}" + "".join(f"{med[s][0]:>13.1f} ({med[s][1]:>6.0f})" for s in sides)
                if len(sides) > 1:
                    line += f"{med['this'][0] / med['baseline'][0]:>15.2f}x"
                print(line, flush=True)


if __name__ == "__main__":
    main()
