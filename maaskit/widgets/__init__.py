"""Interactive widgets. Each one is plain Python over maaskit's tools plus ipywidgets controls,
and falls back to a static figure and text where no widget front end is running."""

from .chat import ChatConsole
from .console import EndpointConsole
from .dashboard import TrainingDashboard
from .inspector import GradientInspector
from .lm_dashboard import LMDashboard
from .playground import OptimizerPlayground

__all__ = [
    "ChatConsole",
    "EndpointConsole",
    "GradientInspector",
    "LMDashboard",
    "OptimizerPlayground",
    "TrainingDashboard",
]
