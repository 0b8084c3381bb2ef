"""Notebook 01's exercises, solved."""

import torch


def softmax_rows(z):
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)  # the largest exponent is exp(0) = 1
    return e / e.sum(dim=1, keepdim=True)


def count_parameters(sizes):
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
