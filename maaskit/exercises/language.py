"""Exercises of notebooks 07, 10 and 11: language models, the assistant, open models."""

from __future__ import annotations

import torch

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
    "11.kv_cache_bytes",
    "kv_cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_value) is the memory a KV cache needs for "
    "that many tokens: a key and a value vector per layer, key/value head and position. SmolLM2-135M "
    "(30 layers, 3 key/value heads of 64) in float32 takes 46,080,000 bytes per 1,000 tokens; a maaskit "
    "Llama's own cache agrees.",
)
def _kv_cache_bytes(kv_cache_bytes):
    from ..lm.attention import KVCache
    from ..lm.llama import Llama, LlamaConfig

    same(
        kv_cache_bytes(30, 3, 64, 1000, 4),
        46_080_000,
        "kv_cache_bytes(30, 3, 64, 1000, 4)",
        hint="2 (a key and a value) x layers x kv_heads x head_dim x tokens x bytes_per_value",
    )
    config = LlamaConfig(64, 32, 64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         context=48)  # fmt: skip
    model = Llama(config).to(torch.bfloat16)
    cache = KVCache.empty(model)
    held = sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values])
    same(kv_cache_bytes(3, 2, 8, 48, 2), held, "a maaskit Llama's bfloat16 cache for 48 tokens")


@exercise(
    "11.rope_angles",
    "rope_angles(position, head_dim, theta) are the head_dim // 2 angles RoPE turns a query or key at that "
    "position by: position x theta ** (-2i / head_dim) for pair i = 0, 1, ...; the first pair turns fastest. "
    "maaskit's rope_frequencies gives the same speeds.",
)
def _rope_angles(rope_angles):
    from ..lm.llama import LlamaConfig, rope_frequencies

    config = LlamaConfig(64, 32, 64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                         context=32, rope_theta=10000.0)  # fmt: skip
    for position in (0, 1, 7):
        same(
            torch.as_tensor(rope_angles(position, 16, 10000.0), dtype=torch.float32),
            position * rope_frequencies(config),
            f"rope_angles({position}, 16, 10000.0)",
            hint="theta ** (-torch.arange(0, head_dim, 2) / head_dim), times the position",
        )
