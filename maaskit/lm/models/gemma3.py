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

Module names follow Hugging Face's, so a checkpoint loads by name (:mod:`maaskit.lm.formats.hf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models import register_model
from .attention import Batch
from .llama import Attention, DecoderLM, GatedMLP, rms_normalized

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
        return (rms_normalized(x, self.eps) * (1.0 + self.weight.float())).to(x.dtype)


class _Layer(nn.Module):
    def __init__(self, c: Gemma3Config, layer: int):
        super().__init__()
        self.sliding = c.layer_types[layer] == SLIDING
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        # SDPA scales by head_dim ** -0.5: the queries are scaled by what makes that query_pre_attn_scalar ** -0.5
        self.self_attn = Attention(c, norm=RMSNorm, window=c.sliding_window if self.sliding else None,
                                   q_scale=math.sqrt(c.head_dim / c.query_pre_attn_scalar),
                                   out_bias=c.attention_bias)  # fmt: skip
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = GatedMLP(c, partial(F.gelu, approximate="tanh"))
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


class Gemma3(DecoderLM):
    """``Gemma3(Gemma3Config(...))``: next-token logits at every position, as the other families."""

    model: _Trunk

    def __init__(self, config: Gemma3Config):
        super().__init__(config, Gemma3Config, "gemma3", __name__, _Trunk)
        c = self.config
        # each layer kind's cos and sin of every position (not saved: a checkpoint lacks them)
        for kind, theta, factor in (("full", c.rope_theta, c.rope_factor), ("local", c.rope_local_theta, 1.0)):
            angles = _angles(c, theta, factor)
            self.register_buffer(f"{kind}_cos", angles.cos(), persistent=False)
            self.register_buffer(f"{kind}_sin", angles.sin(), persistent=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(tokens)
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)  # in the weights' dtype, as Gemma's

    def rotations(self, where: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tables = {
            kind: (getattr(self, f"{kind}_cos")[where][:, None].to(dtype),
                   getattr(self, f"{kind}_sin")[where][:, None].to(dtype))
            for kind in ("full", "local")
        }  # fmt: skip
        return [tables["local" if block.sliding else "full"] for block in self.model.layers]


def _rebuild(architecture: dict) -> Gemma3:
    config = dict(architecture["config"])
    config["layer_types"] = tuple(config["layer_types"])
    return Gemma3(Gemma3Config(**config))


register_model("gemma3", _rebuild)
