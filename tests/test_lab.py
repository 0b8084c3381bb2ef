"""The README's first command, `make lab`, starts JupyterLab on the notebooks with widgets."""

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_make_lab_serves_the_notebooks_with_the_widgets_extension(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    flags = f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.token={token}"
    if os.getuid() == 0:
        flags += " --allow-root"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    lab = subprocess.Popen(["make", "-s", "lab", f"LAB_FLAGS={flags}"], cwd=ROOT, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # at most 60 s for the server to come up
            try:
                get(f"{base}/api/status?token={token}")
                break
            except OSError:
                assert lab.poll() is None, lab.stdout.read().decode()
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not answer within 60 s")
        contents = json.loads(get(f"{base}/api/contents?token={token}"))
        names = {item["name"] for item in contents["content"]}
        assert {"01_forward_pass.ipynb", "02_backpropagation.ipynb", "03_optimizers.ipynb"} <= names
        assert b"@jupyter-widgets/jupyterlab-manager" in get(f"{base}/lab?token={token}")
        kernels = json.loads(get(f"{base}/api/kernelspecs?token={token}"))
        assert "python3" in kernels["kernelspecs"]
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
