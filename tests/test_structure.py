"""The package's shape: a flat, lazy public API, no module importing the package root, and the
light entry points (the client, ``maaskit --version``) importing no PyTorch."""

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import maaskit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maaskit"


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return set(__import__("json").loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import maaskit",
        "import maaskit.serving.client",
        "import maaskit.serving.protocol",
        "from maaskit import Client",
        "import contextlib, io, maaskit.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    maaskit.cli.main(['--version'])",
        "import contextlib, io, maaskit.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    maaskit.cli.main(['--help'])",
    ],
)
def test_light_entry_points_import_no_torch(code):
    assert "torch" not in loaded_after(code)


def test_the_flat_api_is_lazy_and_complete():
    expected = {
        "fit",
        "evaluate",
        "load_dataset",
        "build_model",
        "save_artifact",
        "load_artifact",
        "serve",
        "Client",
        "seed_everything",
        "load_or_train",
        "default_recipe",
        "Normalization",
    }
    assert expected <= set(maaskit.__all__)
    for name in maaskit.__all__:
        assert getattr(maaskit, name) is not None, name
    assert "read_metrics" not in maaskit.__all__  # a test helper, kept in maaskit.report
    from maaskit.evaluation import evaluate
    from maaskit.train import fit

    assert maaskit.fit is fit and maaskit.evaluate is evaluate
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        maaskit.fitt  # noqa: B018


def test_serve_shows_its_real_signature():
    params = inspect.signature(maaskit.serve).parameters
    assert {"data", "host", "port", "token", "max_batch_size", "max_delay_ms"} <= set(params)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())


def _imports_of_root(path: Path, text: str | None = None) -> list[str]:
    """Each place where a module under maaskit/ imports a name from the package root itself."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]
    found = []
    for node in ast.walk(ast.parse(text if text is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            target = ".".join(base) + ("." + node.module if node.module and base else node.module or "")
            if target == "maaskit":
                for alias in node.names:  # `from .. import plots` names a submodule: fine
                    is_module = (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                    if not is_module:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from maaskit")
        elif isinstance(node, ast.Import) and any(a.name == "maaskit" for a in node.names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports maaskit")
    return found


def test_no_module_imports_the_package_root():
    offenders = [hit for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" for hit in _imports_of_root(path)]
    assert offenders == []
    # the check itself sees the pattern it forbids
    probe = "from .. import __version__\nfrom .. import plots\nimport maaskit\n"
    assert len(_imports_of_root(PACKAGE / "serving" / "probe.py", probe)) == 2


def test_the_package_is_typed_and_ships_its_cpp_sources():
    from maaskit.lm.runtime.backend import kernels

    assert (PACKAGE / "py.typed").is_file()
    # the C++ kernels are built from their sources on the machine that serves (lm/runtime/backend/kernels.py),
    # every one of which the package ships and the build's key reads
    backend = PACKAGE / "lm" / "runtime" / "backend"
    assert set(backend.glob("*.cpp")) | set(backend.glob("*.h")) == {*kernels.SOURCES, *kernels.HEADERS}
    shipped = 'maaskit = ["py.typed", "lm/runtime/backend/*.cpp", "lm/runtime/backend/*.h"]'
    assert shipped in (ROOT / "pyproject.toml").read_text()


def test_every_public_parameter_is_typed():
    """Module-level functions and the methods of module-level classes whose names are public (and
    ``__init__``): each parameter but self has an annotation, so editors and mypy can help."""
    untyped = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [(None, n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")):
            functions += [(cls.name, n) for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for owner, fn in functions:
            if fn.name.startswith("_") and fn.name != "__init__":
                continue
            a = fn.args
            params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
            untyped += [
                f"{path.relative_to(ROOT)}:{fn.lineno} {owner + '.' if owner else ''}{fn.name}({p.arg})"
                for p in params
                if p.arg not in ("self", "cls") and p.annotation is None
            ]
    assert untyped == []


# The package's layers, lowest first. A module imports only from its own layer or below, lazy
# imports inside functions and imports by name included (the project's design notes, "Package modules").
LAYERS = {
    "core": {
        "_lazy", "_version", "device", "normalization", "images", "scoring", "data", "models", "artifact",
        "run", "callbacks", "checkpoint", "train", "evaluation", "recipes", "diagnostics", "explain", "projection",
        "surfaces", "baseline", "distributed", "report",
    },
    "workflows": {"workflows"},
    "lm": {"lm"},
    "serving": {"serving"},
    "faces": {"widgets", "plots", "cli", "doctor", "exercises", "__init__", "__main__"},
}  # fmt: skip
RANK = {top: rank for rank, tops in enumerate(LAYERS.values()) for top in tops}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _maaskit_imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of a maaskit module in ``path``, anywhere in it."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(text if text is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if not node.module:  # `from .. import plots`: each name is a module
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif (name := _imported_by_name(node)) is not None:  # import_module("maaskit.lm.formats.hf") is an import too
            if name.startswith("."):  # relative to the package, as import_module(".x", __package__) reads it
                level = len(name) - len(name.lstrip("."))
                name = ".".join(package[: len(package) - level + 1] + [name.lstrip(".")])
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name == "maaskit" or name.startswith("maaskit.")]


def _import_call(node: ast.AST) -> ast.Call | None:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    if not isinstance(node, ast.Call):
        return None
    fn = node.func
    called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    return node if called in ("import_module", "__import__") else None


def _imported_by_name(node: ast.AST) -> str | None:
    """The module a call imports by a name written in the code; None for other calls."""
    call = _import_call(node)
    if call is None or not call.args or not isinstance(call.args[0], ast.Constant):
        return None
    return call.args[0].value if isinstance(call.args[0].value, str) else None


def _layer(module: str) -> int:
    """The rank of a module's layer: by its first name under maaskit (``maaskit.lm.runtime.engine`` -> lm)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in RANK:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_structure.py")
    return RANK[top]


