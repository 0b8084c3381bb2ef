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

import asyncio
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from ..lm.constrain import UnsupportedGrammar, json_grammar, tools_grammar
from ..lm.engine import ContextTooLong, SamplingParams, TokenEvent
from ..lm.text import CHAT_TEMPLATE, TextStream
from .dataplane import ModelRepository, ServedLanguageModel
from .endpoints import Endpoints
from .errors import InvalidInput, ModelNotFound, message_of, status_of
from .keys import APIKey, APIKeys, RateLimited
from .metrics import ServerMetrics
from .openai_schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    OpenAIError,
    OpenAIModelList,
    TokenizeRequest,
    openai_error_responses,
    parse,
    response_constraint,
)
from .openapi import language_model_bodies
from .protocol import ProtocolError, dumps, loads
from .schemas import request_body_doc
from .tool_calls import CallStream, whole_call

__all__ = ["OPENAI_PATHS", "OpenAIEndpoints"]

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")  # and /v1/models, exactly


@dataclass
class _Piece:
    """What one choice produced in one step: its new text, the tokens behind it, and the finish."""

    index: int
    text: str
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None
    call: bool = False  # the text is a tool call's (the model wrote <|call|> first)


class _Usage:
    """Tokens in and out of one request; settled against the caller's key when it ends."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0

    def as_dict(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def _one_choice(
    served: ServedLanguageModel, index: int, prompt: list[int], params: SamplingParams, stop: list[str], usage: _Usage
) -> AsyncGenerator[_Piece, None]:
    """One choice's pieces until it finishes; closing it (its client gone, or a stop sequence)
    stops its generation."""
    text = TextStream(served.tokenizer, stop)
    tokens = served.engine.generate(prompt, params)
    call_token = served.chat.call if served.chat is not None and params.grammar is not None else None
    calling = False
    try:
        async for event in tokens:
            usage.completion_tokens += event.token is not None
            calling = calling or (event.token is not None and event.token == call_token)
            new = text.push(event.token) if event.token is not None else ""
            finish = "stop" if text.stopped else event.finish_reason
            if finish is not None and not text.stopped:
                new += text.flush()
            if finish == "stop" and calling:
                finish = "tool_calls"
            yield _Piece(index, new, [event] if event.token is not None else [], finish, calling)
            if finish is not None:
                return
    finally:
        await tokens.aclose()  # a stop sequence ends the generation here


async def _run_choices(
    served: ServedLanguageModel, jobs: list[tuple[list[int], SamplingParams]], stop: list[str], usage: _Usage
) -> AsyncGenerator[_Piece, None]:
    """Every choice generated concurrently (they share the engine's decode steps), their pieces
    in the order they come. Closing this iterator (a client gone) stops every choice."""
    queue: asyncio.Queue[_Piece | BaseException] = asyncio.Queue()

    if len(jobs) == 1:  # one choice (most requests): its pieces straight through, no task or queue between
        only = _one_choice(served, 0, *jobs[0], stop, usage)
        try:
            async for piece in only:
                yield piece
        finally:
            await only.aclose()
        return

    async def one(index: int, prompt: list[int], params: SamplingParams) -> None:
        try:
            async for piece in _one_choice(served, index, prompt, params, stop, usage):
                queue.put_nowait(piece)
        except Exception as err:
            queue.put_nowait(err)

    tasks = [asyncio.create_task(one(i, prompt, params)) for i, (prompt, params) in enumerate(jobs)]
    try:
        open_choices = len(tasks)
        while open_choices:
            got = await queue.get()
            if isinstance(got, BaseException):
                raise got
            open_choices -= got.finish_reason is not None
            yield got
    finally:
        for task in tasks:
            task.cancel()


def _token_text(served: ServedLanguageModel, token: int) -> str:
    return served.tokenizer.decode([token])


def _completion_logprobs(served: ServedLanguageModel, events: list[TokenEvent], offset: int) -> dict:
    tokens = [_token_text(served, e.token) for e in events if e.token is not None]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in events],
        "top_logprobs": [{_token_text(served, t): lp for t, lp in e.top_logprobs} for e in events],
        "text_offset": offsets,
    }


def _chat_logprobs(served: ServedLanguageModel, events: list[TokenEvent]) -> dict:
    def entry(token: int, logprob: float | None) -> dict:
        text = _token_text(served, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]}
            for e in events
            if e.token is not None
        ]
    }


class _Completion:
    """How a text completion's answer looks, whole and streamed."""

    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def opening(self, choices: int) -> list[dict] | None:
        return None

    def whole(self, served: ServedLanguageModel, index: int, text: str, events: list[TokenEvent],
              finish: str | None, logprobs: bool, call: bool) -> dict:  # fmt: skip
        lp = _completion_logprobs(served, events, 0) if logprobs else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}

    def call_deltas(self, piece: _Piece) -> list[dict]:
        """A tool call's pieces as deltas (chat only)."""
        return []

    def delta(self, served: ServedLanguageModel, index: int, text: str | None, finish: str | None,
              events: list[TokenEvent], offset: int, logprobs: bool) -> dict:  # fmt: skip
        lp = _completion_logprobs(served, events, offset) if logprobs and events else None
        return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}


