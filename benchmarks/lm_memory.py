"""Where a served language model's resident memory goes: the resident set (anonymous and file-backed)
after each stage of what ``maaskit serve`` does, in one fresh process, and the largest mappings at the
end (libraries by file name; anonymous memory as one line).

The stages: Python; ``import torch``; importing maaskit's server; loading the weights (memory-mapped
safetensors); building the engine (weights packed for oneDNN, the slot cache); the compiled forward
pass (from Inductor's on-disk cache when it is there); 16 requests of long prompts; 64 more, which
fill the prefix cache. A model of ``--model``'s shape with random weights is written to a temporary
Hugging Face folder first (nothing is downloaded).

    python benchmarks/lm_memory.py [--model qwen2-53m] [--no-compile] [--prompt 500]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def resident(label: str, last: list[float]) -> None:
    """One line: the resident set now, anonymous and file-backed, and what this stage added."""
    status = Path("/proc/self/status").read_text()

    def mb(key: str) -> float:
        found = re.search(rf"{key}:\s+(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else 0.0

    now = mb("VmRSS")
    print(f"{label:<52} {now:7.0f} MB  (anonymous {mb('RssAnon'):6.0f}, files {mb('RssFile'):5.0f})  "
          f"{now - last[0]:+7.0f}", flush=True)  # fmt: skip
    last[0] = now


def mappings(top: int) -> None:
    """The largest resident mappings of this process: files by name, anonymous memory together."""
    by: collections.Counter[str] = collections.Counter()
    name = "[anonymous]"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$", line)
        if head:
            path = head.group(1).strip()
            name = path.rsplit("/", 1)[-1] if path.startswith("/") else "[anonymous]"
        elif line.startswith("Rss:"):
            by[name] += int(line.split()[1])
    print("\nlargest mappings at the end:")
    for key, kb in by.most_common(top):
        print(f"  {kb / 1024:8.1f} MB  {key}")


def child(folder: Path, compile: bool, prompt_tokens: int) -> None:
    """The stages, in this (fresh) process."""
    last = [0.0]
    resident("Python", last)
    import torch

    resident("import torch", last)
    import maaskit.serving.app  # noqa: F401 (what `maaskit serve` imports)
    from maaskit.lm.formats.artifact import load_language_model
    from maaskit.lm.runtime.backend import build_engine
    from maaskit.lm.runtime.engine import SamplingParams
    from maaskit.serving.config import ServeConfig
    from maaskit.serving.dataplane import loading_thread_setup

    resident("import maaskit's server", last)
    loading_thread_setup()
    model, _, _ = load_language_model(folder, context=1024)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    resident(f"load the weights ({weights / 2**20:.0f} MB, memory-mapped)", last)
    config = ServeConfig(max_sequences=16, compile=compile).engine()
    engine = build_engine(model, torch.device("cpu"), config, thread_setup=lambda _: lambda: torch.set_num_threads(2))
    cache = 2 * sum(k.numel() * k.element_size() for k in engine.cache.keys)
    resident(f"build the engine (slot cache {cache / 2**20:.0f} MB; weights packed)", last)
    if engine.compiling is not None:
        engine.compiling.result()
        resident("compile the forward pass", last)
    vocab = model.vocab_size

    async def requests(n: int, first: int) -> None:
        async def one(i: int) -> None:
            prompt = [(7919 * (first + i) + 31 * t) % (vocab - 3) + 3 for t in range(prompt_tokens)]  # all different
            async for _ in engine.generate(prompt, SamplingParams(max_tokens=16, temperature=0)):
                pass

        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(requests(16, 0))
    resident(f"16 requests of {prompt_tokens}-token prompts", last)
    asyncio.run(requests(64, 16))
    held = len(engine.prefix_cache) if engine.prefix_cache is not None else 0
    limit = config.prefix_cache_gb * 1024
    resident(f"64 more ({held} prefix-cache blocks; at most {limit:.0f} MB)", last)
    peak = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    print(f"peak resident set: {int(peak.group(1)) / 1024 if peak else float('nan'):.0f} MB")
    mappings(12)
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2-53m", help="qwen2-53m, smollm2-135m or tiny-llama")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--prompt", type=int, default=500, help="prompt tokens of each request")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, not args.no_compile, args.prompt)
        return
    sys.path.insert(0, str(HERE))
    from open_models import LLAMA_SHAPES, named_folder

    if args.model not in LLAMA_SHAPES:
        parser.error(f"--model is one of {', '.join(LLAMA_SHAPES)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = named_folder(Path(tmp), args.model)
        command = [sys.executable, __file__, "--child", str(folder), "--prompt", str(args.prompt)]
        subprocess.run(command + ["--no-compile"] * args.no_compile, check=True)


if __name__ == "__main__":
    main()
