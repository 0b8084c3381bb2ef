import numpy as np
import pytest
import torch
from conftest import CIFAR_CLASSES, make_mnist_like

from maaskit.data import (
    DATASETS,
    DatasetUnavailableError,
    DeviceLoader,
    Split,
    cache_dir,
    load_dataset,
    random_crop,
    random_flip,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_splits_cover_the_dataset_once(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    assert digits.in_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.classes == tuple("0123456789")
    assert digits.train.x.dtype == torch.uint8 and digits.train.y.dtype == torch.int64
    # 16 (sklearn's maximum) maps to 255
    assert digits.train.x.max() == 255 and digits.train.x.min() == 0
    from sklearn.datasets import load_digits

    original = np.sort(np.rint(load_digits().images.reshape(1797, -1) * 255 / 16).astype(np.uint8), axis=0)
    ours = torch.cat([digits.train.x, digits.val.x, digits.test.x]).reshape(1797, -1).numpy()
    assert np.array_equal(np.sort(ours, axis=0), original)


def test_splits_are_seeded(digits):
    again = load_dataset("digits")
    other = load_dataset("digits", seed=1)
    assert torch.equal(digits.val.x, again.val.x) and torch.equal(digits.test.y, again.test.y)
    assert not torch.equal(digits.test.x, other.test.x)


def test_normalization_stats_come_from_the_training_split(digits):
    x = digits.train.x.float() / 255
    assert digits.mean[0] == pytest.approx(x.mean().item(), rel=1e-5)
    assert digits.std[0] == pytest.approx(x.std().item(), rel=1e-5)
    z = digits.normalize(digits.train.x)
    assert z.mean().item() == pytest.approx(0, abs=1e-5) and z.std().item() == pytest.approx(1, abs=1e-4)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="expected one of digits, mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_split_checks_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="2 images but y has 3"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "name, folder, classes",
    [
        ("mnist", "MNIST", tuple("0123456789")),
        (
            "fashion-mnist",
            "FashionMNIST",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ),
    ],
)
def test_mnist_family_loads_through_torchvision(tmp_path, no_network, name, folder, classes):
    arrays = make_mnist_like(tmp_path, folder, n_train=30, n_test=10)
    data = load_dataset(name, root=tmp_path, val_fraction=0.2, download=False)
    assert data.in_shape == (1, 28, 28) and data.classes == classes
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 10)
    assert np.array_equal(data.test.x[:, 0].numpy(), arrays["t10k"][0])
    assert np.array_equal(data.test.y.numpy(), arrays["t10k"][1])
    train = torch.cat([data.train.x, data.val.x])[:, 0].reshape(30, -1).numpy()
    assert np.array_equal(np.sort(train, axis=0), np.sort(arrays["train"][0].reshape(30, -1), axis=0))


def test_cifar10_loads_through_torchvision_as_channels_first(cifar10_root, no_network):
    root, arrays = cifar10_root
    data = load_dataset("cifar10", root=root, val_fraction=0.1)
    assert data.in_shape == (3, 32, 32) and data.classes == tuple(CIFAR_CLASSES)
    assert (len(data.train) + len(data.val), len(data.test)) == (30, 6)
    rows, labels = arrays["test_batch"]
    # a CIFAR row holds the red plane, then green, then blue, each row-major 32x32
    assert np.array_equal(data.test.x.reshape(6, -1).numpy(), rows)
    assert data.test.y.tolist() == labels
    assert len(data.mean) == 3


def test_missing_files_offline_say_what_to_put_where(tmp_path, no_network):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert "download failed: RuntimeError" in message or "download failed: URLError" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "urllib" not in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__

    with pytest.raises(DatasetUnavailableError, match=r"cifar-10-python\.tar\.gz.*data_batch_1\.\.5"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAASKIT_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "data"
    monkeypatch.delenv("MAASKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "maaskit" / "datasets"


def test_datasets_constant_matches_what_loads():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


# --- the device-resident loader -------------------------------------------------------------


def test_an_epoch_visits_every_example_once(digits):
    loader = digits.loader("train", batch_size=100, device="cpu")
    assert len(loader) == 13 and loader.num_examples == 1294
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == 1294
    assert torch.equal(torch.bincount(seen, minlength=10), torch.bincount(digits.train.y, minlength=10))
    xs = torch.cat([x for x, _ in loader])
    assert xs.dtype == torch.float32 and xs.shape == (1294, 1, 8, 8)


def test_batches_are_normalized_like_dataset_normalize(digits):
    loader = digits.loader("test", batch_size=50, device="cpu")
    x, y = next(iter(loader))
    assert torch.allclose(x, digits.normalize(digits.test.x[:50]), atol=1e-6)  # test split: not shuffled
    assert torch.equal(y, digits.test.y[:50])


def test_shuffling_is_seeded_and_changes_every_epoch(digits):
    first = [y for _, y in digits.loader(batch_size=64, device="cpu", seed=3)]
    loader = digits.loader(batch_size=64, device="cpu", seed=3)
    again = [y for _, y in loader]
    next_epoch = [y for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(again), torch.cat(next_epoch))
    other_seed = [y for _, y in digits.loader(batch_size=64, device="cpu", seed=4)]
    assert not torch.equal(torch.cat(first), torch.cat(other_seed))


def test_drop_last_and_batch_size_checks(digits):
    assert len(digits.loader(batch_size=100, drop_last=True, device="cpu")) == 12
    assert all(len(y) == 100 for _, y in digits.loader(batch_size=100, drop_last=True, device="cpu"))
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(digits.train, digits.normalization, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="unknown split"):
        digits.loader("validation")


def test_random_crop_shifts_content_within_the_padding():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).reshape(2, 3, 6, 6).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output image is some 6x6 window of its padded input, same for all channels
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[i, :, dy : dy + 6, dx : dx + 6], out[i])
        ]
        assert windows
    assert torch.equal(random_crop(x, 0), x)
    offsets = set()
    for s in range(20):
        o = random_crop(x[:1], 2, torch.Generator().manual_seed(s))
        offsets.add(tuple(o.flatten().tolist()))
    assert len(offsets) > 5  # offsets really vary


def test_random_flip_mirrors_about_half():
    x = torch.arange(1000 * 4, dtype=torch.float32).reshape(1000, 1, 1, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out != x).any(dim=(1, 2, 3))
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert 400 < flipped.sum() < 600


def test_augmentation_is_crop_only_for_digits_and_crop_flip_for_cifar(digits, cifar10_root):
    loader = digits.loader(augment=True, device="cpu")
    assert loader.crop_padding == 1 and not loader.flip
    cifar = load_dataset("cifar10", root=cifar10_root[0])
    loader = cifar.loader(augment=True, device="cpu", batch_size=8)
    assert loader.crop_padding == 4 and loader.flip
    x, _ = next(iter(loader))
    assert x.shape == (8, 3, 32, 32)
