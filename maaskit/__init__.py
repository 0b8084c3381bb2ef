"""maaskit: notebooks and widgets for learning and practising models as a service.

The flat API — ``maaskit.fit``, ``maaskit.load_dataset``, ``maaskit.serve``, ``maaskit.Client`` … —
is imported on first use (PEP 562), so ``import maaskit`` is quick and the client and the
protocol never pull in PyTorch. No module of the package imports this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

if TYPE_CHECKING:  # the public names: for type checkers and editors, and read by lazy_exports
    from .artifact import load_artifact, save_artifact
    from .callbacks import EarlyStopping, PrintProgress
    from .checkpoint import Checkpoint
    from .data import ImageDataset, Split, load_dataset
    from .device import pick_device, seed_everything
    from .evaluation import evaluate
    from .models import build_model, summary
    from .normalization import Normalization
    from .recipes import Recipe, default_recipe
    from .report import publish_metrics
    from .run import Callback, History
    from .serving.client import Client, load_test
    from .serving.runner import serve
    from .train import fit
    from .workflows import load_or_train


__getattr__, __dir__, __all__ = lazy_exports(__name__, ("__version__",))
