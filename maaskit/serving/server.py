"""An inference server for maaskit artifacts: the Open Inference Protocol (KServe V2, with
Triton's binary tensor extension) and TF Serving's REST API (V1), on FastAPI and uvicorn.

``create_app(repository)`` is the ASGI app; ``serve(...)`` runs it in a background thread
(from a notebook); ``maaskit serve DIR`` runs it from a shell. Clients' mistakes get a 4xx
with ``{"error": "..."}`` saying what was expected; never a 500.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .._version import __version__
from ..device import pick_device
from ..normalization import Normalization
from .artifact import load_artifact, make_manifest
from .batching import DynamicBatcher
from .protocol import HEADER_LENGTH, ProtocolError, decode_tensor, encode_body, encode_tensor, split_body, top_k

if TYPE_CHECKING:
    import uvicorn

    from ..data import ImageDataset

__all__ = ["ModelRepository", "RunningServer", "ServedModel", "create_app", "serve"]

# what can be served: an artifact directory, a model from build_model (with data=), or (model, manifest)
ModelSource = Union[str, Path, torch.nn.Module, tuple[torch.nn.Module, dict]]  # noqa: UP007 (3.10 needs Union at run time)

MAX_BODY_BYTES = 32 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ServedModel:
    """One version of one model: the network, its manifest, and the batcher in front of it."""

    name: str
    version: str
    model: torch.nn.Module
    manifest: dict
    device: torch.device
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    listeners: list = field(default_factory=list)  # f(batch size, seconds) after each forward pass

    def __post_init__(self):
        spec = self.manifest["inputs"][0]
        self.input_name, self.input_shape = spec["name"], spec["shape"]
        self.output_name = self.manifest["outputs"][0]["name"]
        self.normalization = Normalization.from_manifest(self.manifest["normalization"])
        self.model = self.model.to(self.device).eval()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # the latest forward passes' sizes
        self.batcher = DynamicBatcher(
            self._forward, max_batch_size=self.max_batch_size, max_delay_ms=self.max_delay_ms, on_batch=self._seen_batch
        )

    def _seen_batch(self, size, seconds):
        self.batch_sizes.append(size)
        for listener in self.listeners:
            listener(size, seconds)

    @torch.inference_mode()
    def _forward(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()

    def prepare(self, array: np.ndarray, datatype: str, name: str) -> np.ndarray:
        """Check an input against the manifest and make it the model's normalized FP32 batch.
        UINT8 pixels are accepted too and normalized here, as the manifest says."""
        if name != self.input_name:
            raise ProtocolError(f"model {self.name!r} takes one input named {self.input_name!r}, got {name!r}")
        expected = self.input_shape[1:]
        if array.ndim != len(self.input_shape) or list(array.shape[1:]) != expected or array.shape[0] < 1:
            raise ProtocolError(
                f"input {name!r} must have shape [N, {', '.join(map(str, expected))}] with N >= 1, "
                f"got {list(array.shape)}"
            )
        if datatype == "UINT8":
            return self.normalization.to_float(array)
        if datatype != "FP32":
            raise ProtocolError(f"input {name!r} must be FP32 (normalized) or UINT8 (pixels), got {datatype}")
        if not np.isfinite(array).all():
            raise ProtocolError(f"input {name!r} contains NaN or infinity")
        return np.require(array, np.float32, ["C", "W"])  # binary inputs arrive read-only

    def metadata(self, versions: list[str]) -> dict:
        return {
            "name": self.name,
            "versions": versions,
            "platform": "pytorch_maaskit",
            "inputs": self.manifest["inputs"],
            "outputs": self.manifest["outputs"],
            "parameters": {"classes": self.manifest["classes"]},
        }


class ModelRepository:
    """Models by name and version. ``add`` while serving loads a new version without a restart;
    requests without a version get the highest."""

    def __init__(self, *, device: str | torch.device = "auto", max_batch_size: int = 32, max_delay_ms: float = 5.0):
        self.device = pick_device(device)
        self.max_batch_size, self.max_delay_ms = max_batch_size, max_delay_ms
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._lock = threading.Lock()
        self.listeners: list = []  # told of every forward pass of every model (metrics)

    def add(
        self,
        source: ModelSource,
        *,
        name: str | None = None,
        version: str | int | None = None,
        data: ImageDataset | None = None,
    ) -> ServedModel:
        """Serve an artifact directory, a ``(model, manifest)`` pair as :func:`load_artifact` returns,
        or a model from ``build_model`` with the ``data`` (an ImageDataset) it was trained on."""
        if isinstance(source, (str, Path)):
            model, manifest = load_artifact(source)
        elif isinstance(source, torch.nn.Module):
            if data is None:
                raise ValueError("serving a model needs data= (its ImageDataset: class names and normalization)")
            model, manifest = source, make_manifest(source, data, name=name)
        elif (
            isinstance(source, tuple)
            and len(source) == 2
            and isinstance(source[0], torch.nn.Module)
            and isinstance(source[1], dict)
        ):
            model, manifest = source
        else:
            raise TypeError(
                f"cannot serve a {type(source).__name__}: pass an artifact directory, a model from "
                "maaskit.build_model with data=..., or the (model, manifest) pair load_artifact returns"
            )
        name = name or manifest["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only")
        with self._lock:
            versions = self._models.setdefault(name, {})
            version = str(version) if version is not None else str(max((int(v) for v in versions), default=0) + 1)
            served = ServedModel(
                name, version, model, manifest, self.device, self.max_batch_size, self.max_delay_ms, self.listeners
            )
            versions[version] = served
        return served

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise HTTPError(404, f"unknown model {name!r}; this server has: {known}")
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise HTTPError(
                404, f"model {name!r} has no version {version!r}; it has {', '.join(sorted(versions, key=int))}"
            )
        return versions[version]

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=int)

    def index(self) -> list[dict]:
        return [{"name": n, "version": v, "state": "READY"} for n in sorted(self._models) for v in self.versions(n)]


def create_app(repository: ModelRepository, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES):
    """The ASGI app. ``token``: every route but the health checks needs ``Authorization: Bearer <token>``."""
    app = FastAPI(
        title="maaskit inference server",
        version=__version__,
        description="Open Inference Protocol (KServe V2) and TF Serving REST (V1) for maaskit artifacts.",
    )
    metrics = CollectorRegistry()
    requests_total = Counter("maaskit_requests", "Inference requests", ["model", "protocol"], registry=metrics)
    failures_total = Counter("maaskit_request_failures", "Failed requests", ["status"], registry=metrics)
    latency = Histogram(
        "maaskit_request_seconds",
        "Request latency",
        ["protocol"],
        registry=metrics,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
    batch_hist = Histogram(
        "maaskit_batch_size", "Images per forward pass", registry=metrics, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
    )
    app.state.repository = repository

    def error(status: int, message: str):
        failures_total.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPError)
    async def _http_error(_request, err: HTTPError):
        return error(err.status, err.message)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_request, err: ProtocolError):
        return error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, err):
        return error(400, f"bad request: {err.errors()[0].get('msg', err)}")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        open_paths = ("/v2/health/", "/docs", "/openapi.json")
        if token is not None and not request.url.path.startswith(open_paths):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(
                413, f"request body of {int(length):,} bytes is over this server's limit of {max_body_bytes:,}"
            )
        return await call_next(request)

    async def body_of(request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a missing Content-Length is no way round
            body += chunk
            if len(body) > max_body_bytes:
                raise HTTPError(413, f"request body is over this server's limit of {max_body_bytes:,} bytes")
        return bytes(body)

    repository.listeners.append(lambda size, _seconds: batch_hist.observe(size))

    # --- V2 ---------------------------------------------------------------------------------

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "maaskit", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.post("/v2/repository/index")
    async def repository_index():
        return repository.index()

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        served = repository.get(name, version)
        return served.metadata(repository.versions(name))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        repository.get(name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        start = time.perf_counter()
        served = repository.get(name, version)
        header, binary = split_body(await body_of(request), request.headers.get(HEADER_LENGTH))
        inputs = header.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise ProtocolError(
                f"model {name!r} takes exactly one input, {served.input_name!r}; 'inputs' must be a list of one tensor"
            )
        array, _ = decode_tensor(inputs[0], memoryview(binary))
        x = served.prepare(array, inputs[0]["datatype"], inputs[0].get("name"))
        logits = await served.batcher.submit(x)
        all_binary = bool(_object(header.get("parameters"), "parameters").get("binary_data_output"))
        wanted = header.get("outputs") or [{"name": served.output_name}]
        if not isinstance(wanted, list):
            raise ProtocolError('\'outputs\' must be a list of objects like {"name": "logits"}')
        outputs, chunks = [], []
        for spec in wanted:
            spec = _object(spec, "each requested output")
            out_name, params = spec.get("name"), _object(spec.get("parameters"), "an output's parameters")
            if out_name != served.output_name:
                raise ProtocolError(
                    f"model {name!r} has one output, {served.output_name!r}; got a request for {out_name!r}"
                )
            binary_out = bool(params.get("binary_data", all_binary))
            if "classification" in params:
                k = params["classification"]
                if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                    raise ProtocolError(f"'classification' must be a positive integer (how many classes), got {k!r}")
                tensor, raw = _classification(out_name, logits, k, served.manifest["classes"], binary_out)
            else:
                tensor, raw = encode_tensor(out_name, logits, binary=binary_out)
            outputs.append(tensor)
            chunks.append(raw)
        reply = {"model_name": name, "model_version": served.version, "outputs": outputs}
        if "id" in header:
            reply["id"] = header["id"]
        body, headers = encode_body(reply, chunks)
        requests_total.labels(name, "v2").inc()
        latency.labels("v2").observe(time.perf_counter() - start)
        return Response(body, headers=headers, media_type=headers["Content-Type"])

    # --- V1 (TF Serving REST) ----------------------------------------------------------------

    v1_path = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:/versions/(?P<version>\d+))?(?::(?P<verb>predict|classify))?")

    @app.get("/v1/models/{rest:path}")
    async def v1_status(rest: str):
        match = v1_path.fullmatch(rest)
        if not match or match["verb"]:
            raise HTTPError(404, f"no such V1 resource: /v1/models/{rest}")
        repository.get(match["name"], match["version"])
        versions = [match["version"]] if match["version"] else repository.versions(match["name"])
        return {
            "model_version_status": [
                {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ]
        }

    @app.post("/v1/models/{rest:path}")
    async def v1_predict(rest: str, request: Request):
        start = time.perf_counter()
        match = v1_path.fullmatch(rest)
        if not match or not match["verb"]:
            raise HTTPError(404, f"no such V1 method: /v1/models/{rest} (use :predict or :classify)")
        served = repository.get(match["name"], match["version"])
        body, _ = split_body(await body_of(request), None)
        if ("instances" in body) == ("inputs" in body):
            raise ProtocolError("a V1 request has either 'instances' (one entry per example) or 'inputs' (columnar)")
        rows = body.get("instances", body.get("inputs"))
        if isinstance(rows, dict):  # named: {"input": [...]}
            rows = rows.get(served.input_name, rows) if len(rows) == 1 else rows
            if isinstance(rows, dict):
                raise ProtocolError(f"model {served.name!r} takes one input, {served.input_name!r}")
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            rows = [r.get(served.input_name) if isinstance(r, dict) else r for r in rows]
        try:
            array = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"V1 input is not a numeric array of shape [N, ...]: {err}") from None
        x = served.prepare(array, "FP32", served.input_name)
        logits = await served.batcher.submit(x)
        requests_total.labels(served.name, "v1").inc()
        latency.labels("v1").observe(time.perf_counter() - start)
        if match["verb"] == "classify":
            return {"results": [[list(pair) for pair in row] for row in top_k(logits, 5, served.manifest["classes"])]}
        key = "predictions" if "instances" in body else "outputs"
        return {key: logits.tolist()}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {value!r:.60}")
    return value


def _classification(name, logits, k, classes, binary):
    """Triton's classification extension: the top ``k`` per example as ``"score:index:label"`` strings."""
    strings = [[f"{p:.6f}:{j}:{classes[j]}" for j, p in row] for row in top_k(logits, min(k, logits.shape[1]))]
    spec = {"name": name, "datatype": "BYTES", "shape": [len(strings), len(strings[0]) if strings else 0]}
    if not binary:
        spec["data"] = [s for row in strings for s in row]
        return spec, b""
    raw = b"".join(len(b).to_bytes(4, "little") + b for row in strings for b in (s.encode() for s in row))
    spec["parameters"] = {"binary_data_size": len(raw)}
    return spec, raw


