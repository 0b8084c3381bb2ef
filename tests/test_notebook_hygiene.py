"""Committed notebooks: parameters first, results published, no stale outputs or widget state."""

import json
import re
import subprocess
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CHECKED = "nbval-check-output"


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_notebooks_exist_and_are_numbered_in_reading_order():
    names = [p.name for p in NOTEBOOKS]
    assert names[:3] == ["01_forward_pass.ipynb", "02_backpropagation.ipynb", "03_optimizers.ipynb"]
    numbers = [int(n[:2]) for n in names]
    assert numbers == sorted(set(numbers)) == list(range(1, 12))  # in reading order, each number once


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    assert "seed" in "".join(code[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_checked_cells_keep_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in nb["metadata"], "saved widget state: clear it (make notebooks)"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        checked = CHECKED in cell["metadata"].get("tags", [])
        if not checked:
            assert not cell["outputs"], f"cell {i} keeps a stale output: run `make notebooks`"
            assert cell["execution_count"] is None, f"cell {i} keeps an execution count"
        else:
            assert cell["outputs"], f"checked cell {i} has no reference output: run `make notebooks`"
            for out in cell["outputs"]:
                assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
                assert out.get("output_type") != "error", f"checked cell {i} stores an error"
                assert "image/png" not in out.get("data", {}), f"checked cell {i} stores an image"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_last_code_cell_publishes_the_metrics(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert "maaskit.publish_metrics(" in "".join(code[-1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_machine_paths_or_secrets(path):
    text = path.read_text(encoding="utf-8")
    for needle in ("/work/", "/root/", "/home/", "password"):
        assert needle not in text, needle
    # a Jupyter server's URL with its token, or a token written into the code
    assert not re.search(r"[?&]token=[0-9a-f]{8,}|token\s*=\s*[\"'][^\"']+[\"']", text)


def test_nothing_a_run_writes_is_committed():
    """Notebooks and tests write models, exports and executed notebooks; none of it belongs in git
    (a committed artifact would also make a "model not found: train it" test load it instead)."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    written = [
        f
        for f in tracked.splitlines()
        if f.endswith((".safetensors", ".pt", ".onnx", "manifest.json", "tokenizer.json"))
        or (f.startswith("notebooks/") and not f.endswith(".ipynb") and not f.startswith("notebooks/solutions/"))
    ]
    assert not written, f"run outputs committed: {written}"
