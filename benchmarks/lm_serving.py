"""Language-model serving, side by side in one run: maaskit's OpenAI-compatible server with
continuous batching on (16 sequences share each decode step) and off (one at a time), serving the
same small GPT.

Each server runs in its own process on 127.0.0.1; the load comes from a process of its own
(``peers/sse_load.py``: streamed completions read as raw server-sent events), against one server at
a time, taking turns round by round. For concurrency 1, 4, 8 and 16: time to first token p50/p99,
inter-token latency p50/p99 and the tokens/s of all streams together, medians of ``--rounds``
rounds. The floor is the engine alone, in process: tokens/s of one sequence and of 16. Then the
cost of constrained decoding (``response_format`` JSON): the engine's decode step with every sequence
held to a JSON grammar, against the same step free, at batch 1 and 16, rounds interleaved.

    python benchmarks/lm_serving.py [--model DIR] [--streams 48] [--max-tokens 64] [--rounds 3] [--baseline DIR]

``--baseline DIR``: also serve with the maaskit of another checkout (``git worktree add DIR <commit>``),
"baseline", batching on, taking turns with the others. The model is then trained by that checkout
(with no ``--model``), so that both servers serve the same weights, and generate the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, start, stop  # noqa: E402

PEERS = Path(__file__).resolve().parent / "peers"
CONCURRENCY = (1, 4, 8, 16)


def engine_floor(model_dir: Path, max_tokens: int) -> dict[int, float]:
    """Tokens/s of the engine alone (no HTTP), one sequence and 16 together."""
    import torch

    from maaskit.lm import load_language_model
    from maaskit.lm.runtime.engine import Engine, SamplingParams

    torch.set_num_threads(1)
    model, _, _ = load_language_model(model_dir)

    async def run(n: int) -> float:
        engine = Engine(model, max_sequences=16)

        async def one(i: int) -> int:
            params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i)
            return len([e async for e in engine.generate([i + 1, 2, 3], params)])

        await one(0)
        start_s = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(n))))
        engine.close()
        return tokens / (time.perf_counter() - start_s)

    return {n: statistics.median(asyncio.run(run(n)) for _ in range(3)) for n in (1, 16)}


def constrained_step_cost(model_dir: Path, max_tokens: int, rounds: int) -> dict[int, dict[str, float]]:
    """Milliseconds per decode step with every sequence free and with every sequence held to a JSON
    object's grammar (masks computed and applied each step), batch 1 and 16; medians of ``rounds``."""
    import torch

    from maaskit.lm import load_language_model
    from maaskit.lm.runtime.constrain import Guide, json_grammar
    from maaskit.lm.runtime.engine import Engine, SamplingParams

    torch.set_num_threads(1)
    model, tokenizer, manifest = load_language_model(model_dir)
    guide = Guide(tokenizer, model.vocab_size, manifest["tokenizer"]["end_of_text"])
    grammar = json_grammar()  # any JSON object: keys and values run on, so no sequence ends early

    async def run(n: int, constrained: bool) -> float:
        engine = Engine(model, max_sequences=16, guide=guide)
        prompt = tokenizer.encode("{").ids

        async def one(i: int) -> None:
            params = SamplingParams(
                max_tokens=max_tokens, temperature=1.0, seed=i, grammar=grammar if constrained else None
            )
            async for _ in engine.generate(prompt, params):
                pass

        await one(0)
        steps, start_s = engine.steps, time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start_s
        engine.close()
        return elapsed / (engine.steps - steps) * 1000

    out: dict[int, dict[str, float]] = {}
    for n in (1, 16):
        free, held = [], []
        for _ in range(rounds):
            free.append(asyncio.run(run(n, False)))
            held.append(asyncio.run(run(n, True)))
        out[n] = {"free_ms": statistics.median(free), "constrained_ms": statistics.median(held)}
    return out


