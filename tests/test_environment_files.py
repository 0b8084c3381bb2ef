"""pyproject.toml, requirements/pins.txt, environment.yml and binder/ must describe one environment."""

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return norm(re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0])


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def pins():
    out = {}
    for line in (ROOT / "requirements" / "pins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"pins.txt line is not an exact pin: {line!r}"
            out[norm(name)] = version.strip()
    return out


def pip_section(path: Path) -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load(path.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    packages = {}
    for line in pip:
        if line.startswith("-"):
            continue  # pip options (-e ., --extra-index-url)
        name, _, version = line.partition("==")
        packages[norm(name.split("[")[0])] = version
    return packages, conda, pip


def names(reqs):
    return {requirement_name(r) for r in reqs}


def test_pins_cover_every_declared_dependency(project, pins):
    declared = names(project["dependencies"]) | {
        n for extra in project["optional-dependencies"].values() for n in names(extra)
    }
    assert declared <= set(pins), f"not pinned: {sorted(declared - set(pins))}"
    # the environment the tests run in is the pinned one (make test installs with the pins as constraints)
    for name in ("torch", "torchvision", "numpy", "ipywidgets", "fastapi"):
        assert metadata.version(name).split("+")[0] == pins[name].split("+")[0], name


def test_environment_yml_is_pyproject_with_the_pinned_versions(project, pins):
    packages, conda, pip = pip_section(ROOT / "environment.yml")
    expected = names(
        project["dependencies"] + project["optional-dependencies"]["lab"] + project["optional-dependencies"]["dev"]
    )
    assert set(packages) == expected
    assert {n: v for n, v in packages.items()} == {n: pins[n] for n in expected}
    assert "-e ." in pip
    assert any(d.startswith("python=3.") for d in conda)


def test_binder_environment_is_cpu_only_and_pinned(project, pins):
    packages, conda, pip = pip_section(ROOT / "binder" / "environment.yml")
    expected = names(project["dependencies"] + project["optional-dependencies"]["lab"])
    assert set(packages) == expected
    for name, version in packages.items():
        if name in ("torch", "torchvision"):
            assert version == pins[name] + "+cpu", f"{name} must be the +cpu wheel of the pinned version"
        else:
            assert version == pins[name], name
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip


def test_binder_postbuild_installs_maaskit_and_stops_on_errors():
    post = ROOT / "binder" / "postBuild"
    text = post.read_text()
    assert text.startswith("#!/bin/bash") and "set -e" in text
    assert "pip install --no-deps ." in text
    assert os.access(post, os.X_OK)


def test_python_versions_agree(project):
    minimum = project["requires-python"]
    assert minimum == ">=3.10"
    for path in (ROOT / "environment.yml", ROOT / "binder" / "environment.yml"):
        _, conda, _ = pip_section(path)
        (python,) = [d for d in conda if d.startswith("python=")]
        assert tuple(map(int, python.split("=")[1].split("."))) >= (3, 10)
