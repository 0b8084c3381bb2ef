"""maaskit.lm: the GPT, its KV cache, the tokenizer and generation (issue 10, first part)."""

import math
import time
from dataclasses import asdict

import pytest
import torch

import maaskit
from maaskit.lm import (
    ENDOFTEXT,
    GPT,
    Generation,
    GPTConfig,
    KVCache,
    generate,
    load_corpus,
    load_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, context=64, layers=2, heads=2, width=32)).eval()


def test_a_gpt_is_built_from_its_config_and_predicts_every_next_token(model):
    assert model.maaskit_config == {"name": "gpt", "module": "maaskit.lm.models.gpt", "config": asdict(model.config)}
    assert isinstance(maaskit.models.rebuild(model.maaskit_config), GPT)  # registered by maaskit.lm.models.gpt
    assert model.head.weight is model.tokens.weight  # tied embedding
    logits = model(torch.randint(300, (3, 10)))
    assert logits.shape == (3, 10, 300)
    # causal: a later token never changes an earlier position's logits
    x = torch.randint(300, (1, 10))
    y = x.clone()
    y[0, 7:] = (y[0, 7:] + 1) % 300
    torch.testing.assert_close(model(x)[0, :7], model(y)[0, :7])
    with pytest.raises(ValueError, match="65 tokens do not fit the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"width \(30\) must be a multiple of heads \(4\)"):
        GPTConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown model 'gpt'; expected one of mlp, lenet, resnet"):
        maaskit.build_model("gpt", (1, 8, 8), 300)  # the image factory builds images' models only
    with pytest.raises(TypeError, match="built from a maaskit.lm.GPTConfig"):
        GPT(300)  # type: ignore[arg-type]


def test_the_kv_cache_gives_the_logits_of_the_full_pass(model):
    x = torch.randint(300, (2, 20))
    full = model(x)
    cache = KVCache.empty(model, batch=2)
    parts = [model(x[:, :12], cache), *(model(x[:, i : i + 1], cache) for i in range(12, 20))]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    assert cache.length == 20


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "top_k": 20, "seed": 3}])
def test_cached_generation_gives_exactly_the_tokens_of_uncached(model, sampling):
    prompt = [5, 17, 42]
    fast = list(generate(model, prompt, max_tokens=30, cache=True, **sampling))
    slow = list(generate(model, prompt, max_tokens=30, cache=False, **sampling))
    assert fast == slow and len(fast) == 30


def test_sampling_is_reproducible_with_a_seed_and_filtered_by_top_k_and_top_p(model):
    prompt = [1, 2, 3]
    a = list(generate(model, prompt, max_tokens=20, temperature=1.0, seed=7))
    assert a == list(generate(model, prompt, max_tokens=20, temperature=1.0, seed=7))
    assert a != list(generate(model, prompt, max_tokens=20, temperature=1.0, seed=8))
    greedy = list(generate(model, prompt, max_tokens=20, temperature=0))
    assert list(generate(model, prompt, max_tokens=20, temperature=1.5, top_k=1, seed=1)) == greedy
    assert list(generate(model, prompt, max_tokens=20, temperature=1.5, top_p=1e-6, seed=1)) == greedy


def test_batched_sampling_follows_each_rows_distribution_and_settings():
    from maaskit.lm.runtime.generation import sample_rows

    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log().repeat(1000, 1)
    uniform = (torch.arange(1000) + 0.5) / 1000  # an even grid: counts equal the probabilities exactly
    ones = torch.ones(1000)
    counts = sample_rows(logits, ones, torch.zeros(1000, dtype=torch.long), ones, uniform).bincount(minlength=4)
    assert counts.tolist() == [500, 250, 150, 100]
    # rows with different settings in one batch: top-k 2, top-p 0.6 (keeps 0.5 and 0.25), greedy, plain
    rows = probs.log().repeat(4, 1)
    t = torch.tensor([1.0, 1.0, 0.0, 1.0])
    k = torch.tensor([2, 0, 0, 0])
    p = torch.tensor([1.0, 0.6, 1.0, 1.0])
    u = torch.full((4,), 0.99)  # the top of each row's filtered distribution
    batched = sample_rows(rows, t, k, p, u).tolist()
    assert batched == [1, 1, 0, 3]
    alone = [sample_rows(*(x[i : i + 1] for x in (rows, t, k, p, u))).item() for i in range(4)]
    assert alone == batched  # each row alone picks what it picked in the batch


