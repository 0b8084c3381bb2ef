"""Names imported on first use (PEP 562), written once for the packages that export lazily.

``import maaskit`` stays quick and the client never pulls in PyTorch: a package lists its public
names in one place, its ``if TYPE_CHECKING:`` block (``from .module import name``), which type
checkers and editors read; :func:`lazy_exports` reads the same block, and imports a name's module
the first time the name is used.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _type_checking_imports(init_file: str) -> dict[str, str]:
    """``{name: module}`` for each ``from .module import name`` under ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in ast.parse(Path(init_file).read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.level == 1 and statement.module:
                    found.update({alias.asname or alias.name: statement.module for alias in statement.names})
    return found


def lazy_exports(
    package: str, also: Sequence[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package`` (``also``: names it defines itself)."""
    namespace = importlib.import_module(package).__dict__
    exports = _type_checking_imports(namespace["__file__"])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__, [*also, *sorted(exports)]
