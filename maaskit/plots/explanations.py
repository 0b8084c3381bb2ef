"""Explanations: attribution maps beside their images, and a 2-D projection of inputs or features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from .figures import ArrayLike, as_array, pixels

if TYPE_CHECKING:
    pass

__all__ = ["attributions", "deletion_curves", "projection"]


def attributions(
    images: ArrayLike,
    maps: Mapping[str, ArrayLike],
    *,
    titles: Sequence[str] | None = None,
    size: float = 1.6,
) -> Figure:
    """One row per image: the image, then each method's attribution map with the image's strokes
    outlined over it (red pushes towards the class, blue away; each map on its own symmetric
    scale, channels summed).

    ``images``: N x C x H x W (pixels or normalized); ``maps``: ``{method: N x C x H x W}``;
    ``titles``: one per row, e.g. "7 (is 9)", drawn red when it has "(is".
    """
    images = as_array(images)
    arrays = {name: as_array(m) for name, m in maps.items()}
    if images.ndim != 4 or not len(images):
        raise ValueError(f"attributions needs images as N x C x H x W; got shape {list(images.shape)}")
    for name, m in arrays.items():
        if m.shape != images.shape:
            raise ValueError(f"the {name!r} map has shape {list(m.shape)}, the images {list(images.shape)}")
    n, cols = len(images), 1 + len(arrays)
    fig = Figure(figsize=(size * cols, (size + 0.3) * n), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        shown = pixels(images[i])
        gray = shown if shown.ndim == 2 else shown.mean(-1)
        axes[i, 0].imshow(shown, cmap="gray_r" if shown.ndim == 2 else None)
        if titles is not None:
            axes[i, 0].set_title(titles[i], fontsize="small", color="tab:red" if "(is" in titles[i] else "black")
        for j, (name, m) in enumerate(arrays.items(), start=1):
            heat = m[i].sum(0)
            bound = float(np.abs(heat).max()) or 1.0
            axes[i, j].imshow(heat, cmap="RdBu_r", vmin=-bound, vmax=bound)
            if gray.max() > gray.min():  # the image's strokes outlined over the map
                axes[i, j].contour(gray, levels=[0.5], colors="black", linewidths=0.8, alpha=0.6)
            if i == 0:
                axes[i, j].set_title(name.replace("_", " "), fontsize="small")
        for ax in axes[i]:
            ax.set_axis_off()
    return fig


def deletion_curves(
    fractions: Sequence[float], curves: Mapping[str, ArrayLike], *, ylabel: str = "probability of the class"
) -> Figure:
    """A deletion test: the model's confidence as pixels are removed, most important first, one line
    per ordering; the area under each line is in its label (a faithful ordering falls fastest)."""
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    for name, values in curves.items():
        values = as_array(values).astype(float)
        if len(values) != len(fractions):
            raise ValueError(f"the {name!r} curve has {len(values)} points for {len(fractions)} fractions")
        x = np.asarray(fractions, dtype=float)
        area = float(((values[1:] + values[:-1]) / 2 * np.diff(x)).sum())  # trapezoids (NumPy 1 and 2 alike)
        ax.plot(x, values, "o-", ms=3, label=f"{name} (area {area:.3f})")
    ax.set(xlabel="fraction of pixels removed", ylabel=ylabel, ylim=(0, 1.02))
    ax.legend(fontsize="small")
    return fig


def projection(
    panels: Mapping[str, tuple[ArrayLike, Sequence[float]]],
    labels: ArrayLike,
    wrong: ArrayLike | None = None,
    *,
    classes: Sequence[str] | None = None,
) -> Figure:
    """2-D projections side by side, coloured by class, mistakes circled in red; under each, the
    variance each principal component explains.

    ``panels``: ``{title: (N x 2 coordinates, explained variance ratios)}``; ``wrong``: N booleans.
    """
    labels = as_array(labels).astype(int)
    fig = Figure(figsize=(5.2 * len(panels) + 0.6, 5.2), layout="constrained")
    grid = fig.subplots(2, len(panels), squeeze=False, height_ratios=[4, 1])
    for k, (title, (coords, variance)) in enumerate(panels.items()):
        coords, ratios = as_array(coords), np.asarray(variance, dtype=float)
        ax, bar = grid[0, k], grid[1, k]
        points = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=8, alpha=0.7, vmin=-0.5, vmax=9.5)
        mask = np.zeros(len(labels), bool) if wrong is None else as_array(wrong).astype(bool)
        if mask.any():
            ax.scatter(coords[mask, 0], coords[mask, 1], s=60, facecolors="none", edgecolors="red", lw=1.2)
            ax.plot([], [], "o", mfc="none", mec="red", label=f"{int(mask.sum())} mistakes")
            ax.legend(loc="best", fontsize="small")
        ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
        bar.bar(np.arange(1, len(ratios) + 1), ratios, color="C0")
        bar.plot(np.arange(1, len(ratios) + 1), np.cumsum(ratios), "o-", color="C3", ms=3, label="cumulative")
        bar.set(xlabel="component", ylabel="variance", ylim=(0, 1))
        bar.legend(fontsize="x-small", loc="center right")
    ticks = range(int(labels.max()) + 1)
    cbar = fig.colorbar(points, ax=grid[0, :].tolist(), ticks=list(ticks), shrink=0.8)
    cbar.ax.set_yticklabels([classes[t] if classes is not None else str(t) for t in ticks])
    return fig
