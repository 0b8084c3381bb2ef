"""How often does a 2-rank gloo launch abort on its way out? Runs N consecutive launches of the
suite's DDP targets in turn (tests/ddp_ranks.py: LeNet training, a stop agreed on rank 0, the
device-read count) while a busy process keeps one core loaded
(as a CI run does), and counts the launches that finished cleanly, that crashed after every rank
marked its work done, and that failed outright. Each rank runs with ``faulthandler`` on, so an
abort leaves every Python thread's stack in the output, and with core dumps allowed (read one with
``gdb -batch -ex "thread apply all bt" python CORE``); outputs and cores are kept under ``--keep``.

    python tools/gloo_exits.py --launches 200 --keep /tmp/gloo-aborts
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--targets", default="train,stop_on_rank_0,reads_from_the_device", help="comma-separated")
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "maaskit-gloo-exits")
    parser.add_argument("--no-load", action="store_true", help="leave the other core idle")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONFAULTHANDLER"] = "1"  # an abort prints every Python thread's stack
    from maaskit.distributed import RankFailedError, launch

    args.keep.mkdir(parents=True, exist_ok=True)
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    cores = Path(tempfile.mkdtemp(prefix="gloo-exits-"))
    os.chdir(cores)  # the ranks' working folder: a core file lands here (kernel.core_pattern "core")
    busy = None if args.no_load else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    counts = {"clean": 0, "crashed after done": 0, "failed": 0}
    seconds: list[float] = []
    targets = args.targets.split(",")
    try:
        for i in range(args.launches):
            target = targets[i % len(targets)]
            with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as tmp:
                warnings.simplefilter("always")
                start = time.perf_counter()
                try:
                    kwargs = {
                        "train": {"out": f"{tmp}/w.safetensors", "batch_size": 32, "epochs": args.epochs},
                        "stop_on_rank_0": {"at_step": 7},
                        "reads_from_the_device": {"epochs": args.epochs},
                    }[target]
                    done = launch(f"ddp_ranks:{target}", nproc=2, kwargs=kwargs, timeout=300, quiet=True)
                    crashed = any("crashed while leaving" in str(w.message) for w in caught)
                    kind = "crashed after done" if crashed else "clean"
                    text = done.output
                except (RankFailedError, TimeoutError) as err:
                    kind, text = "failed", str(err)
                seconds.append(time.perf_counter() - start)
            counts[kind] += 1
            if kind != "clean":
                (args.keep / f"launch{i:03d}.txt").write_text(text)
                for core in cores.glob("core*"):
                    core.rename(args.keep / f"launch{i:03d}.{core.name}")
            print(f"{i + 1:4d}/{args.launches} {target:22s} {kind:20s} {seconds[-1]:5.1f} s  {counts}", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    median = sorted(seconds)[len(seconds) // 2]
    print(f"{args.launches} launches (median {median:.1f} s): {counts}; outputs of the others in {args.keep}")
    return 0 if counts["clean"] == args.launches else 1


if __name__ == "__main__":
    sys.exit(main())