def _upward_imports(path: Path, text: str | None = None) -> list[str]:
    me = _module_name(path)
    return [
        f"{path.relative_to(ROOT)}:{line} imports {target} (a higher layer)"
        for line, target in _maaskit_imports(path, text)
        if _layer(target) > _layer(me)
    ]


def test_no_module_imports_from_a_layer_above_its_own():
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _upward_imports(path)]
    assert offenders == []
    # the check itself sees the pattern it forbids: eager, relative, and lazy inside a function
    probe = "from ..serving.artifact import load_artifact\nfrom .. import widgets\ndef f():\n    import maaskit.cli\n"
    assert len(_upward_imports(PACKAGE / "lm" / "probe.py", probe)) == 3
    assert _upward_imports(PACKAGE / "serving" / "probe.py", "from ..lm.runtime.engine import Engine\n") == []


# lm's subpackages and which of the others each may import: models at the bottom, runtime and formats
# side by side on it (neither imports the other), training over all three. lm/__init__.py, the facade,
# names them all; no subpackage imports it.
LM_PARTS = {
    "models": set(),
    "runtime": {"models"},
    "formats": {"models"},
    "training": {"models", "runtime", "formats"},
}


def _lm_part(module: str) -> str | None:
    """``maaskit.lm.runtime.engine`` -> runtime; ``maaskit.lm`` itself -> "__init__"; outside lm, None."""
    parts = module.split(".")
    return None if parts[:2] != ["maaskit", "lm"] else parts[2] if len(parts) > 2 else "__init__"


def _lm_crossings(path: Path, text: str | None = None) -> list[str]:
    me = _lm_part(_module_name(path))
    if me in (None, "__init__"):
        return []
    return [
        f"{path.relative_to(ROOT)}:{line} imports {target} ({me} may import {sorted(LM_PARTS[me]) or 'none'})"
        for line, target in _maaskit_imports(path, text)
        if (part := _lm_part(target)) not in (None, me) and part not in LM_PARTS[me]
    ]


def test_lm_subpackages_import_only_those_below_them():
    modules = [_module_name(path) for path in sorted((PACKAGE / "lm").rglob("*.py"))]
    assert [m for m in modules if _lm_part(m) not in {*LM_PARTS, "__init__"}] == []  # every module in one
    assert [hit for path in sorted((PACKAGE / "lm").rglob("*.py")) for hit in _lm_crossings(path)] == []
    # the check sees an upward import, lm's facade, a lazy one, and siblings; it lets a downward one by
    probe = "from ..runtime.engine import Engine\nfrom .. import GPT\ndef f():\n    import maaskit.lm.training.sft\n"
    assert len(_lm_crossings(PACKAGE / "lm" / "models" / "probe.py", probe)) == 3
    assert len(_lm_crossings(PACKAGE / "lm" / "runtime" / "probe.py", "from ..formats.chat import ChatFormat\n")) == 1
    assert _lm_crossings(PACKAGE / "lm" / "training" / "probe.py", "from ..runtime.engine import Engine\n") == []


