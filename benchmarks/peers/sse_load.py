"""A load generator for streamed completions, run as a process of its own (not the server's):
``concurrency`` streams at a time until ``streams`` have finished, each parsed as raw server-sent
events. Prints one JSON object: per-stream time to first token, gaps between tokens, tokens (as
the server's usage counts them, when it sends it) and the wall time.

    python sse_load.py URL MODEL STREAMS CONCURRENCY MAX_TOKENS [--exact] [--rate R] [--prefix FILE]
                       [--prompts FILE] [--first K]

``--exact``: every stream generates exactly MAX_TOKENS (``ignore_eos`` and ``min_tokens``, as
``vllm bench serve`` sends). ``--rate R``: requests start as a Poisson process of R per second
(still at most CONCURRENCY at once) instead of back to back. ``--prefix FILE``: each prompt begins
with this text (a shared system prompt). ``--prompts FILE``: a JSON list of prompts, stream ``i`` sends
the ``(K + i)``-th (modulo their number), instead of "Example i:"; ``--first K`` (default 0) lets loads
run one after another send prompts no server has seen, so that no prefix cache answers them.
"""

import argparse
import asyncio
import json
import random
import time

import httpx


async def main(args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    results, next_index = [], iter(range(args.streams))
    prefix = open(args.prefix).read() if args.prefix else ""  # noqa: SIM115 (read once)
    prompts = json.load(open(args.prompts)) if args.prompts else [f"Example {i}:" for i in range(50)]  # noqa: SIM115
    arrivals = random.Random(0)
    start = time.perf_counter()
    due = [0.0]  # when the next request may start (Poisson arrivals)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=600) as http:

        async def worker() -> None:
            for i in next_index:
                if args.rate:
                    due[0] += arrivals.expovariate(args.rate)
                    await asyncio.sleep(max(0.0, start + due[0] - time.perf_counter()))
                # no per-request seed: vLLM 0.32's CPU build fails a step ("CPU Generator does not use offset")
                # where a seeded request's prompt is split over steps, and every request in it fails
                body = {"model": args.model, "prompt": prefix + prompts[(args.first + i) % len(prompts)],
                        "max_tokens": args.max_tokens, "temperature": 1.0, "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip
                if args.exact:
                    body |= {"ignore_eos": True, "min_tokens": args.max_tokens}
                sent, times, done, usage = time.perf_counter(), [], False, None
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            chunk = json.loads(line[6:])
                            if chunk.get("usage"):
                                usage = chunk["usage"]["completion_tokens"]
                            if any(c.get("text") for c in chunk.get("choices", ())):
                                times.append(time.perf_counter() - sent)
                results.append({"status": r.status_code, "done": done, "times": times, "usage": usage,
                                "end": time.perf_counter() - sent})  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "errors": sum(r["status"] != 200 or not r["done"] for r in results),
        "ttft_s": [r["times"][0] for r in results if r["times"]],
        "itl_s": [b - a for r in results for a, b in zip(r["times"], r["times"][1:])],
        # time per output token: each request's (last - first) / (tokens - 1)
        "tpot_s": [
            (r["end"] - r["times"][0]) / max(1, (r["usage"] or len(r["times"])) - 1) for r in results if r["times"]
        ],  # fmt: skip
        "e2e_s": [r["end"] for r in results],
        "tokens": sum(r["usage"] if r["usage"] is not None else len(r["times"]) for r in results),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("streams", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("max_tokens", type=int)
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--prefix")
    parser.add_argument("--prompts")
    parser.add_argument("--first", type=int, default=0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
