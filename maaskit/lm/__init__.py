"""Language models as a service, at teaching scale: a GPT (:mod:`.model`), a byte-level BPE
tokenizer (:mod:`.tokenizer`), an offline corpus (:mod:`.corpus`), text as training data
(:mod:`.data`), generation with a KV cache (:mod:`.generate`), training with ``fit``
(:mod:`.training`), artifacts with their tokenizer (:mod:`.artifact`) and continuous batching for
a server (:mod:`.engine`).

The training, artifact and engine names are imported on first use: ``maaskit.train`` imports
:mod:`.data`, and :mod:`.training` imports ``maaskit.train``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .corpus import load_corpus
from .data import TextDataset, TokenLoader
from .generate import Generation, generate
from .model import GPT, KVCache
from .tokenizer import ENDOFTEXT, load_tokenizer, train_tokenizer

_LAZY = {
    "LMRecipe": "training",
    "SampleText": "training",
    "sample_text": "training",
    "train_language_model": "training",
    "save_language_model": "artifact",
    "load_language_model": "artifact",
    "Engine": "engine",
}

__all__ = [
    "ENDOFTEXT",
    "GPT",
    "Generation",
    "KVCache",
    "TextDataset",
    "TokenLoader",
    "generate",
    "load_corpus",
    "load_tokenizer",
    "train_tokenizer",
    *sorted(_LAZY),
]

if TYPE_CHECKING:
    from .artifact import load_language_model, save_language_model
    from .engine import Engine
    from .training import LMRecipe, SampleText, sample_text, train_language_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'maaskit.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
