"""Faults the server must survive, for real on 127.0.0.1: a ``--workers`` process killed under
load, clients that vanish mid-request or mid-stream, and generated OpenAI bodies of every shape."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field

import httpx
import numpy as np
import psutil
import pytest
from conftest import require, start_cli, v2_body, wait_for

import maaskit

# --- a worker killed under load ------------------------------------------------------------------------


@dataclass
class Looper:
    """One keep-alive connection sending V2 requests until told to stop; counts answers and errors."""

    url: str
    body: dict
    answered: int = 0
    errors: list = field(default_factory=list)
    port: int | None = None  # this client's local port: which worker holds its connection
    stop: threading.Event = field(default_factory=threading.Event)

    def connect(self) -> Looper:
        self.client = httpx.Client(timeout=60)
        response = self.client.post(self.url + "/v2/models/digits/infer", json=self.body)
        assert response.status_code == 200
        self.port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        self.answered += 1
        return self

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                response = self.client.post(self.url + "/v2/models/digits/infer", json=self.body)
                assert response.status_code == 200, response.text
                self.answered += 1
            except httpx.TransportError as err:  # the next request opens a new connection
                self.errors.append(repr(err))
        self.client.close()


def worker_pids(lines: list[str]) -> list[int]:
    return [int(m) for line in lines for m in re.findall(r"Started server process \[(\d+)\]", line)]


def holder(port: int, workers: list[int]) -> int | None:
    """The worker whose socket is the server's end of the connection from local ``port``."""
    for pid in workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == port:
                return pid
    return None


def test_a_worker_killed_under_load_is_replaced_and_its_peer_loses_nothing(artifact, digits):
    process, url, lines = start_cli(str(artifact[0]), "--workers", "2", "--log-level", "info")
    loopers: list[Looper] = []
    try:
        wait_for(lambda: sum("Application startup complete" in line for line in lines) == 2, "two workers")
        workers = worker_pids(lines)
        body = v2_body(digits)
        by_worker: dict[int, list[Looper]] = {pid: [] for pid in workers}
        while min(len(v) for v in by_worker.values()) < 2 and len(loopers) < 64:  # each worker holds some
            looper = Looper(url, body).connect()
            loopers.append(looper)
            by_worker[holder(looper.port, workers)].append(looper)
        assert min(len(v) for v in by_worker.values()) >= 2, {p: len(v) for p, v in by_worker.items()}
        victim, survivor = workers
        for looper in loopers:
            looper.start()
        wait_for(lambda: all(lp.answered >= 5 for lp in loopers), "load on both workers")

        os.kill(victim, signal.SIGKILL)
        at_kill = {id(lp): lp.answered for lp in loopers}
        wait_for(lambda: len(worker_pids(lines)) == 3, "a replacement worker")
        wait_for(lambda: sum("Application startup complete" in line for line in lines) == 3, "it to start")
        wait_for(lambda: all(lp.answered >= at_kill[id(lp)] + 10 for lp in loopers), "answers after the kill")
    finally:
        for looper in loopers:
            looper.stop.set()
        for looper in loopers:
            if hasattr(looper, "thread"):
                looper.thread.join(60)  # its last request answered: the counts are final
    try:
        for looper in by_worker[survivor]:
            assert looper.errors == []  # the other worker's clients lost nothing
        for looper in by_worker[victim]:
            assert len(looper.errors) <= 1, looper.errors  # the request in flight on the dead connection, at most
        answered = sum(lp.answered for lp in loopers)
        lost = sum(len(lp.errors) for lp in loopers)
        metrics = httpx.get(url + "/metrics").text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("maaskit_requests_total{"))  # fmt: skip
        # the dead worker's count stays in the sum: every answer is counted once (one lost reply at most
        # per lost connection: the worker may have counted it just before it died)
        assert answered <= counted <= answered + lost, (answered, counted, lost)
        alive = set(re.findall(r'maaskit_server_process\{pid="(\d+)"\} 1\.0', metrics))
        assert alive == {str(survivor), str(worker_pids(lines)[2])}, metrics  # the dead one left the gauge
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0, "".join(lines[-20:])
    finally:
        if process.poll() is None:
            process.kill()


