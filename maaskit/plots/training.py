"""Training: curves per epoch (and running between epochs), images with their predicted labels, the confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .figures import ArrayLike, FigureLike, as_array

if TYPE_CHECKING:
    pass

__all__ = ["confusion_matrix", "history", "image_grid"]


def history(
    hist: Mapping[str, Sequence[float]] | Sequence[Mapping[str, Any]],
    *,
    x: str | None = None,
    groups: Sequence[str] | None = None,
    live: Mapping[str, Sequence[float]] | None = None,
    epochs: int | None = None,
    fig: FigureLike | None = None,
    log_loss: bool = False,
    size: tuple[float, float] = (4.2, 3.0),
) -> FigureLike:
    """Training curves, one line per series: every series given is drawn, none is dropped.

    ``hist`` maps names to one value per step or epoch (a dict, or a :class:`maaskit.History`), or is
    a list of per-epoch records (``History.records``: then ``x`` is ``"epoch"``). ``x`` names the
    entry to use as the horizontal axis (else 1, 2, ...). Series whose names say "loss" share one
    panel, those that say "acc" another, "perplexity" a third; the rest get a panel of their own
    (a record's ``lr``, say, or two losses under names of your choosing). ``groups`` keeps only those
    panels, in that order. ``live``: running training values between epochs (``x`` in fractional
    epochs, ``train_loss``, ``train_acc``), drawn faint under their panel's series, as a dashboard
    shows them. ``epochs``: the horizontal axis's extent. ``fig``: draw into this (sub)figure.
    """
    if isinstance(hist, Sequence) and not isinstance(hist, str):  # per-epoch records
        x = x or "epoch"
        hist = {k: [r[k] for r in hist] for k in (hist[0] if hist else {x: None})}
    columns = {k: as_array(hist[k]) for k in hist if k != x}
    numeric = {k: v for k, v in columns.items() if v.dtype.kind in "iuf"}  # not flags such as "complete"
    panels: dict[str, list[str]] = {}
    for k in numeric:
        panels.setdefault(_panel_of(k), []).append(k)
    if groups is not None:
        panels = {g: panels.get(g, []) for g in groups}
    running = live if live and live.get("x") else None
    if groups is None and not any(panels.values()) and running is None:  # asked panels are drawn, empty or not
        raise ValueError(f"nothing to plot: expected series of numbers, got {list(hist.keys())}")
    fig = fig or Figure(figsize=(size[0] * len(panels), size[1]), layout="constrained")
    xs = as_array(hist[x]) if x and x in hist else None
    for ax, (title, keys) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for k in [k for k in (running or {}) if k != "x" and _panel_of(k) == title]:
            ax.plot(running["x"], running[k], color="0.55", lw=1, label=f"{k} (running)")  # type: ignore[index]
        for k in keys:
            y = numeric[k]
            ax.plot(xs if xs is not None else np.arange(1, len(y) + 1), y, "o-" if len(y) < 40 else "-", ms=3, label=k)
        ax.set(title=title, xlabel=x or "epoch")
        if log_loss and title in ("loss", "perplexity") and all((numeric[k] > 0).all() for k in keys):
            ax.set_yscale("log")
        if epochs:
            ax.set_xlim(0, epochs)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    return fig


def _panel_of(name: str) -> str:
    for panel, says in (("loss", "loss"), ("accuracy", "acc"), ("perplexity", "perplexity")):
        if says in name:
            return panel
    return name


def image_grid(
    images: ArrayLike,
    labels: ArrayLike | None = None,
    predictions: ArrayLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.2,
    fig: FigureLike | None = None,
) -> FigureLike:
    """A grid of images (N x C x H x W or N x H x W), titled with labels and predictions.

    Mistakes (prediction differs from label) get a red title so they stand out. ``fig`` draws
    into an existing figure or subfigure instead of a new one.
    """
    images = as_array(images)
    if images.ndim not in (3, 4) or not len(images):
        raise ValueError(
            f"image_grid needs at least one image, as N x C x H x W or N x H x W; got shape {list(images.shape)}"
        )
    if images.ndim == 4:
        images = images.transpose(0, 2, 3, 1)
        if images.shape[-1] == 1:
            images = images[..., 0]
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = fig or Figure(figsize=(size * ncols, (size + 0.25) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    name = (lambda i: classes[int(i)]) if classes is not None else (lambda i: str(int(i)))
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        img = images[i]
        lo, hi = float(img.min()), float(img.max())
        ax.imshow((img - lo) / (hi - lo or 1), cmap="gray_r" if img.ndim == 2 else None)
        if predictions is not None:
            truth = labels[i] if labels is not None else None
            wrong = truth is not None and int(predictions[i]) != int(truth)
            title = f"{name(predictions[i])}" + (f" (is {name(truth)})" if wrong else "")
            ax.set_title(title, fontsize="small", color="tab:red" if wrong else "black")
        elif labels is not None:
            ax.set_title(name(labels[i]), fontsize="small")
    return fig


def confusion_matrix(confusion: ArrayLike, classes: Sequence[str], *, ax: Axes | None = None) -> FigureLike:
    """Counts of (true class, predicted class); the diagonal is what the model gets right."""
    confusion = as_array(confusion)
    if ax is None:
        fig = Figure(figsize=(4.2, 3.8), layout="constrained")
        ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(
        ticks,
        [str(c)[:10] for c in classes],
        rotation=90 if len(classes) > 10 or max(len(str(c)) for c in classes) > 2 else 0,
    )
    ax.set_yticks(ticks, [str(c)[:10] for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    threshold = confusion.max() / 2
    for (i, j), count in np.ndenumerate(confusion):
        if count:
            ax.text(
                j,
                i,
                str(int(count)),
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if count > threshold else "black",
            )
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return ax.figure
