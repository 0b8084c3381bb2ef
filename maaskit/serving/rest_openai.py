"""The OpenAI-compatible API for language models: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, answered whole or streamed as server-sent events; and vLLM's
``POST /tokenize`` and ``POST /detokenize``.

A stream is ``data: {json}\\n\\n`` chunks sharing one ``id`` and ``created``: for chat, first a
chunk whose delta carries the role; then the text as it is generated; then, per choice, a chunk
with an empty delta and the real ``finish_reason`` ("stop" or "length"); with
``stream_options.include_usage``, a usage chunk with no choices; and last ``data: [DONE]``. An
error after the stream has started is a ``data: {"error": ...}`` event, then ``[DONE]``.
Errors before it are answered in OpenAI's shape with their status (see :class:`OpenAIError`).

``GET /v1/models/{name}`` shares its path with TF Serving's model status: :mod:`.rest_v1` answers
it, with OpenAI's model object for a language model.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..lm.formats.text import CHAT_TEMPLATE
from ..lm.runtime.engine import SamplingParams, TokenEvent
from .dataplane import ModelRepository, ServedLanguageModel
from .endpoints import Endpoints
from .errors import ModelNotFound, message_of, status_of
from .keys import APIKey, APIKeys, RateLimited
from .metrics import ServerMetrics
from .openai_choices import Usage, run_choices
from .openai_requests import chat_prompt_ids, completion_prompts, fit_to_context, grammar_of, read_body
from .openai_schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    OpenAIError,
    OpenAIModelList,
    TokenizeRequest,
    openai_error_responses,
    parse,
)
from .openai_shapes import ChatShape, CompletionShape, EchoedShape
from .openapi import language_model_bodies
from .protocol import dumps
from .schemas import request_body_doc

__all__ = ["OPENAI_PATHS", "OpenAIEndpoints"]

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")  # and /v1/models, exactly


@dataclass
class _Job:
    """One admitted request: what to generate, for whom, and how its answer looks."""

    served: ServedLanguageModel
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per prompt
    stop: list[str]
    choices_per_prompt: int
    shape: CompletionShape
    headers: dict[str, str]
    usage: Usage
    settle: Any  # called once when the request ends: the key's quota and metrics

    def runs(self) -> list[tuple[list[int], SamplingParams]]:
        """Each choice's prompt and settings; with a seed, choice i uses seed + i."""
        seeded = lambda p, i: p if p.seed is None else replace(p, seed=p.seed + i)
        return [
            (prompt, seeded(params, i))
            for prompt, params in zip(self.prompts, self.params)
            for i in range(self.choices_per_prompt)
        ]

    @property
    def logprobs(self) -> bool:
        return self.params[0].logprobs is not None


