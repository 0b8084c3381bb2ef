"""Look inside training: gradient and activation statistics recorded through hooks.

:class:`GradientMonitor` records, every ``every`` steps, for each weight tensor the gradient's
norm, mean, standard deviation and mean absolute value, a histogram of ``log10 |grad|``, and
the size of the optimizer's update relative to the weights; for each activation function, the
mean and spread of its output, a histogram, and the fraction of units that are dead (ReLU: zero
for the whole batch) or saturated (sigmoid, tanh: in the flat tails). Everything is computed on
the device and read back only when you look, so recording costs no host sync per step.

Use it as a ``fit()`` callback, or around a loop of your own::

    with GradientMonitor(model, every=5) as monitor:
        for step, (x, y) in enumerate(batches):
            monitor.start_step(step)          # before the forward pass
            ...forward, backward, optimizer.step()...
            monitor.end_step()                # after the optimizer step
    print(monitor.diagnose())
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .run import Callback, Run

__all__ = ["GradientMonitor", "Record", "UPDATE_RATIO_TYPICAL"]

# |update| / |weight| per step. cs231n's rule of thumb says "around 1e-3"; a factor of ten either way
# is normal (notebook 05's healthy batch-norm and residual nets sit near 1e-2 with SGD at lr 0.05,
# momentum 0.9). Steps of 10% and more are the mark of an explosion (the diagnosis below).
UPDATE_RATIO_TYPICAL = (1e-4, 3e-2)

# activation module -> (kind, histogram range)
_ACTIVATIONS = {
    nn.ReLU: ("relu", (0.0, 4.0)),
    nn.GELU: ("relu", (-0.5, 4.0)),
    nn.LeakyReLU: ("relu", (-1.0, 4.0)),
    nn.Sigmoid: ("sigmoid", (0.0, 1.0)),
    nn.Tanh: ("tanh", (-1.0, 1.0)),
}
_SATURATED = 0.98  # sigmoid output beyond 0.02..0.98 (tanh beyond +-0.98): the derivative is under ~0.02
_GRAD_LOG_RANGE = (-12.0, 2.0)  # histogram of log10 |grad|

# which monitor owns a model's hooks: a second monitor on the same model replaces the first,
# so re-running a notebook cell never stacks hooks
_OWNERS: weakref.WeakKeyDictionary[nn.Module, GradientMonitor] = weakref.WeakKeyDictionary()


@dataclass
class Record:
    """Everything recorded, as NumPy arrays: R records x P weight tensors (or A activations)."""

    steps: np.ndarray  # R
    layers: list[str]  # P weight tensors, input side first
    numel: np.ndarray  # P
    grad_norm: np.ndarray  # R x P
    grad_mean: np.ndarray
    grad_std: np.ndarray
    grad_abs_mean: np.ndarray  # "gradient flow"
    weight_norm: np.ndarray
    update_ratio: np.ndarray  # |w_after - w_before| / |w_before|
    grad_hist: np.ndarray  # R x P x bins: fraction of entries per bin of log10 |grad| in grad_range
    grad_range: tuple[float, float]
    activations: list[str]  # A activation modules
    activation_kinds: list[str]
    activation_ranges: list[tuple[float, float]]
    activation_after: list[int | None]  # for each weight tensor, the activation it feeds (if any)
    act_mean: np.ndarray  # R x A
    act_std: np.ndarray
    act_inactive: np.ndarray  # dead (ReLU) or saturated (sigmoid, tanh) fraction
    act_hist: np.ndarray  # R x A x bins

    def __len__(self) -> int:
        return len(self.steps)


class GradientMonitor(Callback):
    """Records gradient, update and activation statistics of ``model`` every ``every`` steps.

    Hooks go on when the monitor opens (``with``, or the start of a ``fit()``) and come off when
    it closes; a new monitor on the same model closes the old one first.
    """

    def __init__(self, model: nn.Module, *, every: int = 10, bins: int = 40):
        if not isinstance(model, nn.Module):
            raise TypeError(f"GradientMonitor watches a torch.nn.Module, got {type(model).__name__}")
        for name, value in (("every", every), ("bins", bins)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        self.model, self.every, self.bins = model, every, bins
        self.weights = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
        if not self.weights:
            raise ValueError("the model has no weight matrices or kernels to monitor")
        self.activation_modules = [
            (n, m, *_ACTIVATIONS[type(m)]) for n, m in model.named_modules() if type(m) in _ACTIVATIONS
        ]
        # the activation each weight feeds (the next one in module order), for the inspector
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        act_pos = [order[n] for n, *_ in self.activation_modules]
        self.activation_after = []
        for name, _ in self.weights:
            pos = order.get(name.rsplit(".", 1)[0], -1) if "." in name else -1
            self.activation_after.append(next((a for a, q in enumerate(act_pos) if q > pos), None))
        self._handles: list = []
        self._pending: list[tuple] = []  # device tensors, read back on demand
        self._record: Record | None = None
        self._step: int | None = None
        self._before: list[torch.Tensor] = []
        self._acts: dict[int, torch.Tensor] = {}

    # --- hooks on and off -----------------------------------------------------------------

    @property
    def open(self) -> bool:
        return bool(self._handles)

    def attach(self) -> GradientMonitor:
        if self.open:
            return self
        previous = _OWNERS.get(self.model)
        if previous is not None and previous is not self:
            previous.close()
        for i, (_, module, kind, span) in enumerate(self.activation_modules):
            self._handles.append(module.register_forward_hook(self._activation_hook(i, kind, span)))
        _OWNERS[self.model] = self
        return self

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if _OWNERS.get(self.model) is self:
            del _OWNERS[self.model]

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.close()

    # --- recording ------------------------------------------------------------------------

    def start_step(self, step: int) -> None:
        """Call before the forward pass of optimizer step ``step`` (from 0)."""
        self._step = step if step % self.every == 0 else None
        if self._step is not None:
            self._before = [p.detach().clone() for _, p in self.weights]
            self._acts = {}

    def end_step(self) -> None:
        """Call after ``optimizer.step()``: the gradients are still in ``.grad``."""
        if self._step is None:
            return
        stats, hists = [], []
        lo, hi = _GRAD_LOG_RANGE
        for (_, p), before in zip(self.weights, self._before):
            g = p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
            w = before.float()
            stats.append(
                torch.stack(
                    [
                        g.norm(),
                        g.mean(),
                        g.std() if g.numel() > 1 else g.new_zeros(()),
                        g.abs().mean(),
                        w.norm(),
                        (p.detach().float() - w).norm() / w.norm(),
                    ]
                )
            )
            logs = torch.log10(g.abs().flatten() + 1e-30).clamp_(lo, hi)
            hists.append(torch.histc(logs, self.bins, lo, hi) / logs.numel())  # fractions
        found = [self._acts.get(i) for i in range(len(self.activation_modules))]
        empty = torch.zeros(3 + self.bins, device=stats[0].device)
        acts = torch.stack([a.to(empty.device) if a is not None else empty for a in found]) if found else empty[:0]
        self._pending.append((self._step, torch.stack(stats), torch.stack(hists), acts))
        self._record = None
        self._step, self._before = None, []

    def _activation_hook(self, index, kind, span):
        def hook(_module, _inputs, output):
            if self._step is None or not torch.is_tensor(output):
                return
            y = output.detach().float()
            if kind == "relu":
                inactive = (y <= 0).all(dim=0).float().mean()  # units silent for the whole batch
            else:
                edge = _SATURATED if kind == "tanh" else 2 * _SATURATED - 1
                z = y if kind == "tanh" else 2 * y - 1  # sigmoid's (0, 1) onto (-1, 1)
                inactive = (z.abs() > edge).float().mean()
            hist = torch.histc(y.clamp(*span), self.bins, *span)
            self._acts[index] = torch.cat([torch.stack([y.mean(), y.std(), inactive]), hist / max(y.numel(), 1)])

        return hook

    # --- as a fit() callback --------------------------------------------------------------

    def on_fit_start(self, run: Run) -> None:
        self.attach()

    def on_batch_start(self, run: Run) -> None:
        self.start_step(run.step)

    def on_batch_end(self, run: Run) -> None:
        self.end_step()

    def on_fit_end(self, run: Run) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------

    @property
    def record(self) -> Record:
        """All records so far as NumPy arrays (reads the device once)."""
        if self._record is None:
            self._record = self._materialize()
        return self._record

    def _materialize(self) -> Record:
        P, A, B = len(self.weights), len(self.activation_modules), self.bins
        steps = np.array([s for s, *_ in self._pending], dtype=np.int64)
        if self._pending:  # one copy from the device per kind of statistic, not one per record
            stats, ghist, acts = (torch.stack(column).cpu().numpy() for column in list(zip(*self._pending))[1:])
        else:
            stats, ghist, acts = np.zeros((0, P, 6)), np.zeros((0, P, B)), np.zeros((0, A, 3 + B))
        numel = np.array([p.numel() for _, p in self.weights])
        return Record(
            steps=steps,
            layers=[n for n, _ in self.weights],
            numel=numel,
            grad_norm=stats[..., 0],
            grad_mean=stats[..., 1],
            grad_std=stats[..., 2],
            grad_abs_mean=stats[..., 3],
            weight_norm=stats[..., 4],
            update_ratio=stats[..., 5],
            grad_hist=ghist,
            grad_range=_GRAD_LOG_RANGE,
            activations=[n for n, *_ in self.activation_modules],
            activation_kinds=[k for *_, k, _ in self.activation_modules],
            activation_ranges=[s for *_, s in self.activation_modules],
            activation_after=self.activation_after,
            act_mean=acts[..., 0],
            act_std=acts[..., 1],
            act_inactive=acts[..., 2],
            act_hist=acts[..., 3:],
        )

    def flow_ratio(self, last: int = 5) -> float:
        """Mean |grad| of the first weight tensor over that of the last, median of the last ``last``
        records: about 1 when gradients reach every layer, tiny when they vanish on the way back."""
        r = self.record
        if not len(r):
            raise ValueError("nothing recorded yet")
        ratio = r.grad_abs_mean[-last:, 0] / np.maximum(r.grad_abs_mean[-last:, -1], 1e-30)
        return float(np.median(ratio))

    def grad_total_norm(self) -> np.ndarray:
        """The global gradient norm (what ``clip_grad_norm_`` clips) at each record."""
        return np.sqrt((self.record.grad_norm**2).sum(axis=1))

    # long: one check after another, each with its own message; split, the order they run in would hide
    def diagnose(
        self,
        last: int = 5,
        *,
        vanishing: float = 1e-2,
        exploding: float = 5.0,
        exploding_update: float = 0.1,
        inactive: float = 0.5,
    ) -> list[str]:
        """Plain-language warnings (an empty list: nothing wrong seen).

        Explosions are looked for over the whole run (they happen once and leave the damage);
        vanishing gradients and dead or saturated units over the last ``last`` records. The
        thresholds come from notebook 05's measurements, each about 2x away from the cases on
        either side: a flow ratio under ``vanishing``; a global gradient norm growing
        ``exploding`` times its first value *and* an update larger than ``exploding_update`` of a
        layer's weights (a deep net whose gradients start tiny sees them grow 80x as it learns,
        with updates under 6%; a too-high learning rate gives 9-16x and 27-48%); over
        ``inactive`` of a layer's units dead or saturated.
        """
        r = self.record
        if not len(r):
            return ["nothing recorded yet: train for at least one step"]
        out = []
        bad = ~np.isfinite(r.grad_norm)
        total = self.grad_total_norm()
        updates = np.nan_to_num(r.update_ratio, nan=0.0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            out.append(
                f"exploding gradients: the gradient of {r.layers[j]!r} became NaN or infinite at step "
                f"{r.steps[i]}; training has diverged — lower the learning rate or clip the gradient norm"
            )
        elif total[0] > 0 and total.max() > exploding * total[0] and updates.max() > exploding_update:
            i = int(np.argmax(total))
            k, j = np.unravel_index(np.argmax(updates), updates.shape)
            out.append(
                f"exploding gradients: the gradient norm grew {total[i] / total[0]:.0f}x to {total[i]:.3g} by "
                f"step {r.steps[i]}, and one step changed {r.layers[j]!r} by {updates[k, j]:.0%} of its size "
                f"(typical steps change a layer by {UPDATE_RATIO_TYPICAL[0]:.2%} to {UPDATE_RATIO_TYPICAL[1]:.0%}) — "
                "lower the learning rate or clip the gradient norm"
            )
        ratio = self.flow_ratio(last)
        if ratio == 0:
            out.append(f"no gradient reaches the first layer {r.layers[0]!r} at all: units in between are dead")
        elif np.isfinite(ratio) and ratio < vanishing:
            out.append(
                f"vanishing gradients: the first layer {r.layers[0]!r} gets {ratio:.1e} times the mean |grad| "
                f"of the last, {r.layers[-1]!r}, so it barely learns — try ReLU, batch norm or residual "
                "connections"
            )
        if r.activations:
            frac = np.median(r.act_inactive[-last:], axis=0)
            for kind, what in (
                ("relu", "dead (zero for the whole batch)"),
                ("sigmoid", "saturated"),
                ("tanh", "saturated"),
            ):
                hits = [
                    f"{frac[a]:.0%} in {r.activations[a]!r}"
                    for a in np.flatnonzero(frac > inactive)
                    if r.activation_kinds[a] == kind
                ]
                if hits:
                    out.append(f"{kind} units {what}: " + ", ".join(hits))
        return out

    def __repr__(self) -> str:
        n = len(self._pending)
        return (
            f"GradientMonitor({len(self.weights)} weight tensors, {len(self.activation_modules)} activations, "
            f"every {self.every} steps, {n} records, {'open' if self.open else 'closed'})"
        )
