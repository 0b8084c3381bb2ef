"""OptimizerPlayground without a browser: set traits, check the model state."""

import asyncio
import base64
import time

import pytest
import torch

from maaskit.surfaces import PATH_OPTIMIZERS, SURFACES, make_optimizer, run_path
from maaskit.widgets import OptimizerPlayground

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pg():
    return OptimizerPlayground("quadratic", ("SGD", "Adam"), lr=0.01, steps=40)


def test_first_render_happens_on_construction(pg):
    assert pg.renders == 1
    assert bytes(pg.image.value).startswith(PNG)
    assert [p.label for p in pg.paths] == ["SGD", "Adam"]
    assert all(len(p.points) == 41 and p.diverged_at is None for p in pg.paths)
    assert "<td>SGD</td>" in pg.status.value and "<td>Adam</td>" in pg.status.value


def test_paths_are_what_torch_optim_does(pg):
    xy = torch.tensor(SURFACES["quadratic"].start, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([xy], lr=0.01)
    for _ in range(40):
        adam.zero_grad()
        SURFACES["quadratic"](xy[0], xy[1]).backward()
        adam.step()
    assert pg.paths[1].points[-1] == pytest.approx(tuple(xy.tolist()), abs=1e-12)


def test_moving_the_learning_rate_redraws_the_picture(pg):
    before = pg.image.value
    pg.lr_w.value = 0.05
    assert pg.renders == 2 and pg.image.value != before
    assert "learning rate 0.05" in pg.figure.axes[0].get_title()


def test_a_diverging_run_is_reported_not_raised(pg):
    pg.lr_w.value = 0.5  # 0.5 > 2 / 25: SGD on the steep axis grows every step
    sgd, adam = pg.paths
    assert sgd.diverged_at is not None and 1 <= sgd.diverged_at <= 40
    assert adam.diverged_at is None
    assert f"diverged at step {sgd.diverged_at}" in pg.status.value
    assert f"diverged at step {sgd.diverged_at}" in str(pg)
    (legend,) = pg.figure.legends  # one legend for both panels, outside them
    assert [t.get_text() for t in legend.get_texts()][0] == f"SGD — diverged at step {sgd.diverged_at}"
    steps = {name: n for name, n, *_ in pg.rows()}
    assert steps["SGD"] == sgd.diverged_at  # never "steps 0" beside "diverged at step 1"


def test_nan_is_divergence_too():
    surface = SURFACES["quadratic"]

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))

    path = run_path(surface, lambda p: Broken(p, lr=0.1), 10)
    assert path.diverged_at == 1 and len(path.points) == 1


def test_changing_the_surface_moves_the_start_sliders_and_redraws_once(pg):
    pg.surface_w.value = "beale"
    beale = SURFACES["beale"]
    assert (pg.x0_w.min, pg.x0_w.max) == beale.xlim and (pg.y0_w.min, pg.y0_w.max) == beale.ylim
    assert (pg.x0_w.value, pg.y0_w.value) == beale.start
    assert pg.renders == 2
    assert pg.paths[0].points[0] == beale.start


def test_start_point_sliders(pg):
    pg.x0_w.value = 1.0
    pg.y0_w.value = -1.0
    assert pg.paths[0].points[0] == (1.0, -1.0)


def test_optimizer_selection_and_hyper_parameters(pg):
    pg.optimizers_w.value = ("Momentum", "Nesterov", "RMSprop")
    assert [p.label for p in pg.paths] == ["Momentum", "Nesterov", "RMSprop"]
    pg.momentum_w.value = 0.5
    momentum = make_optimizer("Momentum", [torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.5)
    assert momentum.param_groups[0]["momentum"] == 0.5 and not momentum.param_groups[0]["nesterov"]
    pg.optimizers_w.value = ()
    assert pg.paths == [] and "at least one optimizer" in pg.status.value and bytes(pg.image.value).startswith(PNG)


def test_every_optimizer_name_builds_its_torch_class():
    for name, (cls, _) in PATH_OPTIMIZERS.items():
        opt = make_optimizer(name, [torch.zeros(2, requires_grad=True)], lr=0.1, betas=(0.8, 0.99))
        assert type(opt) is cls
    assert make_optimizer("Nesterov", [torch.zeros(2, requires_grad=True)], lr=0.1).param_groups[0]["nesterov"]
    assert make_optimizer("AdamW", [torch.zeros(2, requires_grad=True)], lr=0.1, betas=(0.8, 0.99)).defaults[
        "betas"
    ] == (0.8, 0.99)
    with pytest.raises(ValueError, match="expected one of SGD, Momentum"):
        make_optimizer("LBFGS", [torch.zeros(2, requires_grad=True)], lr=0.1)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown surface 'himmelblau'"):
        OptimizerPlayground("himmelblau")
    with pytest.raises(ValueError, match="unknown optimizer.*'Lion'"):
        OptimizerPlayground(optimizers=("Adam", "Lion"))


def test_headless_display_is_a_picture_and_a_table(pg):
    bundle = pg._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == bytes(pg.image.value)
    assert bundle["text/plain"].splitlines()[0].split() == [
        "optimizer",
        "steps",
        "final",
        "f",
        "to",
        "minimum",
        "status",
    ]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == pg.widget.model_id


def test_slider_drags_are_debounced_into_one_redraw():
    async def drag():
        pg = OptimizerPlayground("quadratic", ("SGD",), steps=20, debounce=0.05)
        for lr in (0.01, 0.02, 0.03, 0.04, 0.05):
            pg.lr_w.value = lr
        assert pg.renders == 1  # nothing drawn while the slider moves
        deadline = time.monotonic() + 60
        while pg.renders < 2:  # the debounce timer fires once the slider rests
            assert time.monotonic() < deadline, "the redraw never came"
            await asyncio.sleep(0.01)
        return pg

    pg = asyncio.run(drag())
    assert pg.renders == 2 and "0.05" in pg.figure.axes[0].get_title()
