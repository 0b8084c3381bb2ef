"""The shape of a GPT, written once: :class:`GPTConfig` is what the GPT's constructor takes, what a
training recipe (:mod:`maaskit.lm.training.recipes`) holds and what a manifest records.

Pure data: importing this module needs no PyTorch (the CLI builds its help from the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """A GPT's sizes: ``vocab_size`` tokens, ``context`` positions, ``layers`` blocks of ``heads``
    attention heads over ``width`` features."""

    vocab_size: int = 512
    context: int = 128
    layers: int = 2
    heads: int = 2  # heads of 32: the narrowest vLLM's CPU backend runs (an export serves there too)
    width: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "layers", "heads", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"a GPT's {name} must be a whole number of at least 1, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_width(self) -> int:
        return self.width // self.heads

    def but(self, **changes: Any) -> GPTConfig:
        """This shape with ``changes``."""
        return replace(self, **changes)
