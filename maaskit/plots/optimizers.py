"""Optimizers: paths over a 2-D landscape, and convergence against steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from .figures import ArrayLike, log_curve

if TYPE_CHECKING:
    from ..surfaces import OptimizerPath, Surface

__all__ = ["convergence", "optimizer_paths"]


def optimizer_paths(
    surface: Surface,
    paths: Sequence[OptimizerPath],
    *,
    size: tuple[float, float] = (5.0, 4.0),
    title: str | None = None,
) -> Figure:
    """Contours of a 2-D surface with each optimizer's path, beside the loss at each step.

    ``surface`` is a :class:`maaskit.surfaces.Surface`; ``paths`` are
    :class:`maaskit.surfaces.OptimizerPath`. A diverged path ends in a cross and says where.
    """
    import torch
    from matplotlib.colors import LogNorm

    fig = Figure(figsize=(size[0] * 2, size[1]), layout="constrained")
    ax, ax_loss = fig.subplots(1, 2)
    xs = torch.linspace(surface.xlim[0], surface.xlim[1], 200, dtype=torch.float64)
    ys = torch.linspace(surface.ylim[0], surface.ylim[1], 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = surface(gx, gy).numpy()
    floor = max(float(z.min()), 1e-3)
    ax.contourf(
        xs.numpy(),
        ys.numpy(),
        np.maximum(z, floor),
        levels=np.geomspace(floor, z.max(), 25),
        norm=LogNorm(),
        cmap="Blues_r",
        alpha=0.85,
    )
    ax.plot(*surface.minimum, marker="*", color="gold", markersize=14, markeredgecolor="k", zorder=5)
    lowest = surface(*map(torch.tensor, surface.minimum)).item()
    for i, path in enumerate(paths):
        color = f"C{i + 1}"
        label = path.label + (f" — {path.status}" if path.diverged_at is not None else "")
        pts = np.array(path.points).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], "-o", color=color, markersize=2.5, linewidth=1.4, label=label)
        if path.diverged_at is not None and len(pts):
            ax.plot(*pts[-1], marker="X", color=color, markersize=11, markeredgecolor="k")
        steps = np.arange(len(path.losses))
        ax_loss.plot(steps, np.maximum(np.asarray(path.losses) - lowest, 1e-12), color=color, label=label)
    ax.set_xlim(*surface.xlim)
    ax.set_ylim(*surface.ylim)
    ax.set_title(title or surface.name)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if paths:  # one legend for both panels, below them: never on top of a path
        fig.legend(
            *ax.get_legend_handles_labels(),
            loc="outside lower center",
            ncols=min(len(paths), 4),
            fontsize="small",
            frameon=False,
        )
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("f(x, y) − f(minimum)")
    ax_loss.grid(alpha=0.3)
    return fig


def convergence(
    x: Sequence[float],
    series: Mapping[str, ArrayLike],
    *,
    xlabel: str = "steps",
    ylabel: str = "error",
    title: str = "",
) -> Figure:
    """Errors against a growing amount of work, log-log: one line per way of doing the work."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, values in series.items():
        line = log_curve(ax, x, values, label=name, what=xlabel.split()[0])
        line.set_marker("o")
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return fig
