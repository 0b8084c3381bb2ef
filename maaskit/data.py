"""Datasets as uint8 tensors, split three ways, and a loader that batches on the device.

``load_dataset("digits")`` needs no network: scikit-learn ships those 1,797 8x8
images. MNIST, Fashion-MNIST and CIFAR-10 go through torchvision's own readers
and are downloaded on demand into :func:`cache_dir`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import pick_device
from .normalization import Normalization
from .scoring import Accuracy, Metric

__all__ = [
    "DATASETS",
    "DatasetUnavailableError",
    "DeviceLoader",
    "ImageDataset",
    "Split",
    "cache_dir",
    "load_dataset",
    "random_crop",
    "random_flip",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


class DatasetUnavailableError(RuntimeError):
    """The files of a dataset are not on disk and could not be downloaded."""


def cache_dir() -> Path:
    """Where downloaded datasets live: ``$MAASKIT_DATA``, else ``$XDG_CACHE_HOME/maaskit/datasets``."""
    if os.environ.get("MAASKIT_DATA"):
        return Path(os.environ["MAASKIT_DATA"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "maaskit" / "datasets"


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``N x C x H x W`` and labels as int64 ``N``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"x must be uint8 N x C x H x W, got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} images but y has {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ImageDataset:
    """A dataset split into train/validation/test, with what a model needs to know about it.

    (Not a ``torch.utils.data.Dataset``: it holds whole splits and batches them on the device.)
    """

    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    normalization: Normalization  # per-channel statistics of the training images

    unit = "images"  # what fit() counts: its throughput column is images_per_s

    def metrics(self) -> tuple[Metric, ...]:
        """What fit() measures besides the loss: accuracy."""
        return (Accuracy(),)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalization.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalization.std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to float, scaled to [0, 1] and standardized per channel, as training sees them."""
        return self.normalization.to_float(x)

    # fmt: off
    def loader(self, split: str = "train", *, batch_size: int = 128, shuffle: bool | None = None,
               augment: bool = False, device: str | torch.device = "auto", seed: int = 0,
               drop_last: bool = False, rank: int = 0, world_size: int = 1) -> DeviceLoader:
        # fmt: on
        """A :class:`DeviceLoader` over one split. Training batches are shuffled unless told otherwise;
        ``augment=True`` adds random crops (and horizontal flips for CIFAR-10, where mirror images
        are still the same class; a mirrored digit is not). ``rank`` and ``world_size`` give each
        data-parallel rank its share of every batch (see :class:`DeviceLoader`)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected one of train, val, test")
        padding = max(1, self.in_shape[-1] // 8) if augment else 0
        return DeviceLoader(
            getattr(self, split),
            self.normalization,
            batch_size=batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            drop_last=drop_last,
            crop_padding=padding,
            flip=augment and self.name == "cifar10",
            device=device,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def __repr__(self) -> str:
        c, h, w = self.in_shape
        return (
            f"ImageDataset({self.name!r}: {c}x{h}x{w}, {self.num_classes} classes, "
            f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})"
        )


def load_dataset(
    name: str = "digits",
    *,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
) -> ImageDataset:
    """Load ``digits``, ``mnist``, ``fashion-mnist`` or ``cifar10`` as an :class:`ImageDataset`.

    The validation split is a seeded random ``val_fraction`` of the official training
    set (digits has no official test set, so a fifth of it is held out as test first).
    ``root`` defaults to :func:`cache_dir`; without network the error says which files
    to put where.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string (one of {', '.join(DATASETS)}), got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)

    if key == "digits":
        x, y, classes = _digits()
        test_idx, rest = _split_indices(len(y), 0.2, gen)
        train_all, test = Split(x[rest], y[rest]), Split(x[test_idx], y[test_idx])
    else:
        root = Path(root).expanduser() if root is not None else cache_dir()
        (xt, yt), (xs, ys), classes = _torchvision(key, root, download)
        train_all, test = Split(xt, yt), Split(xs, ys)

    val_idx, train_idx = _split_indices(len(train_all), val_fraction, gen)
    train = Split(train_all.x[train_idx], train_all.y[train_idx])
    val = Split(train_all.x[val_idx], train_all.y[val_idx])
    return ImageDataset(key, train, val, test, tuple(classes), Normalization.of(train.x))


