"""Taking a model out of the notebook: artifacts on disk, an inference server, a client.

Names are imported on first use: the client and the protocol need only NumPy and httpx,
the server and the artifacts need PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ArtifactError": "artifact",
    "load_artifact": "artifact",
    "make_manifest": "artifact",
    "save_artifact": "artifact",
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
    from .artifact import ArtifactError, load_artifact, make_manifest, save_artifact
    from .client import Client, EndpointError, load_test
    from .dataplane import ModelRepository
    from .runner import RunningServer, serve


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maaskit.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
