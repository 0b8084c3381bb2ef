"""GradientInspector: browse what a GradientMonitor recorded, layer by layer and step by step."""

from __future__ import annotations

import html

import ipywidgets as w

from .. import plots
from ..diagnostics import GradientMonitor
from .base import CONTROL, WidgetBase, figure_image, flow

__all__ = ["GradientInspector"]


class GradientInspector(WidgetBase):
    """A run dropdown (when given several monitors), a layer dropdown and a step slider over
    six panels (see :func:`maaskit.plots.gradient_inspection`), with the monitor's diagnosis.

    ``GradientInspector(monitor)`` or ``GradientInspector({"sigmoid": m1, "relu": m2})``.
    Headless it shows one still picture and the diagnosis as text.
    """

    def __init__(
        self,
        monitors: GradientMonitor | dict[str, GradientMonitor],
        *,
        run: str | None = None,
        layer: int = 0,
        debounce: float = 0.15,
    ):
        if isinstance(monitors, GradientMonitor):
            monitors = {"run": monitors}
        if not monitors:
            raise ValueError("give at least one GradientMonitor")
        empty = [name for name, m in monitors.items() if not len(m.record)]
        if empty:
            raise ValueError(f"nothing recorded yet for {', '.join(empty)}: train with the monitor first")
        self.monitors = dict(monitors)
        self.renders = 0
        self._debounce(self.render, debounce)
        ctl = CONTROL
        self.run_w = w.Dropdown(
            options=list(self.monitors), value=run or next(iter(self.monitors)), description="run", **ctl
        )
        self.layer_w = w.Dropdown(description="layer", **ctl)
        # the step slider gets the width that is left: one record per notch
        self.step_w = w.SelectionSlider(
            options=[0],
            description="step",
            style=ctl["style"],
            continuous_update=True,
            layout=w.Layout(width="100%", max_width="620px", margin="2px 0px"),
        )
        self.image = figure_image(1000)
        self.messages = w.HTML()
        self.messages.add_class("maaskit-diagnosis")
        self._set_run(layer)
        self.run_w.observe(self._on_run, names="value")
        self.layer_w.observe(self._schedule, names="value")
        self.step_w.observe(self._schedule, names="value")
        choices = flow([self.run_w, self.layer_w] if len(self.monitors) > 1 else [self.layer_w])
        self.widget = w.VBox([choices, self.step_w, self.image, self.messages])
        self.widget.add_class("maaskit-gradient-inspector")
        self.render()

    def _on_run(self, _change: object) -> None:
        self._set_run(0)
        self._redraw()

    @property
    def monitor(self) -> GradientMonitor:
        return self.monitors[self.run_w.value]

    def _set_run(self, layer: int):
        record = self.monitor.record
        with self._quietly():  # new options move the values: one redraw afterwards, not one per change
            # numbered as in the gradient-flow panel: 1 is the input side
            self.layer_w.options = [(f"{j + 1}: {name}", j) for j, name in enumerate(record.layers)]
            self.layer_w.value = layer % len(record.layers)
            self.step_w.options = [int(s) for s in record.steps]
            self.step_w.value = self.step_w.options[-1]

    def render(self):
        record = self.monitor.record
        index = list(record.steps).index(self.step_w.value)
        self.figure = plots.gradient_inspection(record, self.layer_w.value, index)
        self.image.value = plots.png_bytes(self.figure, dpi=72)
        self.messages.value = self._messages_html()
        self.renders += 1

    def _messages_html(self) -> str:
        found = self.monitor.diagnose()
        if not found:
            return f"<b>{html.escape(self.run_w.value)}</b>: nothing wrong seen."
        items = "".join(f"<li>{html.escape(m)}</li>" for m in found)
        return f"<b>{html.escape(self.run_w.value)}</b>:<ul style='margin:0'>{items}</ul>"

    def __str__(self) -> str:
        found = self.monitor.diagnose()
        return f"{self.run_w.value}: " + ("nothing wrong seen" if not found else "\n  " + "\n  ".join(found))

    def still_png(self) -> bytes:
        return bytes(self.image.value)
