"""Two-dimensional test functions for optimizers, and the path an optimizer takes on one.

A path is run with any optimizer that has ``step()`` and reads ``p.grad`` — the real
``torch.optim`` classes or one written from scratch — on a single 2-element parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PATH_OPTIMIZERS", "SURFACES", "OptimizerPath", "Surface", "make_optimizer", "run_path"]


@dataclass(frozen=True)
class Surface:
    name: str
    formula: str  # LaTeX
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    minimum: tuple[float, float]
    start: tuple[float, float]

    def __call__(self, x, y):
        return self.fn(x, y)

    def contains(self, x: float, y: float, margin: float = 0.5) -> bool:
        """Inside the plotted window, widened by ``margin`` of its size on every side."""
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        return x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my


SURFACES = {
    s.name: s
    for s in [
        Surface(
            "quadratic",
            r"f(x, y) = \tfrac{1}{2}(x^2 + 25\,y^2)",
            lambda x, y: 0.5 * (x**2 + 25 * y**2),
            (-5.0, 5.0),
            (-3.0, 3.0),
            (0.0, 0.0),
            (-4.5, 2.0),
        ),
        Surface(
            "rosenbrock",
            r"f(x, y) = (1 - x)^2 + 100\,(y - x^2)^2",
            lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
            (-2.0, 2.0),
            (-1.0, 3.0),
            (1.0, 1.0),
            (-1.2, 1.0),
        ),
        Surface(
            "beale",
            r"f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
            lambda x, y: (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2,
            (-4.5, 4.5),
            (-4.5, 4.5),
            (3.0, 0.5),
            (-2.0, 2.5),
        ),
    ]
}

# name -> (torch.optim class, which of the shared hyper-parameters it takes); the playground's menu
PATH_OPTIMIZERS = {
    "SGD": (torch.optim.SGD, ()),
    "Momentum": (torch.optim.SGD, ("momentum",)),
    "Nesterov": (torch.optim.SGD, ("momentum", "nesterov")),
    "AdaGrad": (torch.optim.Adagrad, ()),
    "RMSprop": (torch.optim.RMSprop, ()),
    "Adam": (torch.optim.Adam, ("betas",)),
    "AdamW": (torch.optim.AdamW, ("betas",)),
}


def make_optimizer(
    name: str,
    params: list[torch.Tensor],
    *,
    lr: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The real ``torch.optim`` optimizer behind ``name``, with the hyper-parameters it uses."""
    if name not in PATH_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(PATH_OPTIMIZERS)}")
    cls, takes = PATH_OPTIMIZERS[name]
    kwargs: dict[str, Any] = {"lr": lr}
    if "momentum" in takes:
        kwargs["momentum"] = momentum
    if "nesterov" in takes:
        kwargs["nesterov"] = True
    if "betas" in takes:
        kwargs["betas"] = tuple(betas)
    return cls(params, **kwargs)


@dataclass
class OptimizerPath:
    """Where an optimizer went: the points (steps + 1 of them), the loss at each, and whether it diverged."""

    label: str
    points: list[tuple[float, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diverged_at: int | None = None  # the step whose result was not finite or left the window

    @property
    def status(self) -> str:
        return f"diverged at step {self.diverged_at}" if self.diverged_at is not None else "ok"


def run_path(
    surface: Surface,
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    steps: int,
    *,
    start: tuple[float, float] | None = None,
    label: str = "",
    margin: float = 0.5,
) -> OptimizerPath:
    """Run ``steps`` optimizer steps from ``start`` and record the path.

    ``make(params)`` returns the optimizer. A step that produces a non-finite loss or leaves
    the surface's window widened by ``margin`` of its size on every side ends the run as
    diverged, so a learning rate that is too large shows up as a short path and a message,
    never as a crash. (Momentum can swing far out and still come back: widen ``margin``
    to tell that from divergence.)
    """
    xy = torch.tensor(start or surface.start, dtype=torch.float64, requires_grad=True)
    optimizer = make([xy])
    path = OptimizerPath(label)
    for step in range(steps + 1):
        loss = surface(xy[0], xy[1])
        x, y, value = xy[0].item(), xy[1].item(), loss.item()
        if not (math.isfinite(value) and surface.contains(x, y, margin)):
            path.diverged_at = step
            break
        path.points.append((x, y))
        path.losses.append(value)
        if step == steps:
            break
        (xy.grad,) = torch.autograd.grad(loss, xy)
        optimizer.step()
    return path
