"""Shared fixtures: tiny datasets written in the official on-disk formats, so that
torchvision's real readers run without any download."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maaskit.train import Callback

# Under pytest-xdist, share the cores between the workers (and the notebook kernels they start,
# which inherit OMP_NUM_THREADS): two workers each running torch on every core of a two-core
# machine made the notebook tests six times slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


# A server compiles a language model's forward pass in the background by default, minutes of both cores
# per model; every test trains a model of its own, so none would be reused. Servers started by the tests
# (in this process or as processes of their own, which inherit it) serve eagerly unless a test says
# otherwise: tests/test_engine_features.py tests the compiled pass, tests/test_cli.py the default.
os.environ["MAASKIT_COMPILE"] = "0"


# Modules whose tests start real processes (torchrun ranks, JupyterLab and Chromium, peer servers
# in their own virtual environments), train a language model, or put thousands of requests through a
# server: `make test` runs them, `make test-fast` (the edit-test loop, under a minute) leaves them out.
SLOW_MODULES = {
    "test_assistant.py",
    "test_browser.py",
    "test_distributed.py",
    "test_drain.py",
    "test_faults.py",
    "test_lab.py",
    "test_lm_service.py",
    "test_peers.py",
    "test_serving_robustness.py",
}


# nbval waits 5 s for each output message after a cell ends: a wall-clock bound that a kernel starved
# of CPU (a peer server busy on the other core) missed once in a CI run. An event, not a time, ends a
# cell (the kernel's "idle"); this bound is only for a kernel that died.
NBVAL_OUTPUT_SECONDS = 300


def _checks_outputs(notebook: Path) -> bool:
    """Whether nbval compares any of the notebook's outputs (cells tagged ``nbval-check-output``)."""
    import json

    cells = json.loads(notebook.read_text())["cells"]
    return any("nbval-check-output" in c.get("metadata", {}).get("tags", []) for c in cells)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # nbval runs a notebook once more, cell by cell, to compare the outputs it keeps. A notebook that
    # keeps none would only be run again as tests/test_notebooks.py already runs it with its defaults
    # (papermill fails on any cell's error too): minutes of CI for nothing checked, so it is left out.
    compared = {path: _checks_outputs(path) for path in {i.path for i in items if i.path.suffix == ".ipynb"}}
    dropped = [i for i in items if i.path.suffix == ".ipynb" and not compared[i.path]]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if hasattr(item, "output_timeout"):  # an nbval cell
            item.output_timeout = NBVAL_OUTPUT_SECONDS
    schedule_longest_first(items)


# `make test` runs with `--dist loadfile`: a module's tests go to one worker together (they share its
# fixtures; nbval's cells share a kernel), except tests/test_notebooks.py, whose papermill runs are
# independent and together take as long as the rest of the suite: each of those is its own unit.
INDEPENDENT_TESTS = "tests/test_notebooks.py"
# ... but for notebooks 07 and 10 at their defaults, one unit, 07 first: 07 trains the model that 10 fine-tunes
# (notebooks/models/gpt-python-docs; 10 trains it itself where it is missing). Run apart, at once, both trained
# it into that folder at the same time: a minute of CPU twice, and a reader racing a writer.
NOTEBOOK_07_MODEL = "tests/test_notebooks.py::notebooks 07 and 10, which share 07's model"
SHARED_UNITS = {
    "tests/test_notebooks.py::test_07_language_model_service_defaults": NOTEBOOK_07_MODEL,
    "tests/test_notebooks.py::test_10_assistant_defaults": NOTEBOOK_07_MODEL,
}

# The longest units first (measured with `--durations 0`; the figures, in seconds of one worker's time
# on 2 cores, from a clean clone at 45f0927), so that no worker is left running a long one alone at the
# end. Only the order depends on this list: a stale entry costs minutes, never a result.
LONGEST_FIRST = (
    NOTEBOOK_07_MODEL,  # 431 + 97, less the 75 of 07's model that 10 no longer trains again
    "tests/test_peers.py",  # 473 at 45f0927, its peers then built inside it (uv now: ~20 s, beside the install)
    "tests/test_browser.py",  # 407
    "tests/test_serving_robustness.py",  # 228
    "tests/test_distributed.py",  # 168
    "tests/test_engine_features.py",  # 123
    "tests/test_notebooks.py::test_09_scaling_out_two_ranks_equal_one",  # 69
)


