"""The answers' shapes: a completion, an echoed completion and a chat completion, whole or as the
deltas of a stream, with their log-probabilities and tool calls. Pure formatting: no generation here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lm.runtime.engine import TokenEvent
from .openai_choices import Piece
from .tool_calls import CallStream, whole_call

if TYPE_CHECKING:
    from .dataplane import ServedLanguageModel

__all__ = ["ChatShape", "CompletionShape", "EchoedShape"]


def token_text(served: ServedLanguageModel, token: int) -> str:
    return served.tokenizer.decode([token])


def completion_logprobs(served: ServedLanguageModel, events: list[TokenEvent], offset: int) -> dict:
    tokens = [token_text(served, e.token) for e in events if e.token is not None]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in events],
        "top_logprobs": [{token_text(served, t): lp for t, lp in e.top_logprobs} for e in events],
        "text_offset": offsets,
    }


def chat_logprobs(served: ServedLanguageModel, events: list[TokenEvent]) -> dict:
    def entry(token: int, logprob: float | None) -> dict:
        text = token_text(served, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]}
            for e in events
            if e.token is not None
        ]
    }


class CompletionShape:
    """How a text completion's answer looks, whole and streamed."""

    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def opening(self, choices: int) -> list[dict] | None:
        return None

    def whole(self, served: ServedLanguageModel, index: int, text: str, events: list[TokenEvent],
              finish: str | None, logprobs: bool, call: bool) -> dict:  # fmt: skip
        lp = completion_logprobs(served, events, 0) if logprobs else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}

    def call_deltas(self, piece: Piece) -> list[dict]:
        """A tool call's pieces as deltas (chat only)."""
        return []

    def delta(self, served: ServedLanguageModel, index: int, text: str | None, finish: str | None,
              events: list[TokenEvent], offset: int, logprobs: bool) -> dict:  # fmt: skip
        lp = completion_logprobs(served, events, offset) if logprobs and events else None
        return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}


class EchoedShape(CompletionShape):
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


class ChatShape(CompletionShape):
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
        lp = chat_logprobs(served, events) if logprobs else None
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call:
            message = {"role": "assistant", "content": None, "tool_calls": [whole_call(text)]}
        return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}

    def call_deltas(self, piece: Piece) -> list[dict]:
        stream = self.calls.setdefault(piece.index, CallStream())
        deltas = stream.push(piece.text)
        if piece.finish_reason is not None:
            deltas += stream.finish(complete=piece.finish_reason == "tool_calls")
        return [{"index": piece.index, "delta": {"tool_calls": [d]}, "logprobs": None, "finish_reason": None}
                for d in deltas]  # fmt: skip

    def delta(self, served: ServedLanguageModel, index: int, text: str | None, finish: str | None,
              events: list[TokenEvent], offset: int, logprobs: bool) -> dict:  # fmt: skip
        lp = chat_logprobs(served, events) if logprobs and events else None
        content = {"content": text} if text is not None else {}
        return {"index": index, "delta": content, "logprobs": lp, "finish_reason": finish}
