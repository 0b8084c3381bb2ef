"""The OpenAPI document at ``/openapi.json``: FastAPI's, made to say exactly what the server accepts.

A client generated from the document (openapi-generator, a typed SDK) or a tester such as
schemathesis sends every request the document allows; each must be answered, and every request it
forbids refused. Two kinds of rule make that true:

- **Structural rules**, the same for every model, live in the Pydantic models of :mod:`.schemas`
  and :mod:`.openai_schemas` (a V1 body has exactly one of ``instances``/``inputs``, V2 at least
  one input, the OpenAI ranges), so the server checks what the document says.
- **What only a model knows** (its input's name, shape and datatypes, its classes, a language
  model's vocabulary and context) is written here, from the repository: each model gets its own
  paths (``/v2/models/digits/infer``, ...) whose bodies say it, and the OpenAI bodies name the
  served language models. The document is rebuilt when the models served change.

One rule no JSON Schema can state is that a V2 tensor holds as many values as its shape says; the
per-model bodies list the batch sizes 1 to :data:`DOCUMENTED_BATCH` (any batch is accepted).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ..explain import LIMITS, MAX_MAGNITUDE, METHODS
from .openai_schemas import ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .schemas import SEED_MAX, ExplainRequest, InferRequest, PredictRequest, RepositoryIndexRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fastapi import FastAPI

    from .dataplane import ModelRepository, ServedLanguageModel, ServedModel
    from .endpoints import Endpoints

__all__ = ["DOCUMENTED_BATCH", "language_model_bodies", "openapi_document", "per_model_paths"]

DOCUMENTED_BATCH = 4  # the batch sizes a per-model V2 body lists (a tensor's values must match its shape)
BINARY_EXTENSION = (
    "\n\nTriton's binary tensor extension is accepted too: the JSON header above, then each tensor's raw "
    "little-endian bytes (`parameters.binary_data_size` per input), with `Content-Type: application/octet-stream` "
    "and `Inference-Header-Content-Length: <bytes of the header>`."
)
_BODIES = (InferRequest, PredictRequest, ExplainRequest, RepositoryIndexRequest, CompletionRequest, ChatRequest,
           TokenizeRequest, DetokenizeRequest)  # fmt: skip


def openapi_document(
    app: FastAPI,
    repository: ModelRepository,
    protocols: Sequence[Endpoints],
    *,
    secured: bool,
    open_paths: tuple[str, ...],
) -> dict:
    """The document for the models served now (cached until they change): FastAPI's, then each
    protocol's own part (:meth:`Endpoints.document`)."""
    served = _served_now(repository)
    cached = getattr(app.state, "openapi_cache", None)
    if cached is not None and cached[0] == served:
        return cached[1]
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in _BODIES], ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for protocol in protocols:
        protocol.document(doc, repository)
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in doc["paths"].items():
            if not path.startswith(open_paths):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    app.state.openapi_cache = (served, doc)
    return doc


def _served_now(repository: ModelRepository) -> tuple:
    served = tuple((n, repository.kind_of(n), tuple(repository.versions(n))) for n in repository.names())
    return served, tuple(repository.available())


# --- each model's own paths ----------------------------------------------------------------------


def per_model_paths(doc: dict, repository: ModelRepository, names_for: Callable[[str], list[str] | None]) -> None:
    """Replace each path with ``{name}`` for which ``names_for(path)`` gives names by one path per name,
    its body made exact for a classifier (its input, its classes); the others are left as they are."""
    classifiers = repository.classifiers()
    paths: dict[str, Any] = {}
    for path, item in doc["paths"].items():
        names = names_for(path) if "{name}" in path else None
        if names is None:
            paths[path] = item
            continue
        for name in names:
            paths[path.replace("{name}", name)] = _for_model(item, name, path, classifiers.get(name), repository)
    doc["paths"] = paths


def language_model_bodies(doc: dict, repository: ModelRepository) -> None:
    """The OpenAI and token routes' bodies, one per served language model: its name, context and vocabulary."""
    language = repository.language_models()
    if not language:
        return
    for route in ("/v1/completions", "/v1/chat/completions"):
        operation = doc["paths"].get(route, {}).get("post")
        if operation is not None:
            kind = CompletionRequest if route == "/v1/completions" else ChatRequest
            schema = doc["components"]["schemas"][kind.__name__]
            bodies = [_openai_body(schema, served, kind is CompletionRequest) for served in language.values()]
            operation["requestBody"]["content"]["application/json"]["schema"] = _one_of(bodies)
    for route, body_model in (("/tokenize", TokenizeRequest), ("/detokenize", DetokenizeRequest)):
        operation = doc["paths"].get(route, {}).get("post")
        if operation is not None:
            schema = doc["components"]["schemas"][body_model.__name__]
            bodies = [_token_body(schema, served, route) for served in language.values()]
            operation["requestBody"]["content"]["application/json"]["schema"] = _one_of(bodies)


