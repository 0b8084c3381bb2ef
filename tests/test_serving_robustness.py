"""The inference server under abuse, for real on 127.0.0.1: generated bodies (hypothesis), the
OpenAPI document checked against what the server answers (schemathesis), a bounded load of
valid and invalid requests matched by id, backpressure, model lifecycle, and --workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import require
from labserver import free_port

import maaskit
from maaskit.artifact import save_artifact
from maaskit.serving.client import Client
from maaskit.serving.protocol import encode_body, encode_tensor, split_body
from maaskit.serving.runner import serve

hypothesis = require("hypothesis")
st = hypothesis.strategies


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


@pytest.fixture(scope="module")
def repository(digits, tmp_path_factory) -> Path:
    """A model repository (Triton's layout: one artifact directory per model) holding ``digits``."""
    root = tmp_path_factory.mktemp("repository")
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", digits.in_shape, digits.num_classes)
    save_artifact(model, root / "digits", data=digits, name="digits")
    return root


@pytest.fixture(scope="module")
def model(repository):
    return maaskit.load_artifact(repository / "digits")[0].eval()


@pytest.fixture(scope="module")
def server(repository):
    with serve(model_repository=repository) as running:
        yield running


def logits_of(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def assert_answered_as_documented(response: httpx.Response):
    """No 5xx but the documented 503, and every error says what it is in ``{"error": ...}``."""
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


# --- generated bodies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
datatypes = st.sampled_from(["FP32", "UINT8", "INT64", "BYTES", "FP16", "BOOL", "fp32", "", "COMPLEX"])
shapes = st.lists(st.integers(-2, 9), max_size=5)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "image", ""]) | json_values, "datatype": datatypes | json_values},
    optional={
        "shape": shapes | json_values,
        "data": st.lists(st.floats(allow_nan=False, width=32) | st.integers(-300, 300), max_size=80) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 300)}) | json_values,
    },
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=2) | json_values},
    optional={
        "id": st.text(max_size=6) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["logits", "probs"])},
                optional={"parameters": st.fixed_dictionaries({}, optional={"classification": json_values})},
            ),
            max_size=2,
        )
        | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_values}) | json_values,
    },
)
fuzz = hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))


@fuzz
@hypothesis.given(body=v2_bodies | json_values)
def test_generated_json_bodies_never_get_a_5xx_and_always_an_error_object(server, body):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/v2/models/digits/infer", "/v1/models/digits:predict", "/v1/models/digits:classify"):
            assert_answered_as_documented(http.post(path, content=json.dumps(body)))


@fuzz
@hypothesis.given(
    header=v2_bodies,
    tail=st.binary(max_size=600),
    length=st.none() | st.integers(-5, 700) | st.text(string.ascii_letters + string.digits + "-+.", min_size=1),
)
def test_generated_binary_bodies_never_get_a_5xx_and_always_an_error_object(server, header, tail, length):
    text = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream"}
    headers["Inference-Header-Content-Length"] = str(len(text) if length is None else length)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert_answered_as_documented(http.post("/v2/models/digits/infer", content=text + tail, headers=headers))


@fuzz
@hypothesis.given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_get_a_5xx(server, raw):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert_answered_as_documented(http.post("/v2/models/digits/infer", content=raw))
        assert_answered_as_documented(
            http.post("/v2/models/digits/infer", content=raw, headers={"Inference-Header-Content-Length": "0"})
        )


# --- the OpenAPI document against the live server ---------------------------------------------------


