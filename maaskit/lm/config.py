"""The shape of a language model, written once: :class:`GPTConfig` is what the GPT's constructor
takes, what a recipe holds and what a manifest records. :class:`LMRecipe` adds how to train it.

Pure data: importing this module needs no PyTorch (the CLI builds its help from the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["GPTConfig", "LMRecipe", "SFTRecipe"]


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


@dataclass(frozen=True)
class LMRecipe:
    """A GPT's shape (``model``) and how ``maaskit lm train`` and notebook 07 train it. The defaults
    (about 0.14M parameters) train on a 2-core CPU in about a minute."""

    model: GPTConfig = field(default_factory=GPTConfig)
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    scheduler: str | None = "cosine"
    weight_decay: float | None = None  # None: AdamW's 0.01, on the weight matrices and embeddings only

    def but(self, **changes: Any) -> LMRecipe:
        """This recipe with ``changes``; the model's own fields (``context=64``) change its shape."""
        shape = {k: changes.pop(k) for k in list(changes) if k in GPTConfig.__dataclass_fields__}
        return replace(self, model=self.model.but(**shape), **changes)


@dataclass(frozen=True)
class SFTRecipe:
    """How :func:`finetune` trains: ``examples`` conversations of the task, ``epochs`` passes. The
    defaults fine-tune notebook 07's model in under three minutes on a 2-core CPU
    (``benchmarks/assistant.py`` measures the time and the held-out accuracy through the API)."""

    examples: int = 16000
    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    scheduler: str | None = "cosine"
    weight_decay: float | None = None  # None: AdamW's 0.01, as in pre-training
    assistant_only: bool = True  # the loss on the assistant's tokens only (False: on every token, for comparison)
