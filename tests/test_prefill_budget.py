"""The prefill budget (prompt tokens a step) a server measures on its machine: lm/runtime/backend/budget.py."""

from __future__ import annotations

import threading

import pytest
import torch

from maaskit.lm import Llama, LlamaConfig
from maaskit.lm.runtime.backend import EngineConfig, build_engine
from maaskit.lm.runtime.backend.budget import CANDIDATES, FALLBACK, fewest_within, layer_products, prefill_budget
from maaskit.lm.runtime.backend.packing import can_pack, pack_for_cpu
from maaskit.serving.config import ServeConfig

# large enough that its layers' products are packed (packing.PACK_FROM), two layers so that they repeat
SHAPE = {"vocab_size": 640, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "context": 64}  # fmt: skip
packs = pytest.mark.skipif(not can_pack(torch.float32), reason="this PyTorch has no oneDNN packed products")


def model() -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(**SHAPE)).eval()


def test_the_budget_is_the_fewest_rows_within_the_tolerance_of_the_best_time_per_row():
    per_row = {64: 2.0, 128: 1.3, 256: 1.08, 512: 1.0, 1024: 1.01, 2048: 1.05}
    assert fewest_within(per_row) == 256
    assert fewest_within(per_row, tolerance=1.05) == 512
    assert fewest_within(per_row, tolerance=1.0) == 512
    assert fewest_within({64: 1.0, 2048: 3.0}) == 64  # faster per row with fewer rows: the fewest


@packs
def test_the_layers_products_are_timed_once_per_shape_and_the_head_is_left_out():
    packed = model()
    pack_for_cpu(packed)
    shapes = sorted((p.in_features, p.out_features) for p in layer_products(packed))
    # q/k/v fused (512 + 2 x 128), o, gate/up fused, down; the head (512 x 640) is found once
    assert shapes == [(512, 512), (512, 768), (512, 2048), (1024, 512)]
    one_layer = Llama(LlamaConfig(**{**SHAPE, "num_hidden_layers": 1})).eval()
    pack_for_cpu(one_layer)
    assert len(layer_products(one_layer)) == 5  # nothing repeats: every product, the head too


@packs
def test_a_packed_model_gets_a_measured_budget_and_an_unpacked_one_the_fallback():
    packed = model()
    pack_for_cpu(packed)
    assert prefill_budget(packed, rounds=1) in CANDIDATES
    assert prefill_budget(model(), rounds=1) == FALLBACK  # nothing packed: nothing to time


@packs
def test_a_server_measures_the_budget_on_a_thread_set_up_as_the_engines_and_keeps_one_it_is_given():
    setups: list[str] = []

    def thread_setup(weights: int):
        return lambda: setups.append(threading.current_thread().name)

    engine = build_engine(model(), torch.device("cpu"), EngineConfig(), thread_setup=thread_setup)
    try:
        assert engine.prefill_chunk in CANDIDATES
        assert any(name.startswith("maaskit-lm-measure") for name in setups)
    finally:
        engine.close()
    engine = build_engine(model(), torch.device("cpu"), EngineConfig(prefill_chunk=96))
    try:
        assert engine.prefill_chunk == 96
    finally:
        engine.close()
    # a caller's own model is served as it is: nothing packed, nothing measured
    engine = build_engine(model(), torch.device("cpu"), EngineConfig(), owned=False)
    try:
        assert engine.prefill_chunk == FALLBACK
    finally:
        engine.close()


def test_the_serving_default_is_measured_and_a_given_budget_must_be_a_whole_number():
    assert ServeConfig().prefill_chunk is None and ServeConfig().engine().prefill_chunk is None
    assert ServeConfig(prefill_chunk=128).engine().prefill_chunk == 128
    with pytest.raises(ValueError, match="prefill_chunk must be a whole number"):
        ServeConfig(prefill_chunk=0)
