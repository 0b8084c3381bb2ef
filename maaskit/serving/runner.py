"""Running the server: ``serve(...)`` in a background thread (from a notebook), and the
``maaskit serve`` command in the foreground, in one process or ``--workers N`` of them.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .app import create_app
from .config import ServeConfig
from .config import options as config_options
from .dataplane import ModelRepository, ModelSource, check_source, loading_thread_setup
from .drain import DRAIN_GRACE_SECONDS, Drain, drain_on_signals
from .keys import APIKeys

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from ..data import ImageDataset

__all__ = ["RunningServer", "app_from_environment", "serve", "serve_config", "serve_workers"]


class RunningServer:
    """A server running in a background thread: ``url``, ``stop()``, and ``with`` use."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, app: FastAPI):
        self._server, self._thread, self.url, self._app = server, thread, url, app
        self.repository: ModelRepository = app.state.repository

    @property
    def drain(self) -> Drain:
        """The server's drain: ``draining``, and ``in_flight``, the requests admitted and not yet answered."""
        return self._app.state.drain

    @property
    def bound_seconds(self) -> float:
        """The longest a stop takes: the drain, the streams' last events, and the server's own shutdown."""
        return self.drain.seconds + DRAIN_GRACE_SECONDS + _SHUTDOWN_SECONDS

    def begin_stop(self) -> None:
        """Start the drain (see :mod:`.drain`) and return; the server stops when it is over."""
        self.drain.begin(self._exit)

    def force_stop(self) -> None:
        """Stop now: requests still running are cut."""
        self._server.force_exit = True
        self._exit()

    def _exit(self) -> None:
        self._server.should_exit = True

    def stop(self, timeout: float | None = None) -> None:
        """Drain (requests in flight are finished, streams end with their last event), then stop
        and unload the models. After ``timeout`` (by default the drain's own bound) it stops at once."""
        self.begin_stop()
        self._thread.join(self.bound_seconds if timeout is None else timeout)
        if self._thread.is_alive():
            self.force_stop()
            self._thread.join()

    def wait(self) -> None:
        """Block until the server stops. SIGTERM and Ctrl-C drain it; the same signal again stops it at once
        (from the main thread; elsewhere Ctrl-C reaches the caller as usual)."""
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = drain_on_signals(self.begin_stop, self.force_stop)
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)  # a timeout, so the signal handlers get their turn
        finally:
            if restore is not None:
                restore()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"RunningServer({self.url}, models: {', '.join(m['name'] for m in self.repository.index())})"


_SHUTDOWN_SECONDS = 3  # uvicorn's own wait for connections after a drain (the drain already waited for them)
# How long an idle keep-alive connection stays open. uvicorn's default, 5 s, lost a request in a
# clean-clone CI run: under load the close timer fired as the client sent on the connection
# (httpx.ReadError). Longer than a load balancer's usual idle timeout (60 s), as proxies advise.
_KEEP_ALIVE_SECONDS = 65


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say so, and without it every response waited for a delayed ACK (tens of milliseconds).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _repository(
    sources: tuple[Any, ...], config: ServeConfig, *, data: Any = None, device: str | torch.device | None = None
) -> ModelRepository:
    if not sources and config.model_repository is None:
        raise ValueError("give at least one artifact directory to serve, or a model_repository directory")
    repository = ModelRepository(device=device or config.device, config=config, root=config.model_repository)
    for source in sources:
        repository.add(source, name=config.name if len(sources) == 1 else None, data=data)
    for found in repository.available() if not sources else []:  # a repository alone: serve all it holds
        repository.add(Path(config.model_repository or ".") / found, name=found, version=1)
    return repository


def _keys(api_keys: APIKeys | str | Path | None) -> APIKeys | None:
    """The keys given, or read from their file, or from $MAASKIT_API_KEYS if set."""
    if isinstance(api_keys, APIKeys):
        return api_keys
    return APIKeys.load(api_keys) if api_keys is not None else APIKeys.load()


# serve()'s own defaults where they differ from ServeConfig's (the CLI's): in a notebook any free port
# in a notebook: any free port, and language models served eagerly (a background compile would take the
# kernel's cores for minutes, on a machine such as Binder's, for the small models of the lessons)
NOTEBOOK_DEFAULTS = {"port": 0, "compile": False}


def serve(
    *sources: ModelSource,
    data: ImageDataset | None = None,
    api_keys: APIKeys | str | Path | None = None,
    device: str | torch.device = ServeConfig.device,
    **options: Any,
) -> RunningServer:
    """Serve artifact directories (or models with ``data=``, or ``(model, manifest)`` pairs) in a
    background thread, until ``.stop()``. Its keywords are :class:`~maaskit.serving.config.ServeConfig`'s
    fields (its signature is made from them: ``help(serve)`` lists each with its default).

    ``port=0`` (the default here) picks a free port; the returned handle's ``url`` says which. Binding
    anything but a loopback address without a ``token`` or API keys is refused unless
    ``allow_insecure=True``. ``model_repository``: a directory of model folders (one per model, named
    as the model) that ``/v2/repository`` can load from and unload, as Triton's does; with no
    ``sources``, all of them are served. Language models (directories from ``maaskit lm train``,
    Hugging Face folders of the Llama family, or ``(model, tokenizer)`` pairs) are served through the
    OpenAI-compatible API. ``api_keys``: an :class:`APIKeys`, or its JSON file (see :mod:`.keys`); by
    default ``$MAASKIT_API_KEYS`` if set. ``device``: a name or a ``torch.device``.
    """
    unknown = set(options) - {o.name for o in config_options()}
    if unknown:
        raise TypeError(f"serve() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    config = ServeConfig(**{**NOTEBOOK_DEFAULTS, **options, "device": str(device)})
    if config.workers > 1:
        raise ValueError("serve() runs one server in this process; for several, run `maaskit serve --workers N`")
    if config.model_repository is not None:
        config = config.but(model_repository=str(config.model_repository))
    return serve_config(config, *sources, data=data, api_keys=api_keys, device=device)


def _signature() -> inspect.Signature:
    """serve()'s signature as people read it: the sources, then each ServeConfig field as a keyword."""
    own = [p for p in inspect.signature(serve).parameters.values() if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in own}
    fields = [
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=NOTEBOOK_DEFAULTS.get(o.name, o.default),
                          annotation=o.type)
        for o in config_options()
        if o.name not in taken
    ]  # fmt: skip
    return inspect.Signature([*own, *fields], return_annotation="RunningServer")


