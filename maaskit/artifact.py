"""A trained model on disk: ``model.safetensors`` plus ``manifest.json``. Never pickle.

The manifest says how to rebuild the network from maaskit's registry (architecture name
and arguments), what goes in and comes out (tensor names, datatypes, shapes with -1 for
the batch), the class labels, the input normalization, the versions it was made with,
and the sha256 of the weights, which loading checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._version import __version__
from .models import rebuild
from .normalization import Normalization

if TYPE_CHECKING:
    from .data import ImageDataset

__all__ = ["ArtifactError", "FORMAT", "load_artifact", "make_manifest", "replacing", "save_artifact", "write_artifact"]

FORMAT = "maaskit-artifact/1"
WEIGHTS, MANIFEST = "model.safetensors", "manifest.json"


class ArtifactError(ValueError):
    """A directory that is not a usable maaskit artifact: missing, tampered with, or unknown."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _labels_and_normalization(
    data: ImageDataset | None, classes: Sequence[str] | None, normalization: Normalization | None
) -> tuple[list[str], Normalization]:
    if data is not None:
        return list(data.classes), data.normalization
    if classes is None or normalization is None:
        raise TypeError(
            "say what the model was trained on: pass the ImageDataset (data=...), "
            "or both classes=[...] and normalization=Normalization(...)"
        )
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a list of labels, got {type(classes).__name__}")
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a maaskit.Normalization, got {type(normalization).__name__}")
    return [str(c) for c in classes], normalization


def make_manifest(
    model: torch.nn.Module,
    data: ImageDataset | None = None,
    *,
    classes: Sequence[str] | None = None,
    normalization: Normalization | None = None,
    name: str | None = None,
    metrics: dict | None = None,
) -> dict[str, Any]:
    """The manifest of ``model`` (built by :func:`maaskit.build_model`), without the weights' hash.

    Class labels and normalization come from ``data``, the dataset it was trained on, or are
    given as ``classes`` and ``normalization``."""
    labels, norm = _labels_and_normalization(data, classes, normalization)
    config = getattr(model, "maaskit_config", None)
    if config is None:
        raise ArtifactError("a served or saved model must come from maaskit.build_model (it records how to rebuild it)")
    c, h, w = config["in_shape"]
    manifest = {
        "format": FORMAT,
        "name": name or f"{config['name']}",
        "architecture": {**config, "kwargs": json.loads(json.dumps(config["kwargs"]))},  # tuples -> lists
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, config["num_classes"]]}],
        "classes": labels,
        "normalization": norm.as_manifest(),
        "versions": made_with(),
        "metrics": metrics or {},
    }
    if len(manifest["classes"]) != config["num_classes"]:
        raise ArtifactError(f"{len(manifest['classes'])} class labels for a model with {config['num_classes']} outputs")
    return manifest


def made_with() -> dict[str, str]:
    return {"maaskit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def write_artifact(model: torch.nn.Module, directory: str | Path, manifest: dict) -> Path:
    """The weights as safetensors and the manifest, with the weights' hash, in ``directory``."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))  # tied weights (a GPT's head) are stored once
    manifest["weights"] = {"file": WEIGHTS, "sha256": sha256_of(directory / WEIGHTS)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


@contextmanager
def replacing(directory: str | Path) -> Iterator[Path]:
    """A new directory to write an artifact into; on success it takes ``directory``'s place in one
    step (the old one moved aside, then deleted), so a reader never finds a half-written artifact: a
    notebook that reads the model another one is saving again sees the old or the new, never a mix."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's is private; an artifact directory is not
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = staging.with_name(staging.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def save_artifact(
    model: torch.nn.Module,
    directory: str | Path,
    data: ImageDataset | None = None,
    *,
    classes: Sequence[str] | None = None,
    normalization: Normalization | None = None,
    name: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``model`` (built by :func:`maaskit.build_model`) and what it was trained on (``data``, or
    ``classes`` and ``normalization``) to ``directory``; returns the path."""
    manifest = make_manifest(model, data, classes=classes, normalization=normalization, name=name, metrics=metrics)
    with replacing(directory) as staging:
        write_artifact(model, staging, manifest)
    return Path(directory)


def check_file(path: Path, sha256: str) -> None:
    """An ArtifactError unless ``path`` exists and has the hash its manifest recorded."""
    if not path.is_file():
        raise ArtifactError(f"{path.parent} is not a complete maaskit artifact: {path.name} is missing")
    actual = sha256_of(path)
    if actual != sha256:
        raise ArtifactError(
            f"{path} does not match its manifest (sha256 {actual[:12]}… , "
            f"expected {sha256[:12]}…): the file was changed or corrupted"
        )


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an artifact directory ({} where there is none to read: loading says why)."""
    try:
        return json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def load_artifact(directory: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from ``directory`` after checking its weights' hash; returns (model, manifest).
    Language models (maaskit's own and Hugging Face folders) load with ``maaskit.lm.load_language_model``,
    which checks their tokenizer too."""
    from safetensors.torch import load_model

    directory = Path(directory)
    for f in (MANIFEST, WEIGHTS):
        if not (directory / f).is_file():
            raise ArtifactError(
                f"{directory} is not a maaskit artifact: {f} is missing"
                + (
                    "; a model folder of another kind (a language model's) loads with maaskit.lm"
                    if f == MANIFEST
                    else ""
                )
            )
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{directory / MANIFEST} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory} has format {manifest.get('format')!r}; this maaskit reads {FORMAT!r}")
    for part in ("weights", "tokenizer"):  # a language model's tokenizer is checked as its weights are
        if part in manifest:
            check_file(directory / manifest[part]["file"], manifest[part]["sha256"])
    try:
        model = rebuild(manifest["architecture"])
    except ValueError as err:
        raise ArtifactError(str(err)) from None
    load_model(model, str(directory / WEIGHTS))
    return model.to(device).eval(), manifest
