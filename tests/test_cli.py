import subprocess
import sys

import torch

from maaskit import __version__
from maaskit.cli import main
from maaskit.doctor import report


def test_doctor_reports_versions_devices_extension_and_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MAASKIT_DATA", str(tmp_path))
    (tmp_path / "MNIST").mkdir()
    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = dict(report())
    assert [line.split()[0] for line in printed] == [key.split()[0] for key in rows]
    assert rows["torch"] == torch.__version__.split("+")[0]
    assert rows["maaskit"] == __version__
    assert rows["cpu"].split(",")[1].strip() == f"{__import__('os').cpu_count()} cores"
    assert "cuda" in rows or "cuda:0" in rows
    assert rows["widgets extension"].startswith("installed")  # ipywidgets ships its lab extension
    assert rows["dataset cache"] == f"{tmp_path} (found: mnist)"
    assert any(line.startswith("dataset cache") and line.endswith(f"{tmp_path} (found: mnist)") for line in printed)


def test_doctor_flags_a_missing_widgets_extension(monkeypatch, tmp_path):
    import jupyter_core.paths

    monkeypatch.setattr(jupyter_core.paths, "jupyter_path", lambda *parts: [str(tmp_path)])
    assert dict(report())["widgets extension"].startswith("NOT installed")


def test_console_script_and_module_entry_points():
    done = subprocess.run([sys.executable, "-m", "maaskit", "doctor"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torchvision" in done.stdout and "dataset cache" in done.stdout
    version = subprocess.run([sys.executable, "-m", "maaskit", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"maaskit {__version__}"
    bare = subprocess.run([sys.executable, "-m", "maaskit"], capture_output=True, text=True)
    assert bare.returncode == 2 and "doctor" in bare.stderr
