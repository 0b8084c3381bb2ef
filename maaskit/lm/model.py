"""A GPT: a decoder-only transformer small enough to train on a laptop's CPU.

Token and position embeddings, pre-norm blocks (causal self-attention through
``scaled_dot_product_attention``, then an MLP), a final norm and an output head tied to the token
embedding. ``forward(tokens, cache)`` takes an optional :class:`KVCache`: with one, each call
handles only the new tokens and attends to the keys and values kept from earlier calls, so
decoding costs one token's work per step instead of the whole prefix's. A server's many sequences
share a :class:`SlotCache` and decode together through one :class:`DecodeStep` per step.

Importing this module registers ``"gpt"`` in :mod:`maaskit.models`, so an artifact can rebuild it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from ..models import register_model
from .config import GPTConfig

__all__ = ["GPT", "CausalLM", "DecodeStep", "KVCache", "SlotCache"]


class CausalLM(nn.Module):
    """What the engine, the samplers and the server ask of a language model (the GPT here, the Llama
    family in :mod:`maaskit.lm.llama`): ``forward(tokens, cache)`` giving next-token logits, its
    ``context`` and ``vocab_size``, and the shape of its key/value cache."""

    context: int
    vocab_size: int

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head width): what a :class:`KVCache` holds per position."""
        raise NotImplementedError

    def _checked_config(self, config: Any, kind: type[Any], name: str, module: str) -> Any:
        """``config`` once checked to be a ``kind``; kept for artifacts as ``self.maaskit_config``, with
        the registry ``name`` that rebuilds the model and the ``module`` that registers it."""
        if not isinstance(config, kind):
            raise TypeError(f"a {type(self).__name__} is built from a maaskit.lm.{kind.__name__}, "
                            f"got {type(config).__name__}")  # fmt: skip
        self.maaskit_config = {"name": name, "module": module, "config": asdict(config)}
        return config


@dataclass
class KVCache:
    """Keys and values of every layer for a batch of sequences, filled up to ``length``.

    The model writes each layer's new keys and values at ``length`` and, after its last layer,
    calls :meth:`advance`; a fresh cache is :meth:`empty`."""

    keys: list[torch.Tensor]  # per layer: B x heads x context x head width
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, model: CausalLM, batch: int = 1) -> KVCache:
        p = next(model.parameters())
        layers, heads, width = model.cache_shape()
        shape = (batch, heads, model.context, width)
        return cls(
            [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(layers)],
            [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(layers)],
        )

    def advance(self, tokens: int) -> None:
        self.length += tokens

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store this layer's new keys and values (batch x heads x T x head width) after the kept
        ones; return all of them and the mask: the new tokens see every kept position and,
        causally, each other."""
        start, t = self.length, k.shape[2]
        self.keys[layer][:, :, start : start + t] = k
        self.values[layer][:, :, start : start + t] = v
        allowed = torch.ones(t, start + t, dtype=torch.bool, device=k.device).tril(diagonal=start)
        return self.keys[layer][:, :, : start + t], self.values[layer][:, :, : start + t], allowed

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0) -> torch.Tensor:  # fmt: skip
        """The new tokens' attention output: they attend to every kept position and, causally, to each other."""
        keys, values, allowed = self.attend(layer, k, v)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=dropout, enable_gqa=gqa)