def test_generation_says_why_it_stopped(model):
    done = Generation()
    tokens = list(generate(model, [1, 2], max_tokens=5, temperature=0, result=done))
    assert done.tokens == tokens and len(tokens) == 5 and done.finish_reason == "length"
    first = tokens[0]  # the greedy choice: stop there
    stopped = Generation()
    assert list(generate(model, [1, 2], temperature=0, stop_tokens=[first], result=stopped)) == []
    assert stopped.finish_reason == "stop"
    near_end = Generation()
    out = list(generate(model, list(range(60)), max_tokens=50, temperature=0, result=near_end))
    assert len(out) == 4 and near_end.finish_reason == "length"  # the context, not max_tokens, ended it
    for bad, message in [
        ({"temperature": -1}, "temperature must be between 0 and 2"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            list(generate(model, [1], **bad))
    with pytest.raises(ValueError, match="the prompt has 64 tokens; the model's context is 64"):
        list(generate(model, list(range(64))))


def test_the_tokenizer_round_trips_any_text_and_saves_as_json(tmp_path):
    corpus = load_corpus()
    assert len(corpus) > 300_000 and "def" in corpus  # the Python documentation topics, offline
    tokenizer = train_tokenizer([corpus[:200_000]], vocab_size=400)
    assert tokenizer.get_vocab_size() == 400 and tokenizer.token_to_id(ENDOFTEXT) is not None
    for text in ["for x in range(10):\n    print(x)", "naïve café — 日本語 🙂", ""]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    common = tokenizer.encode("the function returns").ids
    assert len(common) < len("the function returns")  # merges learned: fewer tokens than characters
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode("import os").ids == tokenizer.encode("import os").ids
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(["x"], vocab_size=100)


def test_a_corpus_file_is_read_as_utf8_with_clear_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello wörld", encoding="utf-8")
    assert load_corpus(tmp_path / "a.txt") == "hello wörld"
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_corpus(tmp_path / "b.txt")
    with pytest.raises(FileNotFoundError, match="no corpus file"):
        load_corpus(tmp_path / "missing.txt")


# --- training with fit, artifacts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def text_data():
    from maaskit.lm import TextDataset

    return TextDataset.from_text(load_corpus()[:60_000], vocab_size=300, context=32)


def test_fit_trains_a_gpt_on_text_and_the_validation_loss_falls(text_data, tmp_path):
    from maaskit.lm import SampleText

    maaskit.seed_everything(0)
    model = GPT(GPTConfig(vocab_size=text_data.vocab_size, context=32, layers=1, heads=2, width=32))
    sampler = SampleText(every=1e9)
    history = maaskit.fit(
        model, text_data, optimizer="adamw", lr=3e-3, epochs=2, batch_size=32, callbacks=[sampler], device="cpu"
    )
    assert len(history) == 2 and history["val_loss"][1] < history["val_loss"][0] < 5.7  # ln(300) = 5.70
    # a language model's metrics: perplexity (exp of the loss per token) and throughput in tokens
    assert history["val_perplexity"] == pytest.approx([math.exp(v) for v in history["val_loss"]])
    assert "tokens_per_s" in history and "images_per_s" not in history
    assert [step for step, _ in sampler.samples] == [history[0]["step"], history[1]["step"]]
    assert all(text.startswith("The ") for _, text in sampler.samples)
    # checkpoints keep the tied head and resume
    history2 = maaskit.fit(
        model, text_data, epochs=3, batch_size=32, device="cpu", callbacks=[maaskit.Checkpoint(tmp_path / "ck")]
    )
    assert len(history2) == 3
    fresh = GPT(GPTConfig(vocab_size=text_data.vocab_size, context=32, layers=1, heads=2, width=32))
    resumed = maaskit.fit(fresh, text_data, epochs=3, batch_size=32, device="cpu", resume_from=tmp_path / "ck")
    assert len(resumed) == 3 and fresh.head.weight is fresh.tokens.weight
    torch.testing.assert_close(fresh.tokens.weight, model.tokens.weight)


def test_a_text_dataset_checks_its_arguments(text_data):
    from maaskit.lm import TextDataset

    with pytest.raises(ValueError, match="fewer than a window of 64"):
        TextDataset.from_text("a short text. " * 5, vocab_size=300, context=64)
    with pytest.raises(ValueError, match="augment is for images"):
        text_data.loader("train", augment=True)
    with pytest.raises(ValueError, match="a TextDataset has train and val"):
        text_data.loader("test")
    x, y = next(iter(text_data.loader("val", batch_size=4, device="cpu")))
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])  # the next token of each


