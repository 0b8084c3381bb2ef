"""Dynamic batching: requests that arrive together share one forward pass.

A GPU (and, less so, a CPU) does a batch of 32 images in about the time of one. The batcher
collects requests for up to ``max_delay_ms`` or until ``max_batch_size`` images are waiting,
runs the model once on all of them in a worker thread (so the event loop keeps accepting
requests), and hands each request its own rows back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["DynamicBatcher"]


class DynamicBatcher:
    """``await batcher.submit(x)`` for ``x`` of shape ``N x ...``; ``fn`` maps a batch to outputs row for row.

    ``on_batch(size, seconds)`` is told about every forward pass (for metrics and tests).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must not be negative, got {max_delay_ms}")
        self.fn, self.max_batch_size, self.max_delay = fn, max_batch_size, max_delay_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue = asyncio.Queue()  # made anew, in the running loop, with each task
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maaskit-forward")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        carry = None  # a request that did not fit the last batch starts the next one
        while True:
            first, carry = carry or await self._queue.get(), None
            items, size = [first], len(first[0])
            deadline = loop.time() + self.max_delay
            while size < self.max_batch_size:
                left = deadline - loop.time()
                try:
                    item = await asyncio.wait_for(self._queue.get(), left) if left > 0 else self._queue.get_nowait()
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(item[0]) > self.max_batch_size:
                    carry = item
                    break
                items.append(item)
                size += len(item[0])
            await self._forward(loop, items)

    async def _forward(self, loop, items):
        items = [(x, f) for x, f in items if not f.cancelled()]  # the client went away
        if not items:
            return
        batch = np.concatenate([x for x, _ in items]) if len(items) > 1 else items[0][0]
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self.fn, batch)
        except Exception as err:  # every request of the batch gets the error
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)
        row = 0
        for x, future in items:
            if not future.done():
                future.set_result(out[row : row + len(x)])
            row += len(x)

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._executor.shutdown(wait=False)
