"""A GPT: a decoder-only transformer small enough to train on a laptop's CPU.

Token and position embeddings, pre-norm blocks (causal self-attention through
``scaled_dot_product_attention``, then an MLP), a final norm and an output head tied to the token
embedding. ``forward(tokens, cache)`` takes an optional :class:`KVCache`: with one, each call
handles only the new tokens and attends to the keys and values kept from earlier calls, so
decoding costs one token's work per step instead of the whole prefix's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPT", "KVCache", "SlotCache"]


@dataclass
class KVCache:
    """Keys and values of every layer for a batch of sequences, filled up to ``length``."""

    keys: list[torch.Tensor]  # per layer: B x heads x context x head width
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, model: GPT, batch: int = 1) -> KVCache:
        p = next(model.parameters())
        shape = (batch, model.heads, model.context, model.width // model.heads)
        return cls(
            [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in model.blocks],
            [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in model.blocks],
        )


@dataclass
class SlotCache:
    """Keys and values for ``slots`` sequences of different lengths, for continuous batching.

    A sequence gets a slot, is prefilled through :meth:`prefill_view` (a batch-1 :class:`KVCache`
    over its row), then decodes one token per step with the others: ``rows`` names the slots in a
    step and ``lengths`` says how far each is filled, so each row writes at its own position and
    attends to its own prefix only."""

    keys: list[torch.Tensor]  # per layer: slots x heads x context x head width
    values: list[torch.Tensor]
    lengths: torch.Tensor  # per slot, on the model's device
    rows: torch.Tensor | None = None  # the slots of the current step

    @classmethod
    def empty(cls, model: GPT, slots: int) -> SlotCache:
        kv = KVCache.empty(model, slots)
        return cls(kv.keys, kv.values, torch.zeros(slots, dtype=torch.long, device=kv.keys[0].device))

    def prefill_view(self, slot: int) -> KVCache:
        """A KVCache writing into ``slot``'s rows (views, not copies), empty."""
        return KVCache([k[slot : slot + 1] for k in self.keys], [v[slot : slot + 1] for v in self.values])


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: KVCache | SlotCache | None, layer: int) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        elif isinstance(cache, SlotCache):  # one new token per row, each row at its own length
            assert cache.rows is not None and t == 1
            rows, at = cache.rows, cache.lengths[cache.rows]
            cache.keys[layer][rows, :, at] = k[:, :, 0]
            cache.values[layer][rows, :, at] = v[:, :, 0]
            span = int(at.max()) + 1
            keys, values = cache.keys[layer][rows, :, :span], cache.values[layer][rows, :, :span]
            allowed = torch.arange(span, device=x.device)[None, :] <= at[:, None]  # rows x span
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None, None, :])
        else:  # the new tokens attend to every kept position and, causally, to each other
            start = cache.length
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            keys, values = cache.keys[layer][:, :, : start + t], cache.values[layer][:, :, : start + t]
            allowed = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = _Attention(width, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cache: KVCache | SlotCache | None, layer: int) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """``GPT(vocab_size, context=256, layers=4, heads=4, width=128)``: logits for the next token at
    every position."""

    def __init__(
        self,
        vocab_size: int,
        context: int = 256,
        layers: int = 4,
        heads: int = 4,
        width: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.vocab_size, self.context, self.heads, self.width = vocab_size, context, heads, width
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied: one matrix reads tokens in and writes them out
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, cache: KVCache | SlotCache | None = None) -> torch.Tensor:
        """``tokens``: B x T token ids (the new ones, with a cache). Returns B x T x vocab logits.
        With a :class:`SlotCache`, B x 1: the next token of each of the cache's ``rows``."""
        t = tokens.shape[1]
        if isinstance(cache, SlotCache):
            assert cache.rows is not None
            where = cache.lengths[cache.rows][:, None]  # each row's own position (the host checks the context)
        else:
            start = cache.length if cache is not None else 0
            if start + t > self.context:
                raise ValueError(f"{start + t} tokens do not fit the model's context of {self.context}")
            where = torch.arange(start, start + t, device=tokens.device)
        x = self.drop(self.tokens(tokens) + self.positions(where))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if isinstance(cache, SlotCache):
            cache.lengths[cache.rows] += 1
        elif cache is not None:
            cache.length += t
        return self.head(self.norm(x))
