"""The notebooks' "Try it" exercises and their checkers.

Each exercise asks for one small function. ``check(name, answer)`` runs the function on inputs of
its own, compares with PyTorch or with maaskit, and answers with a :class:`Result`: *correct*, or a
hint that says what to look at — never a traceback. Reference solutions live in
``notebooks/solutions/`` (delete that folder to hand the notebooks out without them); the test
suite runs every checker against its solution and against the notebook's unsolved stub.
"""

from __future__ import annotations

from . import basics, language, serving  # noqa: F401  (each registers its exercises)
from .checking import EXERCISES, Exercise, Hint, Result, check

__all__ = ["EXERCISES", "Exercise", "Hint", "Result", "check"]