def test_a_language_model_artifact_keeps_its_tokenizer_and_checks_both_hashes(text_data, tmp_path):
    from maaskit.artifact import ArtifactError
    from maaskit.lm import load_language_model, save_language_model

    model = GPT(GPTConfig(vocab_size=text_data.vocab_size, context=32, layers=1, heads=2, width=32)).eval()
    path = save_language_model(model, text_data.tokenizer, tmp_path / "lm", name="tiny")
    loaded, tokenizer, manifest = load_language_model(path)
    assert manifest["task"] == "text-generation" and manifest["tokenizer"]["file"] == "tokenizer.json"
    assert (
        manifest["context"] == 32 and tokenizer.encode("def f(x):").ids == text_data.tokenizer.encode("def f(x):").ids
    )
    x = torch.randint(text_data.vocab_size, (1, 10))
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.head.weight is loaded.tokens.weight
    # a manifest from before GPTConfig (the image factory's layout) still loads, to the same model
    import json

    manifest_file = path / "manifest.json"
    old_layout = json.loads(manifest_file.read_text())
    old_layout["architecture"] = {
        "name": "gpt", "in_shape": [32], "num_classes": text_data.vocab_size,
        "kwargs": {"layers": 1, "heads": 2, "width": 32},
    }  # fmt: skip
    manifest_file.write_text(json.dumps(old_layout))
    torch.testing.assert_close(load_language_model(path)[0](x), model(x))
    (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text().replace('"a"', '"b"', 1))
    with pytest.raises(ArtifactError, match="tokenizer.json does not match its manifest"):
        load_language_model(path)
    lenet = maaskit.build_model("lenet", (1, 8, 8), 10)
    image_dir = maaskit.save_artifact(
        lenet, tmp_path / "img", classes=list("0123456789"), normalization=maaskit.Normalization((0.5,), (0.5,))
    )
    with pytest.raises(ArtifactError, match="not a language model"):
        load_language_model(image_dir)


# --- continuous batching -----------------------------------------------------------------------


def _run(coro):
    import asyncio

    return asyncio.run(coro)


def test_the_engine_gives_each_sequence_the_tokens_it_would_get_alone(model):
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams

    prompts = [[1, 2, 3], [5] * 10, [7, 8], [9, 10, 11, 12, 13], [4]]
    alone = [list(generate(model, p, max_tokens=12, temperature=0)) for p in prompts]
    sampled = [
        list(generate(model, p, max_tokens=12, temperature=1.0, top_k=20, seed=i)) for i, p in enumerate(prompts)
    ]

    async def main():
        engine = Engine(model, max_sequences=3)  # 5 sequences, 3 slots: some wait, then join mid-run

        async def one(p, after_steps, **kw):
            deadline = time.monotonic() + 60
            while engine.steps < after_steps:  # joins once the engine has run this many steps
                assert time.monotonic() < deadline, "the engine stopped stepping"
                await asyncio.sleep(0)
            return [
                e.token async for e in engine.generate(p, SamplingParams(max_tokens=12, **kw)) if e.token is not None
            ]

        greedy = await asyncio.gather(*(one(p, 2 * i, temperature=0) for i, p in enumerate(prompts)))
        seeded = await asyncio.gather(*(one(p, 0, temperature=1.0, top_k=20, seed=i) for i, p in enumerate(prompts)))
        engine.close()
        return greedy, seeded, engine

    greedy, seeded, engine = _run(main())
    assert greedy == alone and seeded == sampled
    assert engine.tokens_generated == 2 * 5 * 12 and engine.running == 0


