"""Figures for the notebooks, built with matplotlib's object API.

Every function returns a ``matplotlib.figure.Figure`` and touches no pyplot state, so
figures never pile up across cells, work the same under papermill and in scripts, and
can be saved with ``fig.savefig(...)``. In a notebook, a returned figure is displayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

if TYPE_CHECKING:
    from .diagnostics import Record
    from .surfaces import OptimizerPath, Surface

ArrayLike = Any  # a NumPy array, a torch tensor (on any device) or a list of numbers
FigureLike = Union[Figure, SubFigure]  # noqa: UP007 (a run-time alias on Python 3.10)

__all__ = [
    "attributions",
    "confusion_matrix",
    "convergence",
    "function_grid",
    "gradient_inspection",
    "history",
    "image_grid",
    "latency_histogram",
    "log_curve",
    "optimizer_paths",
    "png_bytes",
    "prediction",
    "projection",
    "training_curves",
]


def _display_figures_in_ipython() -> None:
    """Let IPython render a returned ``Figure`` as PNG.

    IPython registers that formatter only once pyplot's inline backend is loaded; these
    figures never touch pyplot, so without this a notebook would print ``<Figure ...>``.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"})


_display_figures_in_ipython()


def png_bytes(fig: FigureLike, dpi: int = 80) -> bytes:
    """The figure (the whole of it, for a subfigure) as PNG bytes, for an ``ipywidgets.Image`` or a MIME bundle."""
    import io

    buffer = io.BytesIO()
    fig.figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _array(v):
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


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
    x = _array(x)
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, y in curves.items():
            ax.plot(x, _array(y), label=label)
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.axvline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def history(
    hist: Mapping[str, Sequence[float]], *, x: str | None = None, size: tuple[float, float] = (4.2, 3.0)
) -> Figure:
    """Training curves, one line per series: every series given is drawn, none is dropped.

    ``hist`` maps names to one value per step or epoch (a dict, or a :class:`maaskit.History`);
    ``x`` names the entry to use as the horizontal axis (else 1, 2, ...). Series whose names say
    "loss" share one panel and those that say "acc" another; the rest get a panel of their own
    (a record's ``lr``, say, or two losses under names of your choosing).
    """
    names = [k for k in hist if k != x]
    numeric = {k: _array(hist[k]) for k in names}
    numeric = {k: v for k, v in numeric.items() if v.dtype.kind in "iuf"}  # not flags such as "complete"
    if not numeric:
        raise ValueError(f"nothing to plot: expected series of numbers, got {list(hist.keys())}")
    groups: dict[str, list[str]] = {}
    for k in numeric:
        group = "loss" if "loss" in k else "accuracy" if "acc" in k else k
        groups.setdefault(group, []).append(k)
    fig = Figure(figsize=(size[0] * len(groups), size[1]), layout="constrained")
    for ax, (title, keys) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items()):
        for k in keys:
            y = numeric[k]
            ax.plot(_array(hist[x]) if x else np.arange(1, len(y) + 1), y, label=k)
        ax.set_title(title)
        ax.set_xlabel(x or "epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


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
    images = _array(images)
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


def log_curve(
    ax: Axes, x: ArrayLike, y: ArrayLike, *, label: str | None = None, color: str | None = None, what: str = "step"
) -> Line2D:
    """Plot ``y`` against ``x`` on a log scale and say where it leaves the axis: a value that is 0
    (or negative) or not a number cannot be drawn there, and a line that just stops misleads."""
    x, y = np.asarray(_array(x), dtype=float), np.asarray(_array(y), dtype=float)
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


def confusion_matrix(confusion: ArrayLike, classes: Sequence[str], *, ax: Axes | None = None) -> FigureLike:
    """Counts of (true class, predicted class); the diagonal is what the model gets right."""
    confusion = _array(confusion)
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


def training_curves(
    records: Sequence[Mapping],
    live: Mapping[str, Sequence[float]] | None = None,
    *,
    epochs: int | None = None,
    fig: FigureLike | None = None,
) -> FigureLike:
    """Loss and accuracy per epoch (train and validation), with the running training values
    between epochs (``live``: ``x`` in fractional epochs, ``train_loss``, ``train_acc``)."""
    fig = fig or Figure(figsize=(8.4, 3.0), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = [r["epoch"] for r in records]
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        if live and live.get("x"):
            ax.plot(live["x"], live[f"train_{key}"], color="0.55", lw=1, label="train (running)")
        if records:
            ax.plot(x, [r[f"train_{key}"] for r in records], "o-", color="C0", ms=3, label="train")
            ax.plot(x, [r[f"val_{key}"] for r in records], "s-", color="C1", ms=3, label="validation")
        ax.set(title=title, xlabel="epoch")
        if epochs:
            ax.set_xlim(0, epochs)
        ax.grid(alpha=0.3)
        if records or (live and live.get("x")):
            ax.legend(fontsize="small")
    if records or (live and live.get("x")):
        ax_loss.set_yscale("log")
    return fig


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
    from .diagnostics import UPDATE_RATIO_TYPICAL  # a Record comes from there: torch is loaded already

    typical_update = typical_update or UPDATE_RATIO_TYPICAL
    fig = fig or Figure(figsize=(12.5, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    r = record
    if not len(r):
        raise ValueError("nothing recorded yet: train with the monitor for at least one step")
    index = index % len(r)
    step, name = r.steps[index], r.layers[layer]
    lo, hi = r.grad_range
    edges = np.linspace(lo, hi, r.grad_hist.shape[-1] + 1)

    ax = axes[0, 0]
    ax.stairs(r.grad_hist[0, layer], edges, color="0.6", label=f"step {r.steps[0]}")
    ax.stairs(r.grad_hist[index, layer], edges, fill=True, alpha=0.7, color="C0", label=f"step {step}")
    ax.set(title=f"{name}: gradient histogram", xlabel="log10 |grad|", ylabel="fraction of entries")
    ax.legend(fontsize="small")

    ax = axes[0, 1]
    flow = np.nan_to_num(r.grad_abs_mean[index], nan=0.0, posinf=0.0)
    shown = flow[flow > 0]
    floor = shown.min() / 10 if len(shown) else 1e-12  # zero bars sit on the floor, not at 1e-30
    ax.bar(
        range(1, len(flow) + 1),
        np.maximum(flow, floor),
        bottom=0,
        color=["C3" if j == layer else "C0" for j in range(len(flow))],
    )
    ax.set_yscale("log")
    ax.set_ylim(floor, max(shown.max() * 3, floor * 10) if len(shown) else 1)
    for zero in np.flatnonzero(flow <= 0):
        ax.text(zero + 1, floor, "0", ha="center", va="bottom", fontsize="small", color="C3")
    if not len(shown):
        ax.text(
            0.5,
            0.5,
            "no gradient reaches any layer:\nevery mean |grad| is 0",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="C3",
        )
    ax.set_xticks(range(1, len(flow) + 1))
    ax.set(title=f"gradient flow at step {step}", ylabel="mean |grad|", xlabel="weight tensor (1 = input side)")

    ax = axes[0, 2]
    for j in range(len(r.layers)):
        ax.plot(
            r.steps,
            np.maximum(r.update_ratio[:, j], 1e-12),
            color="C3" if j == layer else "0.7",
            lw=2 if j == layer else 0.8,
            zorder=3 if j == layer else 2,
        )
    ax.axhspan(
        *typical_update, color="C2", alpha=0.12, label=f"typical: {typical_update[0]:g} to {typical_update[1]:g}"
    )
    ax.axvline(step, color="C1", lw=0.8)
    ax.set_yscale("log")
    ax.set(title="update / weight per step", xlabel="step")
    ax.legend(fontsize="small", loc="lower left")

    def heat(ax, hist, extent, title, ylabel):
        image = ax.imshow(
            np.log10(hist.T + 1e-4), origin="lower", aspect="auto", extent=extent, cmap="viridis", vmin=-4, vmax=0
        )
        ax.axvline(step, color="w", lw=0.8)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        fig.colorbar(image, ax=ax, label="log10 fraction of entries", shrink=0.9)

    x0, x1 = r.steps[0], r.steps[-1] + max(1, (r.steps[-1] - r.steps[0]) // max(len(r) - 1, 1))
    heat(axes[1, 0], r.grad_hist[:, layer], (x0, x1, lo, hi), f"{name}: log10 |grad| over time", "log10 |grad|")
    act = r.activation_after[layer]
    if act is None:
        for ax in axes[1, 1:]:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no activation after this layer", ha="center", va="center", transform=ax.transAxes)
    else:
        a_lo, a_hi = r.activation_ranges[act]
        heat(
            axes[1, 1],
            r.act_hist[:, act],
            (x0, x1, a_lo, a_hi),
            f"{r.activations[act]} ({r.activation_kinds[act]}): outputs over time",
            "output",
        )
        ax = axes[1, 2]
        ax.plot(r.steps, r.act_inactive[:, act], color="C3")
        ax.axvline(step, color="C1", lw=0.8)
        what = "dead" if r.activation_kinds[act] == "relu" else "saturated"
        ax.set(title=f"{r.activations[act]}: fraction {what}", xlabel="step", ylim=(-0.02, 1.02))
    for ax in axes.flat:
        ax.grid(alpha=0.2)
    return fig


def prediction(image: ArrayLike, top: Sequence[tuple[str, float]], *, latency_ms: float | None = None) -> Figure:
    """An image beside its top-k classes as bars (what an endpoint answered); with no ``top``
    yet, the image and a note that it has not been sent."""
    fig = Figure(figsize=(6.4, 2.4), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 2])
    img = _array(image)
    img = img[0] if img.ndim == 3 and img.shape[0] == 1 else (img.transpose(1, 2, 0) if img.ndim == 3 else img)
    ax_img.imshow(img, cmap="gray_r" if img.ndim == 2 else None)
    ax_img.set_axis_off()
    if not top:
        ax_bar.set_axis_off()
        ax_bar.text(0.5, 0.5, "not sent yet: press Send", ha="center", va="center", transform=ax_bar.transAxes)
        return fig
    labels, probs = [str(label) for label, _ in top][::-1], [p for _, p in top][::-1]
    ax_bar.barh(labels, probs, color=["C0"] * (len(probs) - 1) + ["C2"])
    ax_bar.set(
        xlim=(0, 1),
        xlabel="probability",
        title="top classes" + (f" · {latency_ms:.1f} ms" if latency_ms is not None else ""),
    )
    return fig


def latency_histogram(latencies_ms: Sequence[float], *, title: str = "") -> Figure:
    """Request latencies with the 50th, 95th and 99th percentiles marked."""
    fig = Figure(figsize=(6.4, 2.6), layout="constrained")
    ax = fig.subplots()
    lat = np.asarray(latencies_ms, dtype=float)
    ax.hist(lat, bins=min(40, max(5, len(lat) // 5)), color="C0", alpha=0.8)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = np.percentile(lat, q)
        ax.axvline(value, color="C3", ls=style, label=f"p{q} {value:.1f} ms")
    ax.set(xlabel="latency (ms)", ylabel="requests", title=title)
    ax.legend(fontsize="small")
    return fig


def _pixels(img: np.ndarray) -> np.ndarray:
    """C x H x W (or H x W) as something imshow draws: H x W for one channel, H x W x C scaled to 0..1."""
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo or 1)


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
    images = _array(images)
    arrays = {name: _array(m) for name, m in maps.items()}
    if images.ndim != 4 or not len(images):
        raise ValueError(f"attributions needs images as N x C x H x W; got shape {list(images.shape)}")
    for name, m in arrays.items():
        if m.shape != images.shape:
            raise ValueError(f"the {name!r} map has shape {list(m.shape)}, the images {list(images.shape)}")
    n, cols = len(images), 1 + len(arrays)
    fig = Figure(figsize=(size * cols, (size + 0.3) * n), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        shown = _pixels(images[i])
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
    labels = _array(labels).astype(int)
    fig = Figure(figsize=(5.2 * len(panels) + 0.6, 5.2), layout="constrained")
    grid = fig.subplots(2, len(panels), squeeze=False, height_ratios=[4, 1])
    for k, (title, (coords, variance)) in enumerate(panels.items()):
        coords, ratios = _array(coords), np.asarray(variance, dtype=float)
        ax, bar = grid[0, k], grid[1, k]
        points = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=8, alpha=0.7, vmin=-0.5, vmax=9.5)
        mask = np.zeros(len(labels), bool) if wrong is None else _array(wrong).astype(bool)
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
