"""Where a language model's attention meets its keys and values: the one module that knows the cache.

A model's forward pass takes, beside its tokens, a *batch*: an object it asks two things, where each
token sits (:meth:`positions`) and what each new token's attention gives (:meth:`attention`, which
stores the new keys and values on the way). A model file holds no cache logic, and the same model
runs in every setting through one of three batches:

- :class:`Causal`: training, or a whole sequence at once; no cache, each token sees those before it.
- :class:`KVCache`: a few sequences generated step by step, side by side (``generate``, the lessons).
- :class:`FlatBatch`: a server's step (vLLM's flat token batch). Every token scheduled this step, one
  per decoding sequence and a chunk of each prompt being prefilled, in one row of ``1 x N`` tokens,
  each with its position and its sequence's slot of a :class:`SlotCache`. Every projection and MLP
  then reads its weights once for all of them; only attention looks at the sequences one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

__all__ = ["Batch", "Causal", "DecodeKernel", "FlatBatch", "KVCache", "SlotCache", "decode_attention", "visible"]

DecodeKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                        torch.Tensor]  # fmt: skip


class Batch(Protocol):
    """What a model's forward pass asks of the batch it is given."""

    def positions(self, tokens: torch.Tensor, context: int) -> torch.Tensor:
        """Each token's position (B x T, or 1 x T shared by every row), checked against ``context``."""
        ...

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0, window: int | None = None) -> torch.Tensor:  # fmt: skip
        """The new tokens' attention output (B x heads x T x width); their keys and values are kept.
        ``window``: each token sees the ``window`` latest positions only, itself included (sliding-window
        layers); None: every earlier one."""
        ...

    def advance(self, tokens: int) -> None:
        """Called once after the last layer: ``tokens`` more are in."""
        ...


def visible(at: torch.Tensor, span: int, window: int | None) -> torch.Tensor:
    """Which of ``span`` positions a query at position ``at`` sees (``at``'s shape x span): those up to
    it, and with a ``window`` only the latest ``window`` of them."""
    keys = torch.arange(span, device=at.device)
    seen = keys <= at[..., None]
    if window is not None:
        seen &= keys > at[..., None] - window
    return seen


def _check(end: int, context: int) -> None:
    if end > context:
        raise ValueError(f"{end} tokens do not fit the model's context of {context}")


class Causal:
    """No cache: every token attends to itself and those before it (training, a whole sequence)."""

    def positions(self, tokens: torch.Tensor, context: int) -> torch.Tensor:
        _check(tokens.shape[1], context)
        return torch.arange(tokens.shape[1], device=tokens.device)[None, :]

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0, window: int | None = None) -> torch.Tensor:  # fmt: skip
        if window is None or window >= q.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
        mask = visible(torch.arange(q.shape[2], device=q.device), q.shape[2], window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)

    def advance(self, tokens: int) -> None:
        pass


CAUSAL = Causal()


def _empty(model: Any, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    p = next(model.parameters())
    layers, heads, width = model.cache_shape()
    shape = (rows, heads, model.context, width)
    return ([torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(layers)],
            [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(layers)])  # fmt: skip


@dataclass
class KVCache:
    """Keys and values of every layer for a batch of sequences side by side, filled up to ``length``.

    Each call of the model handles only the new tokens and attends to the kept ones, so decoding
    costs one token's work per step instead of the whole prefix's. A fresh cache is :meth:`empty`."""

    keys: list[torch.Tensor]  # per layer: B x heads x context x head width
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, model: Any, batch: int = 1) -> KVCache:
        return cls(*_empty(model, batch))

    def positions(self, tokens: torch.Tensor, context: int) -> torch.Tensor:
        _check(self.length + tokens.shape[1], context)
        return torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)[None, :]

    def advance(self, tokens: int) -> None:
        self.length += tokens

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0, window: int | None = None) -> torch.Tensor:  # fmt: skip
        """Store the new keys and values after the kept ones; the new tokens attend to every kept
        position and, causally, to each other."""
        start, t = self.length, k.shape[2]
        self.keys[layer][:, :, start : start + t] = k
        self.values[layer][:, :, start : start + t] = v
        allowed = visible(torch.arange(start, start + t, device=k.device), start + t, window)
        keys, values = self.keys[layer][:, :, : start + t], self.values[layer][:, :, : start + t]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=dropout, enable_gqa=gqa)


