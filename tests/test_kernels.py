"""maaskit's C++ for a server's CPU (lm/runtime/backend/kernels.py): the attention kernel for decoding rows
against PyTorch's attention (the same outputs, the same cache, the same greedy tokens through the engine),
the product of a few rows against ``F.linear``, and the packed products a compiled graph calls by number
against the layers they came from."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_engine_features import GREEDY, MODELS, A, B, C, D, run_engine

from maaskit.lm.models.attention import SlotCache
from maaskit.lm.runtime.backend import kernels
from maaskit.lm.runtime.engine import Engine, SamplingParams


@pytest.fixture(scope="module")
def built() -> None:
    kernels.load()  # built once per machine (about half a minute), then loaded from its folder in milliseconds


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


def test_only_a_float32_cache_on_the_cpu_takes_the_kernel_and_only_where_a_compiler_builds_it(built, monkeypatch,
                                                                                             tmp_path):  # fmt: skip
    monkeypatch.setenv("MAASKIT_KERNELS_DIR", str(tmp_path))
    assert kernels.folder() == tmp_path  # where a build would go
    model = MODELS["llama"]()
    cache = SlotCache.empty(model.to(torch.bfloat16), 2)
    assert kernels.attach(cache).result() is False and cache.kernel is None
    # a machine without a C++ compiler (and nothing built yet in this process): PyTorch's attention serves
    monkeypatch.setattr(kernels, "_loaded", [])
    monkeypatch.setattr(kernels, "compiler", lambda: None)
    cache = SlotCache.empty(model.float(), 2)
    assert kernels.attach(cache).result() is False and cache.kernel is None


@pytest.mark.parametrize("out", [768, 1000, 5], ids=["whole blocks", "a part block", "one part block"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@torch.inference_mode()
def test_the_row_kernel_gives_f_linear_at_every_row_count_and_refuses_what_it_cannot_read(built, out, bias):
    """1-17 rows (every remainder of its groups of four), leading dimensions kept, a non-contiguous input;
    a last block of fewer than 16 columns writes only its own."""
    import torch.nn.functional as F

    from maaskit.lm.runtime.backend.packing import lay_out

    torch.manual_seed(0)
    weight, b = torch.randn(out, 96), torch.randn(out) if bias else None
    blocked = lay_out(weight)
    for rows in range(1, 18):
        x = torch.randn(1, rows, 96)
        y = torch.ops.maaskit_cpu.row_product(x, blocked, b, out)
        assert y.shape == (1, rows, out)
        torch.testing.assert_close(y, F.linear(x, weight, b), atol=1e-4, rtol=1e-4)
    x = torch.randn(96, 3).t()  # 3 rows, not contiguous
    torch.testing.assert_close(torch.ops.maaskit_cpu.row_product(x, blocked, b, out), F.linear(x, weight, b),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.maaskit_cpu.row_product(torch.randn(2, 95), blocked, b, out)
    with pytest.raises(RuntimeError, match="blocks of 16 columns"):
        torch.ops.maaskit_cpu.row_product(torch.randn(2, 96), weight, b, out)
    with pytest.raises(RuntimeError, match="float32 only"):
        torch.ops.maaskit_cpu.row_product(torch.randn(2, 96).double(), blocked, b, out)
    with pytest.raises(RuntimeError, match="out features"):
        torch.ops.maaskit_cpu.row_product(torch.randn(2, 96), blocked, None, out + 16)


@torch.inference_mode()
def test_a_packed_layer_runs_the_row_kernel_at_a_few_rows_and_onednn_beyond(built):
    """The same values either way; the row kernel only up to ROW_PRODUCT_ROWS rows (a profile of the
    layer's calls says which ran)."""
    from torch import nn

    from maaskit.lm.runtime.backend.packing import ROW_PRODUCT_ROWS, PackedLinear

    torch.manual_seed(0)
    linear = nn.Linear(256, 300)
    packed = PackedLinear(linear, 4)
    for rows, kernel in ((1, "maaskit_cpu::row_product"), (ROW_PRODUCT_ROWS, "maaskit_cpu::row_product"),
                         (ROW_PRODUCT_ROWS + 1, "mkldnn::_linear_pointwise")):  # fmt: skip
        x = torch.randn(rows, 256)
        with torch.profiler.profile() as profile:
            y = packed(x)
        names = {event.name for event in profile.events()}
        assert kernel in names and not {"maaskit_cpu::row_product", "mkldnn::_linear_pointwise"} - {kernel} & names
        torch.testing.assert_close(y, linear(x), atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_packed_products_are_looked_up_by_number_in_the_set_a_thread_uses(built):
    """What a compiled step's graph calls (lm/runtime/backend/compiled.py): each product by its number, in
    the set registered for its model; the row kernel at up to the set's row count where the product has
    its weight in blocks, oneDNN's product beyond (padded to its row count where that is set); an error,
    not a crash, with no set in use, a number out of the set, or a released set."""
    from torch import nn

    from maaskit.lm.runtime.backend.packing import PackedLinear

    torch.manual_seed(0)
    linears = [nn.Linear(512, 768), nn.Linear(512, 1024, bias=False)]
    packed = [PackedLinear(linear, 4) for linear in linears]
    packed[1].min_rows = 4
    ops = torch.ops.maaskit_cpu

    def run(*calls, profile=None):  # on a thread of its own: no set in use there until it says which
        def calls_in_turn():
            with profile or contextlib.nullcontext():
                return [call() for call in calls]

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(calls_in_turn).result()

    blocked = [packed[0].blocked, None]  # the first with its weight in blocks, the second oneDNN's only
    handle = ops.register_products([p.packed for p in packed], [p.bias for p in packed],
                                   [p.min_rows for p in packed], blocked, 2)  # fmt: skip
    for rows in (1, 3, 5):
        x = torch.randn(1, rows, 512)
        profile = torch.profiler.profile()
        got = run(lambda: ops.use_products(handle), lambda x=x: ops.packed_linear(x, 0, 768),
                  lambda x=x: ops.packed_linear(x, 1, 1024), profile=profile)[1:]  # fmt: skip
        ran = [event.name for event in profile.events()]
        assert ran.count("maaskit_cpu::row_product") == (rows <= 2)
        for y, linear in zip(got, linears):
            assert y.shape == (1, rows, linear.out_features)
            assert torch.allclose(y, linear(x), atol=1e-5)
    x = torch.randn(2, 512)
    with pytest.raises(RuntimeError, match="no products in use"):
        run(lambda: ops.packed_linear(x, 0, 768))
    with pytest.raises(RuntimeError, match="no product 2"):
        run(lambda: ops.use_products(handle), lambda: ops.packed_linear(x, 2, 768))
    ops.release_products(handle)
    with pytest.raises(RuntimeError, match="no product 0"):
        run(lambda: ops.use_products(handle), lambda: ops.packed_linear(x, 0, 768))


@torch.inference_mode()
def test_a_layer_keeps_no_blocks_where_the_row_kernel_cannot_be_built(monkeypatch):
    """No C++ compiler and no kernels loaded: no second copy of the weight, and oneDNN's product at any row count."""
    from torch import nn

    from maaskit.lm.runtime.backend.packing import PackedLinear

    monkeypatch.setattr(kernels, "compiler", lambda: None)
    monkeypatch.setattr(kernels, "loaded", lambda: False)
    linear = nn.Linear(64, 40)
    layer = PackedLinear(linear, 4)
    assert layer.blocked is None
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-5)
