"""An evaluation harness that is a client of the service: it sends a task's held-out requests to any
OpenAI-compatible endpoint (maaskit's, vLLM, a hosted API) with the official ``openai`` client,
concurrently, runs the tools the model calls, and grades every answer exactly.

    report = evaluate_endpoint("http://127.0.0.1:8000/v1", "none", "assistant", "assistant", n=300)
    print(report)

What it reports: exact-match accuracy with a 95% Wilson interval (overall and per kind), how many
structured answers parsed and fitted their schema, how many tool calls were valid (an offered tool,
arguments its schema accepts) and correct (running them gives the expected result), tokens in and
out, and latency percentiles per request. ``constrained=False`` sends no ``response_format`` (and
asks nothing of the server's grammar support), to measure what a model does on its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from .tasks import AssistantTask, Example, get_task

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["EvalReport", "evaluate_endpoint", "wilson"]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``hits``/``n`` (sound near 0% and 100%, where
    the normal approximation gives intervals past the ends)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Graded:
    """One held-out request, as the endpoint answered it."""

    example: Example
    correct: bool = False
    schema_valid: bool | None = None  # structured answers only
    call_valid: bool | None = None  # tool requests only
    call_correct: bool | None = None
    reply: str | None = None
    error: str | None = None
    seconds: list[float] = field(default_factory=list)  # each request's latency
    tokens_in: int = 0
    tokens_out: int = 0


def _rate(flags: list[bool | None]) -> tuple[int, int]:
    seen = [f for f in flags if f is not None]
    return sum(seen), len(seen)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class EvalReport:
    """What :func:`evaluate_endpoint` measured; ``str()`` is the table ``maaskit lm eval`` prints."""

    model: str
    url: str
    constrained: bool
    graded: list[Graded]
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(g.correct for g in self.graded) / max(len(self.graded), 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(sum(g.correct for g in self.graded), len(self.graded))

    @property
    def schema_valid(self) -> tuple[int, int]:
        return _rate([g.schema_valid for g in self.graded])

    @property
    def calls_valid(self) -> tuple[int, int]:
        return _rate([g.call_valid for g in self.graded])

    @property
    def calls_correct(self) -> tuple[int, int]:
        return _rate([g.call_correct for g in self.graded])

    @property
    def latencies(self) -> list[float]:
        return [s for g in self.graded for s in g.seconds]

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval
        lat = self.latencies
        by_kind = {}
        for kind in sorted({g.example.kind for g in self.graded}):
            mine = [g for g in self.graded if g.example.kind == kind]
            by_kind[kind] = {"n": len(mine), "accuracy": sum(g.correct for g in mine) / len(mine)}
        return {
            "model": self.model,
            "url": self.url,
            "constrained": self.constrained,
            "n": len(self.graded),
            "accuracy": self.accuracy,
            "interval": [low, high],
            "by_kind": by_kind,
            "schema_valid": list(self.schema_valid),
            "calls_valid": list(self.calls_valid),
            "calls_correct": list(self.calls_correct),
            "requests": len(lat),
            "errors": sum(g.error is not None for g in self.graded),
            "tokens_in": sum(g.tokens_in for g in self.graded),
            "tokens_out": sum(g.tokens_out for g in self.graded),
            "latency_ms": {f"p{q}": _pct(lat, q / 100) * 1000 for q in (50, 90, 99)},
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        low, high = d["interval"]
        lines = [
            f"{self.model} at {self.url}: {d['n']} held-out requests "
            f"({'constrained' if self.constrained else 'no response_format'}), {d['seconds']:.1f} s",
            f"  exact match      {d['accuracy']:7.1%}   95% interval {low:.1%} to {high:.1%}",
        ]
        lines += [f"    {kind:<14} {v['accuracy']:7.1%}   of {v['n']}" for kind, v in d["by_kind"].items()]
        for label, (hits, n) in (
            ("schema-valid", d["schema_valid"]),
            ("tool call valid", d["calls_valid"]),
            ("tool call right", d["calls_correct"]),
        ):
            if n:
                lines.append(f"  {label:<16} {hits / n:7.1%}   ({hits} of {n})")
        lat = d["latency_ms"]
        lines.append(
            f"  tokens           {d['tokens_in']:,} in, {d['tokens_out']:,} out over {d['requests']} requests"
            f" ({d['errors']} errors)"
        )
        lines.append(f"  latency          p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms")
        return "\n".join(lines)


async def _ask(client: Any, model: str, graded: Graded, max_tokens: int, **extra: Any) -> Any:
    start = time.perf_counter()
    answer = await client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, **extra)
    graded.seconds.append(time.perf_counter() - start)
    if answer.usage is not None:
        graded.tokens_in += answer.usage.prompt_tokens
        graded.tokens_out += answer.usage.completion_tokens
    return answer.choices[0]


async def _grade(
    client: Any, model: str, task: AssistantTask, example: Example, constrained: bool, max_tokens: int
) -> Graded:
    graded = Graded(example)
    messages: list[dict] = [{"role": "user", "content": example.question}]
    try:
        if example.kind == "book" or not example.tools:  # a structured answer
            fmt = {"type": "json_schema", "json_schema": {"name": "booking", "schema": example.schema, "strict": True}}
            choice = await _ask(
                client,
                model,
                graded,
                max_tokens,
                messages=messages,
                **({"response_format": fmt} if constrained else {}),
            )
            graded.reply = choice.message.content
            graded.schema_valid = _fits(graded.reply, example.schema)
        else:  # a tool call, its result sent back, then the final answer
            choice = await _ask(client, model, graded, max_tokens, messages=messages, tools=example.tools)
            calls = choice.message.tool_calls or []
            if not calls:
                graded.call_valid = graded.call_correct = False
                graded.reply = choice.message.content
            else:
                call = calls[0]
                graded.call_valid, graded.call_correct = task.check_call(
                    example, call.function.name, call.function.arguments
                )
                result = (
                    task.run_tool(call.function.name, json.loads(call.function.arguments))
                    if graded.call_valid
                    else "error: the call was not valid"
                )
                messages += [
                    {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                    {"role": "tool", "tool_call_id": call.id, "content": result},
                ]
                choice = await _ask(client, model, graded, max_tokens, messages=messages, tools=example.tools)
                graded.reply = choice.message.content
        graded.correct = task.check_answer(example, graded.reply)
    except Exception as err:  # one failed request is graded wrong and counted, not the end of the run
        graded.error = f"{type(err).__name__}: {err}"
    return graded


def _fits(reply: str | None, schema: dict | None) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(reply or ""), schema or {})
        return True
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False


async def evaluate_async(
    base_url: str,
    api_key: str,
    model: str,
    task: str | AssistantTask = "assistant",
    *,
    n: int = 300,
    concurrency: int = 8,
    constrained: bool = True,
    seed: int = 0,
    max_tokens: int = 96,
    kinds: Sequence[str] | None = None,
    progress: bool = False,
) -> EvalReport:
    """:func:`evaluate_endpoint`, awaitable (in a notebook, ``await evaluate_async(...)``)."""
    from openai import AsyncOpenAI

    the_task = get_task(task) if isinstance(task, str) else task
    examples = the_task.examples("test", n, seed)
    if kinds is not None:
        unknown = set(kinds) - set(the_task.kinds)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; the task has {', '.join(the_task.kinds)}")
        examples = [e for e in examples if e.kind in kinds]
    url = base_url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    client = AsyncOpenAI(base_url=url, api_key=api_key or "none", max_retries=2, timeout=120)
    limit = asyncio.Semaphore(concurrency)
    bar = _progress(len(examples)) if progress else None

    async def one(example: Example) -> Graded:
        async with limit:
            graded = await _grade(client, model, the_task, example, constrained, max_tokens)
        if bar is not None:
            bar.update(1)
        return graded

    start = time.perf_counter()
    try:
        graded = await asyncio.gather(*(one(e) for e in examples))
    finally:
        await client.close()
        if bar is not None:
            bar.close()
    return EvalReport(model, url, constrained, list(graded), time.perf_counter() - start)


def _blocking(run: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``run``, blocking: from a running event loop (a notebook cell) in a thread of its own."""

    @functools.wraps(run)  # help() and inspect show run's keywords
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run(*args, **kwargs))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:  # Jupyter's loop is running: a loop of our own, in a thread
            return pool.submit(asyncio.run, run(*args, **kwargs)).result()

    return call


evaluate_endpoint = _blocking(evaluate_async)
evaluate_endpoint.__name__ = evaluate_endpoint.__qualname__ = "evaluate_endpoint"
evaluate_endpoint.__doc__ = """Run ``n`` held-out requests of ``task`` against ``model`` at ``base_url``
    (``.../v1``), with ``concurrency`` in flight, and grade them (see the module's docstring); ``kinds`` keeps only the
    requests of those kinds among the ``n``. Blocks; from a running event loop (a notebook cell) it
    runs in a thread of its own."""


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit="request")