@dataclass
class SlotCache:
    """A server's keys and values: one slot (a row of the whole context) per running sequence.

    The engine gives a sequence a slot, and each step builds a :class:`FlatBatch` over the slots of
    the sequences it runs (:meth:`batch`). :meth:`prefill` is a :class:`KVCache` over one slot, for
    a sequence computed on its own."""

    keys: list[torch.Tensor]  # per layer: slots x heads x context x head width
    values: list[torch.Tensor]
    # the machine's own attention for decoding rows, where the backend gave one (lm/runtime/backend/kernels.py):
    # (q rows x heads x width, keys, values, slots, starts, ends) -> rows x heads x width
    kernel: DecodeKernel | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, model: Any, slots: int) -> SlotCache:
        return cls(*_empty(model, slots))

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def prefill(self, slot: int, start: int = 0) -> KVCache:
        """A KVCache writing into ``slot``'s row (views, not copies), filled up to ``start``."""
        return KVCache([k[slot : slot + 1] for k in self.keys], [v[slot : slot + 1] for v in self.values], start)

    def batch(self, decodes: Sequence[tuple[int, int]] = (),
              chunks: Sequence[tuple[int, int, int]] = ()) -> FlatBatch:  # fmt: skip
        """One step's flat batch: ``decodes`` (slot, its length) take one token each, then ``chunks``
        (slot, start, tokens) continue a prompt from ``start``. Token order: the decodes', then each
        chunk's in turn."""
        device = self.keys[0].device
        positions = [length for _, length in decodes]
        slots = [slot for slot, _ in decodes]
        for slot, start, n in chunks:
            if n < 1:
                raise ValueError(f"a chunk has at least one token, got {n} for slot {slot}")
            positions += range(start, start + n)
            slots += [slot] * n
        return FlatBatch(self, [s for s, _ in decodes], [n for _, n in decodes], list(chunks),
                         torch.tensor(slots, device=device), torch.tensor([positions], device=device))  # fmt: skip


