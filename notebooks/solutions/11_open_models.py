"""Notebook 11's exercises, solved."""

import torch


def kv_cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_value):
    return 2 * layers * kv_heads * head_dim * tokens * bytes_per_value  # a key and a value


def rope_angles(position, head_dim, theta):
    speeds = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return position * speeds
