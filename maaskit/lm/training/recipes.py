"""How a GPT is trained, as data: :class:`LMRecipe` (a shape and how ``maaskit lm train`` and notebook
07 pre-train it) and :class:`SFTRecipe` (how :func:`~maaskit.lm.training.sft.finetune` fine-tunes it).

Pure data: importing this module needs no PyTorch (the CLI builds its help from the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..models.config import GPTConfig

__all__ = ["LMRecipe", "SFTRecipe"]


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
