"""The inference server for real on 127.0.0.1: V2 and V1, binary tensors, errors, auth, limits,
dynamic batching, versions, metrics; maaskit's client and NVIDIA's tritonclient against it;
``maaskit serve`` and ``maaskit predict`` as subprocesses."""

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import require
from labserver import free_port

import maaskit
import maaskit.cli
from maaskit.artifact import ArtifactError, save_artifact
from maaskit.serving.batching import Closed, DynamicBatcher, QueueFull
from maaskit.serving.client import Client, EndpointError, load_test
from maaskit.serving.protocol import (
    ProtocolError,
    decode_tensor,
    encode_body,
    encode_tensor,
    parse_classification,
    split_body,
)
from maaskit.serving.runner import serve


@pytest.fixture(scope="module")
def server(artifact):
    with serve(artifact[0], max_delay_ms=20) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def local_logits(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def infer_body(x, datatype="FP32", name="input", **extra):
    return {
        "inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
        **extra,
    }


# --- the protocol codecs ----------------------------------------------------------------------


def test_tensors_round_trip_as_json_and_as_binary():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for binary in (False, True):
        spec, raw = encode_tensor("t", x, binary=binary)
        body, headers = encode_body({"inputs": [spec]}, [raw])
        header, rest = split_body(body, headers.get("Inference-Header-Content-Length"))
        y, offset = decode_tensor(header["inputs"][0], memoryview(rest))
        assert np.array_equal(x, y) and y.dtype == np.float32 and offset == len(rest)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "t", "datatype": "FP128", "shape": [1], "data": [1]}, "datatype 'FP128' is not one of"),
        ({"name": "t", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}, r"shape \[2, 2\] needs 4 values"),
        ({"name": "t", "datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        (
            {"name": "t", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            "8 bytes announced, 0 left",
        ),
        ({"name": "t", "datatype": "INT32", "shape": [1], "data": ["x"]}, "data is not INT32"),
    ],
)
def test_bad_tensors_say_what_was_expected(spec, message):
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(spec)


# --- dynamic batching ---------------------------------------------------------------------------


def held_batcher(**kw):
    """A batcher whose first forward pass waits for ``release``: what arrives meanwhile queues.
    ``release.entered`` is set when that first pass has started."""
    release, sizes, threads = threading.Event(), [], []
    release.entered = threading.Event()

    def forward(x):
        threads.append(threading.current_thread().name)
        if len(sizes) == 0:
            release.entered.set()
            release.wait(60)
        return x * 10

    batcher = DynamicBatcher(forward, on_batch=lambda n, _s, _q: sizes.append(n), **kw)
    return batcher, release, sizes, threads


