"""The engine for real sizes: prompts prefilled in chunks beside running streams, shared prompt
prefixes reused from the prefix cache, ``min_tokens`` and ``ignore_eos``, a KV-cache budget that
sets how many sequences run, bf16 serving; and through the server, vLLM's ``/tokenize`` and
``/detokenize``, ``echo``, and the ``vllm:`` metric names. Every output is compared with plain
generation (greedy), which does none of these things."""

import asyncio
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import torch

import maaskit
from maaskit.lm import GPT, GPTConfig
from maaskit.lm.models.attention import SlotCache
from maaskit.lm.models.llama import Llama, LlamaConfig
from maaskit.lm.runtime.backend import cache_slots
from maaskit.lm.runtime.engine import Engine, SamplingParams
from maaskit.lm.runtime.generation import generate
from maaskit.lm.runtime.pace import PrefillPace
from maaskit.lm.runtime.prefix import PrefixCache
from maaskit.serving.config import ServeConfig

GREEDY = SamplingParams(max_tokens=8, temperature=0)


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, context=96, layers=2, heads=2, width=32)).eval()


def _llama():
    torch.manual_seed(0)
    shape = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, context=96)  # fmt: skip
    return Llama(shape).eval()


MODELS = {"gpt": _gpt, "llama": _llama}


def run_engine(engine: Engine, jobs, *, one_after_another: bool = False, alone: int = 0, close: bool = True):
    """Each job's tokens (``jobs``: (prompt, params)), all submitted together or one after another
    (``alone``: the first that many one after another, then the rest together); the engine is closed after,
    unless ``close=False``."""

    async def one(prompt, params):
        return [e.token async for e in engine.generate(prompt, params) if e.token is not None]

    async def main():
        first = len(jobs) if one_after_another else alone
        try:
            done = [await one(p, params) for p, params in jobs[:first]]
            return done + list(await asyncio.gather(*(one(p, params) for p, params in jobs[first:])))
        finally:
            if close:
                engine.close()

    return asyncio.run(main())


A, B, C, D = [5, 6, 7, 8, 9], list(range(20, 29)), list(range(40, 50)), list(range(60, 67))


def _two_rows_a_chunk_and_a_prompt(model):
    """Two caches alike: slots 0 and 1 hold prompts A and B, slot 2 the first 4 tokens of C. On the
    first, a pass each: slots 0 and 1 decode a token, C's other 6 tokens, D from the start in slot 3.
    Returns that cache, those passes' logits (4 rows), and the second cache, for one pass to match."""
    caches = [SlotCache.empty(model, 4) for _ in range(2)]
    for cache in caches:
        for slot, prompt in ((0, A), (1, B), (2, C[:4])):
            model(torch.tensor([prompt]), cache.prefill(slot))
    separate, other = caches
    rows = model(torch.tensor([[1, 2]]), separate.batch(decodes=[(0, 5), (1, 9)]))[0]
    chunk = model(torch.tensor([C[4:]]), separate.prefill(2, 4))[:, -1]
    whole = model(torch.tensor([D]), separate.prefill(3))[:, -1]
    return separate, torch.cat([rows, chunk, whole]), other


@pytest.mark.parametrize("kind", list(MODELS))
@torch.inference_mode()
def test_a_flat_batch_gives_the_logits_and_the_cache_of_separate_passes(kind):
    """Two rows decoding (slots 0 and 1: of different lengths) and two prompt chunks (one continuing its
    prompt, one a prompt's start) as one row of tokens in one pass, against a decode pass and a prefill
    pass each: the same logits, the same keys and values."""
    model = MODELS[kind]()
    separate, expected, flat = _two_rows_a_chunk_and_a_prompt(model)
    batch = flat.batch(decodes=[(0, 5), (1, 9)], chunks=[(2, 4, 6), (3, 0, 7)])
    assert batch.last == [0, 1, 7, 14] and batch.where.tolist() == [[5, 9, *range(4, 10), *range(7)]]
    logits = model(torch.tensor([[1, 2, *C[4:], *D]]), batch, select=torch.tensor(batch.last))[:, -1]
    assert torch.allclose(logits, expected, atol=1e-5)
    for mine, theirs in zip([*flat.keys, *flat.values], [*separate.keys, *separate.values]):
        for slot, length in enumerate((6, 10, 10, 7)):
            assert torch.allclose(mine[slot, :, :length], theirs[slot, :, :length], atol=1e-5)