def schemathesis_run(url: str, tmp_path: Path, token: str, *extra: str) -> str:
    """``st run`` with every check, positive_data_acceptance and negative_data_rejection included: the
    document says what each served model takes (maaskit/serving/openapi.py), so every request it
    allows must be answered and every one it forbids refused. Returns the report."""
    require("schemathesis")
    config = tmp_path / "schemathesis.toml"
    # max_response_time (a check of "all") as a hang detector, not a speed test: explanations of 16
    # images by LIME take seconds, longer on a busy machine
    config.write_text(
        f'request-timeout = 600\nheaders = {{ Authorization = "Bearer {token}" }}\n[checks]\nmax_response_time = 600\n'
    )
    st_cli = Path(sys.executable).with_name("st")
    command = [str(st_cli), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all"]
    # a fixed seed, so a finding reproduces; another one is a variable away (and printed with the report)
    seed = os.environ.get("MAASKIT_SCHEMATHESIS_SEED", "1")
    print(f"schemathesis seed {seed} (MAASKIT_SCHEMATHESIS_SEED)")
    command += ["--max-examples", "25", "--seed", seed, "--no-color", "--report-dir", str(tmp_path / "report"), *extra]
    # cwd: schemathesis keeps a cache in .schemathesis/ under the folder it runs in
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env)
    summary = done.stdout[-6000:]
    assert done.returncode == 0, summary
    assert re.search(r"\d+ generated, \d+ passed", summary), summary
    assert "Missing test data" not in done.stdout, summary  # no operation answered only 404
    return done.stdout


def test_the_openapi_document_states_every_rule_of_a_server_with_a_classifier_and_a_language_model(
    repository, tiny_lm, tmp_path
):
    with serve(repository / "digits", tiny_lm, token="s3cret") as running:
        doc = httpx.get(f"{running.url}/openapi.json").json()
        assert "/v2/models/digits/infer" in doc["paths"] and "/v2/models/{name}/infer" not in doc["paths"]
        report = schemathesis_run(running.url, tmp_path, "s3cret")
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested.group(1)) == len([op for item in doc["paths"].values() for op in item]), report


def test_the_openapi_document_matches_a_server_with_a_token_and_model_loading(repository, tmp_path):
    with serve(model_repository=repository, token="s3cret") as running:
        schemathesis_run(running.url, tmp_path, "s3cret", "--include-path-regex", "^/v2/repository/")
        assert httpx.get(f"{running.url}/v2/models/digits").status_code == 401  # and without it


