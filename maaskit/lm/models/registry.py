"""Which maaskit model reads a Hugging Face checkpoint: ``config.json``'s ``architectures`` name maps
to a config class (``from_hf`` reads the ``config.json``) and a model class. A new family is one model
file and one line here."""

from __future__ import annotations

from typing import Any

from .base import CausalLM
from .gemma3 import Gemma3, Gemma3Config
from .llama import Llama, LlamaConfig

__all__ = ["ARCHITECTURES", "architecture_of"]

ARCHITECTURES: dict[str, tuple[Any, type[CausalLM]]] = {
    "LlamaForCausalLM": (LlamaConfig, Llama),
    "MistralForCausalLM": (LlamaConfig, Llama),
    "Qwen2ForCausalLM": (LlamaConfig, Llama),
    "Qwen3ForCausalLM": (LlamaConfig, Llama),
    "Gemma3ForCausalLM": (Gemma3Config, Gemma3),
}


def architecture_of(config: dict[str, Any], *, context: int | None = None) -> tuple[Any, type[CausalLM]]:
    """The model's shape (its config class's) and its class, for a ``config.json``'s contents; a
    ValueError names what maaskit loads when it knows none of the checkpoint's architectures."""
    names = config.get("architectures") or [config.get("model_type", "?")]
    for name in names:
        if name in ARCHITECTURES:
            shape, model = ARCHITECTURES[name]
            return shape.from_hf(config, context=context), model
    for shape, model in ARCHITECTURES.values():  # a config.json without architectures: its model_type
        if not config.get("architectures") and config.get("model_type") in shape.MODEL_TYPES:
            return shape.from_hf(config, context=context), model
    raise ValueError(f"architecture {', '.join(names)} is not one maaskit knows; it loads {', '.join(ARCHITECTURES)}")
