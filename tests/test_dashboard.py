"""TrainingDashboard without a browser: click the buttons in Python, check the state."""

import base64
import re
import time

import pytest

import maaskit
from maaskit.device import available_devices
from maaskit.train import fit
from maaskit.widgets import TrainingDashboard

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def test_blocking_fit_trains_evaluates_and_summarizes(digits, capsys):
    dash = TrainingDashboard(digits, model="mlp", epochs=3, lr=3e-3)
    history = dash.fit()
    assert dash.history is history and len(history.records) == 3
    assert dash.progress.value == dash.progress.max == history.last["step"]
    assert dash.evaluation.confusion.sum() == len(digits.test)
    assert bytes(dash.final.value).startswith(PNG) and dash.final.layout.display is None
    assert "<svg" in dash.curves.value and dash.curves.value.count("<polyline") >= 4
    printed = capsys.readouterr().out
    assert "3 epochs" in printed and "test accuracy" in printed  # the headless summary
    assert not dash.train_button.disabled and dash.stop_button.disabled


def test_train_button_runs_in_the_background_and_stop_keeps_the_history(digits):
    dash = TrainingDashboard(digits, model="lenet", epochs=200, batch_size=8)
    dash.train_button.click()
    assert dash.train_button.disabled and not dash.stop_button.disabled
    deadline = time.monotonic() + 60
    while (dash.run is None or dash.run.step < 20) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel (here: this thread) stays free while training runs
    assert dash.training
    dash.stop_button.click()
    assert dash.wait(60)
    assert dash.history.stopped == "stop requested" and dash.history.records
    assert dash.history.last["step"] < 200 * len(digits.loader(batch_size=8))
    assert "stopped: stop requested" in dash.status.value
    assert not dash.train_button.disabled and dash.stop_button.disabled
    assert dash.model is dash.run.model and dash.error is None


def test_redraws_are_throttled_by_redraw_every(digits):
    # counted, not timed: with no throttle every step redraws; with an infinite one only the start and end
    redraws = {}
    for every in (0.0, float("inf")):
        dash = TrainingDashboard(digits, redraw_every=every)
        model = maaskit.build_model("lenet", digits.in_shape, 10)
        fit(model, digits, epochs=2, batch_size=64, callbacks=[dash])  # as a plain callback of any fit()
        assert dash.history.last["epoch"] == 2
        redraws[every] = dash.redraws
    assert redraws[0.0] >= 2 * len(digits.loader(batch_size=64))
    assert 1 <= redraws[float("inf")] <= 3, redraws


def test_errors_in_the_background_are_shown_not_lost(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("MAASKIT_DATA", str(tmp_path))
    dash = TrainingDashboard(dataset="mnist", epochs=1)
    dash.start()
    assert dash.wait(60)
    assert type(dash.error).__name__ == "DatasetUnavailableError"
    assert "DatasetUnavailableError" in dash.status.value and "MNIST" in dash.status.value
    assert not dash.train_button.disabled


def test_only_present_devices_are_offered(digits):
    dash = TrainingDashboard(digits)
    assert list(dash.device_w.options) == ["auto", *available_devices()]
    # the data given is chosen, and the others stay open to choose (no greyed-out control to puzzle over)
    assert dash.dataset_w.value == "digits" and not dash.dataset_w.disabled
    assert set(dash.dataset_w.options) >= {"digits", "mnist", "cifar10"}


def test_headless_display_is_a_final_figure_and_a_summary(digits):
    dash = TrainingDashboard(digits, model="mlp", epochs=2)
    assert "not trained yet" in str(dash)
    dash.fit()
    bundle = dash._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)
    assert bundle["text/plain"].startswith("2 epochs")
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id


def test_live_curves_tell_running_and_epoch_values_apart(digits):
    dash = TrainingDashboard(digits, model="mlp", epochs=2, redraw_every=0.0)
    dash.fit()
    svg = dash.curves.value
    legend = dict(re.findall(r'stroke="(#[0-9a-f]{6})" stroke-width="2"/><text [^>]*>([^<]+)</text>', svg))
    colors = {label: color for color, label in legend.items()}
    assert len({colors["train (running)"], colors["train"], colors["validation"]}) == 3
