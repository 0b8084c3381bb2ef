import json

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient

from maaskit.report import METRICS_MIME, read_metrics


def execute(*sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    return nb


def test_metrics_round_trip_through_a_real_kernel(tmp_path):
    nb = execute(
        "import numpy as np, torch\nfrom maaskit import publish_metrics",
        "publish_metrics({'acc': torch.tensor(0.5), 'n': np.int64(3), 'shape': (2, 3),"
        " 'loss': float('nan'), 'nested': {'a': [np.float32(1.5)]}, 'ok': True, 'tiny': 2.2351741790771484e-08})",
    )
    outputs = nb.cells[1].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "display_data"  # no duplicate execute_result
    text = outputs[0].data["text/plain"]
    assert text.startswith("This run's key numbers (rounded here")  # says what it is for
    assert "\n  acc       0.5\n" in text and "\n  nested.a  [1.5]\n" in text
    assert "2.235e-08" in text and "2.2351741790771484e-08" not in text  # rounded for people
    assert "<caption" in outputs[0].data["text/html"] and "nested.a" in outputs[0].data["text/html"]
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    assert read_metrics(path) == {
        "acc": 0.5,
        "n": 3,
        "shape": [2, 3],
        "loss": "nan",
        "nested": {"a": [1.5]},
        "ok": True,
        "tiny": 2.2351741790771484e-08,  # exact for machines
    }
    json.dumps(read_metrics(nb))  # plain JSON all the way down


def test_read_metrics_needs_exactly_one_publication():
    with pytest.raises(LookupError, match="published no metrics"):
        read_metrics(execute("1 + 1"))
    twice = execute("from maaskit import publish_metrics", "publish_metrics({'a': 1})", "publish_metrics({'a': 2})")
    with pytest.raises(LookupError, match="2 times"):
        read_metrics(twice)


def test_values_that_are_not_json_are_refused():
    from maaskit.report import _plain

    assert _plain({"t": torch.arange(3), "a": np.ones(2), "inf": float("inf")}) == {
        "t": [0, 1, 2],
        "a": [1.0, 1.0],
        "inf": "inf",
    }
    with pytest.raises(TypeError, match="object"):
        _plain({"x": object()})
    assert METRICS_MIME == "application/vnd.maaskit.metrics+json"