def _for_model(item: dict, name: str, path: str, served: ServedModel | None, repository: ModelRepository) -> dict:
    """A path item for one model: no ``name`` parameter, the model's versions, and its own body."""
    item = copy.deepcopy(item)
    for method, operation in item.items():
        operation["operationId"] = f"{operation.get('operationId', method)}_{name}"
        params = []
        for p in operation.get("parameters", []):
            if p["name"] == "name" or (p["in"] == "header" and path.endswith("/infer")):
                continue  # the header of Triton's binary extension: described in words, not generated
            if p["name"] == "version":
                p["schema"] = {"type": "string", "enum": repository.versions(name)}
            params.append(p)
        operation["parameters"] = params
        if not params:
            del operation["parameters"]
        body = _body(path, served) if served is not None and "requestBody" in operation else None
        if body is not None:
            operation["requestBody"]["content"] = {"application/json": {"schema": body}}
        if body is not None and path.endswith("/infer"):
            operation["description"] = (operation.get("description", "") + BINARY_EXTENSION).strip()
    return item


def _body(path: str, served: ServedModel) -> dict | None:
    if path.endswith("/infer"):
        return _v2_body(served)
    if path.endswith((":predict", ":classify")):
        return _v1_body(served)
    if path.endswith(":explain"):
        return _explain_body(served)
    return None


def _or_null(schema: dict) -> dict:
    """What the server takes as "not given" too: ``null`` (Pydantic's ``None``)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _number(datatype: str) -> dict:
    if datatype == "UINT8":
        return {"type": "integer", "minimum": 0, "maximum": 255}
    return {"type": "number", "minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE}  # ServedModel.prepare


def _nested(shape: list[int], leaf: dict) -> dict:
    """An array nested as ``shape`` (each dimension exactly that long) with ``leaf`` values."""
    schema = leaf
    for size in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    return schema


def _target(served: ServedModel, batch: int | None) -> dict:
    one = {"type": "integer", "minimum": 0, "maximum": len(served.classes) - 1}
    options: list[dict] = [one, {"type": "null"}]
    if batch is not None:  # one target per example
        options.append({"type": "array", "items": one, "minItems": batch, "maxItems": batch})
    return {"anyOf": options, "description": "the class to explain: one, one per example, or none for the predicted"}


def _explain_parameters(served: ServedModel, batch: int | None) -> dict:
    return {
        "method": {"type": "string", "enum": list(METHODS)},
        "target": _target(served, batch),
        "steps": {"type": "integer", "minimum": 1, "maximum": LIMITS["steps"]},
        "samples": {"type": "integer", "minimum": 1, "maximum": LIMITS["samples"]},
        "window": {"type": "integer", "minimum": 1, "maximum": 8},
        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
    }


def _v2_body(served: ServedModel) -> dict:
    """A V2 inference request for this model, JSON: one input of its shape, batches of 1 to DOCUMENTED_BATCH."""
    shape = served.input_shape[1:]
    per_image = 1
    for size in shape:
        per_image *= size
    outputs = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"const": served.output_name},
                "parameters": _or_null(
                    {
                        "type": "object",
                        "properties": {
                            "binary_data": _or_null({"type": "boolean"}),
                            "classification": _or_null({"type": "integer", "minimum": 1}),
                        },
                    }
                ),
            },
        },
    }
    bodies = []
    for batch in range(1, DOCUMENTED_BATCH + 1):
        for datatype in ("FP32", "UINT8"):
            for explained in (False, True):
                bodies.append(_v2_case(served, batch, datatype, explained, outputs, per_image))
    return {"anyOf": bodies, "description": f"one input named {served.input_name!r} of shape [N, {shape}]"}


def _v2_case(served: ServedModel, batch: int, datatype: str, explained: bool, outputs: dict, size: int) -> dict:
    """A V2 body of ``batch`` images of one datatype, asking for an explanation or not."""
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"const": served.input_name},
            "shape": {"const": [batch, *served.input_shape[1:]]},
            "datatype": {"const": datatype},
            "data": {"type": "array", "items": _number(datatype), "minItems": batch * size,
                     "maxItems": batch * size},
        },
    }  # fmt: skip
    explain = {"type": "object", "properties": _explain_parameters(served, batch)} if explained else {"type": "null"}
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"binary_data_output": _or_null({"type": "boolean"}), "explain": explain},
    }
    if explained:
        parameters["required"] = ["explain"]
    return {
        "type": "object",
        "required": ["inputs", "parameters"] if explained else ["inputs"],
        "properties": {
            "id": _or_null({"type": "string"}),
            "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
            "outputs": {"type": "null"} if explained else _or_null(outputs),  # an explanation has its own
            "parameters": parameters if explained else _or_null(parameters),
        },
    }


def _v1_body(served: ServedModel) -> dict:
    """TF Serving's request for this model: ``instances`` or ``inputs``, each example nested as its shape."""
    example = _nested(served.input_shape[1:], _number("FP32"))
    named = {"type": "object", "required": [served.input_name], "properties": {served.input_name: example},
             "additionalProperties": False}  # fmt: skip
    rows = {"type": "array", "minItems": 1, "items": example}
    named_rows = {"type": "array", "minItems": 1, "items": named}
    columns = {"type": "object", "required": [served.input_name], "additionalProperties": False,
               "properties": {served.input_name: rows}}  # fmt: skip
    signature = {"signature_name": _or_null({"type": "string"})}
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["instances"],
                "not": {"required": ["inputs"]},
                "properties": {**signature, "instances": {"anyOf": [rows, named_rows]}},
            },
            {
                "type": "object",
                "required": ["inputs"],
                "not": {"required": ["instances"]},
                "properties": {**signature, "inputs": {"anyOf": [rows, columns]}},
            },
        ]  # fmt: skip
    }


