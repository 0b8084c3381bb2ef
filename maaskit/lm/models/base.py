"""What every model family shares: :class:`CausalLM`, the interface the runtime, the samplers and the
server ask of a language model, and :func:`pick` (the positions the head scores)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

__all__ = ["CausalLM", "pick"]


class CausalLM(nn.Module):
    """What the engine, the samplers and the server ask of a language model (the GPT here, the Llama
    family in :mod:`maaskit.lm.models.llama`): ``forward(tokens, cache)`` giving next-token logits, its
    ``context`` and ``vocab_size``, and the shape of its key/value cache."""

    context: int
    vocab_size: int

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head width): what a cache holds per position."""
        raise NotImplementedError

    def _checked_config(self, config: Any, kind: type[Any], name: str, module: str) -> Any:
        """``config`` once checked to be a ``kind``; kept for artifacts as ``self.maaskit_config``, with
        the registry ``name`` that rebuilds the model and the ``module`` that registers it."""
        if not isinstance(config, kind):
            raise TypeError(f"a {type(self).__name__} is built from a maaskit.lm.{kind.__name__}, "
                            f"got {type(config).__name__}")  # fmt: skip
        self.maaskit_config = {"name": name, "module": module, "config": asdict(config)}
        return config


def pick(x: torch.Tensor, select: torch.Tensor | None) -> torch.Tensor:
    """The positions the head scores: all (B x T), or with ``select`` those listed, as indices into the
    B * T tokens in order (a server's flat batch: each sequence's last), each a row of one."""
    return x if select is None else x.flatten(0, 1)[select][:, None]
