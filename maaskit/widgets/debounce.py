"""Redraw once a control has been still for a moment, not on every value of a drag."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Debouncer:
    """``debouncer()`` schedules ``action`` to run ``delay`` seconds after the last call.

    Dragging a slider sends a stream of changes; each would otherwise cost a full redraw.
    Without a running event loop (tests, scripts) the action runs at once.
    """

    def __init__(self, action: Callable[[], None], delay: float = 0.15):
        self.action, self.delay = action, delay
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self, _change=None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.action()
            return
        self.cancel()
        self._pending = loop.call_later(self.delay, self._run)

    def _run(self):
        self._pending = None
        self.action()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