class RunningServer:
    """A server running in a background thread: ``url``, ``stop()``, and ``with`` use."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, repository: ModelRepository):
        self._server, self._thread, self.url, self.repository = server, thread, url, repository

    def stop(self, timeout: float = 10) -> None:
        """Finish the requests in flight, then stop."""
        self._server.should_exit = True
        self._thread.join(timeout)

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
    max_delay_ms: float = 5.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "warning",
) -> RunningServer:
    """Serve artifact directories (or models with ``data=``, or ``(model, manifest)`` pairs) in a
    background thread.

    ``port=0`` picks a free port; the returned handle's ``url`` says which. Binding anything
    but a loopback address without a ``token`` is refused unless ``allow_insecure=True``.
    """
    import uvicorn

    if not sources:
        raise ValueError("give at least one artifact directory to serve")
    if not _is_loopback(host) and token is None and not allow_insecure:
        raise ValueError(
            f"refusing to serve on {host} without a token: anyone who can reach it could use it. "
            "Pass token=... (maaskit serve --token), or allow_insecure=True if you mean it"
        )
    repository = ModelRepository(device=device, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms)
    for source in sources:
        repository.add(source, name=name if len(sources) == 1 else None, data=data)
    app = create_app(repository, token=token, max_body_bytes=max_body_bytes)
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say so, and without it every response waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="maaskit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningServer(server, thread, f"http://{shown}:{bound_port}", repository)
