"""Adaptive dynamic batching: requests that arrive while the model is busy share its next pass.

A GPU (and, less so, a CPU) does a batch of 32 images in about the time of one. Waiting a fixed
few milliseconds for company costs every lone request that wait, so the batcher does not wait:
a request that finds the model idle runs at once; requests that arrive while a forward pass is
running queue up, and the next pass takes all of them (up to ``max_batch_size`` images).
``max_delay_ms`` is an optional extra wait for company, off by default.

The queue is bounded: past ``max_queue`` waiting images ``submit`` raises :class:`QueueFull`
(the server answers 503 with ``Retry-After``), so an overloaded server says so at once instead
of letting every latency grow without limit (Triton's queue policy does the same).

A forward pass cheaper than a hop to a worker thread runs on the event loop itself; a slower
one runs in a thread so the loop keeps reading requests meanwhile. ``inline="auto"`` decides
from the measured time of recent passes. ``thread_setup`` runs in that thread before its first
pass (the server gives PyTorch its thread count there).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Closed", "DynamicBatcher", "QueueFull"]


class Closed(Exception):
    """The model behind this batcher was unloaded."""


class QueueFull(Exception):
    """Too many images are waiting; try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, max_queue: int, retry_after: int):
        super().__init__(
            f"the server is busy: {waiting} images are waiting and the queue holds {max_queue}; "
            f"retry after {retry_after} s"
        )
        self.retry_after = retry_after


class DynamicBatcher:
    """``await batcher.submit(x)`` for ``x`` of shape ``N x ...``; ``fn`` maps a batch to outputs row for row.

    ``on_batch(size, forward_seconds, queued_seconds)`` is told about every forward pass (metrics,
    tests): its number of images, how long the pass took, and how long each request had waited.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        max_queue: int = 1024,
        inline: bool | str = "auto",
        inline_below_ms: float = 0.5,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
        thread_setup: Callable[[], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must not be negative, got {max_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if inline not in (True, False, "auto"):
            raise ValueError(f"inline must be True, False or 'auto', got {inline!r}")
        self.fn, self.max_batch_size, self.max_delay = fn, max_batch_size, max_delay_ms / 1000
        self.max_queue, self.inline, self.inline_below = max_queue, inline, inline_below_ms / 1000
        self.on_batch = on_batch
        self.waiting = 0  # images queued, not yet in a forward pass
        self.pass_seconds = math.inf  # a running average of recent passes; unknown until the first
        self._pending: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(1, "maaskit-forward", initializer=thread_setup)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self._closed:
            raise Closed("this model was unloaded")
        n = len(x)
        if self.waiting and self.waiting + n > self.max_queue:
            passes = math.ceil(self.waiting / self.max_batch_size)
            per_pass = self.pass_seconds if math.isfinite(self.pass_seconds) else 1.0
            raise QueueFull(self.waiting, self.max_queue, max(1, math.ceil(passes * per_pass)))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((x, future, time.perf_counter()))
        self.waiting += n
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self.max_delay and self.waiting < self.max_batch_size:
                    await asyncio.sleep(self.max_delay)
                else:
                    await asyncio.sleep(0)  # requests read in this turn of the event loop join the pass
                items = self._take()
                if items:
                    await self._forward(items)
        finally:  # whatever stopped this task, nobody is left waiting for ever
            while self._pending:
                _, future, _ = self._pending.popleft()
                if not future.done():
                    future.set_exception(Closed("the batcher stopped"))
            self.waiting = 0
            if self._closed:
                self._executor.shutdown(wait=False)

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        items: list[tuple[np.ndarray, asyncio.Future, float]] = []
        size = 0
        while self._pending:
            x, future, queued = self._pending[0]
            if items and size + len(x) > self.max_batch_size:
                break  # it starts the next pass
            self._pending.popleft()
            self.waiting -= len(x)
            if not future.done():  # a cancelled request (the client went away) costs nothing
                items.append((x, future, queued))
                size += len(x)
        return items

    def _runs_inline(self) -> bool:
        return self.inline is True or (self.inline == "auto" and self.pass_seconds < self.inline_below)

    async def _forward(self, items: list[tuple[np.ndarray, asyncio.Future, float]]) -> None:
        batch = np.concatenate([x for x, _, _ in items]) if len(items) > 1 else items[0][0]
        start = time.perf_counter()
        queued = [start - t for _, _, t in items]
        try:
            if self._runs_inline():
                out = self.fn(batch)
            else:
                out = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, batch)
        except Exception as err:  # every request of the pass gets the error
            for _, future, _ in items:
                if not future.done():
                    future.set_exception(err)
            return
        seconds = time.perf_counter() - start
        self.pass_seconds = seconds if math.isinf(self.pass_seconds) else 0.8 * self.pass_seconds + 0.2 * seconds
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), seconds, queued)
            except Exception:  # a broken metrics hook must not fail the requests
                logger.exception("on_batch failed")
        row = 0
        for x, future, _ in items:
            if not future.done():
                future.set_result(out[row : row + len(x)])
            row += len(x)

    def close(self) -> None:
        """Take no new requests; those already queued are still answered."""
        self._closed = True
        if self._task is None or self._task.done():
            self._executor.shutdown(wait=False)
