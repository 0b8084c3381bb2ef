"""maaskit: notebooks and widgets for learning and practising models as a service.

The flat API — ``maaskit.fit``, ``maaskit.load_dataset``, ``maaskit.serve``, ``maaskit.Client`` … —
is imported on first use (PEP 562), so ``import maaskit`` is quick and the client and the
protocol never pull in PyTorch. No module of the package imports this one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "load_dataset": "data",
    "ImageDataset": "data",
    "Split": "data",
    "Normalization": "normalization",
    "pick_device": "device",
    "seed_everything": "device",
    "build_model": "models",
    "summary": "models",
    "fit": "train",
    "Callback": "train",
    "History": "train",
    "EarlyStopping": "train",
    "Checkpoint": "train",
    "PrintProgress": "train",
    "evaluate": "evaluation",
    "Recipe": "recipes",
    "default_recipe": "recipes",
    "load_or_train": "recipes",
    "save_artifact": "serving.artifact",
    "load_artifact": "serving.artifact",
    "serve": "serving.runner",
    "Client": "serving.client",
    "load_test": "serving.client",
    "publish_metrics": "report",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .data import ImageDataset, Split, load_dataset
    from .device import pick_device, seed_everything
    from .evaluation import evaluate
    from .models import build_model, summary
    from .normalization import Normalization
    from .recipes import Recipe, default_recipe, load_or_train
    from .report import publish_metrics
    from .serving.artifact import load_artifact, save_artifact
    from .serving.client import Client, load_test
    from .serving.runner import serve
    from .train import Callback, Checkpoint, EarlyStopping, History, PrintProgress, fit


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maaskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
