"""Taking a model out of the notebook: an inference server and a client (artifacts on disk are
:mod:`maaskit.artifact`).

Names are imported on first use: the client and the protocol need only NumPy and httpx,
the server and the artifacts need PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "serve": "runner",
    "RunningServer": "runner",
    "ModelRepository": "dataplane",
    "create_app": "app",
    "Client": "client",
    "EndpointError": "client",
    "load_test": "client",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .app import create_app
    from .client import Client, EndpointError, load_test
    from .dataplane import ModelRepository
    from .runner import RunningServer, serve


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
