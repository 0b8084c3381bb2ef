"""``fit()``: the training loop in its steps (set up, train an epoch, validate it), its events, and
the callbacks that ship with maaskit.

The loop has no UI. It tells callbacks what happens (fit, epoch and batch start and end);
a widget is one such callback. The loss and the data's metrics (:mod:`maaskit.scoring`: accuracy,
perplexity) accumulate in tensors on the device and are read back once per epoch, or when a
callback asks (a dashboard, a few times a second), so a step never waits for the host; under
DDP the ranks agree on stopping every ``STOP_CHECK_EVERY`` steps, not every step.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol, TextIO, overload, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .device import pick_device, seed_everything
from .scoring import IGNORE, Metric, Totals

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "PrintProgress",
    "Recorder",
    "Run",
    "TrainingData",
    "fit",
]


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


# name -> (optimizer class, its fixed keywords, the weight decay `weight_decay=None` means)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any], float]] = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9}, 0.0),
    "adam": (torch.optim.Adam, {}, 0.0),
    "adamw": (torch.optim.AdamW, {}, 0.01),
    "rmsprop": (torch.optim.RMSprop, {}, 0.0),
}
SCHEDULERS = {
    "cosine": lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    "onecycle": lambda opt, steps: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps
    ),
}


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


class Checkpoint(Callback):
    """After every ``every`` epochs, save what resuming needs into ``directory``.

    ``model.safetensors`` (weights), ``optimizer.safetensors`` (optimizer tensors and random
    number generator states) and ``state.json`` (epoch, step, hyper-parameters, scheduler,
    history). Nothing is pickled. Resume with ``fit(..., resume_from=directory)``.
    """

    def __init__(self, directory: str | Path, every: int = 1):
        self.directory, self.every = Path(directory), every

    def on_epoch_end(self, run: Run) -> None:
        if run.epoch % self.every == 0 or run.epoch == run.epochs or run.stop_requested:
            save_checkpoint(run, self.directory)


def save_checkpoint(run: Run, directory: str | Path) -> Path:
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(run.model, str(directory / "model.safetensors"))  # tied weights (a GPT's head) stored once
    opt_state = run.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(pid), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if run.train_generator is not None:
        tensors["rng.loader"] = run.train_generator.get_state().cpu()
    if run.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    save_file(tensors, directory / "optimizer.safetensors")
    state = {
        "epoch": run.epoch,
        "step": run.step,
        "wall_time": run.running_metrics()["wall_time"],
        "optimizer": {"param_groups": opt_state["param_groups"], "state": plain},
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "history": run.history.records,
    }
    (directory / "state.json").write_text(json.dumps(state, indent=1, default=_json_default))
    return directory


def _json_default(value):
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} in a checkpoint's state.json")


def load_checkpoint(run: Run, directory: str | Path) -> None:
    from safetensors.torch import load_file, load_model

    directory = Path(directory)
    missing = [f for f in ("model.safetensors", "optimizer.safetensors", "state.json") if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a maaskit checkpoint: missing {', '.join(missing)}")
    state = json.loads((directory / "state.json").read_text())
    load_model(run.model, str(directory / "model.safetensors"), device=str(run.device))
    tensors = load_file(directory / "optimizer.safetensors")
    opt_state = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    for pid, plain in state["optimizer"]["state"].items():
        opt_state["state"].setdefault(int(pid), {}).update(plain)
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[key] = value
    run.optimizer.load_state_dict(opt_state)
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.loader" in tensors and run.train_generator is not None:
        run.train_generator.set_state(tensors["rng.loader"])  # a CPU byte tensor, for any device
    if "rng.cuda" in tensors and run.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], run.device)
    run.epoch, run.step, run.elapsed_before = state["epoch"], state["step"], state["wall_time"]
    run.history = History(state["history"])
    run.history.settings = getattr(run, "settings", {})


def build_optimizer(
    optimizer: str | torch.optim.Optimizer | Callable, model: nn.Module, lr: float, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``fit`` steps. By name, weight decay applies only to weights of two or more
    dimensions (matrices, kernels, embeddings), as in nanoGPT: biases and normalization gains are
    not pulled to zero. ``weight_decay=None`` is the optimizer's default here (0.01 for AdamW, else 0)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(model.parameters())
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}, "
            "a torch.optim.Optimizer or a function of the parameters"
        )
    cls, fixed, default_decay = OPTIMIZERS[optimizer]
    decay = default_decay if weight_decay is None else weight_decay
    if decay < 0:
        raise ValueError(f"weight_decay must be 0 or more, got {decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight is one parameter
    matrices, others = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}]
    return cls([g for g in groups if g["params"]], lr=lr, **fixed)


def _make_scheduler(scheduler, optimizer, total_steps):
    if scheduler is None:
        return None
    if callable(scheduler):
        return scheduler(optimizer, total_steps)
    if scheduler not in SCHEDULERS:
        raise ValueError(
            f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULERS)}, "
            "None, or a function (optimizer, total_steps) -> scheduler"
        )
    return SCHEDULERS[scheduler](optimizer, total_steps)


@contextmanager
def _graceful_interrupt(run: Run):
    """In the main thread, the first Ctrl-C (or Jupyter's interrupt) finishes the current batch
    and stops; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if run.stop_requested:
            raise KeyboardInterrupt
        run.request_stop("interrupted")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@torch.no_grad()
def validate_epoch(run: Run) -> dict[str, float]:
    """One pass over the validation split: ``{"val_loss": ..., "val_<metric>": ...}``, read once."""
    model, was_training = run.model, run.model.training
    model.eval()
    totals = Totals(run.metrics, run.val_loader.device)
    for xb, yb in run.val_loader:
        with run.autocast():
            out = model(xb)
        totals.add(_loss(out, yb, reduction="sum"), out, yb)
    model.train(was_training)
    return totals.read("val")


def _loss(out: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits N x classes against N labels, or of B x T x vocab against B x T
    next tokens (a language model: every position predicts the token after it). Labels equal to
    :data:`~maaskit.scoring.IGNORE` do not count (every fine-tuning row holds some that do)."""
    return F.cross_entropy(out.float().flatten(0, -2), labels.flatten(), reduction=reduction, ignore_index=IGNORE)


# Under DDP the ranks agree on stopping every this many steps (and at each epoch's end): reading the
# agreed flag waits for the device, so doing it every step would put a host sync in every step.
STOP_CHECK_EVERY = 16


def _agree_on_stopping(run: Run) -> None:
    """A stop on any rank (rank 0's callbacks, Ctrl-C) stops all ranks after this same step:
    DDP needs every rank in every step. One tiny all-reduce, called at the same steps on every rank."""
    import torch.distributed as dist

    flag = torch.tensor([float(run.stop_requested)], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not run.stop_requested:
        run.request_stop("stop requested on another rank")


def _check_inputs(model: Any, data: Any, epochs: Any, batch_size: Any, lr: Any, callbacks: Any) -> None:
    """Mistakes that would otherwise surface an epoch later, or as an AttributeError deep inside."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit() trains a torch.nn.Module (e.g. from maaskit.build_model), got {type(model).__name__}")
    if isinstance(data, str):
        raise TypeError(f"fit() takes the data, not its name: pass maaskit.load_dataset({data!r})")
    if not isinstance(data, TrainingData):
        hint = (
            " (a torch.utils.data.Dataset holds one example at a time; maaskit keeps whole splits on the device)"
            if isinstance(data, torch.utils.data.Dataset)
            else ""
        )
        raise TypeError(
            f"fit() needs a maaskit ImageDataset from maaskit.load_dataset(...), a maaskit.lm.TextDataset, "
            f"or data with name, unit, loader() and metrics(); got {type(data).__name__}{hint}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    for cb in callbacks:
        if isinstance(cb, type):
            raise TypeError(f"callbacks takes instances: write {cb.__name__}(), not {cb.__name__}")
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be maaskit.Callback instances, got {type(cb).__name__}")


class _Fit:
    """One ``fit()`` call in its steps, after :func:`_set_up`: per epoch :meth:`train_epoch` and
    :func:`validate_epoch`, each telling the callbacks what happens."""

    def __init__(self, run: Run, net: Callable[..., torch.Tensor], loader: Any, callbacks: list[Callback]):
        self.run, self.net, self.loader, self.callbacks = run, net, loader, callbacks
        self.ranks = distributed.world_size()

    def fire(self, event: str) -> None:
        for cb in self.callbacks:
            try:
                getattr(cb, event)(self.run)
            except Exception as err:
                if hasattr(err, "add_note"):  # Python 3.11+: shown under the traceback, the type unchanged
                    err.add_note(f"(raised in callback {type(cb).__name__}.{event})")
                raise

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        run = self.run
        grad_clip = run.settings["grad_clip"]
        if run.settings["channels_last"]:
            xb = xb.contiguous(memory_format=torch.channels_last)
        run.batch = (xb, yb)
        self.fire("on_batch_start")
        with run.autocast():
            out = self.net(xb)
        loss = _loss(out, yb)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
        run.optimizer.step()
        if run.scheduler is not None:
            run.scheduler.step()
        run.loss, run.output = loss.detach(), out.detach()
        run.step += 1
        run.epoch_step += 1
        self.fire("on_batch_end")

    def train_epoch(self) -> None:
        run = self.run
        self.fire("on_epoch_start")
        for xb, yb in self.loader:
            self.train_step(xb, yb)
            if self.ranks > 1:  # every rank must run every step: stop only where all ranks compare notes
                if run.step % STOP_CHECK_EVERY:
                    continue
                _agree_on_stopping(run)
            if run.stop_requested:
                break

    def run_epochs(self) -> None:
        run = self.run
        for epoch in range(run.epoch + 1, run.epochs + 1):
            if run.stop_requested:
                break
            run.epoch = epoch
            self.train_epoch()
            run.validation = validate_epoch(run)
            self.fire("on_epoch_end")
            if self.ranks > 1:  # one agreement for a stop since the last check, early stopping and checkpoints
                _agree_on_stopping(run)


def _set_up(
    model: nn.Module, data: TrainingData, callbacks: list[Callback], settings: dict[str, Any]
) -> tuple[Run, Callable[..., torch.Tensor], Any, list[Callback]]:
    """The device, precision and memory layout; the loaders, optimizer, scheduler and wrappers (DDP,
    compile); a checkpoint to resume from; the callbacks in their order."""
    ranks, me = distributed.world_size(), distributed.rank()
    device = pick_device(settings.pop("device"))
    seed, batch_size, epochs = settings["seed"], settings["batch_size"], settings["epochs"]
    seed_everything(seed)
    amp, channels_last = settings["amp"], settings["channels_last"]
    use_amp = device.type == "cuda" if amp == "auto" else bool(amp)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    use_cl = (device.type == "cuda" and has_conv) if channels_last == "auto" else bool(channels_last)
    model.to(device)
    if use_cl:
        model.to(memory_format=torch.channels_last)

    train_loader = data.loader(
        "train",
        batch_size=batch_size,
        augment=settings["augment"],
        device=device,
        seed=seed,
        rank=me,
        world_size=ranks,
    )
    opt = build_optimizer(settings["optimizer"], model, settings["lr"], settings["weight_decay"])
    sched = _make_scheduler(settings["scheduler"], opt, epochs * len(train_loader))
    wrapped: nn.Module = model
    if ranks > 1:  # gradients all-reduced (averaged) during backward, in buckets
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net: Callable[..., torch.Tensor] = torch.compile(wrapped) if settings["compile"] else wrapped

    run = Run(model, opt, sched, data, device, epochs, len(train_loader), batch_size)
    run.train_generator = train_loader.generator
    run.val_loader = data.loader("val", batch_size=max(batch_size, 512), device=device)
    run.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext
    optimizer = settings["optimizer"]
    run.settings = {
        "optimizer": optimizer if isinstance(optimizer, str) else type(opt).__name__,
        "lr": settings["lr"],
        "batch_size": batch_size,
        "device": str(device),
        "amp": use_amp,
        "channels_last": use_cl,
        "compile": settings["compile"],
        "seed": seed,
        "augment": settings["augment"],
        "grad_clip": settings["grad_clip"],
    }
    run.history.settings = run.settings
    if settings["resume_from"] is not None:
        load_checkpoint(run, settings["resume_from"])
    early = settings["early_stopping"]
    on_rank_0 = [*callbacks, *([EarlyStopping(early)] if early else [])]
    ordered = [Recorder(), *(on_rank_0 if me == 0 else [])]
    ordered.sort(key=lambda cb: cb.order)  # stable: equal orders keep the order given
    return run, net, train_loader, ordered


# long: the docstring is the manual of every keyword; the body is a dozen lines
def fit(
    model: nn.Module,
    data: TrainingData,
    *,
    optimizer: str | torch.optim.Optimizer | Callable = "adam",
    lr: float = 1e-3,
    epochs: int = 5,
    batch_size: int = 128,
    scheduler: str | Callable | None = None,
    device: str | torch.device = "auto",
    callbacks: Sequence[Callback] = (),
    early_stopping: int | None = None,
    amp: bool | str = "auto",
    channels_last: bool | str = "auto",
    compile: bool = False,
    seed: int = 0,
    augment: bool = False,
    weight_decay: float | None = None,
    grad_clip: float | None = None,
    resume_from: str | Path | None = None,
) -> History:
    """Train ``model`` on ``data`` (an :class:`maaskit.ImageDataset`, a :class:`maaskit.lm.TextDataset`
    for a language model — loss and metrics are then per token, throughput is ``tokens_per_s`` — or
    any :class:`TrainingData`) and return its :class:`History`.

    - ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"rmsprop"``, an optimizer
      instance, or a function of the parameters. ``scheduler``: ``None``, ``"cosine"``,
      ``"onecycle"`` or ``f(optimizer, total_steps)``; stepped after every batch. ``weight_decay``
      applies to weights of 2 or more dimensions only; ``None`` is the optimizer's default (0.01
      for AdamW, 0 for the others) and ``0.0`` is none.
    - ``amp``, ``channels_last``: ``"auto"`` turns bf16 autocast and channels-last memory on for
      CUDA (channels-last only for convolutional models) and off elsewhere. ``compile`` wraps the
      model in ``torch.compile``.
    - ``early_stopping=N`` stops after N epochs without a better validation loss and restores the
      best weights. ``grad_clip`` clips the global gradient norm.
    - Stopping — ``run.request_stop()`` from a callback or another thread, or Ctrl-C / Jupyter's
      interrupt — ends training after the current batch; the model and the history are kept.
    - ``resume_from`` continues from a :class:`Checkpoint` directory up to ``epochs`` in all.
    - An exception in a callback propagates with a note naming the callback and the event.
    - Under ``torchrun`` (see :mod:`maaskit.distributed`) the model is wrapped in
      ``DistributedDataParallel``; each rank trains on its ``batch_size`` share of every global
      batch, metrics are summed over the ranks, the callbacks run on rank 0 only, and a stop
      there (a button, early stopping, Ctrl-C) stops every rank after the same step (the ranks
      compare notes every ``STOP_CHECK_EVERY`` steps and at each epoch's end).
    """
    callbacks = list(callbacks)
    _check_inputs(model, data, epochs, batch_size, lr, callbacks)
    settings = dict(locals())
    del settings["model"], settings["data"], settings["callbacks"]
    run, net, loader, ordered = _set_up(model, data, callbacks, settings)
    steps = _Fit(run, net, loader, ordered)
    model.train()
    with _graceful_interrupt(run):
        steps.fire("on_fit_start")
        try:
            steps.run_epochs()
        finally:
            run.history.stopped = run.stop_reason
            steps.fire("on_fit_end")
    model.eval()
    return run.history