serve.__signature__ = _signature()  # type: ignore[attr-defined]


def serve_config(
    config: ServeConfig,
    *sources: ModelSource,
    data: ImageDataset | None = None,
    api_keys: APIKeys | str | Path | None = None,
    device: str | torch.device | None = None,
) -> RunningServer:
    """:func:`serve` from a :class:`ServeConfig` (what ``maaskit serve`` builds from its options)."""
    import uvicorn

    keys = _keys(api_keys if api_keys is not None else config.api_keys)
    config.check_exposure(has_keys=keys is not None)
    repository = _repository(sources, config, data=data, device=device)
    app = _app(repository, config, keys)
    sock = _bind(config.host, config.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=config.access_log,
            timeout_graceful_shutdown=_SHUTDOWN_SECONDS,
            timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        )
    )

    def run() -> None:
        repository.thread_setup()  # cheap passes run on this thread (the event loop's)
        try:
            server.run(sockets=[sock])
        finally:
            repository.close()  # already done by the app's shutdown, unless the stop was forced
            _thaw_gc()

    _freeze_gc()
    thread = threading.Thread(target=run, name="maaskit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.02)
    return RunningServer(server, thread, _url(sock), app)


def _app(repository: ModelRepository, config: ServeConfig, keys: APIKeys | None) -> FastAPI:
    return create_app(
        repository,
        token=config.token,
        api_keys=keys,
        max_body_bytes=config.max_body_bytes,
        drain_seconds=config.drain_seconds,
    )


_frozen = 0
_frozen_lock = threading.Lock()


def _freeze_gc() -> None:
    """Keep what exists now (PyTorch, FastAPI, the models) out of the garbage collector's full passes
    while a server runs: each scanned it all and stalled every request in flight (benchmarks/serving.py's
    p99; benchmarks/FIGURES.md, "serving"). Undone when the last server stops, so a notebook's
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


def serve_workers(sources: list[str], config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in ``config.workers`` processes sharing one socket, until Ctrl-C (for CPU-bound models:
    each process has its own interpreter, so Python's work is spread over the cores).
    ``on_ready(url)`` is called once the socket is bound."""
    import uvicorn

    if config.workers < 2:
        raise ValueError("serve_workers is for 2 or more workers; use serve() for one")
    config.check_exposure(has_keys=_keys(config.api_keys) is not None)  # the same rule as one worker's
    # the folders are checked here, from their descriptions (nothing loaded or compiled: each worker
    # loads its own), so that a typo fails once, at once
    for source in sources:
        check_source(source)
    if not sources and config.model_repository is None:
        raise ValueError("give at least one model folder to serve, or a model_repository directory")
    sock = _bind(config.host, config.port)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="maaskit-metrics-")  # the workers' add up
    os.environ[_SOURCES] = os.pathsep.join(str(s) for s in sources)
    config.to_environment()
    uvicorn_config = uvicorn.Config(
        "maaskit.serving.runner:app_from_environment",
        factory=True,
        workers=config.workers,
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_graceful_shutdown=_SHUTDOWN_SECONDS,
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
    )
    if on_ready is not None:
        on_ready(_url(sock))
    try:
        _supervisor_class()(uvicorn_config, sockets=[sock]).run()
    finally:
        ServeConfig.clear_environment()
        os.environ.pop(_SOURCES, None)


_SOURCES = "MAASKIT_SERVE_SOURCES"  # the artifact directories of a --workers server


def _supervisor_class() -> type:
    from prometheus_client.multiprocess import mark_process_dead
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, which replaces a worker that dies (checked every half second); and
        then tells the metrics, so that the dead worker's gauges leave the sums (its counters stay:
        what it answered was answered)."""

        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:
                    mark_process_dead(pid)

    return Supervisor


def app_from_environment() -> FastAPI:
    """The app of one ``--workers`` process, from the config its parent left in the environment."""
    config = ServeConfig.from_environment()
    sources = tuple(s for s in os.environ.get(_SOURCES, "").split(os.pathsep) if s)
    loading_thread_setup()  # until thread_setup() below: a language model's engine runs on a thread of its own
    repository = _repository(sources, config)
    app = _app(repository, config, _keys(config.api_keys))
    _drain_worker_on_signals(app)
    repository.thread_setup()  # this process's event loop runs the cheap passes
    gc.collect()
    gc.freeze()  # this process only serves, for as long as it lives: see _freeze_gc
    return app


def _drain_worker_on_signals(app: FastAPI) -> None:
    """In a ``--workers`` process, whose uvicorn server runs on the main thread and has just set its
    own handlers: a signal drains first (see :mod:`.drain`), then tells uvicorn to stop."""
    import uvicorn

    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)  # uvicorn's bound handle_exit
    if not isinstance(server, uvicorn.Server):
        return  # not started by uvicorn's supervisor (an import in a test): uvicorn's own handling stays

    def stop() -> None:
        server.should_exit = True

    def force() -> None:
        server.should_exit = server.force_exit = True

    drain_on_signals(lambda: app.state.drain.begin(stop), force)
