"""maaskit.lm: the GPT, its KV cache, the tokenizer and generation (issue 10, first part)."""

import pytest
import torch

import maaskit
from maaskit.lm import ENDOFTEXT, GPT, Generation, KVCache, generate, load_corpus, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return maaskit.build_model("gpt", (64,), 300, layers=2, heads=2, width=32).eval()


def test_a_gpt_is_built_from_the_registry_and_predicts_every_next_token(model):
    assert isinstance(model, GPT) and model.maaskit_config["name"] == "gpt"
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
    with pytest.raises(ValueError, match=r"in_shape is \(context,\)"):
        maaskit.build_model("gpt", (1, 8, 8), 300)


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
