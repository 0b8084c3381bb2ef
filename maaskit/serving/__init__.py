"""Taking a model out of the notebook: an inference server and a client (artifacts on disk are
:mod:`maaskit.artifact`).

Names are imported on first use: the client and the protocol need only NumPy and httpx,
the server and the artifacts need PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names: for type checkers and editors, and read by lazy_exports
    from .app import create_app
    from .client import Client, EndpointError, load_test
    from .dataplane import ModelRepository
    from .runner import RunningServer, serve


__getattr__, __dir__, __all__ = lazy_exports(__name__)
