"""Every codec the server and the client speak, as NumPy: the Open Inference Protocol's tensors
(KServe V2, with Triton's binary tensor extension, BYTES included), TF Serving's V1 rows, and
Triton's classification strings.

A V2 tensor is ``{"name", "datatype", "shape", "data"}`` with ``data`` flat or nested in
row-major order; with the binary extension the JSON header is followed by the raw
little-endian bytes of each tensor that says ``"parameters": {"binary_data_size": n}``, and
the header's length travels in the ``Inference-Header-Content-Length`` HTTP header. A BYTES
element travels as a JSON string, or in binary as a 4-byte little-endian length and its bytes.
Nothing here knows about HTTP servers or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "ProtocolError",
    "classification_strings",
    "decode_tensor",
    "dumps",
    "encode_body",
    "encode_tensor",
    "loads",
    "parse_classification",
    "softmax",
    "split_body",
    "to_datatype",
    "top_k",
    "v1_rows",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, Any] = {
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
    "BYTES": np.object_,  # each element a bytes object
}
_BY_DTYPE: dict[np.dtype, str] = {np.dtype(v): k for k, v in DATATYPES.items()}


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol; the message says what was expected."""


def dumps(value: Any) -> bytes:
    """JSON as bytes; NumPy arrays and scalars are written directly (float32 in its shortest form)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(
            f"the request body is not valid JSON (NaN and Infinity are not JSON either): {err}"
        ) from None


def to_datatype(dtype: np.typing.DTypeLike) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":  # Python objects, bytes, str: all BYTES on the wire
        return "BYTES"
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise ProtocolError(f"no V2 datatype for {dtype}; use one of {', '.join(DATATYPES)}") from None


def split_body(body: bytes, header_length: str | int | None) -> tuple[dict, bytes]:
    """The JSON header of a V2 body and the binary bytes after it (empty without the extension)."""
    try:
        n = int(header_length) if header_length not in (None, "") else len(body)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    header = loads(body[:n] if n < len(body) else body)
    if not isinstance(header, dict):
        raise ProtocolError("the request body must be a JSON object")
    return header, body[n:]


def _count(name: str, shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r:.80}")
    count = 1
    for d in shape:
        count *= d
    if count > 2**31:
        raise ProtocolError(f"tensor {name!r}: shape {shape} has more elements than any request can carry")
    return count


def _decode_bytes(name: str, raw: memoryview, count: int) -> np.ndarray:
    """``count`` length-prefixed elements filling ``raw`` exactly."""
    out, at = np.empty(count, dtype=object), 0
    for i in range(count):
        if at + 4 > len(raw):
            raise ProtocolError(f"tensor {name!r}: BYTES element {i} has no 4-byte length (the data ends)")
        n = int.from_bytes(raw[at : at + 4], "little")
        if at + 4 + n > len(raw):
            raise ProtocolError(f"tensor {name!r}: BYTES element {i} announces {n} bytes; fewer are left")
        out[i], at = bytes(raw[at + 4 : at + 4 + n]), at + 4 + n
    if at != len(raw):
        raise ProtocolError(f"tensor {name!r}: {len(raw) - at} bytes left over after {count} BYTES elements")
    return out


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def decode_tensor(spec: Any, binary: memoryview | bytes = b"", offset: int = 0) -> tuple[np.ndarray, int]:
    """One tensor of a request or response as an array; returns it and the new binary offset.
    BYTES tensors come back as object arrays of ``bytes``."""
    if not isinstance(spec, dict):
        raise ProtocolError(f"a tensor must be an object with name, datatype, shape and data, got {spec!r:.80}")
    name = spec.get("name", "?")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in DATATYPES:
        raise ProtocolError(f"tensor {name!r}: datatype {datatype!r:.40} is not one of {', '.join(DATATYPES)}")
    count = _count(name, shape)
    parameters = spec.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"tensor {name!r}: binary_data_size must be a non-negative integer, got {size!r:.40}")
        if offset + size > len(binary):
            raise ProtocolError(f"tensor {name!r}: {size} bytes announced, {len(binary) - offset} left in the body")
        if datatype == "BYTES":
            return _decode_bytes(name, memoryview(binary)[offset : offset + size], count).reshape(shape), offset + size
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"tensor {name!r}: binary_data_size {size} does not fit shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array.astype(dtype.newbyteorder("="), copy=False), offset + size
    if "data" not in spec:
        raise ProtocolError(f"tensor {name!r} has neither data nor parameters.binary_data_size")
    data = spec["data"]
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).reshape(-1)
        if flat.size != count:
            raise ProtocolError(f"tensor {name!r}: shape {shape} needs {count} values, data has {flat.size}")
        return np.array([_as_bytes(v) for v in flat], dtype=object).reshape(shape), offset
    try:
        with np.errstate(over="raise"):  # 1e39 as FP32 would silently become infinity
            array = np.asarray(data, dtype=DATATYPES[datatype])
    except FloatingPointError:
        raise ProtocolError(f"tensor {name!r}: data holds numbers beyond the range of {datatype}") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"tensor {name!r}: data is not {datatype}: {err}") from None
    if array.size != count:
        raise ProtocolError(f"tensor {name!r}: shape {shape} needs {count} values, data has {array.size}")
    return array.reshape(shape), offset


def encode_tensor(name: str, array: Any, *, binary: bool = False) -> tuple[dict, bytes]:
    """A tensor as V2 JSON (``data`` flat) or as JSON plus its raw bytes. Arrays of ``bytes`` or
    ``str`` are BYTES tensors."""
    array = np.asarray(array)
    datatype = to_datatype(array.dtype)
    spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        elements = [_as_bytes(v) for v in array.reshape(-1)]
        if binary:
            raw = b"".join(len(b).to_bytes(4, "little") + b for b in elements)
            spec["parameters"] = {"binary_data_size": len(raw)}
            return spec, raw
        spec["data"] = [b.decode(errors="replace") for b in elements]
        return spec, b""
    if binary:
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        spec["parameters"] = {"binary_data_size": len(raw)}
        return spec, raw
    spec["data"] = np.ascontiguousarray(array).reshape(-1)  # dumps writes it without a Python list
    return spec, b""


def encode_body(header: dict, chunks: Sequence[bytes]) -> tuple[bytes, dict]:
    """The HTTP body and headers for a V2 message: JSON, then the binary chunks if any."""
    text = dumps(header)
    if not any(chunks):
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def v1_rows(body: Any, input_name: str) -> tuple[Any, str]:
    """The examples of a TF Serving request, and the answer's key: ``{"instances": [...]}`` (row
    format, answered as ``predictions``) or ``{"inputs": ...}`` (columnar, answered as ``outputs``).
    Named inputs (``{"input": ...}`` or rows of ``{"input": ...}``) are unwrapped."""
    if not isinstance(body, dict):
        raise ProtocolError("a V1 request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise ProtocolError("a V1 request has either 'instances' (one entry per example) or 'inputs' (columnar)")
    rows = body.get("instances", body.get("inputs"))
    if isinstance(rows, dict):
        if set(rows) != {input_name}:
            raise ProtocolError(f"this model takes one input, {input_name!r}; got {sorted(rows)}")
        rows = rows[input_name]
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        if not all(isinstance(r, dict) and set(r) == {input_name} for r in rows):
            raise ProtocolError(f"each instance must be an object with the one key {input_name!r}, or a plain array")
        rows = [r[input_name] for r in rows]
    return rows, "predictions" if "instances" in body else "outputs"


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


def classification_strings(logits: np.ndarray, k: int, classes: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: the top ``k`` per example as ``"score:index:label"``
    (a BYTES tensor of shape N x k)."""
    rows = top_k(logits, min(k, logits.shape[1]))
    return np.array([[f"{p:.6f}:{j}:{classes[int(j)]}".encode() for j, p in row] for row in rows], dtype=object)


def parse_classification(strings: np.ndarray) -> list[list[tuple[str, float]]]:
    """``classification_strings`` read back: ``(label, score)`` per row, best first."""
    rows = np.asarray(strings, dtype=object).reshape(len(strings), -1)
    parsed = []
    for row in rows:
        items = []
        for s in row:
            score, _index, *label = _as_bytes(s).decode().split(":")
            items.append((":".join(label), float(score)))
        parsed.append(items)
    return parsed
