"""The Llama family (Llama 2/3, SmolLM2, Qwen2, Qwen3), written from scratch beside the GPT.

Four changes to notebook 07's GPT block, each a few lines here:

- **RoPE** instead of learned positions: each query and key is rotated by an angle proportional
  to its position, so their dot product depends on the positions' difference only.
- **RMSNorm** instead of LayerNorm: scale by the root mean square, no mean, no bias.
- **SwiGLU** instead of a GELU MLP: ``down(silu(gate(x)) * up(x))``.
- **Grouped-query attention**: fewer key/value heads than query heads, each shared by a group of
  queries; the KV cache shrinks by that factor.

Qwen2 adds a bias to the query, key and value projections, Qwen3 an RMSNorm on each head's queries
and keys. Module names follow Hugging Face's, so a checkpoint loads by name (see
:mod:`maaskit.lm.formats.hf`); the batch it is given does the attention (:mod:`maaskit.lm.models.attention`), as for
the GPT, so the same engine serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models import register_model
from .attention import CAUSAL, Batch
from .base import CausalLM, pick

__all__ = ["Attention", "DecoderLM", "GatedMLP", "Llama", "LlamaConfig"]


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-family model, in Hugging Face's terms (``LlamaConfig.from_hf`` reads a
    ``config.json``). ``context`` is how many positions the cache holds: at most the model's
    ``max_position_embeddings``, often far fewer to keep the cache small."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    context: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama 3's long-context "llama3" scaling
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: q, k and v projections have biases
    qk_norm: bool = False  # Qwen3: an RMSNorm over each head's queries and keys
    model_type: str = "llama"
    extra: dict[str, Any] = field(default_factory=dict)  # what the loader kept (ids of special tokens)

    # config.json's model_type: what sets the family's few differences
    MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

    @classmethod
    def from_hf(cls, config: dict[str, Any], *, context: int | None = None) -> LlamaConfig:
        """From a Hugging Face ``config.json``'s contents (maaskit.lm.models.registry chooses the class)."""
        kind = config.get("model_type", "llama")
        if kind not in cls.MODEL_TYPES:
            raise ValueError(f"model_type {kind!r} is not of the Llama family ({', '.join(cls.MODEL_TYPES)})")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config['hidden_act']!r}: the Llama family uses silu")
        if config.get("sliding_window") and config.get("use_sliding_window", kind == "mistral"):
            raise ValueError("sliding-window attention is not supported")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"RoPE type {rope_type!r} is not supported (default and llama3 are)")
        heads = config["num_attention_heads"]
        longest = config.get("max_position_embeddings", 2048)
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            context=min(context or longest, longest),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            rope_scaling=dict(rope) if rope_type == "llama3" else None,
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", kind == "qwen2"),
            qk_norm=kind == "qwen3",
            model_type=kind,
        )

    def but(self, **changes: Any) -> LlamaConfig:
        return replace(self, **changes)


