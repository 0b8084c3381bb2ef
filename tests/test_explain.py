"""Attributions (maaskit.explain, on Captum): every method's shape and determinism, the
completeness axiom of integrated gradients, and the model-randomization sanity check of
Adebayo et al. (2018)."""

import re

import httpx
import numpy as np
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


# --- served: POST /v1/models/{name}:explain ---------------------------------------------------------


@pytest.fixture(scope="module")
def served(trained, digits, tmp_path_factory):
    from maaskit.serving.runner import serve

    path = maaskit.save_artifact(trained, tmp_path_factory.mktemp("explain") / "lenet", data=digits, name="digits")
    with serve(path) as running:
        yield running


def test_the_explain_endpoint_and_client_give_the_local_attributions(served, trained, images):
    with maaskit.Client(served.url) as client:
        for method in ("integrated_gradients", "occlusion", "lime"):
            got, targets = client.explain("digits", images[:2], method=method, samples=32, seed=3)
            expected = explain(trained, images[:2], method=method, samples=32, seed=3)
            assert got.shape == tuple(images[:2].shape)
            torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
            assert targets == trained(images[:2]).argmax(1).tolist()
        chosen, targets = client.explain("digits", images[:2], method="saliency", target=[3, 4])
        assert targets == [3, 4]
        torch.testing.assert_close(torch.from_numpy(chosen), explain(trained, images[:2], [3, 4], "saliency"))
    doc = httpx.get(f"{served.url}/openapi.json").json()
    assert "/v1/models/digits:explain" in doc["paths"] and "ExplainRequest" in doc["components"]["schemas"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "shap"}, "method: Input should be 'saliency'"),
        ({"steps": 10_000}, "steps: Input should be less than or equal to 256"),
        ({"samples": 5000}, "samples: Input should be less than or equal to 1024"),
        ({"target": 12}, "target classes are 0 to 9, got 12"),
        ({"target": [1, 2, 3]}, r"one class or one per instance \(2\), got 3"),
        ({"target": "7"}, "target"),
        ({"instances": [[[0.0]]]}, r"must have shape \[N, 1, 8, 8\]"),
        ({"instances": []}, "instances: List should have at least 1 item"),
        ({"instances": None}, "instances: Input should be a valid list"),
    ],
)
def test_every_explain_mistake_gets_a_400_that_says_what_was_expected(served, images, change, message):
    body = {"instances": images[:2].tolist(), "method": "saliency", **change}
    answer = httpx.post(f"{served.url}/v1/models/digits:explain", json=body, timeout=60)
    assert answer.status_code == 400 and re.search(message, answer.json()["error"]), answer.text


def test_explaining_an_unknown_model_is_a_404_and_too_many_images_a_400(served, images):
    missing = httpx.post(f"{served.url}/v1/models/cats:explain", json={"instances": images[:1].tolist()})
    assert missing.status_code == 404 and "unknown model 'cats'" in missing.json()["error"]
    many = httpx.post(
        f"{served.url}/v1/models/digits:explain", json={"instances": images[:1].repeat(17, 1, 1, 1).tolist()}
    )
    assert many.status_code == 400 and "at most 16 items" in many.json()["error"]


def test_a_v2_request_with_an_explain_parameter_answers_attributions(served, trained, images):
    from maaskit.serving.protocol import decode_tensor, encode_body, encode_tensor, split_body

    x = images[:3].numpy()
    for binary in (False, True):
        spec, raw = encode_tensor("input", x, binary=binary)
        header = {"id": "why", "inputs": [spec], "parameters": {"explain": {"method": "occlusion", "target": 4}}}
        if binary:
            header["parameters"]["binary_data_output"] = True
        body, headers = encode_body(header, [raw])
        answer = httpx.post(f"{served.url}/v2/models/digits/infer", content=body, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        reply, rest = split_body(answer.content, answer.headers.get("inference-header-content-length"))
        attributions, offset = decode_tensor(reply["outputs"][0], memoryview(rest))
        targets, _ = decode_tensor(reply["outputs"][1], memoryview(rest), offset)
        assert [o["name"] for o in reply["outputs"]] == ["attributions", "targets"] and reply["id"] == "why"
        assert targets.tolist() == [4, 4, 4]
        expected = explain(trained, images[:3], 4, "occlusion")
        torch.testing.assert_close(torch.from_numpy(np.array(attributions)), expected)
    too_much = {"inputs": [encode_tensor("input", x)[0]], "parameters": {"explain": {"steps": 1000}}}
    refused = httpx.post(f"{served.url}/v2/models/digits/infer", content=encode_body(too_much, [])[0])
    assert refused.status_code == 400 and "parameters.explain.steps" in refused.json()["error"]


def test_the_client_explains_uint8_pixels_through_v2_as_the_server_normalizes_them(served, trained, digits):
    pixels = digits.test.x[:2]
    with maaskit.Client(served.url) as client:
        got, targets = client.explain("digits", pixels, method="integrated_gradients", steps=16)
    expected = explain(trained, digits.normalize(pixels), method="integrated_gradients", steps=16)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
    assert targets == trained(digits.normalize(pixels)).argmax(1).tolist()
    with maaskit.Client(served.url, protocol="v1") as v1, pytest.raises(ValueError, match="normalized float"):
        v1.explain("digits", pixels)


# --- the PCA view -------------------------------------------------------------------------------


def test_penultimate_features_and_their_pca_separate_the_classes_better_than_pixels(trained, digits):
    from maaskit import plots
    from maaskit.projection import features, pca

    x, y = digits.normalize(digits.test.x), digits.test.y
    feats = features(trained, x, batch_size=64)
    last = [m for m in trained.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert feats.shape == (len(x), last.in_features)
    torch.testing.assert_close(last(feats), trained(x))  # exactly what the last layer reads
    spread = {}
    for name, data in (("pixels", x), ("features", feats)):
        coords, variance = pca(data, 10)
        assert coords.shape == (len(x), 10) and len(variance) == 10
        assert np.all(np.diff(variance) <= 1e-12) and 0 < variance.sum() <= 1 + 1e-9
        # how far apart the class centres are in 2-D, against the spread within a class
        centres = np.stack([coords[y == c, :2].mean(0) for c in range(10)])
        within = np.mean([coords[y == c, :2].std(0).mean() for c in range(10)])
        spread[name] = np.std(centres, 0).mean() / within
    assert spread["features"] > spread["pixels"], spread
    fig = plots.projection({"pixels": pca(x, 5), "features": pca(feats, 5)}, y, trained(x).argmax(1) != y)
    assert len(fig.axes) == 5  # two scatters, two variance bars, one colour bar
    with pytest.raises(ValueError, match="no nn.Linear"):
        features(torch.nn.Conv2d(1, 1, 3), x)


def test_a_dead_explanation_process_is_a_503_and_the_next_request_starts_another(served, images):
    import os
    import signal

    body = {"instances": images[:1].tolist(), "method": "saliency"}
    assert httpx.post(f"{served.url}/v1/models/digits:explain", json=body, timeout=60).status_code == 200
    pool = served.repository.get("digits")._explainer._pool
    for pid in list(pool._processes):  # as the out-of-memory killer would
        os.kill(pid, signal.SIGKILL)
    answers = [httpx.post(f"{served.url}/v1/models/digits:explain", json=body, timeout=60) for _ in range(2)]
    statuses = [a.status_code for a in answers]
    assert statuses == [503, 200], [a.text for a in answers]  # a clear 503, never a 500; then a new process
    assert "explanation process stopped" in answers[0].json()["error"] and answers[0].headers["retry-after"] == "1"
