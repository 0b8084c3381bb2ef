"""Start a real JupyterLab server for tests, and ask its REST API what the kernels are doing."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    base: str
    token: str
    process: subprocess.Popen

    def get(self, path: str) -> bytes:
        sep = "&" if "?" in path else "?"
        with urllib.request.urlopen(f"{self.base}{path}{sep}token={self.token}", timeout=10) as response:
            return response.read()

    def api(self, path: str):
        return json.loads(self.get(f"/api/{path}"))

    def delete(self, path: str) -> None:
        """DELETE ``/api/{path}``; answered once the server has done it (a kernel: once it is shut down)."""
        request = urllib.request.Request(f"{self.base}/api/{path}?token={self.token}", method="DELETE")
        with urllib.request.urlopen(request, timeout=60):
            pass

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def kernel_for(self, notebook: str, timeout: float = 60) -> str:
        """The id of the kernel the front end started for ``notebook``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for session in self.api("sessions"):
                if session["path"].endswith(notebook) and session.get("kernel"):
                    return session["kernel"]["id"]
            time.sleep(0.5)
        raise AssertionError(f"no kernel was started for {notebook} within {timeout:.0f} s")

    def wait_idle(self, kernel: str, *, since: str | None = None, timeout: float = 300, settle: float = 1.5) -> float:
        """Block until the kernel is idle and has stayed so for ``settle`` seconds; return the wait.

        ``since`` is the kernel's ``last_activity`` before the work was sent: the wait first
        sees it change, so a kernel that has not yet received the work is not taken as done.
        """
        start = time.monotonic()
        deadline = start + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            info = self.api(f"kernels/{kernel}")
            if since is not None and info["last_activity"] == since:
                time.sleep(0.2)
                continue
            since = None
            if info["execution_state"] == "idle":
                quiet_since = quiet_since or (time.monotonic(), info["last_activity"])
                if info["last_activity"] != quiet_since[1]:
                    quiet_since = (time.monotonic(), info["last_activity"])
                elif time.monotonic() - quiet_since[0] >= settle:
                    return time.monotonic() - start
            else:
                quiet_since = None
            time.sleep(0.25)
        raise AssertionError(f"kernel still busy after {timeout:.0f} s")


@contextmanager
def running_lab(argv: list[str], *, cwd, port: int, token: str | None = None, env=None, timeout: float = 60):
    """Run ``argv`` (a command that starts JupyterLab on ``port`` with ``token``) until the block ends."""
    token = token or secrets.token_hex(16)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lab = Lab(f"http://127.0.0.1:{port}", token, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                lab.api("status")
                break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError("JupyterLab exited:\n" + process.stdout.read().decode()[-3000:]) from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"JupyterLab did not answer within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield lab
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make and jupyter alike
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def lab_flags(port: int, token: str) -> list[str]:
    flags = [
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.token={token}",
        "--ServerApp.port_retries=0",
    ]
    if os.getuid() == 0:
        flags.append("--allow-root")
    return flags
