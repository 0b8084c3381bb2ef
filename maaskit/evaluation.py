"""How good is a trained classifier, and where does it fail?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .data import ImageDataset

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: np.ndarray  # confusion[true, predicted] = count
    per_class_accuracy: np.ndarray  # recall of each class
    predictions: np.ndarray
    labels: np.ndarray
    worst: np.ndarray  # indices of the examples with the highest loss, worst first
    classes: tuple[str, ...]

    def __repr__(self):
        weakest = int(np.argmin(self.per_class_accuracy))
        return (
            f"Evaluation(accuracy={self.accuracy:.2%}, loss={self.loss:.4f}, n={len(self.labels)}; "
            f"weakest class {self.classes[weakest]!r} at {self.per_class_accuracy[weakest]:.0%})"
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: ImageDataset,
    split: str = "test",
    *,
    batch_size: int = 512,
    worst: int = 16,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Loss, accuracy, confusion matrix, per-class accuracy and the worst-classified examples
    of ``model`` on one split of ``data`` (a :class:`maaskit.data.Dataset`)."""
    device = device or next(model.parameters()).device
    loader = data.loader(split, batch_size=batch_size, shuffle=False, device=device)
    was_training = model.training
    model.eval()
    losses, preds = [], []
    for xb, yb in loader:
        out = model(xb).float()
        losses.append(F.cross_entropy(out, yb, reduction="none"))
        preds.append(out.argmax(1))
    model.train(was_training)
    loss, pred, y = torch.cat(losses), torch.cat(preds), loader.y
    k = data.num_classes
    confusion = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    per_class = confusion.diag().double() / confusion.sum(1).clamp_min(1)
    order = torch.argsort(loss, descending=True)[:worst]
    return Evaluation(
        loss=loss.mean().item(),
        accuracy=(pred == y).double().mean().item(),
        confusion=confusion.cpu().numpy(),
        per_class_accuracy=per_class.cpu().numpy(),
        predictions=pred.cpu().numpy(),
        labels=y.cpu().numpy(),
        worst=order.cpu().numpy(),
        classes=data.classes,
    )
