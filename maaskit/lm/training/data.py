"""Text as training data for ``fit()``: a corpus tokenized once, split into train and validation,
and served as batches of windows (inputs, the same tokens shifted by one) on the device.

:class:`TextDataset` follows ``maaskit.train.TrainingData`` (``loader``, ``unit``, ``metrics``), so the same
loop, callbacks, checkpoints and data parallelism train a language model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from tokenizers import Tokenizer

from ...device import pick_device
from ...run import TrainingData
from ...scoring import Accuracy, Metric, Perplexity
from ..formats.tokenizer import ENDOFTEXT, train_tokenizer
from .corpus import load_corpus

__all__ = ["SplitLoaders", "TextDataset", "TokenLoader"]

L = TypeVar("L")


class TokenLoader:
    """Batches of ``context``-token windows from one split, at random offsets (seeded) for training
    and in order for validation. An epoch has as many windows as the split has non-overlapping
    ones, so it sees about every token once. Each batch is ``(tokens, next tokens)``, both B x T."""

    def __init__(
        self,
        tokens: torch.Tensor,
        context: int,
        *,
        batch_size: int,
        shuffle: bool,
        device: str | torch.device = "auto",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
        if len(tokens) < context + 1:
            raise ValueError(f"a split of {len(tokens)} tokens is too short for windows of {context} (+1)")
        self.device = pick_device(device)
        self.tokens = tokens.to(self.device)
        self.context, self.batch_size, self.shuffle = context, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.windows = (len(tokens) - 1) // context
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return max(1, self.windows // step) if self.world_size > 1 else -(-self.windows // step)

    @property
    def num_examples(self) -> int:
        return self.windows if self.world_size == 1 else len(self) * self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        span = torch.arange(self.context + 1, device=self.device)
        last_start = len(self.tokens) - self.context - 1
        if self.shuffle:  # every rank draws the same starts and takes its slice, as DeviceLoader does
            starts = torch.randint(0, last_start + 1, (self.windows,), device=self.device, generator=self.generator)
        else:
            starts = torch.arange(self.windows, device=self.device) * self.context
        step = self.batch_size * self.world_size
        for i in range(len(self)):
            first = i * step + self.rank * self.batch_size
            windows = self.tokens[starts[first : first + self.batch_size, None] + span]
            yield windows[:, :-1], windows[:, 1:]


@runtime_checkable
class TokenData(TrainingData, Protocol):
    """What a language model trains on and samples from while it trains (:class:`TextDataset`, and
    ``ChatDataset`` in :mod:`.sft`): ``fit``'s data, plus how a sample starts, ends and reads."""

    def prompt_ids(self, prompt: str) -> list[int]: ...

    @property
    def stop_tokens(self) -> tuple[int, ...]: ...

    def show(self, prompt: str, ids: list[int]) -> str: ...


class SplitLoaders(Generic[L]):
    """What ``fit`` asks of token data, shared by :class:`TextDataset` and ``ChatDataset``: a
    ``loader`` of the "train" or "val" split (``self.train``, ``self.val``), built by ``_loader``."""

    train: Any
    val: Any

    def _loader(self, data: Any, **options: Any) -> L:
        raise NotImplementedError

    def loader(
        self,
        split: str = "train",
        *,
        batch_size: int = 32,
        shuffle: bool | None = None,
        augment: bool = False,
        device: str | torch.device = "auto",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> L:
        """Batches of ``split`` ("train" or "val"), shuffled for training; what ``fit`` asks for."""
        kind = type(self).__name__
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; a {kind} has train and val")
        if augment:
            raise ValueError(f"augment is for images; a {kind} has no augmentation")
        return self._loader(
            self.train if split == "train" else self.val,
            batch_size=batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            device=pick_device(device),
            seed=seed,
            rank=rank,
            world_size=world_size,
        )


@dataclass(frozen=True)
class TextDataset(SplitLoaders[TokenLoader]):
    """A tokenized corpus: ``train`` and ``val`` token ids (int64), the ``tokenizer`` that made them
    and the ``context`` (window length) the model trains on."""

    name: str
    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor
    context: int

    unit = "tokens"  # what fit() counts: its throughput column is tokens_per_s

    def metrics(self) -> tuple[Metric, ...]:
        """What fit() measures besides the loss: perplexity, and how often the next token is the top guess."""
        return (Accuracy(), Perplexity())

    @classmethod
    def from_text(
        cls,
        text: str | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        vocab_size: int = 512,
        context: int = 128,
        val_fraction: float = 0.1,
        name: str = "text",
    ) -> TextDataset:
        """Tokenize ``text`` (default: :func:`load_corpus`'s offline corpus) with ``tokenizer``, or a
        byte-level BPE of ``vocab_size`` trained on it; the last ``val_fraction`` is for validation."""
        if text is None:
            text, name = load_corpus(), "python-docs"
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        documents = [d for d in text.split("\n\n") if d.strip()]  # paragraphs, as BPE training sees them
        tokenizer = tokenizer or train_tokenizer(documents, vocab_size)
        ids = tokenizer.encode(text).ids
        cut = int(len(ids) * (1 - val_fraction))
        train, val = torch.tensor(ids[:cut]), torch.tensor(ids[cut:])
        for split, tokens in (("train", train), ("validation", val)):
            if len(tokens) < context + 1:
                raise ValueError(
                    f"the {split} split has {len(tokens)} tokens, fewer than a window of {context} + 1: "
                    "use more text or a shorter context"
                )
        return cls(name, tokenizer, train, val, context)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def end_of_text(self) -> int:
        token = self.tokenizer.token_to_id(ENDOFTEXT)
        assert token is not None, "maaskit tokenizers have an end-of-text token"
        return token

    # what SampleText asks of data: a prompt's ids, the tokens that end a sample, how to show it
    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt).ids or [self.end_of_text]

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        return (self.end_of_text,)

    def show(self, prompt: str, ids: list[int]) -> str:
        return prompt + self.tokenizer.decode(ids)

    def _loader(self, data: torch.Tensor, **options: Any) -> TokenLoader:
        return TokenLoader(data, self.context, **options)

    def __repr__(self) -> str:
        return (
            f"TextDataset({self.name!r}: {len(self.train):,} train and {len(self.val):,} validation tokens, "
            f"vocabulary {self.vocab_size}, context {self.context})"
        )