def _explain_body(served: ServedModel) -> dict:
    """KServe V1's explain request: 1 to LIMITS["images"] instances, one target per instance if a list."""
    example = _nested(served.input_shape[1:], _number("FP32"))
    bodies = []
    for batch in range(1, LIMITS["images"] + 1):
        instances = {"type": "array", "items": example, "minItems": batch, "maxItems": batch}
        bodies.append(
            {"type": "object", "required": ["instances"],
             "properties": {"instances": instances, **_explain_parameters(served, batch)}}
        )  # fmt: skip
    return {"anyOf": bodies}


def _openai_body(schema: dict, served: ServedLanguageModel, completion: bool) -> dict:
    """The generic OpenAI body, for one language model: its name, its context, its vocabulary."""
    body = copy.deepcopy(schema)
    props = body["properties"]
    props["model"] = {"const": served.name, "type": "string"}
    room = {"type": "integer", "minimum": 1, "maximum": served.context - 1}
    for field in ("max_tokens", "max_completion_tokens"):
        if field in props:
            props[field] = {"anyOf": [room, {"type": "null"}], "description": props[field].get("description", "")}
    # a limit in tokens: no JSON Schema keyword can state it on text or messages, so the words do
    fits = (f"; prompt and answer fit in {served.context} tokens, this model's context, which no rule on"
            " characters or items can state (past it: a 400)")  # fmt: skip
    if not completion:
        props["messages"] = {**props["messages"], "description": props["messages"].get("description", "") + fits}
    if not completion and not served.prompts.calls_tools:  # no chat tokens: no tools, so nothing to choose from
        props["tools"] = {"type": "null", "description": "this model has no chat format, so it calls no tools: "
                          "fine-tune it with `maaskit lm finetune`"}  # fmt: skip
        props["tool_choice"] = {"anyOf": [{"enum": ["none", "auto"]}, {"type": "null"}]}
    if not completion:  # top_logprobs (a number) needs logprobs: true
        body["anyOf"] = [
            {"properties": {"top_logprobs": {"type": "null"}}},
            {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        ]
    if completion:  # echo and logprobs: not both
        body["anyOf"] = [
            {"properties": {"echo": {"const": False}}},
            {"properties": {"logprobs": {"type": "null"}}},
        ]
        vocab = served.tokenizer.get_vocab_size()
        ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1}}
        texts = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
        text = {"type": "string", "minLength": 1}
        props["prompt"] = {"anyOf": [text, texts, ids], "description": "text, texts, or token ids" + fits}
    return body


def _token_body(schema: dict, served: ServedLanguageModel, route: str) -> dict:
    """/tokenize (a prompt or messages, not both) and /detokenize (ids in the vocabulary) for one model."""
    body = copy.deepcopy(schema)
    props = body["properties"]
    props["model"] = {"const": served.name, "type": "string"}
    if route == "/detokenize":
        vocab = served.tokenizer.get_vocab_size()
        props["tokens"] = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1}}
    else:
        text, array, null = {"type": "string"}, props["messages"]["anyOf"][0], {"type": "null"}
        props["prompt"] = {"anyOf": [text, null], "description": props["prompt"].get("description", "")}
        body["oneOf"] = [  # one of them, the other absent or null
            {"required": ["prompt"], "properties": {"prompt": text, "messages": null}},
            {"required": ["messages"], "properties": {"messages": array, "prompt": null}},
        ]
    return body


def _one_of(bodies: list[dict]) -> dict:
    return bodies[0] if len(bodies) == 1 else {"oneOf": bodies}
