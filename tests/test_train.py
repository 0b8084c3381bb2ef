import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import StopAfter

import maaskit
from maaskit.evaluation import evaluate
from maaskit.train import Callback, Checkpoint, EarlyStopping, History, fit


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def model_for(data, name="lenet", seed=0):
    maaskit.seed_everything(seed)
    return maaskit.build_model(name, data.in_shape, data.num_classes)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda run: self.events.append((name, run.epoch, run.step))
        return super().__getattribute__(name)


def test_fit_learns_and_records_every_epoch(digits):
    model = model_for(digits, "mlp")
    history = fit(model, digits, epochs=3, lr=3e-3, batch_size=64)
    assert isinstance(history, History) and len(history.records) == 3
    assert history["epoch"] == [1, 2, 3] and history["step"] == [21, 42, 63]
    assert set(history.keys()) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "wall_time"}
    assert history["train_loss"][2] < history["train_loss"][0]
    assert history.last["val_acc"] > 0.85 and history.stopped is None
    assert all(history["complete"]) and history["wall_time"] == sorted(history["wall_time"])
    assert not model.training  # handed back in eval mode


def test_events_arrive_in_order(digits):
    rec = Recorder()
    fit(model_for(digits, "mlp"), digits, epochs=2, batch_size=256, callbacks=[rec])
    names = [e[0] for e in rec.events]
    assert names[0] == "on_fit_start" and names[-1] == "on_fit_end"
    steps = len(digits.loader(batch_size=256))
    expected = (
        ["on_fit_start"]
        + (["on_epoch_start"] + ["on_batch_start", "on_batch_end"] * steps + ["on_epoch_end"]) * 2
        + ["on_fit_end"]
    )
    assert names == expected


def test_no_host_sync_per_step(digits, monkeypatch):
    # .item() and .tolist() are how a training loop usually waits for the device; fit() reads once
    # per epoch. (torch.optim reads its own CPU-side step counters with .item(): those are no sync.)
    package = str(Path(maaskit.__file__).parent)
    calls = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def read(self, _original=original):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                calls.append(sys._getframe(1).f_code.co_name)
            return _original(self)

        monkeypatch.setattr(torch.Tensor, name, read)
    fit(model_for(digits, "mlp"), digits, epochs=2, batch_size=16)  # 81 steps per epoch
    assert 0 < len(calls) <= 2 * 2, calls  # per epoch: the training sums and the validation sums


def test_seeded_fit_is_bitwise_repeatable_on_cpu(digits):
    a, b = model_for(digits), model_for(digits)
    fit(a, digits, epochs=2, seed=3, augment=True)
    fit(b, digits, epochs=2, seed=3, augment=True)
    assert torch.equal(params(a), params(b))


def test_stop_from_another_thread_ends_after_the_current_batch(digits):
    started = threading.Event()

    class Slow(Callback):
        def on_fit_start(self, run):
            self.run = run

        def on_batch_end(self, run):
            started.set()

    slow = Slow()
    model = model_for(digits)
    result = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("h", fit(model, digits, epochs=50, batch_size=8, callbacks=[slow]))
    )
    worker.start()
    assert started.wait(60)
    slow.run.request_stop()
    worker.join(60)
    assert not worker.is_alive()
    history = result["h"]
    assert history.stopped == "stop requested"
    assert len(history.records) == 1 and not history.last["complete"]  # the cut-short epoch is kept
    assert history.last["step"] < 50 * len(digits.loader(batch_size=8))


def test_stop_requested_by_a_callback_keeps_the_model_at_that_step(digits):
    class StopAt(Callback):
        def __init__(self, step):
            self.step = step

        def on_batch_end(self, run):
            if run.step == self.step:
                run.request_stop("enough")

    model = model_for(digits)
    history = fit(model, digits, epochs=5, batch_size=64, callbacks=[StopAt(30)])
    assert history.stopped == "enough" and history.last["step"] == 30 and history["epoch"] == [1, 2]
    assert history.records[0]["complete"] and not history.records[1]["complete"]


def test_ctrl_c_finishes_the_batch_and_keeps_everything(digits):
    class Interrupt(Callback):
        def on_batch_end(self, run):
            if run.step == 5:
                os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's "interrupt kernel" sends

    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN under nohup, Python's default otherwise)
    interrupted = model_for(digits)
    history = fit(interrupted, digits, epochs=3, callbacks=[Interrupt()])
    assert history.stopped == "interrupted" and history.last["step"] == 5

    class StopAt5(Callback):
        def on_batch_end(self, run):
            if run.step == 5:
                run.request_stop()

    reference = model_for(digits)
    fit(reference, digits, epochs=3, callbacks=[StopAt5()])
    assert torch.equal(params(interrupted), params(reference))
    assert signal.getsignal(signal.SIGINT) is before  # handler put back


