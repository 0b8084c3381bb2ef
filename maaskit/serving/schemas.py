"""The request and response bodies of the V2 (Open Inference Protocol) and V1 (TF Serving)
APIs as Pydantic models: they are what ``/docs`` shows and what a request's JSON header is
checked against (strictly: a string is not a number here), so the documented schema and the
server's behaviour cannot drift apart. The binary tensor data after a V2 header is parsed by
:mod:`maaskit.serving.protocol`, never by Pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import core_schema
from starlette.convertors import Convertor, register_url_convertor

from ..explain import LIMITS, Method
from .protocol import HEADER_LENGTH, ProtocolError

__all__ = [
    "ERRORS",
    "Alive",
    "ClassifyResponse",
    "Error",
    "ExplainParameters",
    "ExplainRequest",
    "ExplainResponse",
    "InferRequest",
    "InferResponse",
    "Live",
    "ModelMetadata",
    "ModelReady",
    "ModelStatus",
    "PredictRequest",
    "PredictResponse",
    "Ready",
    "RepositoryEntry",
    "RepositoryIndexRequest",
    "SEED_MAX",
    "WHOLE",
    "ServerMetadata",
    "Whole",
    "error_responses",
    "request_body_doc",
    "validate",
]


class NameSegment(Convertor):
    """``{name:segment}`` in a route: a model's name or version never holds ':' or '/', so
    ``/v1/models/m:predict`` is never read as the status of a model named ``m:predict``."""

    regex = "[A-Za-z0-9_.-]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", NameSegment())


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _WholeNumber:
    """``Annotated[int, Field(...), WHOLE]``: a JSON integer. 3 and 3.0 are the same number to JSON
    Schema (and to clients' encoders), so both are accepted; "3", true and 3.5 are not."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        schema = handler(source)
        schema["strict"] = True
        return core_schema.no_info_before_validator_function(_whole_number, schema)


WHOLE = _WholeNumber()
Whole = Annotated[int, WHOLE]

SEED_MAX = 2**32 - 1  # NumPy's random generators, which the explanations use, take seeds up to this

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
Dim = Annotated[int, Field(ge=0), WHOLE]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class Error(BaseModel):
    """Every error the server answers, whatever the route."""

    error: str = Field(description="what went wrong and what was expected")


class InputParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data_size: Dim | None = Field(None, description="bytes of this tensor after the JSON header")


class RequestInput(_Strict):
    name: str
    shape: list[Dim]
    datatype: Datatype
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; absent with binary data")


class OutputParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data: bool | None = Field(None, description="answer this output as raw bytes after the JSON header")
    classification: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        None, description="the top k classes as BYTES strings 'score:index:label' (Triton's extension)"
    )


class RequestOutput(_Strict):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data_output: bool | None = Field(None, description="every output as raw bytes")
    explain: ExplainParameters | None = Field(
        None, description="answer attributions (output 'attributions', input-shaped) and 'targets' instead of logits"
    )


class InferRequest(_Strict):
    """A V2 inference request (its JSON header, with the binary extension)."""

    id: str | None = Field(None, description="echoed in the response")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, description="the model's inputs (maaskit's models take one)")
    outputs: list[RequestOutput] | None = Field(None, description="the outputs wanted; default: all, as JSON")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class Live(BaseModel):
    live: bool


