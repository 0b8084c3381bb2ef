"""TF Serving's REST API (V1): predict, classify and model status, on the same data plane.

``GET /v1/models/{name}`` is TF Serving's model status here; the OpenAI-compatible API that
language models speak uses the same path for its model object.
"""

from __future__ import annotations

import re
from typing import Any, Union

import numpy as np
from fastapi import APIRouter, Request

from ..explain import LIMITS
from .dataplane import CLASSIFIER, LANGUAGE_MODEL, ModelRepository
from .endpoints import Endpoints
from .openai_schemas import OpenAIModel
from .openapi import per_model_paths
from .protocol import ProtocolError, split_body, top_k, v1_rows
from .schemas import (
    Alive,
    ClassifyResponse,
    ExplainRequest,
    ExplainResponse,
    ModelStatus,
    PredictRequest,
    PredictResponse,
    error_responses,
    request_body_doc,
    validate,
)

__all__ = ["V1Endpoints"]


class V1Endpoints(Endpoints):
    """TF Serving's REST routes (and KServe V1's liveness and explain verbs): one method per route."""

    name = "v1"
    inference = re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/[^/:]+)?:(?:predict|classify|explain)$")

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def router(self) -> APIRouter:
        api = APIRouter(tags=["V1: TF Serving REST"])
        errors = error_responses(400, 401, 404, 413, 500, 503)
        status_errors = error_responses(401, 404, 503)
        api.add_api_route("/", self.alive, methods=["GET"], response_model=Alive, responses=error_responses(401))
        api.add_api_route(
            "/v1/models/{name:segment}", self.status, methods=["GET"], responses=status_errors,
            response_model=Union[ModelStatus, OpenAIModel],  # noqa: UP007
            description="TF Serving's model status; for a language model, OpenAI's model object.",
        )  # fmt: skip
        api.add_api_route(
            "/v1/models/{name:segment}/versions/{version:segment}", self.status, methods=["GET"],
            response_model=ModelStatus, responses=status_errors,
        )  # fmt: skip
        verbs = (
            ("predict", self.predict, PredictResponse, PredictRequest),
            ("classify", self.classify, ClassifyResponse, PredictRequest),
            ("explain", self.explain, ExplainResponse, ExplainRequest),
        )
        for verb, endpoint, answer, body in verbs:
            for path in ("/v1/models/{name:segment}", "/v1/models/{name:segment}/versions/{version:segment}"):
                api.add_api_route(
                    f"{path}:{verb}", endpoint, methods=["POST"], response_model=answer, responses=errors,
                    openapi_extra=request_body_doc(body),
                )  # fmt: skip
        return api

    def document(self, doc: dict, repository: ModelRepository) -> None:
        """A path per classifier, its own body; the status path for language models too (OpenAI's object)."""

        def names(path: str) -> list[str] | None:
            if path == "/v1/models/{name}":
                return repository.names()
            return repository.names(CLASSIFIER) if path.startswith("/v1/models/") else None

        per_model_paths(doc, repository, names)

    async def alive(self) -> dict:
        """KServe V1's liveness check."""
        return {"status": "alive"}

    async def status(self, name: str, version: str | None = None) -> dict:
        if version is None and self.repository.kind_of(name) == LANGUAGE_MODEL:
            return self.repository.language_model(name).model_object()
        self.repository.classifier(name, version)
        versions = [version] if version else self.repository.versions(name)
        return {
            "name": name,
            "ready": True,
            "model_version_status": [
                {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ],
        }

    async def predict(self, name: str, request: Request, version: str | None = None) -> dict:
        logits, key = await self._logits(request, name, version)
        return {key: logits.tolist()}

    async def classify(self, name: str, request: Request, version: str | None = None) -> dict:
        logits, _ = await self._logits(request, name, version)
        classes = self.repository.classifier(name, version).classes
        return {"results": [[list(pair) for pair in row] for row in top_k(logits, 5, classes)]}

    async def explain(self, name: str, request: Request, version: str | None = None) -> dict:
        """KServe V1's explain verb: attributions per input value (maaskit.explain), work capped per request."""
        served = self.repository.classifier(name, version)
        body = validate(ExplainRequest, split_body(await request.body(), None)[0], "explain request")
        if not 1 <= len(body.instances) <= LIMITS["images"]:
            raise ProtocolError(
                f"explain takes 1 to {LIMITS['images']} instances per request, got {len(body.instances)}"
            )
        x = served.prepare(_numeric(body.instances, "instances"), "FP32", served.input_name)
        params = {"steps": body.steps, "samples": body.samples, "window": body.window, "seed": body.seed}
        attributions, targets = await served.explain(x, body.method, body.target, **params)
        return {
            "explanations": [
                {"method": body.method, "target": t, "attributions": a.tolist()} for a, t in zip(attributions, targets)
            ]
        }

    async def _logits(self, request: Request, name: str, version: str | None) -> tuple[np.ndarray, str]:
        served = self.repository.classifier(name, version)
        body = validate(PredictRequest, split_body(await request.body(), None)[0], "V1 request")
        rows, key = v1_rows(body.model_dump(exclude_none=True), served.input_name)
        x = served.prepare(_numeric(rows, "V1 input"), "FP32", served.input_name)
        return await served.infer(x), key


def _numeric(rows: Any, what: str) -> np.ndarray:
    """Numbers only: NumPy alone would read true as 1 and "0.5" as 0.5, which the document forbids."""
    stack = [rows]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{what} must hold numbers only, got {value!r:.40}")
    try:
        with np.errstate(over="raise"):  # 1e39 as float32 would silently become infinity
            return np.asarray(rows, dtype=np.float32)
    except FloatingPointError:
        raise ProtocolError(f"{what} holds numbers beyond float32's range (±3.4e38)") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"{what} is not a numeric array of shape [N, ...]: {err}") from None