def test_checkpoint_and_resume_equal_an_uninterrupted_run_bit_for_bit(digits, tmp_path):
    recipe = {"epochs": 4, "batch_size": 64, "optimizer": "adamw", "scheduler": "onecycle", "augment": True, "seed": 1}
    straight = model_for(digits)
    fit(straight, digits, **recipe)

    first = model_for(digits)
    fit(first, digits, **recipe, callbacks=[Checkpoint(tmp_path / "ckpt"), StopAfter(2)])
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2

    resumed = model_for(digits, seed=99)  # different initial weights: the checkpoint must overwrite them
    history = fit(resumed, digits, **recipe, resume_from=tmp_path / "ckpt")
    assert history["epoch"] == [1, 2, 3, 4]
    assert torch.equal(params(resumed), params(straight))


def test_resume_from_a_folder_that_is_not_a_checkpoint(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a maaskit checkpoint: missing model.safetensors"):
        fit(model_for(digits), digits, epochs=1, resume_from=tmp_path)


def test_early_stopping_restores_the_best_weights(digits):
    small = maaskit.ImageDataset(
        "digits",
        maaskit.Split(digits.train.x[:100], digits.train.y[:100]),
        digits.val,
        digits.test,
        digits.classes,
        digits.normalization,
    )
    model = model_for(small, "mlp")
    stopper = EarlyStopping(patience=2)
    history = fit(model, small, epochs=200, lr=1e-2, batch_size=16, callbacks=[stopper])
    assert history.stopped == "early stopping"
    assert len(history.records) == stopper.best_epoch + 2 < 200
    val_loss = evaluate(model, small, "val").loss
    assert val_loss == pytest.approx(min(history["val_loss"]), rel=1e-5)


def test_unknown_names_and_bad_values(digits):
    model = model_for(digits, "mlp")
    with pytest.raises(ValueError, match="expected one of sgd, adam, adamw, rmsprop"):
        fit(model, digits, optimizer="lion")
    with pytest.raises(ValueError, match="expected one of cosine, onecycle"):
        fit(model, digits, scheduler="warm")
    with pytest.raises(ValueError, match="epochs must be a whole number of at least 1"):
        fit(model, digits, epochs=0)
    with pytest.raises(ValueError, match="unknown device"):
        fit(model, digits, device="tpu")


def test_optimizer_instances_and_grad_clipping(digits):
    model = model_for(digits, "mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    history = fit(model, digits, optimizer=opt, epochs=1, grad_clip=0.1)
    assert history.last["lr"] == 0.05


def test_evaluate_reports_confusion_and_worst_examples(digits):
    model = model_for(digits, "mlp")
    fit(model, digits, epochs=5, lr=3e-3)
    result = evaluate(model, digits, worst=5)
    assert result.confusion.sum() == len(digits.test) and result.confusion.shape == (10, 10)
    assert result.accuracy == pytest.approx(result.confusion.trace() / len(digits.test))
    per_class = result.confusion.diagonal() / result.confusion.sum(1)
    assert result.per_class_accuracy == pytest.approx(per_class)
    losses = torch.nn.functional.cross_entropy(model(digits.normalize(digits.test.x)), digits.test.y, reduction="none")
    assert list(result.worst) == torch.argsort(losses, descending=True)[:5].tolist()
    assert "accuracy=" in repr(result)


def test_adamw_decays_only_weights_of_two_or_more_dimensions_and_zero_means_zero(digits):
    from maaskit.train import build_optimizer

    model = model_for(digits, "lenet")
    opt = build_optimizer("adamw", model, 1e-3)  # weight_decay=None: AdamW's default, 0.01
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in build_optimizer("adamw", model, 1e-3, 0.0).param_groups)
    assert build_optimizer("sgd", model, 1e-3).param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="weight_decay must be 0 or more"):
        build_optimizer("adam", model, 1e-3, -1.0)

    # fit passes it on: an explicit 0.0 stays 0.0 (it once became 0.01)
    class Seen(Callback):
        def on_fit_start(self, run):
            self.decays = [g["weight_decay"] for g in run.optimizer.param_groups]

    seen = Seen()
    fit(model_for(digits, "mlp"), digits, optimizer="adamw", weight_decay=0.0, epochs=1, callbacks=[seen])
    assert seen.decays == [0.0, 0.0]


def test_fit_trains_on_anything_that_follows_the_training_data_protocol(digits):
    """Not an ImageDataset: a class of its own with name, unit, loader() and metrics()."""
    from maaskit.scoring import Accuracy, Metric
    from maaskit.train import TrainingData

    class Halves:
        name, unit = "digits, first half", "examples"

        def loader(self, split="train", **kwargs):
            return digits.loader(split, **kwargs)

        def metrics(self) -> tuple[Metric, ...]:
            return (Accuracy(),)

    data = Halves()
    assert isinstance(data, TrainingData) and not isinstance(object(), TrainingData)
    history = fit(model_for(digits, "mlp"), data, epochs=2, batch_size=64)
    assert {"train_acc", "val_acc", "examples_per_s"} <= set(history) and history.last["val_acc"] > 0.5
    with pytest.raises(TypeError, match="data with name, unit, loader"):
        fit(model_for(digits, "mlp"), object(), epochs=1)
