"""Notebook 07's exercises, solved."""

import torch


def top_p_filter(logits, p):
    probs, order = logits.softmax(-1).sort(descending=True)
    before = probs.cumsum(-1) - probs  # the mass of the likelier tokens
    dropped = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before >= p)
    return logits.masked_fill(dropped, float("-inf"))


def positions_processed(prompt, new):
    with_cache = prompt + (new - 1)  # the prompt once, then each new token but the last
    without = sum(prompt + i for i in range(new))  # every step runs the whole sequence so far
    return with_cache, without
