"""Continuous batching: a scheduler that decides each step, and a model runner that runs it.

A sequence waits, is given a slot of a :class:`~maaskit.lm.models.attention.SlotCache`, and joins the
running batch. Each step the scheduler plans what runs (a :class:`~maaskit.lm.runtime.runner.StepPlan`):
every running sequence decodes one token, and prompts being prefilled advance by a chunk, within a
budget of ``prefill_chunk`` prompt tokens per step (vLLM's ``max_num_batched_tokens``; with
``prefill_stall`` the budget is sized by time so that a step takes at most ``1 + prefill_stall``
decode steps: :mod:`~maaskit.lm.runtime.pace`). The :class:`~maaskit.lm.runtime.runner.ModelRunner` runs all those
tokens as one flat batch in one forward pass, whatever the mix, and samples each sequence's token
with its own settings and random generator. A sequence leaves the batch the step it finishes, or the
step after its reader goes away, and its slot goes to the next in line. With ``max_sequences=1``
sequences run one after another (no batching), for comparison. With a
:class:`~maaskit.lm.runtime.prefix.PrefixCache`, a prompt that begins as an earlier one did (a system prompt,
a tool list) takes those blocks' keys and values instead of computing them again.

The forward passes run in one thread of their own, so the event loop keeps streaming tokens to
clients meanwhile. Readers are async generators: when a client disconnects, Starlette cancels
the generator, its ``finally`` marks the sequence cancelled, and the scheduler drops it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.attention import SlotCache
from ..models.base import CausalLM
from .constrain import Guide
from .generation import check_sampling
from .pace import PrefillPace
from .prefix import PrefixCache
from .runner import ModelRunner, StepPlan

__all__ = ["ContextTooLong", "Engine", "Interrupted", "SamplingParams", "StepRecord", "TokenEvent"]


_log = logging.getLogger(__name__)


def _report_compile(done: Future) -> None:
    if done.cancelled() or done.exception() is None:
        return
    _log.warning("compiling the forward pass failed, serving with the eager one: %s", done.exception())


class ContextTooLong(ValueError):
    """The prompt and the tokens asked for do not fit the model's context (``param``: the field to shorten)."""

    param = "max_tokens"


