"""Taking a model out of the notebook: artifacts on disk, an inference server, a client.

The server and client need FastAPI, uvicorn and httpx; they are imported when first used,
so ``import maaskit`` stays quick.
"""

from .artifact import ArtifactError, load_artifact, make_manifest, save_artifact

__all__ = ["ArtifactError", "Client", "load_artifact", "make_manifest", "save_artifact", "serve"]


def serve(*sources, **kwargs):
    """Serve artifacts or models in the background; see :func:`maaskit.serving.server.serve`."""
    from .server import serve as _serve

    return _serve(*sources, **kwargs)


def __getattr__(name):
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)
