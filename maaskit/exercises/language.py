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
    "10.shifted_labels",
    "shifted_labels(ids, trained) are the labels of a conversation for fine-tuning: position i's label is "
    "the token at i + 1 when that token is the assistant's (trained[i + 1]), and -100 otherwise; one fewer "
    "label than ids.",
)
def _shifted_labels(shifted_labels):
    from ..lm.formats.chat import ChatFormat, add_chat_tokens
    from ..lm.formats.tokenizer import train_tokenizer
    from ..lm.training.sft import ChatDataset
    from ..lm.training.tasks import get_task

    same(
        list(shifted_labels([5, 6, 7, 8, 9], [False, False, True, True, False])),
        [-100, 7, 8, -100],
        "shifted_labels([5, 6, 7, 8, 9], [False, False, True, True, False])",
        hint="label i belongs to token i + 1: look at ids[1:] and trained[1:] together",
    )
    task = get_task("assistant")
    tokenizer = add_chat_tokens(train_tokenizer([" ".join(e.question for e in task.examples("train", 60))], 300))
    example = task.examples("train", 1)[0]
    encoded = ChatFormat(tokenizer).encode(example.conversation(), example.tools, add_generation_prompt=False)
    data = ChatDataset.from_conversations([(example.conversation(), example.tools)] * 40, tokenizer, context=256)
    n = len(encoded.ids) - 1
    same(
        list(shifted_labels(encoded.ids, encoded.trained)),
        data.train[1][0][:n].tolist(),
        "the labels of a conversation of the assistant task, against the rows finetune trains on",
        hint="-100 is the label where the next token is not the assistant's",
    )


@exercise(
    "10.allowed_digits",
    "allowed_digits(pieces, state, end) is the set of token ids allowed after `state` characters of a 4-digit "
    "PIN ([0-9]{4}), given pieces (token id -> its text): a token whose characters are all digits and still "
    "fit in the 4 places, and `end` once all 4 are written. Used with section 3's greedy, it makes any model "
    "answer with a PIN.",
)
def _allowed_digits(allowed_digits):
    import random

    pieces = {0: "1", 1: "23", 2: "456", 3: "7890", 4: "a", 5: "1a", 6: "", 7: "12345", 8: " 1", 9: "0"}
    end = 10
    want = {0: {0, 1, 2, 3, 9}, 1: {0, 1, 2, 9}, 2: {0, 1, 9}, 3: {0, 9}, 4: {end}}
    for state, expected in want.items():
        same(
            set(allowed_digits(pieces, state, end)),
            expected,
            f"allowed_digits(pieces, {state}, end) with pieces {pieces}",
            hint="a piece fits when it is not empty, all its characters are digits, and state + its length <= 4; "
            "end only at state 4",
        )
    rng = random.Random(0)  # a decode: any model's choices, held to the mask, give a PIN
    written = ""
    for _ in range(8):  # at most 4 tokens and the end
        allowed = sorted(allowed_digits(pieces, len(written), end))
        if not allowed:
            raise Hint(f"after {written!r} nothing is allowed: the decode cannot go on")
        token = rng.choice(allowed)
        if token == end:
            break
        written += pieces[token]
    same(len(written) == 4 and written.isdigit(), True, f"a random decode under your mask (it wrote {written!r})")


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
    "11.reused_tokens",
    "reused_tokens(first, second, block) is how many of the prompt `second`'s tokens a prefix cache with "
    "blocks of `block` tokens supplies after it has seen only the prompt `first`: whole blocks, named by "
    "their whole prefix, and never the prompt's last token.",
)
def _reused_tokens(reused_tokens):
    from ..lm.models.attention import SlotCache
    from ..lm.runtime.prefix import PrefixCache

    def cache_says(first, second, block):  # maaskit's PrefixCache on a one-layer, one-number cache
        cache = PrefixCache(max_blocks=64, block=block)
        rows = SlotCache([torch.zeros(1, 1, 256, 1)], [torch.zeros(1, 1, 256, 1)])
        cache.keep(first, rows, 0)
        return cache.reuse(second, rows, 0)

    shared = list(range(100, 170))  # 70 tokens: two full blocks of 32
    cases = [
        (shared + [1, 2], shared + [3, 4], 32, "two prompts that share 70 tokens"),
        (shared, shared, 32, "the same prompt twice"),
        (list(range(64)), list(range(64)), 32, "the same 64-token prompt twice"),
        ([0] + shared, [1] + shared, 32, "prompts whose first tokens differ"),
        (shared + [1], shared + [2], 8, "two prompts that share 70 tokens, blocks of 8"),
        (shared[:10], shared, 4, "a short first prompt, blocks of 4"),
    ]
    for first, second, block, what in cases:
        same(
            reused_tokens(first, second, block),
            cache_says(first, second, block),
            f"{what} (reused_tokens(..., {block}))",
            hint="count whole blocks of `second` without its last token, in order, while `first` has the same "
            "tokens there; a block after a difference is not reused even if its own tokens match",
        )


@exercise(
    "11.to_halves",
    "to_halves(weight, heads) takes a query or key projection weight (heads x head_dim rows, one per "
    "output) trained for RoPE that pairs neighbours (i, i + 1), as Meta's original Llama checkpoints are, "
    "and returns it with its rows reordered for Hugging Face's pairs of halves (i, i + d/2), so that the "
    "converted model computes the same attention.",
)
def _to_halves(to_halves):
    from ..lm.models.llama import LlamaConfig, rope_frequencies, rotate

    heads, head_dim, width, t = 2, 8, 12, 6
    torch.manual_seed(0)
    wq, wk, x = torch.randn(heads * head_dim, width), torch.randn(heads * head_dim, width), torch.randn(t, width)
    config = LlamaConfig(16, width, 16, num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=head_dim, context=t)  # fmt: skip
    angles = torch.outer(torch.arange(t).float(), rope_frequencies(config))  # t x head_dim / 2

    def scores_neighbours(w_q, w_k):  # Meta's layout: pair (2i, 2i + 1) turns by angle i
        def turn(v):
            even, odd = v[..., 0::2], v[..., 1::2]
            c, s = angles.cos()[:, None], angles.sin()[:, None]
            return torch.stack([even * c - odd * s, even * s + odd * c], -1).flatten(-2)

        q, k = turn((x @ w_q.T).view(t, heads, head_dim)), turn((x @ w_k.T).view(t, heads, head_dim))
        return torch.einsum("qhd,khd->hqk", q, k)

    def scores_halves(w_q, w_k):  # Hugging Face's layout: pair (i, i + d/2) turns by angle i
        cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
        q = rotate((x @ w_q.T).view(t, heads, head_dim), cos, sin)
        k = rotate((x @ w_k.T).view(t, heads, head_dim), cos, sin)
        return torch.einsum("qhd,khd->hqk", q, k)

    q2, k2 = to_halves(wq.clone(), heads), to_halves(wk.clone(), heads)
    if not isinstance(q2, torch.Tensor):
        raise Hint(f"to_halves should return a tensor, got {type(q2).__name__}")
    same(tuple(q2.shape), tuple(wq.shape), "the converted weight's shape", hint="reorder the rows, keep their number")
    same(
        scores_halves(q2, k2),
        scores_neighbours(wq, wk),
        "the attention scores of the converted weights, with Hugging Face's RoPE",
        hint="within each head, the rows of the pairs' first members (0, 2, 4, ...) come first, then the "
        "second members (1, 3, 5, ...); view the weight as heads x pairs x 2 x width",
        atol=1e-4,
    )