@pytest.mark.parametrize("kind", list(MODELS))
def test_chunked_prefill_gives_the_tokens_whole_prompts_give(kind):
    model = MODELS[kind]()
    prompts = [list(range(1, 60)), [7, 8, 9], list(range(100, 141)), [42] * 30]
    alone = [list(generate(model, p, max_tokens=8, temperature=0)) for p in prompts]
    engine = Engine(model, max_sequences=4, prefill_chunk=7)
    assert run_engine(engine, [(p, GREEDY) for p in prompts]) == alone
    # the 59-token prompt alone needs ceil(59 / 7) = 9 steps of chunks before its first token
    assert engine.steps >= 9 + 7


class _EightTokens(PrefillPace):
    """A pace that has measured chunks of 8 tokens to be right (timings are the machine's; this is not)."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[float, int, int]] = []

    def chunk(self, limit: int, running: int) -> int:
        return min(limit, 8)

    def record(self, seconds: float, running: int, prefilled: int, waiting: int = 1) -> None:
        self.records.append((seconds, running, prefilled))


@pytest.mark.parametrize("paced", [False, True], ids=["fixed chunks", "paced chunks"])
def test_a_long_prompt_joins_running_streams_a_chunk_per_step(paced):
    """While a whole-context prompt is prefilled in chunks, the running streams get a token every step.
    Paced, the chunk is what the pace says beside running streams, and the whole limit otherwise."""
    model = _gpt()
    engine = Engine(model, max_sequences=3, prefill_chunk=64 if paced else 8, prefill_stall=1.0 if paced else None)
    if paced:
        engine.pace = _EightTokens()
    per_step: list[float] = []
    engine.listeners.append(lambda kind, value: per_step.append(value) if kind == "step" else None)
    long = list(range(1, 88))  # 87 tokens: 11 chunks of 8
    params = SamplingParams(max_tokens=30, temperature=0)

    async def main():
        async def stream(prompt):
            return [e.token async for e in engine.generate(prompt, params) if e.token is not None]

        running = asyncio.Event()  # set by the engine's third step: both streams decode
        engine.listeners.append(lambda kind, value: running.set() if kind == "step" and len(per_step) >= 3 else None)
        first = asyncio.create_task(stream([1, 2]))
        second = asyncio.create_task(stream([3, 4]))
        await asyncio.wait_for(running.wait(), 60)
        started = len(per_step)
        late = await stream(long[:60] + [5])  # joins: 61 tokens, 8 steps of chunks
        return started, await first, await second, late

    try:
        started, first, second, late = asyncio.run(main())
    finally:
        engine.close()
    assert first == list(generate(model, [1, 2], max_tokens=30, temperature=0))
    assert late == list(generate(model, long[:60] + [5], max_tokens=30, temperature=0))
    # in the 8 steps that prefilled the late prompt, each running stream got its token (2 per step)
    assert per_step[started : started + 7] == [2] * 7, per_step
    if paced:  # every step was timed; the late prompt went in 8 tokens at a time beside the two streams
        pace = engine.pace
        assert isinstance(pace, _EightTokens) and len(pace.records) == engine.steps
        assert [n for _, running, n in pace.records if running == 2 and n] == [8] * 7 + [5]


def test_the_prefill_pace_steers_the_chunk_by_the_time_steps_take():
    pace = PrefillPace(stall=1.0, floor=16, first=32)
    # beside running sequences whose decode step alone was never timed: no prompt tokens, that step times it
    assert pace.chunk(256, running=4) == 0
    pace.record(0.9, running=0, prefilled=500)  # a prompt alone: nobody waited, nothing learned
    assert pace.chunk(256, running=4) == 0 and pace.decode_s == {}
    pace.record(0.100, running=4, prefilled=0)  # decode steps of 100 ms at 4 rows
    assert pace.chunk(256, running=4) == 32 and pace.chunk(20, running=4) == 20  # then a modest first chunk
    assert pace.chunk(256, running=5) == 0  # 5 rows: timed on their own
    pace.record(0.140, running=4, prefilled=32)  # 32 tokens added 40 ms of the 100 allowed: grow, at most x2
    assert pace.chunk(256, running=4) == 64
    pace.record(0.300, running=4, prefilled=64)  # 64 tokens added 200 ms: halve
    assert pace.chunk(256, running=4) == 32
    pace.record(0.150, running=4, prefilled=32)  # 50 ms of 100: double again, never past the limit
    assert pace.chunk(256, running=4) == 64 and pace.chunk(40, running=4) == 40
    for _ in range(5):  # a chunk that costs more than a decode step whatever its size: down to the floor
        pace.record(0.250, running=4, prefilled=pace.chunk(256, running=4))
    assert pace.chunk(256, running=4) == 16
    pace.record(0.400, running=16, prefilled=0)  # 16 rows take longer: their chunk is sized against their own
    pace.record(0.500, running=16, prefilled=16)  # 100 ms of the 400 allowed: grow
    assert pace.chunk(256, running=16) == 32
    # as many sequences waiting for their first token as running ones, or more: each gets a running one's share
    pace = PrefillPace(stall=0.5, first=32)
    assert pace.share(running=8, waiting=1) == 0.5 and pace.share(running=4, waiting=8) == 2.0
    pace.record(0.100, running=4, prefilled=0)
    pace.record(0.200, running=4, prefilled=32, waiting=1)  # 100 ms added, 50 allowed: halve
    assert pace.chunk(256, running=4) == 16
    pace.record(0.200, running=4, prefilled=16, waiting=8)  # 8 waiting beside 4: 200 ms allowed, 100 taken: grow
    assert pace.chunk(256, running=4) == 32
    assert PrefillPace(stall=2.0).stall == 2.0
    with pytest.raises(ValueError, match="stall must be more than 0"):
        PrefillPace(stall=0)


def test_a_burst_of_prompts_beside_running_streams_is_not_held_at_the_floor():
    """Prompts that keep arriving beside running streams leave no step without prompt tokens: the pace
    times a decode step of those rows first (one step with none), then sizes chunks against it."""
    model = _gpt()
    engine = Engine(model, max_sequences=6, prefill_chunk=64, prefill_stall=1.0)
    records = []
    engine.watchers.append(records.append)
    prompts = [[1, 2]] + [list(range(10 + i, 50 + i)) for i in range(5)]  # one stream, then 5 prompts of 40
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def main():
        decoding = asyncio.Event()  # set by the first step that decodes a token (watchers run on the loop)
        engine.watchers.append(lambda record: decoding.set() if record.decodes else None)

        async def stream(prompt):
            return [e.token async for e in engine.generate(prompt, params) if e.token is not None]

        first = asyncio.create_task(stream(prompts[0]))
        await asyncio.wait_for(decoding.wait(), 60)
        return [await first, *await asyncio.gather(*(stream(p) for p in prompts[1:]))]

    try:
        done = asyncio.run(main())
    finally:
        engine.close()
    assert done == [list(generate(model, p, max_tokens=12, temperature=0)) for p in prompts]
    beside = [r for r in records if r.decodes and (r.chunks or r.waiting)]
    # every number of running rows had one step of their decode alone before prompt tokens joined them
    for rows in {len(r.decodes) for r in beside if r.chunks}:
        first_chunk = next(r.step for r in records if len(r.decodes) == rows and r.chunks)
        assert any(len(r.decodes) == rows and not r.chunks for r in records if r.step < first_chunk)
    assert engine.pace is not None and repr(engine.pace).startswith("PrefillPace(stall 1.0: decode steps by rows {1:")


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_prefix_cache_reuses_shared_blocks_and_changes_no_token(kind):
    model = MODELS[kind]()
    system = list(range(10, 50))  # 40 tokens: 5 blocks of 8
    prompts = [system + [1, 2, 3], system + [4, 5], system[:20] + [6, 7, 8], [9] * 12]
    alone = [list(generate(model, p, max_tokens=8, temperature=0)) for p in prompts]
    prefix = PrefixCache(max_blocks=64, block=8)
    engine = Engine(model, max_sequences=2, prefix_cache=prefix)
    assert run_engine(engine, [(p, GREEDY) for p in prompts], one_after_another=True) == alone
    # the first prompt finds nothing; the second its 5 system blocks; the third 2 blocks (16 of its
    # 20 shared tokens); the fourth nothing. Queried: full blocks before the last token of each.
    assert prefix.hits == 0 + 40 + 16 + 0
    assert prefix.queries == 40 + 40 + 16 + 8


def test_the_prefix_cache_forgets_the_least_recently_used_blocks():
    model = _gpt()
    prefix = PrefixCache(max_blocks=3, block=4)
    engine = Engine(model, max_sequences=1, prefix_cache=prefix)
    a, b = list(range(1, 14)), list(range(50, 63))  # 3 full blocks each (12 of 13 tokens)
    run_engine(engine, [(a, GREEDY), (b, GREEDY), (a, GREEDY)], one_after_another=True)
    assert len(prefix) == 3
    assert prefix.hits == 0  # b pushed a's blocks out; a found none of its own


def test_min_tokens_and_ignore_eos():
    model = _gpt()
    prompt = [5, 6, 7]
    first = next(generate(model, prompt, max_tokens=1, temperature=0))
    stop_at_first = SamplingParams(max_tokens=12, temperature=0, stop_tokens=(first,))
    engine = Engine(model, max_sequences=3)
    plain, held, ignored = run_engine(
        engine,
        [
            (prompt, stop_at_first),
            (prompt, SamplingParams(max_tokens=12, temperature=0, stop_tokens=(first,), min_tokens=5)),
            (prompt, SamplingParams(max_tokens=12, temperature=0, stop_tokens=(first,), ignore_eos=True)),
        ],
    )
    assert plain == []  # the first token is the stop token
    assert len(held) >= 5 and first not in held[:5]
    assert len(ignored) == 12 and ignored[0] == first


def test_a_kv_cache_budget_sets_how_many_sequences_run():
    model = _gpt()  # 2 layers x 2 heads x 16 wide x 96 positions x 4 bytes x 2 (keys, values) = 48 KiB a slot
    per_slot = 2 * 2 * 2 * 16 * 96 * 4
    assert cache_slots(model, 16, None) == 16
    assert cache_slots(model, 16, 3.5 * per_slot / 2**30) == 3
    with pytest.raises(ValueError, match="holds none: raise it or lower --context"):
        cache_slots(model, 16, 0.5 * per_slot / 2**30)


def test_served_with_tokenize_detokenize_echo_bf16_and_vllm_metrics(lm_dir, tiny_lm):
    _, tokenizer = tiny_lm
    text = "The quick brown fox"
    ids = tokenizer.encode(text).ids
    with maaskit.serve(lm_dir, dtype="bfloat16", kv_cache_gb=0.001, prefix_cache_gb=0.01) as running:
        served = running.repository.language_model("gpt")
        assert next(served.engine.model.parameters()).dtype == torch.bfloat16
        assert served.engine.max_sequences < 16  # the budget holds fewer slots than the default
        with httpx.Client(base_url=running.url, timeout=60) as http:
            got = http.post("/tokenize", json={"model": "gpt", "prompt": text}).json()
            assert got == {"count": len(ids), "max_model_len": 2048, "tokens": ids}
            chat = http.post("/tokenize", json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
            assert chat.json()["tokens"] == tokenizer.encode("user: hi\nassistant:").ids
            assert http.post("/detokenize", json={"model": "gpt", "tokens": ids}).json() == {"prompt": text}
            neither = http.post("/tokenize", json={"model": "gpt"})
            assert neither.status_code == 400 and neither.json()["error"]["param"] == "prompt"
            body = {"model": "gpt", "prompt": text, "max_tokens": 5, "temperature": 0, "echo": True}
            whole = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
            plain = http.post("/v1/completions", json={**body, "echo": False}).json()["choices"][0]["text"]
            assert whole == text + plain
            refused = http.post("/v1/completions", json={**body, "logprobs": 1})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "echo"
            long = " ".join(["shared system prompt words"] * 40)
            for question in ("one", "two"):
                http.post("/v1/completions", json={"model": "gpt", "prompt": long + question, "max_tokens": 2})
            metrics = http.get("/metrics").text
    for name in ("vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:num_requests_running",
                 "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):  # fmt: skip
        series = [line for line in metrics.splitlines() if line.startswith(name + "{")]
        assert series and all('model_name="gpt"' in line for line in series), name
    hits = [line for line in metrics.splitlines() if line.startswith('vllm:prefix_cache_hits_total{model_name="gpt"}')]
    assert hits and float(hits[0].split()[-1]) > 0  # the second long prompt reused the first one's blocks


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_the_engine_runs_its_steps_on_the_threads_it_is_given(lm_dir, threads):
    import os

    from maaskit.cli import build_parser
    from maaskit.serving.dataplane import ALL_CORES_FROM, ModelRepository, forward_threads

    with pytest.raises(ValueError, match="threads must be a whole number of at least 1"):
        ServeConfig(threads=0)
    assert build_parser().parse_args(["serve", "--threads", "3"]).threads == 3
    repository = ModelRepository(device="cpu", config=ServeConfig(threads=threads))
    served = repository.add(lm_dir, name="lm")
    try:  # PyTorch's thread count is per thread: ask the engine's own
        used = served.engine.call(torch.get_num_threads)
    finally:
        served.close()
    assert used == (threads or max(1, (os.cpu_count() or 2) - 1))  # a small model: all cores but one
    # a model whose steps read 32 MiB of weights or more runs its engine on every core
    assert forward_threads(weights=ALL_CORES_FROM) == (os.cpu_count() or 2)
    assert forward_threads(2, weights=ALL_CORES_FROM - 1) == max(1, ((os.cpu_count() or 2) - 1) // 2)


@pytest.mark.parametrize("first_call", ["PyTorch's", "maaskit's kernels'"])
def test_a_threads_own_count_survives_another_threads_setting_and_its_first_parallel_call(first_call):
    """PyTorch's first parallel call on a thread (once per library) sets the thread's count to the process's
    last ``torch.set_num_threads``: the engine's thread, set to 2, ran on the 1 the event loop's thread set
    after it. ``set_threads`` counts for good, and maaskit's kernels leave a thread's count as it is."""
    import threading

    from maaskit.lm.runtime.backend import kernels
    from maaskit.serving.dataplane import set_threads

    if first_call != "PyTorch's":
        kernels.load()
    blocked = torch.zeros(4, 8, 16)  # a weight of 64 x 8 in row_products.cpp's layout

    def count_on_a_thread(setter) -> int:
        set_up, other_set, counts = threading.Event(), threading.Event(), []

        def engine() -> None:
            setter(2)
            set_up.set()
            other_set.wait()
            if first_call == "PyTorch's":
                torch.ones(2**20).sum()
            else:
                torch.ops.maaskit_cpu.row_product(torch.ones(3, 8), blocked, None, 64)
            counts.append(torch.get_num_threads())

        thread = threading.Thread(target=engine)
        thread.start()
        set_up.wait()
        loop = threading.Thread(target=set_threads, args=(1,))  # as the event loop's thread does
        loop.start()
        loop.join()
        other_set.set()
        thread.join()
        return counts[0]

    assert count_on_a_thread(set_threads) == 2
    if first_call == "PyTorch's":  # what set_threads is for
        assert count_on_a_thread(torch.set_num_threads) == 1


def test_listeners_see_the_engine_empty_once_its_last_sequences_finished():
    # /metrics sets its gauges from these calls: after the last step they must read none running, not
    # stay one step stale while the engine sleeps (clients that vanished were seen as still running)
    engine = Engine(_gpt(), max_sequences=2)
    seen = []
    engine.listeners.append(lambda kind, value: seen.append((kind, engine.running, engine.slots_in_use)))
    done = run_engine(engine, [([5, 6, 7], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))] * 3)
    assert [len(tokens) for tokens in done] == [4, 4, 4]
    steps = [(running, slots) for kind, running, slots in seen if kind == "step"]
    assert (2, 2) in steps and steps[-1] == (0, 0)


def _large_llama():
    """A Llama whose products are large enough to be packed (lm/runtime/backend/packing.py: PACK_FROM elements)."""
    torch.manual_seed(0)
    shape = LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2, head_dim=64, context=96)  # fmt: skip
    return Llama(shape).eval()


@pytest.mark.slow  # each graph takes Inductor a while to build on 2 cores
@pytest.mark.parametrize(
    "make, packs",
    [
        # the products packed (oneDNN), called from the graphs as opaque operations, q/k/v and gate/up fused
        (_large_llama, True),
        # a tiny GPT's graphs (its products too small to pack: column-major, Inductor's own)
        pytest.param(_gpt, False, marks=pytest.mark.nightly),
    ],
    ids=["llama", "gpt"],
)
def test_a_compiled_step_gives_eager_tokens_and_compiles_only_while_warming_up(make, packs, tmp_path, monkeypatch):
    from maaskit.lm.runtime.backend.packing import PackedLinear, pack_for_cpu

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # built here, read again below
    model = make()
    prompts = [[5, 6, 7], [8], list(range(20, 41)), [9] * 12, list(range(60, 66)), [3, 1, 4, 1, 5], [2] * 30]
    # the 12-token prompt runs longest: the last prompt joins it when the others are done
    jobs = [(p, SamplingParams(max_tokens=20 if len(p) == 12 else 10, temperature=0, ignore_eos=True)) for p in prompts]
    eager = run_engine(Engine(model, max_sequences=4), jobs)
    assert (pack_for_cpu(model, rows=4) > 0) == packs  # as a server does, before its engine is made
    engine = Engine(model, max_sequences=4, compile=True)  # compiles in the background
    # the engine serves at once, with the eager pass, while its graphs are built
    assert run_engine(engine, jobs[:1], close=False) == eager[:1]
    assert engine.compiling is not None
    engine.compiling.result()  # built: the compiled pass serves from the next step
    assert (engine.runner.forward.opaque_products > 0) == packs  # the graphs call the model's own packed products

    @torch.inference_mode()
    def gaps() -> list[float]:  # on the engine's thread: a graph is guarded by the thread count it was built with
        found = []
        for decodes, chunks in (
            ([(0, 30)], []),  # one row
            ([(1, 12), (3, 40)], []),  # rows of two lengths, slots apart
            ([(0, 50), (1, 50), (2, 50), (3, 50)], []),  # rows of one length, consecutive slots
            ([], [(2, 0, 4)]),  # a prompt alone
            ([(0, 20)], [(3, 9, 40), (1, 0, 5)]),  # a row beside two chunks
        ):
            tokens = torch.randint(0, 200, (1, sum(1 for _ in decodes) + sum(n for *_, n in chunks)))
            batch = engine.cache.batch(decodes, chunks)  # the same positions written again by each
            select = torch.tensor(batch.last)
            expected = model(tokens, batch, select=select)
            got = engine.runner.forward(tokens, engine.cache.batch(decodes, chunks), select)
            found.append(float((got - expected).abs().max()))
        return found  # what these wrote, the jobs below overwrite before they read it

    # then 1 to 4 rows, of one length and of several, consecutive slots and not, and prompts of any
    # length, alone (the first two jobs: 3 tokens, then 1) or joining running ones: no graph is built again
    if packs:  # each packed product runs once a step: a fused q/k/v or gate/up product's parts merged into one call

        @torch.inference_mode()
        def one_step() -> None:
            batch = engine.cache.batch([(0, 5), (1, 7)], [(2, 0, 3)])
            engine.runner.forward(torch.zeros(1, batch.tokens, dtype=torch.long), batch, torch.tensor(batch.last))

        @torch.inference_mode()
        def one_row() -> None:
            batch = engine.cache.batch([(0, 5)], [])
            engine.runner.forward(torch.zeros(1, 1, dtype=torch.long), batch, torch.tensor(batch.last))

        def calls(step, op="maaskit_cpu::packed_linear") -> int:  # as the profiler records the operations
            def run() -> int:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                    step()
                return sum(e.count for e in profile.key_averages() if e.key == op)

            return engine.call(run)

        products = engine.runner.forward.opaque_products
        # a few rows: each float32 product by maaskit's row kernel, on its weight in column blocks
        blocked = sum(m.blocked is not None for m in model.modules() if isinstance(m, PackedLinear))
        assert blocked == (products if next(model.parameters()).dtype == torch.float32 else 0)
        for step in (one_step, one_row):
            assert calls(step) == products
            assert calls(step, "maaskit_cpu::row_product") == blocked
    threads = engine.call(torch.get_num_threads)  # the graphs' thread count: part of their cache key
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert max(engine.call(gaps)) < 1e-4
        compiled = run_engine(engine, jobs, alone=2)
    assert compiled == eager

    # a second start of a model of the same shapes (its weights' values are not in the graphs) reads the
    # three graphs from Inductor's on-disk cache instead of building them
    again = subprocess.run(
        [sys.executable, "-c", SECOND_START.format(make=make.__name__, threads=threads)],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(Path(__file__).parent)}, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split() == ["3", "from", "the", "cache"], again.stderr[-3000:]


SECOND_START = """
import torch
from test_engine_features import {make}
from maaskit.lm.runtime.backend.compiled import CompiledForward
from maaskit.lm.runtime.backend.packing import pack_for_cpu

