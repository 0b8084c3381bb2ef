"""Prefix caching: the keys and values of a prompt's first blocks, kept and reused by later prompts
that begin the same way (a system prompt, a tool list, a few-shot block).

A prompt is cut into blocks of ``block`` tokens. Each full block is named by its parent block's
number and its own tokens, so a block stands for its whole prefix (as in vLLM's automatic prefix
caching); names are compared exactly, never by a hash alone, and a name costs one block of tokens.
Its keys and values, for every layer, are kept after a prefill. A new prompt looks up its blocks in
order and stops at the first miss; the engine copies the hits into the sequence's slot (vLLM's
paged cache shares them by reference instead, through each sequence's block table) and prefills
only the rest. A block's keys and values depend on every token before it (through the layers
below), which is why a name carries its parent: a hit stands for the same whole prefix, at the same
positions, so a reused block is what the prefill would have computed (up to summation order).
Least recently used blocks go first once ``max_blocks`` are kept.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch

from ..models.attention import KVCache, SlotCache

__all__ = ["PrefixCache"]


class PrefixCache:
    """Blocks of keys and values by the hash of their prefix; ``queries`` and ``hits`` count tokens."""

    def __init__(self, max_blocks: int, block: int = 32):
        if block < 1 or max_blocks < 0:
            raise ValueError(f"a prefix cache needs block >= 1 and max_blocks >= 0, got {block}, {max_blocks}")
        self.block, self.max_blocks = block, max_blocks
        # (parent's number, tokens) -> (this block's number, keys per layer, values per layer)
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], tuple[int, list[torch.Tensor], list[torch.Tensor]]]
        self._blocks = OrderedDict()
        self._numbers = itertools.count(1)  # 0: the root, before any block
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

    def _blocks_of(self, prompt: Sequence[int], count: int) -> Iterator[tuple[int, tuple[int, ...]]]:
        """The first ``count`` full blocks of ``prompt``: (index, tokens)."""
        for i in range(min(count, len(prompt) // self.block)):
            yield i, tuple(prompt[i * self.block : (i + 1) * self.block])

    def reuse(self, prompt: Sequence[int], cache: SlotCache, slot: int) -> int:
        """Copy the cached blocks that begin ``prompt`` into ``slot``; how many tokens they cover.
        At least the prompt's last token is left to compute: its logits give the first new token."""
        if not self.max_blocks:
            return 0
        usable = (len(prompt) - 1) // self.block
        self.queries += usable * self.block
        found, parent = 0, 0
        for i, tokens in self._blocks_of(prompt, usable):
            kept = self._blocks.get((parent, tokens))
            if kept is None:
                break
            self._blocks.move_to_end((parent, tokens))
            parent, keys, values = kept
            start = i * self.block
            for layer, (k, v) in enumerate(zip(keys, values)):
                cache.keys[layer][slot, :, start : start + self.block] = k
                cache.values[layer][slot, :, start : start + self.block] = v
            found += 1
        self.hits += found * self.block
        return found * self.block

    def keep(self, prompt: Sequence[int], cache: SlotCache | KVCache, slot: int) -> None:
        """Keep the full blocks of ``prompt``, now in ``slot``, that are not kept yet."""
        if not self.max_blocks:
            return
        parent = 0
        for i, tokens in self._blocks_of(prompt, len(prompt)):
            kept = self._blocks.get((parent, tokens))
            if kept is not None:
                self._blocks.move_to_end((parent, tokens))
                parent = kept[0]
                continue
            span = slice(i * self.block, (i + 1) * self.block)
            number = next(self._numbers)
            self._blocks[(parent, tokens)] = (
                number,
                [k[slot, :, span].clone() for k in cache.keys],
                [v[slot, :, span].clone() for v in cache.values],
            )
            parent = number
            while len(self._blocks) > self.max_blocks:  # the least recently used; its children, unreachable
                self._blocks.popitem(last=False)  # now, age out after it
