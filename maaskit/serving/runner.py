"""Running the server: ``serve(...)`` in a background thread (from a notebook), and the
``maaskit serve`` command in the foreground, in one process or ``--workers N`` of them.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import dataplane
from .app import MAX_BODY_BYTES, create_app
from .dataplane import Batching, ModelRepository, ModelSource, forward_thread_setup
from .keys import APIKeys

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from ..data import ImageDataset

__all__ = ["RunningServer", "app_from_environment", "serve", "serve_workers"]

_SETTINGS = "MAASKIT_SERVE_SETTINGS"  # how --workers hands its settings to each worker process


class RunningServer:
    """A server running in a background thread: ``url``, ``stop()``, and ``with`` use."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, repository: ModelRepository):
        self._server, self._thread, self.url, self.repository = server, thread, url, repository

    def stop(self, timeout: float = 10) -> None:
        """Finish the requests in flight, then stop."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self.repository.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C still reaches the caller)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"RunningServer({self.url}, models: {', '.join(m['name'] for m in self.repository.index())})"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _check_exposure(host: str, token: Any, allow_insecure: bool) -> None:
    if not _is_loopback(host) and token is None and not allow_insecure:
        raise ValueError(
            f"refusing to serve on {host} without a token: anyone who can reach it could use it. "
            "Pass token=... (maaskit serve --token), or allow_insecure=True if you mean it"
        )


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say so, and without it every response waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _repository(
    sources: tuple[Any, ...],
    *,
    data: Any = None,
    name: str | None = None,
    device: str | torch.device = "auto",
    batching: Batching,
    model_repository: str | Path | None = None,
) -> ModelRepository:
    if not sources and model_repository is None:
        raise ValueError("give at least one artifact directory to serve, or a model_repository directory")
    repository = ModelRepository(device=device, batching=batching, root=model_repository)
    for source in sources:
        repository.add(source, name=name if len(sources) == 1 else None, data=data)
    for found in repository.available() if not sources else []:  # a repository alone: serve all it holds
        repository.add(Path(model_repository or ".") / found, name=found, version=1)
    return repository


def serve(
    *sources: ModelSource,
    data: ImageDataset | None = None,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    allow_insecure: bool = False,
    device: str | torch.device = "auto",
    max_batch_size: int = 32,
    max_delay_ms: float = 0.0,
    max_queue: int = 1024,
    inline: bool | str = "auto",
    model_repository: str | Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "warning",
    access_log: bool = False,
    api_keys: APIKeys | str | Path | None = None,
    max_sequences: int = 16,
) -> RunningServer:
    """Serve artifact directories (or models with ``data=``, or ``(model, manifest)`` pairs) in a
    background thread.

    ``port=0`` picks a free port; the returned handle's ``url`` says which. Binding anything
    but a loopback address without a ``token`` is refused unless ``allow_insecure=True``.
    Batching: a request that finds the model idle runs at once, those that arrive while it is busy
    share the next pass (up to ``max_batch_size`` images); ``max_delay_ms`` adds a wait for company;
    past ``max_queue`` waiting images the server answers 503 with ``Retry-After``.
    ``model_repository``: a directory of artifact directories (one per model, named as the model)
    that ``/v2/repository`` can load from and unload, as Triton's does; with no ``sources``, all of
    them are served.
    Language models (directories from ``maaskit lm train``, or ``(model, tokenizer)`` pairs) are
    served through the OpenAI-compatible API; ``max_sequences`` of them share each decode step
    (continuous batching; 1 runs them one at a time). ``api_keys``: an :class:`APIKeys`, or its JSON
    file (see :mod:`.keys`); by default ``$MAASKIT_API_KEYS`` if set. Keys are accepted wherever the
    token is, and carry quotas on the language-model routes.
    """
    import uvicorn

    keys = api_keys if isinstance(api_keys, APIKeys) or api_keys is None else APIKeys.load(api_keys)
    keys = keys if keys is not None else APIKeys.load()
    _check_exposure(host, token or keys, allow_insecure)
    batching = Batching(max_batch_size, max_delay_ms, max_queue, inline, max_sequences)
    repository = _repository(
        sources, data=data, name=name, device=device, batching=batching, model_repository=model_repository
    )
    app = create_app(repository, token=token, api_keys=keys, max_body_bytes=max_body_bytes)
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    def run() -> None:
        forward_thread_setup()  # cheap passes run on this thread (the event loop's)
        try:
            server.run(sockets=[sock])
        finally:
            _thaw_gc()

    _freeze_gc()
    thread = threading.Thread(target=run, name="maaskit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.02)
    return RunningServer(server, thread, _url(sock), repository)


_frozen = 0
_frozen_lock = threading.Lock()


def _freeze_gc() -> None:
    """Keep what exists now (PyTorch, FastAPI, the models) out of the garbage collector's full passes
    while a server runs: each scanned it all and stalled every request for ~100 ms (p99 at
    concurrency 32 went from 105 ms to 20 ms). Undone when the last server stops, so a notebook's
    garbage from before is collected again."""
    global _frozen
    with _frozen_lock:
        if _frozen == 0:
            gc.collect()
        gc.freeze()
        _frozen += 1


def _thaw_gc() -> None:
    global _frozen
    with _frozen_lock:
        _frozen -= 1
        if _frozen == 0:
            gc.unfreeze()


def serve_workers(
    sources: list[str],
    *,
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    allow_insecure: bool = False,
    on_ready: Any = None,
    log_level: str = "info",
    **settings: Any,
) -> None:
    """Serve in ``workers`` processes sharing one socket, until Ctrl-C (for CPU-bound models: each
    process has its own interpreter, so Python's work is spread over the cores). ``settings`` are
    :func:`serve`'s keywords. ``on_ready(url)`` is called once the socket is bound."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if workers < 2:
        raise ValueError("serve_workers is for 2 or more workers; use serve() for one")
    _check_exposure(host, token, allow_insecure)
    # each worker checks its artifacts before any binds, so a typo fails here rather than N times
    _repository(tuple(sources), batching=Batching(), device="cpu", model_repository=settings.get("model_repository"))
    sock = _bind(host, port)
    metrics_dir = tempfile.mkdtemp(prefix="maaskit-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers: metrics add up
    os.environ[_SETTINGS] = json.dumps(
        {"sources": [str(s) for s in sources], "token": token, "workers": workers, **settings}
    )
    config = uvicorn.Config(
        "maaskit.serving.runner:app_from_environment",
        factory=True,
        workers=workers,
        log_level=log_level,
        access_log=settings.pop("access_log", False),
        timeout_graceful_shutdown=10,
    )
    if on_ready is not None:
        on_ready(_url(sock))
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        os.environ.pop(_SETTINGS, None)


def app_from_environment() -> FastAPI:
    """The app of one ``--workers`` process, built from the settings its parent left in the environment."""
    settings = json.loads(os.environ[_SETTINGS])
    dataplane.server_processes = settings["workers"]  # the cores are shared out
    batching = Batching(
        settings.get("max_batch_size", 32),
        settings.get("max_delay_ms", 0.0),
        settings.get("max_queue", 1024),
        settings.get("inline", "auto"),
        settings.get("max_sequences", 16),
    )
    repository = _repository(
        tuple(settings["sources"]),
        name=settings.get("name"),
        device=settings.get("device", "auto"),
        batching=batching,
        model_repository=settings.get("model_repository"),
    )
    keys = settings.get("api_keys")
    app = create_app(
        repository,
        token=settings.get("token"),
        api_keys=APIKeys.load(keys) if keys else APIKeys.load(),
        max_body_bytes=settings.get("max_body_bytes", MAX_BODY_BYTES),
    )
    forward_thread_setup()  # this process's event loop runs the cheap passes
    gc.collect()
    gc.freeze()  # this process only serves, for as long as it lives: see _freeze_gc
    return app
