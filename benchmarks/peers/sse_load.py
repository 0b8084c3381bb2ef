"""A load generator for streamed completions, run as a process of its own (not the server's):
``concurrency`` streams at a time until ``streams`` have finished, each parsed as raw server-sent
events. Prints one JSON object: per-stream time to first token, gaps between tokens, tokens and
the wall time.

    python sse_load.py URL MODEL STREAMS CONCURRENCY MAX_TOKENS
"""

import asyncio
import json
import sys
import time

import httpx


async def main(url: str, model: str, streams: int, concurrency: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results, next_index = [], iter(range(streams))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:

        async def worker() -> None:
            for i in next_index:
                body = {"model": model, "prompt": f"Example {i % 50}:", "max_tokens": max_tokens,
                        "temperature": 1.0, "seed": i, "stream": True}  # fmt: skip
                start, times, done = time.perf_counter(), [], False
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: ") and '"text":""' not in line:
                            times.append(time.perf_counter() - start)
                results.append({"status": r.status_code, "done": done, "times": times})

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "errors": sum(r["status"] != 200 or not r["done"] for r in results),
        "ttft_s": [r["times"][0] for r in results if r["times"]],
        "itl_s": [b - a for r in results for a, b in zip(r["times"], r["times"][1:])],
        "tokens": sum(len(r["times"]) for r in results),
    }


if __name__ == "__main__":
    url, model, streams, concurrency, max_tokens = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(url, model, int(streams), int(concurrency), int(max_tokens)))))
