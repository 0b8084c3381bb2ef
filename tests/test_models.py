import pytest
import torch

from maaskit.models import IMAGE_MODELS, LeNet5, build_model, summary

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_maps_images_to_class_scores(name, shape):
    model = build_model(name, shape, num_classes=7)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lenet_on_cifar_is_the_pytorch_tutorial_network():
    model = build_model("lenet", (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 62_006
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.padding for c in convs] == [(0, 0), (0, 0)]


def test_lenet_pads_mnist_to_the_original_32x32_layout():
    model = LeNet5(1, 10, in_size=28)
    assert model.features[0].padding == (2, 2)
    assert model.classifier[1].in_features == 16 * 5 * 5


def test_mlp_is_the_classic_784_128_64_10():
    model = build_model("mlp", (1, 28, 28), 10)
    widths = [(m.in_features, m.out_features) for m in model if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 128), (128, 64), (64, 10)]
    assert sum(p.numel() for p in model.parameters()) == 109_386


def test_mlp_options():
    model = build_model("mlp", (1, 8, 8), 10, hidden=(16, 16, 16), activation="sigmoid", batch_norm=True)
    kinds = [type(m).__name__ for m in model]
    assert kinds.count("Sigmoid") == 3 and kinds.count("BatchNorm1d") == 3
    with pytest.raises(ValueError, match="expected one of relu, sigmoid, tanh, gelu"):
        build_model("mlp", (1, 8, 8), 10, activation="swish")


def test_resnet_has_residual_blocks_and_pools_any_size():
    model = build_model("resnet", (3, 32, 32), 10, width=8, blocks=(2, 2))
    assert sum(type(m).__name__ == "_BasicBlock" for m in model.modules()) == 4
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 10)


def test_build_model_records_how_to_rebuild_it():
    model = build_model("mlp", [1, 8, 8], 10, hidden=(32,))
    assert model.maaskit_config == {
        "name": "mlp",
        "in_shape": [1, 8, 8],
        "num_classes": 10,
        "kwargs": {"hidden": (32,)},
    }
    again = build_model(
        model.maaskit_config["name"],
        model.maaskit_config["in_shape"],
        model.maaskit_config["num_classes"],
        **model.maaskit_config["kwargs"],
    )
    again.load_state_dict(model.state_dict())


def test_unknown_model_and_bad_shapes():
    with pytest.raises(ValueError, match="expected one of mlp, lenet, resnet"):
        build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="channels, height, width"):
        build_model("mlp", (8, 8), 10)
    with pytest.raises(ValueError, match="square"):
        build_model("lenet", (1, 8, 10), 10)
    with pytest.raises(ValueError, match="at least 4 pixels"):
        build_model("lenet", (1, 2, 2), 10)


def test_summary_lists_layers_shapes_and_parameter_counts():
    model = build_model("lenet", (3, 32, 32), 10)
    model.train()
    text = summary(model, (3, 32, 32))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "params"]
    assert any(
        "features.0" in line and "Conv2d" in line and "(1, 6, 28, 28)" in line and "456" in line for line in lines
    )
    assert any("classifier.1" in line and "(1, 120)" in line and "48,120" in line for line in lines)
    assert lines[-1] == "total parameters: 62,006 (trainable: 62,006)"
    assert model.training  # summary leaves the mode as it found it
    assert not model.features[0]._forward_hooks  # and removes its hooks
