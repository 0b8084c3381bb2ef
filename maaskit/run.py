"""One ``fit()`` call as its callbacks see it: the :class:`Run` in progress, its :class:`History`, the
data it trains on (:class:`TrainingData`) and the events a :class:`Callback` hears. No loop here: the
loop is :mod:`maaskit.train`'s, the callbacks that ship with maaskit are :mod:`maaskit.callbacks`'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Protocol, overload, runtime_checkable

import torch
from torch import nn

from .scoring import Metric, Totals

__all__ = ["Callback", "History", "Run", "TrainingData"]


@runtime_checkable
class TrainingData(Protocol):
    """What ``fit()`` trains on: a :class:`maaskit.ImageDataset`, a :class:`maaskit.lm.TextDataset`,
    or anything else with these members.

    ``loader(split, batch_size=, augment=, device=, seed=, rank=, world_size=)`` gives batches of
    ``(inputs, labels)`` on the device, with ``len()``, a ``generator`` (its random state, for
    checkpoints) and a ``device``; ``unit`` names what a label counts (``"images"``, ``"tokens"``:
    the throughput column is ``<unit>_per_s``); ``metrics()`` says what to measure besides the loss."""

    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str: ...

    def loader(
        self,
        split: str = "train",
        *,
        batch_size: int = ...,
        augment: bool = ...,
        device: str | torch.device = ...,
        seed: int = ...,
        rank: int = ...,
        world_size: int = ...,
    ) -> Any: ...

    def metrics(self) -> Sequence[Metric]: ...


class History:
    """One record per epoch, read like a pandas DataFrame: ``len(history)`` is the number of epochs,
    ``history["val_acc"]`` that column as a list, iterating gives the column names; ``history[-1]``
    (or ``history.last``) is the last epoch's record.

    ``stopped`` says why training ended early (``"early stopping"``, ``"stop requested"``,
    ``"interrupted"``) or is ``None``. A record with ``complete=False`` is an epoch cut short.
    """

    # fit() records each epoch: epoch, step, train_loss, train_<metric> for each of the data's
    # metrics (train_acc; train_perplexity for text), <unit>_per_s (images_per_s, tokens_per_s),
    # wall_time, val_loss, val_<metric>, lr, complete

    def __init__(self, records: Sequence[dict] = ()):
        self.records = [dict(r) for r in records]
        self.stopped: str | None = None
        self.settings: dict = {}  # what fit() ran with: device, amp, channels_last, compile, ...

    def append(self, record: dict) -> None:
        self.records.append(record)

    @overload
    def __getitem__(self, key: str) -> list: ...
    @overload
    def __getitem__(self, key: int) -> dict: ...

    def __getitem__(self, key: str | int) -> list | dict:
        if isinstance(key, str):
            if not self.records or key not in self.records[0]:
                raise KeyError(f"{key!r}: the history has columns {', '.join(self.keys()) or '(none yet)'}")
            return [r[key] for r in self.records]
        return self.records[key]

    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, column: object) -> bool:
        return column in self.keys()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}

    def summary(self) -> str:
        """One line: epochs, steps, seconds, throughput in its unit, and why training stopped, if it did."""
        last = self.last
        rate = next((k for k in last if k.endswith("_per_s")), None)
        speed = f", {last[rate]:,.0f} {rate.removesuffix('_per_s')}/s" if rate else ""
        stopped = f" — stopped: {self.stopped}" if self.stopped else ""
        return f"{len(self)} epochs, {last.get('step', 0)} steps, {last.get('wall_time', 0.0):.1f} s{speed}{stopped}"

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.last.items())
        return (
            f"History({len(self.records)} epochs; last: {last}{'; stopped: ' + self.stopped if self.stopped else ''})"
        )


class Run:
    """What a callback sees of one ``fit()`` call while it runs."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data: TrainingData,
        device: torch.device,
        epochs: int,
        steps_per_epoch: int,
        batch_size: int,
    ):
        self.model, self.optimizer, self.scheduler, self.data = model, optimizer, scheduler, data
        self.device, self.epochs, self.steps_per_epoch, self.batch_size = device, epochs, steps_per_epoch, batch_size
        self.history = History()
        self.epoch = 0  # the epoch running now, from 1; after resuming, the last one saved
        self.step = 0  # optimizer steps since the start of training
        self.epoch_step = 0  # steps into the current epoch
        self.loss: torch.Tensor | None = None  # the last batch's loss, a tensor on the device
        self.output: torch.Tensor | None = None  # the last batch's logits
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the last (inputs, labels)
        self.val_loader: Any = None
        self.validation: dict[str, float] = {}  # the last validation pass: val_loss, val_<metric>
        self.autocast: Callable[[], Any] = nullcontext
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self.metrics = list(data.metrics())
        self.totals = Totals(self.metrics, device)  # this epoch's training sums, on the device
        self.unit = data.unit  # what a label counts: the throughput column is <unit>_per_s
        self._epoch_start = time.perf_counter()
        self._fit_start = time.perf_counter()
        self.elapsed_before = 0.0  # wall time of earlier (resumed) runs
        self.train_generator: torch.Generator | None = None
        self.settings: dict[str, Any] = {}  # what fit() runs with

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask training to end after the current batch. Safe to call from any thread."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def running_metrics(self) -> dict:
        """This epoch so far: mean loss, the metrics, throughput. Reads from the device: call it sparingly."""
        seconds = time.perf_counter() - self._epoch_start
        return {
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            **self.totals.read("train"),
            f"{self.unit}_per_s": self.totals.count / seconds if seconds > 0 else 0.0,
            "wall_time": self.elapsed_before + time.perf_counter() - self._fit_start,
        }

    def _reset_epoch(self):
        self.totals.reset()
        self.epoch_step = 0
        self._epoch_start = time.perf_counter()


class Callback:
    """Override the events you need. ``run`` is the :class:`Run` in progress.

    Callbacks are told of each event in ``order``, lowest first (ties: the order given to ``fit``);
    the :class:`Recorder` goes first so that the others see the epoch's record.
    """

    order: int = 0

    def on_fit_start(self, run: Run): ...
    def on_epoch_start(self, run: Run): ...
    def on_batch_start(self, run: Run): ...
    def on_batch_end(self, run: Run): ...
    def on_epoch_end(self, run: Run): ...
    def on_fit_end(self, run: Run): ...
