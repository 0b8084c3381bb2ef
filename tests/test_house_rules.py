"""Clear errors at call time, and the pieces written once: Normalization, top_k, read_image,
the recipe, the Recorder and callback order, History's length, the CLI's help."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import maaskit
from maaskit import plots
from maaskit.cli import build_parser
from maaskit.diagnostics import GradientMonitor
from maaskit.images import read_image
from maaskit.serving.dataplane import ModelRepository
from maaskit.serving.protocol import top_k
from maaskit.train import Callback, EarlyStopping


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


def small_model(digits):
    maaskit.seed_everything(0)
    return maaskit.build_model("mlp", digits.in_shape, digits.num_classes, hidden=(16,))


# --- strict inputs, clear errors ------------------------------------------------------------------


def test_fit_says_what_data_it_needs(digits):
    model = small_model(digits)
    with pytest.raises(TypeError, match=r"pass maaskit.load_dataset\('digits'\)"):
        maaskit.fit(model, "digits")
    tensors = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="maaskit ImageDataset from maaskit.load_dataset.*torch.utils.data.Dataset"):
        maaskit.fit(model, tensors)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        maaskit.fit("lenet", digits)
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        maaskit.fit(model, digits, batch_size=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        maaskit.fit(model, digits, lr=float("nan"))
    with pytest.raises(TypeError, match=r"write EarlyStopping\(\), not EarlyStopping"):
        maaskit.fit(model, digits, callbacks=[EarlyStopping])


def test_early_stopping_names_what_it_can_monitor_before_training():
    with pytest.raises(ValueError, match="cannot monitor 'val_accuracy'.*val_acc"):
        EarlyStopping(monitor="val_accuracy")
    assert EarlyStopping(monitor="val_acc").mode == "max" and EarlyStopping().mode == "min"
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_repository_image_grid_and_monitor_refuse_bad_input(digits):
    with pytest.raises(TypeError, match="cannot serve a int: pass an artifact directory"):
        ModelRepository(device="cpu").add(123)
    with pytest.raises(ValueError, match="at least one image"):
        plots.image_grid(torch.zeros(0, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bins must be a whole number of at least 1"):
        GradientMonitor(small_model(digits), bins=0)
    with pytest.raises(TypeError, match="dataset name must be a string"):
        maaskit.load_dataset(7)


# --- callbacks ------------------------------------------------------------------------------------


def test_callbacks_run_in_order_after_the_recorder_and_errors_name_the_callback(digits):
    seen = []

    class Late(Callback):
        order = 10

        def on_epoch_end(self, run):
            seen.append(("late", len(run.history)))

    class Early(Callback):
        order = -1

        def on_epoch_end(self, run):
            seen.append(("early", len(run.history)))  # the Recorder (order -100) has appended already

    history = maaskit.fit(small_model(digits), digits, epochs=2, callbacks=[Late(), Early()])
    assert seen == [("early", 1), ("late", 1), ("early", 2), ("late", 2)]
    assert len(history) == 2 == len(history.records) and history[-1] is history.last
    assert history["epoch"] == [1, 2] and "val_acc" in history and set(history) == set(history.keys())

    class Broken(Callback):
        def on_batch_end(self, run):
            raise ValueError("my bug")

    with pytest.raises(ValueError, match="my bug") as caught:
        maaskit.fit(small_model(digits), digits, epochs=1, callbacks=[Broken()])
    assert "(raised in callback Broken.on_batch_end)" in caught.value.__notes__


# --- one normalization, one top-k, one image reader -----------------------------------------------


def test_one_normalization_for_training_serving_and_the_manifest(digits):
    norm = digits.normalization
    pixels = digits.test.x[:16]
    as_tensor = norm.to_float(pixels)
    assert torch.equal(torch.from_numpy(norm.to_float(pixels.numpy())), as_tensor)  # NumPy: same numbers
    batch, _ = next(iter(digits.loader("test", batch_size=16, shuffle=False, device="cpu")))
    assert torch.equal(batch, as_tensor)  # what training sees is what the server computes
    assert torch.equal(norm.to_uint8(as_tensor), pixels)  # and back, exactly
    assert maaskit.Normalization.from_manifest(norm.as_manifest()) == norm
    assert as_tensor.mean().abs() < 0.2 and (as_tensor.std() - 1).abs() < 0.2
    with pytest.raises(ValueError, match="one value per channel"):
        maaskit.Normalization((0.5, 0.5), (0.2,))
    with pytest.raises(ValueError, match=r"expected images of shape \[N, 1, H, W\]"):
        norm.to_float(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_top_k_best_first_with_and_without_labels():
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    named = top_k(logits, 2, ["a", "b", "c"])
    assert [label for label, _ in named[0]] == ["b", "c"] and named[1][0][0] == "a"
    assert named[0][0][1] == pytest.approx(np.exp(3) / np.exp([0, 3, 1]).sum())
    assert top_k(logits, 1) == [[(1, pytest.approx(named[0][0][1]))], [(0, pytest.approx(named[1][0][1]))]]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(logits, 0)


def test_read_image_from_files_bytes_and_npy(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.save(tmp_path / "x.npy", rgb.transpose(2, 0, 1))
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1))
    assert np.array_equal(read_image(str(tmp_path / "grey.png")), rgb[None, ..., 0])
    assert np.array_equal(read_image(tmp_path / "x.npy"), rgb.transpose(2, 0, 1))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    assert read_image(buffer.getvalue(), channels=1, size=(8, 8)).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="channels must be 1"):
        read_image(tmp_path / "rgb.png", channels=2)


# --- one recipe -----------------------------------------------------------------------------------


def test_cli_and_dashboard_defaults_are_the_recipe():
    from maaskit.widgets import TrainingDashboard

    recipe = maaskit.default_recipe("digits")
    args = build_parser().parse_args(["train", "--out", "x"])
    assert (args.model, args.optimizer, args.lr, args.batch_size, args.epochs, args.scheduler, args.augment) == (
        recipe.model,
        recipe.optimizer,
        recipe.lr,
        recipe.batch_size,
        recipe.epochs,
        recipe.scheduler,
        recipe.augment,
    )
    dash = TrainingDashboard()
    assert dash._settings() | {"model": dash.model_w.value} == {
        **recipe.fit_kwargs(),
        "model": recipe.model,
        "device": "auto",
        "seed": 0,
    }
    assert TrainingDashboard(epochs=3).epochs_w.value == 3  # arguments given win


def test_load_or_train_trains_once_then_loads(digits, tmp_path, capsys):
    quick = maaskit.default_recipe("digits").but(model="mlp", epochs=2)
    model, manifest = maaskit.load_or_train(tmp_path / "m", digits, quick)
    assert "training mlp on digits for 2 epochs" in capsys.readouterr().out
    assert manifest["architecture"]["name"] == "mlp" and 0 < manifest["metrics"]["test_accuracy"] <= 1
    again, same = maaskit.load_or_train(tmp_path / "m", digits, quick)
    assert capsys.readouterr().out == "" and same == manifest
    x = digits.normalize(digits.test.x[:8])
    assert torch.equal(again(x), model(x))


# --- the CLI says what every option does ----------------------------------------------------------


def _commands(parser, prefix=""):
    """Every command and sub-command (``maaskit lm train``) with its parser."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _commands(sub, f"{prefix}{name} ")


def test_every_cli_option_has_a_help_line_with_its_default():
    commands = dict(_commands(build_parser()))
    assert "lm train" in commands
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"maaskit {name} {action.option_strings or action.dest} has no help"
            said = "default" in action.help.replace("%(default)s", "")  # in words: "default: $OPENAI_API_KEY"
            if action.option_strings and action.default not in (None, False) and not action.required and not said:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
            # once: never a "(default: ...)" beside help that says its default in words, never "(default: None)"
            shown = sub._get_formatter()._get_help_string(action) or ""
            assert shown.replace("%(default)s", "").count("default") <= 1 and "(default: None)" not in shown, (
                name,
                action.dest,
                shown,
            )
