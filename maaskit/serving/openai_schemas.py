"""The bodies of the OpenAI-compatible API (``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``) as Pydantic models, for ``/docs`` and for checking requests.

Unknown fields are ignored, never rejected: real clients send fields a small server does not
know (``user``, ``presence_penalty``, ``parallel_tool_calls``, ...) and a strict schema would break them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..lm.runtime.engine import SamplingParams
from .schemas import WHOLE

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DetokenizeRequest",
    "TokenizeRequest",
    "ChatRequest",
    "CompletionRequest",
    "ResponseFormat",
    "response_constraint",
    "OpenAIError",
    "OpenAIErrorBody",
    "OpenAIModel",
    "OpenAIModelList",
    "openai_error_responses",
    "parse",
]


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_error"}  # fmt: skip

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    """Unknown fields ignored; known ones strictly typed (``0`` is not ``false``), as the document says."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Lenient):
    include_usage: bool = Field(False, description="send a last chunk with the usage (and no choices) before [DONE]")


DEFAULT_MAX_TOKENS = 16  # OpenAI's (legacy) Completions default; vLLM's completions route keeps it
# Chat Completions (OpenAI's and vLLM's) default to the rest of the context: fit_to_context cuts this to the
# room the prompt leaves
REST_OF_CONTEXT = 2**31 - 1


class _Sampling(_Lenient):
    model: str = Field(description="a language model this server serves (GET /v1/models)")
    max_tokens: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        None,
        description="new tokens at most, below the model's context (default: 16 on /v1/completions, the rest of "
        "the context on /v1/chat/completions, as OpenAI and vLLM do); an answer that reaches the context's end "
        "stops there (finish_reason 'length')",
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        None, description="not OpenAI's: sample from the k likeliest tokens only"
    )
    n: Annotated[int, Field(ge=1, le=16), WHOLE] = Field(1, description="choices to generate")
    stream: bool = Field(False, description="server-sent events, one chunk per token")
    stream_options: StreamOptions | None = None
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = Field(  # noqa: UP007
        None, description="up to 4 sequences that end a choice"
    )
    seed: Annotated[int, Field(ge=0, le=2**63 - 1), WHOLE] | None = Field(
        None, description="the same seed and request give the same text"
    )
    min_tokens: Annotated[int, Field(ge=0), WHOLE] = Field(
        0, description="not OpenAI's (vLLM's): no stop token before this many tokens"
    )
    ignore_eos: bool = Field(
        False, description="not OpenAI's (vLLM's): the model's end-of-text token does not end a choice (benchmarks)"
    )

    def stop_sequences(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise OpenAIError(400, f"stop takes at most 4 sequences, got {len(stop)}", param="stop")
        return stop

    def _params(self, max_tokens: int, stop_tokens: tuple[int, ...], logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p if self.top_p < 1 else None,
            top_k=self.top_k,
            seed=self.seed,
            logprobs=logprobs,
            stop_tokens=stop_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
        )


class JSONSchemaSpec(_Lenient):
    name: str = Field("answer", description="a name for the schema (not used to generate)")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema the answer must fit")
    strict: bool | None = Field(None, description="always enforced here, strict or not")


class TextFormat(_Lenient):
    type: Literal["text"] = Field(description="free text (the default)")


class JSONObjectFormat(_Lenient):
    type: Literal["json_object"] = Field(description="any JSON object, enforced by constrained decoding")


class JSONSchemaFormat(_Lenient):
    type: Literal["json_schema"] = Field(description="JSON of `json_schema.schema`, enforced by constrained decoding")
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JSONObjectFormat, JSONSchemaFormat], Field(discriminator="type")]  # noqa: UP007


def response_constraint(fmt: TextFormat | JSONObjectFormat | JSONSchemaFormat | None) -> tuple[bool, dict | None]:
    """``(constrained, schema)``: text is free, json_object any object (None), json_schema its schema."""
    if fmt is None or isinstance(fmt, TextFormat):
        return False, None
    return True, fmt.json_schema.schema_ if isinstance(fmt, JSONSchemaFormat) else None


class _Structured(_Sampling):
    response_format: Optional[ResponseFormat] = Field(  # noqa: UP045
        None, description="structured output: a JSON object, or JSON of a given schema"
    )


