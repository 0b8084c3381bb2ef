"""Prefix caching: the keys and values of a prompt's first blocks, kept and reused by later prompts
that begin the same way (a system prompt, a tool list, a few-shot block).

A prompt is cut into blocks of ``block`` tokens. Each full block is named by every token up to its
end (so a block stands for its whole prefix, as in vLLM's automatic prefix caching; the dictionary
compares the tokens themselves on a hit, so two prefixes never share a block by a hash collision), and
its keys and values, for every layer, are kept after a prefill. A new prompt looks up its blocks in
order and stops at the first miss; the engine copies the hits into the sequence's slot and
prefills only the rest. Keys and values depend on the tokens and their positions only, and a
prefix is always at positions 0.., so a reused block is what the prefill would have computed.
Least recently used blocks go first once ``max_blocks`` are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from .model import KVCache, SlotCache

__all__ = ["PrefixCache"]


class PrefixCache:
    """Blocks of keys and values by the hash of their prefix; ``queries`` and ``hits`` count tokens."""

    def __init__(self, max_blocks: int, block: int = 32):
        if block < 1 or max_blocks < 0:
            raise ValueError(f"a prefix cache needs block >= 1 and max_blocks >= 0, got {block}, {max_blocks}")
        self.block, self.max_blocks = block, max_blocks
        self._blocks: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of those, tokens found

    @classmethod
    def sized(cls, cache: SlotCache, budget_bytes: int, block: int = 32) -> PrefixCache:
        """As many blocks as ``budget_bytes`` holds, for a model whose slots ``cache`` holds."""
        return cls(budget_bytes // max(1, cls.block_bytes(cache, block)), block)

    @staticmethod
    def block_bytes(cache: SlotCache, block: int) -> int:
        k = cache.keys[0]
        return 2 * len(cache.keys) * k.shape[1] * block * k.shape[3] * k.element_size()

    def __len__(self) -> int:
        return len(self._blocks)

    def _names(self, prompt: Sequence[int]) -> list[tuple[int, ...]]:
        """The name of each full block of ``prompt``: all the tokens up to its end."""
        tokens = tuple(prompt)
        return [tokens[:end] for end in range(self.block, len(tokens) + 1, self.block)]

    def reuse(self, prompt: Sequence[int], cache: SlotCache, slot: int) -> int:
        """Copy the cached blocks that begin ``prompt`` into ``slot``; how many tokens they cover.
        At least the prompt's last token is left to compute: its logits give the first new token."""
        if not self.max_blocks:
            return 0
        usable = (len(prompt) - 1) // self.block
        self.queries += usable * self.block
        found = 0
        for name in self._names(prompt)[:usable]:
            kept = self._blocks.get(name)
            if kept is None:
                break
            self._blocks.move_to_end(name)
            start = found * self.block
            for layer, (k, v) in enumerate(zip(*kept)):
                cache.keys[layer][slot, :, start : start + self.block] = k
                cache.values[layer][slot, :, start : start + self.block] = v
            found += 1
        self.hits += found * self.block
        return found * self.block

    def keep(self, prompt: Sequence[int], cache: SlotCache | KVCache, slot: int) -> None:
        """Keep the full blocks of ``prompt``, now in ``slot``, that are not kept yet."""
        if not self.max_blocks:
            return
        for i, name in enumerate(self._names(prompt)):
            if name in self._blocks:
                self._blocks.move_to_end(name)
                continue
            span = slice(i * self.block, (i + 1) * self.block)
            self._blocks[name] = (
                [k[slot, :, span].clone() for k in cache.keys],
                [v[slot, :, span].clone() for v in cache.values],
            )
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