# --- clients that vanish --------------------------------------------------------------------------------


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _half_a_body(port: int, path: str, body: bytes) -> None:
    """Connect, send the headers and half the body, vanish."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])


def _stream_then_leave(url: str, lines: int) -> None:
    """A token stream whose client reads ``lines`` lines, then disconnects."""
    body = {"model": "gpt", "prompt": "def", "max_tokens": 400, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i >= lines:
                break


def test_clients_that_vanish_leave_nothing_behind(artifact, lm_dir, digits):
    from concurrent.futures import ThreadPoolExecutor

    process, url, _ = start_cli(str(artifact[0]), str(lm_dir))
    try:
        server = psutil.Process(process.pid)
        port = int(url.rsplit(":", 1)[1])
        v2 = json.dumps(v2_body(digits, 4)).encode()
        explain = json.dumps({"instances": v2_body(digits, 2)["inputs"][0]["data"], "method": "lime"}).encode()
        for _ in range(20):  # warm: the first requests allocate what every later one reuses
            assert httpx.post(url + "/v2/models/digits/infer", content=v2).status_code == 200
            _stream_then_leave(url, 3)
        before = server.memory_info().rss
        rng = np.random.default_rng(0)
        with ThreadPoolExecutor(16) as pool:
            halves = [pool.submit(_half_a_body, port, "/v2/models/digits/infer", v2) for _ in range(450)]
            halves += [pool.submit(_half_a_body, port, "/v1/models/digits:explain", explain) for _ in range(50)]
            streams = [pool.submit(_stream_then_leave, url, int(n)) for n in rng.integers(0, 60, size=200)]
            for job in halves + streams:
                job.result()
        wait_for(lambda: _metric(url, "maaskit_lm_running_sequences") == 0, "no running sequence", 120)
        assert _metric(url, "maaskit_lm_waiting_sequences") == 0
        assert _metric(url, "maaskit_lm_cache_slots_used") == 0  # every slot came back
        assert _metric(url, "maaskit_lm_abandoned_sequences_total") >= 200 - 10  # they stopped, not ran on
        explainers = [c for c in server.children(recursive=True) if "multiprocessing" in " ".join(c.cmdline())]
        assert len(explainers) <= 1  # one per model at most, started on the first explanation
        after = server.memory_info().rss
        assert after - before < 50 * 2**20, (before, after)
        answer = httpx.post(url + "/v2/models/digits/infer", content=v2)  # and it still answers
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [4, 10]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


# --- generated OpenAI bodies ------------------------------------------------------------------------------

hypothesis = require("hypothesis")
st = hypothesis.strategies

texts = st.text(st.characters(codec="utf-8"), max_size=40)  # every plane, control characters included
contents = texts | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts}),
                            max_size=3) | st.integers() | st.none()  # fmt: skip
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "developer", "tool", "robot", ""])},
        optional={"content": contents, "name": texts},
    ),
    max_size=4,
)
numbers = st.integers(-5, 4000) | st.floats(allow_nan=False, allow_infinity=False) | st.none() | st.text(max_size=3)
openai_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt", "nope", ""])},
    optional={
        "messages": messages,
        "prompt": texts | st.lists(texts, max_size=3) | st.lists(st.integers(-3, 400), max_size=30),
        "max_tokens": numbers,
        "max_completion_tokens": numbers,
        "n": st.integers(-1, 40) | st.none(),
        "temperature": numbers,
        "top_p": numbers,
        "top_k": numbers,
        "logprobs": st.booleans() | numbers,
        "top_logprobs": numbers,
        "stop": texts | st.lists(texts, max_size=6) | st.none(),
        "seed": numbers,
        "stream": st.booleans(),
        "echo": st.booleans(),
    },
)


@pytest.fixture(scope="module")
def quota_server(tiny_lm):
    from maaskit.serving.keys import APIKeys

    keys = APIKeys.parse(json.dumps([{"name": "small", "key": "sk-small-000001", "tpm": 2000}]))
    with maaskit.serve(tiny_lm, api_keys=keys) as running:
        yield running


@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(body=openai_bodies, chat=st.booleans())
def test_generated_openai_bodies_get_no_5xx_and_every_error_in_openais_shape(quota_server, body, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {"Authorization": "Bearer sk-small-000001"}
    with httpx.Client(base_url=quota_server.url, timeout=60, headers=headers) as http:
        response = http.post(path, json=body)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        elif body.get("stream"):
            assert response.text.rstrip().endswith("data: [DONE]")
