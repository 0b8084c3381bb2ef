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

from .config import ServeConfig
from .errors import NotReady, OverCapacity

logger = logging.getLogger(__name__)

__all__ = ["Closed", "DynamicBatcher", "QueueFull"]


class Closed(NotReady):
    """The model behind this batcher was unloaded (a new version may be loading)."""

    def __init__(self, message: str):
        super().__init__(f"{message}; ask again (a new version may be loading)", retry_after=1)


class QueueFull(OverCapacity):
    """Too many images are waiting; try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, max_queue: int, retry_after: int):
        super().__init__(
            f"the server is busy: {waiting} images are waiting and the queue holds {max_queue}; "
            f"retry after {retry_after} s",
            retry_after=retry_after,
        )


class DynamicBatcher:
    """``await batcher.submit(x)`` for ``x`` of shape ``N x ...``; ``fn`` maps a batch to outputs row for row.

    ``on_batch(size, forward_seconds, queued_seconds)`` is told about every forward pass (metrics,
    tests): its number of images, how long the pass took, and how long each request had waited.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = ServeConfig.max_batch_size,  # the defaults are written once, in ServeConfig
        max_delay_ms: float = ServeConfig.max_delay_ms,
        max_queue: int = ServeConfig.max_queue,
        inline: bool | str = ServeConfig.inline,
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
        self._timer: asyncio.Handle | None = None  # the next pass, arranged
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._running = False  # a pass is running in the worker thread
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
        if not self._running:
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arrange the next pass. A callback rather than a task: it runs after the requests read in
        this turn of the event loop, so they share the pass, and costs no extra turn."""
        full = self.waiting >= self.max_batch_size
        if self._timer_loop is not loop:  # a new event loop (asyncio.run again): the old arrangement is void
            self._timer, self._timer_loop = None, loop
        if self._timer is not None and not full:
            return  # a pass is already arranged
        if self._timer is not None:
            self._timer.cancel()  # full before the extra wait ended: go now
        if self.max_delay and not full:
            self._timer = loop.call_later(self.max_delay, self._dispatch, loop)
        else:
            self._timer = loop.call_soon(self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        items = self._take()
        if not items:
            return self._finish_if_closed()
        batch = np.concatenate([x for x, _, _ in items]) if len(items) > 1 else items[0][0]
        start = time.perf_counter()
        if self._runs_inline():
            try:
                out, seconds = self._timed(batch)
            except Exception as err:
                return self._deliver(loop, items, start, error=err)
            return self._deliver(loop, items, start, out=out, seconds=seconds)
        self._running = True
        done = loop.run_in_executor(self._executor, self._timed, batch)
        done.add_done_callback(
            lambda f: (
                self._deliver(loop, items, start, error=f.exception())
                if f.exception()
                else self._deliver(loop, items, start, out=f.result()[0], seconds=f.result()[1])
            )
        )

    def _timed(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """The pass and its own duration (not the hop to and from a thread: that is what inline saves)."""
        start = time.perf_counter()
        out = self.fn(batch)
        return out, time.perf_counter() - start

    def _deliver(self, loop, items, start, *, out=None, seconds=0.0, error=None) -> None:
        """Hand each request its rows (or the pass's error), then start the next pass if any waits."""
        self._running = False
        if error is None:
            self.pass_seconds = seconds if math.isinf(self.pass_seconds) else 0.8 * self.pass_seconds + 0.2 * seconds
            if self.on_batch is not None:
                try:
                    self.on_batch(sum(len(x) for x, _, _ in items), seconds, [start - t for _, _, t in items])
                except Exception:  # a broken metrics hook must not fail the requests
                    logger.exception("on_batch failed")
        row = 0
        for x, future, _ in items:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(out[row : row + len(x)])
            row += len(x)
        if self._pending:
            self._schedule(loop)
        else:
            self._finish_if_closed()

    def _finish_if_closed(self) -> None:
        if self._closed and not self._pending and not self._running:
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

    def close(self) -> None:
        """Take no new requests; those already queued are still answered."""
        self._closed = True
        if self._timer is None:
            self._finish_if_closed()
