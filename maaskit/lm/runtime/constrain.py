"""Constrained decoding: at each step, the tokens that cannot continue a valid answer are masked out
before sampling, so a JSON answer always parses and fits its schema and a tool call always names an
offered tool with arguments its schema accepts.

The idea fits in a few lines (notebook 10 builds it for a small regular expression: from each
state of the pattern, which tokens of the vocabulary may come next). Real schemas need a real
parser, so the masks come from llguidance, chosen over xgrammar and outlines-core because it
computes each mask lazily from the parser's state (tens of microseconds for a step here, nothing
precompiled per schema, so a new schema per request costs nothing), reads JSON Schema and Lark
grammars with the tokenizer's special tokens in them, ships as one abi3 wheel with no PyTorch pin,
and is what vLLM, SGLang and llama.cpp use.

Grammars are written as text (Lark with ``%json`` blocks) so they travel in
:class:`~maaskit.lm.runtime.engine.SamplingParams`; :class:`Guide` turns one into a matcher per sequence.
JSON is compact (no whitespace between tokens): a model, even an untrained one, cannot pad an
answer with runaway spaces.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence

import llguidance
import torch
from tokenizers import Tokenizer

__all__ = ["Guide", "UnsupportedGrammar", "json_grammar", "tools_grammar"]

ANY_OBJECT: dict = {"type": "object"}
COMPACT = {"whitespace_flexible": False}
CACHED_GRAMMARS = 64
SERIAL_BELOW = 2  # this many rows or fewer: one after another (handing work to threads costs more)
# Threads for the masks (a job beside the forward pass, llguidance's pool for many rows) only where
# cores are left over: on 2 cores, one runs the forward pass and the other the server's event loop, and
# masks done in line cost less (benchmarks/lm_serving.py; benchmarks/FIGURES.md, "grammar masks")
SPARE_CORES = (os.cpu_count() or 1) >= 4


# row b: the 8 bits of the byte b, lowest first (bit i of each int32 of a mask is token 32 * word + i)
_BITS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()


class UnsupportedGrammar(ValueError):
    """A schema or grammar the decoder cannot enforce: the message says which feature."""


def _json_block(schema: dict) -> str:
    if not isinstance(schema, dict):
        raise UnsupportedGrammar("a JSON schema must be an object")
    return "%json " + json.dumps({**schema, "x-guidance": COMPACT})


def json_grammar(schema: dict | None = None) -> str:
    """A grammar for one JSON value of ``schema`` (None: any JSON object)."""
    return f"start: {_json_block(schema if schema is not None else ANY_OBJECT)}\n"


def tools_grammar(tools: Sequence[dict], choice: str | dict = "auto", answer: dict | None = None) -> str:
    """A grammar for an answer that may (``"auto"``), must (``"required"``, or a named function) or
    must not (``"none"``) be a tool call: the ``<|call|>`` token, then ``{"name":...,"arguments":{...}}``
    with the tool's own parameter schema. The answer otherwise is free text, or JSON of ``answer``."""
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        tools = [t for t in tools if t["function"]["name"] == wanted]
        if not tools:
            raise UnsupportedGrammar(f"tool_choice names {wanted!r}, which is not among the tools")
        choice = "required"
    text = _json_block(answer) if answer is not None else "/(?s:.*)/"
    if choice == "none" or not tools:
        return f"start: {text}\n"
    calls = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t["function"]["name"]},
                    "arguments": t["function"].get("parameters") or ANY_OBJECT,
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }
    call = f"<|call|> {_json_block(calls)}"
    return f"start: {call}\n" if choice == "required" else f"start: {text} | {call}\n"


def _reason(error: str) -> str:
    """llguidance's error, first line, without the grammar's position: what a client can act on."""
    first = error.strip().splitlines()[0] if error.strip() else "the grammar could not be built"
    return first.split("failed to compile JSON schema: ", 1)[-1]


