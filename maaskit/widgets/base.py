"""What every maaskit widget shares: the fallback where no widget front end runs, and redraws
that wait until a control has been still for a moment."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as w

from .debounce import Debouncer

__all__ = ["WidgetBase", "figure_image", "flow", "log_slider"]

# JupyterLab's notebook is about 900 px wide at 1400 px with the file browser open: controls sit
# in rows that wrap, and figures scale down to the width they get, so nothing is ever clipped.
CONTROL = {"style": {"description_width": "100px"}, "layout": w.Layout(width="300px")}


def flow(children: list[w.Widget], *, gap: str = "2px 20px") -> w.Box:
    """Widgets side by side while they fit, wrapping to the next row when they do not."""
    layout = w.Layout(display="flex", flex_flow="row wrap", align_items="flex-start", grid_gap=gap, width="100%")
    return w.Box(children, layout=layout)


def figure_image(max_width: int) -> w.Image:
    """A PNG figure at most ``max_width`` pixels wide, and narrower when the notebook is."""
    # no side margins: 100% of the width plus a margin would stick out by the margin
    layout = w.Layout(width="100%", max_width=f"{max_width}px", height="auto", margin="2px 0px")
    return w.Image(format="png", layout=layout)


def log_slider(description: str, value: float, lo: int, hi: int, *, step: float, fmt: str, **layout: str) -> w.Widget:
    """A slider over decades 10**lo .. 10**hi; the read-out can be typed into for an exact value."""
    shape = w.Layout(**layout) if layout else CONTROL["layout"]
    scale = {"base": 10, "min": lo, "max": hi, "step": step, "readout_format": fmt}
    return w.FloatLogSlider(value=value, description=description, style=CONTROL["style"], layout=shape, **scale)


class WidgetBase:
    """A widget is plain Python over maaskit's tools plus ``self.widget``, its ipywidgets tree.

    Displayed in JupyterLab it is that tree; in papermill, nbconvert or a console — where nothing
    renders widgets — it is :meth:`still_png` (a picture of its current state) and ``str(self)``.
    """

    widget: w.Box

    def _training_report(self, history: Any, details: Callable[[dict], list[str]]) -> str:
        """What a training widget prints: "not trained yet", or the run's summary line and then
        ``details(last record)``."""
        if history is None or not history.records:
            return f"{type(self).__name__}: not trained yet"
        return "\n".join([history.summary(), *details(history.last)])

    def still_png(self) -> bytes | None:
        """A PNG of what the widget shows now, for front ends that cannot render widgets."""
        return None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        png = self.still_png()
        if png:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        bundle["text/plain"] = str(self)
        return bundle

    # --- debounced redraws ------------------------------------------------------------------

    def _debounce(self, action: Callable[[], None], delay: float) -> None:
        self._redraw = Debouncer(action, delay)
        self._quiet = False

    def _schedule(self, _change: object = None) -> None:
        """Observer for controls: redraw once they are still, unless changed by the widget itself."""
        if not self._quiet:
            self._redraw()

    @contextmanager
    def _quietly(self) -> Iterator[None]:
        """Set several controls without one redraw per change."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False