def rms_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps)`` over the last dimension, in float32 (the references compute it so)."""
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight``, normalized in float32 and scaled after the cast back, as
    Llama's reference does."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(width)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalized(x, self.eps).to(x.dtype)


def rope_frequencies(c: LlamaConfig) -> torch.Tensor:
    """The rotation speed of each pair of dimensions (head_dim / 2 of them), slowest last."""
    inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64, device="cpu").float() / c.head_dim)
    s = c.rope_scaling
    if s is None:
        return inv
    # Llama 3.1+: long wavelengths slowed by `factor`, short ones kept, a smooth blend between
    old, factor = s["original_max_position_embeddings"], s["factor"]
    low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    wavelength = 2 * math.pi / inv
    scaled = torch.where(wavelength > old / low, inv / factor, inv)
    blend = (old / wavelength - low) / (high - low)
    smoothed = (1 - blend) * scaled / factor + blend * scaled
    middle = (wavelength >= old / high) & (wavelength <= old / low)
    return torch.where(middle, smoothed, scaled)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Hugging Face lays it out: dimension i pairs with i + head_dim/2 (not its neighbour)."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


class Attention(nn.Module):
    """Grouped-query attention with RoPE, laid out as Hugging Face's (``q_proj`` ... ``o_proj``). The
    other families' differences are options: ``norm``, a norm class for each head's queries and keys
    (Qwen3, Gemma 3); ``window``, the positions each token sees (Gemma 3's sliding layers); ``q_scale``,
    a factor on the queries (SDPA scales by head_dim ** -0.5); ``out_bias``, a bias on ``o_proj``."""

    def __init__(self, c: Any, *, norm: type[nn.Module] | None = None, window: int | None = None,
                 q_scale: float = 1.0, out_bias: bool = False):  # fmt: skip
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.window, self.q_scale = window, q_scale
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=out_bias)
        if norm is not None:
            self.q_norm, self.k_norm = norm(c.head_dim, c.rms_norm_eps), norm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, t, self.heads, self.head_dim)
        k = k.view(b, t, self.kv_heads, self.head_dim)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        # each key/value head serves heads / kv_heads query heads
        y = batch.attention(layer, q, k, v, gqa=self.kv_heads != self.heads, window=self.window)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class GatedMLP(nn.Module):
    """``down(activation(gate(x)) * up(x))``: SwiGLU with SiLU (Llama), GeGLU with GELU (Gemma)."""

    def __init__(self, c: Any, activation: Callable[[torch.Tensor], torch.Tensor] = F.silu):
        super().__init__()
        self.activation = activation
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, norm=RMSNorm if c.qk_norm else None)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = GatedMLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Trunk(nn.Module):  # "model." in a checkpoint's names
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DecoderLM(CausalLM):
    """What the families in Hugging Face's layout share: ``model``, the trunk (``embed_tokens``,
    ``layers``, ``norm``), and an ``lm_head`` tied to the embedding where the config says so; the
    config's sizes; the shape of the key/value cache."""

    config: Any
    model: Any  # each family's trunk

    def __init__(self, config: Any, kind: type[Any], name: str, module: str, trunk: Callable[[Any], nn.Module]):
        """``config`` checked to be a ``kind`` (``name`` and ``module``: what rebuilds it from an artifact),
        then the family's ``trunk`` built from it and the head over it."""
        super().__init__()
        self.config = c = self._checked_config(config, kind, name, module)
        self.model = trunk(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    vocab_size = property(lambda self: self.config.vocab_size)
    context = property(lambda self: self.config.context)

    def cache_shape(self) -> tuple[int, int, int]:
        c = self.config
        return c.num_hidden_layers, c.num_key_value_heads, c.head_dim

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(tokens)

    def rotations(self, where: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's RoPE cos and sin at positions ``where`` (B x T), as B x 1 x T x head_dim."""
        raise NotImplementedError

    def forward(
        self, tokens: torch.Tensor, batch: Batch | None = None, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens``: B x T ids (the new ones, with a cache); B x T x vocab logits, or with ``select``
        (indices into the B * T tokens) len(select) x 1 x vocab."""
        batch = batch if batch is not None else CAUSAL
        where = batch.positions(tokens, self.context)
        x = self.embed(tokens)
        for layer, (block, (cos, sin)) in enumerate(zip(self.model.layers, self.rotations(where, x.dtype))):
            x = block(x, cos, sin, batch, layer)
        batch.advance(tokens.shape[1])
        return self.lm_head(self.model.norm(pick(x, select)))  # the head's work for the tokens sampled only


class Llama(DecoderLM):
    """``Llama(LlamaConfig(...))``: next-token logits at every position; the GPT's cache interface."""

    model: _Trunk

    def __init__(self, config: LlamaConfig):
        super().__init__(config, LlamaConfig, "llama", __name__, _Trunk)
        c = self.config
        # cos and sin of every position's angles, computed once (not saved: a checkpoint lacks them);
        # on the CPU even while the weights are built on "meta" (the loader streams those in)
        angles = torch.outer(torch.arange(c.context, dtype=torch.float32, device="cpu"), rope_frequencies(c))
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def rotations(self, where: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cos, sin = (table[where][:, None].to(dtype) for table in (self.rope_cos, self.rope_sin))  # B x 1 x T x d
        return [(cos, sin)] * len(self.model.layers)  # one table for every layer


def _rebuild(architecture: dict) -> Llama:
    return Llama(LlamaConfig(**architecture["config"]))


register_model("llama", _rebuild)
