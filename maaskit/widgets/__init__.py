"""Interactive widgets. Each one is plain Python over maaskit's tools plus ipywidgets controls,
and falls back to a static figure and text where no widget front end is running."""

from .console import EndpointConsole
from .dashboard import TrainingDashboard
from .inspector import GradientInspector
from .playground import OptimizerPlayground

__all__ = ["EndpointConsole", "GradientInspector", "OptimizerPlayground", "TrainingDashboard"]
