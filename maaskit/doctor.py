"""``maaskit doctor``: what this environment has, for bug reports and class set-up checks."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from .data import cache_dir

__all__ = ["report"]

_PACKAGES = (
    "maaskit",
    "torch",
    "torchvision",
    "numpy",
    "matplotlib",
    "scikit-learn",
    "ipywidgets",
    "jupyterlab",
    "ipykernel",
    "papermill",
    "nbval",
)
_WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[tuple[str, str]]:
    rows = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}"))
    else:
        built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        rows.append(("cuda", f"not available ({built})"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    rows.append(("cpu", f"{platform.machine()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"))
    return rows


def _widgets_extension() -> str:
    """Whether JupyterLab will find the ipywidgets front end (a prebuilt lab extension)."""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return "unknown (jupyter_core not installed)"
    for base in jupyter_path("labextensions"):
        if (Path(base) / _WIDGETS_EXTENSION / "package.json").is_file():
            return f"installed ({Path(base) / _WIDGETS_EXTENSION})"
    return "NOT installed: widgets will show as text; install ipywidgets into the JupyterLab environment"


def _datasets() -> str:
    root = cache_dir()
    if not root.is_dir():
        return f"{root} (empty; digits ships with scikit-learn and needs no download)"
    # the folders torchvision creates under the cache for each downloadable dataset
    folders = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}
    present = [name for name, folder in folders.items() if (root / folder).exists()]
    return f"{root} (found: {', '.join(present) or 'none'})"


def report() -> list[tuple[str, str]]:
    """The doctor's findings as (item, finding) pairs."""
    rows = [("python", f"{sys.version.split()[0]} ({sys.executable})"), ("platform", platform.platform())]
    rows += [(name, _version(name)) for name in _PACKAGES]
    rows += _devices()
    rows.append(("widgets extension", _widgets_extension()))
    rows.append(("dataset cache", _datasets()))
    return rows
