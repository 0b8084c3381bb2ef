import json
import subprocess
import sys

import pytest
import torch

import maaskit
from maaskit import Normalization
from maaskit.artifact import ArtifactError, load_artifact, save_artifact


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def test_round_trip_rebuilds_the_same_network(digits, tmp_path):
    model = maaskit.build_model("mlp", digits.in_shape, 10, hidden=(32, 16), activation="tanh")
    path = save_artifact(model, tmp_path / "a", data=digits, metrics={"test_accuracy": 0.5})
    loaded, manifest = load_artifact(path)
    x = digits.normalize(digits.test.x[:7])
    assert torch.equal(loaded(x), model.eval()(x))
    assert manifest["architecture"] == {
        "name": "mlp",
        "in_shape": [1, 8, 8],
        "num_classes": 10,
        "kwargs": {"hidden": [32, 16], "activation": "tanh"},
    }
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert manifest["classes"] == list("0123456789") and manifest["metrics"] == {"test_accuracy": 0.5}
    assert manifest["normalization"]["mean"] == list(digits.mean)
    assert manifest["versions"]["torch"] == torch.__version__ and len(manifest["weights"]["sha256"]) == 64


def test_tampered_weights_are_refused(digits, tmp_path):
    path = save_artifact(maaskit.build_model("lenet", digits.in_shape, 10), tmp_path, data=digits)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        load_artifact(path)


def test_missing_files_unknown_architectures_and_foreign_models(digits, tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_artifact(tmp_path)
    path = save_artifact(maaskit.build_model("mlp", digits.in_shape, 10), tmp_path / "m", data=digits)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["architecture"]["name"] = "vgg"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown architecture 'vgg'"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="build_model"):
        save_artifact(
            torch.nn.Linear(2, 2), tmp_path / "x", classes=["a", "b"], normalization=Normalization((0,), (1,))
        )
    with pytest.raises(ArtifactError, match="3 class labels for a model with 10 outputs"):
        save_artifact(
            maaskit.build_model("mlp", digits.in_shape, 10),
            tmp_path / "y",
            classes=list("abc"),
            normalization=Normalization((0,), (1,)),
        )


def test_maaskit_train_trains_evaluates_and_saves(tmp_path):
    out = tmp_path / "lenet"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maaskit",
            "train",
            "--dataset",
            "digits",
            "--model",
            "lenet",
            "--epochs",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3
    accuracy = float(next(line for line in lines if line.startswith("test accuracy")).split()[2].rstrip("%")) / 100
    model, manifest = load_artifact(out)
    assert manifest["metrics"]["test_accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert manifest["name"] == "lenet-digits" and accuracy > 0.5


def test_maaskit_train_explains_bad_input(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "maaskit", "train", "--device", "tpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "unknown device 'tpu'" in done.stderr and "Traceback" not in done.stderr
