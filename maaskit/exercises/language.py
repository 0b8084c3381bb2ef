"""Exercises of notebooks 07, 10 and 11: language models, the assistant, open models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checking import Hint, exercise, same


@exercise(
    "07.shift_targets",
    "shift_targets(tokens) splits a B x (T+1) block of token ids into the inputs "
    "(every token but the last) and the targets (every token but the first): position t learns to "
    "predict token t+1. [[5, 6, 7, 8]] gives ([[5, 6, 7]], [[6, 7, 8]]).",
)
def _shift_targets(shift_targets):
    tokens = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    answer = shift_targets(tokens)
    if not isinstance(answer, tuple) or len(answer) != 2:
        raise Hint("return two tensors: (inputs, targets)")
    same(answer[0], tokens[:, :-1], "the inputs", hint="every column but the last")
    same(answer[1], tokens[:, 1:], "the targets", hint="every column but the first")


@exercise(
    "07.top_k_filter",
    "top_k_filter(logits, k) keeps the k largest logits of a vector and sets "
    "every other to -inf, so that softmax gives them probability 0; k = vocabulary size keeps all.",
)
def _top_k_filter(top_k_filter):
    logits = torch.tensor([1.0, 4.0, -2.0, 3.0, 0.5])
    for k in (1, 2, 5):
        want = torch.full_like(logits, float("-inf"))
        top = logits.topk(k).indices
        want[top] = logits[top]
        same(
            top_k_filter(logits.clone(), k),
            want,
            f"top_k_filter(logits, {k})",
            hint="logits.topk(k).values[-1] is the smallest kept; masked_fill the ones below it",
        )


@exercise(
    "07.merge_pair",
    "merge_pair(ids, pair, new_id) replaces each occurrence of the adjacent pair in a "
    "list of ids, left to right, by new_id: one step of BPE. [1, 1, 1] with the pair (1, 1) gives "
    "[new_id, 1]: a merged token is not merged again in the same pass.",
)
def _merge_pair(merge_pair):
    cases: tuple[tuple[list[int], tuple[int, int], int, list[int]], ...] = (
        ([1, 2, 3, 1, 2], (1, 2), 9, [9, 3, 9]),
        ([1, 1, 1], (1, 1), 7, [7, 1]),
        ([4, 5], (5, 4), 8, [4, 5]),
        ([], (1, 2), 3, []),
    )
    for ids, pair, new_id, want in cases:
        same(
            list(merge_pair(list(ids), pair, new_id)),
            want,
            f"merge_pair({ids}, {pair}, {new_id})",
            hint="walk with an index; on a match append new_id and step 2, else append the id and step 1",
        )


@exercise(
    "10.assistant_mask",
    "assistant_mask(tokens) takes a conversation as a list of token strings and "
    "returns 1 for each token the model is trained on — every token of an assistant's turn after its "
    "<|assistant|> marker, up to and including that turn's <|end|> (so it learns to stop) — and 0 for "
    "the rest, markers included.",
)
def _assistant_mask(assistant_mask):
    tokens = [
        "<|user|>",
        "Hi",
        "<|end|>",
        "<|assistant|>",
        "Hello",
        "!",
        "<|end|>",
        "<|user|>",
        "2+2?",
        "<|end|>",
        "<|assistant|>",
        "4",
        "<|end|>",
    ]
    want = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    same(
        list(assistant_mask(tokens)),
        want,
        "the mask",
        hint="switch on after '<|assistant|>', write 1 for each token up to '<|end|>' included, then switch off",
    )


@exercise(
    "10.parse_tool_call",
    "parse_tool_call(text) reads the JSON a model wrote after <|call|>: "
    "(name, arguments) for a complete call whose arguments are an object, None for anything else "
    "(broken JSON, a missing name, arguments that are not an object).",
)
def _parse_tool_call(parse_tool_call):
    good = ('{"name":"calculate","arguments":{"expression":"12*34"}}', ("calculate", {"expression": "12*34"}))
    same(parse_tool_call(good[0]), good[1], "a complete call", hint="json.loads, then the two fields")
    for bad in ('{"name":"calculate","arguments":{"expr', '{"arguments":{}}', '{"name":"x","arguments":[1]}', "12*34"):
        try:
            got = parse_tool_call(bad)
        except (ValueError, KeyError, TypeError) as err:
            raise Hint(f"{bad!r} raised {type(err).__name__}: catch it and return None") from None
        same(got, None, f"parse_tool_call({bad!r})", hint="anything but a complete call gives None")


@exercise(
    "11.rms_norm",
    "rms_norm(x, weight, eps) divides each vector (the last dimension) by its root mean "
    "square, sqrt(mean(x**2) + eps), and multiplies by weight: what maaskit's Llama (and Llama's "
    "reference code) computes; no mean is subtracted, unlike LayerNorm.",
)
def _rms_norm(rms_norm):
    from ..lm.llama import RMSNorm

    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 3, 8, generator=g) * 3 + 1, torch.randn(8, generator=g)
    norm = RMSNorm(8, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(weight)
        want = norm(x)
    same(
        rms_norm(x, weight, 1e-5),
        want,
        "rms_norm(x, weight, 1e-5)",
        hint="x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight",
    )


@exercise(
    "11.repeat_kv",
    "repeat_kv(kv, n_rep) repeats each of the key/value heads (B x kv_heads x T x D) "
    "n_rep times, next to each other, so that query head h reads key head h // n_rep: attention with "
    "the result equals scaled_dot_product_attention(..., enable_gqa=True).",
)
def _repeat_kv(repeat_kv):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 5, 4, generator=g)
    k, v = torch.randn(1, 2, 5, 4, generator=g), torch.randn(1, 2, 5, 4, generator=g)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    keys, values = repeat_kv(k, 3), repeat_kv(v, 3)
    same(
        keys,
        k.repeat_interleave(3, dim=1),
        "repeat_kv(k, 3)",
        hint="head h of the result is head h // n_rep: repeat_interleave on dim 1, not repeat",
    )
    same(F.scaled_dot_product_attention(q, keys, values, is_causal=True), want, "attention with the repeated heads")
