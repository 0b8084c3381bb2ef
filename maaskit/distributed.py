"""Data-parallel training on PyTorch's own engine: ``torchrun`` and ``DistributedDataParallel``.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every rank) :func:`setup` joins the process group — gloo on CPUs, NCCL on
CUDA GPUs — and :func:`maaskit.fit` then wraps the model in DDP, gives each rank its share of
every batch, averages the gradients and reduces the metrics; only rank 0 runs the callbacks.

:func:`launch` starts the ranks from a notebook (or the CLI's ``--nproc-per-node``): it runs
``torchrun --standalone`` in a process group of its own, streams the ranks' output into the
cell, raises a failed rank's traceback as a :class:`RankFailedError`, kills every process it
started when it ends, is stopped or times out, and returns rank 0's result.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RankFailedError", "is_main", "launch", "leave", "mark_done", "rank", "setup", "teardown", "world_size",
]  # fmt: skip


def world_size() -> int:
    """How many ranks train together (1 outside ``torchrun``)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside ``torchrun``)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the rank that prints, draws and writes files."""
    return rank() == 0


def setup(device: str = "auto") -> str:
    """Join the process group ``torchrun`` describes in the environment, if any; returns the device
    this rank should train on. Outside ``torchrun`` it does nothing; under it, one rank is a group too.

    Each rank gets ``cores / ranks`` CPU threads (``torchrun`` would leave it one), and on CUDA
    the GPU of its local rank."""
    import torch
    import torch.distributed as dist

    if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun left each rank one thread: give it its share of cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    if "WORLD_SIZE" not in os.environ:  # not under torchrun: one process, no group
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def teardown(*, together: bool = True) -> None:
    """Leave the process group (every rank, at the end). ``together`` waits for the other ranks
    first: a rank that tore down and exited while another still talked to it was seen to abort
    ("terminate called without an active exception"). After an error, leave at once."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


# --- launching ranks from a notebook -----------------------------------------------------------

_LAUNCH_DIR = "MAASKIT_LAUNCH_DIR"  # where launch() and its ranks leave notes for each other


def mark_done() -> None:
    """Tell :func:`launch` that this rank's work is done and only leaving is left: a rank that then
    crashes on its way out (gloo aborts at exit now and then under load) costs a warning, not the run."""
    if _LAUNCH_DIR in os.environ:
        (Path(os.environ[_LAUNCH_DIR]) / f"rank{os.environ.get('RANK', '0')}.done").write_text("")


def leave() -> None:
    """This rank's work is done and it has left the group (:func:`teardown`): tell :func:`launch` so
    (:func:`mark_done`), then, under ``torchrun``, end the process at once, skipping the interpreter's
    finalization and C++'s static destructors.

    Why: under load, about 1 in 100 two-rank gloo launches aborted after all work was done
    ("terminate called without an active exception"). ``faulthandler`` on the aborting rank showed
    the signal raised on a thread that is not Python's while the main thread had no Python frame
    left: the process was being torn down around threads that c10d and gloo still ran. Nothing is
    left to do at that point, so nothing is torn down (``tools/gloo_exits.py`` measures it)."""
    mark_done()
    if "WORLD_SIZE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class RankFailedError(RuntimeError):
    """A rank raised: the message is its traceback."""


@dataclass
class Launched:
    """What :func:`launch` returns: rank 0's result (for a function), the output, the seconds."""

    result: Any
    output: str
    seconds: float


def _cannot_run(nproc: int) -> str | None:
    import torch

    cores = os.cpu_count() or 1
    if not torch.cuda.is_available() and nproc > cores:
        return (
            f"{nproc} ranks on {cores} CPU cores would only take turns on them: use nproc <= {cores} "
            "(each rank needs a core), or a machine with more cores or GPUs"
        )
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        return f"{nproc} ranks but {torch.cuda.device_count()} GPU(s): one rank per GPU"
    return None


