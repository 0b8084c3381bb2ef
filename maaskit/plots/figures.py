"""What every figure function shares: the types it takes, a tensor or list as a NumPy array, a
figure as PNG bytes, curves on a log scale, panels of functions, and the one IPython setting that
lets a notebook show the ``Figure`` objects these functions return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

__all__ = [
    "ArrayLike",
    "FigureLike",
    "as_array",
    "function_grid",
    "log_curve",
    "png_bytes",
    "pixels",
    "show_figures_in_ipython",
]

ArrayLike = Any  # a NumPy array, a torch tensor (on any device) or a list of numbers
FigureLike = Union[Figure, SubFigure]  # noqa: UP007 (a run-time alias on Python 3.10)


def show_figures_in_ipython() -> None:
    """Let IPython render a returned ``Figure`` as PNG.

    IPython registers that formatter only once pyplot's inline backend is loaded; these
    figures never touch pyplot, so without this a notebook would print ``<Figure ...>``.
    Called once when ``maaskit.plots`` is imported (outside IPython it does nothing).
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"})


def as_array(v: ArrayLike) -> np.ndarray:
    """A NumPy array of ``v`` (a tensor on any device, a list, an array)."""
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def pixels(img: np.ndarray) -> np.ndarray:
    """C x H x W (or H x W) as something imshow draws: H x W for one channel, H x W x C scaled to 0..1."""
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo or 1)


def png_bytes(fig: FigureLike, dpi: int = 80) -> bytes:
    """The figure (the whole of it, for a subfigure) as PNG bytes, for an ``ipywidgets.Image`` or a MIME bundle."""
    import io

    buffer = io.BytesIO()
    fig.figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def function_grid(
    x: ArrayLike,
    panels: Mapping[str, Mapping[str, ArrayLike]],
    *,
    ncols: int = 3,
    size: tuple[float, float] = (3.6, 2.8),
    xlabel: str | None = None,
) -> Figure:
    """One panel per entry of ``panels``, each plotting its named curves against ``x``.

    ``function_grid(z, {"sigmoid": {"σ(z)": s, "σ'(z)": ds}, "tanh": {...}})``
    """
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = as_array(x)
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, y in curves.items():
            ax.plot(x, as_array(y), label=label)
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def log_curve(
    ax: Axes, x: ArrayLike, y: ArrayLike, *, label: str | None = None, color: str | None = None, what: str = "step"
) -> Line2D:
    """Plot ``y`` against ``x`` on a log scale and say where it leaves the axis: a value that is 0
    (or negative) or not a number cannot be drawn there, and a line that just stops misleads."""
    x, y = np.asarray(as_array(x), dtype=float), np.asarray(as_array(y), dtype=float)
    drawable = np.isfinite(y) & (y > 0)
    (line,) = ax.plot(np.where(drawable, x, np.nan), np.where(drawable, y, np.nan), label=label, color=color)
    ax.set_yscale("log")
    gone = np.flatnonzero(~drawable)
    if len(gone) and drawable.any():
        first = gone[0]
        last_good = np.flatnonzero(drawable[:first])
        anchor = y[last_good[-1]] if len(last_good) else np.nanmax(np.where(drawable, y, np.nan))
        why = "0" if np.isfinite(y[first]) else "NaN or infinite"
        ax.plot(x[first], anchor, marker="v", color=line.get_color(), markersize=8)
        ax.annotate(
            f"{why} from {what} {x[first]:g}",
            (x[first], anchor),
            textcoords="offset points",
            xytext=(4, -14),
            fontsize="small",
            color=line.get_color(),
        )
    return line
