"""TF Serving's REST API (V1): predict, classify and model status, on the same data plane.

``GET /v1/models/{name}`` is TF Serving's model status here; the OpenAI-compatible API that
language models speak uses the same path for its model object.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
from fastapi import APIRouter, Request

from ..explain import LIMITS
from .dataplane import ModelRepository
from .openai_schemas import OpenAIModel
from .protocol import ProtocolError, split_body, top_k, v1_rows
from .rest_openai import model_object
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

__all__ = ["router"]


def router(repository: ModelRepository) -> APIRouter:
    api = APIRouter(tags=["V1: TF Serving REST"])
    errors = error_responses(400, 401, 404, 413, 503)

    @api.get("/", response_model=Alive, responses=error_responses(401))
    async def alive():
        """KServe V1's liveness check."""
        return {"status": "alive"}

    @api.get(
        "/v1/models/{name:segment}",
        response_model=Union[ModelStatus, OpenAIModel],  # noqa: UP007
        responses=error_responses(401, 404, 503),
        description="TF Serving's model status; for a language model, OpenAI's model object.",
    )
    @api.get(
        "/v1/models/{name:segment}/versions/{version:segment}",
        response_model=ModelStatus,
        responses=error_responses(401, 404, 503),
    )
    async def status(name: str, version: str | None = None):
        if version is None and name in repository.language_models:
            return model_object(repository.language_models[name])
        repository.get(name, version)
        versions = [version] if version else repository.versions(name)
        return {
            "name": name,
            "ready": True,
            "model_version_status": [
                {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ],
        }

    async def logits_of(request: Request, name: str, version: str | None) -> tuple[np.ndarray, str]:
        served = repository.get(name, version)
        body = validate(PredictRequest, split_body(await request.body(), None)[0], "V1 request")
        rows, key = v1_rows(body.model_dump(exclude_none=True), served.input_name)
        try:
            array = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as err:
            raise ProtocolError(f"V1 input is not a numeric array of shape [N, ...]: {err}") from None
        logits = await served.infer(served.prepare(array, "FP32", served.input_name))
        return logits, key

    predict_doc: dict[str, Any] = {
        "response_model": PredictResponse,
        "responses": errors,
        "openapi_extra": request_body_doc(PredictRequest),
    }

    @api.post("/v1/models/{name:segment}:predict", **predict_doc)
    @api.post("/v1/models/{name:segment}/versions/{version:segment}:predict", **predict_doc)
    async def predict(name: str, request: Request, version: str | None = None):
        logits, key = await logits_of(request, name, version)
        return {key: logits.tolist()}

    classify_doc: dict[str, Any] = {**predict_doc, "response_model": ClassifyResponse}

    @api.post("/v1/models/{name:segment}:classify", **classify_doc)
    @api.post("/v1/models/{name:segment}/versions/{version:segment}:classify", **classify_doc)
    async def classify(name: str, request: Request, version: str | None = None):
        logits, _ = await logits_of(request, name, version)
        classes = repository.get(name, version).classes
        return {"results": [[list(pair) for pair in row] for row in top_k(logits, 5, classes)]}

    explain_doc: dict[str, Any] = {
        "response_model": ExplainResponse,
        "responses": errors,
        "openapi_extra": request_body_doc(ExplainRequest),
    }

    @api.post("/v1/models/{name:segment}:explain", **explain_doc)
    @api.post("/v1/models/{name:segment}/versions/{version:segment}:explain", **explain_doc)
    async def explain(name: str, request: Request, version: str | None = None):
        """KServe V1's explain verb: attributions per input value (maaskit.explain), work capped per request."""
        served = repository.get(name, version)
        body = validate(ExplainRequest, split_body(await request.body(), None)[0], "explain request")
        if not 1 <= len(body.instances) <= LIMITS["images"]:
            raise ProtocolError(
                f"explain takes 1 to {LIMITS['images']} instances per request, got {len(body.instances)}"
            )
        try:
            array = np.asarray(body.instances, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as err:
            raise ProtocolError(f"instances are not a numeric array of shape [N, ...]: {err}") from None
        x = served.prepare(array, "FP32", served.input_name)
        params = {"steps": body.steps, "samples": body.samples, "window": body.window, "seed": body.seed}
        attributions, targets = await served.explain(x, body.method, body.target, **params)
        return {
            "explanations": [
                {"method": body.method, "target": t, "attributions": a.tolist()} for a, t in zip(attributions, targets)
            ]
        }

    return api