class _Echoed(_Completion):
    """A completion whose text begins with its prompt's (``echo``): whole, or as the stream's first chunk."""

    def __init__(self, prompts: list[str], per_prompt: int):
        self.prompts, self.per_prompt = prompts, per_prompt

    def opening(self, choices: int) -> list[dict] | None:
        return [
            {"index": i, "text": self.prompts[i // self.per_prompt], "logprobs": None, "finish_reason": None}
            for i in range(choices)
        ]

    def whole(self, served: ServedLanguageModel, index: int, text: str, events: list[TokenEvent],
              finish: str | None, logprobs: bool, call: bool) -> dict:  # fmt: skip
        answer = super().whole(served, index, text, events, finish, logprobs, call)
        return {**answer, "text": self.prompts[index // self.per_prompt] + text}


class _Chat(_Completion):
    """How a chat completion's answer looks: a message, streamed as deltas after the role."""

    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def __init__(self) -> None:
        self.calls: dict[int, CallStream] = {}  # each choice's tool call being streamed

    def opening(self, choices: int) -> list[dict] | None:  # the role first, with empty content (null breaks clients)
        return [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for i in range(choices)
        ]

    def whole(self, served: ServedLanguageModel, index: int, text: str, events: list[TokenEvent],
              finish: str | None, logprobs: bool, call: bool) -> dict:  # fmt: skip
        lp = _chat_logprobs(served, events) if logprobs else None
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call:
            message = {"role": "assistant", "content": None, "tool_calls": [whole_call(text)]}
        return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}

    def call_deltas(self, piece: _Piece) -> list[dict]:
        stream = self.calls.setdefault(piece.index, CallStream())
        deltas = stream.push(piece.text)
        if piece.finish_reason is not None:
            deltas += stream.finish(complete=piece.finish_reason == "tool_calls")
        return [{"index": piece.index, "delta": {"tool_calls": [d]}, "logprobs": None, "finish_reason": None}
                for d in deltas]  # fmt: skip

    def delta(self, served: ServedLanguageModel, index: int, text: str | None, finish: str | None,
              events: list[TokenEvent], offset: int, logprobs: bool) -> dict:  # fmt: skip
        lp = _chat_logprobs(served, events) if logprobs and events else None
        content = {"content": text} if text is not None else {}
        return {"index": index, "delta": content, "logprobs": lp, "finish_reason": finish}


@dataclass
class _Job:
    """One admitted request: what to generate, for whom, and how its answer looks."""

    served: ServedLanguageModel
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per prompt
    stop: list[str]
    choices_per_prompt: int
    shape: _Completion
    headers: dict[str, str]
    usage: _Usage
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
        req = parse(CompletionRequest, await _body(request))
        served = self._served(request, req.model)
        if req.echo and req.logprobs is not None:
            raise OpenAIError(400, "echo with logprobs would need the prompt's log-probabilities, which this "
                              "server does not compute: ask for one of them", param="echo")  # fmt: skip
        prompts = _completion_prompts(served, req.prompt)
        params = replace(req.sampling_params(served.stop_tokens), grammar=_grammar(served, req, None))
        shape = _Completion()
        if req.echo:
            texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if texts and not isinstance(texts[0], str):  # token ids: their text
                texts = [served.tokenizer.decode(prompts[0], skip_special_tokens=False)]
            shape = _Echoed([str(t) for t in texts], req.n)
        return await self._answer(request, served, prompts, req, params, req.stop_sequences(), shape)

    async def chat_completions(self, request: Request) -> Response:
        req = parse(ChatRequest, await _body(request))
        served = self._served(request, req.model)
        tools = [t.model_dump() for t in req.tools or ()]
        # tool_choice "none": a fine-tuned model is not shown the tools; any other model still refuses them
        offered = [] if served.chat is not None and req.tool_choice == "none" else tools
        prompt = _chat_prompt(served, req.messages, offered)
        stop = req.stop_sequences() or list(served.prompts.stop)  # unless the client says otherwise
        params = replace(req.sampling_params(served.stop_tokens), grammar=_grammar(served, req, tools))
        return await self._answer(request, served, [prompt], req, params, stop, _Chat())

    async def tokenize(self, request: Request) -> dict:
        """vLLM's: a prompt's token ids, or a conversation's as the chat route builds its prompt."""
        req = parse(TokenizeRequest, await _body(request))
        served = self._served(request, req.model, count=False)
        if (req.prompt is None) == (req.messages is None):
            raise OpenAIError(400, "give a prompt or messages (one of them)", param="prompt")
        if req.messages is not None:
            tokens = _chat_prompt(served, req.messages, [])
        else:
            tokens = served.tokenizer.encode(req.prompt or "", add_special_tokens=req.add_special_tokens).ids
        return {"count": len(tokens), "max_model_len": served.context, "tokens": tokens}

    async def detokenize(self, request: Request) -> dict:
        """vLLM's: the text of token ids (special tokens shown)."""
        req = parse(DetokenizeRequest, await _body(request))
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
                      shape: _Completion) -> Response:  # fmt: skip
        fitted = _fit_to_context(served, prompts, req, params)
        worst = sum(len(p) + f.max_tokens * req.n for p, f in zip(prompts, fitted))
        key, use, headers = self._admit(request, worst)
        usage = _Usage(sum(len(p) for p in prompts))

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


def _grammar(served: ServedLanguageModel, req: CompletionRequest | ChatRequest, tools: list[dict] | None) -> str | None:
    """The grammar a request's answer is held to (None: free text): JSON for ``response_format``;
    with ``tools``, a call under the tool's schema, as ``tool_choice`` allows. 400 when a schema
    uses what the decoder cannot enforce (never a silent unconstrained answer)."""
    constrained, schema = response_constraint(req.response_format)
    named = getattr(req, "tool_choice", None)
    choice: str | dict | None = named.model_dump() if isinstance(named, BaseModel) else named
    if not tools and choice not in (None, "none", "auto"):
        raise OpenAIError(400, f"tool_choice {choice!r} needs tools", param="tool_choice")
    grammar: str | None = None
    try:
        if tools:
            grammar = tools_grammar(tools, choice or "auto", (schema or {"type": "object"}) if constrained else None)
        elif constrained:
            grammar = json_grammar(schema)
        if grammar is not None and served.engine.guide is not None:
            served.engine.guide.check(grammar)
        return grammar
    except UnsupportedGrammar as err:
        param = "tools" if tools else "response_format"
        raise OpenAIError(400, f"{param}: this schema cannot be enforced: {err}", param=param) from None


def _fit_to_context(served: ServedLanguageModel, prompts: list[list[int]], req: CompletionRequest | ChatRequest,
                    params: SamplingParams) -> list[SamplingParams]:  # fmt: skip
    """Each prompt's settings, ``max_tokens`` cut to the room its prompt leaves in the context.

    ``max_tokens`` past the context is a 400 (a rule of the model, in the document). A prompt that
    leaves less room than asked is answered up to the context's end (finish_reason "length"), as
    llama.cpp does, rather than refused as OpenAI and vLLM do: a client cannot count the tokens of
    its text before it sends it, and so could not keep to the rule. A prompt that fills the
    context leaves no room at all: 400, ``context_length_exceeded``."""
    asked = [v for v in (req.max_tokens, getattr(req, "max_completion_tokens", None)) if v is not None]
    if any(v > served.context - 1 for v in asked):
        raise OpenAIError(
            400, f"this model's context is {served.context} tokens: max_tokens can be at most {served.context - 1}",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    fitted = []
    for prompt in prompts:
        if len(prompt) >= served.context:
            err = ContextTooLong(
                f"this model's context is {served.context} tokens and the prompt has {len(prompt)}: shorten it "
                "(it must leave room for at least one new token)"
            )
            err.param = "prompt" if isinstance(req, CompletionRequest) else "messages"
            raise err
        room = min(params.max_tokens, served.context - len(prompt))
        one = replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))  # as many as fit
        try:
            served.engine.check(prompt, one)
        except ValueError as err:
            raise InvalidInput(str(err)) from None
        fitted.append(one)
    return fitted


async def _body(request: Request) -> Any:
    try:
        return loads(await request.body())
    except ProtocolError as err:
        raise OpenAIError(400, str(err)) from None


def _chat_prompt(served: ServedLanguageModel, messages: list[Any], tools: list[dict]) -> list[int]:
    """The prompt of a conversation, in the model's chat format (chosen when it loaded: lm/prompts.py)."""
    if tools and not served.prompts.calls_tools:
        raise OpenAIError(400, f"{served.name} has no chat format maaskit reads tool calls in, so it cannot "
                          "call tools here: fine-tune a model with maaskit lm finetune", param="tools")  # fmt: skip
    try:
        return served.prompts.encode([m.model_dump(exclude_none=True) for m in messages], tools)
    except ValueError as err:
        raise OpenAIError(400, str(err), param="messages") from None


def _completion_prompts(served: ServedLanguageModel, raw: str | list[str] | list[int]) -> list[list[int]]:
    """A completion's prompt (text, texts, or token ids) as token ids, one list per prompt."""
    if isinstance(raw, str):
        prompts = [served.tokenizer.encode(raw).ids]
    elif raw and all(isinstance(p, str) for p in raw):
        prompts = [served.tokenizer.encode(p).ids for p in raw]
    else:
        prompts = [list(raw)]
        vocab = served.tokenizer.get_vocab_size()
        if any(not 0 <= t < vocab for t in prompts[0]):
            raise OpenAIError(400, f"token ids must be in [0, {vocab})", param="prompt")
    if any(not p for p in prompts):
        raise OpenAIError(400, "the prompt is empty", param="prompt")
    return prompts


async def _whole(job: _Job, head: dict) -> dict:
    """The whole answer: every choice's pieces gathered, then one body."""
    runs = job.runs()
    texts = [""] * len(runs)
    collected: list[list[TokenEvent]] = [[] for _ in runs]
    finishes: list[str | None] = [None] * len(runs)
    calls = [False] * len(runs)
    try:
        async for piece in _run_choices(job.served, runs, job.stop, job.usage):
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
    pieces = _run_choices(served, runs, job.stop, job.usage)

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
