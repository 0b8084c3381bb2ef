"""``uv pip ARGS`` with the package sources pip is set up with on this machine (its index, extra
indexes, find-links and constraints, from ``PIP_*`` variables or pip.conf, read with ``pip config``).

uv installs the tested sets (requirements/pins.txt, requirements/peers/) in a fraction of pip's time and
CPU: it resolves and unpacks in parallel, in Rust. It reads none of pip's settings, hence this wrapper;
with none set, uv uses PyPI as pip would. Run with the Python of an environment that has uv and pip:

    .venv/bin/python tools/uv_pip.py install --python .venv/bin/python -c requirements/pins.txt -e ".[lab,dev]"
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pip's setting: uv's variable, and how uv separates several values
SETTINGS = {
    "index-url": ("UV_INDEX_URL", " "),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "constraint": ("UV_CONSTRAINT", " "),
}


def pip_setting(name: str) -> list[str]:
    """pip's value of setting ``name``: its ``PIP_`` variable, else pip.conf's (every file pip reads)."""
    value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if value is None:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{name}"],
                              capture_output=True, text=True)  # fmt: skip
        value = done.stdout if done.returncode == 0 else ""
    return value.split()


def uv_env() -> dict[str, str]:
    env = dict(os.environ)
    for name, (variable, separator) in SETTINGS.items():
        values = pip_setting(name)
        if values and variable not in env:
            env[variable] = separator.join(values)
    # pip picks the best version over all its indexes; uv, by default, the first index that has the package
    env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    return env


def uv(*args: str, **run: object) -> subprocess.CompletedProcess:
    """``uv ARGS`` (uv beside this Python) with pip's sources; ``run``: subprocess.run's keywords."""
    binary = Path(sys.executable).with_name("uv")
    if not binary.exists():
        raise FileNotFoundError(f"no uv beside {sys.executable}: `make install` puts it there (pip install uv)")
    return subprocess.run([str(binary), *args], env=uv_env(), **run)  # type: ignore[call-overload]


if __name__ == "__main__":
    sys.exit(uv("pip", *sys.argv[1:]).returncode)
