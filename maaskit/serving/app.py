"""The ASGI app: the V2, V1 and OpenAI-compatible routers on one data plane, behind a guard for
tokens, API keys and body sizes, with every error answered as ``{"error": "..."}`` (in OpenAI's
shape on its routes) and documented in ``/docs``.

The guard is plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which runs
each request through an extra task and stream (a cost benchmarks/serving.py sees at concurrency 1).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from .config import ServeConfig
from .dataplane import ModelRepository
from .drain import Drain
from .endpoints import Endpoints
from .errors import ContextTooLong, ModelNotFound, ServingError, message_of, status_of
from .keys import APIKeys
from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_schemas import OpenAIError
from .openapi import openapi_document
from .protocol import ProtocolError, dumps
from .rest_openai import OpenAIEndpoints
from .rest_v1 import V1Endpoints
from .rest_v2 import V2Endpoints
from .schemas import error_responses

__all__ = ["MAX_BODY_BYTES", "create_app"]

OPENAI_CODES: dict[type[Exception], str] = {ContextTooLong: "context_length_exceeded", ModelNotFound: "model_not_found"}

_log = logging.getLogger("maaskit.serving")
MAX_BODY_BYTES = ServeConfig.max_body_bytes  # the default, written once in ServeConfig
DOCS_PATHS = ("/docs", "/openapi.json")  # the API's documentation needs no token


DESCRIPTION = (
    "The Open Inference Protocol (KServe V2, with Triton's binary tensor, classification and "
    "model repository extensions) and TF Serving's REST API (V1), for maaskit artifacts; and "
    "OpenAI's completions and chat completions (streamed as server-sent events) for language models. "
    'Every error is `{"error": "..."}` (OpenAI\'s `{"error": {"message", "type", "param", "code"}}` '
    "on its routes) with the status documented for its route. `GET /v1/models/{name}` is TF Serving's "
    "model status for a classifier and OpenAI's model object for a language model."
)


class _TooLarge(Exception):
    pass


class Protocols:
    """The protocols an app serves, asked by path: which runs a model there, whose error shape it takes,
    which paths need no token and which are no work to wait for while draining."""

    def __init__(self, protocols: Sequence[Endpoints]):
        self.all = tuple(protocols)
        self.open_paths = (*(path for p in self.all for path in p.open_paths), *DOCS_PATHS)
        self.drain_exempt = (*self.open_paths, "/metrics")  # answered while draining, and not work in flight

    def inference(self, path: str) -> tuple[str, str] | None:
        """``(protocol, model)`` for a path that runs a model (the model "" where the body names it)."""
        for protocol in self.all:
            model = protocol.inference_model(path)
            if model is not None:
                return protocol.name, model
        return None

    def error_body(self, path: str, status: int, message: str, **detail: str | None) -> bytes:
        shape = next((p for p in self.all if p.owns_errors(path)), None)
        return dumps(shape.error_body(status, message, **detail) if shape is not None else {"error": message})


class Guard:
    """Checks the bearer token (the server's token, or one of its API keys) and the body size
    before a request reaches a route; and records every request in the metrics, in one place: its
    failures by status, and for the routes that run a model, the count and the latency. While the
    server drains (see :mod:`.drain`) it admits no new work, and it counts the work in flight.

    (An OpenAI route names its model in the body: it leaves the name in ``request.state.model``.)"""

    def __init__(self, app: Any, *, token: str | None, keys: APIKeys | None, max_body_bytes: int, metrics: Any,
                 drain: Drain, protocols: Protocols):  # fmt: skip
        self.app, self.max_body_bytes, self.metrics, self.keys, self.drain = app, max_body_bytes, metrics, keys, drain
        self.protocols = protocols
        self.expected = f"Bearer {token}".encode() if token is not None else None

    def _accepts(self, scope, authorization: bytes) -> bool:
        if self.expected is not None and secrets.compare_digest(authorization, self.expected):
            return True
        key = self.keys.identify(authorization) if self.keys is not None else None
        if key is not None:  # whose request it is: the routes hold it to the key's quotas (rest_openai._admit)
            scope.setdefault("state", {})["api_key"] = key
        return key is not None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, recorded = time.perf_counter(), [500], [False]

        async def recorded_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not recorded[0]:
                # counted before its last byte goes out: a client holding an answer finds it counted, even
                # when this process is killed the moment after
                recorded[0] = True
                self._record(scope, status[0], time.perf_counter() - start)
            await send(message)

        work = not scope["path"].startswith(self.protocols.drain_exempt)
        if work and self.drain.draining:
            await self._refuse(
                scope, send, 503, "the server is shutting down; retry on another instance",
                {"Retry-After": "1", "Connection": "close"},
            )  # fmt: skip
            self._record(scope, 503, 0.0)
            return
        if work:
            self.drain.admitted()
        try:
            await self._checked(scope, receive, recorded_send)
        finally:
            if work:
                self.drain.left()
            if not recorded[0]:  # no answer went out whole
                self._record(scope, status[0], time.perf_counter() - start)

    def _record(self, scope, status: int, seconds: float) -> None:
        self._record_key(scope.get("state") or {})
        if status >= 400:
            self.metrics.failures.labels(str(status)).inc()
            return
        route = self.protocols.inference(scope["path"])
        if route is not None:
            protocol, model = route
            model = model or scope.get("state", {}).get("model", "")
            self.metrics.requests.labels(model, protocol).inc()
            self.metrics.latency.labels(protocol).observe(seconds)

    def _record_key(self, state: dict) -> None:
        """An API key's use, as its route left it in the request's state: admitted (and the tokens it used)
        or refused past its quota."""
        key, quota = state.get("api_key"), state.get("quota")
        if key is None or quota is None:
            return
        if quota == "refused":
            self.metrics.key_rejections.labels(key.name).inc()
            return
        self.metrics.key_requests.labels(key.name).inc()
        prompt, completion = state.get("tokens", (0, 0))
        self.metrics.key_tokens.labels(key.name, "prompt").inc(prompt)
        self.metrics.key_tokens.labels(key.name, "completion").inc(completion)

    async def _checked(self, scope, receive, send):
        headers = dict(scope["headers"])
        secured = self.expected is not None or self.keys is not None
        if (
            secured
            and not scope["path"].startswith(self.protocols.open_paths)
            and not self._accepts(scope, headers.get(b"authorization", b""))
        ):
            return await self._refuse(
                scope,
                send,
                401,
                "missing or wrong API key or token: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await self._refuse(
                scope,
                send,
                413,
                f"request body of {int(length):,} bytes is over this server's limit of {self.max_body_bytes:,}",
            )
        if length.isdigit():  # the HTTP parser holds the body to its Content-Length: nothing more to count
            return await self.app(scope, receive, send)
        seen, started = 0, False

        async def counted_receive():  # counted as it arrives: a missing Content-Length is no way round
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise _TooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if not started:
                await self._refuse(
                    scope, send, 413, f"request body is over this server's limit of {self.max_body_bytes:,} bytes"
                )

    async def _refuse(self, scope, send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = self.protocols.error_body(scope["path"], status, message)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def create_app(
    repository: ModelRepository,
    *,
    token: str | None = None,
    api_keys: APIKeys | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    drain_seconds: float = ServeConfig.drain_seconds,
    protocols: Sequence[Endpoints] = (),
) -> FastAPI:
    """The ASGI app. ``token``: every route but the health checks and the docs needs
    ``Authorization: Bearer <token>``, and only then may models be loaded and unloaded.
    ``api_keys``: keys accepted as well, each with its own quotas on the language-model routes.
    ``protocols``: more protocols to serve beside V2, V1 and OpenAI's (see :mod:`.endpoints`).
    ``app.state.drain`` stops it without losing work (:mod:`.drain`); the models are closed when
    it shuts down."""
    drain = Drain(repository, drain_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        drain.started()
        yield
        repository.close()  # after the last connection: no request finds its model gone

    app = FastAPI(
        lifespan=lifespan,
        title="maaskit inference server",
        version=__version__,
        description=DESCRIPTION,
    )
    metrics = ServerMetrics()
    app.state.repository, app.state.metrics, app.state.drain = repository, metrics, drain
    repository.listeners.append(metrics.observe_batch)

    # the protocols served: a new one is its own module (an Endpoints) and a line here
    served = Protocols(
        [
            V2Endpoints(repository, admin=token is not None),
            V1Endpoints(repository),
            OpenAIEndpoints(repository, metrics, api_keys),
            *protocols,
        ]
    )
    _answer_errors(app, served)
    # the routers' routes go straight into the app's: include_router would add a layer of dispatch
    # to every request (benchmarks/serving.py at concurrency 1 sees it)
    for protocol in served.all:
        app.router.routes.extend(protocol.router().routes)

    _serve_metrics(app, metrics, repository)
    secured = token is not None or api_keys is not None
    app.openapi = lambda: openapi_document(  # type: ignore[method-assign]
        app, repository, served.all, secured=secured, open_paths=served.open_paths
    )
    app.add_middleware(Guard, token=token, keys=api_keys, max_body_bytes=max_body_bytes, metrics=metrics, drain=drain,
                       protocols=served)  # fmt: skip
    return app


def _serve_metrics(app: FastAPI, metrics: ServerMetrics, repository: ModelRepository) -> None:
    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"},
            **error_responses(401),
        },
    )
    async def prometheus_metrics():
        for served in repository.language_models().values():  # a model not asked anything yet has its series too
            metrics.watch_language_model(served)
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def _answer_errors(app: FastAPI, protocols: Protocols) -> None:
    """Every error, answered once here: a domain error with its status (:data:`.errors.STATUS`), each in
    the shape of the protocol whose path was asked (:meth:`Endpoints.error_body`)."""

    def error(
        request: Request, status: int, message: str, headers: dict[str, str] | None = None, **detail: str | None
    ) -> Response:
        body = protocols.error_body(request.url.path, status, message, **detail)
        return Response(body, status, headers, media_type="application/json")

    # RuntimeError: a model that crashed (the engine's "generation failed: ..."), answered here as a 500 in
    # the protocol's shape, and logged. (A handler for Exception would run outside the app, in Starlette's
    # last-resort middleware, whose re-raise makes uvicorn close the client's kept-alive connection.)
    @app.exception_handler(RuntimeError)
    @app.exception_handler(ServingError)
    @app.exception_handler(ContextTooLong)
    async def _serving_error(request: Request, err: Exception):
        status = status_of(err)
        if status == 500:
            _log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        retry_after = getattr(err, "retry_after", None)
        headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after else {}
        code = next((c for kind, c in OPENAI_CODES.items() if isinstance(err, kind)), None)
        return error(request, status, message_of(err), headers, param=getattr(err, "param", None), code=code)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, err: OpenAIError):
        return Response(dumps(err.body()), err.status, err.headers, media_type="application/json")

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, err: ProtocolError):
        return error(request, 400, str(err))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        return error(request, 400, f"bad request: {'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', err)}")

    @app.exception_handler(StarletteHTTPException)  # 404 for unknown paths, 405 for wrong methods
    async def _starlette_error(request: Request, err: StarletteHTTPException):
        return error(request, err.status_code, str(err.detail), dict(err.headers or {}))
