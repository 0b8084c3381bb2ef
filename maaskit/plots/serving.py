"""Serving: one prediction with its top classes, and the latencies of many."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from .figures import ArrayLike, as_array

if TYPE_CHECKING:
    pass

__all__ = ["latency_histogram", "prediction"]


def prediction(image: ArrayLike, top: Sequence[tuple[str, float]], *, latency_ms: float | None = None) -> Figure:
    """An image beside its top-k classes as bars (what an endpoint answered); with no ``top``
    yet, the image and a note that it has not been sent."""
    fig = Figure(figsize=(6.4, 2.4), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 2])
    img = as_array(image)
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
