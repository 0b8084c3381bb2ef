"""What ``fit()`` measures besides the loss, chosen by the task: accuracy for a classifier,
perplexity (and next-token accuracy) for a language model. The data says which
(``data.metrics()``); each metric is a small object, so a new task brings its own.

Sums stay on the device during an epoch (:class:`Totals`) and are read in one transfer at its end,
or when a dashboard asks a few times a second, so no training step waits for the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["IGNORE", "Accuracy", "Metric", "Perplexity", "Totals"]

# A label that is not scored: no loss, no metric (PyTorch's cross_entropy ignores it by default). Fine-tuning
# a chat model labels every token that is not the assistant's with it.
IGNORE = -100


class Metric:
    """A number recorded per epoch as ``train_<name>`` and ``val_<name>``."""

    name: str = ""
    higher_is_better: bool = True

    def batch_total(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """This batch's contribution, summed over its labels, on the device (None: derived from the loss)."""
        return None

    def value(self, total: float, count: int, mean_loss: float) -> float:
        """The epoch's value from the summed totals, the number of labels and the mean loss."""
        raise NotImplementedError


class Accuracy(Metric):
    """The share of labels (images, or next tokens) whose highest score is the right one."""

    name = "acc"

    def batch_total(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (output.argmax(-1) == labels).sum()

    def value(self, total: float, count: int, mean_loss: float) -> float:
        return total / max(count, 1)


class Perplexity(Metric):
    """``exp`` of the mean cross-entropy per token: the number of equally likely tokens the model
    is as unsure as."""

    name = "perplexity"
    higher_is_better = False

    def value(self, total: float, count: int, mean_loss: float) -> float:
        return math.exp(min(mean_loss, 700.0))  # beyond that exp overflows a float


class Totals:
    """Summed loss, metric totals and the number of labels of one pass over a split; labels equal to
    :data:`IGNORE` are seen (``count``, for throughput) but not scored."""

    def __init__(self, metrics: Sequence[Metric], device: torch.device | str):
        self.metrics = list(metrics)
        # the loss, then each metric, then the labels scored (counted on the device: no sync)
        self.sums = torch.zeros(2 + len(self.metrics), device=device)
        self.count = 0  # labels seen: a shape, known on the host

    def add(self, loss_sum: torch.Tensor, output: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``loss_sum`` is its loss summed over its scored labels. Stays on the device."""
        self.sums[0] += loss_sum.detach().float()
        for i, metric in enumerate(self.metrics, 1):
            total = metric.batch_total(output, labels)
            if total is not None:
                self.sums[i] += total
        self.sums[-1] += (labels != IGNORE).sum()
        self.count += labels.numel()

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0

    def all_reduce(self) -> None:
        """Sum over the data-parallel ranks (one collective)."""
        import torch.distributed as dist

        both = torch.cat([self.sums, torch.tensor([float(self.count)], device=self.sums.device)])
        dist.all_reduce(both)
        self.sums.copy_(both[:-1])
        self.count = round(both[-1].item())

    def read(self, prefix: str) -> dict[str, float]:
        """``{prefix_loss: ..., prefix_<metric>: ...}``: one transfer from the device."""
        *sums, scored = self.sums.tolist()
        mean_loss = sums[0] / max(scored, 1)
        record = {f"{prefix}_loss": mean_loss}
        for metric, total in zip(self.metrics, sums[1:]):
            record[f"{prefix}_{metric.name}"] = metric.value(total, int(scored), mean_loss)
        return record
