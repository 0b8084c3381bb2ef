"""What every maaskit widget shares: the fallback where no widget front end runs, and redraws
that wait until a control has been still for a moment."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as w

from .debounce import Debouncer

__all__ = ["WidgetBase"]


class WidgetBase:
    """A widget is plain Python over maaskit's tools plus ``self.widget``, its ipywidgets tree.

    Displayed in JupyterLab it is that tree; in papermill, nbconvert or a console — where nothing
    renders widgets — it is :meth:`still_png` (a picture of its current state) and ``str(self)``.
    """

    widget: w.Box

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