class OpenAIEndpoints(Endpoints):
    """``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``: one method per
    route (as vLLM's ``OpenAIServingChat``); the answer, whole or streamed, is built from the same
    pieces of generated text."""

    name = "openai"
    inference = re.compile(r"^/v1/(?:chat/)?completions$")  # the model is named in the body

    def __init__(self, repository: ModelRepository, metrics: ServerMetrics, keys: APIKeys | None):
        self.repository, self.metrics, self.keys = repository, metrics, keys

    def router(self) -> APIRouter:
        api = APIRouter(tags=["OpenAI-compatible: language models"])
        errors = openai_error_responses(400, 401, 404, 413, 429)
        streamed: dict[int | str, dict[str, Any]] = {
            200: {
                "description": "the answer; with stream=true, server-sent events (data: {chunk}, ..., data: [DONE])",
                "content": {"application/json": {}, "text/event-stream": {}},
            }
        }
        api.add_api_route(
            "/v1/models", self.list_models, methods=["GET"], response_model=OpenAIModelList,
            responses=openai_error_responses(401),
        )  # fmt: skip
        api.add_api_route(
            "/v1/completions", self.completions, methods=["POST"], responses={**streamed, **errors},
            openapi_extra=request_body_doc(CompletionRequest), response_class=Response,
        )  # fmt: skip
        api.add_api_route(
            "/v1/chat/completions", self.chat_completions, methods=["POST"], responses={**streamed, **errors},
            openapi_extra=request_body_doc(ChatRequest), response_class=Response,
            description=(
                "Answer a conversation. The messages become the prompt through the chat template: each as "
                f"`{CHAT_TEMPLATE.strip()}` on its own line, then `assistant:`. Unless `stop` says otherwise, the "
                "answer ends where the model starts another turn (`\\nuser:` or `\\nsystem:`), or at max_tokens. "
                "A model fine-tuned with `maaskit lm finetune` reads the messages in its own chat tokens "
                "(`<|user|>...<|end|>`), ends its turn with `<|end|>`, and takes `tools` and `tool_choice`. "
                "`response_format` (json_object, json_schema) is enforced by constrained decoding on every model."
            ),
        )  # fmt: skip
        for path, endpoint, kind in (("/tokenize", self.tokenize, TokenizeRequest),
                                     ("/detokenize", self.detokenize, DetokenizeRequest)):  # fmt: skip
            api.add_api_route(path, endpoint, methods=["POST"], responses=errors, openapi_extra=request_body_doc(kind),
                              tags=["vLLM-compatible: tokens"])  # fmt: skip
        return api

    def owns_errors(self, path: str) -> bool:
        return path == "/v1/models" or path.startswith(OPENAI_PATHS)

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> Any:
        return OpenAIError(status, message, param=param, code=code).body()

    def document(self, doc: dict, repository: ModelRepository) -> None:
        language_model_bodies(doc, repository)

    # --- the routes -------------------------------------------------------------------------

    async def list_models(self) -> dict:
        """The language models served (OpenAI's model list; classifiers are listed by /v2/repository/index)."""
        return {"object": "list", "data": [m.model_object() for m in self.repository.language_models().values()]}

    async def completions(self, request: Request) -> Response:
        """Continue a prompt (text, texts, or token ids); with ``echo``, the answer begins with the prompt."""
        req = parse(CompletionRequest, await read_body(request))
        served = self._served(request, req.model)
        if req.echo and req.logprobs is not None:
            raise OpenAIError(400, "echo with logprobs would need the prompt's log-probabilities, which this "
                              "server does not compute: ask for one of them", param="echo")  # fmt: skip
        prompts = completion_prompts(served, req.prompt)
        params = replace(req.sampling_params(served.stop_tokens), grammar=grammar_of(served, req, None))
        shape = CompletionShape()
        if req.echo:
            texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if texts and not isinstance(texts[0], str):  # token ids: their text
                texts = [served.tokenizer.decode(prompts[0], skip_special_tokens=False)]
            shape = EchoedShape([str(t) for t in texts], req.n)
        return await self._answer(request, served, prompts, req, params, req.stop_sequences(), shape)

    async def chat_completions(self, request: Request) -> Response:
        req = parse(ChatRequest, await read_body(request))
        served = self._served(request, req.model)
        tools = [t.model_dump() for t in req.tools or ()]
        # tool_choice "none": a fine-tuned model is not shown the tools; any other model still refuses them
        offered = [] if served.chat is not None and req.tool_choice == "none" else tools
        prompt = chat_prompt_ids(served, req.messages, offered)
        stop = req.stop_sequences() or list(served.prompts.stop)  # unless the client says otherwise
        params = replace(req.sampling_params(served.stop_tokens), grammar=grammar_of(served, req, tools))
        return await self._answer(request, served, [prompt], req, params, stop, ChatShape())

    async def tokenize(self, request: Request) -> dict:
        """vLLM's: a prompt's token ids, or a conversation's as the chat route builds its prompt."""
        req = parse(TokenizeRequest, await read_body(request))
        served = self._served(request, req.model, count=False)
        if (req.prompt is None) == (req.messages is None):
            raise OpenAIError(400, "give a prompt or messages (one of them)", param="prompt")
        if req.messages is not None:
            tokens = chat_prompt_ids(served, req.messages, [])
        else:
            tokens = served.tokenizer.encode(req.prompt or "", add_special_tokens=req.add_special_tokens).ids
        return {"count": len(tokens), "max_model_len": served.context, "tokens": tokens}

    async def detokenize(self, request: Request) -> dict:
        """vLLM's: the text of token ids (special tokens shown)."""
        req = parse(DetokenizeRequest, await read_body(request))
        served = self._served(request, req.model, count=False)
        vocab = served.tokenizer.get_vocab_size()
        if any(t >= vocab for t in req.tokens):
            raise OpenAIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": served.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    # --- the steps of an answer ---------------------------------------------------------------

    def _served(self, request: Request, name: str, *, count: bool = True) -> ServedLanguageModel:
        try:
            served = self.repository.language_model(name)
        except ModelNotFound as err:
            err.param = "model"
            raise
        self.metrics.watch_language_model(served)
        if count:
            request.state.model = served.name  # the Guard counts the request under this name
        return served

    def _admit(self, request: Request, job_tokens: int) -> tuple[APIKey | None, Any, dict[str, str]]:
        """The caller's key (the Guard found it), its admission for ``job_tokens`` at worst (429 past its
        quota), and its headers. What happened is left in the request's state, where the Guard counts it."""
        key: APIKey | None = getattr(request.state, "api_key", None)
        if key is None or self.keys is None:
            return None, None, {}
        try:
            use = self.keys.admit(key, job_tokens)
        except RateLimited as err:
            request.state.quota = "refused"
            raise OpenAIError(429, str(err), code="rate_limit_exceeded", headers=err.headers) from None
        request.state.quota = "admitted"
        return key, use, self.keys.headers(key)

    async def _answer(self, request: Request, served: ServedLanguageModel, prompts: list[list[int]],
                      req: CompletionRequest | ChatRequest, params: SamplingParams, stop: list[str],
                      shape: CompletionShape) -> Response:  # fmt: skip
        fitted = fit_to_context(served, prompts, req, params)
        worst = sum(len(p) + f.max_tokens * req.n for p, f in zip(prompts, fitted))
        key, use, headers = self._admit(request, worst)
        usage = Usage(sum(len(p) for p in prompts))

        def settle() -> None:
            if use is not None and key is not None and self.keys is not None:
                self.keys.settle(use, usage.prompt_tokens + usage.completion_tokens)
                request.state.tokens = (usage.prompt_tokens, usage.completion_tokens)  # counted by the Guard

        job = _Job(served, prompts, fitted, stop, req.n, shape, headers, usage, settle)
        head = {"id": shape.id_prefix + secrets.token_hex(12), "created": int(time.time()), "model": served.name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _stream(job, head, include_usage),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        return Response(dumps(await _whole(job, head)), media_type="application/json", headers=headers)


async def _whole(job: _Job, head: dict) -> dict:
    """The whole answer: every choice's pieces gathered, then one body."""
    runs = job.runs()
    texts = [""] * len(runs)
    collected: list[list[TokenEvent]] = [[] for _ in runs]
    finishes: list[str | None] = [None] * len(runs)
    calls = [False] * len(runs)
    try:
        async for piece in run_choices(job.served, runs, job.stop, job.usage):
            texts[piece.index] += piece.text
            collected[piece.index] += piece.events
            finishes[piece.index] = piece.finish_reason or finishes[piece.index]
            calls[piece.index] = calls[piece.index] or piece.call
    finally:  # an error goes to the app, which answers it as it answers every error (errors.STATUS)
        job.settle()
    logprobs = job.logprobs
    choices = [
        job.shape.whole(job.served, i, text, events, finish, logprobs, call)
        for i, (text, events, finish, call) in enumerate(zip(texts, collected, finishes, calls))
    ]
    return {**head, "object": job.shape.object, "choices": choices, "usage": job.usage.as_dict()}


# JSON may carry U+0085, U+2028 and U+2029 unescaped, but common line readers split lines at them
# (httpx's iter_lines, Python's str.splitlines): a model that wrote one cut its event in two there.
# Escaped, every event is one line to every reader, and the same JSON.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def _event(value: Any) -> bytes:
    """One server-sent event: ``data: {json}`` on one line."""
    body = dumps(value)
    for raw, escaped in _LINE_BREAKS:
        if raw in body:
            body = body.replace(raw, escaped)
    return b"data: " + body + b"\n\n"


async def _stream(job: _Job, head: dict, include_usage: bool) -> AsyncIterator[bytes]:
    """The answer as server-sent events: the same pieces as :func:`_whole`, each sent as it comes."""
    shape, served, logprobs = job.shape, job.served, job.logprobs
    runs = job.runs()
    pieces = run_choices(served, runs, job.stop, job.usage)

    def chunk(choices: list[dict], **extra: Any) -> bytes:
        return _event({**head, "object": shape.chunk_object, "choices": choices, **extra})

    offsets = [0] * len(runs)
    try:
        opening = shape.opening(len(runs))
        if opening is not None:
            yield chunk(opening)
        async for piece in pieces:
            if piece.call:  # a tool call: its name, then its arguments in pieces
                for choice in shape.call_deltas(piece):
                    yield chunk([choice])
            elif piece.text or piece.events:
                at = offsets[piece.index]
                yield chunk([shape.delta(served, piece.index, piece.text, None, piece.events, at, logprobs)])
                offsets[piece.index] += len(piece.text)
            if piece.finish_reason is not None:
                yield chunk([shape.delta(served, piece.index, None, piece.finish_reason, [], 0, logprobs)])
        if include_usage:
            yield chunk([], usage=job.usage.as_dict())
    except Exception as err:  # the status is sent already: the error is an event, with the status a whole
        # answer would have had (errors.STATUS: 503 while stopping, 500 a crash)
        yield _event(OpenAIError(status_of(err), message_of(err)).body())
    finally:
        job.settle()
        await pieces.aclose()
    yield b"data: [DONE]\n\n"
