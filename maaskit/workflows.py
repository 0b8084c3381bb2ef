"""What several notebooks and the CLI do with the core: one level above training.

``load_or_train`` picks up a saved model or makes the same one, so notebooks 05, 06 and 08 run on
their own as well as after notebook 04.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .artifact import MANIFEST, load_artifact, save_artifact
from .data import ImageDataset
from .device import seed_everything
from .evaluation import evaluate
from .models import build_model
from .recipes import Recipe, default_recipe
from .train import fit

__all__ = ["load_or_train"]


def load_or_train(
    path: str | Path,
    data: ImageDataset,
    recipe: Recipe | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    verbose: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """The artifact at ``path`` if it exists; otherwise train ``recipe`` on ``data``, save it there, and
    return it. Returns ``(model, manifest)`` as :func:`maaskit.load_artifact` does.

    Notebooks 05 and 06 use it to pick up notebook 04's model, or make the same one when 04 has
    not run here.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        return load_artifact(path)
    recipe = recipe or default_recipe(data.name)
    if verbose:
        print(
            f"{path} not found: training {recipe.model} on {data.name} for {recipe.epochs} epochs "
            "(notebook 04 saves the same model there)",
            flush=True,
        )
    seed_everything(seed)
    model = build_model(recipe.model, data.in_shape, data.num_classes)
    fit(model, data, **recipe.fit_kwargs(), device=device, seed=seed)
    accuracy = evaluate(model, data).accuracy
    save_artifact(model, path, data, metrics={"test_accuracy": accuracy})
    return load_artifact(path)
