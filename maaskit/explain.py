"""Attributions: how much each pixel pushed the model towards a class, with Captum.

``explain(model, images, target, method)`` returns one attribution per pixel, with the shape of
the images. The methods, cheapest first:

- ``saliency``: the gradient of the class score with respect to the pixels (its absolute value);
- ``integrated_gradients``: gradients averaged along the straight path from a baseline (by
  default 0 after normalization: the average pixel, a mean grey, not black) to the image, times
  the difference; they add up to f(image) - f(baseline) (completeness: :func:`completeness_gap`
  measures how nearly, and it shrinks with ``steps``);
- ``occlusion``: how much the score drops when a ``window`` x ``window`` patch is blanked;
- ``kernel_shap`` and ``lime``: a linear model fitted to the scores of ``samples`` random
  patch-blanked copies (the model-agnostic methods the seeds name; SHAP's own DeepExplainer
  fails its additivity check on small CNNs, so Captum's versions are used).

Images are the model's normalized float inputs; the baseline is 0 in that space unless given.
Random methods take a ``seed``, so the same call gives the same attributions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

__all__ = ["LIMITS", "MAX_MAGNITUDE", "METHODS", "completeness_gap", "explain", "explained_classes", "rank_correlation"]

# the methods, written once: the type a request's field has (serving/schemas.py) and the tuple to loop over
Method = Literal["saliency", "integrated_gradients", "occlusion", "kernel_shap", "lime"]
METHODS: tuple[str, ...] = get_args(Method)
# the most work a served explanation may ask for (the server answers 400 beyond)
LIMITS = {"steps": 256, "samples": 1024, "images": 16}  # what one served explanation may ask for
# the largest input value a served classifier takes (to answer or explain): normalized pixels lie within
# about ±10, and values near FP32's limit make a model's outputs overflow, and LIME's and kernel SHAP's fits
MAX_MAGNITUDE = 1e4


def explained_classes(
    model: nn.Module, images: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None
) -> torch.Tensor:
    """The class explained for each image: ``target`` (one, or one per image), or the predicted one."""
    if target is None:  # the predicted class of each image
        with torch.no_grad():
            return model(images).argmax(1)
    t = torch.as_tensor(target, device=images.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(len(images))
    if t.numel() != len(images):
        raise ValueError(f"target must be one class or one per image ({len(images)}), got {t.numel()}")
    return t


def _patches(shape: Sequence[int], window: int, device: torch.device) -> torch.Tensor:
    """A feature mask giving each ``window`` x ``window`` patch (all channels) one id."""
    _, h, w = shape
    rows = torch.arange(h, device=device) // window
    cols = torch.arange(w, device=device) // window
    ids = rows[:, None] * ((w + window - 1) // window) + cols[None, :]
    return ids.expand(shape[0], h, w)[None]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    method: str = "integrated_gradients",
    *,
    baseline: torch.Tensor | float = 0.0,
    steps: int = 50,
    window: int = 2,
    stride: int = 1,
    samples: int = 200,
    seed: int = 0,
) -> torch.Tensor:
    """Attributions of ``images`` (N x C x H x W, normalized) for class ``target`` (one, one per image,
    or None for the predicted class), with the images' shape, on the images' device."""
    from captum import attr

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError("images must be a float tensor N x C x H x W (the model's normalized inputs)")
    _check_counts(steps=steps, window=window, stride=stride, samples=samples)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = images.detach().to(device)
    targets = explained_classes(model, x, target)
    base = baseline.to(device) if isinstance(baseline, torch.Tensor) else torch.full_like(x, float(baseline))
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            # Captum asks for inputs that require gradients; here that is expected, not a mistake
            warnings.filterwarnings("ignore", message=".*required_grads.*|.*requires_grad.*")
            torch.manual_seed(seed)
            if method == "saliency":
                out = attr.Saliency(model).attribute(x, target=targets, abs=True)
            elif method == "integrated_gradients":
                out = attr.IntegratedGradients(model).attribute(x, baselines=base, target=targets, n_steps=steps)
            elif method == "occlusion":
                c = x.shape[1]
                shapes = {"sliding_window_shapes": (c, window, window), "strides": (c, stride, stride)}
                out = attr.Occlusion(model).attribute(x, target=targets, baselines=base, **shapes)
            elif method == "kernel_shap" and window >= max(x.shape[2:]):
                out = _one_player_shapley(model, x, base, targets)
            else:
                explainer = attr.KernelShap(model) if method == "kernel_shap" else attr.Lime(model)
                mask = _patches(x.shape[1:], window, device)
                one = (
                    lambda i: explainer.attribute(  # one image at a time: each gets its own fitted model
                        x[i : i + 1],
                        baselines=base[i : i + 1],
                        target=int(targets[i]),
                        feature_mask=mask,
                        n_samples=samples,
                    )
                )
                out = torch.cat([one(i) for i in range(len(x))])
    finally:
        model.train(was_training)
    return out.detach().to(images.device)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _one_player_shapley(model: nn.Module, x: torch.Tensor, base: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Kernel SHAP with one patch (the window covers the image): a game of one player, whose Shapley
    value is the whole change, f(image) - f(baseline). Captum's sampler has no weights to draw then."""
    with torch.no_grad():
        rows = torch.arange(len(x), device=x.device)
        change = model(x)[rows, targets] - model(base)[rows, targets]
    return change[:, None, None, None].expand_as(x).clone()


def completeness_gap(
    model: nn.Module,
    images: torch.Tensor,
    attributions: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    baseline: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per image, |sum of attributions - (f(image) - f(baseline))| for the target class: zero for
    exact integrated gradients (the completeness axiom)."""
    device = next(model.parameters()).device
    x = images.to(device)
    base = baseline.to(device) if isinstance(baseline, torch.Tensor) else torch.full_like(x, float(baseline))
    t = explained_classes(model, x, target)
    with torch.no_grad():
        rows = torch.arange(len(x), device=device)
        change = model(x)[rows, t] - model(base)[rows, t]
    return (attributions.to(device).flatten(1).sum(1) - change).abs().cpu()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two attribution maps (of their absolute values, as Adebayo
    et al. compare them): near 1, the same pixels matter; near 0, unrelated."""
    ra = a.abs().flatten().argsort().argsort().double()
    rb = b.abs().flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
