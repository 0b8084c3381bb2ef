"""A notebook's key numbers, published as one machine-readable output.

A notebook ends with ``publish_metrics({...})``. The executed notebook then carries a
display of MIME type ``application/vnd.maaskit.metrics+json`` that tests and
papermill users read with :func:`read_metrics`, instead of scraping printed text.
"""

from __future__ import annotations

import json
import math
import numbers
import os

__all__ = ["METRICS_MIME", "publish_metrics", "read_metrics"]

METRICS_MIME = "application/vnd.maaskit.metrics+json"


def _plain(value):
    """Tensors, NumPy scalars and tuples as JSON values; NaN and infinity as strings JSON can carry."""
    if hasattr(value, "tolist"):  # torch.Tensor, np.ndarray, np.generic
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    raise TypeError(f"metric values must be numbers, strings, lists or dicts, got {type(value).__name__}")


def _rounded(value) -> str:
    """A value as people read it: 4 significant digits, lists and small dicts inline."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_rounded(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_rounded(v)}" for k, v in value.items()) + "}"
    return str(value)


def _rows(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts flattened to ``outer.inner`` rows."""
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(not isinstance(v, dict) for v in value.values()):
            rows += [(f"{name}.{k}", _rounded(v)) for k, v in value.items()]
        elif isinstance(value, dict):
            rows += _rows(value, f"{name}.")
        else:
            rows.append((name, _rounded(value)))
    return rows


CAPTION = "This run's key numbers (rounded here; exact in the notebook file, for papermill and the tests)"


def publish_metrics(metrics: dict) -> None:
    """Display ``metrics`` as the notebook's machine-readable result, and as a short rounded table
    for people; :func:`read_metrics` reads the exact values back from the executed notebook."""
    import html

    from IPython.display import display

    data = _plain(dict(metrics))
    rows = _rows(data)
    width = max((len(k) for k, _ in rows), default=0)
    text = CAPTION + ":\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    cells = "".join(
        f"<tr><td style='text-align:left'>{html.escape(k)}</td><td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    table = (
        f"<table class='maaskit-metrics'><caption style='text-align:left'>{html.escape(CAPTION)}</caption>"
        f"{cells}</table>"
    )
    display({METRICS_MIME: data, "text/html": table, "text/plain": text}, raw=True)


def read_metrics(notebook: str | os.PathLike | dict) -> dict:
    """The metrics an executed notebook published: from a path or an ``nbformat`` node.

    Raises ``LookupError`` when the notebook published none (it failed before the end,
    or was never executed).
    """
    if isinstance(notebook, (str, os.PathLike)):
        with open(notebook, encoding="utf-8") as f:
            notebook = json.load(f)
    assert isinstance(notebook, dict)
    found = [
        out["data"][METRICS_MIME]
        for cell in notebook["cells"]
        if cell.get("cell_type") == "code"
        for out in cell.get("outputs", [])
        if METRICS_MIME in out.get("data", {})
    ]
    if not found:
        raise LookupError("the notebook published no metrics (did it run to the end?)")
    if len(found) > 1:
        raise LookupError(f"the notebook published metrics {len(found)} times; expected once")
    return found[0]
