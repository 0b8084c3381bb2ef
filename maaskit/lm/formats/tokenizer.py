"""Byte-level BPE, trained offline with Hugging Face ``tokenizers`` and saved as JSON (never pickle).

Byte-level: every UTF-8 string round-trips exactly, whatever its script, since the base alphabet is
the 256 byte values; BPE then merges the most frequent neighbouring pairs into new tokens until the
vocabulary has ``vocab_size`` entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["ENDOFTEXT", "load_tokenizer", "train_tokenizer"]

ENDOFTEXT = "<|endoftext|>"  # separates documents, and ends a completion


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer with ``vocab_size`` tokens (256 bytes, the end-of-text token and
    the merges learned from ``texts``)."""
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be at least 258 (256 bytes and {ENDOFTEXT}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer saved with ``tokenizer.save(path)`` (its JSON file)."""
    return Tokenizer.from_file(str(path))
