"""Language models: the loss per token and the perplexity it means, per epoch and running between
epochs (what the LMDashboard shows as a still figure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

__all__ = ["loss_and_perplexity"]


def loss_and_perplexity(
    records: Sequence[Mapping[str, float]], live: Mapping[str, Sequence[float]] | None = None
) -> Figure:
    """Two panels, log-scaled: training and validation loss (nats per token) per epoch, and
    ``exp`` of each (the perplexity); ``live`` adds the running training loss (``x`` in fractional
    epochs, ``loss``)."""
    live = live or {"x": [], "loss": []}
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    epochs = [r["epoch"] for r in records]
    for ax, (title, f) in zip(fig.subplots(1, 2), (("loss (nats per token)", lambda v: v), ("perplexity", math.exp))):
        ax.plot(live["x"], [f(v) for v in live["loss"]], color="0.6", lw=1, label="train (running)")
        ax.plot(epochs, [f(r["train_loss"]) for r in records], "o-", label="train")
        ax.plot(epochs, [f(r["val_loss"]) for r in records], "o-", label="validation")
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.legend(fontsize=8)
    return fig
