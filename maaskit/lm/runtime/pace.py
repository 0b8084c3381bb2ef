"""How big a prompt chunk may be: sized by time, so that running streams slow by a bounded factor.

A step that prefills a chunk beside the running sequences' decode (packed into the same forward
pass: one :class:`~maaskit.lm.models.attention.FlatBatch`) takes the decode's time plus the chunk's
arithmetic. A fixed chunk of 256 tokens costs a 135M-parameter model on two CPU cores several decode
steps, and every running stream waits that long for its next token. So the engine times its own
steps and steers the chunk by feedback: a moving average of the decode step alone, for each number of
running sequences, and after each step with a chunk beside them, the chunk scaled by (allowed extra
time) / (extra time it took), at most doubling or halving per step. Running streams then see their
steps at most about ``1 + stall`` times slower while a long prompt joins, or as close as the
``floor`` (the smallest chunk, so that a prompt always moves) allows: vLLM's token budget per step,
set by time rather than by count. It starts at the floor, 8, and grows while steps allow: on
SmolLM2-135M's shape with packed weights a prompt token beside 8 decoding rows costs about what a
decoding row does, and a first chunk of 32 made its step 2.2x a decode step, the p99 of the streams'
inter-token latency (benchmarks/open_models.py).

Beside a number of running sequences whose decode step was never timed alone, one step runs without
prompt tokens, to time it: sized against none, or against another batch's decode time, a burst of
prompts arriving while streams ran went in at the floor for seconds, as no step without prompt tokens
came to time the decode (benchmarks/FIGURES.md, "prefill pacing").
"""

from __future__ import annotations

__all__ = ["PrefillPace"]


class PrefillPace:
    """``chunk(limit, running)``: prompt tokens for this step; ``record(seconds, running, prefilled, waiting)``
    after each step."""

    def __init__(self, stall: float = 1.0, *, floor: int = 8, first: int = 8, weight: float = 0.3):
        if not stall > 0:
            raise ValueError(f"stall must be more than 0, got {stall!r}")
        self.stall, self.floor, self.weight = stall, floor, weight
        self.decode_s: dict[int, float] = {}  # running sequences -> moving average of a step with no prompt tokens
        self.size = float(first)  # the chunk beside running sequences, steered by record()

    def share(self, running: int, waiting: int) -> float:
        """The prompt tokens' time allowed in a step, in decode steps of the ``running`` sequences: ``stall``,
        or more where ``waiting`` sequences (for their first token) are as many: each gets what a running
        one does."""
        return max(self.stall, waiting / running) if running else float("inf")

    def chunk(self, limit: int, running: int) -> int:
        """Prompt tokens for a step beside ``running`` sequences: at least ``floor``, at most ``limit``;
        none while their decode step alone is untimed (that step times it)."""
        if running not in self.decode_s:
            return 0
        return max(min(self.floor, limit), min(limit, int(self.size)))

    def record(self, seconds: float, running: int, prefilled: int, waiting: int = 1) -> None:
        """A step took ``seconds``: ``running`` sequences decoded and ``prefilled`` prompt tokens of
        ``waiting`` sequences were computed."""
        if not running:
            return  # nobody waited on this step
        decode = self.decode_s.get(running)
        if prefilled == 0:
            self.decode_s[running] = seconds if decode is None else (1 - self.weight) * decode + self.weight * seconds
        elif decode is not None:
            extra, allowed = seconds - decode, self.share(running, waiting) * decode
            ratio = 2.0 if extra <= 0 else min(2.0, max(0.5, allowed / extra))
            self.size = max(float(self.floor), prefilled * ratio)

    def __repr__(self) -> str:
        timed = ", ".join(f"{n}: {s * 1000:.1f} ms" for n, s in sorted(self.decode_s.items())) or "none timed"
        return f"PrefillPace(stall {self.stall}: decode steps by rows {{{timed}}}, chunk {int(self.size)})"