async def until(condition, what: str) -> None:
    """Poll a state on the event loop until it holds (a deadline, so that a failure cannot hang)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def _submit_while_held(batcher, release, count, first=1):
    rows = [np.full((first, 2), -1, np.float32)] + [np.full((1, 2), i, np.float32) for i in range(count)]
    head = asyncio.ensure_future(batcher.submit(rows[0]))
    await until(release.entered.is_set, "the first pass to run (held)")
    rest = [asyncio.ensure_future(batcher.submit(r)) for r in rows[1:]]
    await until(lambda: batcher.waiting == count, "the rest to queue")
    release.set()
    return rows, await asyncio.gather(head, *rest)


def test_an_idle_model_runs_a_request_at_once_and_the_busy_time_gathers_the_next_pass():
    batcher, release, sizes, _ = held_batcher(max_batch_size=6)
    rows, out = asyncio.run(_submit_while_held(batcher, release, 8))
    assert all(np.array_equal(o, r * 10) for r, o in zip(rows, out))  # each request its own rows
    assert sizes == [1, 6, 2]  # alone at once; then what queued meanwhile, at most 6 a pass
    batcher.close()


def test_max_delay_ms_still_waits_for_company_when_asked():
    sizes = []

    async def main():
        batcher = DynamicBatcher(lambda x: x, max_batch_size=6, max_delay_ms=50, on_batch=lambda n, *_: sizes.append(n))
        await asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(8)))
        batcher.close()

    asyncio.run(main())
    assert sizes == [6, 2]


def test_a_full_queue_is_refused_at_once_with_a_retry_after():
    batcher, release, sizes, _ = held_batcher(max_batch_size=4, max_queue=3)

    async def main():
        head = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
        await until(release.entered.is_set, "the first pass to run (held)")
        queued = [asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32))) for _ in range(3)]
        await until(lambda: batcher.waiting == 3, "three to queue")
        with pytest.raises(QueueFull, match="3 images are waiting") as refused:
            await batcher.submit(np.zeros((1, 2), np.float32))
        release.set()
        await asyncio.gather(head, *queued)
        return refused.value

    refused = asyncio.run(main())
    assert refused.retry_after >= 1 and sizes == [1, 3]
    batcher.close()


def test_cheap_passes_run_on_the_event_loop_and_slow_ones_in_a_thread():
    threads = []

    def forward(x):
        threads.append(threading.current_thread() is threading.main_thread())
        return x

    async def sequential(batcher, n):
        for _ in range(n):
            await batcher.submit(np.zeros((1, 2)))
        batcher.close()

    asyncio.run(sequential(DynamicBatcher(forward), 5))
    assert threads[0] is False and threads[-1] is True  # the first pass measures the cost; cheap, so inline after
    threads.clear()
    asyncio.run(sequential(DynamicBatcher(forward, inline=False), 3))
    assert threads == [False, False, False]
    threads.clear()
    asyncio.run(sequential(DynamicBatcher(forward, inline_below_ms=0), 3))  # nothing is cheaper than 0 ms
    assert threads == [False, False, False]


def test_a_failing_forward_or_hook_fails_its_requests_and_never_hangs():
    def boom(_x):
        raise RuntimeError("out of memory")

    def bad_hook(*_):
        raise ValueError("metrics broke")

    async def main():
        batcher = DynamicBatcher(boom, max_delay_ms=20)
        failed = await asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(3)), return_exceptions=True)
        hooked = DynamicBatcher(lambda x: x + 1, on_batch=bad_hook)
        answered = await asyncio.wait_for(hooked.submit(np.zeros((1, 2))), 10)
        return failed, answered

    failed, answered = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert np.array_equal(answered, np.ones((1, 2)))


def test_a_closed_batcher_answers_what_it_queued_and_refuses_new_requests():
    batcher, release, sizes, _ = held_batcher()

    async def main():
        head = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
        await until(release.entered.is_set, "the first pass to run (held)")
        queued = asyncio.ensure_future(batcher.submit(np.ones((1, 2), np.float32)))
        await until(lambda: batcher.waiting == 1, "one to queue")
        batcher.close()
        with pytest.raises(Closed):
            await batcher.submit(np.zeros((1, 2), np.float32))
        release.set()
        return await asyncio.gather(head, queued)

    out = asyncio.run(main())
    assert np.array_equal(out[1], np.full((1, 2), 10)) and sizes == [1, 1]


# --- V2 -------------------------------------------------------------------------------------------


def test_v2_health_server_and_model_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in http.get("/v2").json()["extensions"]
    meta = http.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert http.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]
    assert http.get("/v2/models/digits/ready").status_code == 200
    assert http.post("/v2/repository/index").json() == [{"name": "digits", "version": "1", "state": "READY"}]
    openapi = http.get("/openapi.json").json()  # the OpenAPI docs at /docs are built from it
    assert "/v2/models/digits/infer" in openapi["paths"] and http.get("/docs").status_code == 200


def test_v2_infer_matches_the_model_for_floats_and_for_pixels(http, artifact, digits):
    _, model = artifact
    pixels = digits.test.x[:5].numpy()
    x = digits.normalize(digits.test.x[:5]).numpy()
    reply = http.post("/v2/models/digits/infer", json=infer_body(x, id="req-7")).json()
    assert reply["id"] == "req-7" and reply["model_name"] == "digits" and reply["model_version"] == "1"
    out = reply["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [5, 10]
    expected = local_logits(model, x)
    np.testing.assert_allclose(np.reshape(out["data"], (5, 10)), expected, rtol=1e-5, atol=1e-5)
    raw = http.post("/v2/models/digits/infer", json=infer_body(pixels, "UINT8")).json()["outputs"][0]["data"]
    np.testing.assert_allclose(np.reshape(raw, (5, 10)), expected, rtol=1e-4, atol=1e-4)


def test_v2_binary_tensors_and_classification(http, artifact, digits):
    x = digits.normalize(digits.test.x[:3]).numpy()
    spec, raw = encode_tensor("input", x, binary=True)
    body, headers = encode_body(
        {"inputs": [spec], "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}, [raw]
    )
    response = http.post("/v2/models/digits/infer", content=body, headers=headers)
    header, rest = split_body(response.content, response.headers["Inference-Header-Content-Length"])
    logits, _ = decode_tensor(header["outputs"][0], memoryview(rest))
    np.testing.assert_allclose(logits, local_logits(artifact[1], x), rtol=1e-5, atol=1e-5)
    top = http.post(
        "/v2/models/digits/infer", json=infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": 2}}])
    ).json()["outputs"][0]
    assert top["datatype"] == "BYTES" and top["shape"] == [3, 2]
    score, index, label = top["data"][0].split(":")
    assert int(index) == int(logits[0].argmax()) and label == digits.classes[int(index)] and 0 < float(score) < 1
    # whole numbers written as JSON floats (3.0), as the document allows: the same answer (was a 500: found by
    # schemathesis's stateful phase, classification 1.0 reaching top_k as a float)
    body = infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": 2.0, "binary_data": None}}])
    body["inputs"][0]["shape"] = [3.0, 1, 8, 8.0]
    assert http.post("/v2/models/digits/infer", json=body).json()["outputs"][0] == top
    spec, raw = encode_tensor("input", np.full((1, 1, 8, 8), np.nan, np.float32), binary=True)
    body, headers = encode_body({"inputs": [spec]}, [raw])
    nan = http.post("/v2/models/digits/infer", content=body, headers=headers)
    assert nan.status_code == 400 and "input 'input' holds values that are not finite" in nan.json()["error"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (infer_body(np.zeros((1, 1, 8, 9), np.float32)), 400, r"must have shape \[N, 1, 8, 8\]"),
        (infer_body(np.zeros((1, 1, 8, 8), np.int64), "INT64"), 400, "must be FP32 .* or UINT8"),
        (infer_body(np.zeros((1, 1, 8, 8), np.float32), name="image"), 400, "one input named 'input', got 'image'"),
        (infer_body(np.full((1, 1, 8, 8), np.inf, np.float32)), 400, "not valid JSON .NaN and Infinity"),
        ({"inputs": []}, 400, "inputs: List should have at least 1 item"),
        (infer_body(np.zeros((1, 1, 8, 8), np.float32), outputs=[{"name": "probs"}]), 400, "one output, 'logits'"),
        (
            infer_body(np.zeros((1, 1, 8, 8), np.float32), outputs="logits"),
            400,
            r"outputs: Input should be a valid list \(got 'logits'\)",
        ),
        (
            infer_body(
                np.zeros((1, 1, 8, 8), np.float32), outputs=[{"name": "logits", "parameters": {"classification": "2"}}]
            ),
            400,
            r"outputs\[0\].parameters.classification: Input should be a valid integer \(got '2'\)",
        ),
        (
            infer_body(np.zeros((1, 1, 8, 8), np.float32), parameters=[1]),
            400,
            "parameters: Input should be a valid dictionary",
        ),
    ],
)
def test_client_mistakes_get_a_400_that_says_what_was_expected(http, body, status, message):
    response = http.post("/v2/models/digits/infer", content=json.dumps(body))  # (Python's json writes Infinity)
    assert response.status_code == status
    assert re.search(message, response.json()["error"]), response.json()


def test_malformed_json_unknown_models_and_versions(http):
    assert http.post("/v2/models/digits/infer", content=b"{nope").status_code == 400
    missing = http.get("/v2/models/cats")
    assert missing.status_code == 404 and "unknown model 'cats'; this server has: digits" in missing.json()["error"]
    assert http.get("/v2/models/digits/versions/9").status_code == 404
    assert http.post("/v2/models/cats/infer", json={}).status_code == 404


# --- V1 -------------------------------------------------------------------------------------------


def test_v1_predict_classify_and_status(http, artifact, digits):
    x = digits.normalize(digits.test.x[:2]).numpy()
    expected = local_logits(artifact[1], x)
    rows = http.post("/v1/models/digits:predict", json={"instances": x.tolist()}).json()["predictions"]
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-5)
    cols = http.post("/v1/models/digits/versions/1:predict", json={"inputs": {"input": x.tolist()}}).json()["outputs"]
    np.testing.assert_allclose(cols, expected, rtol=1e-5, atol=1e-5)
    results = http.post("/v1/models/digits:classify", json={"instances": x.tolist()}).json()["results"]
    assert results[0][0][0] == digits.classes[int(expected[0].argmax())] and len(results[0]) == 5
    status = http.get("/v1/models/digits").json()["model_version_status"]
    assert status == [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    unknown_verb = http.post("/v1/models/digits:frobnicate", json={})
    assert unknown_verb.status_code == 404 and unknown_verb.json() == {"error": "Not Found"}
    wrong_method = http.put("/v1/models/digits:predict", json={})
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert http.post("/v1/models/digits:predict", json={"instances": [[1, 2]]}).status_code == 400


def test_numbers_beyond_float32_are_a_400_naming_the_input_on_v2_and_v1(http):
    # JSON numbers that overflow FP32 would become infinity, and the model's answer NaN or null
    huge = [[[[1e39] * 8] * 8]]
    v2 = http.post("/v2/models/digits/infer", json={"inputs": [{**infer_body(np.zeros((1, 1, 8, 8)))["inputs"][0],
                                                                "data": huge}]})  # fmt: skip
    assert v2.status_code == 400 and v2.json() == {
        "error": "tensor 'input': data holds numbers beyond the range of FP32"
    }
    for verb in ("predict", "classify", "explain"):
        v1 = http.post(f"/v1/models/digits:{verb}", json={"instances": huge[0]})
        assert v1.status_code == 400 and "beyond float32's range" in v1.json()["error"], (verb, v1.text)
    binary_inf, raw = encode_tensor("input", np.full((1, 1, 8, 8), np.inf, np.float32), binary=True)
    body, headers = encode_body({"inputs": [binary_inf]}, [raw])
    answer = http.post("/v2/models/digits/infer", content=body, headers=headers)
    assert answer.status_code == 400 and "'input' holds values that are not finite" in answer.json()["error"]


def test_values_far_past_a_normalized_image_are_a_400_and_a_non_finite_output_a_500(http, artifact, digits):
    # finite inputs large enough to overflow inside the network (NaN out) are refused, as documented
    x = np.full((1, 1, 8, 8), 3e38, np.float32) * np.where(np.indices((8, 8)).sum(0) % 2, -1, 1).astype(np.float32)
    assert not np.isfinite(local_logits(artifact[1], x)).all()
    v2 = http.post("/v2/models/digits/infer", json=infer_body(x))
    assert v2.status_code == 400 and "input 'input' holds values beyond ±10000" in v2.json()["error"]
    for verb in ("predict", "classify", "explain"):
        v1 = http.post(f"/v1/models/digits:{verb}", json={"instances": x.tolist()})
        assert v1.status_code == 400 and "beyond ±10000" in v1.json()["error"], (verb, v1.text)
    # a model whose own output is not finite (a NaN weight): a 500 in the protocol's shape, never NaN or null
    broken = maaskit.build_model("lenet", digits.in_shape, digits.num_classes)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with serve(broken, data=digits, name="broken") as running:
        v2 = httpx.post(f"{running.url}/v2/models/broken/infer", json=infer_body(np.zeros((1, 1, 8, 8), np.float32)))
        assert v2.status_code == 500 and v2.json() == {
            "error": "model 'broken' gave NaN or infinite outputs for this input: its weights or its arithmetic failed"
        }
        for verb in ("predict", "classify"):
            v1 = httpx.post(
                f"{running.url}/v1/models/broken:{verb}", json={"instances": np.zeros((1, 1, 8, 8)).tolist()}
            )
            assert v1.status_code == 500 and set(v1.json()) == {"error"}, (verb, v1.text)
        assert httpx.get(f"{running.url}/v2/health/ready").status_code == 200  # and the server carries on


# --- maaskit's client, tritonclient, batching, versions, metrics ----------------------------------


def test_maaskit_client(server, artifact, digits):
    x = digits.normalize(digits.test.x[:4])  # a torch tensor is fine too
    with Client(server.url) as client:
        assert client.protocol == "v2" and client.live() and client.ready() and client.models() == ["digits"]
        for binary in (False, True):
            out = client.infer("digits", x, binary=binary)["logits"]
            np.testing.assert_allclose(out, local_logits(artifact[1], x.numpy()), rtol=1e-5, atol=1e-5)
        top = client.predict("digits", digits.test.x[:2], top_k=3)
        assert len(top) == 2 and len(top[0]) == 3 and top[0][0][0] in digits.classes
        assert top[0][0][1] >= top[0][1][1] >= top[0][2][1]
        with pytest.raises(EndpointError, match="400: input 'input' must have shape") as err:
            client.infer("digits", np.zeros((1, 1, 4, 4), np.float32))
        assert err.value.status == 400
        for binary in (False, True):  # Triton's classification extension: BYTES strings, decoded
            strings = client.infer("digits", x, binary=binary, outputs={"logits": {"classification": 2}})["logits"]
            assert strings.shape == (4, 2) and strings.dtype == object
            best = parse_classification(strings)
            expected = [digits.classes[j] for j in local_logits(artifact[1], x.numpy()).argmax(1)]
            assert [row[0][0] for row in best] == expected and all(a[1] >= b[1] for a, b in best)
    with Client(server.url, protocol="v1") as v1:
        assert v1.infer("digits", x.numpy())["predictions"].shape == (4, 10)
        with pytest.raises(ValueError, match="does not describe its input normalization"):
            v1.predict("digits", digits.test.x[:2])  # raw pixels would be silently wrong


def test_an_unreachable_endpoint_is_a_clear_error_after_bounded_retries():
    client = Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, timeout=2)
    start = time.monotonic()
    with pytest.raises(EndpointError, match="cannot reach") as err:
        client.metadata("digits")
    assert err.value.status is None and time.monotonic() - start < 10


def test_tritonclient_talks_to_our_server(server, artifact, digits):
    tritonclient = require("tritonclient.http")
    client = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert client.get_model_metadata("digits")["inputs"][0]["name"] == "input"
    x = digits.normalize(digits.test.x[:3]).numpy()
    for binary in (True, False):  # tritonclient sends binary tensors by default
        inp = tritonclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(
            "digits", [inp], outputs=[tritonclient.InferRequestedOutput("logits", binary_data=binary)], request_id="t1"
        )
        np.testing.assert_allclose(result.as_numpy("logits"), local_logits(artifact[1], x), rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == "t1"
    classes = client.infer("digits", [inp], outputs=[tritonclient.InferRequestedOutput("logits", class_count=2)])
    assert classes.as_numpy("logits").shape == (3, 2)


def test_concurrent_requests_are_batched_and_counted(server, digits, http):
    served = server.repository.get("digits")
    served.batch_sizes.clear()
    result = load_test(server.url, "digits", digits.test.x[:32], requests=96, concurrency=16)
    assert result.failures == 0 and len(result.latencies_ms) == 96
    assert sum(served.batch_sizes) == 96 and max(served.batch_sizes) > 1  # merged forward passes
    metrics = http.get("/metrics").text
    assert 'maaskit_requests_total{model="digits",protocol="v2"}' in metrics
    assert "maaskit_batch_size_bucket" in metrics


def test_a_new_version_is_served_without_a_restart(tmp_path, digits):
    maaskit.seed_everything(1)
    other = maaskit.build_model("mlp", digits.in_shape, digits.num_classes)
    v2 = save_artifact(other, tmp_path / "v2", data=digits, name="digits")
    maaskit.seed_everything(0)
    first = save_artifact(
        maaskit.build_model("lenet", digits.in_shape, 10), tmp_path / "v1", data=digits, name="digits"
    )
    with serve(first) as running, Client(running.url) as client:
        x = digits.normalize(digits.test.x[:2]).numpy()
        before = client.infer("digits", x)["logits"]
        running.repository.add(v2)
        assert client.metadata("digits")["versions"] == ["1", "2"]
        np.testing.assert_allclose(
            client.infer("digits", x)["logits"], local_logits(other.eval(), x), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(client.infer("digits", x, version="1")["logits"], before)


# --- safety and limits ---------------------------------------------------------------------------


def test_token_body_limit_and_loopback_only(artifact, digits):
    with (
        serve(artifact[0], token="s3cret", max_body_bytes=10_000) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        assert http.get("/v2/health/ready").status_code == 200  # probes need no token
        refused = http.get("/v2/models/digits")
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        auth = {"Authorization": "Bearer s3cret"}
        assert http.get("/v2/models/digits", headers=auth).status_code == 200
        big = infer_body(np.zeros((40, 1, 8, 8), np.float32))  # ~ 12 kB of JSON
        too_big = http.post("/v2/models/digits/infer", json=big, headers=auth)
        assert too_big.status_code == 413 and "limit of 10,000" in too_big.json()["error"]
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without a token"):
        serve(artifact[0], host="0.0.0.0")


def test_serve_and_predict_from_the_command_line(artifact, digits, tmp_path):
    port = free_port()
    images = tmp_path / "three.npy"
    np.save(images, digits.test.x[0].numpy())
    env = {**os.environ, "MAASKIT_TOKEN": "cli-token"}
    server = subprocess.Popen(
        [sys.executable, "-m", "maaskit", "serve", str(artifact[0]), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "maaskit serve did not start"
                time.sleep(0.3)
        predict = subprocess.run(
            [
                sys.executable,
                "-m",
                "maaskit",
                "predict",
                f"http://127.0.0.1:{port}",
                str(images),
                "--model",
                "digits",
                "--token",
                "cli-token",
                "--top-k",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert predict.returncode == 0, predict.stderr
        assert predict.stdout.startswith(f"{images}: ") and predict.stdout.count("%") == 2
        refused = subprocess.run(
            [sys.executable, "-m", "maaskit", "predict", f"http://127.0.0.1:{port}", str(images), "--model", "digits"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "401" in refused.stderr
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "serving digits version 1" in output


# --- exports for Triton and KServe ----------------------------------------------------------------


def test_onnx_and_torchscript_exports_give_the_models_outputs(artifact, tmp_path):
    require("onnxruntime")
    from maaskit.serving.export import export_onnx, export_torchscript

    path, difference = export_onnx(artifact[0], tmp_path / "model.onnx")
    assert path.stat().st_size > 1000 and difference < 1e-5
    scripted = torch.jit.load(str(export_torchscript(artifact[0], tmp_path / "model.pt")))
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(scripted(x), artifact[1](x))


def test_triton_repository_and_kserve_manifest(artifact, tmp_path, digits):
    yaml = require("yaml")
    from maaskit.serving.export import kserve_manifest, triton_repository

    folder = triton_repository(artifact[0], tmp_path / "repo", max_batch_size=16, max_queue_size=64)
    assert (folder / "1" / "model.onnx").is_file()
    assert (folder / "labels.txt").read_text().split() == list(digits.classes)
    config = (folder / "config.pbtxt").read_text()
    for line in (
        'name: "digits"',
        'backend: "onnxruntime"',
        "max_batch_size: 16",
        "dims: [ 1, 8, 8 ]",
        "max_queue_delay_microseconds: 0",  # as maaskit's batcher: no fixed wait
        "default_queue_policy { max_queue_size: 64 }",
    ):
        assert line in config
    service = yaml.safe_load(kserve_manifest("digits", "gs://models/repo", gpu=True))
    model = service["spec"]["predictor"]["model"]
    assert service["kind"] == "InferenceService" and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "gs://models/repo" and model["resources"]["limits"] == {"nvidia.com/gpu": 1}


# --- the EndpointConsole, without a browser --------------------------------------------------------


def test_endpoint_console_connects_sends_and_load_tests(artifact, digits):
    from maaskit.widgets import EndpointConsole

    with serve(artifact[0], token="tok") as running:
        console = EndpointConsole(
            running.url, images=digits.test.x[:50], labels=digits.test.y[:50], classes=digits.classes
        )
        assert console.connect() == [] and console.error.status == 401
        assert "wants a token" in console.status.value
        console.token_w.value = "tok"
        console.connect_button.click()
        assert list(console.model_w.options) == ["digits"] and console.model_w.value == "digits"
        assert console.concurrency_w.value == 16  # as notebook 06 measures
        console.index_w.value = 3  # the picture follows the slider before anything is sent
        assert bytes(console.image.value).startswith(b"\x89PNG") and console.image.layout.display is None
        assert "test image 3 · true label" in console.status.value and "Send" in console.status.value
        preview = bytes(console.image.value)
        console.send_button.click()
        assert bytes(console.image.value) != preview
        top = console.last_prediction["top"]
        assert len(top) == 3 and console.last_prediction["label"] == digits.classes[int(digits.test.y[3])]
        assert bytes(console.image.value).startswith(b"\x89PNG") and " ms" in console.status.value
        sent = bytes(console.image.value)
        console.method_w.value = "occlusion"
        console.explain_button.click()
        assert console.error is None and bytes(console.image.value) != sent
        assert console.last_explanation["method"] == "occlusion" and "occlusion: why" in console.status.value
        with Client(running.url, token="tok") as client:
            expected, _ = client.explain("digits", digits.test.x[3:4], method="occlusion")
        maps, target = console.explain()
        np.testing.assert_array_equal(maps, expected[0])
        assert digits.classes[target] == console.last_explanation["target"]
        assert "last explanation: occlusion" in str(console)
        console.requests_w.value, console.concurrency_w.value = 40, 4
        console.load_button.click()
        assert console.last_load.requests == 40 and console.last_load.failures == 0
        assert "requests/s" in console.status.value and "p99" in console.status.value
        assert "last load test" in str(console)
    console.send()  # the server is gone: a readable error, no exception
    assert console.error.status is None and "is the server running" in console.status.value


def test_several_models_at_once_and_a_graceful_stop(tmp_path, digits):
    maaskit.seed_everything(0)
    paths = [
        save_artifact(
            maaskit.build_model(arch, digits.in_shape, 10), tmp_path / arch, data=digits, name=f"{arch}-digits"
        )
        for arch in ("lenet", "mlp")
    ]
    running = serve(*paths)
    with Client(running.url) as client:
        assert client.models() == ["lenet-digits", "mlp-digits"]
    served = running.repository.get("mlp-digits")
    forward = served.batcher.fn

    entered, release = threading.Event(), threading.Event()

    def slow(x):  # a request still in flight when the stop comes
        entered.set()
        release.wait(60)
        return forward(x)

    served.batcher.fn = slow
    result = {}

    def call():
        with Client(running.url, retries=0) as client:
            result["logits"] = client.infer("mlp-digits", digits.normalize(digits.test.x[:2]))["logits"]

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(60)  # its forward pass is running
    running.begin_stop()
    release.set()
    running.stop()
    caller.join(10)
    assert result["logits"].shape == (2, 10)  # finished, not cut off
    with pytest.raises(EndpointError, match="cannot reach"):
        Client(running.url, retries=0, timeout=2).live()


def test_one_serve_config_holds_the_defaults_and_one_rule_guards_a_public_address(tmp_path, artifact):
    import inspect

    from maaskit.serving.batching import DynamicBatcher
    from maaskit.serving.config import ServeConfig, options
    from maaskit.serving.runner import NOTEBOOK_DEFAULTS, serve_workers

    defaults = ServeConfig()
    # serve()'s keywords and `maaskit serve`'s options are made from ServeConfig's fields: every one, its default
    params = inspect.signature(maaskit.serve).parameters
    parsed = vars(maaskit.cli.build_parser().parse_args(["serve"]))
    for option in options():
        if option.name != "api_keys":  # serve() also takes an APIKeys object
            assert params[option.name].default == NOTEBOOK_DEFAULTS.get(option.name, option.default), option.name
        assert parsed[option.name] == option.default, option.name
    assert NOTEBOOK_DEFAULTS == {"port": 0, "compile": False}  # in a notebook, any free port, eager
    with pytest.raises(TypeError, match="unexpected keyword arguments: max_batch"):
        maaskit.serve(artifact[0], max_batch=4)
    assert inspect.signature(DynamicBatcher).parameters["max_queue"].default == defaults.max_queue

    public = ServeConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="without a token or API keys"):
        public.check_exposure(has_keys=False)
    public.check_exposure(has_keys=True)  # keys protect it, for one worker or many
    public.but(token="t").check_exposure(has_keys=False)
    # --workers 2 on a public address with only API keys gets past the exposure check to the artifacts
    keys = tmp_path / "keys.json"
    keys.write_text('[{"name": "alice", "key": "sk-alice-0123456789"}]')
    with pytest.raises(ValueError, match="without a token or API keys"):
        serve_workers([str(artifact[0])], public.but(workers=2))
    with pytest.raises(ArtifactError):
        serve_workers([str(tmp_path / "missing")], public.but(workers=2, api_keys=str(keys)))


def test_a_new_protocol_is_one_class_handed_to_the_app(artifact):
    # routes, the paths that run a model (metrics), open paths, its error shape and its part of the
    # document, all declared by the protocol itself: the app only loops over what it is given
    from fastapi import APIRouter

    from maaskit.serving.app import create_app
    from maaskit.serving.dataplane import ModelRepository
    from maaskit.serving.endpoints import Endpoints

    class Echo(Endpoints):
        name = "echo"
        inference = re.compile(r"^/echo/(?P<model>[^/]+)/run$")
        open_paths = ("/echo/health",)

        def __init__(self, repository):
            self.repository = repository

        def router(self):
            api = APIRouter()
            api.add_api_route("/echo/health", self.health, methods=["GET"])
            api.add_api_route("/echo/{name}/run", self.run, methods=["POST"])
            return api

        async def health(self):
            return {"ok": True}

        async def run(self, name: str):
            return {"ran": self.repository.classifier(name).name}

        def owns_errors(self, path):
            return path.startswith("/echo/")

        def error_body(self, status, message, *, param=None, code=None):
            return {"echo_error": message, "status": status}

        def document(self, doc, repository):
            doc["paths"]["/echo/{name}/run"]["post"]["summary"] = f"runs one of {', '.join(repository.names())}"

    repository = ModelRepository(device="cpu")
    repository.add(artifact[0])
    app = create_app(repository, token="t", protocols=[Echo(repository)])
    auth = {"Authorization": "Bearer t"}

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://maaskit") as http:
            assert (await http.get("/echo/health")).json() == {"ok": True}  # open: no token
            refused = await http.post("/echo/digits/run")
            assert refused.status_code == 401 and refused.json()["echo_error"].startswith("missing or wrong")
            assert (await http.post("/echo/digits/run", headers=auth)).json() == {"ran": "digits"}
            missing = await http.post("/echo/cats/run", headers=auth)
            assert missing.status_code == 404
            assert missing.json() == {"echo_error": "unknown model 'cats'; this server has: digits", "status": 404}
            doc = (await http.get("/openapi.json")).json()
            assert doc["paths"]["/echo/{name}/run"]["post"]["summary"] == "runs one of digits"
            assert "/v2/models/digits/infer" in doc["paths"]  # the others' parts are still there
            return (await http.get("/metrics", headers=auth)).text

    try:
        metrics = asyncio.run(calls())
    finally:
        repository.close()
    assert 'maaskit_requests_total{model="digits",protocol="echo"} 1.0' in metrics


def test_a_folder_to_serve_is_checked_from_its_description_without_loading_it(artifact, lm_dir, tmp_path):
    import shutil

    from maaskit.serving.dataplane import check_source

    broken = tmp_path / "broken"  # its weights are not safetensors: loading would fail, checking does not read them
    shutil.copytree(artifact[0], broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    check_source(broken)
    check_source(lm_dir)
    with pytest.raises(ArtifactError, match="is not a folder"):
        check_source(tmp_path / "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        check_source(tmp_path / "empty")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    (hf / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="GPT2LMHeadModel"):
        check_source(hf)
