"""Checkpoints: what resuming a ``fit()`` needs, saved after epochs and loaded by
``fit(..., resume_from=directory)``. Safetensors and JSON only: nothing is pickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .run import Callback, History, Run

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]


class Checkpoint(Callback):
    """After every ``every`` epochs, save what resuming needs into ``directory``.

    ``model.safetensors`` (weights), ``optimizer.safetensors`` (optimizer tensors and random
    number generator states) and ``state.json`` (epoch, step, hyper-parameters, scheduler,
    history). Nothing is pickled. Resume with ``fit(..., resume_from=directory)``.
    """

    def __init__(self, directory: str | Path, every: int = 1):
        self.directory, self.every = Path(directory), every

    def on_epoch_end(self, run: Run) -> None:
        if run.epoch % self.every == 0 or run.epoch == run.epochs or run.stop_requested:
            save_checkpoint(run, self.directory)


def save_checkpoint(run: Run, directory: str | Path) -> Path:
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(run.model, str(directory / "model.safetensors"))  # tied weights (a GPT's head) stored once
    opt_state = run.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(pid), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if run.train_generator is not None:
        tensors["rng.loader"] = run.train_generator.get_state().cpu()
    if run.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    save_file(tensors, directory / "optimizer.safetensors")
    state = {
        "epoch": run.epoch,
        "step": run.step,
        "wall_time": run.running_metrics()["wall_time"],
        "optimizer": {"param_groups": opt_state["param_groups"], "state": plain},
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "history": run.history.records,
    }
    (directory / "state.json").write_text(json.dumps(state, indent=1, default=_json_default))
    return directory


def _json_default(value):
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} in a checkpoint's state.json")


def load_checkpoint(run: Run, directory: str | Path) -> None:
    from safetensors.torch import load_file, load_model

    directory = Path(directory)
    missing = [f for f in ("model.safetensors", "optimizer.safetensors", "state.json") if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a maaskit checkpoint: missing {', '.join(missing)}")
    state = json.loads((directory / "state.json").read_text())
    load_model(run.model, str(directory / "model.safetensors"), device=str(run.device))
    tensors = load_file(directory / "optimizer.safetensors")
    opt_state = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    for pid, plain in state["optimizer"]["state"].items():
        opt_state["state"].setdefault(int(pid), {}).update(plain)
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[key] = value
    run.optimizer.load_state_dict(opt_state)
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.loader" in tensors and run.train_generator is not None:
        run.train_generator.set_state(tensors["rng.loader"])  # a CPU byte tensor, for any device
    if "rng.cuda" in tensors and run.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], run.device)
    run.epoch, run.step, run.elapsed_before = state["epoch"], state["step"], state["wall_time"]
    run.history = History(state["history"])
    run.history.settings = getattr(run, "settings", {})