def test_imports_by_name_are_seen_as_imports():
    # a module loaded by its name is an import like any other: layers and circles see it
    probe = 'import importlib\ndef f():\n    importlib.import_module("maaskit.lm.formats.hf")\n'
    probe += '    __import__("maaskit.cli")\n'
    assert len(_upward_imports(PACKAGE / "artifact.py", probe)) == 2
    relative = 'from importlib import import_module\nimport_module(".widgets", "maaskit")\n'
    assert _maaskit_imports(PACKAGE / "probe.py", relative) == [(2, "maaskit.widgets")]


# The only imports whose module is computed while running, each with why it cannot be written out.
IMPORTS_BY_COMPUTED_NAME = {
    "maaskit/_lazy.py": "the flat API: a package's names, imported when first used",
    "maaskit/cli.py": "argparse's choices read from a lower layer's registry when help is printed",
    "maaskit/distributed.py": "each rank runs the 'module:function' its caller named",
}


def test_modules_imported_by_a_computed_name_are_few_and_say_why():
    found = {
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if _import_call(node) is not None and _imported_by_name(node) is None
    }
    assert found == set(IMPORTS_BY_COMPUTED_NAME), "a new import by a computed name: write it out, or say why here"


def _import_graph(texts: dict[Path, str] | None = None) -> dict[str, set[str]]:
    """Each module under maaskit/ and the maaskit modules it imports (a package for ``from pkg import name``)."""
    sources = texts if texts is not None else {path: path.read_text() for path in PACKAGE.rglob("*.py")}
    modules = {_module_name(path) for path in sources}

    def module_of(name: str) -> str:  # maaskit.lm.formats.hf.load_hf -> maaskit.lm.formats.hf
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    return {
        _module_name(path): {module_of(t) for _, t in _maaskit_imports(path, text)} - {_module_name(path)}
        for path, text in sources.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a circle (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_modules_import_each_other_round_a_circle():
    assert _circles(_import_graph()) == []
    # the check itself sees a circle, lazy imports and imports by name included
    probe = {
        PACKAGE / "lm" / "a.py": "def f():\n    from .b import g\n",
        PACKAGE / "lm" / "b.py": "import importlib\nimportlib.import_module('maaskit.lm.c')\n",
        PACKAGE / "lm" / "c.py": "from maaskit.lm.a import f\n",
        PACKAGE / "lm" / "d.py": "from .a import f\n",
    }
    assert _circles(_import_graph(probe)) == [["maaskit.lm.a", "maaskit.lm.b", "maaskit.lm.c"]]


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _layer(_module_name(path))


def _long_functions_without_a_reason(path: Path, text: str | None = None, limit: int = 60) -> list[str]:
    source = text if text is not None else path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first > 1 else ""
            if not above.startswith("# long:"):
                found.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                )
    return found


def test_no_function_is_over_60_lines_without_a_reason_beside_it():
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _long_functions_without_a_reason(path)]
    assert offenders == [], "split them, or say why not in a '# long: ...' comment above the def"
    body = "def f():\n" + "    x = 1\n" * 61
    assert len(_long_functions_without_a_reason(PACKAGE / "probe.py", body)) == 1
    assert _long_functions_without_a_reason(PACKAGE / "probe.py", "# long: a table\n" + body) == []


# PyTorch's private names (torch._inductor, torch._dynamo, oneDNN's torch.ops.mkldnn): what a new PyTorch
# may change under us, kept in one package (maaskit/lm/runtime/backend/), which prepares a model for the machine
PRIVATE_TORCH = re.compile(r"\btorch\.(_[A-Za-z]\w*|ops\.mkldnn)")


def _private_torch_uses(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if PRIVATE_TORCH.search(line)]  # fmt: skip


def test_pytorch_internals_are_used_in_the_lm_backend_only():
    backend = PACKAGE / "lm" / "runtime" / "backend"
    outside = [
        use for path in PACKAGE.rglob("*.py") if backend not in path.parents for use in _private_torch_uses(path)
    ]
    assert outside == []
    assert _private_torch_uses(backend / "compiled.py") and _private_torch_uses(backend / "packing.py")  # it sees them