class Alive(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class RepositoryIndexRequest(_Strict):
    ready: bool | None = Field(None, description="only the models that are ready")


class RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str | None = None


class PredictRequest(_Strict):
    """TF Serving's predict and classify request: rows (``instances``) or columns (``inputs``),
    exactly one of them, with at least one example."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={"oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}]},
    )
    signature_name: str | None = None
    instances: list[Any] | None = Field(None, min_length=1, description="one entry per example")
    inputs: list[Any] | dict[str, Any] | None = Field(None, description="columnar: the batch, or {input name: batch}")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("a V1 request has either 'instances' (one entry per example) or 'inputs' (columnar)")
        if not self.inputs and self.inputs is not None:
            raise ValueError("'inputs' holds at least one example")
        return self


class PredictResponse(BaseModel):
    predictions: list[Any] | None = Field(None, description="answers an 'instances' request")
    outputs: list[Any] | None = Field(None, description="answers an 'inputs' request")


class ClassifyResponse(BaseModel):
    results: list[list[Annotated[list[str | float], Field(min_length=2, max_length=2)]]] = Field(
        description="per example, [label, probability] pairs, best first"
    )


class ExplainParameters(_Strict):
    """How to explain: the method (maaskit.explain) and its parameters, each capped per request."""

    method: Method = "integrated_gradients"
    target: Annotated[int, Field(ge=0), WHOLE] | list[Annotated[int, Field(ge=0), WHOLE]] | None = Field(
        None, description="the class to explain: one, one per example, or none for the predicted class"
    )
    steps: Annotated[int, Field(ge=1, le=LIMITS["steps"]), WHOLE] = Field(
        50, description="integrated gradients: path steps"
    )
    samples: Annotated[int, Field(ge=1, le=LIMITS["samples"]), WHOLE] = Field(
        200, description="kernel_shap and lime: model calls"
    )
    window: Annotated[int, Field(ge=1, le=8), WHOLE] = Field(2, description="occlusion, kernel_shap, lime: patch size")
    seed: Annotated[int, Field(ge=0, le=SEED_MAX), WHOLE] = Field(
        0, description="kernel_shap and lime sample at random; the same seed, the same answer"
    )


class ExplainRequest(ExplainParameters):
    """KServe V1's explain request: the rows to explain, the method and its (capped) parameters."""

    instances: list[Any] = Field(
        min_length=1, max_length=LIMITS["images"], description="one entry per example: the model's normalized input"
    )


class Explanation(BaseModel):
    method: str
    target: int
    attributions: list[Any] = Field(description="one number per input value, with the instance's shape")


class ExplainResponse(BaseModel):
    explanations: list[Explanation]


class VersionStatus(BaseModel):
    version: str
    state: str
    status: dict[str, str]


class ModelStatus(BaseModel):
    """TF Serving's model status, with KServe V1's ``name`` and ``ready`` beside it."""

    name: str
    ready: bool
    model_version_status: list[VersionStatus]


def validate(model: type[_Strict], value: Any, what: str) -> Any:
    """``value`` checked against ``model``; a mismatch is a ProtocolError naming the first field."""
    try:
        return model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        got = f" (got {first['input']!r:.40})" if first["type"] != "missing" else ""
        raise ProtocolError(f"{what}: {where or 'the body'}: {first['msg']}{got}") from None


def _error(description: str, **headers: str) -> dict:
    doc: dict[str, Any] = {"model": Error, "description": description}
    if headers:
        doc["headers"] = {h: {"description": d, "schema": {"type": "string"}} for h, d in headers.items()}
    return doc


# Every error status, documented once and picked per route.
ERRORS: dict[int, dict] = {
    400: _error("the request does not follow the protocol, or does not fit the model"),
    401: _error(
        "missing or wrong bearer token (servers started with a token)",
        **{"WWW-Authenticate": "Bearer"},
    ),
    403: _error("not allowed on this server (loading models needs a server started with a token)"),
    404: _error("no such model or version"),
    409: _error("the model is already loading"),
    413: _error("the request body is over the server's limit"),
    500: _error("the model failed on this input (its output was NaN or infinite), or the server did"),
    503: _error(
        "not ready: the model is loading, or the queue is full",
        **{"Retry-After": "seconds to wait before trying again"},
    ),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these error statuses."""
    return {s: ERRORS[s] for s in statuses}


def request_body_doc(model: type, *, binary: bool = False, required: bool = True) -> dict:
    """``openapi_extra`` documenting a request body that a route reads itself (for speed)."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if binary:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": f"the JSON header, then raw tensor bytes; {HEADER_LENGTH} gives the header's length",
        }
    doc: dict[str, Any] = {"requestBody": {"required": required, "content": content}}
    if binary:
        doc["parameters"] = [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "length of the JSON header of a binary body",
            }
        ]
    return doc


RequestParameters.model_rebuild()  # its explain field names a class defined after it