torch.set_num_threads({threads})
model = {make}()
pack_for_cpu(model, rows=4)
compiled = CompiledForward(model)
compiled.warm_up(4)
print(compiled.cached_graphs, "from the cache")
"""


def test_each_step_is_recorded_for_watchers_and_the_engine_scope_draws_it():
    """Two streams decode while a long prompt joins in chunks of 8: the records say so step by step, the
    cache's use rises and falls back to nothing, and EngineScope draws both kinds of cell and the cache."""
    from maaskit.widgets import EngineScope

    model = _gpt()
    engine = Engine(model, max_sequences=3, prefill_chunk=8)
    records = []
    engine.watchers.append(records.append)
    scope = EngineScope(engine, steps=200)
    long = list(range(1, 41))  # 40 tokens: 5 chunks of 8

    async def main():
        started = asyncio.Event()

        async def stream(prompt, tokens):
            params = SamplingParams(max_tokens=tokens, temperature=0)
            return [e.token async for e in engine.generate(prompt, params) if not started.set() and e.token is not None]

        async def joining():
            await started.wait()  # the two streams are decoding
            return await stream(long, 4)

        return await asyncio.gather(stream([1, 2], 20), stream([3, 4], 20), joining())

    try:
        first, _, late = asyncio.run(main())
    finally:
        engine.close()
    assert first == list(generate(model, [1, 2], max_tokens=20, temperature=0))
    assert late == list(generate(model, long, max_tokens=4, temperature=0))
    assert [r.step for r in records] == list(range(1, engine.steps + 1))
    joined = [r for r in records if any(n == 8 for _, n in r.chunks)]
    assert len(joined) == 5 and all(len(r.decodes) == 2 for r in joined)  # each chunk beside both streams
    assert max(r.cache_tokens for r in records) >= 40 and records[-1].cache_tokens == 0
    assert records[-1].cache_capacity == 3 * model.context
    assert scope.totals["steps"] == len(records) and scope.totals["most_running"] == 3
    svg = scope.svg()
    assert 'class="maaskit-prefill"' in svg and 'class="maaskit-decode"' in svg and "maaskit-cache" in svg
    assert "steps seen" in str(scope) and scope.still_png().startswith(b"\x89PNG")
    scope.close()
    assert engine.watchers == [records.append]


@pytest.mark.slow  # Inductor builds the graphs on 2 cores
def test_maaskit_serve_compiles_in_the_background_by_default_and_answers_meanwhile(lm_dir, monkeypatch):
    """With no flag, `maaskit serve` answers at once (the eager pass) while it compiles, then serves the same
    tokens through the compiled pass, and /metrics says when it does."""
    from conftest import start_cli, wait_for

    monkeypatch.delenv("MAASKIT_COMPILE")  # the suite's servers serve eagerly (conftest.py): this one is the default

    def compiled(url: str) -> bool:
        lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
        return 'maaskit_lm_compiled{model="gpt"} 1.0' in lines

    body = {"model": "gpt", "prompt": "The list", "max_tokens": 12, "temperature": 0}
    process, url, lines = start_cli(str(lm_dir))
    try:
        eager = httpx.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
        assert 'maaskit_lm_compiled{model="gpt"} 0.0' in httpx.get(url + "/metrics", timeout=10).text.splitlines()
        wait_for(partial(compiled, url), "the compiled forward pass to serve", seconds=900)
        assert httpx.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"] == eager
    finally:
        process.terminate()
        process.wait(60)
    assert eager, "".join(lines)