def baseline_command(checkout: Path, *args: str) -> list[str]:
    """``python -m maaskit ARGS`` importing the maaskit of ``checkout``: run from there (GNU env -C), since
    ``python -m`` puts the working directory first on the path."""
    where = str(checkout.resolve())
    return ["env", "-C", where, f"PYTHONPATH={where}", sys.executable, "-m", "maaskit", *args]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load(url: str, streams: int, concurrency: int, max_tokens: int) -> dict:
    command = [sys.executable, str(PEERS / "sse_load.py"), url, "gpt", str(streams), str(concurrency), str(max_tokens)]
    raw = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout)
    return {
        "ttft_p50_ms": 1000 * percentile(raw["ttft_s"], 0.5),
        "ttft_p99_ms": 1000 * percentile(raw["ttft_s"], 0.99),
        "itl_p50_ms": 1000 * percentile(raw["itl_s"], 0.5),
        "itl_p99_ms": 1000 * percentile(raw["itl_s"], 0.99),
        "tokens_per_s": raw["tokens"] / raw["wall_s"],
        "errors": raw["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a directory from `maaskit lm train` (default: train one, ~30 s)")
    parser.add_argument("--streams", type=int, default=48, help="streams per measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs when no --model is given")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier maaskit to serve beside this one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="maaskit-lm-bench-") as tmp:
        folder = Path(tmp)
        model_dir = args.model
        if model_dir is None and args.baseline is not None:  # an older maaskit's artifact: both load it
            model_dir = folder / "gpt"
            train = baseline_command(args.baseline, "lm", "train", "--out", str(model_dir), "--device", "cpu")
            subprocess.run([*train, "--epochs", str(args.epochs)], check=True, capture_output=True, timeout=1800)
        elif model_dir is None:
            from maaskit.lm import LMRecipe, train_language_model

            model_dir = folder / "gpt"
            train_language_model(recipe=LMRecipe(epochs=args.epochs), out=model_dir, device="cpu")
        floor = engine_floor(model_dir, args.max_tokens)
        print(f"engine alone (no HTTP): {floor[1]:,.0f} tokens/s one sequence, {floor[16]:,.0f} with 16", flush=True)
        steps = constrained_step_cost(model_dir, args.max_tokens, max(args.rounds, 9))
        serve = [sys.executable, "-m", "maaskit", "serve", str(model_dir), "--port", "{port}", "--device", "cpu"]
        commands = {"batching on": serve, "batching off": [*serve, "--max-sequences", "1"]}
        if args.baseline is not None:
            commands["baseline"] = baseline_command(
                args.baseline, "serve", str(model_dir), "--port", "{port}", "--device", "cpu"
            )
        ports = {name: free_port() for name in commands}
        processes = {name: start(cmd, ports[name], folder / f"{name}.log") for name, cmd in commands.items()}
        rounds: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in commands}
        try:
            for name in commands:  # warm-up
                load(f"http://127.0.0.1:{ports[name]}", 8, 4, 8)
            for r in range(args.rounds):
                for c in CONCURRENCY:
                    for name in commands:
                        # fewer streams one at a time: the serial server would take minutes otherwise
                        streams = max(c * 2, args.streams // (4 if c == 1 else 1))
                        cell = load(f"http://127.0.0.1:{ports[name]}", streams, c, args.max_tokens)
                        rounds[name][c].append(cell)
                        print(
                            f"  round {r + 1} {name:<12} c={c:<3} TTFT p50 {cell['ttft_p50_ms']:6.1f} ms "
                            f"p99 {cell['ttft_p99_ms']:6.1f} ms  ITL p50 {cell['itl_p50_ms']:5.2f} ms "
                            f"p99 {cell['itl_p99_ms']:5.2f} ms  {cell['tokens_per_s']:7,.0f} tokens/s",
                            flush=True,
                        )
        finally:
            for process in processes.values():
                stop(process)

    results = {
        name: {c: {k: statistics.median(cell[k] for cell in cells) for k in cells[0]} for c, cells in by_c.items()}
        for name, by_c in rounds.items()
    }
    print(
        "\n| server | "
        + " | ".join(f"c={c}: TTFT p50 / p99 ms, ITL p50 / p99 ms, tokens/s" for c in CONCURRENCY)
        + " |"
    )
    print("|---|" + "---|" * len(CONCURRENCY))
    for name, by_c in results.items():
        cells = [
            f"{m['ttft_p50_ms']:.1f} / {m['ttft_p99_ms']:.1f}, {m['itl_p50_ms']:.2f} / {m['itl_p99_ms']:.2f}, "
            f"{m['tokens_per_s']:,.0f}"
            for m in by_c.values()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    on, off = results["batching on"], results["batching off"]
    if "baseline" in results:
        for c in CONCURRENCY:
            base = results["baseline"][c]
            print(
                f"c={c}: this / baseline {on[c]['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s, "
                f"TTFT p50 {on[c]['ttft_p50_ms']:.1f} vs {base['ttft_p50_ms']:.1f} ms"
            )
    print(f"\nengine alone: {floor[1]:,.0f} tokens/s (1 sequence), {floor[16]:,.0f} (16): {floor[16] / floor[1]:.1f}x")
    for c in CONCURRENCY:
        print(
            f"c={c}: batching on / off {on[c]['tokens_per_s'] / off[c]['tokens_per_s']:.2f}x tokens/s; "
            f"on, vs one stream: {on[c]['tokens_per_s'] / on[1]['tokens_per_s']:.2f}x"
        )
    for n, cost in steps.items():
        print(
            f"decode step at batch {n}: {cost['constrained_ms']:.3f} ms held to a JSON grammar, "
            f"{cost['free_ms']:.3f} ms free: {cost['constrained_ms'] / cost['free_ms']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"floor": floor, "results": results, "constrained_steps": steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
