"""TrainingDashboard: train with buttons and watch the curves, or attach it to any ``fit()`` —
of an image classifier, or of a language model (then it shows the LMDashboard's view)."""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as w
import numpy as np
import torch
from matplotlib.figure import Figure

from .. import plots
from ..data import DATASETS, ImageDataset, load_dataset
from ..device import available_devices, seed_everything
from ..evaluation import Evaluation, evaluate
from ..models import IMAGE_MODELS, build_model
from ..recipes import Recipe, default_recipe
from ..run import Callback, History, Run
from ..train import OPTIMIZERS, SCHEDULERS, fit
from .base import CONTROL, WidgetBase, figure_image, flow, log_slider
from .lm_dashboard import LMDashboard
from .svgchart import line_chart

__all__ = ["TrainingDashboard"]


class TrainingDashboard(WidgetBase, Callback):
    """Controls, Train/Stop, live progress and curves, and at the end a confusion matrix and
    sample predictions.

    - **Train** runs ``fit()`` in a background thread: the kernel stays free and **Stop**
      ends training within a batch.
    - ``dashboard.fit()`` trains with the controls' settings in the calling thread (blocking;
      what papermill and scripts use); ``fit(model, data, callbacks=[dashboard])`` shows any run.
    - Curves redraw in place at most every ``redraw_every`` seconds, reading the device then only.
    - Where no widget front end runs, displaying it gives one static figure and a summary.
    - Attached to the ``fit()`` of a language model (a ``maaskit.lm.TextDataset``, or
      ``train_language_model(callbacks=[dashboard])``) it becomes that run's :class:`LMDashboard`:
      loss and perplexity curves and a sample of generated text that updates as it learns.
    """

    # long: one line per control of the dashboard, laid out as it appears
    def __init__(
        self,
        data: ImageDataset | None = None,
        *,
        dataset: str = "digits",
        recipe: Recipe | None = None,
        model: str | None = None,
        optimizer: str | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        epochs: int | None = None,
        scheduler: str | None = None,
        augment: bool | None = None,
        device: str = "auto",
        seed: int = 0,
        redraw_every: float = 0.25,
    ):
        if data is not None and not isinstance(data, ImageDataset):
            raise TypeError(
                f"the TrainingDashboard's controls build image classifiers, not a model for {type(data).__name__}; "
                "for a language model pass TrainingDashboard() (or LMDashboard()) to "
                "maaskit.lm.train_language_model(callbacks=[...]) or to fit(model, data, callbacks=[...])"
            )
        # the controls start at the dataset's default recipe (maaskit.recipes); arguments given win
        given = {
            "model": model,
            "optimizer": optimizer,
            "lr": lr,
            "batch_size": batch_size,
            "epochs": epochs,
            "scheduler": scheduler,
            "augment": augment,
        }
        r = self.recipe = (recipe or default_recipe(data.name if data is not None else dataset)).but(
            **{k: v for k, v in given.items() if v is not None}
        )
        self.data = data
        self._datasets = {data.name: data} if data is not None else {}
        self.seed, self.redraw_every = seed, redraw_every
        self.model: torch.nn.Module | None = None
        self.history: History | None = None
        self.evaluation: Evaluation | None = None
        self.run: Run | None = None
        self.error: Exception | None = None
        self.redraws = 0
        self._thread: threading.Thread | None = None
        self._last_draw = 0.0
        self._live: dict[str, list[float]] = {"x": [], "train_loss": [], "train_acc": []}
        self._handle: Any = None
        self._text: LMDashboard | None = None  # the view of a language model's run, made when one starts

        ctl = CONTROL
        devices = ["auto", *available_devices()]
        names = list(DATASETS) + [n for n in self._datasets if n not in DATASETS]  # a dataset of your own too
        # the dataset given, or any other maaskit loads by name (mnist and cifar10 download once)
        self.dataset_w = w.Dropdown(
            options=names, value=data.name if data is not None else dataset, description="dataset", **ctl
        )
        self.model_w = w.Dropdown(options=list(IMAGE_MODELS), value=r.model, description="model", **ctl)
        self.optimizer_w = w.Dropdown(options=list(OPTIMIZERS), value=r.optimizer, description="optimizer", **ctl)
        self.lr_w = log_slider("learning rate", r.lr, -5, 0, step=0.1, fmt=".1e")
        self.scheduler_w = w.Dropdown(
            options=["none", *SCHEDULERS], value=r.scheduler or "none", description="lr schedule", **ctl
        )
        self.batch_size_w = w.Dropdown(
            options=[8, 16, 32, 64, 128, 256, 512], value=r.batch_size, description="batch size", **ctl
        )
        self.epochs_w = w.IntSlider(value=r.epochs, min=1, max=200, description="epochs", **ctl)
        self.device_w = w.Dropdown(
            options=devices, value=device if device in devices else "auto", description="device", **ctl
        )
        self.augment_w = w.Checkbox(
            value=r.augment, description="augment (random crops)", indent=False, layout=w.Layout(width="200px")
        )
        self.train_button = w.Button(description="Train", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.train_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())

        self.progress = w.IntProgress(
            value=0, min=0, max=1, layout=w.Layout(width="100%", max_width="728px", margin="2px 0px")
        )
        self.status = w.HTML("Set the controls and press <b>Train</b>.")
        self.curves = w.HTML()  # live SVG: cheap enough to redraw while training (see svgchart)
        self.final = figure_image(760)
        self.final.layout.display = "none"
        self.summary = w.HTML()
        self.status.add_class("maaskit-status")  # names for the browser tests (and custom CSS)
        self.summary.add_class("maaskit-summary")
        controls = flow(
            [
                w.VBox([self.dataset_w, self.model_w, self.optimizer_w, self.lr_w, self.scheduler_w]),
                w.VBox(
                    [
                        self.batch_size_w,
                        self.epochs_w,
                        self.device_w,
                        self.augment_w,
                        w.HBox([self.train_button, self.stop_button]),
                    ]
                ),
            ]
        )
        self._image_view = [controls, self.progress, self.status, self.curves, self.final, self.summary]
        self.widget = w.VBox(self._image_view)
        self.widget.add_class("maaskit-training-dashboard")
        self._draw_curves()

    # --- starting and stopping ------------------------------------------------------------

    def _settings(self) -> dict:
        scheduler = None if self.scheduler_w.value == "none" else self.scheduler_w.value
        return {
            "optimizer": self.optimizer_w.value,
            "lr": self.lr_w.value,
            "scheduler": scheduler,
            "batch_size": self.batch_size_w.value,
            "epochs": self.epochs_w.value,
            "device": self.device_w.value,
            "augment": self.augment_w.value,
            "seed": self.seed,
        }

    def _prepare(self) -> tuple[torch.nn.Module, ImageDataset]:
        name = self.dataset_w.value
        if name not in self._datasets:
            self.status.value = f"loading {html.escape(name)} …"
            self._datasets[name] = load_dataset(name)
        data = self.data = self._datasets[name]
        seed_everything(self.seed)
        model = self.model = build_model(self.model_w.value, data.in_shape, data.num_classes)
        return model, data

    def fit(self, **overrides: Any) -> History:
        """Train with the controls' settings (``overrides`` win) in this thread; returns the history."""
        model, data = self._prepare()
        settings = {**self._settings(), **overrides}
        return fit(model, data, callbacks=[self], **settings)

    def start(self):
        """What the Train button does: train in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.error = None
        self._thread = threading.Thread(target=self._train_in_background, name="maaskit-training", daemon=True)
        self._thread.start()

    def _train_in_background(self):
        try:
            self.fit()
        except Exception as err:  # shown in the dashboard: a background thread has nowhere else to report
            self.error = err
            self.status.value = f"<span style='color:#c00'><b>{type(err).__name__}:</b> {html.escape(str(err))}</span>"
        finally:
            self.train_button.disabled, self.stop_button.disabled = False, True

    def stop(self):
        """What the Stop button does: end training after the current batch."""
        if self.run is not None:
            self.run.request_stop()
        self.stop_button.disabled = True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until background training ends; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def training(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- a language model's run: shown by an LMDashboard inside this one ------------------

    @property
    def sampler(self):
        """The text sampler of a language model's run (``train_language_model`` reuses it, so the
        samples shown are the samples it returns)."""
        return self._text_view().sampler

    def _text_view(self) -> LMDashboard:
        if self._text is None:
            self._text = LMDashboard(redraw_every=self.redraw_every)
        return self._text

    def _text_run(self, run: Run) -> LMDashboard | None:
        """The LMDashboard that shows ``run`` when it trains a language model, else None."""
        if isinstance(run.data, ImageDataset):
            return None
        return self._text_view()

    # --- the callback ---------------------------------------------------------------------

    def on_fit_start(self, run: Run) -> None:
        if not isinstance(run.data, ImageDataset):
            text = self._text_view()
            self.run, self.history = run, run.history
            self.widget.children = [text.widget]  # its curves and samples instead of the image controls
            return text.on_fit_start(run)
        self.widget.children = self._image_view
        self.run, self.data, self.model = run, run.data, run.model
        self.history = run.history
        self.train_button.disabled, self.stop_button.disabled = True, False
        self._live = {"x": [], "train_loss": [], "train_acc": []}
        self.progress.max = run.epochs * run.steps_per_epoch
        self.progress.value = run.step
        self.final.layout.display = "none"
        self.summary.value = ""
        self._last_draw = 0.0
        self._draw_curves()

    def on_batch_end(self, run: Run) -> None:
        if (text := self._text_run(run)) is not None:
            return text.on_batch_end(run)
        now = time.monotonic()
        if now - self._last_draw < self.redraw_every:
            return  # most steps: nothing read from the device, nothing drawn
        self._last_draw = now
        metrics = run.running_metrics()
        self._live["x"].append(run.epoch - 1 + run.epoch_step / run.steps_per_epoch)
        self._live["train_loss"].append(metrics["train_loss"])
        self._live["train_acc"].append(metrics["train_acc"])
        self._show_progress(run, metrics)
        self._draw_curves()

    def on_epoch_end(self, run: Run) -> None:
        self.history = run.history
        if (text := self._text_run(run)) is not None:
            return text.on_epoch_end(run)
        if time.monotonic() - self._last_draw >= self.redraw_every:
            self._last_draw = time.monotonic()
            self._show_progress(run, run.history.last)
            self._draw_curves()

    def on_fit_end(self, run: Run) -> None:
        self.history = run.history
        if (text := self._text_run(run)) is not None:
            text.on_fit_end(run)  # prints its summary
            if self._handle is not None:
                self._handle.update(self._repr_mimebundle_(), raw=True)
            return
        self.progress.value = run.step
        self._draw_curves()
        assert isinstance(run.data, ImageDataset)
        self.evaluation = evaluate(run.model, run.data)
        self._draw_final()
        self.summary.value = self._summary_html()
        self.status.value = html.escape(self._status_line(run))
        self.train_button.disabled, self.stop_button.disabled = False, True
        print(str(self))
        if self._handle is not None:  # headless: the displayed output becomes the final picture
            self._handle.update(self._repr_mimebundle_(), raw=True)

    # --- drawing --------------------------------------------------------------------------

    def _status_line(self, run, metrics=None) -> str:
        metrics = metrics or run.history.last
        total = run.epochs * run.steps_per_epoch
        rate = metrics.get("images_per_s", 0.0)
        left = (total - run.step) * run.batch_size / rate if rate else float("nan")
        state = f"stopped: {run.stop_reason}" if run.stop_reason else ("done" if run.step >= total else "training")
        return (
            f"epoch {run.epoch}/{run.epochs} · step {run.step}/{total} · {rate:,.0f} img/s · "
            + (f"ETA {left:.0f} s · " if state == "training" and np.isfinite(left) else "")
            + state
        )

    def _show_progress(self, run, metrics):
        self.progress.value = run.step
        self.status.value = html.escape(self._status_line(run, metrics))

    def _draw_curves(self):
        epochs = self.run.epochs if self.run is not None else self.epochs_w.value
        records = self.history.records if self.history is not None else []
        x = [r["epoch"] for r in records]
        charts = []
        for key, title in (("loss", "loss"), ("acc", "accuracy")):
            series = {
                "train (running)": (self._live["x"], self._live[f"train_{key}"], "faint", 5),  # grey
                "train": (x, [r[f"train_{key}"] for r in records], "points", 0),
                "validation": (x, [r[f"val_{key}"] for r in records], "points", 1),
            }
            charts.append(line_chart(series, title=title, xlabel="epoch", xlim=(0, epochs), log_y=key == "loss"))
        self.curves.value = (
            f"<div class='maaskit-curves' style='display:flex;flex-wrap:wrap;gap:8px'>{''.join(charts)}</div>"
        )
        self.redraws += 1

    def _draw_final(self):
        ev, data = self.evaluation, self.data
        assert ev is not None and data is not None
        wrong = np.flatnonzero(ev.predictions != ev.labels)[:8]
        right = np.flatnonzero(ev.predictions == ev.labels)[: 16 - len(wrong)]
        show = np.concatenate([wrong, right])
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        left, right_fig = fig.subfigures(1, 2, width_ratios=[1, 1.5])  # type: ignore[misc]
        plots.confusion_matrix(ev.confusion, data.classes, ax=left.subplots())
        plots.image_grid(
            data.test.x[show], ev.labels[show], ev.predictions[show], classes=data.classes, ncols=4, fig=right_fig
        )
        right_fig.suptitle("test predictions (mistakes in red)")
        self.final_figure = fig
        self.final.value = plots.png_bytes(fig)
        self.final.layout.display = None

    def figure(self) -> Figure:
        """One static figure of the whole run: curves, confusion matrix, sample predictions."""
        fig = Figure(figsize=(10, 7.5), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.4])  # type: ignore[misc]
        records = self.history.records if self.history is not None else []
        plots.history(records, groups=("loss", "accuracy"), live=self._live, fig=top, log_loss=True)
        if self.evaluation is not None and self.data is not None:
            ev, data = self.evaluation, self.data
            left, right = bottom.subfigures(1, 2, width_ratios=[1, 1.5])
            plots.confusion_matrix(ev.confusion, data.classes, ax=left.subplots())
            show = np.concatenate(
                [np.flatnonzero(ev.predictions != ev.labels)[:6], np.flatnonzero(ev.predictions == ev.labels)[:6]]
            )
            plots.image_grid(
                data.test.x[show], ev.labels[show], ev.predictions[show], classes=data.classes, ncols=4, fig=right
            )
        return fig

    def _summary_html(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"

    def __str__(self) -> str:
        if self._text is not None and self._text.history is not None:
            return str(self._text)
        return self._training_report(self.history, self._final_lines)

    def _final_lines(self, last: dict) -> list[str]:
        lines = [
            f"final: train loss {last['train_loss']:.4f} acc {last['train_acc']:.2%} · "
            f"val loss {last['val_loss']:.4f} acc {last['val_acc']:.2%}"
        ]
        if self.evaluation is not None:
            ev = self.evaluation
            weakest = int(np.argmin(ev.per_class_accuracy))
            lines.append(
                f"test accuracy {ev.accuracy:.2%} on {len(ev.labels)} images; weakest class "
                f"{ev.classes[weakest]!r} at {ev.per_class_accuracy[weakest]:.0%}"
            )
        return lines

    # --- display --------------------------------------------------------------------------

    def still_png(self) -> bytes:
        if self._text is not None and self._text.history is not None:
            return self._text.still_png()
        return plots.png_bytes(self.figure())

    def _ipython_display_(self):
        # Displayed with an id so that, when training ends, a headless run's output is replaced
        # by the final state.
        from IPython.display import display

        self._handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
