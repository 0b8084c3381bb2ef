"""Interactive widgets. Each one is plain Python over maaskit's tools plus ipywidgets controls,
and falls back to a static figure and text where no widget front end is running.

Imported on first use, like the rest of the package: ``from maaskit.widgets import ChatConsole``
does not load PyTorch's training stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names: for type checkers and editors, and read by lazy_exports
    from .chat import ChatConsole
    from .console import EndpointConsole
    from .dashboard import TrainingDashboard
    from .engine_scope import EngineScope
    from .inspector import GradientInspector
    from .lm_dashboard import LMDashboard
    from .playground import OptimizerPlayground

__getattr__, __dir__, __all__ = lazy_exports(__name__)
