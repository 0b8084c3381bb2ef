"""Scaling out: the same model for Triton and KServe.

``export_onnx`` and ``export_torchscript`` write the network in formats serving systems load
without maaskit; ``triton_repository`` lays out a Triton model repository (``config.pbtxt``
with dynamic batching, and the model file under version 1); ``kserve_manifest`` writes the
``InferenceService`` that serves that repository's model over the same V2 protocol. maaskit's
client then talks to any of them unchanged.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..artifact import load_artifact

__all__ = ["export_onnx", "export_torchscript", "kserve_manifest", "triton_repository"]

T = TypeVar("T")


def _example(manifest: dict, batch: int = 2) -> torch.Tensor:
    c, h, w = manifest["inputs"][0]["shape"][1:]
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))


def export_torchscript(artifact: str | Path, path: str | Path) -> Path:
    """A traced TorchScript module (Triton's ``pytorch_libtorch`` backend loads it)."""
    model, manifest = load_artifact(artifact)
    traced = torch.jit.trace(model, _example(manifest))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def _in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new Python process, which takes its memory with it when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def export_onnx(
    artifact: str | Path, path: str | Path, *, check: bool = True, isolated: bool = False
) -> tuple[Path, float | None]:
    """ONNX with a variable batch dimension. With ``check`` and onnxruntime installed, runs both
    and returns the largest difference from PyTorch's output (else None).

    ``isolated=True`` exports in a separate process: the exporter loads about 270 MB of libraries
    (torch.export, onnx, onnxscript, onnxruntime) that a notebook's kernel would otherwise keep."""
    if isolated:
        return _in_fresh_process(export_onnx, artifact, path, check=check)
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"exporting ONNX needs {' and '.join(missing)}: pip install onnx onnxscript onnxruntime")
    model, manifest = load_artifact(artifact)
    x = _example(manifest)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = manifest["inputs"][0]["name"], manifest["outputs"][0]["name"]
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    if not check:
        return path, None
    try:
        import onnxruntime
    except ImportError:
        return path, None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 5):  # the batch dimension really is variable
        batch = _example(manifest, batch=n)
        got = session.run([names[1]], {names[0]: batch.numpy()})[0]
        with torch.no_grad():
            worst = max(worst, float(np.abs(got - model(batch).numpy()).max()))
    return path, worst


def triton_repository(
    artifact: str | Path,
    repository: str | Path,
    *,
    name: str | None = None,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 0,
    max_queue_size: int = 1024,
    fmt: str = "onnx",
    isolated: bool = False,
) -> Path:
    """``repository/<name>/config.pbtxt`` and ``repository/<name>/1/model.(onnx|pt)``; returns the model folder.
    Batching as ``maaskit serve`` does it by default: no fixed wait for company (``max_queue_delay_us``
    0: Triton, too, then batches what waits while the model is busy) and at most ``max_queue_size``
    waiting requests, past which Triton refuses at once (0: no limit). ``isolated=True`` runs the
    export in a separate process, as :func:`export_onnx` does."""
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"fmt must be onnx or torchscript, got {fmt!r}")
    _, manifest = load_artifact(artifact)
    name = name or manifest["name"]
    folder = Path(repository) / name
    if fmt == "onnx":
        export_onnx(artifact, folder / "1" / "model.onnx", check=False, isolated=isolated)
        platform = 'backend: "onnxruntime"'
    else:
        export_torchscript(artifact, folder / "1" / "model.pt")
        platform = 'backend: "pytorch"'
    spec_in, spec_out = manifest["inputs"][0], manifest["outputs"][0]
    dims = lambda spec: ", ".join(str(d) for d in spec["shape"][1:])  # noqa: E731 (Triton leaves out the batch)
    names = (spec_in["name"], spec_out["name"]) if fmt == "onnx" else ("INPUT__0", "OUTPUT__0")
    labels = folder / "labels.txt"
    labels.write_text("\n".join(manifest["classes"]) + "\n")
    (folder / "config.pbtxt").write_text(
        textwrap.dedent(f"""\
        name: "{name}"
        {platform}
        max_batch_size: {max_batch_size}
        input [{{ name: "{names[0]}", data_type: TYPE_FP32, dims: [ {dims(spec_in)} ] }}]
        output [{{ name: "{names[1]}", data_type: TYPE_FP32, dims: [ {dims(spec_out)} ], \
label_filename: "labels.txt" }}]
        dynamic_batching {{
          max_queue_delay_microseconds: {max_queue_delay_us}
          default_queue_policy {{ max_queue_size: {max_queue_size} }}
        }}
        """)
    )
    return folder


def kserve_manifest(name: str, storage_uri: str, *, gpu: bool = False) -> str:
    """A KServe ``InferenceService`` serving a Triton repository from ``storage_uri`` over V2."""
    resources = "\n".join(["      resources:", "        limits: {nvidia.com/gpu: 1}"]) if gpu else "      resources: {}"
    return (
        "\n".join(
            [
                "apiVersion: serving.kserve.io/v1beta1",
                "kind: InferenceService",
                "metadata:",
                f"  name: {name}",
                "spec:",
                "  predictor:",
                "    model:",
                "      modelFormat: {name: triton}",
                "      protocolVersion: v2",
                f"      storageUri: {storage_uri}",
                resources,
            ]
        )
        + "\n"
    )
