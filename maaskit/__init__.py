"""maaskit: notebooks and widgets for learning and practising models as a service."""

__version__ = "0.1.0"

from .data import load_dataset  # noqa: E402
from .device import pick_device, seed_everything  # noqa: E402
from .models import build_model, summary  # noqa: E402
from .report import publish_metrics, read_metrics  # noqa: E402
from .serving import serve  # noqa: E402  (imports the server only when called)

__all__ = ["__version__", "build_model", "load_dataset", "pick_device", "publish_metrics",
           "read_metrics", "seed_everything", "serve", "summary"]
