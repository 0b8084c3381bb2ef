"""The tutorial-style training loop, kept as the baseline maaskit is measured against.

This is how the PyTorch tutorials train: a ``Dataset`` that converts and normalizes one
image at a time on the CPU, a ``DataLoader`` that collates them, a copy to the device per
batch, and ``loss.item()`` every step. Notebook 04 and ``benchmarks/`` time it beside
:func:`maaskit.train.fit`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["PerItemDataset", "tutorial_epoch"]


class PerItemDataset(Dataset):
    """One uint8 image at a time, scaled and normalized on the CPU (what ``ToTensor`` + ``Normalize`` do)."""

    def __init__(self, split, mean, std):
        self.x, self.y = split.x, split.y
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i].float() / 255 - self.mean) / self.std, self.y[i]


def tutorial_epoch(model, split, *, mean, std, batch_size: int = 4, lr: float = 1e-3, device="cpu",
                   max_batches: int | None = None) -> dict:
    """Train ``model`` for one epoch (or ``max_batches``) the tutorial way; returns images/s and the mean loss."""
    loader = DataLoader(PerItemDataset(split, mean, std), batch_size=batch_size, shuffle=True)
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
