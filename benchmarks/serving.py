"""Inference serving, side by side in one run: maaskit (adaptive batching on, and off; and while
it explains), a naive FastAPI endpoint, and KServe's ModelServer, all serving the same
LeNet-on-digits artifact.

Each server runs in its own process on 127.0.0.1; the load comes from `hey`, a compiled load
generator in a process of its own (so the client's GIL measures nothing), against one server at a
time, the servers taking turns round by round. For each server, concurrency 1 and 32, JSON and
binary (Triton's binary tensors; the naive endpoint has none): p50, p99 and requests/s, medians
of ``--rounds`` rounds after a warm-up. The floor is the in-process forward pass at batch 1.

"explaining" is maaskit's server measured the same way while a second `hey` keeps one
explanation request in flight all the time (integrated gradients, 50 steps, one image, on
``:explain``): what explanations cost plain inference on the same server.

    python benchmarks/serving.py [--requests 4000] [--rounds 3]
        [--servers maaskit,explaining,unbatched,naive,kserve] [--baseline DIR]

``--baseline DIR``: also serve the same artifact with the maaskit of another checkout (say
``git worktree add DIR <commit>``), as "baseline", taking turns with the others: a change measured
against the code before it, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(folder: Path) -> tuple[Path, float, dict[str, tuple[bytes, dict]]]:
    """The artifact, the in-process forward time at batch 1 (ms, median), and one request body per
    format (and "explain": one image to explain)."""
    import torch

    import maaskit
    from maaskit.serving.protocol import encode_body, encode_tensor

    data = maaskit.load_dataset("digits")
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", data.in_shape, data.num_classes).eval()
    artifact = maaskit.save_artifact(model, folder / "digits", data=data, name="digits")
    x = data.normalize(data.test.x[:1]).numpy()
    with torch.inference_mode():
        for _ in range(200):
            model(torch.from_numpy(x))
        times = []
        for _ in range(2000):
            start = time.perf_counter()
            model(torch.from_numpy(x))
            times.append(time.perf_counter() - start)
    bodies = {}
    for fmt in ("json", "binary"):
        binary = fmt == "binary"
        spec, raw = encode_tensor("input", x, binary=binary)
        header = {"inputs": [spec]}
        if binary:
            header["outputs"] = [{"name": "logits", "parameters": {"binary_data": True}}]
        bodies[fmt] = encode_body(header, [raw])
    explain = {"instances": x.tolist(), "method": "integrated_gradients", "steps": 50}
    bodies["explain"] = (json.dumps(explain).encode(), {"Content-Type": "application/json"})
    return artifact, statistics.median(times) * 1000, bodies


def servers(
    artifact: Path, chosen: list[str], baseline: Path | None = None
) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name: (command, formats it speaks)."""
    maaskit_serve = [sys.executable, "-m", "maaskit", "serve", str(artifact), "--port", "{port}"]
    table = {
        "maaskit": (maaskit_serve, ("json", "binary")),
        "explaining": (maaskit_serve, ("json", "binary")),  # measured with explanations running beside
        "unbatched": ([*maaskit_serve, "--max-batch-size", "1"], ("json", "binary")),
        "naive": ([sys.executable, str(PEERS / "naive_server.py"), str(artifact), "{port}"], ("json",)),
    }
    if "kserve" in chosen:
        sys.path.insert(0, str(ROOT / "tools"))
        from peers import peer_python

        site = sysconfig.get_paths()["purelib"]  # maaskit's environment: torch for KServe's model
        command = [
            str(peer_python("kserve")),
            str(PEERS / "kserve_server.py"),
            str(artifact),
            "{port}",
            site,
            str(ROOT),
        ]
        table["kserve"] = (command, ("json", "binary"))
    chosen = list(chosen)
    if baseline is not None:  # the same command, importing maaskit from the other checkout
        # run from that checkout (GNU env -C): `python -m` puts the working directory first on the path
        where = str(baseline.resolve())
        table["baseline"] = (["env", "-C", where, f"PYTHONPATH={where}", *maaskit_serve], ("json", "binary"))
        chosen.insert(1, "baseline")
    return {name: table[name] for name in chosen}


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: a server that logs every request would fill a pipe and stall
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[1]} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{' '.join(command)} did not open port {port} in 120 s")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def hey_command(url: str, body: tuple[bytes, dict], path: Path, *load: str) -> list[str]:
    content, headers = body
    path.write_bytes(content)
    command = ["hey", *load, "-m", "POST", "-D", str(path)]
    for name, value in headers.items():
        command += ["-T", value] if name == "Content-Type" else ["-H", f"{name}: {value}"]
    return [*command, url]


def hey(url: str, body: tuple[bytes, dict], concurrency: int, requests: int, folder: Path) -> dict:
    """One load run: p50 and p99 in ms, requests/s, and how many answers were not 200."""
    command = hey_command(url, body, folder / "body", "-n", str(requests), "-c", str(concurrency))
    return parse(subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout)


class Explaining:
    """One explanation request in flight all the time, from a `hey` of its own, until stopped."""

    def __init__(self, base: str, body: tuple[bytes, dict], folder: Path):
        command = hey_command(f"{base}/v1/models/digits:explain", body, folder / "explain-body", "-c", "1", "-z", "1h")
        self.log = folder / "explain.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGINT)  # hey stops and prints its report
        self.process.wait(60)
        return parse(self.log.read_text())


