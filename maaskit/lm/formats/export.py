"""Scaling out: a maaskit GPT as a complete Hugging Face folder in the GPT-2 layout, which existing
LLM engines load (``transformers``, vLLM, Text Generation Inference, llama.cpp's converter), and
chat with exactly as maaskit does: the chat template (Jinja) writes the prompt maaskit's chat format
or plain template writes, ``generation_config.json`` lists the tokens that end a reply, and
``config.json`` says the dtype.

The architectures are the same network: token and position embeddings, pre-norm blocks with one
``c_attn`` projection for queries, keys and values, a GELU MLP, a final norm and a tied head.
Two differences are bridged here: GPT-2 stores its projections as ``Conv1D`` (the weight
transposed), and maaskit's GELU is the exact one (``activation_function: "gelu"``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..models.gpt import GPT
from .chat import ChatFormat
from .tokenizer import ENDOFTEXT

__all__ = ["CHATML_TEMPLATE", "PLAIN_TEMPLATE", "VLLM_CPU_HEAD_SIZES", "export_gpt2"]

# the head widths vLLM's CPU attention runs (others: "Unsupported CPU attention configuration")
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)

# maaskit.lm.formats.text.chat_prompt, in Jinja: each message as "role: content", then "assistant:"
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{{ message['content'] if message['content'] is string else '' }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# maaskit.lm.formats.chat.ChatFormat.encode, in Jinja: the tools by name, each turn between its role's
# token and <|end|>, an assistant's tool calls as <|call|> and compact JSON
CHATML_TEMPLATE = (
    "{% set marks = {'system': '<|system|>', 'developer': '<|system|>', 'user': '<|user|>', "
    "'assistant': '<|assistant|>', 'tool': '<|tool|>'} %}"
    "{% if tools %}<|tools|>{% for tool in tools %}{{ (tool['function'] or tool)['name'] }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}{{ marks[message['role']] }}"
    "{{ message['content'] if message['content'] is string else '' }}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "<|call|>{{ {'name': (call['function'] or call)['name'], 'arguments': (call['function'] or call)['arguments']}"
    " | tojson(separators=(',', ':')) }}{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


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
    """Write a Hugging Face folder in GPT-2's layout: ``config.json``, ``model.safetensors``,
    ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and
    ``generation_config.json`` (the stop tokens); ``transformers.GPT2LMHeadModel.from_pretrained``
    gives the same logits, and ``apply_chat_template`` the same prompt. Warns when vLLM's CPU
    backend could not run the shape."""
    from safetensors.torch import save_file

    if not isinstance(model, GPT):
        raise TypeError(f"export_gpt2 takes a maaskit GPT, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    end, shape = tokenizer.token_to_id(ENDOFTEXT), model.config
    if shape.head_width not in VLLM_CPU_HEAD_SIZES:
        warnings.warn(
            f"heads of width {shape.head_width} ({shape.width} / {shape.heads} heads): vLLM's CPU backend runs "
            f"heads of {', '.join(map(str, VLLM_CPU_HEAD_SIZES))} only; train with fewer, wider heads "
            f"(maaskit lm train --heads {shape.width // 32 or 1}) to serve this model there",
            stacklevel=2,
        )
    chat = ChatFormat.supports(tokenizer)
    stops = [end, tokenizer.token_to_id("<|end|>")] if chat else [end]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
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
        "torch_dtype": dtype,
    }
    files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": end, "eos_token_id": stops, "max_length": shape.context},
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": ENDOFTEXT,
            "eos_token": "<|end|>" if chat else ENDOFTEXT,
            "pad_token": ENDOFTEXT,
            "model_max_length": shape.context,
            "add_bos_token": False,
            "chat_template": CHATML_TEMPLATE if chat else PLAIN_TEMPLATE,
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=1))
    save_file(_gpt2_state(model), directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
