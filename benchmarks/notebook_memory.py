"""Each notebook's kernel memory: run every notebook under papermill, then ask its kernel for its
peak resident set size (``ru_maxrss``) and what it still holds at the end (``VmRSS``).

The probe is one cell appended to a copy of the notebook, so the numbers are the kernel's own —
not papermill's, not the server a notebook starts in a thread of that kernel (that is counted:
it is the kernel's memory). A Binder user has 2 GB for JupyterLab and every kernel left open.

    python benchmarks/notebook_memory.py [notebooks/0*.ipynb ...] [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
PROBE = """\
import json, resource
with open("/proc/self/status") as f:
    now = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
print("MAASKIT_MEMORY " + json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "end_kb": now}))
"""


def kernel_memory(notebook: Path, workdir: Path) -> dict:
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    source, output = workdir / notebook.name, workdir / f"{notebook.stem}.out.ipynb"
    nbformat.write(nb, source)
    start = time.perf_counter()
    pm.execute_notebook(source, output, cwd=notebook.parent, kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    executed = nbformat.read(output, as_version=4)
    text = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    found = json.loads(text.split("MAASKIT_MEMORY ", 1)[1])
    return {"peak_mb": found["peak_kb"] / 1024, "end_mb": found["end_kb"] / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set for the kernels")
    args = parser.parse_args()
    for pair in args.env:
        name, _, value = pair.partition("=")
        os.environ[name] = value  # kernels inherit papermill's environment
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    setting = f"   ({' '.join(args.env)})" if args.env else ""
    print(f"{'notebook':<32} {'peak RSS':>10} {'at the end':>11} {'run':>7}{setting}")
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in notebooks:
            m = kernel_memory(notebook.resolve(), Path(tmp))
            row = f"{notebook.name:<32} {m['peak_mb']:>7.0f} MB {m['end_mb']:>8.0f} MB {m['seconds']:>5.0f} s"
            print(row, flush=True)


if __name__ == "__main__":
    main()