class Guide:
    """Masks for one tokenizer: ``matcher(grammar)`` per sequence, then each step :meth:`fill` the
    allowed tokens of the constrained rows and :meth:`advance` them with the tokens chosen.
    ``end`` is the token that ends an answer (the grammar allows it once the answer is complete)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, end: int):
        self.vocab_size, self.end = vocab_size, end
        self.tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab_size, eos_token=end)
        self.executor = llguidance.LLExecutor()
        # compiling a grammar takes milliseconds; requests often share one (a task's tools, its schema), so
        # a compiled matcher is kept per grammar and each sequence gets a copy of it
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher for ``grammar``; :class:`UnsupportedGrammar` says why one cannot be built."""
        compiled = self._compiled.get(grammar)
        if compiled is None:
            try:
                compiled = llguidance.LLMatcher(self.tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
            except (ValueError, TypeError) as err:
                raise UnsupportedGrammar(_reason(str(err))) from None
            if compiled.is_error():
                raise UnsupportedGrammar(_reason(compiled.get_error()))
            self._compiled[grammar] = compiled
            if len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(grammar)
        return compiled.deep_copy()

    def check(self, grammar: str) -> None:
        """Raise :class:`UnsupportedGrammar` now, at the request, rather than in a decode step."""
        self.matcher(grammar)

    # llguidance.torch's helpers are not imported: that module compiles a kernel with torch.compile as it
    # is imported, which loads Dynamo, Inductor, Triton and SymPy into every server (~2.6 s and
    # ~200 MB resident, used or not); its three helpers below are calls on the matchers' own buffers

    def masks(self, rows: int) -> torch.Tensor:
        """Room for ``rows`` masks (bits, 32 tokens to an int32; all allowed)."""
        return torch.full((rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def fill(self, matchers: Sequence[tuple[llguidance.LLMatcher, int]], masks: torch.Tensor) -> None:
        """Write each matcher's allowed tokens into its row of ``masks`` (off the GIL; with cores to
        spare, several in parallel)."""
        if masks.dtype != torch.int32 or masks.device.type != "cpu" or not masks.is_contiguous():
            raise ValueError("masks are a contiguous int32 tensor on the CPU (Guide.masks)")
        row_bytes = masks.shape[1] * masks.element_size()
        if SPARE_CORES and len(matchers) > SERIAL_BELOW:
            self.executor.unsafe_compute_mask_ptr(list(matchers), masks.data_ptr(), row_bytes, masks.shape[0])
        else:
            for matcher, row in matchers:
                matcher.unsafe_compute_mask_ptr(masks[row].data_ptr(), row_bytes)

    def advance(self, matchers: Sequence[tuple[llguidance.LLMatcher, int]]) -> list[bool]:
        """Each matcher takes its token (``(matcher, token)`` pairs); False where the grammar refused it."""
        if SPARE_CORES and len(matchers) > SERIAL_BELOW:
            return self.executor.consume_token_par(list(matchers))
        return [matcher.consume_token(token) for matcher, token in matchers]

    @staticmethod
    def unpack(masks: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """The bits as booleans, rows x ``vocab_size``: True where a token is allowed. One lookup of
        each byte in a table of its 8 bits (llguidance's own ``apply_token_bitmask_inplace`` is orders of
        magnitude slower on a CPU; benchmarks/FIGURES.md, "grammar masks")."""
        as_bytes = masks.contiguous().view(torch.uint8)  # little-endian: byte k holds tokens 8k..8k+7
        return _BITS.to(masks.device)[as_bytes.long()].flatten(1)[:, :vocab_size]

    @classmethod
    def apply(cls, logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Set the disallowed tokens' logits to -inf, in place (rows of ``logits`` match ``masks``)."""
        allowed = cls.unpack(masks.to(logits.device), logits.shape[-1])
        logits.masked_fill_(~allowed, float("-inf"))

    @classmethod
    def allowed(cls, masks: torch.Tensor, row: int, vocab_size: int) -> list[int]:
        """The token ids row ``row`` of ``masks`` allows (for lessons and tests)."""
        return cls.unpack(masks[row : row + 1], vocab_size)[0].nonzero().flatten().tolist()