@dataclass
class FlatBatch:
    """One step of a server: decoding rows and prompt chunks as one row of tokens (``1 x N``).

    Built by :meth:`SlotCache.batch`. ``last`` lists each sequence's last token in the row (a decode's
    only one, a chunk's last), the ones whose logits can be sampled."""

    cache: SlotCache
    rows: list[int]  # slots of the decoding sequences (their tokens come first)
    lengths: list[int]  # each row's length before this step: where its token goes
    chunks: list[tuple[int, int, int]]  # (slot, start, tokens) of each prompt chunk, in the row's order
    slots: torch.Tensor  # N: each token's slot
    where: torch.Tensor  # 1 x N: each token's position in its own sequence
    _plans: dict = field(default_factory=dict, repr=False)  # per sliding window: what attention needs

    @property
    def tokens(self) -> int:
        return self.slots.shape[0]

    @property
    def last(self) -> list[int]:
        ends, at = list(range(len(self.rows))), len(self.rows)
        for _, _, n in self.chunks:
            at += n
            ends.append(at - 1)
        return ends

    def positions(self, tokens: torch.Tensor, context: int) -> torch.Tensor:
        return self.where  # each token at its own sequence's position (the engine checks the context)

    def advance(self, tokens: int) -> None:
        pass  # the engine keeps each slot's length

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0, window: int | None = None) -> torch.Tensor:  # fmt: skip
        """``q``, ``k``, ``v``: 1 x heads x N x width. Every new key and value is written to its slot
        and position at once; then the decoding rows attend together, each chunk on its own."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        at = self.where[0]
        keys[self.slots, :, at] = k[0].transpose(0, 1)  # (N, heads, width): advanced indices first
        values[self.slots, :, at] = v[0].transpose(0, 1)
        plan = self._plan(window)  # what every layer needs, worked out once per step
        parts, b = [], len(self.rows)
        if b and "kernel" in plan:  # each row's slot and positions as numbers: no gather, no mask
            kernel, where = plan["kernel"]
            y = kernel(q[0, :, :b].transpose(0, 1).contiguous(), keys, values, *where)
            parts.append(y.transpose(0, 1)[None])  # rows x heads x width -> 1 x heads x rows x width
        elif b:
            rows, span, mask = plan["rows"]
            y = decode_attention(q[0, :, :b].transpose(0, 1)[:, :, None], keys[rows, :, :span], values[rows, :, :span],
                                 mask)  # fmt: skip
            parts.append(y.transpose(0, 2))  # rows x heads x 1 x width -> 1 x heads x rows x width
        start = b
        for (slot, begin, n), mask in zip(self.chunks, plan["chunks"]):  # each sees its own sequence, causally
            seen = slice(slot, slot + 1), slice(None), slice(0, begin + n)
            parts.append(F.scaled_dot_product_attention(q[:, :, start : start + n], keys[seen], values[seen],
                                                        attn_mask=mask, enable_gqa=gqa))  # fmt: skip
            start += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def _plan(self, window: int | None) -> dict:
        """The rows' slots, first and last positions for the cache's kernel where it has one; else their slots (a
        slice where they are consecutive: a view, no gather), span and mask; and each chunk's mask, for layers
        of this ``window``: the same for every such layer of the step."""
        if window in self._plans:
            return self._plans[window]
        device, plan = self.where.device, dict[str, Any]()
        kernel = self.cache.kernel  # read once: the backend may set it while a step runs
        if self.rows and kernel is not None:
            ends = self.where[0, : len(self.rows)] + 1
            starts = (ends - window).clamp(min=0) if window is not None else torch.zeros_like(ends)
            plan["kernel"] = (kernel, (self.slots[: len(self.rows)], starts, ends))
        elif self.rows:
            span, first = max(self.lengths) + 1, self.rows[0]
            consecutive = self.rows == list(range(first, first + len(self.rows)))
            rows = slice(first, first + len(self.rows)) if consecutive else self.slots[: len(self.rows)]
            mask = None  # rows of one length see all of the span (or all of their window)
            if len(set(self.lengths)) > 1 or (window is not None and span > window):
                mask = visible(self.where[0, : len(self.rows)], span, window)[:, None, None]
            plan["rows"] = (rows, span, mask)
        plan["chunks"] = [visible(torch.arange(begin, begin + n, device=device), begin + n, window)
                          for _, begin, n in self.chunks]  # fmt: skip
        self._plans[window] = plan
        return plan


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """One new query per row (B x heads x 1 x width) against the rows' keys and values (B x key/value
    heads x span x width), ``mask`` B x 1 x 1 x span or None. What ``scaled_dot_product_attention``
    with ``enable_gqa`` computes, faster on a CPU: each key/value head's group of query heads are passed
    as its queries, so that SDPA runs fewer, larger products; in bfloat16, on float32 copies, where
    PyTorch's CPU flash attention is slower than in float32 at these shapes (benchmarks/attention_kernels.py;
    figures: benchmarks/FIGURES.md, "decode attention")."""
    b, heads, _, width = q.shape
    grouped = q.reshape(b, keys.shape[1], heads // keys.shape[1], width)
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        grouped, keys, values = grouped.float(), keys.float(), values.float()
    y = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask)
    return y.to(q.dtype).view(b, heads, 1, width)