class CompletionRequest(_Structured):
    prompt: Union[str, list[str], list[Annotated[int, WHOLE]]] = Field(  # noqa: UP007
        description="text, texts, or token ids"
    )
    logprobs: Annotated[int, Field(ge=0, le=20), WHOLE] | None = Field(
        None, description="log-probabilities of the chosen and N likeliest tokens"
    )
    echo: bool = Field(False, description="the prompt's text first, then the completion")

    def sampling_params(self, stop_tokens: tuple[int, ...]) -> SamplingParams:
        """How each choice is generated; any of ``stop_tokens`` ends a choice."""
        return self._params(self.max_tokens or DEFAULT_MAX_TOKENS, stop_tokens, self.logprobs)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCall(_Lenient):
    name: str
    arguments: str = Field(description="the arguments as a JSON string")


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


Content = Union[str, list[TextPart]]  # noqa: UP007 (the text parts are read; images and audio are not served)


class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Lenient):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: Optional[Content] = None  # noqa: UP045 (None: a turn that only calls tools)
    tool_calls: list[ToolCall] | None = Field(None, description="the calls this turn made")


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: Content = Field(description="what the tool returned")
    tool_call_id: str | None = Field(None, description="the call this answers")


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]  # noqa: UP007


class FunctionTool(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"}, description="a JSON Schema for the arguments"
    )


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionTool


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: dict[str, str] = Field(description='{"name": ...}: this tool must be called')


class ChatRequest(_Structured):
    messages: list[Message] = Field(min_length=1, description="the conversation; see the chat template in /docs")
    tools: list[Tool] | None = Field(
        None, max_length=64, description="functions the model may call (a model fine-tuned with the chat format)"
    )
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = Field(  # noqa: UP007
        None, description="auto (the default with tools), none, required, or a named function"
    )
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20), WHOLE] | None = Field(None, description="needs logprobs: true")
    max_completion_tokens: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        None, description="the newer name for max_tokens"
    )

    def sampling_params(self, stop_tokens: tuple[int, ...]) -> SamplingParams:
        """How each choice is generated; any of ``stop_tokens`` ends a choice. ``logprobs: true`` alone gives
        the chosen tokens' log-probabilities, ``top_logprobs`` that many alternatives too."""
        if self.top_logprobs is not None and not self.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._params(self.max_completion_tokens or self.max_tokens or REST_OF_CONTEXT, stop_tokens, logprobs)


class TokenizeRequest(_Lenient):
    """vLLM's ``/tokenize``: a prompt, or chat messages as the model's chat template renders them."""

    model: str = Field(description="a language model this server serves")
    prompt: str | None = Field(None, description="text to tokenize (or messages)")
    messages: list[Message] | None = Field(None, min_length=1, description="a conversation, as the chat route reads it")
    add_special_tokens: bool = Field(True, description="the tokenizer's own (a BOS, say) around a prompt")


class DetokenizeRequest(_Lenient):
    model: str = Field(description="a language model this server serves")
    tokens: list[Annotated[int, Field(ge=0), WHOLE]] = Field(description="token ids")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "maaskit"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: _ErrorDetail


def parse(model: type[BaseModel], value: Any) -> Any:
    """``value`` checked against ``model``; a mismatch is a 400 naming the field (``param``)."""
    if not isinstance(value, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        # a field of several types (stop: a string or a list) fails once per type: the error that is not
        # about the type ("at most 4 items") says what was wrong
        errors = err.errors()
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        where = str(first["loc"][0]) if first["loc"] else None
        raise OpenAIError(400, f"{where or 'the body'}: {first['msg']}", param=where) from None


_DESCRIPTIONS = {
    400: "a bad request: messages, sampling values, max_tokens past the context",
    401: "missing or unknown API key (Authorization: Bearer KEY)",
    404: "no such model",
    413: "the body is over the server's limit",
    429: "the key's requests or tokens per minute are spent: Retry-After and x-ratelimit-* say when",
}


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {"model": OpenAIErrorBody, "description": _DESCRIPTIONS[s]}
        if s == 429:
            out[s]["headers"] = {
                h: {"schema": {"type": "string"}} for h in ("Retry-After", "x-ratelimit-remaining-requests")
            }
    return out
