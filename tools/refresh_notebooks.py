"""Re-execute notebooks in place and keep only the outputs that nbval checks.

Run after editing a notebook (``make notebooks``): every code cell is executed top to
bottom with the current environment's kernel; then outputs, execution counts and widget
state are dropped everywhere except in cells tagged ``nbval-check-output``, whose outputs
are the reference that ``pytest --nbval-lax`` compares against.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

CHECKED = "nbval-check-output"


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type != "code":
            continue
        if CHECKED not in cell.metadata.get("tags", []):
            # (checked cells keep their count: nbval treats a reference without one as never run)
            cell.execution_count = None
            cell.outputs = []
    return nb


def refresh(path: Path, timeout: int = 600) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(clean(nb), path)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tools/refresh_notebooks.py NOTEBOOK.ipynb ...")
    for name in sys.argv[1:]:
        print(f"executing {name} ...", flush=True)
        refresh(Path(name))
