"""The callbacks that ship with maaskit: the :class:`Recorder` ``fit`` always adds, progress lines for
scripts, and early stopping. (Checkpoints are :mod:`maaskit.checkpoint`'s; widgets are callbacks too.)"""

from __future__ import annotations

from typing import TextIO

import torch

from . import distributed
from .run import Callback, Run
from .scoring import IGNORE, Metric

__all__ = ["EarlyStopping", "PrintProgress", "Recorder"]


class Recorder(Callback):
    """Keeps the epoch's running loss and metrics on the device and, at its end, appends the record
    (with ``fit``'s validation pass) to ``run.history``. ``fit`` always adds one (fastai's Recorder
    idea); it goes first, so the other callbacks see the record."""

    order = -100

    def on_epoch_start(self, run: Run) -> None:
        run._reset_epoch()

    def on_batch_end(self, run: Run) -> None:
        assert run.batch is not None and run.loss is not None and run.output is not None
        labels = run.batch[1]  # one per image, or one per token (B x T) for a language model
        scored = (labels != IGNORE).sum()  # all of them, unless a fine-tuning mask ignores some
        run.totals.add(run.loss * scored, run.output, labels)  # stays on the device: no sync

    def on_epoch_end(self, run: Run) -> None:
        if distributed.world_size() > 1:
            run.totals.all_reduce()  # every rank records the same, global, numbers
        record = run.running_metrics()  # the one read from the device this epoch
        record.pop("epoch_step")
        record.update(run.validation)
        record["lr"] = run.optimizer.param_groups[0]["lr"]
        record["complete"] = run.epoch_step == run.steps_per_epoch
        run.history.append(record)


class PrintProgress(Callback):
    """One line per epoch: for scripts, the CLI and headless runs."""

    def __init__(self, file: TextIO | None = None):
        self.file = file

    def on_epoch_end(self, run: Run) -> None:
        r = run.history.last
        metrics = "  ".join(_shown(m, r, "train") for m in run.metrics)
        val = "  ".join(_shown(m, r, "val") for m in run.metrics)
        print(
            f"epoch {r['epoch']:>3}/{run.epochs}  train loss {r['train_loss']:.4f} {metrics}  "
            f"val loss {r['val_loss']:.4f} {val}  {r[run.unit + '_per_s']:,.0f} {run.unit}/s",
            file=self.file,
            flush=True,
        )

    def on_fit_end(self, run: Run) -> None:
        if run.stop_reason:
            print(f"stopped after epoch {run.epoch}: {run.stop_reason}", file=self.file, flush=True)


def _shown(metric: Metric, record: dict, prefix: str) -> str:
    value = record[f"{prefix}_{metric.name}"]
    return f"{metric.name} {value:.2%}" if metric.name == "acc" else f"{metric.name} {value:.1f}"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; put the best weights back."""

    _MONITORABLE = tuple(f"{split}_{m}" for split in ("train", "val") for m in ("loss", "acc", "perplexity"))

    def __init__(self, patience: int = 5, monitor: str = "val_loss", mode: str = "auto", restore_best: bool = True):
        if monitor not in self._MONITORABLE:
            raise ValueError(f"EarlyStopping cannot monitor {monitor!r}: fit() records {', '.join(self._MONITORABLE)}")
        if mode == "auto":  # losses and perplexities should fall, accuracies rise
            mode = "max" if monitor.endswith("acc") else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a whole number of epochs, at least 1, got {patience!r}")
        self.patience, self.monitor, self.mode, self.restore_best = patience, monitor, mode, restore_best
        self.best: float | None = None
        self.best_epoch, self.waited = 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, run: Run) -> None:
        value = run.history.last[self.monitor]
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.best_epoch, self.waited = value, run.epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            self.waited += 1
            if self.waited >= self.patience:
                run.request_stop("early stopping")

    def on_fit_end(self, run: Run) -> None:
        if self.restore_best and self.best_state is not None and run.stop_reason == "early stopping":
            run.model.load_state_dict(self.best_state)