def test_concurrent_sequences_share_decode_steps_and_one_slot_runs_them_one_by_one(model):
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams

    async def steps(max_sequences):
        engine = Engine(model, max_sequences=max_sequences)

        async def one(i):
            return [e async for e in engine.generate([i + 1], SamplingParams(max_tokens=20, temperature=0))]

        await asyncio.gather(*(one(i) for i in range(8)))
        engine.close()
        return engine.steps

    assert _run(steps(8)) == 20  # one prefill step (all 8 join), then 19 shared decode steps
    assert _run(steps(1)) == 8 * 20  # without batching, every token of every sequence is a step of its own


def test_a_reader_that_leaves_frees_its_slot_within_a_step(model):
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams

    async def main():
        engine = Engine(model, max_sequences=2)
        seen = []
        stream = engine.generate([1, 2], SamplingParams(max_tokens=50, temperature=0))
        async for event in stream:
            seen.append(event)
            if len(seen) == 3:
                break
        await stream.aclose()
        deadline = time.monotonic() + 60
        while engine.running:  # the scheduler drops it at its next step
            assert time.monotonic() < deadline, "the reader's sequence was never dropped"
            await asyncio.sleep(0)
        running, made = engine.running, engine.tokens_generated
        for _ in range(20):  # the loop runs on; an idle scheduler waits to be woken and makes nothing
            await asyncio.sleep(0)
        engine.close()
        return running, made, engine.tokens_generated, engine.abandoned

    running, made, later, abandoned = _run(main())
    assert running == 0 and abandoned == 1 and made <= 5 and later == made  # nothing generated for nobody


def test_the_engine_refuses_what_does_not_fit(model):
    from maaskit.lm.runtime.engine import Engine, SamplingParams

    engine = Engine(model, max_sequences=1)
    with pytest.raises(ValueError, match="context is 64 tokens; the prompt has 60 and max_tokens asks for 10"):
        engine.check([1] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="temperature"):
        engine.check([1], SamplingParams(temperature=3))
    with pytest.raises(ValueError, match="logprobs"):
        engine.check([1], SamplingParams(logprobs=50))
    engine.close()


# --- text: stop sequences, partial characters, the chat template --------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([load_corpus()[:50_000]], vocab_size=300)


def test_text_is_released_whole_and_never_shows_a_stop_sequence(tokenizer):
    from maaskit.lm.formats.text import TextStream

    text = "café ☕ is hot. END and more"
    ids = tokenizer.encode(text).ids
    stream = TextStream(tokenizer, stop=["END"])
    shown = "".join(stream.push(t) for t in ids)
    assert stream.stopped and shown == "café ☕ is hot. " and "\ufffd" not in shown
    stream = TextStream(tokenizer, stop=["ENDING"])  # a prefix that turns out not to be a stop: shown at the end
    shown = "".join(stream.push(t) for t in tokenizer.encode("it is EN").ids) + stream.flush()
    assert not stream.stopped and shown == "it is EN"