def test_docs_show_the_request_schemas_and_every_error(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    infer = doc["paths"]["/v2/models/digits/infer"]["post"]  # the model's own path, its own body
    cases = infer["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    tensors = [case["properties"]["inputs"]["items"]["properties"] for case in cases]
    assert {t["name"]["const"] for t in tensors} == {"input"} and {t["datatype"]["const"] for t in tensors} == {
        "FP32",
        "UINT8",
    }
    assert [1, 1, 8, 8] in [t["shape"]["const"] for t in tensors]
    assert "Inference-Header-Content-Length" in infer["description"]  # the binary extension, in words
    assert {"400", "401", "404", "413", "503"} <= set(infer["responses"])
    assert infer["responses"]["503"]["headers"]["Retry-After"]
    assert {"InferRequest", "RequestInput", "InferResponse", "Error", "PredictRequest"} <= set(
        doc["components"]["schemas"]
    )
    assert "Retry-After" in infer["responses"]["503"]["headers"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


# --- a bounded load, valid and invalid mixed --------------------------------------------------------


def test_5000_mixed_requests_at_concurrency_32_each_answered_correctly_and_matched_by_id(server, model, digits):
    images = digits.test.x[:50].numpy()
    expected = logits_of(model, digits.normalize(digits.test.x[:50]).numpy())
    total, concurrency = 5000, 32
    answers: dict[str, tuple[int, dict]] = {}

    def request(i: int) -> tuple[str, bytes, dict]:
        x = images[i % 50][None]
        kind = i % 5
        if kind == 3:  # invalid: wrong shape
            x = np.zeros((1, 1, 8, 7), np.uint8)
        spec, raw = encode_tensor("input", x, binary=kind in (1, 4))
        header = {"id": f"r{i}", "inputs": [spec]}
        if kind == 4:
            header["inputs"][0]["datatype"] = "FP64"  # invalid: a datatype the model does not take
        return (f"r{i}", *encode_body(header, [raw]))

    async def run():
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker(http):
            while not queue.empty():
                rid, body, headers = request(queue.get_nowait())
                response = await http.post("/v2/models/digits/infer", content=body, headers=headers)
                header, _ = split_body(response.content, response.headers.get("inference-header-content-length"))
                answers[rid] = (response.status_code, header)

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            await asyncio.wait_for(asyncio.gather(*(worker(http) for _ in range(concurrency))), 300)

    asyncio.run(run())
    assert len(answers) == total  # nothing dropped
    statuses = [status for status, _ in answers.values()]
    assert not [s for s in statuses if s >= 500]
    for i in range(total):
        status, header = answers[f"r{i}"]
        if i % 5 in (3, 4):
            assert status == 400 and header["error"], header
        else:
            assert status == 200 and header["id"] == f"r{i}", header
            if i % 5 != 1:  # JSON answers carry their numbers; binary ones were checked in test_serving
                got = np.asarray(header["outputs"][0]["data"], np.float32)
                np.testing.assert_allclose(got, expected[i % 50], rtol=1e-4, atol=1e-4)


# --- backpressure -------------------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_the_client_waits_it_out(repository, digits):
    with serve(repository / "digits", max_queue=2, inline=False) as running:
        served = running.repository.get("digits")
        fast, gate, entered = served.batcher.fn, threading.Event(), threading.Event()

        def slow(x):
            entered.set()
            gate.wait(60)
            return fast(x)

        served.batcher.fn = slow
        body = {"inputs": [encode_tensor("input", digits.test.x[:1].numpy())[0]]}
        payload, headers = encode_body(body, [])

        async def until(condition, what: str) -> None:  # a polled state, with a deadline
            deadline = time.monotonic() + 60
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)

        def refusals() -> int:
            text = httpx.get(f"{running.url}/metrics").text
            found = re.search(r'maaskit_request_failures_total\{status="503"\} (\d+)', text)
            return int(float(found.group(1))) if found else 0

        async def burst():
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                post = lambda: asyncio.ensure_future(
                    http.post("/v2/models/digits/infer", content=payload, headers=headers)
                )
                held = post()
                await until(entered.is_set, "the first forward pass, held at the gate")
                sent = [post() for _ in range(5)]
                await until(lambda: sum(s.done() for s in sent) == 3 and served.batcher.waiting == 2, "the queue")
                refused = [s.result() for s in sent if s.done()]  # two wait in the queue; three were refused
                with Client(running.url, retries=2) as client:  # maaskit's client waits out Retry-After
                    waiting = asyncio.get_running_loop().run_in_executor(None, client.infer, "digits", x)
                    await until(lambda: refusals() == 4, "the client's first try to be refused")
                    gate.set()
                    answered = await waiting
                return refused, await asyncio.gather(held, *sent), answered

        x = digits.normalize(digits.test.x[:1]).numpy()
        refused, everything, answered = asyncio.run(burst())
        assert len(refused) == 3 and all(r.status_code == 503 for r in refused)
        assert all(int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"] for r in refused)
        assert sorted(r.status_code for r in everything) == [200, 200, 200, 503, 503, 503]
        np.testing.assert_allclose(answered["logits"], fast(x), rtol=1e-5)
        metrics = httpx.get(f"{running.url}/metrics").text
        assert 'maaskit_request_failures_total{status="503"} 4.0' in metrics  # the client's first try too
        assert "maaskit_queue_seconds_bucket" in metrics


# --- model lifecycle ----------------------------------------------------------------------------------


def test_models_load_and_unload_from_the_repository_without_a_restart(repository, digits, model, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repository / "digits", root / "digits")
    auth = {"Authorization": "Bearer s3cret"}
    x = digits.normalize(digits.test.x[:2]).numpy()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}]}
    with serve(model_repository=root, token="s3cret") as running, httpx.Client(base_url=running.url) as http:
        assert http.post("/v2/repository/index", headers=auth).json() == [
            {"name": "digits", "version": "1", "state": "READY"}
        ]
        assert http.post("/v2/repository/models/digits/unload", headers=auth).status_code == 200
        gone = http.post("/v2/models/digits/infer", json=body, headers=auth)
        assert gone.status_code == 404
        assert http.post("/v2/repository/index", headers=auth).json() == [
            {"name": "digits", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        # while it loads, the model is not ready: 503 with Retry-After, then it answers
        release = threading.Event()
        loader = maaskit.serving.dataplane.load_artifact

        started = threading.Event()

        def slow_load(path):
            started.set()
            release.wait(60)
            return loader(path)

        maaskit.serving.dataplane.load_artifact = slow_load
        try:
            loading = threading.Thread(
                target=http.post, args=("/v2/repository/models/digits/load",), kwargs={"headers": auth}
            )
            loading.start()
            assert started.wait(60)  # the load is under way
            for path in ("/v2/models/digits/ready", "/v2/health/ready"):
                not_yet = http.get(path, headers=auth)
                assert not_yet.status_code == 503 and not_yet.headers["retry-after"] == "1", not_yet.text
            busy = http.post("/v2/models/digits/infer", json=body, headers=auth)
            assert busy.status_code == 503 and "loading" in busy.json()["error"]
            assert http.post("/v2/repository/index", headers=auth).json() == [{"name": "digits", "state": "LOADING"}]
            assert http.post("/v2/repository/models/digits/load", headers=auth).status_code == 409
            release.set()
            loading.join(30)
        finally:
            maaskit.serving.dataplane.load_artifact = loader
        assert http.get("/v2/models/digits/ready", headers=auth).json() == {"name": "digits", "ready": True}
        answer = http.post("/v2/models/digits/infer", json=body, headers=auth).json()
        np.testing.assert_allclose(
            np.reshape(answer["outputs"][0]["data"], (2, 10)), logits_of(model, x), rtol=1e-5, atol=1e-5
        )
        missing = http.post("/v2/repository/models/cats/load", headers=auth)
        assert missing.status_code == 404 and "no model 'cats' in the repository; it has: digits" in missing.text
    with serve(model_repository=root) as open_server:  # no token: nobody may load or unload
        refused = httpx.post(f"{open_server.url}/v2/repository/models/digits/unload")
        assert refused.status_code == 403 and "--token" in refused.json()["error"]


# --- several processes ----------------------------------------------------------------------------------


def test_workers_share_one_port_and_their_metrics_add_up(repository, digits, model):
    port = free_port()
    command = [sys.executable, "-m", "maaskit", "serve", str(repository / "digits"), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # both workers load the model; wait until requests are answered
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.3)
        x = digits.normalize(digits.test.x[:1]).numpy()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}]}
        for _ in range(60):  # new connections each time, so both workers get some
            answer = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=10).json()
            np.testing.assert_allclose(answer["outputs"][0]["data"], logits_of(model, x)[0], rtol=1e-5, atol=1e-5)
        metrics = httpx.get(f"{url}/metrics").text
        assert re.search(r'maaskit_requests_total\{model="digits",protocol="v2"\} 60\.0', metrics), metrics[:3000]
        assert len(re.findall(r'maaskit_server_process\{pid="\d+"\} 1\.0', metrics)) == 2  # one per worker
        assert len(list(Path(os.environ.get("TMPDIR", "/tmp")).glob("maaskit-metrics-*"))) >= 1
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_body_without_content_length_is_still_held_to_the_limit(repository):
    with serve(repository / "digits", max_body_bytes=10_000) as running:

        def chunks(n):  # sent with Transfer-Encoding: chunked, so no Content-Length announces the size
            for _ in range(n):
                yield b" " * 1000

        too_big = httpx.post(f"{running.url}/v2/models/digits/infer", content=chunks(30))
        assert too_big.status_code == 413 and "limit of 10,000 bytes" in too_big.json()["error"]
        small = httpx.post(f"{running.url}/v2/models/digits/infer", content=chunks(2))
        assert small.status_code == 400 and "not valid JSON" in small.json()["error"]