def _split_indices(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random ``fraction`` of ``range(n)`` and the rest, each sorted."""
    perm = torch.randperm(n, generator=gen)
    k = round(n * fraction)
    return perm[:k].sort().values, perm[k:].sort().values


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16: rescale to 0..255 so every dataset is uint8 in the same range.
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    return torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64)), [str(c) for c in bunch.target_names]


def _torchvision(key: str, root: Path, download: bool):
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[key]
    splits = [_open_torchvision(cls, root, train, download) for train in (True, False)]
    out = []
    for ds in splits:
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]  # CIFAR is stored N x H x W x C
        out.append((x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)))
    classes = list(splits[0].classes)
    if key == "mnist":
        classes = [c.split(" - ")[0] for c in classes]  # "3 - three" -> "3"
    return out[0], out[1], classes


def _open_torchvision(cls, root: Path, train: bool, download: bool):
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:
        if not download:
            raise DatasetUnavailableError(_where_to_put(cls, root, "download=False")) from None
    try:
        return cls(root, train=train, download=True)
    except Exception as err:  # offline: URLError, OSError or RuntimeError, depending on the dataset
        reason = f"download failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
        raise DatasetUnavailableError(_where_to_put(cls, root, reason)) from None


def _where_to_put(cls, root: Path, reason: str) -> str:
    name = cls.__name__
    if hasattr(cls, "resources"):  # MNIST family: four idx files, gzipped
        folder = root / name / "raw"
        files = ", ".join(f for f, _ in cls.resources)
        source = cls.mirrors[0]
        what = (
            f"put {files} (from {source}) in {folder}/ — gunzipped, or gzipped and then call "
            "load_dataset again with download=True to unpack them"
        )
    else:  # CIFAR-10: one tarball
        what = (
            f"put {cls.filename} (from {cls.url}) in {root}/ and call load_dataset with download=True, "
            f"or unpack it so that {root / cls.base_folder}/ holds data_batch_1..5, test_batch and batches.meta"
        )
    return (
        f"{name} is not on this machine ({reason}). To use it offline, {what}. Set MAASKIT_DATA to use another folder."
    )


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad a batch by ``padding`` zeros on each side and cut each image back to size at a random offset."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # n x 1 x h x 1
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # n x 1 x 1 x w
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class DeviceLoader:
    """Batches of one split, shuffled, augmented and normalized on the device.

    The whole split is copied to the device once as uint8 (MNIST is 47 MB), so an epoch
    moves no data between host and device and launches a handful of kernels per batch —
    the part of a training step a ``DataLoader`` with ``num_workers=0`` spends most time in.
    The shuffle comes from a generator on the device, seeded, so an epoch sequence repeats.

    With ``world_size`` ranks (data-parallel training), every rank draws the same permutation
    and takes its own ``batch_size`` slice of each global batch of ``batch_size * world_size``:
    the ranks' batches together are exactly one process's batch at ``batch_size * world_size``.
    A last global batch too small to give every rank a full share is left out, so that all
    ranks take the same number of equal steps.
    """

    def __init__(
        self,
        split: Split,
        normalization: Normalization,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        device: str | torch.device = "auto",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.rank, self.world_size = rank, world_size
        self.device = pick_device(device)
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip, self.dtype = crop_padding, flip, dtype
        self._scale, self._shift = normalization.scale_shift(self.device, dtype)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n, step = len(self.y), self.batch_size * self.world_size
        return n // step if self.drop_last or self.world_size > 1 else math.ceil(n / step)

    @property
    def num_examples(self) -> int:
        """The examples this rank sees in an epoch (all of them, in one process)."""
        return len(self.y) if self.world_size == 1 else len(self) * self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = (
            torch.randperm(n, device=self.device, generator=self.generator)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        step = self.batch_size * self.world_size
        for i in range(len(self)):
            start = i * step + self.rank * self.batch_size
            idx = order[start : start + self.batch_size]
            xb = self.x[idx]
            if self.crop_padding:
                xb = random_crop(xb, self.crop_padding, self.generator)
            if self.flip:
                xb = random_flip(xb, self.generator)
            yield torch.addcmul(self._shift, xb.to(self.dtype), self._scale), self.y[idx]