def work_unit(nodeid: str) -> str:
    """What one worker runs together, in collection order: the module, or in INDEPENDENT_TESTS the test
    itself (or its SHARED_UNITS entry)."""
    module = nodeid.split("::", 1)[0]
    return SHARED_UNITS.get(nodeid, nodeid) if module == INDEPENDENT_TESTS else module


def schedule_longest_first(items: list[pytest.Item]) -> None:
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(LONGEST_FIRST)))  # stable: modules stay whole


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; the units above instead of whole files
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return LongestFirst(config, log)


def require(module: str):
    """Import a dev dependency; without it, skip on a contributor's machine but fail under CI=true,
    where a missing package is a broken install step, never a reason to test less."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"{module} is not installed ({err}); `make test` installs the dev extra"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def digits():
    import maaskit

    return maaskit.load_dataset("digits")


@pytest.fixture(scope="module")
def artifact(digits, tmp_path_factory):
    """LeNet-5 for ``digits``, seeded and untrained, saved as an artifact named "digits":
    ``(path, the model in eval mode)`` — what the serving tests serve."""
    import maaskit

    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", digits.in_shape, digits.num_classes)
    path = maaskit.save_artifact(model, tmp_path_factory.mktemp("art") / "lenet", data=digits, name="digits")
    return path, model.eval()


class StopAfter(Callback):
    """Ends training after ``epochs`` epochs, as a Stop button would."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, run):
        if run.epoch == self.epochs:
            run.request_stop()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """An IDX file (the MNIST format): big-endian magic 0x0000 0x08 ndim, the sizes, then uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_mnist_like(root: Path, folder: str, n_train: int = 30, n_test: int = 10, seed: int = 0):
    """Writes <root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte; returns the arrays."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10_like(root: Path, per_batch: int = 6, seed: int = 0):
    """Writes <root>/cifar-10-batches-py/ as CIFAR-10's python pickles: 5 train batches,
    a test batch and batches.meta. Returns the arrays and each file's md5 (torchvision
    checks the official md5s, which tiny files cannot match)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5, arrays = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G, B
        labels = [(k + i) % 10 for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "data": data, "labels": labels}))
        arrays[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES, "num_vis": 3072}))
    for f in folder.iterdir():
        md5[f.name] = hashlib.md5(f.read_bytes()).hexdigest()
    return arrays, md5


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    """A tiny CIFAR-10 on disk, with torchvision told the tiny files' checksums."""
    from torchvision.datasets import CIFAR10

    arrays, md5 = make_cifar10_like(tmp_path)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return tmp_path, arrays


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt by torchvision fails the way it does on an offline machine."""
    import urllib.request
    from urllib.error import URLError

    def refuse(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)


# --- serving: a language model to serve, a server on the command line, a state to wait for ------------


def wait_for(condition, what: str, seconds: float = 60) -> None:
    """Poll a state until it holds; fail with ``what`` if it does not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def tiny_lm():
    """An untrained GPT of one layer and its tokenizer: a language model to serve, quickly. Its context
    (2048) is longer than any prompt the generated-request tests write."""
    from maaskit.lm import GPT, GPTConfig, load_corpus, train_tokenizer

    tokenizer = train_tokenizer([load_corpus()[:30_000]], vocab_size=280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), context=2048, layers=1, heads=2, width=32))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def lm_dir(tiny_lm, tmp_path_factory):
    from maaskit.lm import save_language_model

    model, tokenizer = tiny_lm
    return save_language_model(model, tokenizer, tmp_path_factory.mktemp("lm") / "gpt", name="gpt")


def v2_body(digits, n: int = 1) -> dict:
    x = digits.normalize(digits.test.x[:n]).numpy().astype(np.float32)
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def start_cli(*args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """``maaskit serve ARGS --port 0``; returns the process, its URL, and its output lines as they come."""
    process = subprocess.Popen(
        [sys.executable, "-m", "maaskit", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    lines: list[str] = []
    found = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if "docs at" in line:
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(120), "".join(lines)
    url = re.search(r"(http://[\d.:]+)", "".join(lines))
    assert url and process.poll() is None, "".join(lines)
    return process, url.group(1), lines
