"""The default training recipe per dataset, written once, and ``load_or_train``.

The CLI's defaults, the TrainingDashboard's, notebooks 04-06 and the benchmarks all read
:func:`default_recipe`, so "LeNet on digits" means the same run everywhere. Importing this
module needs no PyTorch (``maaskit --version`` builds the CLI from it); training imports it on use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .data import ImageDataset

__all__ = ["RECIPES", "LMRecipe", "Recipe", "default_recipe", "load_or_train"]


@dataclass(frozen=True)
class Recipe:
    """What :func:`maaskit.fit` is called with, and which model it trains."""

    model: str = "lenet"
    optimizer: str = "adamw"
    lr: float = 1e-2  # the peak learning rate of the one-cycle schedule
    batch_size: int = 32
    epochs: int = 30
    scheduler: str | None = "onecycle"
    augment: bool = True  # random crops (and flips for CIFAR-10)

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`maaskit.fit` (everything but ``model``)."""
        kwargs = asdict(self)
        kwargs.pop("model")
        return kwargs

    def but(self, **changes: Any) -> Recipe:
        """A copy with some fields changed: ``default_recipe("digits").but(epochs=10)``."""
        return replace(self, **changes)


# LeNet-5 with AdamW under a one-cycle schedule and random crops: 98% on digits in about 8 s on
# a 2-core CPU (benchmarks/train_speed.py, row d). Only digits has been tuned; the other datasets
# start from the same recipe until one is measured for them.
RECIPES: dict[str, Recipe] = {"digits": Recipe()}


def default_recipe(dataset: str = "digits") -> Recipe:
    """The recipe maaskit trains ``dataset`` with unless told otherwise."""
    return RECIPES.get(dataset, RECIPES["digits"])


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
    from .device import seed_everything
    from .evaluation import evaluate
    from .models import build_model
    from .serving.artifact import MANIFEST, load_artifact, save_artifact
    from .train import fit

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


@dataclass(frozen=True)
class LMRecipe:
    """Sizes and settings of a small GPT and its training (``maaskit lm train``, notebook 07).
    The defaults (about 0.14M parameters) train on a 2-core CPU in about a minute."""

    vocab_size: int = 512
    context: int = 128
    layers: int = 2
    heads: int = 4
    width: int = 64
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    scheduler: str | None = "cosine"

    def but(self, **changes: Any) -> LMRecipe:
        """This recipe with ``changes``."""
        return replace(self, **changes)
