"""Scaling out: a maaskit GPT in the Hugging Face GPT-2 layout, which existing LLM engines load
(``transformers``, vLLM, Text Generation Inference, llama.cpp's converter).

The architectures are the same network: token and position embeddings, pre-norm blocks with one
``c_attn`` projection for queries, keys and values, a GELU MLP, a final norm and a tied head.
Two differences are bridged here: GPT-2 stores its projections as ``Conv1D`` (the weight
transposed), and maaskit's GELU is the exact one (``activation_function: "gelu"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .model import GPT
from .tokenizer import ENDOFTEXT

__all__ = ["export_gpt2"]


def _gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.tokens.weight,
        "transformer.wpe.weight": model.positions.weight,
        "transformer.ln_f.weight": model.norm.weight,
        "transformer.ln_f.bias": model.norm.bias,
    }
    for i, block in enumerate(model.blocks):
        pre = f"transformer.h.{i}."
        attention, mlp = block.attention, block.mlp
        assert isinstance(attention, torch.nn.Module) and isinstance(mlp, torch.nn.Sequential)
        layers = {
            "ln_1": block.norm1,
            "ln_2": block.norm2,
            "attn.c_attn": attention.qkv,
            "attn.c_proj": attention.out,
            "mlp.c_fc": mlp[0],
            "mlp.c_proj": mlp[2],
        }
        for name, layer in layers.items():
            assert isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm))
            weight = layer.weight.t() if isinstance(layer, torch.nn.Linear) else layer.weight  # Conv1D: in x out
            state[pre + name + ".weight"] = weight
            state[pre + name + ".bias"] = layer.bias
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def export_gpt2(model: GPT, tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` in GPT-2's Hugging Face
    layout; ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` gives the same logits."""
    from safetensors.torch import save_file

    if not isinstance(model, GPT):
        raise TypeError(f"export_gpt2 takes a maaskit GPT, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    end, shape = tokenizer.token_to_id(ENDOFTEXT), model.config
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": shape.vocab_size,
        "n_positions": shape.context,
        "n_embd": shape.width,
        "n_layer": shape.layers,
        "n_head": shape.heads,
        "n_inner": 4 * shape.width,
        "activation_function": "gelu",
        "layer_norm_epsilon": model.norm.eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": end,
        "eos_token_id": end,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    save_file(_gpt2_state(model), directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
