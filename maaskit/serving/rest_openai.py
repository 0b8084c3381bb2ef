"""The OpenAI-compatible API for language models: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, answered whole or streamed as server-sent events.

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
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..lm.engine import ContextTooLong, SamplingParams, TokenEvent
from ..lm.text import CHAT_TEMPLATE, TURN_ENDS, TextStream, chat_prompt
from .dataplane import ModelRepository, ServedLanguageModel
from .errors import InvalidInput, ModelNotFound
from .keys import APIKey, APIKeys, RateLimited
from .metrics import ServerMetrics
from .openai_schemas import (
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    OpenAIModelList,
    openai_error_responses,
    parse,
)
from .protocol import ProtocolError, dumps, loads
from .schemas import request_body_doc

__all__ = ["OPENAI_PATHS", "model_object", "router"]

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions")  # and /v1/models, exactly
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def model_object(served: ServedLanguageModel) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "maaskit"}


@dataclass
class _Piece:
    """What one choice produced in one step: its new text, the tokens behind it, and the finish."""

    index: int
    text: str
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None


class _Usage:
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
    try:
        async for event in tokens:
            usage.completion_tokens += event.token is not None
            new = text.push(event.token) if event.token is not None else ""
            finish = "stop" if text.stopped else event.finish_reason
            if finish is not None and not text.stopped:
                new += text.flush()
            yield _Piece(index, new, [event] if event.token is not None else [], finish)
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


def router(repository: ModelRepository, metrics: ServerMetrics, keys: APIKeys | None) -> APIRouter:
    api = APIRouter(tags=["OpenAI-compatible: language models"])
    errors = openai_error_responses(400, 401, 404, 413, 429)
    streamed: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "the answer; with stream=true, server-sent events (data: {chunk}, ..., data: [DONE])",
            "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
        }
    }

    def served_model(request: Request, name: str) -> ServedLanguageModel:
        try:
            served = repository.get_language_model(name)
        except ModelNotFound as err:
            err.param = "model"
            raise
        metrics.watch_language_model(served)
        request.state.model = served.name  # the Guard counts the request under this name
        return served

    def key_of(request: Request) -> APIKey | None:
        # the Guard has already refused requests without a good key; this finds whose it is, for quotas
        return keys.identify(request.headers.get("authorization", "")) if keys is not None else None

    async def body_of(request: Request) -> Any:
        try:
            return loads(await request.body())
        except ProtocolError as err:
            raise OpenAIError(400, str(err)) from None

    def sampling(req: CompletionRequest | ChatRequest, max_tokens: int | None, end: int, logprobs: int | None):
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise OpenAIError(400, f"stop takes at most 4 sequences, got {len(stop)}", param="stop")
        params = SamplingParams(
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=req.temperature,
            top_p=req.top_p if req.top_p < 1 else None,
            top_k=req.top_k,
            seed=req.seed,
            logprobs=logprobs,
            stop_tokens=(end,),
        )
        return params, stop

    async def answer(
        request: Request,
        served: ServedLanguageModel,
        prompts: list[list[int]],
        req: CompletionRequest | ChatRequest,
        params: SamplingParams,
        stop: list[str],
        chat: bool,
    ) -> Response:
        for prompt in prompts:
            try:
                served.engine.check(prompt, params)
            except ContextTooLong:
                raise  # answered with its param and code at the edge
            except ValueError as err:
                raise InvalidInput(str(err)) from None
        key = key_of(request)
        use = None
        worst = sum(len(p) for p in prompts) + params.max_tokens * req.n * len(prompts)
        if key is not None and keys is not None:
            try:
                use = keys.admit(key, worst)
            except RateLimited as err:
                metrics.key_rejections.labels(key.name).inc()
                raise OpenAIError(429, str(err), code="rate_limit_exceeded", headers=err.headers) from None
            metrics.key_requests.labels(key.name).inc()
        headers = keys.headers(key) if key is not None and keys is not None else {}
        usage = _Usage(sum(len(p) for p in prompts))
        jobs = [
            (prompt, params if params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + i}))
            for prompt in prompts
            for i in range(req.n)
        ]
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        head = {"id": ident, "created": created, "model": served.name}

        def settle() -> None:
            if use is not None and keys is not None and key is not None:
                keys.settle(use, usage.prompt_tokens + usage.completion_tokens)
                metrics.key_tokens.labels(key.name, "prompt").inc(usage.prompt_tokens)
                metrics.key_tokens.labels(key.name, "completion").inc(usage.completion_tokens)

        pieces = _run_choices(served, jobs, stop, usage)
        if not req.stream:
            texts = [""] * len(jobs)
            collected: list[list[TokenEvent]] = [[] for _ in jobs]
            finishes: list[str | None] = [None] * len(jobs)
            try:
                async for piece in pieces:
                    texts[piece.index] += piece.text
                    collected[piece.index] += piece.events
                    finishes[piece.index] = piece.finish_reason or finishes[piece.index]
            except RuntimeError as err:
                raise OpenAIError(503, str(err)) from None
            finally:
                settle()
            choices = []
            for i, (text, evs, finish) in enumerate(zip(texts, collected, finishes)):
                if chat:
                    logprobs = _chat_logprobs(served, evs) if params.logprobs is not None else None
                    choices.append(
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }  # fmt: skip
                    )
                else:
                    logprobs = _completion_logprobs(served, evs, 0) if params.logprobs is not None else None
                    choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
            body = {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                    "usage": usage.as_dict()}  # fmt: skip
            return Response(dumps(body), media_type="application/json", headers=headers)

        kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict], **extra: Any) -> bytes:
            return b"data: " + dumps({**head, "object": kind, "choices": choices, **extra}) + b"\n\n"

        def choice(index: int, text: str | None, finish: str | None, evs: list[TokenEvent], offset: int) -> dict:
            if chat:
                delta = {"content": text} if text is not None else {}
                logprobs = _chat_logprobs(served, evs) if params.logprobs is not None and evs else None
                return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            logprobs = _completion_logprobs(served, evs, offset) if params.logprobs is not None and evs else None
            return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

        async def sse() -> AsyncIterator[bytes]:
            offsets = [0] * len(jobs)
            try:
                if chat:  # the role first, with empty content (a null content breaks some clients)
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None} for i in range(len(jobs))])  # fmt: skip
                async for piece in pieces:
                    if piece.text or piece.events:
                        yield chunk([choice(piece.index, piece.text, None, piece.events, offsets[piece.index])])
                        offsets[piece.index] += len(piece.text)
                    if piece.finish_reason is not None:
                        yield chunk([choice(piece.index, None, piece.finish_reason, [], 0)])
                if include_usage:
                    yield chunk([], usage=usage.as_dict())
            except Exception as err:  # the status is sent already: the error is an event
                yield b"data: " + dumps(OpenAIError(500, f"generation failed: {err}").body()) + b"\n\n"
            finally:
                settle()
                await pieces.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )

    @api.get("/v1/models", response_model=OpenAIModelList, responses=openai_error_responses(401))
    async def list_models():
        """The language models served (OpenAI's model list; classifiers are listed by /v2/repository/index)."""
        return {"object": "list", "data": [model_object(m) for m in repository.language_models.values()]}

    @api.post(
        "/v1/completions",
        responses={**streamed, **errors},
        openapi_extra=request_body_doc(CompletionRequest),
        response_class=Response,
    )
    async def completions(request: Request):
        """Continue a prompt (text, texts, or token ids). ``echo`` is not supported."""
        req = parse(CompletionRequest, await body_of(request))
        served = served_model(request, req.model)
        if req.echo:
            raise OpenAIError(400, "echo is not supported by this server", param="echo")
        raw = req.prompt
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
        params, stop = sampling(req, req.max_tokens, served.end_of_text, req.logprobs)
        return await answer(request, served, prompts, req, params, stop, chat=False)

    @api.post(
        "/v1/chat/completions",
        responses={**streamed, **errors},
        openapi_extra=request_body_doc(ChatRequest),
        response_class=Response,
        description=(
            "Answer a conversation. The messages become the prompt through the chat template: each as "
            f"`{CHAT_TEMPLATE.strip()}` on its own line, then `assistant:`. Unless `stop` says otherwise, the "
            "answer ends where the model starts another turn (`\\nuser:` or `\\nsystem:`), or at max_tokens."
        ),
    )
    async def chat_completions(request: Request):
        req = parse(ChatRequest, await body_of(request))
        served = served_model(request, req.model)
        try:
            prompt = chat_prompt([m.model_dump() for m in req.messages])
        except ValueError as err:
            raise OpenAIError(400, str(err), param="messages") from None
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        params, stop = sampling(req, req.max_completion_tokens or req.max_tokens, served.end_of_text, top)
        if req.logprobs and top is None:
            params = SamplingParams(**{**params.__dict__, "logprobs": 0})
        # the answer ends where the model would begin the next turn, unless the client says otherwise
        return await answer(
            request, served, [served.tokenizer.encode(prompt).ids], req, params, stop or list(TURN_ENDS), chat=True
        )

    return api
