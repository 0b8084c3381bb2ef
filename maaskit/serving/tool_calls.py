"""Tool calls in OpenAI's shape: what a model wrote after its ``<|call|>`` token
(``{"name":"convert","arguments":{...}}``, compact, as :mod:`maaskit.lm.runtime.constrain` enforces) becomes
``message.tool_calls`` in a whole answer, and ``tool_calls`` deltas in a stream: first the call's
index, id, type and name with empty arguments, then the arguments in pieces, as the official
client assembles them.
"""

from __future__ import annotations

import json
import re
import secrets

from ..lm.formats.chat import compact_json

__all__ = ["CallStream", "whole_call"]

_HEAD = re.compile(r'\{"name":"((?:[^"\\]|\\.)*)","arguments":')


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def whole_call(text: str, index: int = 0) -> dict:
    """The tool call a model wrote (``text``, after ``<|call|>``); an unfinished one (``max_tokens``
    reached) keeps the arguments as far as they got."""
    try:
        parsed = json.loads(text)
        name, arguments = parsed["name"], compact_json(parsed["arguments"])
    except (json.JSONDecodeError, KeyError, TypeError):
        head = _HEAD.match(text)
        name, arguments = (json.loads(f'"{head[1]}"'), text[head.end() :]) if head else ("", text)
    return {"id": _call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


class CallStream:
    """Feed the text of a call as it is generated (:meth:`push`); get the ``tool_calls`` deltas that
    can be sent so far. The closing brace of the outer object is held back: it is not the arguments'."""

    def __init__(self, index: int = 0):
        self.index, self.id = index, _call_id()
        self.buffer = ""
        self.named = False

    def push(self, text: str) -> list[dict]:
        self.buffer += text
        deltas = []
        if not self.named:
            head = _HEAD.match(self.buffer)
            if head is None:
                return []
            self.named = True
            self.buffer = self.buffer[head.end() :]
            deltas.append(
                {
                    "index": self.index,
                    "id": self.id,
                    "type": "function",
                    "function": {"name": json.loads(f'"{head[1]}"'), "arguments": ""},
                }
            )
        if len(self.buffer) > 1:  # all but the last character, which may be the outer object's end
            deltas.append({"index": self.index, "function": {"arguments": self.buffer[:-1]}})
            self.buffer = self.buffer[-1:]
        return deltas

    def finish(self, complete: bool) -> list[dict]:
        """What is left once generation ends: nothing more for a complete call (the held ``}`` was the
        outer object's), the last character for an unfinished one."""
        if not self.named:  # cut before the name was known: the call as far as it got
            call = whole_call(self.buffer, self.index)
            self.named, self.buffer = True, ""
            return [{"index": self.index, "id": self.id, "type": "function", "function": call["function"]}]
        left, self.buffer = self.buffer, ""
        return [] if complete or not left else [{"index": self.index, "function": {"arguments": left}}]