# long: one subprocess's life (start, wait, read each rank's result, clean up) reads best in one place
def launch(
    target: str,
    *,
    nproc: int = 2,
    args: Sequence[str] = (),
    kwargs: dict | None = None,
    timeout: float = 600,
    quiet: bool = False,
) -> Launched:
    """Run ``target`` on ``nproc`` ranks under ``torchrun --standalone`` and wait for it.

    ``target`` is ``"package.module:function"`` (called on every rank with ``**kwargs``; rank 0's
    return value, which must be JSON, is returned), a module name (``"maaskit"``, run as
    ``python -m`` with ``args``) or the path of a script. Functions defined in a notebook cannot be
    sent to other processes: write them to a file (``%%writefile``) and launch that.

    The ranks' output is printed as it comes (unless ``quiet``). A rank that raises becomes a
    :class:`RankFailedError` here, with its traceback; on a time-out, an error or an interrupt
    (Jupyter's Stop) every process started is killed, so no rank and no port is left behind.

    One launch runs at a time on a machine (a lock file in the temporary folder): two jobs would
    only fight over the same cores, and two ``torchrun`` starting at the same moment were seen to
    break each other's ranks (one aborted in gloo). A second launch waits, within its ``timeout``.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a whole number of at least 1, got {nproc!r}")
    note = _cannot_run(nproc)
    if note:
        raise ValueError(note)
    with tempfile.TemporaryDirectory(prefix="maaskit-launch-") as tmp:
        work = Path(tmp)
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if ":" in target:
            (work / "kwargs.json").write_text(json.dumps(kwargs or {}))
            command = [*runner, "-m", "maaskit.distributed", target, str(work)]
        elif target.endswith(".py"):
            command = [*runner, target, *args]
        else:
            command = [*runner, "-m", target, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", _LAUNCH_DIR: str(work)}
        start = time.perf_counter()
        deadline = time.monotonic() + timeout  # the whole launch, waiting for the lock included
        with _one_launch_at_a_time(timeout, quiet):
            output = _run(command, env=env, deadline=deadline, timeout=timeout, quiet=quiet)
        seconds = time.perf_counter() - start
        errors = sorted(work.glob("rank*.error"))
        if errors:
            raise RankFailedError("\n".join(e.read_text() for e in errors))
        finished = len(list(work.glob("rank*.done"))) == nproc  # every rank said so (mark_done)
        if output.returncode != 0 and finished:  # every rank finished its work, one crashed on its way out
            warnings.warn(
                "a rank crashed while leaving, after its work was done (gloo aborts at exit now and "
                "then under load); the result is complete",
                RuntimeWarning,
                stacklevel=2,
            )
        elif output.returncode != 0:  # a rank died without a Python traceback (a signal, an abort in C++)
            lines = output.text.splitlines()
            clues = [line for line in lines[:-30] if re.search(r"rror|terminate called|what\(\)|Abort|Killed", line)]
            tail = "\n".join([*clues[-20:], *lines[-30:]])
            raise RankFailedError(f"the ranks exited with status {output.returncode}:\n{tail}")
        result_file = work / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        return Launched(result, output.text, seconds)


@contextmanager
def _one_launch_at_a_time(timeout: float, quiet: bool) -> Iterator[None]:
    import fcntl

    with open(Path(tempfile.gettempdir()) / "maaskit-launch.lock", "w") as lock:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not quiet and not told:
                    print("waiting for another maaskit launch on this machine to finish ...", flush=True)
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the launch did not start within {timeout:.0f} s: another maaskit launch held this machine"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class _Finished:
    returncode: int
    text: str


def _run(command: list[str], *, env: dict, deadline: float, timeout: float, quiet: bool) -> _Finished:
    """Run ``command`` in a new session; print its lines as they come; kill the whole group at the end.

    ``deadline`` is a ``time.monotonic()`` instant; ``timeout`` is the launch's whole allowance, the
    figure the error names (time spent waiting for another launch counts against it).

    A thread reads the output so that the deadline holds even when a rank hangs without a word
    (forked ranks have been seen to hang at exit)."""
    import queue
    import threading

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, bufsize=1
    )
    lines: list[str] = []
    arrived: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            arrived.put(line)
        arrived.put(None)  # every process of the group has closed its output

    threading.Thread(target=read, daemon=True, name="maaskit-launch-output").start()
    try:
        while True:
            try:
                line = arrived.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                lines.append(line)
                if not quiet:
                    print(line, end="", flush=True)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ranks did not finish within {timeout:.0f} s; all were stopped")
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the ranks did not finish within {timeout:.0f} s; all were stopped") from None
    finally:
        _kill_group(process)
    return _Finished(process.returncode, "".join(lines))


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun and every rank, then SIGKILL to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(process.pid, 0)  # anything of the group still there?
        except (ProcessLookupError, PermissionError):
            return


def _call(target: str, work: Path) -> None:
    """What each rank runs for a ``"module:function"`` target (``python -m maaskit.distributed``)."""
    module, _, name = target.partition(":")
    me = int(os.environ.get("RANK", "0"))
    try:
        fn = getattr(importlib.import_module(module), name)
        result = fn(**json.loads((work / "kwargs.json").read_text()))
        if me == 0:
            (work / "result.json").write_text(json.dumps(result))
        mark_done()  # before the teardown's barrier: every rank's marker is written before any can leave
    except BaseException:
        (work / f"rank{me}.error").write_text(f"rank {me} failed:\n{traceback.format_exc()}")
        teardown(together=False)
        raise
    teardown()
    leave()


if __name__ == "__main__":
    _call(sys.argv[1], Path(sys.argv[2]))
