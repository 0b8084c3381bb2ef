"""EndpointConsole: call a model endpoint — maaskit's, Triton, KServe, TF Serving — from a notebook."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as w
import numpy as np

from .. import plots
from ..explain import METHODS
from ..images import read_image
from ..serving.client import Client, EndpointError, LoadTestResult, load_test
from .base import CONTROL, WidgetBase, figure_image, flow

__all__ = ["EndpointConsole"]


class EndpointConsole(WidgetBase):
    """URL, token and protocol; a model list from the endpoint; **Send** one test image (or an
    uploaded one) and see the top classes and the latency; **Explain** it with the chosen method
    and see the attributions over the image (maaskit's server, V2); **Load test** N requests at
    concurrency C and see the latency histogram, p50/p95/p99 and requests/s.

    ``images`` (uint8 N x C x H x W) and ``labels`` give the test-image picker something to pick.
    ``connect()``, ``send()``, ``explain()`` and ``load_test()`` are what the buttons call; headless, call them
    and print the console for the same results as text.
    """

    # long: one line per control of the console, laid out as it appears
    def __init__(
        self,
        url: str = "",
        *,
        images: Any = None,  # uint8 N x C x H x W: a tensor or an array
        labels: Any = None,
        classes: Sequence[str] | None = None,
        token: str | None = None,
        protocol: str = "auto",
        top_k: int = 3,
        requests: int = 200,
        concurrency: int = 16,
        method: str = "integrated_gradients",
        timeout: float = 120.0,
    ):
        # how long one request may take: an explanation runs at the lowest CPU priority (its first also
        # starts its process), so on a busy machine it waits for whatever else runs; a hang, not a wait, fails
        self.timeout = timeout
        self.images = None if images is None else (images.numpy() if hasattr(images, "numpy") else np.asarray(images))
        self.labels, self.classes, self.top_k = labels, classes, top_k
        self.client: Client | None = None
        self.last_prediction: dict[str, Any] | None = None
        self.last_load: LoadTestResult | None = None
        self.last_explanation: dict[str, Any] | None = None
        self.error: Exception | None = None
        self._uploaded: bytes | None = None  # an uploaded image file, sent instead of the test image

        ctl, wide, narrow = CONTROL, w.Layout(width="420px"), w.Layout(width="200px")
        self.url_w = w.Text(
            value=url, description="endpoint", placeholder="http://127.0.0.1:8000", style=ctl["style"], layout=wide
        )
        self.token_w = w.Password(
            value=token or "", description="token", placeholder="(none)", style=ctl["style"], layout=wide
        )
        self.protocol_w = w.Dropdown(
            options=["auto", "v2", "v1"], value=protocol, description="protocol", style=ctl["style"], layout=narrow
        )
        self.connect_button = w.Button(description="Connect", icon="plug")
        # a combobox: V2 endpoints list their models, for V1 ones type the name
        self.model_w = w.Combobox(
            options=[],
            description="model",
            placeholder="model name",
            style=ctl["style"],
            layout=wide,
            ensure_option=False,
        )
        n = 0 if self.images is None else len(self.images)
        self.index_w = w.IntSlider(
            value=0,
            min=0,
            max=max(n - 1, 0),
            description="test image",
            style=ctl["style"],
            layout=wide,
            disabled=n == 0,
        )
        self.upload_w = w.FileUpload(accept="image/*", multiple=False, description="or upload")
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.method_w = w.Dropdown(
            options=list(METHODS), value=method, description="explain with", style=ctl["style"], layout=wide
        )
        self.explain_button = w.Button(description="Explain", icon="search")
        self.requests_w = w.BoundedIntText(
            value=requests, min=1, max=10_000, description="requests", style=ctl["style"], layout=narrow
        )
        self.concurrency_w = w.BoundedIntText(
            value=concurrency, min=1, max=256, description="concurrency", style=ctl["style"], layout=narrow
        )
        self.load_button = w.Button(description="Load test", icon="tachometer")
        self.status = w.HTML("Enter the endpoint's URL and press <b>Connect</b>.")
        self.status.add_class("maaskit-console-status")
        self.image = figure_image(520)
        self.image.layout.display = "none"

        self.connect_button.on_click(lambda _: self.connect())
        self.send_button.on_click(lambda _: self.send())
        self.explain_button.on_click(lambda _: self.explain())
        self.load_button.on_click(lambda _: self.load_test())
        self.upload_w.observe(self._on_upload, names="value")
        self.index_w.observe(self._on_index, names="value")
        self.widget = w.VBox(
            [
                flow([self.url_w, self.protocol_w, self.connect_button]),
                self.token_w,
                self.model_w,
                flow([self.index_w, self.upload_w, self.send_button]),
                flow([self.method_w, self.explain_button]),
                flow([self.requests_w, self.concurrency_w, self.load_button]),
                self.status,
                self.image,
            ]
        )
        self.widget.add_class("maaskit-endpoint-console")

    # --- actions ----------------------------------------------------------------------------------

    def _fail(self, err: Exception) -> None:
        self.error = err
        if isinstance(err, EndpointError) and err.status == 401:
            hint = " — the endpoint wants a token"
        elif isinstance(err, EndpointError) and err.status is None:
            hint = " — is the server running, and is the URL right?"
        else:
            hint = ""
        self.status.value = (
            f"<span style='color:#c00'><b>{type(err).__name__}:</b> {html.escape(str(err))}{html.escape(hint)}</span>"
        )

    def connect(self) -> list[str]:
        """Reach the endpoint and list its models; returns their names."""
        self.error = None
        try:
            if self.client is not None:
                self.client.close()
            self.client = Client(
                self.url_w.value.strip(),
                token=self.token_w.value or None,
                protocol=self.protocol_w.value,
                retries=1,
                timeout=self.timeout,
            )
            names = self.client.models() if self.client.protocol == "v2" else []
        except (EndpointError, ValueError) as err:
            self._fail(err)
            return []
        self.model_w.options = names
        if names and self.model_w.value not in names:
            self.model_w.value = names[0]
        self.status.value = (
            f"connected to {html.escape(self.client.url)} ({self.client.protocol.upper()}): {len(names)} model(s)"
        )
        return names

    def _on_upload(self, change):
        files = change["new"]
        if not files:
            return
        self._uploaded = bytes(files[0]["content"])
        self.status.value = f"uploaded {html.escape(files[0]['name'])}: press <b>Send</b>"

    def _on_index(self, _change: object = None) -> None:
        """The picture follows the test-image slider: what Send will send, before it is sent."""
        if self.images is None:
            return
        i = self.index_w.value
        truth = f" · true label {self._label(self.labels[i])}" if self.labels is not None else ""
        self._uploaded = None
        self._show(plots.prediction(self.images[i], []))
        self.status.value = f"test image {i}{html.escape(truth)}: press <b>Send</b> to classify it"

    def _image_for(self, meta) -> np.ndarray:
        """The image to send, as uint8 C x H x W in the model's input size."""
        if "inputs" not in meta:  # a V1 endpoint does not say: send the test image as it is
            c, h, wd = self.images.shape[1:] if self.images is not None else (1, 28, 28)
        else:
            c, h, wd = meta["inputs"][0]["shape"][1:]
        if self._uploaded is not None:
            return read_image(self._uploaded, channels=c, size=(h, wd))
        if self.images is None:
            raise ValueError("no test images given and nothing uploaded")
        return self.images[self.index_w.value]

    def send(self):
        """Send the chosen image; returns ``[(label, probability), ...]`` best first."""
        self.error = None
        try:
            if self.client is None or not self.model_w.value:
                raise ValueError("connect to an endpoint and choose a model first")
            meta = self.client.metadata(self.model_w.value)
            image = self._image_for(meta)
            start = time.perf_counter()
            top = self.client.predict(self.model_w.value, image[None], top_k=self.top_k, metadata=meta)[0]
            latency = (time.perf_counter() - start) * 1000
        except (EndpointError, ValueError, OSError) as err:
            self._fail(err)
            return None
        self.last_prediction = {
            "top": top,
            "latency_ms": latency,
            "label": None
            if self._uploaded is not None or self.labels is None
            else self._label(self.labels[self.index_w.value]),
        }
        fig = plots.prediction(image, top, latency_ms=latency)
        self._show(fig)
        truth = self.last_prediction["label"]
        self.status.value = f"<b>{html.escape(str(top[0][0]))}</b> ({top[0][1]:.1%}) in {latency:.1f} ms" + (
            f" · true label {html.escape(str(truth))}" if truth is not None else ""
        )
        self._uploaded = None
        return top

    def explain(self):
        """Explain the chosen image with the chosen method; returns ``(attributions, class explained)``."""
        self.error = None
        method = self.method_w.value
        try:
            if self.client is None or not self.model_w.value:
                raise ValueError("connect to an endpoint and choose a model first")
            if self.client.protocol != "v2":
                raise ValueError("explanations of pixels need maaskit's server over V2 (protocol auto or v2)")
            meta = self.client.metadata(self.model_w.value)
            image = self._image_for(meta)
            start = time.perf_counter()
            maps, targets = self.client.explain(self.model_w.value, image[None], method=method, metadata=meta)
            latency = (time.perf_counter() - start) * 1000
        except (EndpointError, ValueError, OSError) as err:
            self._fail(err)
            return None
        classes = (meta.get("parameters") or {}).get("classes")
        explained = classes[targets[0]] if classes else targets[0]
        self.last_explanation = {"method": method, "target": explained, "latency_ms": latency}
        title = f"explains {explained}"
        self._show(plots.attributions(image[None], {method: maps}, titles=[title], size=2.4))
        self.status.value = (
            f"{html.escape(method.replace('_', ' '))}: why <b>{html.escape(str(explained))}</b> "
            f"(red for, blue against) in {latency:.0f} ms"
        )
        self._uploaded = None
        return maps[0], targets[0]

    def _label(self, y):
        y = int(y)
        return self.classes[y] if self.classes is not None else y

    def load_test(self):
        """N requests at concurrency C (the fields); returns a :class:`LoadTestResult`."""
        self.error = None
        try:
            if self.client is None or not self.model_w.value:
                raise ValueError("connect to an endpoint and choose a model first")
            if self.images is None:
                raise ValueError("a load test needs test images (images=...)")
            result = load_test(
                self.client.url,
                self.model_w.value,
                self.images[:256],
                requests=self.requests_w.value,
                concurrency=self.concurrency_w.value,
                token=self.token_w.value or None,
            )
        except (EndpointError, ValueError) as err:
            self._fail(err)
            return None
        self.last_load = result
        self._show(
            plots.latency_histogram(
                result.latencies_ms, title=f"{result.requests} requests, concurrency {self.concurrency_w.value}"
            )
        )
        self.status.value = html.escape(
            f"{result.requests_per_s:,.0f} requests/s · p50 {result.percentile(50):.1f} ms · "
            f"p95 {result.percentile(95):.1f} ms · p99 {result.percentile(99):.1f} ms · {result.failures} failed"
        )
        return result

    def _show(self, fig):
        self.image.value = plots.png_bytes(fig)
        self.image.layout.display = None

    # --- display ----------------------------------------------------------------------------------

    def __str__(self) -> str:
        lines = [f"EndpointConsole: {self.client.url if self.client else self.url_w.value or 'not connected'}"]
        if self.error is not None:
            lines.append(f"error: {self.error}")
        if self.last_prediction:
            top = ", ".join(f"{label} {p:.1%}" for label, p in self.last_prediction["top"])
            lines.append(f"last prediction: {top} in {self.last_prediction['latency_ms']:.1f} ms")
        if self.last_explanation:
            e = self.last_explanation
            lines.append(f"last explanation: {e['method']} of class {e['target']} in {e['latency_ms']:.0f} ms")
        if self.last_load:
            lines.append(f"last load test: {self.last_load!r}")
        return "\n".join(lines)

    def still_png(self) -> bytes | None:
        return bytes(self.image.value) or None
