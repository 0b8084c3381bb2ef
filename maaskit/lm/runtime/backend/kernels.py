"""maaskit's own C++ for a server's CPU: a decode step's attention (``decode_attention.cpp``), products of a
few rows (``row_products.cpp``, used by :mod:`.packing`), and the compiled step's products called by their
number (``packed_linear.cpp``, used by :mod:`.compiled`).

A decoding row has one new query; PyTorch's attention runs its few query heads as a tiny matrix
product per key/value head, and at a server's shapes read the cache at about a third of the speed
``tensor.sum()`` reads it. The kernel reads each row's keys and values once per query head, from the
row's own slot, its visible positions given as numbers: no gather of scattered rows, no mask for rows
of different lengths or a sliding window (benchmarks/attention_kernels.py; figures:
benchmarks/FIGURES.md, "decode attention").

It is built on first use with the machine's C++ compiler (a compiled server needs one anyway), for
the vector instructions PyTorch's own kernels use here, into a folder (:func:`folder`) named by the
sources, the command and PyTorch's version; later processes load it in milliseconds. :func:`attach`
does that in the background and then gives a float32 CPU
:class:`~maaskit.lm.models.attention.SlotCache` the kernel: until then, and wherever it cannot be
built, the cache's attention is PyTorch's.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

import torch

from ...models.attention import SlotCache

__all__ = ["attach", "compiler", "decode_attention", "folder", "load", "loaded"]

SOURCES = [Path(__file__).with_name(name) for name in ("decode_attention.cpp", "packed_linear.cpp", "row_products.cpp")]
HEADERS = [Path(__file__).with_name("parallel.h")]
_lock = threading.Lock()  # one build and one load per process (a library's ops are registered once)
_loaded: list[Path] = []
_log = logging.getLogger(__name__)


# the vector instructions PyTorch's own CPU kernels use on this machine -> the flags and macro ATen's vector
# types (at::vec::Vectorized) are built with for them; other machines get ATen's plain-C++ vectors
_ISA = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-DCPU_CAPABILITY_AVX512"],
}


def _command(cxx: str, target: Path) -> list[str]:
    """The compiler's command line: the kernel as a shared library against this PyTorch's headers and libraries."""
    root = Path(torch.__file__).parent
    isa = _ISA.get(torch.backends.cpu.get_cpu_capability(), [])
    return [cxx, *map(str, SOURCES), "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", *isa,
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
            f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-lc10", "-ltorch_cpu", "-o", str(target)]  # fmt: skip


def compiler() -> str | None:
    """The C++ compiler on PATH (``c++``, ``g++`` or ``clang++``), or None: the kernels and a compiled step need one."""
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def folder() -> Path:
    """Where built kernels are kept: ``MAASKIT_KERNELS_DIR``, by default a folder in the system's temporary one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's user with no name
        user = "user"
    return Path(os.environ.get("MAASKIT_KERNELS_DIR") or Path(tempfile.gettempdir()) / f"maaskit_kernels_{user}")


def load() -> Path:
    """Build the kernels if no earlier process did, and load them into this one; returns the library's path.
    Raises where it cannot be built (no C++ compiler, a compiler error)."""
    with _lock:
        if _loaded:
            return _loaded[0]
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("maaskit's CPU kernels need a C++ compiler (g++ or clang++), and none is on PATH")
        name = "maaskit_cpu_kernels.so"
        # named by everything that makes the library: its source, the command (PyTorch's path, the CPU's
        # instructions) and PyTorch's version
        sources = [source.read_bytes() for source in [*SOURCES, *HEADERS]]
        made_of = [*sources, " ".join(_command(cxx, Path(name))).encode()]
        key = hashlib.sha256(b"".join(made_of) + torch.__version__.encode()).hexdigest()[:20]
        target = folder() / key / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # built aside, then renamed into place: a process building at the same time never loads half a file
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = subprocess.run(_command(cxx, Path(scratch) / name), capture_output=True, text=True)
                if built.returncode:
                    raise RuntimeError(f"building maaskit's C++ kernels failed:\n{built.stderr[-3000:]}")
                os.replace(Path(scratch) / name, target)
        torch.ops.load_library(str(target))
        # its shape, for the compiled graphs that call it (lm/runtime/backend/compiled.py)
        torch.library.register_fake("maaskit_cpu::packed_linear", _packed_linear_shape)
        torch.library.register_fake("maaskit_cpu::row_product", _row_product_shape)
        _loaded.append(target)
        return target


def loaded() -> bool:
    """Whether this process has loaded the kernels (:func:`load`)."""
    return bool(_loaded)


def _packed_linear_shape(x: torch.Tensor, product: int, out: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out)


def _row_product_shape(x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None, out: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                     starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Each row's query (``q``: rows x heads x width, float32) against positions ``starts`` to ``ends``
    (excluded) of its slot of ``keys`` and ``values`` (one layer's cache: slots x key/value heads x
    context x width); rows x heads x width. Call :func:`load` first."""
    return torch.ops.maaskit_cpu.decode_attention(q, keys, values, slots, starts, ends, q.shape[-1] ** -0.5)


def attach(cache: SlotCache) -> Future:
    """Give ``cache`` the kernel, once it is built (in a thread of its own: a first build takes about half a
    minute of one core). Only a float32 cache on the CPU takes it. The Future's result: whether it did."""
    done: Future = Future()
    if cache.keys[0].device.type != "cpu" or cache.keys[0].dtype != torch.float32:
        done.set_result(False)
        return done
    if not _loaded and compiler() is None:  # a machine without one: PyTorch's attention, as before
        _log.info("no C++ compiler on PATH: PyTorch's attention serves (maaskit's CPU kernel needs g++ or clang++)")
        done.set_result(False)
        return done

    def build() -> None:
        try:
            load()
        except Exception as err:  # the cache keeps PyTorch's attention: slower, never wrong
            _log.warning("maaskit's CPU attention kernel could not be built (%s); PyTorch's attention serves", err)
            done.set_result(False)
            return
        cache.kernel = decode_attention
        done.set_result(True)

    threading.Thread(target=build, name="maaskit-kernels", daemon=True).start()
    return done
