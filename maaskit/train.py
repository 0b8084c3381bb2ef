"""``fit()``: the training loop in its steps (set up, train an epoch, validate it), its events, and
the callbacks that ship with maaskit.

The loop has no UI. It tells callbacks what happens (fit, epoch and batch start and end);
a widget is one such callback. The loss and the data's metrics (:mod:`maaskit.scoring`: accuracy,
perplexity) accumulate in tensors on the device and are read back once per epoch, or when a
callback asks (a dashboard, a few times a second), so a step never waits for the host; under
DDP the ranks agree on stopping every ``STOP_CHECK_EVERY`` steps, not every step.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .callbacks import EarlyStopping, PrintProgress, Recorder
from .checkpoint import Checkpoint, load_checkpoint
from .device import pick_device, seed_everything
from .run import Callback, History, Run, TrainingData
from .scoring import IGNORE, Totals

__all__ = [  # the run, its callbacks and checkpoints live in their own modules; here too, as fit's vocabulary
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "FitSettings",
    "History",
    "PrintProgress",
    "Recorder",
    "Run",
    "TrainingData",
    "fit",
]


@dataclass(frozen=True)
class FitSettings:
    """One ``fit()`` call's settings (its keywords but the model, the data and the callbacks). As asked
    they may say "auto"; the loop runs with them resolved for the machine (``_set_up``'s plan): the
    device, and whether autocast and channels-last are on. Callbacks read ``run.settings``, their display."""

    optimizer: str | torch.optim.Optimizer | Callable = "adam"
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 128
    scheduler: str | Callable | None = None
    device: str | torch.device = "auto"
    early_stopping: int | None = None
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    seed: int = 0
    augment: bool = False
    weight_decay: float | None = None
    grad_clip: float | None = None
    resume_from: str | Path | None = None


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

    def __init__(self, run: Run, plan: FitSettings, net: Callable[..., torch.Tensor], loader: Any,
                 callbacks: list[Callback]):  # fmt: skip
        self.run, self.plan, self.net, self.loader, self.callbacks = run, plan, net, loader, callbacks
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
        run, plan = self.run, self.plan
        grad_clip = plan.grad_clip
        if plan.channels_last:
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
    model: nn.Module, data: TrainingData, callbacks: list[Callback], asked: FitSettings
) -> tuple[Run, FitSettings, Callable[..., torch.Tensor], Any, list[Callback]]:
    """The device, precision and memory layout; the loaders, optimizer, scheduler and wrappers (DDP,
    compile); a checkpoint to resume from; the callbacks in their order. Returns the run and the
    settings resolved for this machine."""
    ranks, me = distributed.world_size(), distributed.rank()
    device = pick_device(asked.device)
    seed_everything(asked.seed)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    plan = replace(
        asked,
        device=device,
        amp=device.type == "cuda" if asked.amp == "auto" else bool(asked.amp),
        channels_last=(device.type == "cuda" and has_conv)
        if asked.channels_last == "auto"
        else bool(asked.channels_last),
    )
    model.to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)

    batch_size, epochs = plan.batch_size, plan.epochs
    train_loader = data.loader(
        "train", batch_size=batch_size, augment=plan.augment, device=device, seed=plan.seed, rank=me, world_size=ranks
    )
    opt = build_optimizer(plan.optimizer, model, plan.lr, plan.weight_decay)
    sched = _make_scheduler(plan.scheduler, opt, epochs * len(train_loader))
    wrapped: nn.Module = model
    if ranks > 1:  # gradients all-reduced (averaged) during backward, in buckets
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net: Callable[..., torch.Tensor] = torch.compile(wrapped) if plan.compile else wrapped

    run = Run(model, opt, sched, data, device, epochs, len(train_loader), batch_size)
    run.train_generator = train_loader.generator
    run.val_loader = data.loader("val", batch_size=max(batch_size, 512), device=device)
    run.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if plan.amp else nullcontext
    run.settings = {  # what the history and the dashboards show of the run
        "optimizer": plan.optimizer if isinstance(plan.optimizer, str) else type(opt).__name__,
        "lr": plan.lr,
        "batch_size": batch_size,
        "device": str(device),
        "amp": plan.amp,
        "channels_last": plan.channels_last,
        "compile": plan.compile,
        "seed": plan.seed,
        "augment": plan.augment,
        "grad_clip": plan.grad_clip,
    }
    run.history.settings = run.settings
    if plan.resume_from is not None:
        load_checkpoint(run, plan.resume_from)
    on_rank_0 = [*callbacks, *([EarlyStopping(plan.early_stopping)] if plan.early_stopping else [])]
    ordered = [Recorder(), *(on_rank_0 if me == 0 else [])]
    ordered.sort(key=lambda cb: cb.order)  # stable: equal orders keep the order given
    return run, plan, net, train_loader, ordered


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
    asked = FitSettings(optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, scheduler=scheduler,
                        device=device, early_stopping=early_stopping, amp=amp, channels_last=channels_last,
                        compile=compile, seed=seed, augment=augment, weight_decay=weight_decay, grad_clip=grad_clip,
                        resume_from=resume_from)  # fmt: skip
    run, plan, net, loader, ordered = _set_up(model, data, callbacks, asked)
    steps = _Fit(run, plan, net, loader, ordered)
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
