"""A conversation as the model reads it: one interface over the three ways maaskit's models mark their
turns, chosen once when a model loads (:func:`chat_prompts`), so that a server asks "the prompt of these
messages" and "where does an answer end" without knowing which kind of model it runs (vLLM applies its
chat template in one preprocessing place in the same way).

- a model fine-tuned here (``maaskit lm finetune``): its own chat tokens (``<|user|>...<|end|>``), the
  tools listed when offered; its turn ends at its own token;
- a Hugging Face model: the Jinja template of its ``tokenizer_config.json``, which writes its special
  tokens itself; its turn ends at the stop tokens of its generation config;
- any other (notebook 07's GPT): plain ``role: content`` lines, and the answer ends where the model
  would begin the next turn (``\\nuser:``, ``\\nsystem:``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from .chat import ChatFormat
from .template import ChatTemplate
from .text import TURN_ENDS, chat_prompt

__all__ = ["ChatPrompts", "chat_prompts"]


class ChatPrompts:
    """The plain ``role: content`` lines; the base of the other two."""

    calls_tools = False  # whether the model reads tools and writes calls (fine-tuned here)
    chat: ChatFormat | None = None  # its chat tokens, where it has them (a server reads <|call|> and <|end|>)
    stop: tuple[str, ...] = tuple(TURN_ENDS)  # text that ends an answer, unless the request says otherwise

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def encode(self, messages: Sequence[dict], tools: Sequence[dict] = ()) -> list[int]:
        """The prompt's token ids, ending where the model writes its answer. A ValueError says what in
        ``messages`` cannot be encoded."""
        return self.tokenizer.encode(chat_prompt(messages)).ids


class _Template(ChatPrompts):
    stop = ()  # its own stop tokens end the turn

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate):
        super().__init__(tokenizer)
        self.template = template

    def encode(self, messages: Sequence[dict], tools: Sequence[dict] = ()) -> list[int]:
        text = self.template.render(list(messages), add_generation_prompt=True)  # writes the special tokens
        return self.tokenizer.encode(text, add_special_tokens=False).ids


class _ChatTokens(ChatPrompts):
    calls_tools = True
    stop = ()  # <|end|> ends the turn

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        self.chat = ChatFormat(tokenizer)

    def encode(self, messages: Sequence[dict], tools: Sequence[dict] = ()) -> list[int]:
        assert self.chat is not None
        return self.chat.encode(messages, tools).ids


def chat_prompts(tokenizer: Tokenizer, manifest: dict[str, Any]) -> ChatPrompts:
    """The chat format of a loaded model: its chat tokens, else its template (the manifest's
    ``chat_template``), else the plain lines."""
    if ChatFormat.supports(tokenizer):
        return _ChatTokens(tokenizer)
    template = manifest.get("chat_template")
    if template:
        return _Template(tokenizer, ChatTemplate(template["source"], template["special_tokens"]))
    return ChatPrompts(tokenizer)
