"""Explanations in a process of their own, at the lowest CPU priority.

An explanation costs tens to hundreds of forward passes, much of it Python (Captum) holding the
GIL. Run in a thread of the server, it slowed plain inference even at the lowest thread priority:
the event loop waited for the GIL. In a separate process niced to 19 the
operating system gives plain requests the CPU first and explanations what is left
(`benchmarks/serving.py`, the "explaining" row, measures it).

The process starts on the first explanation (spawned: a fork of a threaded server is unsafe) and
gets the weights once; each request sends only the images and gets the attributions back. Being
spawned, it re-imports a script's main module: a script that serves and explains needs the
``if __name__ == "__main__":`` guard (a notebook, ``python -m maaskit serve`` and uvicorn's
workers need nothing).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

__all__ = ["ExplainerProcess"]

_model: torch.nn.Module | None = None  # in the explainer process: the model it explains


def _start(architecture: dict, state: dict[str, torch.Tensor], device: str) -> None:
    global _model
    from ..models import rebuild

    # the lowest priority: plain inference first. (Linux's SCHED_IDLE measured the same, and would
    # starve explanations entirely under full load; nice 19 still lets them finish.)
    if hasattr(os, "nice"):
        os.nice(19)
    torch.set_num_threads(1)
    model = rebuild(architecture)
    model.load_state_dict(state)
    _model = model.to(device).eval()


def _explain(x: np.ndarray, method: str, target: Any, params: dict) -> tuple[np.ndarray, list[int]]:
    from ..explain import explain, explained_classes

    assert _model is not None
    device = next(_model.parameters()).device
    images = torch.from_numpy(x).to(device)
    targets = explained_classes(_model, images, target)
    out = explain(_model, images, targets, method, **params)
    return out.cpu().numpy(), targets.cpu().tolist()


class ExplainerProcess:
    """One model's explanation process, started when first needed."""

    def __init__(self, model: torch.nn.Module, manifest: dict, device: torch.device):
        self._model, self._architecture, self._device = model, manifest["architecture"], str(device)
        self._pool: ProcessPoolExecutor | None = None

    async def explain(self, x: np.ndarray, method: str, target: Any, params: dict) -> tuple[np.ndarray, list[int]]:
        """Raises ``BrokenProcessPool`` if the process died (out of memory?); the next call starts another."""
        if self._pool is None:
            weights = {k: v.detach().cpu() for k, v in self._model.state_dict().items()}
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self._architecture, weights, self._device),
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _explain, x, method, target, params)
        except BrokenProcessPool:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
