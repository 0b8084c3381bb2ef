"""Every notebook's "Try it" exercises: each checker passes its reference solution, answers the
notebook's unsolved stub with the task, and answers a wrong attempt with a hint, never a traceback."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from maaskit.exercises import EXERCISES, check

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CALL = re.compile(r'check\("([\w.]+)", (\w+)\)')


def exercise_cells() -> dict[str, tuple[Path, str, str]]:
    """Each exercise's notebook, the code of its cell, and the name of the function it checks."""
    found: dict[str, tuple[Path, str, str]] = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if "exercise" in cell["metadata"].get("tags", []):
                source = "".join(cell["source"])
                (name, function), *more = CALL.findall(source)
                assert not more and name not in found, f"{path.name}: one exercise per cell, each once"
                found[name] = (path, source, function)
    return found


CELLS = exercise_cells()


def solution(name: str):
    path = next((NOTEBOOKS / "solutions").glob(f"{name[:2]}_*.py"))
    spec = importlib.util.spec_from_file_location(f"solution_{name[:2]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name[3:])


def test_every_exercise_is_in_its_notebook_and_every_notebook_has_two_or_more():
    assert set(CELLS) == set(EXERCISES)
    assert all(path.name.startswith(name[:2]) for name, (path, _, _) in CELLS.items())
    per_notebook = {p.name: sum(path == p for path, _, _ in CELLS.values()) for p in NOTEBOOKS.glob("*.ipynb")}
    assert min(per_notebook.values()) >= 2, per_notebook


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_solution_passes_and_the_notebooks_stub_gets_the_task(name):
    _, source, function = CELLS[name]
    namespace: dict = {"check": check}  # a later cell relies on the first one's import
    exec(compile(source, f"<{name} cell>", "exec"), namespace)  # the cell as a learner first runs it
    unsolved = check(name, namespace[function])
    assert not unsolved and unsolved.message == "not written yet. " + EXERCISES[name].task
    assert "not yet" in unsolved._repr_html_()
    solved = check(name, solution(name))
    assert solved, solved.message
    assert "✓ correct" in solved._repr_html_()


def _returns_zero(*args, **kwargs):
    return 0


def _returns_input(first, *args, **kwargs):
    return first


@pytest.mark.parametrize("name", sorted(EXERCISES))
@pytest.mark.parametrize("attempt", [_returns_zero, _returns_input])
def test_a_wrong_attempt_gets_a_short_answer_not_a_traceback(name, attempt):
    result = check(name, attempt)
    assert not result and result.message and "Traceback" not in result.message and "\n" not in result.message


def test_a_failing_attempt_is_told_where_it_failed_and_an_unknown_name_lists_the_exercises():
    def softmax_rows(z):
        return z / z.sum(dim=1, keepdim=True)

    result = check("01.softmax_rows", softmax_rows)
    assert not result and result.message.startswith("softmax_rows(z) is off by up to")
    assert "Hint: subtract" not in result.message  # the first case already fails: its own hint comes first

    def broken(z):
        return z.softmax(dim=5)

    result = check("01.softmax_rows", broken)
    assert result.message.startswith("your code raised IndexError") and "in broken, line" in result.message
    with pytest.raises(KeyError, match="01.softmax_rows"):
        check("01.softmax", softmax_rows)
