"""GradientMonitor: what it records, that it records it without host syncs, its hooks, its
diagnosis; and the GradientInspector's state without a browser."""

import sys

import numpy as np
import pytest
import torch
from torch import nn

import maaskit
from maaskit.diagnostics import GradientMonitor
from maaskit.train import fit
from maaskit.widgets import GradientInspector

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def mlp(data, seed=0, **kw):
    maaskit.seed_everything(seed)
    return maaskit.build_model("mlp", data.in_shape, data.num_classes, **kw)


def forward_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_records_every_n_steps_and_reads_the_device_only_when_asked(digits, monkeypatch):
    reads = []
    for name in ("item", "cpu", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            if sys._getframe(1).f_code.co_filename.endswith("diagnostics.py"):
                reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    model = mlp(digits)
    monitor = GradientMonitor(model, every=5)
    fit(model, digits, epochs=2, batch_size=32, callbacks=[monitor])  # 41 steps per epoch
    assert reads == []  # nothing read back while training
    record = monitor.record
    assert reads  # now it was
    assert list(record.steps) == list(range(0, 82, 5))
    assert record.layers == ["1.weight", "3.weight", "5.weight"]
    assert record.grad_norm.shape == (17, 3) and record.grad_hist.shape == (17, 3, 40)
    assert np.allclose(record.grad_hist.sum(-1), 1)  # fractions of the entries
    assert record.activations == ["2", "4"] and record.act_hist.shape == (17, 2, 40)


def test_statistics_match_a_hand_computation(digits):
    model = mlp(digits, hidden=(16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xb, yb = next(iter(digits.loader(batch_size=64, device="cpu")))
    with GradientMonitor(model, every=1) as monitor:
        monitor.start_step(0)
        before = [p.detach().clone() for p in (model[1].weight, model[3].weight)]
        nn.functional.cross_entropy(model(xb), yb).backward()
        grads = [model[1].weight.grad.clone(), model[3].weight.grad.clone()]
        opt.step()
        monitor.end_step()
    r = monitor.record
    for j, (g, w) in enumerate(zip(grads, before)):
        assert r.grad_norm[0, j] == pytest.approx(g.norm().item(), rel=1e-5)
        assert r.grad_mean[0, j] == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-9)
        assert r.grad_abs_mean[0, j] == pytest.approx(g.abs().mean().item(), rel=1e-5)
        assert r.weight_norm[0, j] == pytest.approx(w.norm().item(), rel=1e-5)
        # plain SGD moves w by lr * grad
        assert r.update_ratio[0, j] == pytest.approx(0.1 * g.norm().item() / w.norm().item(), rel=1e-4)
    hidden = torch.relu(model[1](model[0](xb)))
    assert r.act_inactive[0, 0] == pytest.approx((hidden <= 0).all(0).float().mean().item())


def one_step(model, xb, yb) -> GradientMonitor:
    with GradientMonitor(model, every=1) as monitor:
        monitor.start_step(0)
        nn.functional.cross_entropy(model(xb), yb).backward()
        monitor.end_step()
    return monitor


def test_dead_and_saturated_units_are_counted(digits):
    xb, yb = next(iter(digits.loader(batch_size=128, device="cpu")))
    relu = mlp(digits, hidden=(20,))
    with torch.no_grad():
        relu[1].bias[:15] = -1e4  # 15 of 20 units can never fire
    monitor = one_step(relu, xb, yb)
    assert monitor.record.act_inactive[0, 0] >= 0.75
    assert any(m.startswith("relu units dead") and "'2'" in m for m in monitor.diagnose())

    sigmoid = mlp(digits, hidden=(10,), activation="sigmoid")
    with torch.no_grad():
        sigmoid[1].weight.mul_(1e3)  # pushed deep into the flat tails
    monitor = one_step(sigmoid, xb, yb)
    assert monitor.record.act_inactive[0, 0] > 0.9
    assert any(m.startswith("sigmoid units saturated") for m in monitor.diagnose())


def test_hooks_come_off_and_never_stack(digits):
    model = mlp(digits)
    assert forward_hooks(model) == 0
    with GradientMonitor(model) as monitor:
        assert forward_hooks(model) == 2 and monitor.open
    assert forward_hooks(model) == 0 and not monitor.open
    # re-running a notebook cell: a new monitor on the same model replaces the old one
    first = GradientMonitor(model).attach()
    second = GradientMonitor(model).attach()
    assert forward_hooks(model) == 2 and not first.open and second.open
    second.close()
    assert forward_hooks(model) == 0
    # as a fit() callback: on for the run, off afterwards, records kept
    monitor = GradientMonitor(model, every=20)
    fit(model, digits, epochs=1, batch_size=64, callbacks=[monitor])
    assert forward_hooks(model) == 0 and len(monitor.record) == 2


def test_diagnosis_names_vanishing_gradients_in_a_deep_sigmoid_net(digits):
    found = {}
    for name, kw in {"sigmoid": dict(activation="sigmoid"), "residual": dict(residual=True)}.items():
        model = mlp(digits, hidden=(64,) * 8, **kw)
        monitor = GradientMonitor(model, every=10)
        fit(model, digits, optimizer="sgd", lr=0.05, epochs=4, batch_size=32, callbacks=[monitor])
        found[name] = (monitor.flow_ratio(), monitor.diagnose())
    ratio, messages = found["sigmoid"]
    assert ratio < 1e-4  # measured 3e-7 after 10 epochs (notebook 05)
    assert any(m.startswith("vanishing gradients: the first layer '1.weight'") for m in messages)
    ratio, messages = found["residual"]
    assert ratio > 1e-2 and not any("vanishing" in m for m in messages)


def test_diagnosis_names_exploding_gradients_and_clipping_quiets_it(digits):
    messages = {}
    for clip in (None, 1.0):
        model = mlp(digits, hidden=(64, 64))
        monitor = GradientMonitor(model, every=5)
        fit(model, digits, optimizer="sgd", lr=0.5, epochs=3, batch_size=32, grad_clip=clip, callbacks=[monitor])
        messages[clip] = monitor.diagnose()
    assert any(m.startswith("exploding gradients: the gradient norm grew") for m in messages[None])
    assert not any("exploding" in m for m in messages[1.0])


def test_bad_arguments(digits):
    with pytest.raises(ValueError, match="every must be a whole number of at least 1"):
        GradientMonitor(mlp(digits), every=0)
    with pytest.raises(ValueError, match="no weight"):
        GradientMonitor(nn.Sequential(nn.ReLU()))
    assert GradientMonitor(mlp(digits)).diagnose() == ["nothing recorded yet: train for at least one step"]
    with pytest.raises(ValueError, match="nothing recorded yet for fresh"):
        GradientInspector({"fresh": GradientMonitor(mlp(digits))})


def test_inspector_follows_its_controls(digits):
    monitors = {}
    for name, kw in {"sigmoid": dict(activation="sigmoid"), "relu": {}}.items():
        model = mlp(digits, hidden=(32,) * 3, **kw)
        monitors[name] = GradientMonitor(model, every=10)
        fit(model, digits, epochs=2, batch_size=32, callbacks=[monitors[name]])
    inspector = GradientInspector(monitors)
    assert inspector.renders == 1 and bytes(inspector.image.value).startswith(PNG)
    assert [label for label, _ in inspector.layer_w.options] == [
        "1: 1.weight",
        "2: 3.weight",
        "3: 5.weight",
        "4: 7.weight",
    ]
    assert inspector.step_w.options == tuple(range(0, 82, 10)) and inspector.step_w.value == 80
    before = bytes(inspector.image.value)
    inspector.step_w.value = 0  # no event loop here: redrawn at once
    assert inspector.renders == 2 and bytes(inspector.image.value) != before
    inspector.layer_w.value = 2
    assert inspector.renders == 3 and "3.weight" not in inspector.figure.axes[0].get_title()
    assert inspector.figure.axes[0].get_title().startswith("5.weight")
    inspector.run_w.value = "relu"  # back to the first layer and the last step, one redraw
    assert inspector.renders == 4 and inspector.layer_w.value == 0 and inspector.step_w.value == 80
    bundle = inspector._repr_mimebundle_()
    assert {"image/png", "text/plain"} <= set(bundle) and bundle["text/plain"].startswith("relu:")


def test_the_inspection_figure_says_what_a_log_axis_cannot_show(digits):
    from maaskit import plots
    from maaskit.diagnostics import UPDATE_RATIO_TYPICAL

    model = mlp(digits, hidden=(16, 16))
    monitor = GradientMonitor(model, every=1)
    fit(model, digits, optimizer="sgd", lr=0.05, epochs=1, batch_size=256, callbacks=[monitor])
    record = monitor.record
    fig = plots.gradient_inspection(record, layer=0)
    flow, updates = fig.axes[1], fig.axes[2]
    assert [t.get_text() for t in flow.get_xticklabels()] == ["1", "2", "3"]  # numbered, input side first
    assert flow.get_ylim()[0] > 1e-20  # the axis follows the data, not a 1e-30 floor
    band = [p for p in updates.patches if p.get_label().startswith("typical")]
    assert len(band) == 1 and f"{UPDATE_RATIO_TYPICAL[1]:g}" in band[0].get_label()
    assert len(fig.axes) == 6 + 2  # the two heat maps have colour bars
    record.grad_abs_mean[:] = 0  # a dead network: every bar would sit on the floor
    notes = [t.get_text() for t in plots.gradient_inspection(record, layer=0).axes[1].texts]
    assert any("no gradient reaches any layer" in n for n in notes) and notes.count("0") == 3


def test_log_curve_marks_where_a_series_leaves_the_axis():
    from matplotlib.figure import Figure

    from maaskit import plots

    ax = Figure().subplots()
    plots.log_curve(ax, [0, 5, 10, 15, 20], [1.0, 2.0, 4.0, 0.0, 0.0], label="norm")
    assert [t.get_text() for t in ax.texts] == ["0 from step 15"]
    ax = Figure().subplots()
    plots.log_curve(ax, [0, 1, 2], [1.0, float("nan"), 3.0])
    assert [t.get_text() for t in ax.texts] == ["NaN or infinite from step 1"]
