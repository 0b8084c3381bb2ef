"""A client for inference endpoints: maaskit's own server, Triton, KServe, MLServer (V2) and
TF Serving (V1). Arrays in, NumPy arrays out; the server's error message in every exception.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from .protocol import HEADER_LENGTH, decode_tensor, encode_body, encode_tensor, split_body
from .protocol import top_k as _top_k  # predict() has a parameter named top_k

__all__ = ["Client", "EndpointError", "LoadTestResult", "load_test"]

ArrayLike = Any  # a NumPy array, a torch tensor or nested lists of numbers


class EndpointError(RuntimeError):
    """The endpoint answered with an error (``status`` set) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _as_array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class Client:
    """``Client("http://127.0.0.1:8000")``; ``protocol="auto"`` asks ``/v2/health/ready`` and falls back to V1.

    Connection errors and 503s are retried ``retries`` times with exponential back-off; a 4xx
    never is (the request itself is wrong, and the exception carries the server's message).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        protocol: str = "auto",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
    ):
        if protocol not in ("auto", "v2", "v1"):
            raise ValueError(f"protocol must be auto, v2 or v1, got {protocol!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the endpoint URL must start with http:// or https://, got {url!r}")
        self.url, self.retries, self.backoff = url.rstrip("/"), retries, backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._protocol = None if protocol == "auto" else protocol

    # --- plumbing -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise EndpointError(f"cannot reach {self.url}{path}: {type(err).__name__}: {err}") from None
            else:
                if response.status_code != 503 or attempt == self.retries:
                    if response.status_code >= 400:
                        raise EndpointError(
                            f"{method} {path} -> {response.status_code}: {_message(response)}", response.status_code
                        )
                    return response
                if (retry_after := _retry_after(response)) is not None:  # the server says when; capped
                    time.sleep(min(retry_after, 10.0))
                    continue
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    @property
    def protocol(self) -> str:
        if self._protocol is None:
            try:
                self._request("GET", "/v2/health/ready")
                self._protocol = "v2"
            except EndpointError as err:
                if err.status is None:
                    raise
                self._protocol = "v1"
        return self._protocol

    # --- the API --------------------------------------------------------------------------------

    def live(self) -> bool:
        return self._request("GET", "/v2/health/live").status_code == 200

    def ready(self) -> bool:
        return self._request("GET", "/v2/health/ready").status_code == 200

    def models(self) -> list[str]:
        """Model names (Triton's and maaskit's repository index)."""
        return sorted({m["name"] for m in self._request("POST", "/v2/repository/index", json={}).json()})

    def metadata(self, model: str, version: str | None = None) -> dict:
        if self.protocol == "v1":
            return self._request("GET", f"/v1/models/{model}" + (f"/versions/{version}" if version else "")).json()
        return self._request("GET", _v2_path(model, version)).json()

    def infer(
        self,
        model: str,
        inputs: ArrayLike | dict[str, ArrayLike],
        *,
        version: str | None = None,
        binary: bool = False,
        outputs: list[str] | dict[str, dict] | None = None,
        request_id: str | None = None,
        metadata: dict | None = None,
        parameters: dict | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` — an array (for a one-input model) or ``{name: array}`` —
        and return ``{output name: array}``. ``binary=True`` uses Triton's binary tensor format.
        ``outputs``: names, or ``{name: parameters}`` such as ``{"logits": {"classification": 3}}``
        (Triton's classification extension: BYTES ``"score:index:label"``, read with
        :func:`~maaskit.serving.protocol.parse_classification`). ``metadata`` (from :meth:`metadata`)
        saves asking the endpoint for names again; ``parameters``, the request's V2 parameters."""
        if self.protocol == "v1":
            array = _as_array(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
            path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
            reply = self._request("POST", path, json={"instances": array.tolist()}).json()
            return {"predictions": np.asarray(reply["predictions"])}
        if not isinstance(inputs, dict) or binary and not outputs:
            metadata = metadata or self.metadata(model, version)  # asked once, whatever needs it
        if not isinstance(inputs, dict):
            assert metadata is not None
            inputs = {metadata["inputs"][0]["name"]: inputs}
        specs, chunks = zip(*(encode_tensor(name, _as_array(x), binary=binary) for name, x in inputs.items()))
        header: dict[str, Any] = {"inputs": list(specs)}
        if request_id is not None:
            header["id"] = request_id
        if parameters:
            header["parameters"] = parameters
        if outputs or binary:
            wanted = outputs or [o["name"] for o in (metadata or {})["outputs"]]
            asked = wanted if isinstance(wanted, dict) else {n: {} for n in wanted}
            header["outputs"] = [{"name": n, "parameters": {"binary_data": binary, **p}} for n, p in asked.items()]
        body, headers = encode_body(header, list(chunks))
        response = self._request("POST", _v2_path(model, version) + "/infer", content=body, headers=headers)
        reply, raw = split_body(response.content, response.headers.get(HEADER_LENGTH))
        result, offset = {}, 0
        for spec in reply["outputs"]:
            result[spec["name"]], offset = decode_tensor(spec, memoryview(raw), offset)
        return result

    def predict(
        self, model: str, images: ArrayLike, *, top_k: int = 3, version: str | None = None, metadata: dict | None = None
    ) -> list[list[tuple]]:
        """Class labels and probabilities, best first, for each image (uint8 pixels N x C x H x W,
        or normalized floats)."""
        images = _as_array(images)
        if self.protocol == "v1" and images.dtype == np.uint8:
            # a V1 endpoint does not say how it normalizes: sending raw pixels would quietly give wrong answers
            raise ValueError(
                "a V1 (TF Serving) endpoint does not describe its input normalization: "
                "pass normalized float images (e.g. data.normalize(images))"
            )
        meta = metadata or self.metadata(model, version)
        classes = (meta.get("parameters") or {}).get("classes")
        if images.dtype not in (np.uint8, np.float32):
            images = images.astype(np.float32)
        logits = next(iter(self.infer(model, images, version=version, metadata=meta).values()))
        return _top_k(logits, top_k, classes or None)

    def explain(
        self,
        model: str,
        images: ArrayLike,
        *,
        method: str = "integrated_gradients",
        target: int | list[int] | None = None,
        version: str | None = None,
        metadata: dict | None = None,
        **params: Any,
    ) -> tuple[np.ndarray, list[int]]:
        """Attributions for ``images``, shaped as the images, with the classes they explain (the
        predicted ones by default); maaskit's server. ``params``: ``steps``, ``samples``,
        ``window``, ``seed``, as the method takes them.

        Normalized float images go to the ``:explain`` verb (KServe's V1 convention); uint8 pixels
        go to V2 ``/infer`` with ``parameters.explain``, so that the server normalizes them as it
        does for inference (the attributions are then per normalized input value)."""
        images = _as_array(images)
        how: dict[str, Any] = {"method": method, **params}
        if target is not None:
            how["target"] = target
        if images.dtype == np.uint8:
            if self.protocol == "v1":
                raise ValueError(
                    "a V1 endpoint does not describe its input normalization: pass the model's normalized "
                    "float images (e.g. data.normalize(images)), or use a V2 endpoint"
                )
            out = self.infer(model, images, version=version, metadata=metadata, parameters={"explain": how})
            return out["attributions"].astype(np.float32), [int(t) for t in out["targets"]]
        body = {"instances": images.astype(np.float32).tolist(), **how}
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":explain"
        explanations = self._request("POST", path, json=body).json()["explanations"]
        return np.asarray([e["attributions"] for e in explanations], np.float32), [e["target"] for e in explanations]

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _v2_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:300] or response.reason_phrase


