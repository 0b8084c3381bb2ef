"""The chat format of a fine-tuned model: special tokens that mark whose turn it is, added to the
BPE tokenizer, and one function that turns a conversation into token ids, with the mask that says
which of them are the assistant's (what supervised fine-tuning trains on).

    <|tools|>calculate, convert<|end|>                   only when tools are offered
    <|system|>...<|end|>
    <|user|>How many metres are 3.5 km?<|end|>
    <|assistant|><|call|>{"name":"convert","arguments":{"value":3.5,"from":"km","to":"m"}}<|end|>
    <|tool|>3500<|end|>
    <|assistant|>3.5 km is 3500 m.<|end|>

A turn's marker is one token that no text can produce: a user who types ``<|end|>`` gets the
characters, not the token (content is encoded with special tokens off), so no message can end a
turn or forge a tool's answer. A tool call is the ``<|call|>`` token followed by one compact JSON
object ``{"name": ..., "arguments": {...}}`` (the layout Hermes and Qwen use between their
``<tool_call>`` tags). Tools are listed by name only: a small model's context is short, and the
server holds every call to the tool's full JSON schema as it is generated
(:mod:`maaskit.lm.runtime.constrain`).

The same :func:`encode_chat` builds training examples and the server's prompts, so what the model
is served is exactly what it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

__all__ = ["CHAT_TOKENS", "ChatFormat", "add_chat_tokens", "compact_json", "tool_name"]

# the marker of each role, the end of a turn, the start of a tool call, and the list of tools
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|call|>", "<|tools|>")
ROLES = {
    "system": "<|system|>",
    "developer": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "tool": "<|tool|>",
}


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the chat tokens added (new ids after its vocabulary; a copy, the original
    is left as it was). The model's embedding must grow to match (:func:`maaskit.lm.training.sft.grow_vocabulary`)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.add_special_tokens(list(CHAT_TOKENS))
    return copy


def compact_json(value: Any) -> str:
    """JSON without spaces: the one spelling the model learns and the grammar allows."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def tool_name(tool: dict) -> str:
    """The name of an OpenAI tool (``{"type": "function", "function": {"name": ...}}``)."""
    return str(tool.get("function", tool)["name"])


@dataclass
class Encoded:
    """A conversation as token ids, and for each id whether it is the assistant's (trained on)."""

    ids: list[int]
    trained: list[bool]


class ChatFormat:
    """The chat tokens of a tokenizer that has them: ``ChatFormat(tokenizer)``; :meth:`supports`
    says whether a tokenizer does."""

    def __init__(self, tokenizer: Tokenizer):
        missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the tokenizer has no chat tokens ({', '.join(missing)}): add them with add_chat_tokens")
        self.tokenizer = tokenizer
        self.ids: dict[str, int] = {t: tokenizer.token_to_id(t) for t in CHAT_TOKENS}  # type: ignore[misc]
        self.end, self.call = self.ids["<|end|>"], self.ids["<|call|>"]
        # content is text: special tokens in it are encoded as characters (a copy with them off)
        self._text = Tokenizer.from_str(tokenizer.to_str())
        self._text.encode_special_tokens = True

    @staticmethod
    def supports(tokenizer: Tokenizer) -> bool:
        return all(tokenizer.token_to_id(t) is not None for t in CHAT_TOKENS)

    def text(self, content: str) -> list[int]:
        return self._text.encode(content).ids if content else []

    def encode(
        self, messages: Sequence[dict], tools: Sequence[dict] = (), *, add_generation_prompt: bool = True
    ) -> Encoded:
        """``messages`` (OpenAI's shape: role, content, an assistant's ``tool_calls``) as ids, the
        assistant's own tokens marked; with ``add_generation_prompt``, ``<|assistant|>`` last, for
        the model to answer. A ValueError names the first message that cannot be encoded."""
        ids: list[int] = []
        trained: list[bool] = []

        def put(tokens: list[int], mine: bool) -> None:
            ids.extend(tokens)
            trained.extend([mine] * len(tokens))

        if tools:
            listing = ", ".join(tool_name(t) for t in tools)
            put([self.ids["<|tools|>"], *self.text(listing), self.end], False)
        if not messages:
            raise ValueError("messages must hold at least one message")
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            put([self.ids[ROLES[role]]], False)
            mine = role == "assistant"
            put(self.text(_content(message, i)), mine)
            for call in message.get("tool_calls") or () if mine else ():
                put([self.call, *self.text(_call_text(call, i))], True)
            put([self.end], mine)
        if add_generation_prompt:
            put([self.ids["<|assistant|>"]], False)
        return Encoded(ids, trained)


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if content is None and (message.get("tool_calls") or message.get("role") == "assistant"):
        return ""  # an assistant turn that only calls tools has no content
    if isinstance(content, list):  # OpenAI's content parts: the text ones are read
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise ValueError(f"messages[{i}].content must be a string")
    return content


def _call_text(call: dict, i: int) -> str:
    """A tool call as the model writes it: ``{"name":...,"arguments":{...}}``, compact."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ValueError(f"messages[{i}].tool_calls: arguments are not JSON: {arguments[:80]!r}") from None
    return compact_json({"name": function.get("name"), "arguments": arguments})
