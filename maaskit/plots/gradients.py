"""Gradients: what a ``GradientMonitor`` recorded, in one figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .figures import FigureLike

if TYPE_CHECKING:
    from ..diagnostics import Record

__all__ = ["gradient_inspection"]


def gradient_inspection(
    record: Record,
    layer: int = 0,
    index: int = -1,
    *,
    fig: FigureLike | None = None,
    typical_update: tuple[float, float] | None = None,
) -> FigureLike:
    """Six panels of a :class:`maaskit.diagnostics.Record` for weight tensor ``layer`` at record
    ``index``: its gradient histogram, the gradient flow through all layers, the update/weight
    ratios; over time, the histograms of its gradient and of the activation it feeds (fastai's
    "colorful dimension"), and that activation's dead or saturated fraction."""
    from ..diagnostics import UPDATE_RATIO_TYPICAL  # a Record comes from there: torch is loaded already

    typical_update = typical_update or UPDATE_RATIO_TYPICAL
    fig = fig or Figure(figsize=(12.5, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    r = record
    if not len(r):
        raise ValueError("nothing recorded yet: train with the monitor for at least one step")
    index = index % len(r)
    step, name = r.steps[index], r.layers[layer]
    _histogram(axes[0, 0], r, layer, index)
    _flow(axes[0, 1], r, layer, index)
    _update_ratios(axes[0, 2], r, layer, step, typical_update)
    x0, x1 = r.steps[0], r.steps[-1] + max(1, (r.steps[-1] - r.steps[0]) // max(len(r) - 1, 1))
    lo, hi = r.grad_range
    _heat(axes[1, 0], r.grad_hist[:, layer], (x0, x1, lo, hi), f"{name}: log10 |grad| over time", "log10 |grad|", step)
    act = r.activation_after[layer]
    if act is None:
        for ax in axes[1, 1:]:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no activation after this layer", ha="center", va="center", transform=ax.transAxes)
    else:
        a_lo, a_hi = r.activation_ranges[act]
        title = f"{r.activations[act]} ({r.activation_kinds[act]}): outputs over time"
        _heat(axes[1, 1], r.act_hist[:, act], (x0, x1, a_lo, a_hi), title, "output", step)
        ax = axes[1, 2]
        ax.plot(r.steps, r.act_inactive[:, act], color="C3")
        ax.axvline(step, color="C1", lw=0.8)
        what = "dead" if r.activation_kinds[act] == "relu" else "saturated"
        ax.set(title=f"{r.activations[act]}: fraction {what}", xlabel="step", ylim=(-0.02, 1.02))
    for ax in axes.flat:
        ax.grid(alpha=0.2)
    return fig


def _histogram(ax: Axes, r: Record, layer: int, index: int) -> None:
    """Tensor ``layer``'s gradient histogram at the first record and at ``index``."""
    lo, hi = r.grad_range
    edges = np.linspace(lo, hi, r.grad_hist.shape[-1] + 1)
    ax.stairs(r.grad_hist[0, layer], edges, color="0.6", label=f"step {r.steps[0]}")
    ax.stairs(r.grad_hist[index, layer], edges, fill=True, alpha=0.7, color="C0", label=f"step {r.steps[index]}")
    ax.set(title=f"{r.layers[layer]}: gradient histogram", xlabel="log10 |grad|", ylabel="fraction of entries")
    ax.legend(fontsize="small")


def _flow(ax: Axes, r: Record, layer: int, index: int) -> None:
    """Mean |grad| of every weight tensor at record ``index``, zeros marked rather than hidden."""
    flow = np.nan_to_num(r.grad_abs_mean[index], nan=0.0, posinf=0.0)
    shown = flow[flow > 0]
    floor = shown.min() / 10 if len(shown) else 1e-12  # zero bars sit on the floor, not at 1e-30
    colors = ["C3" if j == layer else "C0" for j in range(len(flow))]
    ax.bar(range(1, len(flow) + 1), np.maximum(flow, floor), bottom=0, color=colors)
    ax.set_yscale("log")
    ax.set_ylim(floor, max(shown.max() * 3, floor * 10) if len(shown) else 1)
    for zero in np.flatnonzero(flow <= 0):
        ax.text(zero + 1, floor, "0", ha="center", va="bottom", fontsize="small", color="C3")
    if not len(shown):
        message = "no gradient reaches any layer:\nevery mean |grad| is 0"
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="C3")
    ax.set_xticks(range(1, len(flow) + 1))
    title = f"gradient flow at step {r.steps[index]}"
    ax.set(title=title, ylabel="mean |grad|", xlabel="weight tensor (1 = input side)")


def _update_ratios(ax: Axes, r: Record, layer: int, step: int, typical: tuple[float, float]) -> None:
    """Every tensor's update/weight ratio per step, ``layer``'s highlighted, the typical band shaded."""
    for j in range(len(r.layers)):
        mine = j == layer
        ratios = np.maximum(r.update_ratio[:, j], 1e-12)
        ax.plot(r.steps, ratios, color="C3" if mine else "0.7", lw=2 if mine else 0.8, zorder=3 if mine else 2)
    ax.axhspan(*typical, color="C2", alpha=0.12, label=f"typical: {typical[0]:g} to {typical[1]:g}")
    ax.axvline(step, color="C1", lw=0.8)
    ax.set_yscale("log")
    ax.set(title="update / weight per step", xlabel="step")
    ax.legend(fontsize="small", loc="lower left")


def _heat(ax: Axes, hist: np.ndarray, extent: tuple, title: str, ylabel: str, step: int) -> None:
    """Histograms over time as an image (fastai's "colorful dimension"), log-scaled."""
    image = ax.imshow(
        np.log10(hist.T + 1e-4), origin="lower", aspect="auto", extent=extent, cmap="viridis", vmin=-4, vmax=0
    )
    ax.axvline(step, color="w", lw=0.8)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.figure.colorbar(image, ax=ax, label="log10 fraction of entries", shrink=0.9)
