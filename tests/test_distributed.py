"""Data parallelism on torchrun: ranks split every batch, two ranks equal one process with the
global batch, a failing rank surfaces its traceback and leaves no process behind, and
``maaskit train --nproc-per-node 2`` writes one artifact. All bounded in time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import maaskit
from maaskit.data import DeviceLoader
from maaskit.distributed import RankFailedError, launch

HERE = Path(__file__).resolve().parent


@pytest.fixture
def importable_tests(monkeypatch):
    """The ranks import ddp_ranks from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def leftover_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and proc.name != str(os.getpid()):
            found.append(cmd)
    return found


def test_ranks_take_disjoint_shares_of_each_global_batch():
    data = maaskit.load_dataset("digits")
    split = maaskit.Split(data.train.x[:100], torch.arange(100))  # labels are the indices
    whole = list(DeviceLoader(split, data.normalization, batch_size=20, device="cpu", seed=3))
    ranks = [
        list(DeviceLoader(split, data.normalization, batch_size=10, device="cpu", seed=3, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 5
    for (_, y), (_, y0), (_, y1) in zip(whole, *ranks):
        assert torch.equal(torch.cat([y0, y1]), y)  # together exactly the one-process batch
    odd = DeviceLoader(split, data.normalization, batch_size=30, device="cpu", rank=1, world_size=2)
    assert len(odd) == 1 and odd.num_examples == 30  # the 40 left over cannot be shared evenly: dropped
    with pytest.raises(ValueError, match="rank must be in"):
        DeviceLoader(split, data.normalization, rank=2, world_size=2)


def test_two_ranks_equal_one_process_with_twice_the_batch(importable_tests, tmp_path):
    from safetensors.torch import load_file

    one = launch(
        "ddp_ranks:train",
        nproc=1,
        kwargs={"out": str(tmp_path / "one.safetensors"), "batch_size": 64},
        timeout=300,
        quiet=True,
    )
    two = launch(
        "ddp_ranks:train",
        nproc=2,
        kwargs={"out": str(tmp_path / "two.safetensors"), "batch_size": 32},
        timeout=300,
        quiet=True,
    )
    assert one.result["ranks"] == 1 and two.result["ranks"] == 2
    assert one.result["steps"] == two.result["steps"] == [20, 40]  # the same optimizer steps
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"largest weight difference after 40 steps, 1 rank x 64 vs 2 ranks x 32: {worst:.2e}")
    assert worst < 1e-5
    assert two.result["train_loss"] == pytest.approx(one.result["train_loss"], rel=1e-5)  # reduced over ranks


def test_a_failing_rank_is_an_exception_here_and_leaves_nothing_behind(importable_tests):
    with pytest.raises(RankFailedError, match="rank one broke on purpose") as failed:
        launch("ddp_ranks:fail_on_rank_1", nproc=2, timeout=120, quiet=True)
    assert "rank 1 failed" in str(failed.value) and "Traceback" in str(failed.value)
    assert leftover_processes("ddp_ranks:fail_on_rank_1") == []  # torchrun and both ranks are gone
    with pytest.raises(ValueError, match="ranks on .* CPU cores"):
        launch("ddp_ranks:pid", nproc=(os.cpu_count() or 1) + 1)


def test_maaskit_train_on_two_ranks_writes_one_artifact(tmp_path):
    out = tmp_path / "ddp"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maaskit",
            "train",
            "--nproc-per-node",
            "2",
            "--model",
            "mlp",
            "--epochs",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1 and "with 2 ranks" in done.stdout  # rank 0 alone speaks
    assert sum(line.startswith("epoch ") for line in done.stdout.splitlines()) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["epochs"] == 2 and sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.safetensors",
    ]
    model, _ = maaskit.load_artifact(out)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_a_stop_on_rank_0_stops_every_rank_after_the_same_step(importable_tests):
    from maaskit.train import STOP_CHECK_EVERY

    done = launch("ddp_ranks:stop_on_rank_0", nproc=2, kwargs={"at_step": 7}, timeout=300, quiet=True)
    # the ranks compare notes every STOP_CHECK_EVERY steps: all stop at the first check after step 7
    agreed = STOP_CHECK_EVERY * -(-7 // STOP_CHECK_EVERY)
    assert done.result == {"latest": agreed, "earliest": agreed, "stopped": "stop requested", "records": agreed // 2}


def test_two_ranks_read_from_the_device_per_epoch_and_per_stop_check_never_per_step(importable_tests):
    from maaskit.train import STOP_CHECK_EVERY

    done = launch("ddp_ranks:reads_from_the_device", nproc=2, kwargs={"epochs": 2}, timeout=300, quiet=True)
    steps = done.result["steps"]  # 40 per epoch
    # per epoch: the training sums' count after the all-reduce, their read, the validation read and
    # the stop agreement at the epoch's end; plus one agreement every STOP_CHECK_EVERY steps
    assert done.result["reads"] <= 2 * 5 + steps // STOP_CHECK_EVERY < steps, done.result


def test_resume_under_ddp_equals_an_uninterrupted_run(importable_tests, tmp_path):
    from safetensors.torch import load_file

    straight = launch(
        "ddp_ranks:resume",
        nproc=2,
        timeout=300,
        quiet=True,
        kwargs={"directory": str(tmp_path / "a"), "out": str(tmp_path / "a.st"), "epochs": 3},
    )
    launch(
        "ddp_ranks:resume",
        nproc=2,
        timeout=300,
        quiet=True,
        kwargs={"directory": str(tmp_path / "b"), "out": str(tmp_path / "b1.st"), "epochs": 3, "stop_after": 1},
    )
    resumed = launch(
        "ddp_ranks:resume",
        nproc=2,
        timeout=300,
        quiet=True,
        kwargs={"directory": str(tmp_path / "b"), "out": str(tmp_path / "b.st"), "epochs": 3, "resume": True},
    )
    assert straight.result == resumed.result == {"epochs": [1, 2, 3], "steps": 60}
    a, b = load_file(tmp_path / "a.st"), load_file(tmp_path / "b.st")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit, as in one process


def test_a_hanging_launch_times_out_and_is_stopped(importable_tests):
    # the error names the whole allowance, even when part of it went waiting for another launch
    # (another test's launch may hold the machine's lock, which once made this read "within 4 s")
    with pytest.raises(TimeoutError, match="within 15 s"):
        launch("ddp_ranks:sleep_forever", nproc=2, timeout=15, quiet=True)
    assert leftover_processes("ddp_ranks:sleep_forever") == []


def test_a_launch_waiting_for_the_machine_gives_up_at_its_timeout(importable_tests):
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "maaskit-launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another launch would (waits for any running one)
        try:
            with pytest.raises(TimeoutError, match="did not start within 2 s: another maaskit launch"):
                launch("ddp_ranks:sleep_forever", nproc=2, timeout=2, quiet=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    assert leftover_processes("ddp_ranks:sleep_forever") == []


def test_the_ddp_benchmark_prints_one_rank_beside_two():
    # runs, small; the figures themselves are for people (a benchmark, never a timed assertion)
    root = HERE.parent
    done = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "ddp_speed.py"),
            "--n",
            "1024",
            "--epochs",
            "2",
            "--batch-size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if "rank(s) on" in line]
    assert len(rows) == 2 and rows[0].strip().startswith("1 rank") and "x1.00" in rows[0]


def test_a_script_rank_that_crashes_after_marking_its_work_done_costs_a_warning_not_the_run(tmp_path):
    # what gloo does now and then at exit under load ("terminate called without an active exception")
    # each rank crashes only once every rank has marked its work done: a rank that crashed first would
    # have torchrun stop the other before its marker was written (a race this test once lost)
    script = tmp_path / "crash_on_exit.py"
    script.write_text(
        "import os, pathlib, time\n"
        "from maaskit.distributed import mark_done\n"
        "mark_done()\n"
        "work, deadline = pathlib.Path(os.environ['MAASKIT_LAUNCH_DIR']), time.monotonic() + 60\n"
        "while len(list(work.glob('rank*.done'))) < int(os.environ['WORLD_SIZE']) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "os.abort()\n"
    )
    with pytest.warns(RuntimeWarning, match="crashed while leaving, after its work was done"):
        launch(str(script), nproc=2, timeout=120, quiet=True)
    unfinished = tmp_path / "crash_before_done.py"
    unfinished.write_text("import os\nos.abort()\n")
    with pytest.raises(RankFailedError, match="exited with status"):
        launch(str(unfinished), nproc=2, timeout=120, quiet=True)
