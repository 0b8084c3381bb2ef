"""A model's chat template, rendered as ``transformers``' ``apply_chat_template`` renders it.

A Hugging Face tokenizer config carries a Jinja template that turns a list of messages into the
exact text the model was fine-tuned on (``<|im_start|>user\\n...``). Templates come from the Hub,
so they run in Jinja's immutable sandbox, with the environment ``transformers`` gives them: blocks
trimmed, ``loopcontrols``, a ``tojson`` that keeps non-ASCII text, ``raise_exception`` and
``strftime_now``; the tokenizer's special tokens (``bos_token``, ``eos_token``...) are variables.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ChatTemplate", "TemplateError"]

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateError(ValueError):
    """The template refused the conversation (its ``raise_exception``), or it does not compile."""


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"the chat template does not compile: {err}") from None


class ChatTemplate:
    """``ChatTemplate(source, special_tokens)``; ``render(messages, tools=None)`` gives the prompt text."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._template = _compile(source)

    @classmethod
    def from_tokenizer_config(cls, config: dict[str, Any], directory: Path | None = None) -> ChatTemplate | None:
        """The template of a ``tokenizer_config.json`` (or of ``chat_template.jinja`` beside it, where
        newer ``transformers`` write it); None when the model has none (a base model)."""
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the "default" one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        if source is None and directory is not None and (directory / "chat_template.jinja").is_file():
            source = (directory / "chat_template.jinja").read_text()
        if not source:
            return None
        special = {}
        for name in SPECIAL:
            token = config.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str):
                special[name] = token
        return cls(source, special)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """The text of ``messages`` (and ``tools``, for templates that list them), ending with the
        assistant's header when ``add_generation_prompt``: where the model's reply begins."""
        import jinja2

        try:
            return self._template.render(
                **self.special_tokens,
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as err:
            raise TemplateError(f"the chat template failed: {err}") from None