def test_text_streamed_token_by_token_is_the_decode_of_all_tokens(tokenizer):
    """Each push decodes only the newest ids (with the ones before as context): what it releases adds
    up to the whole sequence's decode, also for a decoder that drops a leading space (Metaspace, as
    SentencePiece models have) and for ids that split characters anywhere."""
    import random

    from tokenizers import SentencePieceBPETokenizer

    from maaskit.lm.formats.text import TextStream

    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(["a café ☕ is hot, the fox jumps over the lazy dog"] * 20, vocab_size=120)
    rng = random.Random(0)
    for tok in (tokenizer, spm):
        text = "  a café ☕ is hot,\n  the fox  jumps"
        size = tok.get_vocab_size()
        for ids in [tok.encode(text).ids] + [[rng.randrange(size) for _ in range(40)] for _ in range(20)]:
            stream = TextStream(tok)
            shown = "".join(stream.push(t) for t in ids) + stream.flush()
            assert shown == tok.decode(ids)


def test_the_chat_template_is_one_line_per_message_then_the_assistant():
    from maaskit.lm.formats.text import chat_prompt

    prompt = chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    )
    assert prompt == "system: Be brief.\nuser: Hi\nassistant:"
    with pytest.raises(ValueError, match=r"messages\[0\].role must be one of"):
        chat_prompt([{"role": "wizard", "content": "x"}])
    with pytest.raises(ValueError, match="at least one message"):
        chat_prompt([])


# --- keys and quotas -----------------------------------------------------------------------------


def test_quotas_count_requests_and_tokens_over_a_sliding_minute():
    from maaskit.serving.keys import APIKeys, RateLimited

    now = [1000.0]
    keys = APIKeys.parse('[{"name": "alice", "key": "sk-alice-0001", "rpm": 2, "tpm": 100}]')
    keys.clock = lambda: now[0]
    alice = keys.identify("Bearer sk-alice-0001")
    assert alice is not None and "sk-alice" not in repr(alice) and keys.identify("Bearer sk-other-0001") is None
    use = keys.admit(alice, 60)
    keys.settle(use, 30)  # it used less than its worst case
    assert keys.headers(alice)["x-ratelimit-remaining-tokens"] == "70"
    now[0] += 10
    keys.admit(alice, 50)
    with pytest.raises(RateLimited, match="2 requests per minute") as err:
        keys.admit(alice, 1)
    assert err.value.headers["Retry-After"] == "50" and err.value.headers["x-ratelimit-remaining-requests"] == "0"
    now[0] += 51  # the first request has left the minute
    with pytest.raises(RateLimited, match="100 tokens per minute"):
        keys.admit(alice, 60)
    keys.admit(alice, 40)
    with pytest.raises(RateLimited, match="more than alice's limit"):
        keys.admit(alice, 101)
    for bad, message in (
        ("{}", "expected a list"),
        ('[{"name": "a", "key": "short"}]', "shorter than 8"),
        ('[{"name": "a", "key": "sk-12345678", "rpm": 0}]', "rpm must be"),
        ('[{"name": "a", "key": "sk-12345678"}, {"name": "a", "key": "sk-87654321"}]', "names must be different"),
    ):
        with pytest.raises(ValueError, match=message):
            APIKeys.parse(bad)


def test_the_gpt2_export_loads_in_transformers_with_the_same_logits_and_greedy_text(model, tokenizer, tmp_path):
    from conftest import require

    transformers = require("transformers")
    from maaskit.lm.formats.export import export_gpt2

    small = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), context=64, layers=2, heads=2, width=32)).eval()
    export_gpt2(small, tokenizer, tmp_path / "gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    x = torch.randint(tokenizer.get_vocab_size(), (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, small(x), rtol=1e-5, atol=1e-5)
        prompt = tokenizer.encode("The dict").ids
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0]
    assert theirs[len(prompt) :].tolist() == list(generate(small, prompt, max_tokens=12, temperature=0))
    with pytest.raises(TypeError, match="takes a maaskit GPT"):
        export_gpt2(torch.nn.Linear(2, 2), tokenizer, tmp_path / "x")  # type: ignore[arg-type]


