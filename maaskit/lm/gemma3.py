"""Gemma 3 (its text models: 270M to 27B), written from scratch beside the Llama family.

A Llama block with five changes, each a few lines here:

- **Scaled embeddings**: the token embedding is multiplied by sqrt(hidden size) (the head, tied to
  it, is not).
- **RMSNorm as ``1 + weight``**, computed and scaled in float32 before the cast back, and four of them
  per block: before and after attention, before and after the MLP (the "sandwich").
- **GeGLU**: ``down(gelu_tanh(gate(x)) * up(x))``, a tanh-approximated GELU where Llama has SiLU.
- **Sliding-window layers**: most layers attend to the latest ``sliding_window`` positions only, with
  RoPE of a lower base; the others (every sixth, ``layer_types`` says which) see the whole context.
- **Query scale** ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``, and an RMSNorm on
  each head's queries and keys (as Qwen3).

Module names follow Hugging Face's, so a checkpoint loads by name (:mod:`maaskit.lm.hf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import register_model
from .attention import CAUSAL, Batch
from .llama import rotate
from .model import CausalLM, pick

__all__ = ["Gemma3", "Gemma3Config"]

SLIDING = "sliding_attention"


@dataclass(frozen=True)
class Gemma3Config:
    """The shape of a Gemma 3 text model, in Hugging Face's terms (``Gemma3TextConfig``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    context: int
    sliding_window: int
    layer_types: tuple[str, ...]
    query_pre_attn_scalar: float
    rope_theta: float = 1_000_000.0  # full-attention layers
    rope_local_theta: float = 10_000.0  # sliding-window layers
    rope_factor: float = 1.0  # "linear" scaling of the full layers' positions (the larger Gemma 3s)
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    model_type: str = "gemma3_text"
    extra: dict[str, Any] = field(default_factory=dict)

    MODEL_TYPES = ("gemma3_text",)  # config.json's model_type

    @classmethod
    def from_hf(cls, config: dict[str, Any], *, context: int | None = None) -> Gemma3Config:
        """From a ``config.json`` (a ``Gemma3ForCausalLM``'s, or the text part of a ``Gemma3Config``)."""
        config = config.get("text_config", config)
        if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_activation {config['hidden_activation']!r}: Gemma 3 uses gelu_pytorch_tanh")
        if config.get("final_logit_softcapping") or config.get("attn_logit_softcapping"):
            raise ValueError("logit soft-capping (Gemma 2's) is not supported")
        if config.get("use_bidirectional_attention"):
            raise ValueError("bidirectional attention (an encoder's) is not supported")
        layers = config["num_hidden_layers"]
        pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
        types = config.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else SLIDING for i in range(layers)
        ]
        rope = config.get("rope_parameters") or {}
        full = rope.get("full_attention", rope if "rope_theta" in rope else {})
        local = rope.get("sliding_attention", {})
        scaling = full.get("rope_type", "default") if full else (config.get("rope_scaling") or {}).get("rope_type")
        if scaling not in (None, "default", "linear"):
            raise ValueError(f"RoPE type {scaling!r} is not supported (default and linear are)")
        longest = config.get("max_position_embeddings", 32768)
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            context=min(context or longest, longest),
            sliding_window=config.get("sliding_window") or longest,
            layer_types=tuple(types),
            query_pre_attn_scalar=config.get("query_pre_attn_scalar", config.get("head_dim", 256)),
            rope_theta=full.get("rope_theta", config.get("rope_theta", 1_000_000.0)),
            rope_local_theta=local.get("rope_theta", config.get("rope_local_base_freq", 10_000.0)),
            rope_factor=full.get("factor", (config.get("rope_scaling") or {}).get("factor", 1.0)),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            attention_bias=config.get("attention_bias", False),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
        )


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * (1 + weight)``, all in float32, then cast (Gemma's order)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.zeros(width)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, c: Gemma3Config, layer: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.window = c.sliding_window if c.layer_types[layer] == SLIDING else None
        # SDPA scales by head_dim ** -0.5: the queries are scaled by what makes that query_pre_attn_scalar ** -0.5
        self.q_scale = math.sqrt(c.head_dim / c.query_pre_attn_scalar)
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.attention_bias)
        self.q_norm, self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps), RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.q_norm(q.view(b, t, self.heads, self.head_dim))
        k = self.k_norm(k.view(b, t, self.kv_heads, self.head_dim))
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        y = batch.attention(layer, q, k, v, gqa=self.kv_heads != self.heads, window=self.window)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class _MLP(nn.Module):
    def __init__(self, c: Gemma3Config):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class _Layer(nn.Module):
    def __init__(self, c: Gemma3Config, layer: int):
        super().__init__()
        self.sliding = c.layer_types[layer] == SLIDING
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = _Attention(c, layer)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = _MLP(c)
        self.post_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: Batch, layer: int) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, batch, layer))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class _Trunk(nn.Module):  # "model." in a checkpoint's names
    def __init__(self, c: Gemma3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_Layer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


def _angles(c: Gemma3Config, theta: float, factor: float) -> torch.Tensor:
    speeds = 1.0 / theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64, device="cpu").float() / c.head_dim)
    angles = torch.outer(torch.arange(c.context, dtype=torch.float32, device="cpu"), speeds / factor)
    return torch.cat((angles, angles), dim=-1)


class Gemma3(CausalLM):
    """``Gemma3(Gemma3Config(...))``: next-token logits at every position, as the other families."""

    def __init__(self, config: Gemma3Config):
        super().__init__()
        self.config: Gemma3Config = self._checked_config(config, Gemma3Config, "gemma3", __name__)
        c = self.config
        self.model = _Trunk(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # each layer kind's cos and sin of every position (not saved: a checkpoint lacks them)
        for kind, theta, factor in (("full", c.rope_theta, c.rope_factor), ("local", c.rope_local_theta, 1.0)):
            angles = _angles(c, theta, factor)
            self.register_buffer(f"{kind}_cos", angles.cos(), persistent=False)
            self.register_buffer(f"{kind}_sin", angles.sin(), persistent=False)

    vocab_size = property(lambda self: self.config.vocab_size)
    context = property(lambda self: self.config.context)

    def cache_shape(self) -> tuple[int, int, int]:
        c = self.config
        return c.num_hidden_layers, c.num_key_value_heads, c.head_dim

    def forward(
        self, tokens: torch.Tensor, batch: Batch | None = None, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As :meth:`maaskit.lm.llama.Llama.forward`."""
        batch = batch if batch is not None else CAUSAL
        where = batch.positions(tokens, self.context)
        x = self.model.embed_tokens(tokens)
        x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)  # in the weights' dtype, as Gemma's
        tables = {
            kind: tuple(getattr(self, f"{kind}_{f}")[where][:, None].to(x.dtype) for f in ("cos", "sin"))
            for kind in ("full", "local")
        }  # B x 1 x T x d each
        for layer, block in enumerate(self.model.layers):
            cos, sin = tables["local" if block.sliding else "full"]
            x = block(x, cos, sin, batch, layer)
        batch.advance(tokens.shape[1])
        return self.lm_head(self.model.norm(pick(x, select)))


def _rebuild(architecture: dict) -> Gemma3:
    config = dict(architecture["config"])
    config["layer_types"] = tuple(config["layer_types"])
    return Gemma3(Gemma3Config(**config))


register_model("gemma3", _rebuild)