@dataclass
class LoadTestResult:
    requests: int
    failures: int
    seconds: float
    latencies_ms: list[float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def __repr__(self):
        return (
            f"LoadTestResult({self.requests} requests, {self.failures} failed, {self.requests_per_s:,.0f} req/s, "
            f"p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms, p99 {self.percentile(99):.1f} ms)"
        )


def load_test(
    url: str,
    model: str,
    images: ArrayLike,
    *,
    requests: int = 200,
    concurrency: int = 16,
    token: str | None = None,
    timeout: float = 30.0,
) -> LoadTestResult:
    """Send ``requests`` V2 requests of one image each, ``concurrency`` at a time; bounded, it stops by itself."""
    images = _as_array(images)
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with Client(url, token=token, protocol="v2", timeout=timeout) as client:
        input_name = client.metadata(model)["inputs"][0]["name"]

    async def run():
        latencies, failures = [], 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker(http):
            nonlocal failures
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                spec, _ = encode_tensor(input_name, images[i % len(images)][None])
                body, body_headers = encode_body({"inputs": [spec]}, [])
                start = time.perf_counter()
                try:
                    response = await http.post(f"/v2/models/{model}/infer", content=body, headers=body_headers)
                    ok = response.status_code == 200
                except httpx.TransportError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                failures += not ok

        async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as http:
            start = time.perf_counter()
            await asyncio.gather(*(worker(http) for _ in range(min(concurrency, requests))))
            return LoadTestResult(requests, failures, time.perf_counter() - start, latencies)

    with ThreadPoolExecutor(1) as pool:  # its own event loop: works inside Jupyter's running one too
        return pool.submit(asyncio.run, run()).result()
