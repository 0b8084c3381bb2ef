"""The default training recipe per dataset, written once: pure data.

The CLI's defaults, the TrainingDashboard's, notebooks 04-06 and the benchmarks all read
:func:`default_recipe`, so "LeNet on digits" means the same run everywhere. Importing this
module needs no PyTorch (``maaskit --version`` builds the CLI from it). What is done with a recipe
(``load_or_train``) is :mod:`maaskit.workflows`; a language model's recipe is ``maaskit.lm.LMRecipe``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["RECIPES", "Recipe", "default_recipe"]


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


# LeNet-5 with AdamW under a one-cycle schedule and random crops: the fastest to 98% on digits that
# benchmarks/train_speed.py (row d) found. Only digits has been tuned; the other datasets
# start from the same recipe until one is measured for them.
RECIPES: dict[str, Recipe] = {"digits": Recipe()}


def default_recipe(dataset: str = "digits") -> Recipe:
    """The recipe maaskit trains ``dataset`` with unless told otherwise."""
    return RECIPES.get(dataset, RECIPES["digits"])
