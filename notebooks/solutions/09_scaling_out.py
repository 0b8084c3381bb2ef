"""Notebook 09's exercises, solved."""


def rank_share(batch, rank, world_size):
    size = len(batch) // world_size
    return batch[rank * size : (rank + 1) * size]


def average_gradients(per_rank):
    return [sum(grads) / len(per_rank) for grads in zip(*per_rank)]
