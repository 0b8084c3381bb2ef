"""Attributions (maaskit.explain, on Captum): every method's shape and determinism, the
completeness axiom of integrated gradients, and the model-randomization sanity check of
Adebayo et al. (2018)."""

import pytest
import torch

import maaskit
from maaskit.explain import METHODS, completeness_gap, explain, rank_correlation


@pytest.fixture(scope="module")
def digits():
    return maaskit.load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", digits.in_shape, digits.num_classes)
    maaskit.fit(model, digits, epochs=8, lr=3e-3, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def images(digits):
    return digits.normalize(digits.test.x[:6])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_one_number_per_pixel_and_the_same_numbers_again(trained, images, method):
    kw = {"samples": 64} if method in ("kernel_shap", "lime") else {}
    first = explain(trained, images, method=method, **kw)
    assert first.shape == images.shape and first.dtype == images.dtype and torch.isfinite(first).all()
    assert first.abs().sum() > 0
    assert torch.equal(first, explain(trained, images, method=method, **kw))  # seeded: reproducible
    assert trained.training is False


def test_targets_default_to_the_prediction_and_can_be_chosen(trained, images):
    predicted = trained(images).argmax(1)
    assert torch.equal(explain(trained, images, method="saliency"), explain(trained, images, predicted, "saliency"))
    other = explain(trained, images, (predicted + 1) % 10, "saliency")
    assert not torch.equal(other, explain(trained, images, predicted, "saliency"))
    with pytest.raises(ValueError, match="one class or one per image"):
        explain(trained, images, [1, 2], "saliency")


def test_integrated_gradients_add_up_to_the_change_in_score_more_closely_with_more_steps(trained, images):
    gaps = {
        steps: completeness_gap(trained, images, explain(trained, images, method="integrated_gradients", steps=steps))
        for steps in (2, 8, 64, 256)
    }
    means = [float(g.mean()) for g in gaps.values()]
    assert means == sorted(means, reverse=True), means  # the error falls as the steps grow
    with torch.no_grad():
        change = (trained(images) - trained(torch.zeros_like(images))).abs().max(1).values
    assert (gaps[256] < 0.01 * change + 1e-3).all(), (gaps[256], change)


def test_attributions_of_a_randomized_model_differ_from_the_trained_models(trained, images, digits):
    """Adebayo et al.'s sanity check: a method whose maps survive randomizing the weights explains
    the input, not the model."""
    maaskit.seed_everything(1)
    scrambled = maaskit.build_model("lenet", digits.in_shape, digits.num_classes).eval()
    target = trained(images).argmax(1)
    for method in ("integrated_gradients", "saliency"):
        ours = explain(trained, images, target, method)
        theirs = explain(scrambled, images, target, method)
        correlations = [rank_correlation(a, b) for a, b in zip(ours, theirs)]
        assert max(correlations) < 0.6, (method, correlations)


def test_bad_arguments_say_what_was_expected(trained, images):
    with pytest.raises(ValueError, match="unknown method 'shap'; expected one of saliency"):
        explain(trained, images, method="shap")
    with pytest.raises(ValueError, match="float tensor N x C x H x W"):
        explain(trained, images[0], method="saliency")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        explain(trained, images, method="integrated_gradients", steps=0)
