"""The machinery: a registry of exercises, ``check``, and helpers that turn a wrong answer into a hint."""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EXERCISES", "Exercise", "Hint", "Result", "check", "exercise", "same"]


class Hint(AssertionError):
    """A wrong answer, with what to look at."""


@dataclass(frozen=True)
class Exercise:
    name: str
    task: str  # what to write, and what a right answer gives
    test: Callable[[Any], None]  # raises Hint when the answer is wrong


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, task: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register ``test`` as the checker of exercise ``name``."""

    def register(test: Callable[[Any], None]) -> Callable[[Any], None]:
        EXERCISES[name] = Exercise(name, task, test)
        return test

    return register


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.message}"

    def _repr_html_(self) -> str:
        colour, mark = ("#1a7f37", "✓ correct") if self.ok else ("#9a6700", "✗ not yet")
        text = "" if self.ok else " — " + html.escape(self.message)
        return f"<div style='color:{colour}'><b>{mark}</b> ({html.escape(self.name)}){text}</div>"


def _where(err: BaseException) -> str:
    """The learner's line that raised: the last frame outside this package."""
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if "maaskit/exercises" not in f.filename.replace("\\", "/")
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (in {frame.name}, line {frame.lineno}: {(frame.line or '').strip()})"


def check(name: str, answer: Any) -> Result:
    """Check ``answer`` (usually your function) for exercise ``name``: correct, or a hint."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise named {name!r}; there are {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[name]
    try:
        ex.test(answer)
    except NotImplementedError:
        return Result(name, False, "not written yet. " + ex.task)
    except Hint as hint:
        return Result(name, False, str(hint))
    except Exception as err:  # the learner's code failed: say where, briefly
        return Result(name, False, f"your code raised {type(err).__name__}: {err}{_where(err)}")
    return Result(name, True, "correct")


def same(got: Any, want: Any, what: str, *, atol: float = 1e-5, hint: str = "") -> None:
    """Raise a :class:`Hint` unless ``got`` equals ``want`` (tensors or arrays: same shape, close values)."""
    import torch

    hint = f" Hint: {hint}" if hint else ""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise Hint(f"{what} should be a tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape):
            raise Hint(f"{what} should have shape {tuple(want.shape)}, got {tuple(got.shape)}")
        got_f, want_f = got.detach().double(), want.detach().double()
        if not torch.isfinite(got_f).equal(torch.isfinite(want_f)):
            raise Hint(f"{what} has nan or inf where it should not.{hint}")
        finite = torch.isfinite(want_f)
        gap = float((got_f[finite] - want_f[finite]).abs().max()) if bool(finite.any()) else 0.0
        if gap > atol or not got_f[~finite].equal(want_f[~finite]):
            raise Hint(f"{what} is off by up to {gap:.3g}.{hint}")
        return
    if got != want:
        raise Hint(f"{what}: expected {want!r}, got {got!r}.{hint}")
