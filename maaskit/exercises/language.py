"""Exercises of notebooks 07, 10 and 11: language models, the assistant, open models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checking import Hint, exercise, same


@exercise(
    "07.top_p_filter",
    "top_p_filter(logits, p) keeps the smallest set of likeliest tokens whose probabilities add up to at "
    "least p (nucleus sampling) and sets every other logit to -inf: with probabilities 0.5, 0.3, 0.15, 0.05, "
    "p = 0.7 keeps the first two and p = 1 keeps all; what maaskit's sampler does with top_p.",
)
def _top_p_filter(top_p_filter):
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    for p, kept in ((0.7, [1, 3]), (0.45, [1]), (0.9, [0, 1, 3]), (1.0, [0, 1, 2, 3])):
        want = torch.full_like(logits, float("-inf"))
        want[kept] = logits[kept]
        same(
            top_p_filter(logits.clone(), p),
            want,
            f"top_p_filter(logits, {p})",
            hint="sort the probabilities in descending order; keep a token while the mass before it is below p",
        )


@exercise(
    "07.positions_processed",
    "positions_processed(prompt, new) is the number of token positions the model runs to generate new "
    "tokens after a prompt of that length, greedily: (with a KV cache, without one). With a cache the "
    "prompt goes through once, then one position per further token; without, each step runs the whole "
    "sequence so far. (4, 123) gives (126, 7995), as section 6 counts.",
)
def _positions_processed(positions_processed):
    for prompt, new in ((4, 123), (1, 1), (10, 5)):
        with_cache = prompt + new - 1  # the last token is sampled, never run
        without = sum(prompt + i for i in range(new))
        same(
            tuple(positions_processed(prompt, new)),
            (with_cache, without),
            f"positions_processed({prompt}, {new})",
            hint="the step that makes token i (from 0) runs prompt + i positions without a cache, "
            "and only its newest one with it (the prompt's prompt positions at the first step)",
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
