"""Virtual environments for the third-party servers and clients maaskit is checked against
(KServe, MLServer, vLLM's CPU build): their pins clash with ours, so each lives in its own, under
``.peers/``, built from ``requirements/peers/NAME.txt`` on first use and reused while that file is
unchanged. A ``# then uninstall: ...`` line in that file names packages removed after the install.

    python tools/peers.py kserve mlserver vllm    # build them now (tests and benchmarks do it themselves)

``make test`` starts that command in the background before it installs maaskit: the builds are mostly
unpacking, so they overlap the install and the first tests instead of holding up the tests that need
them (those wait on the build's lock, and build it themselves if it failed). uv installs them
(tools/uv_pip.py: vLLM's took about 2.5 minutes of a core with pip); run this with a Python that has uv
beside it, as maaskit's .venv does.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

from uv_pip import uv

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"


class PeerUnavailable(RuntimeError):
    """A peer environment could not be built (the message says why)."""


def peer_python(name: str, *, timeout: float = 900) -> Path:
    """The Python of peer environment ``name``, built if missing or out of date."""
    requirements = ROOT / "requirements" / "peers" / f"{name}.txt"
    if not requirements.is_file():
        raise PeerUnavailable(f"no requirements/peers/{name}.txt")
    home = PEERS / name
    python = home / "bin" / "python"
    stamp = home / ".built-from"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    PEERS.mkdir(exist_ok=True)
    with open(PEERS / f"{name}.lock", "w") as lock:  # one build at a time (pytest-xdist workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == digest and python.exists():
            return python
        print(f"building the {name} peer environment in {home} (once; ~20 s)", file=sys.stderr, flush=True)
        venv.EnvBuilder(clear=True).create(home)
        try:
            uv("pip", "install", "-q", "--python", str(python), "-r", str(requirements), check=True,
               capture_output=True, text=True, timeout=timeout)  # fmt: skip
            for line in requirements.read_text().splitlines():  # a peer's own fix-ups, said in its file
                if line.startswith("# then uninstall:"):
                    names = line.split(":", 1)[1].split()
                    uv("pip", "uninstall", "-q", "--python", str(python), *names, check=True, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
        except subprocess.CalledProcessError as err:
            raise PeerUnavailable(f"uv could not install the {name} peer: {err.stderr.strip()[-1500:]}") from None
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(f"installing the {name} peer took over {timeout:.0f} s") from None
        except FileNotFoundError as err:  # no uv
            raise PeerUnavailable(str(err)) from None
        stamp.write_text(digest)
    return python


if __name__ == "__main__":
    failed = False
    for peer in sys.argv[1:] or ["kserve", "mlserver", "vllm"]:
        try:
            print(peer, peer_python(peer), flush=True)
        except PeerUnavailable as err:  # the next peer still gets built
            print(peer, "could not be built:", err, flush=True)
            failed = True
    sys.exit(1 if failed else 0)
