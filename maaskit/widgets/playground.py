"""OptimizerPlayground: move a slider, watch real ``torch.optim`` optimizers take a different path."""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Sequence

import ipywidgets as w

from .. import plots
from ..surfaces import PATH_OPTIMIZERS, SURFACES, make_optimizer, run_path
from .base import CONTROL, WidgetBase, figure_image, flow, log_slider

__all__ = ["OptimizerPlayground"]


class OptimizerPlayground(WidgetBase):
    """Compare optimizers on a 2-D test function.

    In JupyterLab it is a widget: the controls above, then the contour with one path per
    optimizer beside the loss per step, redrawn in place (debounced) when a control moves.
    Anywhere else — papermill, nbval, a console — displaying it gives one static figure and a
    text table instead of a widget that nothing renders.
    """

    # long: one line per control of the playground, laid out as it appears
    def __init__(
        self,
        surface: str = "rosenbrock",
        optimizers: Sequence[str] = ("SGD", "Momentum", "Adam"),
        *,
        lr: float = 2e-3,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        steps: int = 150,
        start: tuple[float, float] | None = None,
        debounce: float = 0.15,
    ):
        if surface not in SURFACES:
            raise ValueError(f"unknown surface {surface!r}; expected one of {', '.join(SURFACES)}")
        unknown = [o for o in optimizers if o not in PATH_OPTIMIZERS]
        if unknown:
            raise ValueError(
                f"unknown optimizer(s) {', '.join(map(repr, unknown))}; expected any of {', '.join(PATH_OPTIMIZERS)}"
            )
        self._debounce(self.render, debounce)
        self.renders = 0  # how many times the figure was drawn (tests and curious learners)
        self.paths: list = []

        ctl = CONTROL
        self.surface_w = w.Dropdown(options=list(SURFACES), value=surface, description="function", **ctl)
        self.optimizers_w = w.SelectMultiple(
            options=list(PATH_OPTIMIZERS),
            value=tuple(optimizers),
            rows=len(PATH_OPTIMIZERS),
            description="optimizers",
            **ctl,
        )
        # the widest control: 4 decades over the notebook's width, so a small drag is a small change
        self.lr_w = log_slider(
            "learning rate", lr, -4, 0, step=0.01, fmt=".3g", width="100%", max_width="720px", margin="2px 0px"
        )
        self.momentum_w = w.FloatSlider(value=momentum, min=0, max=0.99, step=0.01, description="momentum", **ctl)
        self.beta1_w = w.FloatSlider(value=betas[0], min=0, max=0.99, step=0.01, description="Adam β₁", **ctl)
        self.beta2_w = w.FloatSlider(
            value=betas[1], min=0.9, max=0.9999, step=0.0001, readout_format=".4f", description="Adam β₂", **ctl
        )
        self.steps_w = w.IntSlider(value=steps, min=10, max=500, step=10, description="steps", **ctl)
        self.x0_w = w.FloatSlider(description="start x", step=0.05, **ctl)
        self.y0_w = w.FloatSlider(description="start y", step=0.05, **ctl)
        self._fit_start_sliders(start)
        self.image = figure_image(760)
        self.status = w.HTML()
        controls = [
            self.surface_w,
            self.optimizers_w,
            self.lr_w,
            self.momentum_w,
            self.beta1_w,
            self.beta2_w,
            self.steps_w,
            self.x0_w,
            self.y0_w,
        ]
        columns = flow(
            [
                w.VBox([self.surface_w, self.optimizers_w]),
                w.VBox([self.momentum_w, self.beta1_w, self.beta2_w]),
                w.VBox([self.steps_w, self.x0_w, self.y0_w]),
            ]
        )
        self.widget = w.VBox([self.lr_w, columns, self.image, self.status])
        self.widget.add_class("maaskit-optimizer-playground")

        self.surface_w.observe(self._on_surface, names="value")
        for control in controls[1:]:
            control.observe(self._schedule, names="value")
        self.render()

    # --- reacting to controls -------------------------------------------------------------

    def _fit_start_sliders(self, start=None):
        """Give the start sliders the current surface's window and put them at its start point."""
        s = SURFACES[self.surface_w.value]
        x, y = start or s.start
        for slider, (lo, hi), value in ((self.x0_w, s.xlim, x), (self.y0_w, s.ylim, y)):
            # widen first, then narrow, so the value is never clamped on the way
            slider.min, slider.max = min(slider.min, lo), max(slider.max, hi)
            slider.value = value
            slider.min, slider.max = lo, hi

    def _on_surface(self, _change):
        with self._quietly():  # moving the start sliders would schedule renders of their own
            self._fit_start_sliders()
        self._schedule()

    # --- drawing --------------------------------------------------------------------------

    def run(self):
        """One path per selected optimizer, with the current settings."""
        surface = SURFACES[self.surface_w.value]
        hyper = {
            "lr": self.lr_w.value,
            "momentum": self.momentum_w.value,
            "betas": (self.beta1_w.value, self.beta2_w.value),
        }
        return [
            run_path(
                surface,
                functools.partial(make_optimizer, name, **hyper),
                self.steps_w.value,
                start=(self.x0_w.value, self.y0_w.value),
                label=name,
            )
            for name in self.optimizers_w.value
        ]

    def render(self):
        surface = SURFACES[self.surface_w.value]
        self.paths = self.run()
        title = f"{surface.name}, learning rate {self.lr_w.value:.2g}"
        self.figure = plots.optimizer_paths(surface, self.paths, title=title)
        self.image.value = plots.png_bytes(self.figure)
        self.status.value = self._table_html()
        self.renders += 1

    def rows(self) -> list[tuple[str, int, float, float, str]]:
        """(optimizer, steps run, final f, distance to the minimum, status) for each path. A path that
        diverged at step k ran k steps, the last of which left the window."""
        surface = SURFACES[self.surface_w.value]
        out = []
        for p in self.paths:
            x, y = p.points[-1] if p.points else (math.nan, math.nan)
            distance = math.dist((x, y), surface.minimum)
            steps = p.diverged_at if p.diverged_at is not None else len(p.points) - 1
            out.append((p.label, steps, p.losses[-1] if p.losses else math.nan, distance, p.status))
        return out

    def _table_html(self) -> str:
        if not self.paths:
            return "<b>Choose at least one optimizer.</b>"
        cells = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{steps}</td><td>{f:.3g}</td><td>{d:.3g}</td>"
            f"<td style='color:{'#c00' if status != 'ok' else 'inherit'}'>{status}</td></tr>"
            for name, steps, f, d, status in self.rows()
        )
        return (
            "<table class='maaskit-table'><tr><th>optimizer</th><th>steps</th><th>final f</th>"
            f"<th>distance to minimum</th><th>status</th></tr>{cells}</table>"
        )

    def __str__(self) -> str:
        if not self.paths:
            return "Choose at least one optimizer."
        lines = [f"{'optimizer':<10} {'steps':>5} {'final f':>10} {'to minimum':>10}  status"]
        lines += [f"{n:<10} {s:>5} {f:>10.3g} {d:>10.3g}  {st}" for n, s, f, d, st in self.rows()]
        return "\n".join(lines)

    def still_png(self) -> bytes:
        return bytes(self.image.value)
