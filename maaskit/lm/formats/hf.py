"""A Hugging Face checkpoint folder as a maaskit language model: read from disk, never unpickled.

A folder as ``save_pretrained`` or the Hub writes it: ``config.json`` (the architecture),
``model.safetensors`` or its shards with ``model.safetensors.index.json``, ``tokenizer.json``,
``tokenizer_config.json`` (special tokens, the chat template) and ``generation_config.json``
(the tokens that end a reply). Weights stream tensor by tensor into a model built without memory
of its own (the ``meta`` device), so a checkpoint never sits in memory twice. Where a file is a
link into the Hub cache's ``blobs/`` (named by its sha256), the hash is checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from ...artifact import MANIFEST, ArtifactError
from ..models.base import CausalLM
from ..models.registry import architecture_of
from .template import ChatTemplate

__all__ = ["HFModel", "check_hf", "is_huggingface_folder", "load_hf"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_huggingface_folder(directory: str | Path) -> bool:
    """A Hugging Face model folder (``config.json``, no maaskit manifest), as :func:`load_hf` reads it."""
    directory = Path(directory)
    return (directory / "config.json").is_file() and not (directory / MANIFEST).exists()


@dataclass
class HFModel:
    """A loaded checkpoint: the model, its tokenizer, how it formats a chat, and what ends a reply."""

    model: CausalLM
    tokenizer: Tokenizer
    template: ChatTemplate | None
    stop_tokens: tuple[int, ...]
    manifest: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [directory / s for s in shards]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise ArtifactError(f"{directory} has only pickled weights (.bin/.pt); maaskit reads safetensors only")
    raise ArtifactError(f"{directory} has no model.safetensors")


def _check_blob(path: Path) -> None:
    """A file the Hub cache stores as a link to ``blobs/<sha256>``: its content must hash to its name."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if target.parent.name != "blobs" or len(target.name) != 64:
        return
    digest = hashlib.sha256()
    with target.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != target.name:
        raise ArtifactError(f"{path} does not match its sha256 ({target.name[:12]}…): the download is damaged")


def _stream_weights(model: Any, files: list[Path], dtype: torch.dtype) -> None:
    """Each tensor read (memory-mapped), converted and assigned in place of a ``meta`` parameter."""
    from safetensors import safe_open

    wanted = {n for n, _ in model.named_parameters()}  # a tied head appears once, as the embedding
    seen: set[str] = set()
    for file in files:
        _check_blob(file)
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name not in wanted:
                    if name == "lm_head.weight" or name.endswith("rotary_emb.inv_freq"):
                        continue  # a tied head saved anyway; RoPE's table, which we compute
                    raise ArtifactError(f"{file.name} has {name!r}, which a {model.config.model_type} model lacks")
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name)
                tensor = f.get_tensor(name).to(dtype)
                setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))
                seen.add(name)
    missing = wanted - seen
    if missing:
        raise ArtifactError(f"the checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def _stop_tokens(directory: Path, tokenizer: Tokenizer, config: dict, tokenizer_config: dict) -> tuple[int, ...]:
    """What ends a reply: ``generation_config.json``'s ``eos_token_id`` (one or a list), else the
    config's, else the tokenizer config's end-of-sequence token."""
    for source in (_read_json(directory / "generation_config.json"), config):
        eos = source.get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    token = _token_text(tokenizer_config.get("eos_token"))
    found = tokenizer.token_to_id(token) if token else None
    return (found,) if found is not None else ()


def _token_text(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def check_hf(
    directory: str | Path, *, context: int | None = None
) -> tuple[Any, type[CausalLM], dict[str, Any], list[Path]]:
    """The shape of the model ``directory`` holds, its class (:mod:`.architectures`), its ``config.json``
    and its weight files, from the folder's description alone (no weights read); raises what
    :func:`load_hf` would about the folder."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    if not config:
        raise ArtifactError(f"{directory} has no config.json: not a Hugging Face model folder")
    try:
        shape, family = architecture_of(config, context=context)
    except (KeyError, ValueError) as err:
        raise ArtifactError(f"{directory}: {err}") from None
    files = _weight_files(directory)
    if not (directory / "tokenizer.json").is_file():
        raise ArtifactError(f"{directory} has no tokenizer.json (maaskit reads fast tokenizers only)")
    return shape, family, config, files


def load_hf(
    directory: str | Path, *, context: int | None = None, dtype: str | None = None, device: str | torch.device = "cpu"
) -> HFModel:
    """Load the checkpoint in ``directory``. ``context``: positions the cache holds (at most the model's
    own limit, which None keeps; a server passes its ``ServeConfig.context``); ``dtype``: "float32" or
    "bfloat16" (default: the checkpoint's own, and float32 for float16 checkpoints on a CPU)."""
    directory = Path(directory)
    shape, family, config, files = check_hf(directory, context=context)
    saved = config.get("torch_dtype") or config.get("dtype") or "float32"
    name = dtype or ("float32" if saved == "float16" and str(device) == "cpu" else saved)
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: use one of {', '.join(DTYPES)}")
    with torch.device("meta"):
        model = family(shape)
    _stream_weights(model, files, DTYPES[name])
    model.to(device)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    _check_blob(directory / "tokenizer.json")
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    template = ChatTemplate.from_tokenizer_config(tokenizer_config, directory)
    stops = _stop_tokens(directory, tokenizer, config, tokenizer_config)
    manifest = {
        "name": directory.name.lower().replace(" ", "-") or "hf-model",
        "task": "text-generation",
        "source": "huggingface",
        "architecture": model.maaskit_config,
        "context": model.context,
        "dtype": name,
        "tokenizer": {"file": "tokenizer.json", "end_of_text": stops[0] if stops else None, "stop_tokens": list(stops)},
        "chat_template": {"source": template.source, "special_tokens": template.special_tokens} if template else None,
    }
    return HFModel(model.eval(), tokenizer, template, stops, manifest)
