"""The Open Inference Protocol (KServe V2) over REST, with Triton's binary tensor, classification
and model repository extensions: routes that translate HTTP into calls on the data plane.

The infer route reads its body itself (``orjson`` for the JSON header, NumPy for binary
tensors) instead of through a FastAPI body parameter, so binary bodies keep their fast path;
its schema is declared in ``openapi_extra`` for ``/docs``, and the JSON header is still checked
against the same Pydantic model.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from .._version import __version__
from ..explain import LIMITS
from .dataplane import CLASSIFIER, ModelRepository, ServedModel
from .endpoints import Endpoints
from .errors import Forbidden, NotReady
from .openapi import per_model_paths
from .protocol import (
    HEADER_LENGTH,
    ProtocolError,
    classification_strings,
    decode_tensor,
    encode_body,
    encode_tensor,
    split_body,
)
from .schemas import (
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    RepositoryEntry,
    RepositoryIndexRequest,
    RequestOutput,
    ServerMetadata,
    error_responses,
    request_body_doc,
    validate,
)

__all__ = ["V2Endpoints"]

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]


async def _json_or_empty(request: Request, model: type, what: str) -> Any:
    body = await request.body()
    return validate(model, split_body(body, None)[0], what) if body.strip() else None


class V2Endpoints(Endpoints):
    """The V2 routes, one method per route (as KServe's ``V2Endpoints``). ``admin``: loading and
    unloading models is allowed (a token guards the server)."""

    name = "v2"
    inference = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/infer$")
    open_paths = ("/v2/health/",)  # the probes

    def __init__(self, repository: ModelRepository, *, admin: bool):
        self.repository, self.admin = repository, admin

    def router(self) -> APIRouter:
        api = APIRouter(tags=["V2: Open Inference Protocol"])
        model_errors = error_responses(400, 401, 404, 503)
        admin_errors = error_responses(400, 401, 403, 404, 409)
        infer_responses = {
            **error_responses(400, 401, 404, 413, 500, 503),
            200: {
                "description": "the outputs; as JSON, or with binary outputs the JSON header and raw bytes",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
        }
        get, post = ["GET"], ["POST"]
        api.add_api_route("/v2/health/live", self.live, methods=get, response_model=Live)
        api.add_api_route(
            "/v2/health/ready", self.ready, methods=get, response_model=Ready, responses=error_responses(503)
        )
        api.add_api_route(
            "/v2", self.server_metadata, methods=get, response_model=ServerMetadata, responses=error_responses(401)
        )
        for model in ("/v2/models/{name:segment}", "/v2/models/{name:segment}/versions/{version:segment}"):
            api.add_api_route(
                model, self.model_metadata, methods=get, response_model=ModelMetadata, responses=model_errors
            )
            api.add_api_route(
                model + "/ready", self.model_ready, methods=get, response_model=ModelReady, responses=model_errors
            )
        for model in ("/v2/models/{name:segment}", "/v2/models/{name:segment}/versions/{version:segment}"):
            api.add_api_route(
                model + "/infer", self.infer, methods=post, response_model=InferResponse,
                responses=infer_responses, openapi_extra=request_body_doc(InferRequest, binary=True),
            )  # fmt: skip
        api.add_api_route(
            "/v2/repository/index", self.repository_index, methods=post, response_model=list[RepositoryEntry],
            response_model_exclude_none=True, responses=error_responses(400, 401),
            openapi_extra=request_body_doc(RepositoryIndexRequest, required=False),
        )  # fmt: skip
        for verb, endpoint in (("load", self.load), ("unload", self.unload)):
            api.add_api_route(
                f"/v2/repository/models/{{name:segment}}/{verb}", endpoint, methods=post, responses=admin_errors,
                status_code=200,
            )  # fmt: skip
        return api

    def document(self, doc: dict, repository: ModelRepository) -> None:
        """A path per model: what load and unload take, every model's metadata and readiness, and each
        classifier's inference with its own body."""

        def names(path: str) -> list[str] | None:
            if path.startswith("/v2/repository/"):
                return repository.available()
            if path.startswith("/v2/models/"):
                return repository.names(CLASSIFIER) if path.endswith("/infer") else repository.names()
            return None

        per_model_paths(doc, repository, names)

    async def live(self) -> dict:
        return {"live": True}

    async def ready(self) -> dict:
        if self.repository.draining:
            raise NotReady("the server is shutting down", retry_after=1)
        if not self.repository.ready:
            raise NotReady("models are still loading", retry_after=1)
        return {"ready": True}

    async def server_metadata(self) -> dict:
        return {"name": "maaskit", "version": __version__, "extensions": EXTENSIONS}

    async def model_metadata(self, name: str, version: str | None = None) -> dict:
        return self.repository.get(name, version).metadata(self.repository.versions(name))

    async def model_ready(self, name: str, version: str | None = None) -> dict:
        self.repository.get(name, version)
        return {"name": name, "ready": True}

    async def infer(self, name: str, request: Request, version: str | None = None) -> Response:
        served = self.repository.classifier(name, version)
        header, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        checked = validate(InferRequest, header, "V2 inference request")
        inputs = header["inputs"]
        if len(inputs) != 1:
            raise ProtocolError(f"model {name!r} takes exactly one input, {served.input_name!r}; got {len(inputs)}")
        # its shape as validated: [1.0, 64] in the JSON is the whole numbers [1, 64], as the document says
        array, _ = decode_tensor({**inputs[0], "shape": checked.inputs[0].shape}, memoryview(binary))
        x = served.prepare(array, inputs[0]["datatype"], inputs[0]["name"])
        explaining = checked.parameters.explain if checked.parameters is not None else None
        if explaining is not None:  # never through the batcher: see ServedModel.explain
            body, headers = await _explained(served, header, x, explaining.model_dump(exclude_unset=True))
        else:
            body, headers = _reply(served, checked, header, await served.infer(x))
        return Response(body, headers=headers, media_type=headers["Content-Type"])

    async def repository_index(self, request: Request) -> list[dict]:
        wanted = await _json_or_empty(request, RepositoryIndexRequest, "repository index request")
        entries = self.repository.index()
        if wanted is not None and wanted.ready:
            entries = [e for e in entries if e["state"] == "READY"]
        return entries

    async def load(self, name: str) -> dict:
        self._allowed()
        await self.repository.load(name)
        return {}

    async def unload(self, name: str) -> dict:
        self._allowed()
        self.repository.unload(name)
        return {}

    def _allowed(self) -> None:
        if not self.admin:
            raise Forbidden("loading and unloading models needs a server started with a token (--token)")


async def _explained(served: ServedModel, header: dict, x: np.ndarray, explaining: dict) -> tuple[bytes, dict]:
    """The V2 answer to a request with ``parameters.explain``: ``attributions`` shaped as the input
    and the ``targets`` explained, JSON or binary as asked."""
    if len(x) > LIMITS["images"]:
        raise ProtocolError(f"explain takes 1 to {LIMITS['images']} images per request, got {len(x)}")
    if header.get("outputs") is not None:
        raise ProtocolError("an explanation answers 'attributions' and 'targets': leave 'outputs' out")
    how = {"method": "integrated_gradients", **explaining}
    method, target = how.pop("method"), how.pop("target", None)
    attributions, targets = await served.explain(x, method, target, **how)
    binary = bool((header.get("parameters") or {}).get("binary_data_output"))
    named = [("attributions", attributions.astype(np.float32)), ("targets", np.asarray(targets, np.int64))]
    return _response(served, header, [(name, values, binary) for name, values in named])


def _reply(served: ServedModel, checked: InferRequest, header: dict, logits: np.ndarray) -> tuple[bytes, dict]:
    """The V2 response for ``logits``: the outputs asked for, JSON or binary, classified or raw. Read from
    the validated request, whose numbers are Python's (``classification: 3.0`` in the JSON is 3 there)."""
    all_binary = bool(checked.parameters is not None and checked.parameters.binary_data_output)
    wanted: list[tuple[str, np.ndarray, bool]] = []
    for spec in checked.outputs or [RequestOutput(name=served.output_name)]:
        if spec.name != served.output_name:
            raise ProtocolError(
                f"model {served.name!r} has one output, {served.output_name!r}; got a request for {spec.name!r}"
            )
        k = spec.parameters.classification if spec.parameters is not None else None
        values = classification_strings(logits, k, served.classes) if k else logits
        binary = spec.parameters.binary_data if spec.parameters is not None else None
        binary = all_binary if binary is None else binary
        wanted.append((served.output_name, values, binary))
    return _response(served, header, wanted)


def _response(served: ServedModel, header: dict, tensors: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, dict]:
    """A V2 response body and headers: ``(name, values, binary)`` per output, the request's id echoed."""
    outputs, chunks = zip(*(encode_tensor(name, values, binary=binary) for name, values, binary in tensors))
    reply: dict[str, Any] = {"model_name": served.name, "model_version": served.version, "outputs": list(outputs)}
    if header.get("id") is not None:
        reply["id"] = header["id"]
    return encode_body(reply, list(chunks))
