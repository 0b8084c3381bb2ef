"""The OpenAI-compatible API on a real server on loopback, called by the official ``openai``
client (sync, async, streaming), by httpx for the raw SSE frames, and under load."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from conftest import require

import maaskit
from maaskit.lm import load_corpus
from maaskit.serving.keys import APIKeys

KEY, LIMITED = "sk-test-alice-0001", "sk-test-bob-00001"
CONTEXT = 128


@pytest.fixture(scope="module")
def language_model():
    """A GPT trained for one short epoch: it writes text-like bytes rather than noise."""
    from maaskit.lm import LMRecipe, train_language_model

    recipe = LMRecipe().but(vocab_size=300, context=CONTEXT, layers=2, heads=2, width=32, epochs=1, batch_size=16)
    trained = train_language_model(text=load_corpus()[:60_000], recipe=recipe, device="cpu")
    return trained.model.eval(), trained.data.tokenizer


@pytest.fixture(scope="module")
def server(language_model, artifact):
    keys = APIKeys.parse(
        json.dumps([{"name": "alice", "key": KEY}, {"name": "bob", "key": LIMITED, "rpm": 2, "tpm": 1000}])
    )
    with maaskit.serve(artifact[0], language_model, name=None, api_keys=keys, max_body_bytes=200_000) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    openai = require("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _sse(server, path: str, body: dict, key: str = KEY) -> list:
    """The raw server-sent events of one streamed request: what `curl -N` shows."""
    events = []
    with httpx.stream(
        "POST", server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_the_models_are_listed_and_the_shared_path_answers_in_each_apis_shape(server, client):
    assert [m.id for m in client.models.list()] == ["gpt"]
    model = client.models.retrieve("gpt")
    assert model.id == "gpt" and model.object == "model" and model.owned_by == "maaskit"
    status = httpx.get(server.url + "/v1/models/digits", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"  # TF Serving's, for the classifier
    doc = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions"} <= set(doc["paths"])
    assert "CompletionRequest" in doc["components"]["schemas"] and "ChatRequest" in doc["components"]["schemas"]
    for route, field in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        body = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        # the context, a limit in tokens no schema keyword can state on text, is said in words
        assert f"fit in {CONTEXT} tokens, this model's context" in body["properties"][field]["description"], body


def test_completions_whole_with_usage_logprobs_several_choices_and_a_seed(client, language_model):
    from maaskit.lm import generate

    model, tokenizer = language_model
    prompt = "The list"
    answer = client.completions.create(model="gpt", prompt=prompt, max_tokens=10, temperature=0)
    expected = list(generate(model, tokenizer.encode(prompt).ids, max_tokens=10, temperature=0))
    assert answer.choices[0].text == tokenizer.decode(expected)  # the server's text is the model's
    assert answer.usage.prompt_tokens == len(tokenizer.encode(prompt).ids) and answer.usage.completion_tokens == 10
    assert answer.choices[0].finish_reason == "length" and answer.object == "text_completion"
    several = client.completions.create(
        model="gpt", prompt=prompt, max_tokens=8, n=3, seed=7, logprobs=2, extra_body={"top_k": 50}
    )
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in several.choices)
    lp = several.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) and all(len(t) == 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    again = client.completions.create(
        model="gpt", prompt=prompt, max_tokens=8, n=3, seed=7, logprobs=2, extra_body={"top_k": 50}
    )
    assert [c.text for c in again.choices] == [c.text for c in several.choices]  # the seed reproduces


def test_without_max_tokens_chat_runs_to_the_contexts_end_and_a_completion_writes_16(client):
    # OpenAI's and vLLM's defaults: the rest of the context for Chat Completions, 16 for legacy Completions
    messages = [{"role": "user", "content": "What is a tuple?"}]
    chat = client.chat.completions.create(model="gpt", messages=messages, temperature=0,
                                          extra_body={"ignore_eos": True})  # fmt: skip
    assert chat.usage.prompt_tokens + chat.usage.completion_tokens == CONTEXT
    assert chat.choices[0].finish_reason == "length"
    completion = client.completions.create(model="gpt", prompt="The list", temperature=0,
                                           extra_body={"ignore_eos": True})  # fmt: skip
    assert completion.usage.completion_tokens == 16


def test_chat_whole_and_streamed_through_the_official_client(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a tuple?"}]
    whole = client.chat.completions.create(model="gpt", messages=messages, max_tokens=12, seed=1, temperature=0.8)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert "\nuser:" not in choice.message.content  # an answer ends where another turn would begin
    chunks = list(
        client.chat.completions.create(
            model="gpt", messages=messages, max_tokens=12, seed=1, temperature=0.8, stream=True,
            stream_options={"include_usage": True}, user="ignored-field", presence_penalty=0.0,
        )
    )  # fmt: skip
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # streamed or not, the same seed gives the same answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_the_raw_stream_is_framed_as_openai_clients_expect(server):
    events = _sse(
        server, "/v1/completions", {"model": "gpt", "prompt": "def", "max_tokens": 6, "stream": True,
                                    "stream_options": {"include_usage": True}},
    )  # fmt: skip
    assert events[-1] == "[DONE]"
    usage, finish = events[-2], events[-3]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert finish["choices"][0]["finish_reason"] == "length" and finish["choices"][0]["text"] == ""
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-3])
    assert len({e["id"] for e in events[:-1]}) == 1
    without_usage = _sse(server, "/v1/completions", {"model": "gpt", "prompt": "def", "max_tokens": 3, "stream": True})
    assert without_usage[-1] == "[DONE]" and "usage" not in without_usage[-2]


def test_an_event_whose_text_holds_unicode_line_breaks_stays_one_line(server):
    # httpx's iter_lines (as _sse reads) splits at U+0085, U+2028 and U+2029 as str.splitlines does: an
    # untrained model that wrote one (bytes C2 85) cut a CI run's event in two. Echo sends them back.
    prompt = "one\x85two\u2028three\u2029four"
    events = _sse(server, "/v1/completions", {"model": "gpt", "prompt": prompt, "echo": True, "max_tokens": 2,
                                              "stream": True})  # fmt: skip
    assert events[0]["choices"][0]["text"] == prompt and events[-1] == "[DONE]"


def test_the_async_client_streams_concurrently(server):
    openai = require("openai")

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)

        async def one(i):
            stream = await client.completions.create(
                model="gpt", prompt=f"Example {i}", max_tokens=8, stream=True, temperature=0
            )
            return [c async for c in stream]

        results = await asyncio.gather(*(one(i) for i in range(6)))
        await client.close()
        return results

    for chunks in asyncio.run(main()):
        assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model", "does not exist"),
        ({"model": "gpt", "prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens", "context is 128 tokens"),
        ({"model": "gpt", "prompt": "x", "temperature": 3}, 400, "temperature", "less than or equal to 2"),
        ({"model": "gpt", "prompt": "x", "top_p": 0}, 400, "top_p", "greater than 0"),
        ({"model": "gpt", "prompt": ""}, 400, "prompt", "empty"),
        ({"model": "gpt", "prompt": [1, 99999]}, 400, "prompt", "token ids must be in"),
        ({"model": "gpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
        ({"model": "gpt"}, 400, "prompt", "Field required"),
    ],
)
def test_bad_completions_get_openai_errors(server, body, status, param, needle):
    r = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and needle in error["message"]


def test_bad_chats_and_the_guards_answer_in_openai_shape(server, client):
    openai = require("openai")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="gpt", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="gpt", messages=[])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong-00000", max_retries=0).models.list()
    r = httpx.post(server.url + "/v1/completions", content=b"x" * 300_000, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "error" in r.json()


def test_a_key_past_its_quota_gets_429_with_retry_after_and_its_usage_shows_in_metrics(server):
    openai = require("openai")
    bob = openai.OpenAI(base_url=server.url + "/v1", api_key=LIMITED, max_retries=0)
    first = bob.completions.with_raw_response.create(model="gpt", prompt="x", max_tokens=2)
    assert first.headers["x-ratelimit-limit-requests"] == "2" and first.headers["x-ratelimit-remaining-requests"] == "1"
    bob.completions.create(model="gpt", prompt="x", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as err:
        bob.completions.create(model="gpt", prompt="x", max_tokens=2)
    headers = err.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-ratelimit-remaining-requests"] == "0"
    assert err.value.body["code"] == "rate_limit_exceeded"
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'maaskit_api_key_requests_total{key="bob"} 2.0' in metrics
    assert 'maaskit_api_key_rate_limited_total{key="bob"} 1.0' in metrics
    assert 'maaskit_api_key_tokens_total{key="bob",kind="completion"} 4.0' in metrics
    assert LIMITED not in metrics and KEY not in metrics  # names, never keys


def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_that_disconnects_stops_its_generation(server):
    abandoned = _metric(server, "maaskit_lm_abandoned_sequences_total")
    with httpx.stream(
        "POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
        json={"model": "gpt", "prompt": "x", "max_tokens": CONTEXT - 2, "stream": True},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while _metric(server, "maaskit_lm_abandoned_sequences_total") == abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "maaskit_lm_abandoned_sequences_total") == abandoned + 1
    assert _metric(server, "maaskit_lm_running_sequences") == 0  # no work continues for nobody:
    assert _metric(server, "maaskit_lm_waiting_sequences") == 0  # nothing runs, nothing waits,
    assert _metric(server, "maaskit_lm_cache_slots_used") == 0  # and its slot is free,
    assert _metric(server, "maaskit_lm_kv_cache_positions_used") == 0  # its cache's positions too
    assert _metric(server, "maaskit_lm_time_to_first_token_seconds_count") > 0
    # the steps' records: each decoded a token for the one sequence, and its prompt went in first
    assert _metric(server, 'maaskit_lm_step_tokens_count{kind="decode",model="gpt"}') >= 1
    assert _metric(server, 'maaskit_lm_step_tokens_sum{kind="prompt",model="gpt"}') >= 1


def test_an_error_after_the_stream_started_is_an_event_then_done(server, monkeypatch):
    served = server.repository.language_model("gpt")
    real = served.engine.runner.run
    calls = []

    def failing(plan):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("the device fell over")
        return real(plan)

    monkeypatch.setattr(served.engine.runner, "run", failing)
    events = _sse(server, "/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 20, "stream": True, "stop": ["zzz"]})  # fmt: skip
    assert events[-1] == "[DONE]" and "the device fell over" in events[-2]["error"]["message"]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_200_concurrent_streams_all_finish_with_done(server):
    async def main():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as http:

            async def one(i):
                frames = []
                body = {"model": "gpt", "prompt": f"n{i}", "max_tokens": 6, "stream": True, "temperature": 0}
                async with http.stream("POST", "/v1/completions", json=body,
                                       headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
                    async for line in r.aiter_lines():
                        if line:
                            frames.append(line)
                return r.status_code, frames

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 120)

    results = asyncio.run(main())
    assert all(status == 200 and frames[-1] == "data: [DONE]" for status, frames in results)
    assert all(json.loads(frames[-2][6:])["choices"][0]["finish_reason"] == "length" for _, frames in results)


def test_maaskit_lm_train_writes_an_artifact_that_maaskit_serve_serves(tmp_path, capsys):
    from maaskit.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(load_corpus()[:30_000], encoding="utf-8")
    args = ["lm", "train", "--corpus", str(corpus), "--out", str(tmp_path / "lm"), "--epochs", "1"]
    small = ["--context", "32", "--width", "32", "--layers", "1", "--vocab-size", "300", "--name", "tiny"]
    assert main(args + small) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "perplexity" in out and "sample at step" in out and "saved to" in out
    assert {p.name for p in (tmp_path / "lm").iterdir()} == {"model.safetensors", "tokenizer.json", "manifest.json"}
    with maaskit.serve(tmp_path / "lm") as running:
        r = httpx.post(running.url + "/v1/completions", json={"model": "tiny", "prompt": "The", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5
    assert main(["lm", "train", "--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "no corpus file at" in capsys.readouterr().err


def test_the_chat_console_streams_an_answer_with_its_figures_and_stop_closes_the_stream(server):
    require("openai")
    from maaskit.widgets import ChatConsole

    console = ChatConsole(server.url, api_key=KEY, max_tokens=12, temperature=0)
    assert console.connect() == ["gpt"] and console.model_w.value == "gpt"
    turn = console.send("What is a dict?", wait=True)
    assert turn.error is None and turn.answer and turn.finish_reason in ("stop", "length")
    assert turn.first_token_s is not None and turn.usage["completion_tokens"] >= 1
    assert "first token after" in turn.stats() and f"finished: {turn.finish_reason}" in turn.stats()
    assert html_text(console.history.value).count("you:") == 1
    assert str(console).startswith("you: What is a dict?\ngpt: ")
    abandoned = _metric(server, "maaskit_lm_abandoned_sequences_total")
    console.max_tokens_w.value = CONTEXT - 40
    turn = console.send("Tell me everything.")
    deadline = time.monotonic() + 10
    while turn.chunks < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    console.stop()
    assert console.wait(10) and turn.finish_reason == "stopped by you"
    while _metric(server, "maaskit_lm_abandoned_sequences_total") == abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "maaskit_lm_abandoned_sequences_total") == abandoned + 1  # the server stopped too
    with pytest.raises(ValueError, match="empty"):
        console.send("   ")
    bad = ChatConsole(server.url, api_key="sk-wrong-00000")
    bad.connect_button.click()
    assert "AuthenticationError" in bad.status.value


def html_text(markup: str) -> str:
    import re

    return re.sub("<[^>]+>", "", markup)


def test_the_lm_dashboard_draws_curves_and_samples_as_a_gpt_trains():
    from maaskit.lm import LMRecipe, train_language_model
    from maaskit.widgets import LMDashboard

    dashboard = LMDashboard(sample_every=1e9)
    recipe = LMRecipe().but(vocab_size=300, context=32, layers=1, width=32, epochs=2)
    trained = train_language_model(text=load_corpus()[:40_000], recipe=recipe, callbacks=[dashboard], device="cpu")
    assert trained.samples is dashboard.sampler.samples and len(trained.samples) == 2  # one sampler, at each epoch
    assert "<svg" in dashboard.curves.value and "perplexity" in dashboard.curves.value
    assert "sample at step" in dashboard.sample.value and "epoch 2/2" in dashboard.status.value
    assert f"perplexity {__import__('math').exp(trained.history.last['val_loss']):.1f}" in str(dashboard)
    assert dashboard.still_png()[:4] == b"\x89PNG"


def test_the_training_dashboard_shows_a_language_models_run_as_the_lm_dashboard_does():
    from maaskit.lm import LMRecipe, TextDataset, train_language_model
    from maaskit.widgets import TrainingDashboard

    dashboard = TrainingDashboard(redraw_every=0.0)
    recipe = LMRecipe().but(vocab_size=300, context=32, layers=1, width=32, epochs=2)
    trained = train_language_model(text=load_corpus()[:40_000], recipe=recipe, callbacks=[dashboard], device="cpu")
    text = dashboard._text
    assert text is not None and list(dashboard.widget.children) == [text.widget]  # the text view, not image controls
    assert trained.samples is dashboard.sampler.samples and len(trained.samples) == 2
    assert "perplexity" in text.curves.value and "sample at step" in text.sample.value
    assert str(dashboard) == str(text) and "perplexity" in str(dashboard)
    assert dashboard.still_png()[:4] == b"\x89PNG"
    # plain fit() on a TextDataset works the same way; the constructor says what to do with text
    data = TextDataset.from_text(load_corpus()[:20_000], tokenizer=trained.data.tokenizer, context=32)
    maaskit.fit(trained.model, data, epochs=1, batch_size=16, callbacks=[dashboard], device="cpu")
    assert dashboard.history is not None and len(dashboard.history) == 1
    with pytest.raises(TypeError, match="language model"):
        TrainingDashboard(data)


def test_the_lm_serving_benchmark_runs_and_prints_its_table(tmp_path):
    # small: the benchmark must keep working; its figures are for people, never asserted
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "lm_serving.py"), "--epochs", "1", "--streams", "4"]
        + ["--max-tokens", "8", "--rounds", "1", "--json", str(tmp_path / "lm.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "lm.json").read_text())["results"]
    assert set(results) == {"batching on", "batching off"}
    assert all(cell["errors"] == 0 and cell["tokens_per_s"] > 0 for r in results.values() for cell in r.values())
    assert "| batching on |" in done.stdout and "c=8: batching on / off" in done.stdout


def test_every_route_that_runs_a_model_is_counted_and_timed_in_one_place(server, artifact):
    """The Guard records requests and latency for V2, V1 (:explain too) and OpenAI, and failures by status."""
    headers = {"Authorization": f"Bearer {KEY}"}
    name = "digits"  # the classifier served beside the language model (conftest's artifact)

    def counted(protocol: str, model: str) -> float:
        return _metric(server, f'maaskit_requests_total{{model="{model}",protocol="{protocol}"}}')

    before = {p: counted(p, m) for p, m in (("openai", "gpt"), ("v1", name))}
    failures = _metric(server, 'maaskit_request_failures_total{status="404"}')
    timed = _metric(server, 'maaskit_request_seconds_count{protocol="openai"}')
    httpx.post(server.url + "/v1/completions", json={"model": "gpt", "prompt": "x", "max_tokens": 2}, headers=headers)
    explained = httpx.post(
        server.url + f"/v1/models/{name}:explain",
        json={"instances": [[[[0.0] * 8] * 8]], "method": "saliency"},
        headers=headers,
        timeout=300,  # the first explanation starts the explanation process (it imports PyTorch)
    )
    assert explained.status_code == 200, explained.text
    missing = httpx.post(server.url + "/v1/completions", json={"model": "nobody", "prompt": "x"}, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert counted("openai", "gpt") == before["openai"] + 1 and counted("v1", name) == before["v1"] + 1
    assert _metric(server, 'maaskit_request_seconds_count{protocol="openai"}') == timed + 1
    assert _metric(server, 'maaskit_request_failures_total{status="404"}') == failures + 1


def test_a_model_that_crashes_is_a_500_in_openais_shape_whole_or_streamed(tiny_lm):
    # the engine's error goes through the one table of statuses (serving/errors.py) both ways
    import copy

    model, tokenizer = tiny_lm
    broken = copy.deepcopy(model)

    def crash(*args, **kwargs):
        raise RuntimeError("the weights are gone")

    broken.forward = crash
    body = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with maaskit.serve((broken, tokenizer)) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        whole = http.post("/v1/chat/completions", json=body)
        assert whole.status_code == 500, whole.text
        error = whole.json()["error"]
        assert error["type"] == "server_error" and "generation failed: the weights are gone" in error["message"]
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert streamed.status_code == 200 and lines[-1] == "data: [DONE]"
        event = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert event["type"] == "server_error" and event["message"] == error["message"]
        assert http.get("/v2/health/ready").status_code == 200  # the server carries on