def parse(out: str) -> dict:
    latency = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    failed = out.split("Error distribution:")[1] if "Error distribution:" in out else ""  # no answer at all
    return {
        "p50": latency.get(50, float("nan")),  # nan: no answer came back at all
        "p99": latency.get(99, float("nan")),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "errors": sum(n for code, n in statuses.items() if code != 200)
        + sum(map(int, re.findall(r"\[(\d+)\]", failed))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per load run")
    parser.add_argument("--rounds", type=int, default=3, help="load runs per cell; the median is shown")
    parser.add_argument(
        "--servers", default="maaskit,explaining,unbatched,naive,kserve", help="comma-separated, in order"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier maaskit to serve beside this one")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("this benchmark needs `hey` (Debian: apt-get install hey; `make test` installs it)")
    chosen = [s.strip() for s in args.servers.split(",") if s.strip()]
    folder = Path(tempfile.mkdtemp(prefix="maaskit-serving-bench-"))
    artifact, floor_ms, bodies = prepare(folder)
    print(f"in-process forward pass at batch 1 (the floor): {floor_ms:.3f} ms; {os.cpu_count()} cores", flush=True)
    # every server up at once, idle while another is measured; the rounds interleave, so a drift in
    # the machine's speed falls on all of them alike
    running: dict[str, tuple[subprocess.Popen, str, tuple[str, ...]]] = {}
    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        for name, (command, formats) in servers(artifact, chosen, args.baseline).items():
            port = free_port()
            running[name] = (start(command, port, folder / f"{name}.log"), f"http://127.0.0.1:{port}", formats)
            url = f"{running[name][1]}/v2/models/digits/infer"
            hey(url, bodies["json"], 32, min(1000, args.requests), folder)  # warm-up: every batch size seen
            if name == "explaining":  # and its explanation process started
                hey(f"{running[name][1]}/v1/models/digits:explain", bodies["explain"], 1, 5, folder)
        for round_ in range(args.rounds):
            # who goes first rotates: the same server measured against itself gave its first json c=32
            # cell 0.83x the req/s of the second server's, round after round
            order = list(running.items())
            for name, (_, base, formats) in order[round_ % len(order) :] + order[: round_ % len(order)]:
                for fmt in formats:
                    for concurrency in (1, 32):
                        beside = Explaining(base, bodies["explain"], folder) if name == "explaining" else None
                        if beside:
                            time.sleep(0.5)  # the first explanations under way
                        try:
                            run = hey(f"{base}/v2/models/digits/infer", bodies[fmt], concurrency, args.requests, folder)
                        finally:
                            explained = beside.stop() if beside else None
                        if explained:
                            run["explanations_per_s"], run["errors"] = (
                                explained["rps"],
                                run["errors"] + explained["errors"],
                            )
                        runs.setdefault(name, {}).setdefault(f"{fmt} c={concurrency}", []).append(run)
                        print(f"  round {round_ + 1} {name:10} {fmt:6} c={concurrency:<3} {_cell(run)}", flush=True)
    finally:
        for process, _, _ in running.values():
            stop(process)
    results: dict[str, dict] = {}
    for name, cells in runs.items():
        for key, cell_runs in cells.items():
            keys = [k for k in cell_runs[0] if k != "errors"]  # "explanations_per_s" too, where measured
            cell = {k: statistics.median(r[k] for r in cell_runs) for k in keys}
            cell["errors"] = sum(r["errors"] for r in cell_runs)
            results.setdefault(name, {})[key] = cell
    report(results, floor_ms)
    if args.json:
        args.json.write_text(json.dumps({"floor_ms": floor_ms, "results": results}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)


def _cell(c: dict) -> str:
    errors = f", {c['errors']} errors" if c["errors"] else ""
    beside = f", {c['explanations_per_s']:.0f} explanations/s beside" if "explanations_per_s" in c else ""
    return f"p50 {c['p50']:6.2f} ms  p99 {c['p99']:6.2f} ms  {c['rps']:7,.0f} req/s{errors}{beside}"


def report(results: dict[str, dict], floor_ms: float) -> None:
    columns = ["json c=1", "json c=32", "binary c=1", "binary c=32"]
    print("\n| server | " + " | ".join(f"{c} p50 / p99 ms, req/s" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, cells in results.items():
        row = [
            f"{cells[c]['p50']:.2f} / {cells[c]['p99']:.2f}, {cells[c]['rps']:,.0f}" if c in cells else "n/a"
            for c in columns
        ]
        print(f"| {name} | " + " | ".join(row) + " |")
    ours = results.get("maaskit")
    if not ours:
        return
    print(f"\nfloor (forward pass, batch 1, in process): {floor_ms:.3f} ms")
    for fmt in ("json", "binary"):
        one = ours[f"{fmt} c=1"]
        print(f"maaskit {fmt} c=1: p50 {one['p50'] - floor_ms:+.2f} ms over the floor (target: at most +1 ms)")
    for key, busy in results.get("explaining", {}).items():
        quiet = ours[key]
        print(
            f"while explaining ({busy['explanations_per_s']:.0f} explanations/s), {key}: "
            f"{busy['rps'] / quiet['rps']:.2f}x the req/s, p50 {busy['p50']:.2f} vs {quiet['p50']:.2f} ms, "
            f"p99 {busy['p99']:.2f} vs {quiet['p99']:.2f} ms"
        )
    for other in ("baseline", "kserve", "naive", "unbatched"):
        for fmt in ("json", "binary"):
            if f"{fmt} c=32" not in results.get(other, {}):
                continue
            a, b = ours[f"{fmt} c=32"], results[other][f"{fmt} c=32"]
            c1a, c1b = ours[f"{fmt} c=1"], results[other][f"{fmt} c=1"]
            print(
                f"maaskit / {other} {fmt}: c=32 {a['rps'] / b['rps']:.2f}x req/s, "
                f"p99 {a['p99']:.1f} vs {b['p99']:.1f} ms; c=1 {c1a['rps'] / c1b['rps']:.2f}x req/s, "
                f"p50 {c1a['p50']:.2f} vs {c1b['p50']:.2f} ms"
            )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
