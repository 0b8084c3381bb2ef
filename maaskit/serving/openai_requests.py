"""What a request asks of the engine, read and checked before anything runs: its prompt (a conversation
through the model's chat format), the grammar its answer is held to, and the room its prompt leaves in
the context. Every refusal is a 400 naming the field at fault."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel

from ..lm.runtime.constrain import UnsupportedGrammar, json_grammar, tools_grammar
from ..lm.runtime.engine import ContextTooLong, SamplingParams
from .errors import InvalidInput
from .openai_schemas import ChatRequest, CompletionRequest, OpenAIError, response_constraint
from .protocol import ProtocolError, loads

if TYPE_CHECKING:
    from .dataplane import ServedLanguageModel

__all__ = ["chat_prompt_ids", "completion_prompts", "fit_to_context", "grammar_of", "read_body"]


def grammar_of(
    served: ServedLanguageModel, req: CompletionRequest | ChatRequest, tools: list[dict] | None
) -> str | None:
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


def fit_to_context(served: ServedLanguageModel, prompts: list[list[int]], req: CompletionRequest | ChatRequest,
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


async def read_body(request: Request) -> Any:
    try:
        return loads(await request.body())
    except ProtocolError as err:
        raise OpenAIError(400, str(err)) from None


def chat_prompt_ids(served: ServedLanguageModel, messages: list[Any], tools: list[dict]) -> list[int]:
    """The prompt of a conversation, in the model's chat format (chosen when it loaded: lm/formats/prompts.py)."""
    if tools and not served.prompts.calls_tools:
        raise OpenAIError(400, f"{served.name} has no chat format maaskit reads tool calls in, so it cannot "
                          "call tools here: fine-tune a model with maaskit lm finetune", param="tools")  # fmt: skip
    try:
        return served.prompts.encode([m.model_dump(exclude_none=True) for m in messages], tools)
    except ValueError as err:
        raise OpenAIError(400, str(err), param="messages") from None


def completion_prompts(served: ServedLanguageModel, raw: str | list[str] | list[int]) -> list[list[int]]:
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
