"""The Open Inference Protocol's tensors (KServe V2, with Triton's binary extension) as NumPy.

A V2 tensor is ``{"name", "datatype", "shape", "data"}`` with ``data`` flat or nested in
row-major order; with the binary extension the JSON header is followed by the raw
little-endian bytes of each tensor that says ``"parameters": {"binary_data_size": n}``, and
the header's length travels in the ``Inference-Header-Content-Length`` HTTP header.
Nothing here knows about HTTP servers or models: the server and the client both use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "ProtocolError",
    "decode_tensor",
    "encode_body",
    "encode_tensor",
    "softmax",
    "split_body",
    "to_datatype",
    "top_k",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_BY_DTYPE: dict[np.dtype, str] = {np.dtype(v): k for k, v in DATATYPES.items()}


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol; the message says what was expected."""


def to_datatype(dtype: np.typing.DTypeLike) -> str:
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"no V2 datatype for {np.dtype(dtype)}; use one of {', '.join(DATATYPES)}") from None


def split_body(body: bytes, header_length: str | int | None) -> tuple[dict, bytes]:
    """The JSON header of a V2 body and the binary bytes after it (empty without the extension)."""
    try:
        n = int(header_length) if header_length not in (None, "") else len(body)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    try:
        header = json.loads(body[:n])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise ProtocolError("the request body must be a JSON object")
    return header, body[n:]


def decode_tensor(spec: dict, binary: memoryview | bytes = b"", offset: int = 0) -> tuple[np.ndarray, int]:
    """One tensor of a request or response as an array; returns it and the new binary offset."""
    if not isinstance(spec, dict):
        raise ProtocolError(f"a tensor must be an object with name, datatype, shape and data, got {spec!r:.80}")
    name = spec.get("name", "?")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in DATATYPES:
        raise ProtocolError(f"tensor {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"tensor {name!r}: binary_data_size {size} does not fit shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"tensor {name!r}: {size} bytes announced, {len(binary) - offset} left in the body")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array.astype(dtype.newbyteorder("="), copy=False), offset + size
    if "data" not in spec:
        raise ProtocolError(f"tensor {name!r} has neither data nor parameters.binary_data_size")
    try:
        array = np.asarray(spec["data"], dtype=DATATYPES[datatype])
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"tensor {name!r}: data is not {datatype}: {err}") from None
    if array.size != count:
        raise ProtocolError(f"tensor {name!r}: shape {shape} needs {count} values, data has {array.size}")
    return array.reshape(shape), offset


def encode_tensor(name: str, array: np.ndarray, *, binary: bool = False) -> tuple[dict, bytes]:
    """A tensor as V2 JSON (``data`` flat) or as JSON plus its raw little-endian bytes."""
    array = np.asarray(array)
    spec: dict[str, Any] = {"name": name, "datatype": to_datatype(array.dtype), "shape": list(array.shape)}
    if binary:
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        spec["parameters"] = {"binary_data_size": len(raw)}
        return spec, raw
    spec["data"] = array.reshape(-1).tolist()
    return spec, b""


def encode_body(header: dict, chunks: list[bytes]) -> tuple[bytes, dict]:
    """The HTTP body and headers for a V2 message: JSON, then the binary chunks if any."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if not any(chunks):
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from the ``logits`` a classifier returns (row by row, overflow-safe)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int, classes: Sequence[str] | None = None) -> list[list[tuple[str | int, float]]]:
    """The ``k`` most probable classes of each row of ``logits``, best first, as ``(label, probability)``;
    the label is ``classes[j]``, or the class index ``j`` without ``classes``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be N x classes, got shape {list(logits.shape)}")
    probs = softmax(logits)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    label = (lambda j: classes[j]) if classes is not None else int
    return [[(label(j), float(p[j])) for j in row] for p, row in zip(probs, best)]