@dataclass
class SlotCache:
    """Keys and values for ``slots`` sequences of different lengths, for continuous batching.

    The engine that owns it keeps every slot's length on the host. A sequence gets a slot and is
    prefilled through :meth:`prefill` (a batch-1 :class:`KVCache` over its row); then each step
    decodes one token for a set of rows through :meth:`decode`, which works out once what every
    layer needs (where each row writes, the longest span, the mask)."""

    keys: list[torch.Tensor]  # per layer: slots x heads x context x head width
    values: list[torch.Tensor]

    @classmethod
    def empty(cls, model: CausalLM, slots: int) -> SlotCache:
        kv = KVCache.empty(model, slots)
        return cls(kv.keys, kv.values)

    def prefill(self, slot: int, start: int = 0) -> KVCache:
        """A KVCache writing into ``slot``'s rows (views, not copies), filled up to ``start`` (a
        prompt prefilled in chunks, or after a prefix the prefix cache supplied)."""
        return KVCache([k[slot : slot + 1] for k in self.keys], [v[slot : slot + 1] for v in self.values], start)

    def decode(self, slots: Sequence[int], lengths: Sequence[int], tokens: int = 1) -> DecodeStep:
        """One step for ``slots``, each filled to its ``lengths`` entry (host numbers: no sync), taking
        ``tokens`` new tokens per row: 1 to decode, more for prompt chunks prefilled together (a row
        with fewer real tokens is padded; what the padding writes lies past that row's length, where
        nothing reads it, and the next real token overwrites it)."""
        device = self.keys[0].device
        span = max(lengths) + tokens
        at = torch.tensor(lengths, device=device)[:, None] + torch.arange(tokens, device=device)  # rows x tokens
        first = slots[0] if len(slots) else 0
        block = slice(first, first + len(slots)) if list(slots) == list(range(first, first + len(slots))) else None
        mask = None  # rows of one length decoding one token each see all of the span
        if tokens > 1 or len(set(lengths)) > 1:
            mask = (torch.arange(span, device=device)[None, None, :] <= at[:, :, None])[:, None]
        return DecodeStep(self, torch.tensor(slots, device=device), at, span, mask, block)


@dataclass
class DecodeStep:
    """New tokens for each of ``rows`` (slots of ``cache``): row ``i``'s token ``t`` is written at
    ``positions[i, t]`` and attends to the row's entries up to it, within the ``span`` read."""

    cache: SlotCache
    rows: torch.Tensor
    positions: torch.Tensor  # rows x tokens
    span: int
    mask: torch.Tensor | None  # rows x 1 x tokens x span; None where every row sees its whole span
    block: slice | None = None  # the rows, when they are consecutive slots: read as a view, not gathered

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys and values (rows x heads x tokens x head width); return the
        rows' keys and values up to the span."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if k.shape[2] == 1:  # decoding: one position per row
            keys[self.rows, :, self.positions[:, 0]] = k[:, :, 0]
            values[self.rows, :, self.positions[:, 0]] = v[:, :, 0]
        else:  # indexed as (rows, tokens, heads, width)
            keys[self.rows[:, None], :, self.positions] = k.transpose(1, 2)
            values[self.rows[:, None], :, self.positions] = v.transpose(1, 2)
        if self.block is not None:  # no copy: on a CPU the gather of every layer's keys is a visible part of a step
            return keys[self.block, :, : self.span], values[self.block, :, : self.span]
        return keys[self.rows, :, : self.span], values[self.rows, :, : self.span]

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0) -> torch.Tensor:  # fmt: skip
        """The rows' attention output: each row's new tokens attend to its own entries up to them."""
        keys, values = self.attend(layer, k, v)
        if q.shape[2] == 1 and not dropout:
            return decode_attention(q, keys, values, self.mask)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask, dropout_p=dropout, enable_gqa=gqa)


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """One new query per row (B x heads x 1 x width) against the rows' keys and values (B x key/value
    heads x span x width), ``mask`` B x 1 x 1 x span or None. What ``scaled_dot_product_attention``
    with ``enable_gqa`` computes, faster on a CPU: each key/value head's group of query heads are passed
    as its queries, so that SDPA runs fewer, larger products; in bfloat16, on float32 copies, where
    PyTorch's CPU flash attention is slower than in float32 at these shapes (benchmarks/attention_kernels.py;
    figures: benchmarks/FIGURES.md, "decode attention")."""
    b, heads, _, width = q.shape
    grouped = q.reshape(b, keys.shape[1], heads // keys.shape[1], width)
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        grouped, keys, values = grouped.float(), keys.float(), values.float()
    y = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask)
    return y.to(q.dtype).view(b, heads, 1, width)


