"""The tutorial-style training loop, kept as the baseline maaskit is measured against.

This is how the PyTorch tutorials train: a ``Dataset`` that converts and normalizes one
image at a time on the CPU, a ``DataLoader`` that collates them, a copy to the device per
batch, and ``loss.item()`` every step. Notebook 04 and ``benchmarks/`` time it beside
:func:`maaskit.fit` with the two helpers at the bottom.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import ImageDataset, Split
from .device import seed_everything
from .models import build_model
from .normalization import Normalization
from .run import Callback
from .train import fit

__all__ = ["PerItemDataset", "fit_images_per_s", "tutorial_epoch", "tutorial_images_per_s"]


class PerItemDataset(torch.utils.data.Dataset):
    """One uint8 image at a time, scaled and normalized on the CPU (what ``ToTensor`` + ``Normalize`` do)."""

    def __init__(self, split: Split, normalization: Normalization):
        self.x, self.y = split.x, split.y
        scale, shift = normalization.scale_shift()
        self.scale, self.shift = scale[0], shift[0]  # C x 1 x 1: the same numbers as training uses

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.addcmul(self.shift, self.x[i].float(), self.scale), self.y[i]


def tutorial_epoch(
    model: torch.nn.Module,
    split: Split,
    normalization: Normalization,
    *,
    batch_size: int = 4,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
) -> dict:
    """Train ``model`` for one epoch (or ``max_batches``) the tutorial way; returns images/s and the mean loss."""
    loader = DataLoader(PerItemDataset(split, normalization), batch_size=batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.to(device).train()
    seen, steps, running = 0, 0, 0.0
    start = time.perf_counter()
    for x, y in loader:
        if max_batches is not None and steps >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        running += loss.item()  # the per-step host sync the tutorials do
        seen += len(y)
        steps += 1
    seconds = time.perf_counter() - start
    return {"images_per_s": seen / seconds, "seconds": seconds, "images": seen, "loss": running / max(steps, 1)}


def fit_images_per_s(
    data: ImageDataset,
    *,
    model: str = "lenet",
    device: str | torch.device = "auto",
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    **fit_kwargs: Any,
) -> float:
    """Median images/s of :func:`maaskit.fit` (SGD, lr 0.01) over the epochs after the first, which warms up."""
    if epochs < 2:
        raise ValueError("fit_images_per_s needs at least 2 epochs: the first one only warms up")
    seed_everything(seed)
    net = build_model(model, data.in_shape, data.num_classes)
    run: dict[str, Any] = {
        "optimizer": "sgd",
        "lr": 0.01,
        "epochs": epochs,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
    }
    history = fit(net, data, callbacks=callbacks, **run, **fit_kwargs)
    return statistics.median(history["images_per_s"][1:])


def tutorial_images_per_s(
    data: ImageDataset,
    *,
    model: str = "lenet",
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    max_batches: int | None = 150,
    repeats: int = 1,
    seed: int = 0,
) -> float:
    """Median images/s of :func:`tutorial_epoch` over ``repeats`` runs (after one warm-up run when repeating)."""
    rates = []
    for _ in range(repeats + (repeats > 1)):
        seed_everything(seed)
        net = build_model(model, data.in_shape, data.num_classes)
        rates.append(
            tutorial_epoch(
                net, data.train, data.normalization, batch_size=batch_size, device=device, max_batches=max_batches
            )["images_per_s"]
        )
    return statistics.median(rates[1:] if repeats > 1 else rates)
