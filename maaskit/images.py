"""Image files as the uint8 ``C x H x W`` arrays that models and endpoints take."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["read_image"]


def read_image(
    source: str | Path | bytes, *, channels: int | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """An image file (PNG, JPEG, …, by path or as bytes) as uint8 ``C x H x W``; a ``.npy`` file as it is.

    ``channels`` (1 or 3) converts to grey or RGB, else grey images stay grey and the rest become
    RGB; ``size=(height, width)`` resizes, e.g. to a model's input.
    """
    if isinstance(source, (str, Path)) and str(source).endswith(".npy"):
        return np.load(source, allow_pickle=False)
    from PIL import Image

    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        grey = channels == 1 or (channels is None and im.mode in ("L", "LA", "P", "1"))
        im = im.convert("L" if grey else "RGB")
        if size is not None:
            im = im.resize((size[1], size[0]))
        array = np.asarray(im, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
