"""Where the model is unsure, in two dimensions: principal components (scikit-learn's PCA) of the
pixels and of the network's penultimate-layer features, the space its last layer separates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["features", "pca"]


def features(model: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """What the model's last ``nn.Linear`` receives for each image (N x F): its penultimate layer."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to read the features before")
    seen: list[torch.Tensor] = []
    hook = last[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1).cpu()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size].to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(seen)


def pca(x: torch.Tensor | np.ndarray, components: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N x ...) on its first ``components`` principal axes: (N x components coordinates, the
    fraction of the variance each axis explains)."""
    from sklearn.decomposition import PCA

    flat = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(len(x), -1)
    fitted = PCA(n_components=min(components, *flat.shape), svd_solver="full").fit(flat)
    return fitted.transform(flat), fitted.explained_variance_ratio_
