"""Sampling text from a GPT, one token at a time, with or without the KV cache.

``generate`` is an iterator: each step yields one token id, so a server can stream it. Greedy
(``temperature=0``) or sampled, with top-k and top-p (nucleus) filtering; a ``seed`` makes a sample
reproducible. It stops at ``max_tokens``, at the model's context, or at an end-of-text token, and
says which in ``Generation.finish_reason`` ("length" or "stop", as OpenAI's API reports it).
:func:`sample_rows` samples many rows at once, each with its own settings, so the server's
batched decode steps pick exactly the tokens ``generate`` picks alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..models.attention import KVCache
from ..models.base import CausalLM

__all__ = ["Generation", "check_sampling", "generate", "next_token", "sample_rows"]


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """The next token of each row of ``logits`` (B x vocab), each with its own settings, in one
    pass of batched operations: ``temperature`` (0: greedy), ``top_k`` (0: all tokens), ``top_p``
    (1: all) and ``uniform``, a number in [0, 1) per row drawn from that row's own generator
    (inverse-CDF sampling: the same draw gives the same token, batched or alone)."""
    logits = logits.float()
    greedy = logits.argmax(-1)
    if not bool((temperature > 0).any()):
        return greedy
    scaled = logits / temperature.clamp(min=1e-6)[:, None]
    vocab = logits.shape[-1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):  # filtering: sorted once for both
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
        ordered, order = scaled.sort(-1, descending=True)
        kth = ordered.gather(-1, (k - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        p = ordered.masked_fill(ordered < kth, float("-inf")).softmax(-1)
        dropped = (p.cumsum(-1) - p) >= top_p[:, None]  # keep the smallest set whose mass reaches top_p
        scaled = scaled.masked_fill(torch.zeros_like(dropped).scatter(-1, order, dropped), float("-inf"))
    cdf = scaled.softmax(-1).cumsum(-1)
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=vocab - 1)
    return torch.where(temperature == 0, greedy, sampled)


def next_token(
    logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator
) -> int:
    """One token from the last position's ``logits`` (vocab,): :func:`sample_rows` for one row."""
    uniform = torch.rand(1, generator=generator)  # drawn even when greedy: a seed's sequence does not shift
    t, k, p = (torch.tensor([v], device=logits.device) for v in (temperature, top_k or 0, top_p or 1.0))
    return int(sample_rows(logits[None], t, k, p, uniform.to(logits.device))[0])


@dataclass
class Generation:
    """What ``generate`` produced: the new tokens and why it stopped (None while it runs)."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_tokens: int) -> None:
    """A ValueError naming the first sampling setting out of range."""
    if not 0 <= temperature <= 2:
        raise ValueError(f"temperature must be between 0 and 2, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")


@torch.inference_mode()
def generate(
    model: CausalLM,
    prompt: Sequence[int],
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Sequence[int] = (),
    cache: bool = True,
    result: Generation | None = None,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt``. ``cache=False`` recomputes the
    whole prefix at every step (the slow way, for comparison). Pass a ``Generation`` as ``result``
    to learn the finish reason once the iterator ends."""
    check_sampling(temperature, top_k, top_p, max_tokens)
    if not prompt:
        raise ValueError("the prompt must have at least one token")
    if len(prompt) >= model.context:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the model's context is {model.context}")
    result = result if result is not None else Generation()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    tokens = list(prompt)
    kv = KVCache.empty(model) if cache else None
    step_input = torch.tensor([tokens], device=device)
    try:
        while True:
            logits = model(step_input, kv)[0, -1]
            token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if token in stop_tokens:
                result.finish_reason = "stop"
                return
            tokens.append(token)
            result.tokens.append(token)
            yield token
            if len(result.tokens) >= max_tokens or len(tokens) >= model.context:
                result.finish_reason = "length"
                return
            step_input = torch.tensor([[token]] if cache else [tokens], device=device)
    finally:
        model.train(was_training)
