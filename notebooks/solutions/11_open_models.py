"""Notebook 11's exercises, solved."""

import torch


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def repeat_kv(kv, n_rep):
    b, heads, t, d = kv.shape
    return kv[:, :, None].expand(b, heads, n_rep, t, d).reshape(b, heads * n_rep, t, d)
