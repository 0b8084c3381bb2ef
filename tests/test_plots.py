import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import maaskit
from maaskit import plots


def test_function_grid_one_panel_per_function():
    z = torch.linspace(-3, 3, 50)
    fig = plots.function_grid(
        z, {"a": {"f": z, "f'": torch.ones(50)}, "b": {"g": z**2}, "c": {"h": -z}, "d": {"k": z}}, ncols=3
    )
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c", "d"]
    assert len(visible[0].get_lines()) == 2 + 2  # two curves and the two zero axes
    assert len(fig.axes) == 6  # 2 x 3 grid, the two spare panels hidden


def test_history_groups_losses_and_accuracies():
    fig = plots.history(
        {"epoch": [1, 2, 3], "train_loss": [3, 2, 1], "val_loss": [3, 2.5, 2], "val_acc": [0.1, 0.5, 0.9]}, x="epoch"
    )
    loss, acc = fig.axes
    assert loss.get_title() == "loss" and acc.get_title() == "accuracy"
    assert [line.get_label() for line in loss.get_lines()] == ["train_loss", "val_loss"]
    assert list(acc.get_lines()[0].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.history({"epoch": [1, 2]}, x="epoch")


def test_history_draws_a_dashboards_panels_from_records_and_running_values():
    records = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.5, "val_acc": 0.4, "lr": 0.1}]
    live = {"x": [0.5, 1.0], "train_loss": [1.5, 1.0], "train_acc": [0.3, 0.5]}
    fig = plots.history(records, groups=("loss", "accuracy"), live=live, epochs=3, log_loss=True)
    loss, acc = fig.axes
    assert [line.get_label() for line in loss.get_lines()] == ["train_loss (running)", "train_loss", "val_loss"]
    assert loss.get_yscale() == "log" and acc.get_yscale() == "linear" and loss.get_xlim() == (0, 3)
    empty = plots.history([], groups=("loss", "accuracy"))  # before training: the panels, empty
    assert [ax.get_title() for ax in empty.axes] == ["loss", "accuracy"]


def test_history_draws_every_series_it_is_given():
    series = {"nll_loss on logits (bug)": [2, -5, -40], "cross_entropy (fix)": [2.3, 1, 0.4], "lr": [0.1, 0.1, 0.01]}
    fig = plots.history(series)
    drawn = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert sorted(drawn) == sorted(series)  # none dropped, whatever the names say
    assert [ax.get_title() for ax in fig.axes] == ["loss", "cross_entropy (fix)", "lr"]
    history = maaskit.History(
        [
            {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "complete": True},
            {"epoch": 2, "train_loss": 0.5, "val_acc": 0.7, "complete": True},
        ]
    )
    fig = plots.history(history, x="epoch")  # a fit() History too; the complete flags are not numbers to draw
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]


def test_image_grid_marks_mistakes_in_red():
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    fig = plots.image_grid(
        images, labels=[0, 1, 2, 3, 4], predictions=[0, 1, 9, 3, 7], classes=[str(i) for i in range(10)], ncols=3
    )
    titles = [ax.title for ax in fig.axes if ax.images]
    assert [t.get_text() for t in titles] == ["0", "1", "9 (is 2)", "3", "7 (is 4)"]
    red = mcolors.to_rgba("tab:red")
    assert [mcolors.to_rgba(t.get_color()) == red for t in titles] == [False, False, True, False, True]
    assert len(fig.axes) == 6  # 2 rows of 3


def test_image_grid_color_images_and_saving(tmp_path):
    fig = plots.image_grid(np.random.rand(2, 3, 16, 16), labels=[1, 2], classes=["a", "b", "c"])
    assert fig.axes[0].images[0].get_array().shape == (16, 16, 3)
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_attributions_draw_the_image_then_one_overlay_per_method():
    images = torch.rand(3, 1, 8, 8)
    maps = {"saliency": torch.rand(3, 1, 8, 8), "integrated_gradients": torch.randn(3, 1, 8, 8)}
    fig = plots.attributions(images, maps, titles=["1", "2 (is 3)", "4"])
    assert len(fig.axes) == 3 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["1", "saliency", "integrated gradients"]
    assert fig.axes[3].title.get_color() == "tab:red"  # the mistake stands out
    heat = fig.axes[2].get_images()[0]
    assert heat.get_clim()[0] == -heat.get_clim()[1]  # a symmetric scale: white is zero
    with pytest.raises(ValueError, match=r"the 'saliency' map has shape \[3, 1, 4, 4\]"):
        plots.attributions(images, {"saliency": torch.rand(3, 1, 4, 4)})


def test_deletion_curves_give_each_ordering_a_line_with_its_area():
    fig = plots.deletion_curves([0, 0.5, 1], {"IG order": [1.0, 0.2, 0.1], "random order": [1.0, 0.8, 0.1]})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["IG order (area 0.375)", "random order (area 0.675)"]
    with pytest.raises(ValueError, match="the 'IG order' curve has 2 points for 3 fractions"):
        plots.deletion_curves([0, 0.5, 1], {"IG order": [1.0, 0.2]})


def test_convergence_draws_each_series_log_log():
    fig = plots.convergence([2, 8, 64], {"a": [0.3, 0.05, 0.001], "b": [0.2, 0.0, 0.0]}, ylabel="gap")
    (ax,) = fig.axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == ["a", "b"]
    assert any("0 from steps 8" in t.get_text() for t in ax.texts)  # where 'b' left the axis is said


def test_loss_and_perplexity_draws_both_panels_on_a_log_scale():
    records = [{"epoch": 1, "train_loss": 3.0, "val_loss": 3.2}, {"epoch": 2, "train_loss": 2.0, "val_loss": 2.5}]
    fig = plots.loss_and_perplexity(records, {"x": [0.5, 1.5], "loss": [4.0, 2.5]})
    loss, perplexity = fig.axes
    assert loss.get_title() == "loss (nats per token)" and perplexity.get_yscale() == "log"
    validation = perplexity.get_lines()[2]
    assert validation.get_label() == "validation" and list(validation.get_ydata()) == pytest.approx(
        [np.exp(3.2), np.exp(2.5)]
    )
