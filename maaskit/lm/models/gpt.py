"""A GPT: a decoder-only transformer small enough to train on a laptop's CPU.

Token and position embeddings, pre-norm blocks (causal self-attention through
``scaled_dot_product_attention``, then an MLP), a final norm and an output head tied to the token
embedding. ``forward(tokens, batch)`` takes an optional batch (:mod:`maaskit.lm.models.attention`): a
:class:`~maaskit.lm.models.attention.KVCache` to generate step by step, or a server's flat batch. The
batch says where each token sits and does the attention over its keys and values; the model knows no
cache.

Importing this module registers ``"gpt"`` in :mod:`maaskit.models`, so an artifact can rebuild it.
"""

from __future__ import annotations

import torch
from torch import nn

from ...models import register_model
from .attention import CAUSAL, Batch
from .base import CausalLM, pick
from .config import GPTConfig

__all__ = ["GPT"]


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        y = batch.attention(layer, q, k, v, dropout=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = _Attention(width, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), batch, layer)
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
        self, tokens: torch.Tensor, batch: Batch | None = None, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens``: B x T token ids (the new ones, with a cache). Returns B x T x vocab logits;
        with ``select`` (indices into the B * T tokens), len(select) x 1 x vocab: those tokens' only."""
        batch = batch if batch is not None else CAUSAL
        x = self.drop(self.tokens(tokens) + self.positions(batch.positions(tokens, self.context)))
        for layer, block in enumerate(self.blocks):
            x = block(x, batch, layer)
        batch.advance(tokens.shape[1])
        return self.head(self.norm(pick(x, select)))  # the head's work for the tokens sampled only


def _rebuild(architecture: dict) -> GPT:
    """A GPT from its manifest: ``{"config": {...}}``, or the layout maaskit wrote before GPTConfig
    (``in_shape`` = (context,), ``num_classes`` = the vocabulary, the other sizes in ``kwargs``), so a
    model trained then still loads."""
    if "config" in architecture:
        return GPT(GPTConfig(**architecture["config"]))
    context, vocab = architecture["in_shape"][0], architecture["num_classes"]
    return GPT(GPTConfig(vocab_size=vocab, context=context, **architecture.get("kwargs", {})))


register_model("gpt", _rebuild)