class Interrupted(RuntimeError):
    """Generation was ended from outside (a server stopping after its drain): the reason is the message."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated (OpenAI's request fields of the same names)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # with a number: the chosen token's log-probability and that many alternatives
    stop_tokens: tuple[int, ...] = ()
    grammar: str | None = None  # constrained decoding (maaskit.lm.runtime.constrain): only tokens that keep to it
    min_tokens: int = 0  # vLLM's: the stop tokens are masked until this many tokens are generated
    ignore_eos: bool = False  # vLLM's: a stop token does not end the sequence (fixed-length benchmarks)


@dataclass
class TokenEvent:
    """One step of one sequence: a token (None when it ended on a stop token) and, on its last
    event, why it ended ("stop" or "length")."""

    token: int | None
    finish_reason: str | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class StepRecord:
    """What one step of the engine did, for watchers (:attr:`Engine.watchers`: metrics, EngineScope).
    Sequences are named by number, in the order they were submitted."""

    step: int
    seconds: float  # the step's time on the engine's thread
    decodes: tuple[int, ...]  # sequences that decoded a token
    chunks: tuple[tuple[int, int], ...]  # (sequence, prompt tokens computed) of each prompt chunk
    finished: tuple[int, ...]  # sequences that left the batch after it
    waiting: int  # sequences waiting for a slot
    cache_tokens: int  # positions of the key/value cache in use, all slots together
    cache_capacity: int  # positions it holds (slots x context)
    prefix_hits: int  # prompt tokens taken from the prefix cache by sequences this step admitted

    @property
    def prompt_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


@dataclass(eq=False)
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    queue: asyncio.Queue
    submitted: float
    slot: int = -1
    filled: int = -1  # prompt tokens in the slot's cache (-1: prefix cache not yet looked up)
    last: int = -1
    generated: int = 0
    cancelled: bool = False
    finished: bool = False
    last_token_at: float | None = None
    matcher: Any = None  # the grammar's state, when constrained
    unread: int | None = None  # the token chosen last, not yet fed to the matcher (the next step's mask job does)
    number: int = 0  # in submission order (StepRecord)

    @property
    def cached(self) -> int:
        """Its positions in the cache while it decodes: the prompt and every token but the newest, which
        the next step feeds."""
        return len(self.prompt) + self.generated - 1


class Engine:
    """``async for event in engine.generate(prompt_ids, params)``: tokens as they are sampled.

    ``max_sequences``: sequences in the running batch (slots of the cache); more wait their turn.
    ``listeners`` are told ``("first_token", seconds since submitted)``, ``("token", seconds since
    the sequence's last token)``, ``("step", tokens it produced)`` (once its finished sequences left),
    ``("prompt", tokens of a prompt taking a slot)`` and ``("dropped", sequences whose readers left)``
    (for metrics).
    ``guide`` (a :class:`~maaskit.lm.runtime.constrain.Guide` for the model's tokenizer) lets sequences be
    constrained to a grammar, each row with its own mask. ``prefill_chunk``: prompt tokens per step
    at most (None: whole prompts); ``prefill_stall``: beside running sequences, chunks sized to cost
    at most that many decode steps (None: always ``prefill_chunk``); ``prefix_cache``: shared prompt
    prefixes reused; ``cache``: the slots' keys and values (made for ``max_sequences`` if not given);
    ``compile``: the forward pass through ``torch.compile`` (:mod:`.backend.compiled`; pack the model for the CPU,
    :mod:`.backend.packing`, before the engine is made), built in a thread of its own while the engine serves with
    the eager pass, which the compiled one replaces once it is built (a minute or more on a CPU, seconds from
    Inductor's on-disk cache; ``engine.compiling``, a Future, is done then)."""

    def __init__(self, model: CausalLM, *, max_sequences: int, thread_setup: Callable[[], None] | None = None,
                 guide: Guide | None = None, prefill_chunk: int | None = None, prefill_stall: float | None = None,
                 prefix_cache: PrefixCache | None = None, cache: SlotCache | None = None,
                 compile: bool = False):  # fmt: skip
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be at least 1, got {max_sequences}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1 token, got {prefill_chunk}")
        self.prefill_chunk, self.prefix_cache = prefill_chunk, prefix_cache
        self.pace = PrefillPace(prefill_stall) if prefill_stall is not None else None
        self.model = model.eval()
        self.context, self.max_sequences = model.context, max_sequences
        self.guide = guide
        self.cache = cache if cache is not None else SlotCache.empty(model, max_sequences)
        if self.cache.slots < max_sequences:
            raise ValueError(f"the cache has {self.cache.slots} slots, fewer than max_sequences")
        self._executor = ThreadPoolExecutor(1, "maaskit-lm", initializer=thread_setup)
        self.runner = ModelRunner(self.model, self.cache, model.vocab_size, guide=guide)
        self.compiling: Future | None = None
        if compile:
            self.compiling = self._compile(thread_setup)
        self._waiting: deque[_Sequence] = deque()
        self._readers: set[_Sequence] = set()  # every sequence someone reads: waiting, joining or running
        self._running: list[_Sequence] = []  # decoding: one token per step each
        self._prefilling: list[_Sequence] = []  # holding a slot, their prompts partly in the cache
        self._free = list(range(max_sequences))  # a heap: heappop() takes the lowest free slot
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._seeds = itertools.count()
        self.listeners: list[Callable[[str, float], None]] = []
        self.watchers: list[Callable[[StepRecord], None]] = []  # told what each step did, after it
        self._numbers = itertools.count(1)
        self.steps = 0
        self.tokens_generated = 0
        self.abandoned = 0  # sequences dropped because their reader left before they finished

    def _compile(self, thread_setup: Callable[[], None] | None) -> Future:
        """Build the compiled forward pass in a thread of its own (with the engine thread's settings: a graph
        is guarded by the thread count it was built with); the runner takes it between two steps. It runs
        on the model's own weights, traced from a copy of its modules (:mod:`.backend.compiled`)."""
        from .backend.compiled import CompiledForward

        try:
            compiled = CompiledForward(self.model)  # refuses at once without a C++ compiler
        except (RuntimeError, ValueError) as err:
            refused: Future = Future()
            refused.set_exception(err)
            _report_compile(refused)
            return refused
        builder = ThreadPoolExecutor(1, "maaskit-lm-compile", initializer=thread_setup)

        def build() -> None:
            compiled.warm_up(self.max_sequences)
            self.runner.forward = compiled

        done = builder.submit(build)
        builder.shutdown(wait=False)
        done.add_done_callback(_report_compile)
        return done

    @property
    def running(self) -> int:
        """Sequences in the batch: decoding, or with a prompt being prefilled."""
        return len(self._running) + len(self._prefilling)

    @property
    def slots_in_use(self) -> int:
        """Slots of the cache held by a sequence (freed when it finishes, is dropped, or is interrupted)."""
        return self.max_sequences - len(self._free)

    @property
    def waiting(self) -> int:
        return sum(not s.cancelled for s in self._waiting)

    def check(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """A ValueError with the reason if this request cannot be served (:class:`ContextTooLong` when
        the prompt and ``max_tokens`` do not fit the context)."""
        check_sampling(params.temperature, params.top_k, params.top_p, params.max_tokens)
        if not prompt:
            raise ValueError("the prompt must have at least one token")
        if not 0 <= params.min_tokens <= params.max_tokens:
            raise ValueError(
                f"min_tokens must be between 0 and max_tokens ({params.max_tokens}), got {params.min_tokens}"
            )
        if len(prompt) + params.max_tokens > self.context:
            raise ContextTooLong(
                f"this model's context is {self.context} tokens; the prompt has {len(prompt)} and max_tokens "
                f"asks for {params.max_tokens} more ({len(prompt) + params.max_tokens}): shorten one of them"
            )
        if params.logprobs is not None and not 0 <= params.logprobs <= 20:
            raise ValueError(f"logprobs must be between 0 and 20, got {params.logprobs}")
        if params.grammar is not None:
            if self.guide is None:
                raise ValueError("this engine has no guide for constrained decoding (Engine(..., guide=Guide(...)))")
            self.guide.check(params.grammar)  # UnsupportedGrammar (a ValueError) says why

    async def generate(self, prompt: Sequence[int], params: SamplingParams) -> AsyncGenerator[TokenEvent, None]:
        self.check(prompt, params)
        seed = params.seed if params.seed is not None else int(torch.randint(2**31, ())) + next(self._seeds)
        seq = _Sequence(list(prompt), params, torch.Generator().manual_seed(seed), asyncio.Queue(), time.perf_counter())
        seq.number = next(self._numbers)
        if params.grammar is not None and self.guide is not None:
            seq.matcher = self.guide.matcher(params.grammar)
        self._start()
        assert self._wake is not None
        self._waiting.append(seq)
        self._readers.add(seq)
        self._wake.set()
        try:
            while True:
                event = await seq.queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.finish_reason is not None:
                    return
        finally:  # also on a client's disconnect (the generator is cancelled): the scheduler drops it
            self._readers.discard(seq)
            if not seq.finished:
                seq.cancelled = True
                self._wake.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the engine's own thread, where its steps run (with its thread count and its
        compiled graphs' guards), once the step in progress is done; for inspecting the engine."""
        return self._executor.submit(fn).result()

    def interrupt(self, reason: str) -> None:
        """End every sequence now, running or waiting: each reader hears :class:`Interrupted` (``reason``)."""
        for seq in list(self._readers):  # joining ones too: they are in neither list during their first step
            if not seq.finished and not seq.cancelled:
                seq.queue.put_nowait(Interrupted(reason))
                seq.cancelled = True  # the scheduler frees its slot
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        self.interrupt("the model was unloaded")  # no reader is left waiting for a token that never comes
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.runner.close()

    # --- the scheduler ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._schedule(), name="maaskit-lm-engine")

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            self._drop_cancelled()
            if not self._running and not self._prefilling and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._round()
            except Exception as err:  # the model (or this code) failed: every sequence hears of it, none hangs
                for seq in [*self._running, *self._prefilling, *self._waiting]:
                    seq.queue.put_nowait(RuntimeError(f"generation failed: {err}"))
                    self._leave(seq)
                self._waiting.clear()
                self._tell("step", 0)  # the counts changed: listeners see none left

    async def _round(self) -> None:
        """Let waiting sequences take free slots, run one step, hand out its tokens."""
        left = 0
        while self._waiting and self.running < self.max_sequences:
            seq = self._waiting.popleft()
            if seq.cancelled:  # its reader left while it waited
                left += 1
                continue
            seq.slot = heapq.heappop(self._free)
            self._prefilling.append(seq)
            self._tell("prompt", len(seq.prompt))
        if left:
            self.abandoned += left
            self._tell("dropped", left)
        loop = asyncio.get_running_loop()
        # rows in slot order, the lowest slots taken first: the running rows are then often one block of
        # the cache, which each layer reads as a view instead of gathering it (SlotCache.decode)
        running = sorted(self._running, key=lambda s: s.slot)
        # one step per hand-off: running steps back to back in the thread (tokens passed to the loop with
        # call_soon_threadsafe) was slower, as Inductor's kernels hold the GIL and the loop's streaming waited
        # on each step (benchmarks/lm_serving.py; figures: benchmarks/FIGURES.md, "one step per hand-off")
        # sequences without their first token: the pace's share for prompts (a count over the queue: paced only)
        waiting = len(self._prefilling) + self.waiting if self.pace is not None else 0
        plan, seconds, events = await loop.run_in_executor(self._executor, self._step, list(self._prefilling), running,
                                                           waiting)  # fmt: skip
        self.steps += 1
        now = time.perf_counter()
        for seq, event in events:
            if seq in self._prefilling:  # its prompt is in: it decodes from the next step
                self._prefilling.remove(seq)
                self._running.append(seq)
            if seq.last_token_at is None:
                self._tell("first_token", now - seq.submitted)
            else:
                self._tell("token", now - seq.last_token_at)
            seq.last_token_at = now
            self.tokens_generated += event.token is not None
            seq.queue.put_nowait(event)
            if event.finish_reason is not None:
                seq.finished = True
                self._leave(seq)
        # after the finished ones left: a listener reading the engine's counts (the /metrics gauges) sees
        # them as they are now, not one step stale, which after a last step would stay so while idle
        self._tell("step", sum(e.token is not None for _, e in events))
        if self.watchers:
            self._record(plan, seconds, [s for s, e in events if e.finish_reason is not None])
        # the readers of these tokens (their server-sent events) run now, before the next step is handed
        # over: run during it, their Python held the GIL that the step's thread takes back after each of its
        # operations (benchmarks/lm_serving.py; figures: benchmarks/FIGURES.md, "the readers' yield")
        await asyncio.sleep(0)

    def _drop_cancelled(self) -> None:
        before = self.abandoned
        for seq in [s for s in [*self._running, *self._prefilling] if s.cancelled]:
            self.abandoned += 1
            self._leave(seq)
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft()
            self.abandoned += 1
        if self.abandoned > before:
            self._tell("dropped", self.abandoned - before)

    def _leave(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
        if seq in self._prefilling:
            self._prefilling.remove(seq)
        if seq.slot >= 0:
            heapq.heappush(self._free, seq.slot)
            seq.slot = -1

    def _tell(self, kind: str, value: float) -> None:
        for listener in self.listeners:
            listener(kind, value)

    def _plan(self, prefilling: list[_Sequence], running: list[_Sequence]) -> StepPlan[_Sequence]:
        """This step: every running sequence decodes a token, and the prefilling ones advance by
        ``prefill_chunk`` prompt tokens in all (fewer beside running sequences, when paced), first come
        first served. A sequence new to its slot first takes what the prefix cache holds of its prompt."""
        budget = self.prefill_chunk or self.context * len(prefilling)
        if running and self.pace is not None:
            budget = self.pace.chunk(budget, len(running))
        plan = StepPlan[_Sequence](decodes=running)
        for seq in prefilling:
            if seq.filled < 0:
                seq.filled = (
                    0 if self.prefix_cache is None else self.prefix_cache.reuse(seq.prompt, self.cache, seq.slot)
                )
                plan.reused += seq.filled
            n = min(len(seq.prompt) - seq.filled, budget)
            if n <= 0:
                break
            plan.chunks.append((seq, n))
            budget -= n
        return plan

    @property
    def cache_tokens(self) -> int:
        """Positions of the key/value cache that hold a sequence's tokens now."""
        return sum(s.cached for s in self._running) + sum(s.filled for s in self._prefilling if s.filled > 0)

    def _record(self, plan: StepPlan[_Sequence], seconds: float, finished: list[_Sequence]) -> None:
        record = StepRecord(
            self.steps, seconds, tuple(s.number for s in plan.decodes),
            tuple((s.number, n) for s, n in plan.chunks), tuple(s.number for s in finished), self.waiting,
            self.cache_tokens, self.max_sequences * self.context, plan.reused,
        )  # fmt: skip
        for watcher in self.watchers:
            watcher(record)

    def _step(self, prefilling: list[_Sequence], running: list[_Sequence], waiting: int
              ) -> tuple[StepPlan[_Sequence], float, list[tuple[_Sequence, TokenEvent]]]:  # fmt: skip
        """On the engine's thread: plan the step, run it, and turn its tokens into events (``waiting``:
        sequences without their first token, for the pace). A prompt now all in its slot is offered to
        the prefix cache. Returns the plan, the step's seconds and the events."""
        start = time.perf_counter()
        plan = self._plan(prefilling, running)
        sampled, tokens, logits = self.runner.run(plan)
        seconds = time.perf_counter() - start
        if self.pace is not None:
            self.pace.record(seconds, len(running), plan.prompt_tokens, waiting)
        if self.prefix_cache is not None:
            for seq, _ in plan.chunks:
                if seq.filled == len(seq.prompt):
                    self.prefix_cache.keep(seq.prompt, self.cache, seq.slot)
        logprobs = logits.log_softmax(-1) if any(s.params.logprobs is not None for s in sampled) else None
        return (
            plan,
            seconds,
            [
                (s, self._event(s, t, logprobs[i] if logprobs is not None else None))
                for i, (s, t) in enumerate(zip(sampled, tokens))
            ],
        )

    def _event(self, seq: _Sequence, token: int, logprobs: torch.Tensor | None) -> TokenEvent:
        p = seq.params
        event = TokenEvent(token)
        if p.logprobs is not None and logprobs is not None:
            event.logprob = float(logprobs[token])
            if p.logprobs:
                top = logprobs.topk(p.logprobs)
                event.top_logprobs = [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
        if token in p.stop_tokens and not p.ignore_eos:
            return TokenEvent(None, "stop")
        seq.last = token
        seq.generated += 1
        if seq.generated >= p.max_tokens or len(seq.prompt) + seq.generated >= self.context:
            event.finish_reason = "length"
        return event
