"""Choosing where tensors live, and making runs repeatable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["DeviceNotAvailableError", "available_devices", "pick_device", "seed_everything"]

_KINDS = ("auto", "cpu", "cuda", "mps")


class DeviceNotAvailableError(RuntimeError):
    """An explicitly requested device is not present on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, fastest first, e.g. ``["cuda:0", "cpu"]``."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def pick_device(spec: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` to a ``torch.device``.

    ``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Asking for a device
    that is not here raises :class:`DeviceNotAvailableError` naming those that are,
    rather than failing later inside the first kernel launch.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string or torch.device, got {type(spec).__name__}")
    spec = spec.strip().lower()
    kind, _, index = spec.partition(":")
    if kind not in _KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {spec!r}; expected one of {', '.join(_KINDS)} or 'cuda:N'")

    if kind == "auto":
        return torch.device(available_devices()[0])
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps" and not _mps_available():
        raise DeviceNotAvailableError(
            f"device 'mps' is not available here; available: {', '.join(available_devices())}"
        )
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            why = "no CUDA GPU was found" if count == 0 else f"only {count} CUDA device(s) found"
            raise DeviceNotAvailableError(
                f"device {spec!r} is not available: {why}; available: {', '.join(available_devices())}. "
                "Use device='auto' to fall back to the CPU."
            )
    return torch.device(spec)


def seed_everything(seed: int = 0, *, deterministic: bool = False) -> int:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated.

    On the CPU this alone makes training bitwise repeatable. ``deterministic=True``
    also asks PyTorch for deterministic GPU kernels, which are slower and raise on
    operations that have none.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA and MPS device
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    return seed
