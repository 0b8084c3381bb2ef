"""The model runner: one step of the engine, as one forward pass over a flat batch, then sampling.

The scheduler (:mod:`.engine`) decides what a step runs, a :class:`StepPlan`: which sequences decode a
token and which prompts advance by a chunk. The runner lays those tokens out as one row (a
:class:`~maaskit.lm.models.attention.FlatBatch`: each token with its position and its sequence's cache slot),
runs the model once, and samples a token for every sequence whose last token was in the pass: the
decoders, and each prompt whose last chunk it was. Whatever the mix, there is one layout and one pass
(vLLM's GPU model runner does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from ..models.attention import FlatBatch, SlotCache
from .constrain import SERIAL_BELOW, SPARE_CORES, Guide
from .generation import sample_rows

__all__ = ["Forward", "ModelRunner", "Scheduled", "StepPlan"]


class Scheduled(Protocol):
    """What the runner reads and updates of a sequence the scheduler hands it."""

    prompt: list[int]
    slot: int
    filled: int  # prompt tokens in its slot
    last: int  # the token sampled last: the next one fed, when decoding
    generated: int
    params: Any  # its SamplingParams
    generator: torch.Generator
    matcher: Any
    unread: int | None

    @property
    def cached(self) -> int:
        """Its positions in the cache while it decodes (where its next token goes)."""
        ...


S = TypeVar("S", bound=Scheduled)


@dataclass
class StepPlan(Generic[S]):
    """One step: ``decodes`` feed one token each; each of ``chunks`` feeds that many more of its prompt."""

    decodes: list[S] = field(default_factory=list)
    chunks: list[tuple[S, int]] = field(default_factory=list)
    reused: int = 0  # prompt tokens the prefix cache supplied to sequences starting this step

    @property
    def prompt_tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    def sampled(self) -> list[S]:
        """The sequences that get a token from this step: every decode, and each prompt it completes."""
        return [*self.decodes, *(s for s, n in self.chunks if s.filled + n == len(s.prompt))]


# the forward pass of a step: (tokens 1 x N, batch, select) -> logits of the selected tokens (the model, or
# the model compiled: lm/backend/compiled.py)
Forward = Callable[[torch.Tensor, FlatBatch, torch.Tensor], torch.Tensor]


class ModelRunner:
    """Runs a :class:`StepPlan` on ``cache``'s slots through ``forward``; returns each sampled sequence
    with its token. ``guide`` masks the tokens of constrained sequences; ``vocab_size`` is the model's.
    ``forward`` may be replaced between steps (a compiled pass, once it is built)."""

    def __init__(self, forward: Forward, cache: SlotCache, vocab_size: int, *, guide: Guide | None = None):
        self.forward, self.cache, self.vocab_size, self.guide = forward, cache, vocab_size, guide
        self.device = cache.keys[0].device
        self._masker = ThreadPoolExecutor(1, "maaskit-lm-masks")  # grammar masks, beside the forward pass

    @torch.inference_mode()
    def run(self, plan: StepPlan[S]) -> tuple[list[S], list[int], torch.Tensor]:
        """The forward pass and the sampling: the sequences sampled, their tokens, and their logits
        (after masks, float32). Every chunk's sequence is ``filled`` further."""
        sampled = plan.sampled()
        constrained = [(s, i) for i, s in enumerate(sampled) if s.matcher is not None]
        allowed = self._masks(constrained, len(sampled)) if constrained else None
        batch = self.cache.batch([(s.slot, s.cached) for s in plan.decodes],
                                 [(s.slot, s.filled, n) for s, n in plan.chunks])  # fmt: skip
        tokens = [s.last for s in plan.decodes]
        for seq, n in plan.chunks:
            tokens += seq.prompt[seq.filled : seq.filled + n]
        ends = batch.last  # each sequence's last token in the row, in the plan's order
        select = ends[: len(plan.decodes)] + [
            end for (s, n), end in zip(plan.chunks, ends[len(plan.decodes) :]) if s.filled + n == len(s.prompt)
        ]
        for seq, n in plan.chunks:
            seq.filled += n
        if not sampled:  # only prompt chunks, none finished
            self.forward(torch.tensor([tokens], device=self.device), batch, torch.tensor(ends, device=self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the step's time is its work, not its launch
            return [], [], torch.empty(0)
        logits = self.forward(torch.tensor([tokens], device=self.device), batch,
                           torch.tensor(select, device=self.device))[:, -1].float()  # fmt: skip
        if allowed is not None:  # each constrained row keeps the tokens its grammar allows
            logits.masked_fill_(~allowed.result().to(logits.device), float("-inf"))
        for i, s in enumerate(sampled):  # min_tokens: no stop token yet
            if s.generated < s.params.min_tokens and s.params.stop_tokens:
                logits[i, list(s.params.stop_tokens)] = float("-inf")
        # every row sampled at once, each with its own settings and its own generator's draw
        settings = [(s.params.temperature, s.params.top_k or 0, s.params.top_p or 1.0) for s in sampled]
        temperature, top_k, top_p = (torch.tensor(column, device=self.device) for column in zip(*settings))
        uniform = torch.cat([torch.rand(1, generator=s.generator) for s in sampled]).to(self.device)
        chosen = sample_rows(logits, temperature, top_k, top_p, uniform).tolist()  # waits for the device
        for seq, i in constrained:  # fed to its matcher by the next step's mask job, beside that forward pass
            seq.unread = chosen[i]
        return sampled, chosen, logits

    def _masks(self, constrained: Sequence[tuple[Scheduled, int]], rows: int) -> Future:
        """Which tokens each row may take (all, for the free ones), as booleans: each constrained
        sequence's matcher first takes the token chosen last step, then gives its mask. Done in a
        thread of its own while the forward pass runs where cores are spare, here otherwise (and for
        a row or two, whose work costs less than a hand-off)."""
        if self.guide is None:
            raise ValueError("a constrained sequence needs the runner's guide")
        guide = self.guide

        def work() -> torch.Tensor:
            unread = [(s.matcher, s.unread) for s, _ in constrained if s.unread is not None]
            if not all(guide.advance(unread)):
                refused = next(m for m, _ in unread if m.is_error())
                raise RuntimeError(f"a grammar refused the token chosen under its own mask: {refused.get_error()}")
            for seq, _ in constrained:
                seq.unread = None
            masks = guide.masks(rows)
            masks.fill_(-1)
            guide.fill([(s.matcher, i) for s, i in constrained], masks)
            return guide.unpack(masks, self.vocab_size)

        if not SPARE_CORES or len(constrained) <= SERIAL_BELOW:
            done: Future = Future()
            done.set_result(work())
            return done
        return self._masker.submit(work)

    def close(self) -> None:
        self._masker.shutdown(wait=False, cancel_futures=True)
