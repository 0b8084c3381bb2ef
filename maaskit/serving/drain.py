"""Stopping without losing work: a drain, in the order Kubernetes and systemd expect of a server
that is asked to stop (SIGTERM on every rolling update, Ctrl-C, ``server.stop()`` in a notebook).

1. Readiness turns false (``/v2/health/ready`` answers 503; liveness stays true): a load balancer
   stops sending. Requests that arrive meanwhile are answered 503 with ``Retry-After`` and
   ``Connection: close``, so a client retries elsewhere; every request already admitted runs on.
2. When the last admitted request has been answered, or ``drain_seconds`` have passed, the server
   stops. At that deadline the token streams still running are ended the way a stream ends on an
   error (an OpenAI error event, then ``data: [DONE]``), never cut mid-body.
3. Only then do the models unload (the app's shutdown, after the last connection closed).

A second signal of the same kind (Ctrl-C twice) stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataplane import ModelRepository

__all__ = ["DRAIN_GRACE_SECONDS", "Drain", "drain_on_signals"]

DRAIN_GRACE_SECONDS = 2.0  # after the streams are told to end, for their last events to be written


class Drain:
    """The app's side of a drain: what is admitted, and when the server may stop.

    ``admitted()``/``left()`` are called by the app's guard around every request it lets through;
    ``begin(stop)`` (from any thread) starts the drain and calls ``stop()`` on the event loop when
    it is over. At the deadline, the repository's ``interrupt(reason)`` ends what still runs (the
    language models' streams)."""

    def __init__(self, repository: ModelRepository, seconds: float):
        self.repository, self.seconds = repository, seconds
        self.in_flight = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the app starts
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def draining(self) -> bool:
        return self.repository.draining

    def started(self) -> None:
        """Called on the event loop when the app starts."""
        self.loop, self._idle = asyncio.get_running_loop(), asyncio.Event()
        self._idle.set()

    def admitted(self) -> None:
        self.in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def left(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def begin(self, stop: Callable[[], None]) -> None:
        """Start draining (thread-safe; a second call does nothing); ``stop()`` runs on the loop at the end."""
        loop = self.loop
        if loop is None or loop.is_closed():  # not started, or already stopped: nothing to drain
            stop()
            return
        try:
            loop.call_soon_threadsafe(self._start, stop)
        except RuntimeError:  # the loop closed meanwhile
            stop()

    def _start(self, stop: Callable[[], None]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(stop), name="maaskit-drain")

    async def _run(self, stop: Callable[[], None]) -> None:
        assert self._idle is not None
        self.repository.draining = True  # readiness turns false
        try:
            await asyncio.wait_for(self._idle.wait(), self.seconds)
        except asyncio.TimeoutError:
            self.repository.interrupt(f"the server is shutting down (it drained for {self.seconds:g} s)")
            with contextlib.suppress(asyncio.TimeoutError):  # what is left, the server's own shutdown cancels
                await asyncio.wait_for(self._idle.wait(), DRAIN_GRACE_SECONDS)
        stop()


def drain_on_signals(begin: Callable[[], None], force: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM and SIGINT start a drain (``begin``); the same signal again calls ``force``.
    Main thread only. Returns a function that puts the previous handlers back.

    "The same signal": Ctrl-C in a terminal reaches a ``--workers`` server's every process, and the
    parent then sends each worker SIGTERM too; that second, different signal must not force."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can only be set from the main thread")
    seen: set[int] = set()

    def handler(signum: int, _frame: Any) -> None:
        if signum in seen:
            force()
        else:
            seen.add(signum)
            begin()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
