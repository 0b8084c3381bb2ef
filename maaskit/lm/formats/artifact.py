"""A language model on disk: the weights and manifest of any maaskit artifact, plus
``tokenizer.json``, which the manifest lists with its hash (loading checks both).

The manifest says ``"task": "text-generation"``; its input is token ids and its output the
next-token logits, and it records the context length and the end-of-text token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ...artifact import FORMAT, ArtifactError, load_artifact, made_with, replacing, sha256_of, write_artifact
from ..models.base import CausalLM
from ..models.gpt import GPT
from .chat import CHAT_TOKENS, ChatFormat
from .tokenizer import ENDOFTEXT

__all__ = ["TASK", "TOKENIZER", "language_model_manifest", "load_language_model", "save_language_model"]

TASK, TOKENIZER = "text-generation", "tokenizer.json"


def language_model_manifest(
    model: GPT, tokenizer: Tokenizer, *, name: str = "gpt", metrics: dict | None = None
) -> dict:
    """The manifest of ``model`` and its ``tokenizer`` (without the files' hashes)."""
    if not isinstance(model, GPT):
        raise ArtifactError(f"a language model artifact holds a maaskit.lm.GPT, got {type(model).__name__}")
    end = tokenizer.token_to_id(ENDOFTEXT)
    if end is None:
        raise ArtifactError(f"the tokenizer has no {ENDOFTEXT} token (train it with maaskit.lm.train_tokenizer)")
    if tokenizer.get_vocab_size() != model.vocab_size:
        raise ArtifactError(f"a tokenizer of {tokenizer.get_vocab_size()} tokens for a model of {model.vocab_size}")
    return {
        "format": FORMAT,
        "name": name,
        "task": TASK,
        "architecture": model.maaskit_config,
        "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, model.vocab_size]}],
        "context": model.context,
        "tokenizer": {"file": TOKENIZER, "end_of_text": end, **_chat_tokens(tokenizer)},
        "versions": made_with(),
        "metrics": metrics or {},
    }


def _chat_tokens(tokenizer: Tokenizer) -> dict:
    """A fine-tuned model's chat tokens and their ids (what the served chat format uses), if it has them."""
    if not ChatFormat.supports(tokenizer):
        return {}
    return {"chat_format": "maaskit-chat-1", "chat_tokens": {t: tokenizer.token_to_id(t) for t in CHAT_TOKENS}}


def save_language_model(
    model: GPT, tokenizer: Tokenizer, directory: str | Path, *, name: str = "gpt", metrics: dict | None = None
) -> Path:
    """Write ``model`` (a :class:`GPT`) and its ``tokenizer`` to ``directory``."""
    manifest: dict[str, Any] = language_model_manifest(model, tokenizer, name=name, metrics=metrics)
    with replacing(directory) as staging:  # written whole, then put in place: never read half-written
        tokenizer.save(str(staging / TOKENIZER))
        manifest["tokenizer"]["sha256"] = sha256_of(staging / TOKENIZER)
        write_artifact(model, staging, manifest)
    return Path(directory)


def load_language_model(
    directory: str | Path, *, device: str = "cpu", context: int | None = None
) -> tuple[CausalLM, Tokenizer, dict]:
    """``(model, tokenizer, manifest)`` from a directory ``save_language_model`` wrote (hashes checked),
    or from a Hugging Face model folder (see :mod:`maaskit.lm.formats.hf`; ``context``: the positions its
    cache holds)."""
    from .hf import is_huggingface_folder, load_hf

    if is_huggingface_folder(directory):
        hf = load_hf(directory, device=device, context=context)
        return hf.model, hf.tokenizer, hf.manifest
    model, manifest = load_artifact(directory, device=device)
    if manifest.get("task") != TASK:
        raise ArtifactError(
            f"{directory} holds a {manifest.get('task', 'image classification')} model, not a language model"
        )
    assert isinstance(model, CausalLM)
    return model, Tokenizer.from_file(str(Path(directory) / TOKENIZER)), manifest