@dataclass
class PackedStep:
    """Decoding rows and prompt chunks in one forward pass, packed as one sequence of 1 x (rows +
    chunk tokens), so that every projection and MLP reads its weights once for all of them: a pass
    of its own for a chunk reads them all again, which on a CPU costs about a decode step whatever
    the chunk's length. Attention is split: the rows through ``decode``, each chunk through its own
    slot's :class:`KVCache` (a prompt attends to itself only)."""

    decode: DecodeStep
    chunks: list[KVCache]  # each joining prompt's slot, filled up to where its chunk begins
    sizes: list[int]  # each chunk's tokens, packed in this order after the rows
    positions: torch.Tensor  # 1 x (rows + chunk tokens): each token's position in its own sequence

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool = False,
                  dropout: float = 0.0) -> torch.Tensor:  # fmt: skip
        """Queries, keys and values of the packed tokens (1 x heads x (rows + chunk tokens) x width)
        to the attention output in the same layout; the new keys and values are stored on the way."""
        b = self.decode.rows.shape[0]

        def row_wise(z: torch.Tensor) -> torch.Tensor:  # rows x heads x 1 x width
            return z[0, :, :b].transpose(0, 1)[:, :, None]

        rows = self.decode.attention(layer, row_wise(q), row_wise(k), row_wise(v), gqa, dropout)
        parts, at = [rows[:, :, 0].transpose(0, 1)[None]], b
        for chunk, n in zip(self.chunks, self.sizes):
            part = slice(at, at + n)
            parts.append(chunk.attention(layer, q[:, :, part], k[:, :, part], v[:, :, part], gqa, dropout))
            at += n
        return torch.cat(parts, dim=2)

    def advance(self, tokens: int) -> None:
        """After the last layer: each chunk's slot is filled further (the rows' lengths are the engine's)."""
        for chunk, n in zip(self.chunks, self.sizes):
            chunk.advance(n)


# what a model's forward pass takes besides the tokens: a batch's cache, a decode step, or both packed
Cache: TypeAlias = "KVCache | DecodeStep | PackedStep"


def pick(x: torch.Tensor, cache: Cache | None, select: torch.Tensor) -> torch.Tensor:
    """The positions the head scores: one per row (a prompt's last), or for a packed step the
    packed tokens listed (each decoding row's, a finished chunk's last), each as a row of one."""
    if isinstance(cache, PackedStep):
        return x[0, select][:, None]
    return x[torch.arange(x.shape[0], device=x.device), select][:, None]


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: Cache | None, layer: int) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:  # the cache stores the new keys and values and says what each new token sees
            y = cache.attention(layer, q, k, v, dropout=drop)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = _Attention(width, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: Cache | None, layer: int) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(CausalLM):
    """``GPT(GPTConfig(vocab_size=512, context=128, ...))``: logits for the next token at every position.

    The config is kept as ``model.config`` and, for artifacts, as ``model.maaskit_config``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config: GPTConfig = self._checked_config(config, GPTConfig, "gpt", __name__)
        c = self.config
        self.tokens = nn.Embedding(c.vocab_size, c.width)
        self.positions = nn.Embedding(c.context, c.width)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c.width, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied: one matrix reads tokens in and writes them out
        self.apply(self._init)

    # the sizes other code reads most, named as before
    vocab_size = property(lambda self: self.config.vocab_size)
    context = property(lambda self: self.config.context)

    def cache_shape(self) -> tuple[int, int, int]:
        return self.config.layers, self.config.heads, self.config.head_width

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, tokens: torch.Tensor, cache: Cache | None = None, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens``: B x T token ids (the new ones, with a cache). Returns B x T x vocab logits;
        with ``select`` (a position per row), B x 1 x vocab: the logits at those positions only."""
        t = tokens.shape[1]
        if isinstance(cache, (DecodeStep, PackedStep)):
            where = cache.positions  # each row's own positions (the engine checks the context)
        else:
            start = cache.length if cache is not None else 0
            if start + t > self.context:
                raise ValueError(f"{start + t} tokens do not fit the model's context of {self.context}")
            where = torch.arange(start, start + t, device=tokens.device)
        x = self.drop(self.tokens(tokens) + self.positions(where))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if isinstance(cache, (KVCache, PackedStep)):
            cache.advance(t)
        if select is not None:  # the head's work for the positions that are sampled only
            x = pick(x, cache, select)
        return self.head(self.norm(x))


def _rebuild(architecture: dict) -> GPT:
    """A GPT from its manifest: ``{"config": {...}}``, or the layout maaskit wrote before GPTConfig
    (``in_shape`` = (context,), ``num_classes`` = the vocabulary, the other sizes in ``kwargs``), so a
    model trained then still loads."""
    if "config" in architecture:
        return GPT(GPTConfig(**architecture["config"]))
    context, vocab = architecture["in_shape"][0], architecture["num_classes"]
    return GPT(GPTConfig(vocab_size=vocab, context=context, **architecture.get("kwargs", {})))


register_model("gpt", _rebuild)