def test_a_failing_step_reaches_every_reader_and_the_engine_keeps_serving(model):
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams

    async def main():
        engine = Engine(model, max_sequences=2)
        real, calls = engine.runner.run, []

        def flaky(plan):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("out of memory")
            return real(plan)

        engine.runner.run = flaky  # type: ignore[method-assign]

        async def one(i):
            try:
                return [e.token async for e in engine.generate([i + 1], SamplingParams(max_tokens=10, temperature=0))]
            except RuntimeError as err:
                return str(err)

        failed = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(3))), 30)
        after = await asyncio.wait_for(one(0), 30)
        engine.close()
        return failed, after, engine

    failed, after, engine = _run(main())
    assert sum("generation failed: out of memory" in str(f) for f in failed) >= 2  # those in the step, and waiting
    assert after == list(generate(model, [1], max_tokens=10, temperature=0)) and engine.running == 0


def test_a_sequence_whose_reader_left_while_it_waited_is_counted_as_abandoned(model):
    """Two running sequences finish in the same step; of the three waiting, the middle one's reader
    has gone: the next round skips it as it lets the other two join, and counts it."""
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams

    async def until(condition, seconds: float = 60) -> None:
        """Poll the engine's state, with a deadline: each pass yields once to the event loop (the
        readers' tasks run), it does not wait for time to pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not condition():
            assert loop.time() < deadline, "the three readers never all waited"
            await asyncio.sleep(0)

    async def main():
        engine = Engine(model, max_sequences=2)
        dropped = []
        engine.listeners.append(lambda kind, value: dropped.append(value) if kind == "dropped" else None)
        greedy = SamplingParams(max_tokens=6, temperature=0)
        running = [engine.generate([1, 2], greedy), engine.generate([1, 2], greedy)]
        first = await asyncio.gather(*(s.__anext__() for s in running))  # both joined in one round
        waiting = [engine.generate([i, 3], greedy) for i in (4, 5, 6)]
        reads = [asyncio.create_task(s.__anext__()) for s in waiting]
        await until(lambda: engine.waiting == 3)
        reads[1].cancel()  # the middle reader leaves
        await asyncio.gather(reads[1], return_exceptions=True)
        await waiting[1].aclose()
        rest = []
        for stream in running:
            rest.append([e async for e in stream])
        for task, stream in ((reads[0], waiting[0]), (reads[2], waiting[2])):
            await task
            _ = [e async for e in stream]
        engine.close()
        return first, rest, engine.abandoned, dropped

    first, rest, abandoned, dropped = _run(main())
    assert all(e.token is not None for e in first) and all(r[-1].finish_reason == "length" for r in rest)
    assert abandoned == 1 and dropped == [1]


def test_one_chat_format_interface_over_the_three_kinds_of_model():
    # chosen once from the tokenizer and manifest; the server only asks for ids and where an answer ends
    from maaskit.lm import load_corpus, train_tokenizer
    from maaskit.lm.formats.chat import add_chat_tokens
    from maaskit.lm.formats.prompts import chat_prompts
    from maaskit.lm.formats.text import chat_prompt

    plain_tokenizer = train_tokenizer([load_corpus()[:20_000]], vocab_size=280)
    messages = [{"role": "user", "content": "Hi"}]
    plain = chat_prompts(plain_tokenizer, {})
    assert not plain.calls_tools and plain.stop == ("\nuser:", "\nsystem:")
    assert plain.encode(messages) == plain_tokenizer.encode(chat_prompt(messages)).ids
    template = {"source": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>",
                "special_tokens": {}}  # fmt: skip
    templated = chat_prompts(plain_tokenizer, {"chat_template": template})
    assert templated.stop == () and not templated.calls_tools
    assert plain_tokenizer.decode(templated.encode(messages)) == "<user>Hi<assistant>"
    tokens = chat_prompts(add_chat_tokens(plain_tokenizer), {"chat_template": template})  # its own tokens win
    assert tokens.calls_tools and tokens.stop == ()
    assert tokens.encode(messages, [{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(ValueError, match="messages"):
        plain.encode([{"role": "robot", "content": "x"}])
