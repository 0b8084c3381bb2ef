"""How big a prompt chunk may be: sized by time, so that running streams slow by a bounded factor.

A step that prefills a chunk beside the running sequences' decode takes the decode's time plus the
chunk's. A fixed chunk (256 tokens) costs a 135M-parameter model on two CPU cores several decode
steps, and every running stream waits that long for its next token. So the engine measures, as it
goes, how long a decode step takes and how long each prompt token adds to a step (moving averages
of its own steps, on any device), and sizes each chunk to cost at most ``stall`` decode steps:
running streams then see their steps at most ``1 + stall`` times slower while a long prompt joins
(vLLM's token budget per step, set by time rather than by count).
"""

from __future__ import annotations

__all__ = ["PrefillPace"]


class PrefillPace:
    """``chunk(limit)``: prompt tokens for this step; ``record(seconds, running, prefilled)`` after each step."""

    def __init__(self, stall: float = 1.0, *, floor: int = 16, weight: float = 0.3):
        if not stall > 0:
            raise ValueError(f"stall must be more than 0, got {stall!r}")
        self.stall, self.floor, self.weight = stall, floor, weight
        self.decode_s: float | None = None  # a step with no prompt tokens
        self.token_s: float | None = None  # what one prompt token adds to a step

    def chunk(self, limit: int) -> int:
        """At most ``limit``; until both costs are measured, ``limit`` itself."""
        if self.decode_s is None or self.token_s is None or self.token_s <= 0:
            return limit
        return max(min(self.floor, limit), min(limit, int(self.stall * self.decode_s / self.token_s)))

    def record(self, seconds: float, running: int, prefilled: int) -> None:
        """A step took ``seconds``: ``running`` sequences decoded and ``prefilled`` prompt tokens computed."""
        if prefilled == 0:
            if running:
                self.decode_s = self._average(self.decode_s, seconds)
        elif not running:
            self.token_s = self._average(self.token_s, seconds / prefilled)
        elif self.decode_s is not None:  # what the chunk added to the decode
            self.token_s = self._average(self.token_s, max(seconds - self.decode_s, 0.0) / prefilled)

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.weight) * old + self.weight * new

    def __repr__(self) -> str:
        known = (
            "unmeasured"
            if self.decode_s is None or self.token_s is None
            else (f"decode {self.decode_s * 1000:.1f} ms, {self.token_s * 1000:.2f} ms per prompt token")
        )
        return f"PrefillPace(stall {self.stall}, {known})"
