"""Running a request's choices on the engine: each choice's text as it is generated (stop sequences and
tool calls found in it), all choices of a request sharing the engine's steps, and the tokens counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..lm.formats.text import TextStream
from ..lm.runtime.engine import SamplingParams, TokenEvent

if TYPE_CHECKING:
    from .dataplane import ServedLanguageModel

__all__ = ["Piece", "Usage", "run_choices"]


@dataclass
class Piece:
    """What one choice produced in one step: its new text, the tokens behind it, and the finish."""

    index: int
    text: str
    events: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None
    call: bool = False  # the text is a tool call's (the model wrote <|call|> first)


class Usage:
    """Tokens in and out of one request; settled against the caller's key when it ends."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0

    def as_dict(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def one_choice(
    served: ServedLanguageModel, index: int, prompt: list[int], params: SamplingParams, stop: list[str], usage: Usage
) -> AsyncGenerator[Piece, None]:
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
            yield Piece(index, new, [event] if event.token is not None else [], finish, calling)
            if finish is not None:
                return
    finally:
        await tokens.aclose()  # a stop sequence ends the generation here


async def run_choices(
    served: ServedLanguageModel, jobs: list[tuple[list[int], SamplingParams]], stop: list[str], usage: Usage
) -> AsyncGenerator[Piece, None]:
    """Every choice generated concurrently (they share the engine's decode steps), their pieces
    in the order they come. Closing this iterator (a client gone) stops every choice."""
    queue: asyncio.Queue[Piece | BaseException] = asyncio.Queue()

    if len(jobs) == 1:  # one choice (most requests): its pieces straight through, no task or queue between
        only = one_choice(served, 0, *jobs[0], stop, usage)
        try:
            async for piece in only:
                yield piece
        finally:
            await only.aclose()
        return

    async def one(index: int, prompt: list[int], params: SamplingParams) -> None:
        try:
            async for piece in one_choice(served, index, prompt, params, stop, usage):
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
