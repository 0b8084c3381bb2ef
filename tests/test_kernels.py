"""maaskit's C++ attention kernel for decoding rows on a CPU (lm/runtime/backend/kernels.py), against
PyTorch's attention: the same outputs, the same cache, the same greedy tokens through the engine."""

from __future__ import annotations

import pytest
import torch
from test_engine_features import GREEDY, MODELS, A, B, C, D, run_engine

from maaskit.lm.models.attention import SlotCache
from maaskit.lm.runtime.backend import kernels
from maaskit.lm.runtime.engine import Engine, SamplingParams


@pytest.fixture(scope="module")
def built() -> None:
    kernels.load()  # built once per machine (about 15 s), then loaded from Inductor's cache folder


@pytest.mark.parametrize("heads,kv,width", [(8, 2, 64), (4, 4, 32), (6, 3, 128), (4, 2, 48)],
                         ids=["gqa-64", "mha-32", "gqa-128", "gqa-48"])  # fmt: skip
@pytest.mark.parametrize("window", [None, 5], ids=["full", "window-5"])
@pytest.mark.parametrize(
    "decodes,chunks",
    [([(2, 9)], []), ([(4, 0), (1, 17), (3, 38)], [(0, 3, 5)])],
    ids=["one row", "rows in scattered slots of different lengths, beside a chunk"],
)
@torch.inference_mode()
def test_the_kernel_gives_pytorchs_attention_and_writes_the_same_cache(built, heads, kv, width, window, decodes,
                                                                        chunks):  # fmt: skip
    """Widths of 4, 8 and 16 vectors take the kernel's register paths and 48 its plain loops; a first
    token (length 0) and the cache's last position (38 + 1 of 40) are the edges."""
    torch.manual_seed(0)
    shape = (6, kv, 40, width)
    keys, values = torch.randn(shape), torch.randn(shape)
    plain = SlotCache([keys.clone()], [values.clone()])
    fast = SlotCache([keys.clone()], [values.clone()], kernel=kernels.decode_attention)
    n = len(decodes) + sum(c[2] for c in chunks)
    q, k, v = torch.randn(1, heads, n, width), torch.randn(1, kv, n, width), torch.randn(1, kv, n, width)
    want = plain.batch(decodes, chunks).attention(0, q, k, v, gqa=heads != kv, window=window)
    got = fast.batch(decodes, chunks).attention(0, q, k, v, gqa=heads != kv, window=window)
    assert got.shape == want.shape == q.shape
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(fast.keys[0], plain.keys[0]) and torch.equal(fast.values[0], plain.values[0])


def test_the_kernel_refuses_a_slot_or_positions_outside_the_cache(built):
    keys = torch.zeros(2, 1, 8, 16)
    q = torch.zeros(1, 1, 16)
    for slot, start, end in ((2, 0, 1), (0, 0, 9), (0, 3, 3)):
        with pytest.raises(RuntimeError, match="out of the cache"):
            kernels.decode_attention(q, keys, keys, torch.tensor([slot]), torch.tensor([start]), torch.tensor([end]))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.decode_attention(q.double(), keys, keys, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_engine_gives_the_same_tokens_with_the_kernel(built, kind):
    """Greedy and sampled streams decoding side by side (different lengths, continuous batching), with
    the kernel attached to the engine's cache (as build_engine does on a CPU) and without it."""
    sampled = SamplingParams(max_tokens=8, temperature=0.8, seed=3)
    jobs = [(A, GREEDY), (B, GREEDY), (C, sampled), (D, GREEDY)]
    tokens = []
    for kernel in (False, True):
        model = MODELS[kind]()
        cache = SlotCache.empty(model, 4)
        if kernel:
            assert kernels.attach(cache).result() and cache.kernel is kernels.decode_attention
        tokens.append(run_engine(Engine(model, max_sequences=4, cache=cache), jobs, alone=1))
    assert tokens[0] == tokens[1] and all(len(t) == 8 for t in tokens[0])


def test_only_a_float32_cache_on_the_cpu_takes_the_kernel(built):
    model = MODELS["llama"]()
    cache = SlotCache.empty(model.to(torch.bfloat16), 2)
    assert kernels.attach(cache).result() is False and cache.kernel is None
