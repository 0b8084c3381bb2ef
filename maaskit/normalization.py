"""How uint8 pixels become a model's inputs, written once.

Training (the device loader), the tutorial baseline, the inference server and the artifact
manifest all go through :class:`Normalization`, so a served model sees exactly the numbers
it was trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Normalization"]

ArrayT = TypeVar("ArrayT", "torch.Tensor", np.ndarray)


@dataclass(frozen=True)
class Normalization:
    """``input = (pixels * scale - mean) / std`` per channel; ``scale`` maps uint8 to [0, 1].

    The arithmetic is one multiply-add per value, ``pixels * (scale / std) + (-mean / std)``,
    computed in float32 by PyTorch for tensors and NumPy arrays alike.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def of(cls, images: torch.Tensor) -> Normalization:
        """Per-channel mean and std of uint8 ``N x C x H x W`` training images."""
        scaled = images.float().div_(255)
        std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return cls(tuple(scaled.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist()))

    def scale_shift(self, device: Any = None, dtype: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel multiplier and offset as ``1 x C x 1 x 1`` tensors (cached: a per-image
        loop asks for them every time)."""
        return _scale_shift(self, str(device or "cpu"), dtype)

    def _compute_scale_shift(self, device: str, dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        std = torch.tensor(self.std, dtype=torch.float32)
        scale = (1 / (std * (1 / self.scale))).view(1, -1, 1, 1)  # 1 / (255 std), rounded as training always was
        shift = (-torch.tensor(self.mean, dtype=torch.float32) / std).view(1, -1, 1, 1)
        dtype = dtype or torch.float32
        return scale.to(device, dtype), shift.to(device, dtype)

    def to_float(self, pixels: ArrayT) -> ArrayT:
        """uint8 ``N x C x H x W`` (or ``C x H x W``) pixels as normalized float32, same kind of array."""
        import torch

        if isinstance(pixels, np.ndarray):
            return self.to_float(torch.from_numpy(pixels)).numpy()
        if pixels.ndim not in (3, 4) or pixels.shape[-3] != self.channels:
            raise ValueError(f"expected images of shape [N, {self.channels}, H, W], got {list(pixels.shape)}")
        scale, shift = self.scale_shift(pixels.device)
        if pixels.ndim == 3:
            scale, shift = scale[0], shift[0]
        return torch.addcmul(shift, pixels.to(torch.float32), scale)

    def to_uint8(self, inputs: ArrayT) -> ArrayT:
        """The inverse: normalized floats back to uint8 pixels (rounded, clipped), to show them."""
        import torch

        if isinstance(inputs, np.ndarray):
            return self.to_uint8(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()
        scale, shift = self.scale_shift(inputs.device)
        if inputs.ndim == 3:
            scale, shift = scale[0], shift[0]
        return ((inputs.float() - shift) / scale).round_().clamp_(0, 255).to(torch.uint8)

    def as_manifest(self) -> dict[str, Any]:
        """The ``normalization`` entry of an artifact's manifest."""
        return {
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "note": "input = (uint8 pixels * scale - mean) / std, per channel",
        }

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> Normalization:
        if not isinstance(entry, Mapping) or not {"mean", "std"} <= set(entry):
            raise ValueError(f"a normalization entry needs 'mean' and 'std', got {entry!r:.80}")
        return cls(tuple(entry["mean"]), tuple(entry["std"]), float(entry.get("scale", 1 / 255)))

    def __repr__(self) -> str:
        fmt = lambda values: "(" + ", ".join(f"{v:.4f}" for v in values) + ")"  # noqa: E731
        return f"Normalization(mean={fmt(self.mean)}, std={fmt(self.std)})"


@functools.lru_cache(maxsize=64)
def _scale_shift(norm: Normalization, device: str, dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return norm._compute_scale_shift(device, dtype)
