"""LMDashboard: watch a language model learn — loss and perplexity curves, and a sample of the
text it writes, redrawn as ``fit()`` runs."""

from __future__ import annotations

import html
import math
import time
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from .. import plots
from ..run import Callback, History, Run
from .base import WidgetBase
from .svgchart import line_chart

__all__ = ["LMDashboard"]


class LMDashboard(WidgetBase, Callback):
    """Attach to ``fit(model, text_data, callbacks=[dashboard])`` (or pass it to
    ``maaskit.lm.train_language_model``): progress, loss and perplexity (training running and per
    epoch, validation per epoch), a **Stop** button, and the latest sample of generated text
    (:class:`maaskit.lm.SampleText`, which ``train_language_model`` adds, or ``samples=`` here).

    Headless (papermill, scripts) it shows a still figure and prints its summary at the end."""

    order = 20  # after SampleText, so an epoch's sample is shown with its record

    def __init__(self, *, prompt: str = "The ", sample_every: float = 10.0, redraw_every: float = 0.5):
        from ..lm.training.pretrain import SampleText

        self.sampler = SampleText(prompt, every=sample_every)
        self.redraw_every = redraw_every
        self.run: Run | None = None
        self.history: History | None = None
        self._live: dict[str, list[float]] = {"x": [], "loss": []}
        self._last_draw = 0.0
        self._handle: Any = None
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="100%", max_width="728px"))
        self.status = w.HTML("waiting for fit() to start")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.curves = w.HTML()
        self.sample = w.HTML()
        self.status.add_class("maaskit-status")
        self.sample.add_class("maaskit-sample")
        self.widget = w.VBox([w.HBox([self.stop_button, self.status]), self.progress, self.curves, self.sample])
        self.widget.add_class("maaskit-lm-dashboard")
        self._draw()

    def stop(self) -> None:
        if self.run is not None:
            self.run.request_stop()
        self.stop_button.disabled = True

    # --- the callback: SampleText's events are forwarded, so one object is enough to attach ----

    def on_fit_start(self, run: Run) -> None:
        self.run, self.history = run, run.history
        self._live = {"x": [], "loss": []}
        self.progress.max = run.epochs * run.steps_per_epoch
        self.stop_button.disabled = False
        self.sampler.on_fit_start(run)
        self._draw()

    def on_batch_end(self, run: Run) -> None:
        self.sampler.on_batch_end(run)
        if time.monotonic() - self._last_draw < self.redraw_every:
            return
        metrics = run.running_metrics()
        self._live["x"].append(run.epoch - 1 + run.epoch_step / run.steps_per_epoch)
        self._live["loss"].append(metrics["train_loss"])
        self.progress.value = run.step
        self._draw(metrics)

    def on_epoch_end(self, run: Run) -> None:
        self.sampler.on_epoch_end(run)
        self.history = run.history
        self._draw(run.history.last)

    def on_fit_end(self, run: Run) -> None:
        self.history = run.history
        self.progress.value = run.step
        self.stop_button.disabled = True
        self._draw(run.history.last)
        print(str(self))
        if self._handle is not None:  # headless: the displayed output becomes the final picture
            self._handle.update(self._repr_mimebundle_(), raw=True)

    # --- drawing ----------------------------------------------------------------------------------

    def _draw(self, metrics: dict | None = None) -> None:
        self._last_draw = time.monotonic()
        run, records = self.run, (self.history.records if self.history is not None else [])
        epochs = run.epochs if run is not None else 1
        x = [r["epoch"] for r in records]
        charts = []
        for title, f in (("loss (nats per token)", lambda v: v), ("perplexity", math.exp)):
            series = {
                "train (running)": (self._live["x"], [f(v) for v in self._live["loss"]], "faint", 5),
                "train": (x, [f(r["train_loss"]) for r in records], "points", 0),
                "validation": (x, [f(r["val_loss"]) for r in records], "points", 1),
            }
            charts.append(line_chart(series, title=title, xlabel="epoch", xlim=(0, epochs), log_y=True))
        self.curves.value = f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{''.join(charts)}</div>"
        if run is not None and metrics is not None:
            total = run.epochs * run.steps_per_epoch
            state = f"stopped: {run.stop_reason}" if run.stop_reason else ("done" if run.step >= total else "training")
            self.status.value = html.escape(
                f"epoch {run.epoch}/{run.epochs} · step {run.step}/{total} · "
                f"{metrics.get('tokens_per_s', 0):,.0f} tokens/s · {state}"
            )
        if self.sampler.samples:
            step, text = self.sampler.samples[-1]
            self.sample.value = (
                f"<b>sample at step {step}</b><pre style='white-space:pre-wrap;max-width:728px;margin:2px 0'>"
                f"{html.escape(text)}</pre>"
            )

    def figure(self) -> Figure:
        """The curves as a static figure (for headless runs and reports)."""
        records = self.history.records if self.history is not None else []
        return plots.loss_and_perplexity(records, self._live)

    def still_png(self) -> bytes:
        return plots.png_bytes(self.figure())

    def __str__(self) -> str:
        return self._training_report(self.history, self._final_lines)

    def _final_lines(self, last: dict) -> list[str]:
        lines = [
            f"validation loss {last['val_loss']:.3f} nats per token, perplexity {last['val_perplexity']:.1f}, "
            f"next-token accuracy {last['val_acc']:.1%}"
        ]
        if self.sampler.samples:
            lines.append(f"sample at step {self.sampler.samples[-1][0]}: {self.sampler.samples[-1][1]!r}")
        return lines

    def _ipython_display_(self):
        from IPython.display import display

        self._handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
