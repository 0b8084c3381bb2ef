"""The README's first command, `make lab`, starts JupyterLab on the notebooks with widgets."""

import json
import secrets
from pathlib import Path

from labserver import free_port, lab_flags, running_lab

ROOT = Path(__file__).resolve().parents[1]


def test_make_lab_serves_the_notebooks_with_the_widgets_extension(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    argv = ["make", "-s", "lab", "LAB_FLAGS=" + " ".join(lab_flags(port, token))]
    with running_lab(argv, cwd=ROOT, port=port, token=token, env={"JUPYTER_RUNTIME_DIR": str(tmp_path)}) as lab:
        names = {item["name"] for item in lab.api("contents")["content"]}
        assert {"01_forward_pass.ipynb", "02_backpropagation.ipynb", "03_optimizers.ipynb"} <= names
        assert b"@jupyter-widgets/jupyterlab-manager" in lab.get("/lab")
        assert "python3" in lab.api("kernelspecs")["kernelspecs"]
        assert json.loads(lab.get("/api/status"))["kernels"] == 0
        # the settings shipped in binder/overrides.json: no "get notified about Jupyter news?" pop-up
        notification = json.loads(lab.get("/lab/api/settings/@jupyterlab/apputils-extension:notification"))
        assert notification["schema"]["properties"]["fetchNews"]["default"] == "false"
        assert notification["schema"]["properties"]["checkForUpdates"]["default"] is False
