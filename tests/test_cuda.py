"""The CUDA paths of training: skipped where there is no GPU (CI), run on a GPU machine by hand
(`python -m pytest tests/test_cuda.py`). Every path here has a CPU twin in test_train."""

import pytest
import torch
from conftest import StopAfter

import maaskit
from maaskit.evaluation import evaluate
from maaskit.train import Callback, Checkpoint, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def lenet(data, seed=0):
    maaskit.seed_everything(seed)
    return maaskit.build_model("lenet", data.in_shape, data.num_classes)


class Spy(Callback):
    """What the training step saw: the batch's device and memory format, the autocast dtype."""

    def on_batch_end(self, run):
        xb, _ = run.batch
        self.device, self.channels_last = xb.device, xb.is_contiguous(memory_format=torch.channels_last)
        self.loss_device = run.loss.device


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_fit_on_cuda_uses_bf16_and_channels_last_and_learns(digits, compile):
    model, spy = lenet(digits), Spy()
    history = fit(
        model,
        digits,
        optimizer="adamw",
        lr=1e-2,
        batch_size=32,
        epochs=15,
        scheduler="onecycle",
        augment=True,
        device="cuda",
        compile=compile,
        callbacks=[spy],
    )
    assert history.settings["amp"] is True and history.settings["channels_last"] is True
    assert spy.device.type == "cuda" and spy.channels_last and spy.loss_device.type == "cuda"
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32
    assert evaluate(model, digits).accuracy >= 0.95


def test_fp32_on_cuda_when_asked(digits):
    history = fit(lenet(digits), digits, epochs=2, device="cuda", amp=False, channels_last=False)
    assert history.settings["amp"] is False and history.settings["channels_last"] is False
    assert history.last["val_acc"] > 0.5


def test_checkpoint_and_resume_on_cuda(digits, tmp_path):
    kw = dict(epochs=4, batch_size=64, optimizer="adamw", device="cuda", seed=1, amp=False)
    straight = lenet(digits)
    fit(straight, digits, **kw)
    first = lenet(digits)
    fit(first, digits, **kw, callbacks=[Checkpoint(tmp_path / "ckpt"), StopAfter(2)])
    resumed = lenet(digits, seed=5)
    history = fit(resumed, digits, **kw, resume_from=tmp_path / "ckpt")
    assert history["epoch"] == [1, 2, 3, 4]
    # cuDNN picks kernels per run, so CUDA is close rather than bitwise equal
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_dashboard_trains_on_cuda(digits):
    from maaskit.widgets import TrainingDashboard

    dash = TrainingDashboard(digits, device="cuda", epochs=3)
    assert "cuda:0" in dash.device_w.options
    history = dash.fit()
    assert history.settings["device"] == "cuda:0" and dash.evaluation.accuracy > 0.8
