"""What the distributed tests run on every rank (launched by maaskit.distributed.launch, so it must
be importable: the tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import os

import maaskit
from maaskit import distributed


def equal_steps_data():
    """digits with 1,280 training images: 20 global batches of 64, none left over (a left-over
    batch is dropped under DDP, which would make the comparison with one process unfair)."""
    data = maaskit.load_dataset("digits")
    train = maaskit.Split(data.train.x[:1280], data.train.y[:1280])
    return maaskit.ImageDataset(data.name, train, data.val, data.test, data.classes, data.normalization)


def train(out: str, batch_size: int, epochs: int = 2) -> dict:
    """LeNet, SGD with momentum, ``batch_size`` per rank; rank 0 saves the weights to ``out``."""
    from safetensors.torch import save_file

    device = distributed.setup("cpu")
    data = equal_steps_data()
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", data.in_shape, data.num_classes)
    history = maaskit.fit(
        model, data, optimizer="sgd", lr=0.05, epochs=epochs, batch_size=batch_size, device=device, seed=0
    )
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    return {"ranks": distributed.world_size(), "train_loss": history["train_loss"], "steps": history["step"]}


def fail_on_rank_1() -> None:
    import torch.distributed as dist

    distributed.setup("cpu")
    if distributed.rank() == 1:
        raise ValueError("rank one broke on purpose")
    dist.barrier()  # rank 0 waits for a rank that is gone: the launcher must not hang here


def pid() -> int:
    return os.getpid()


def reads_from_the_device(epochs: int = 2) -> dict:
    """2-rank training with every .item() and .tolist() called from maaskit's code counted: the
    reads a step would wait on. Returns the count and the number of steps."""
    import sys
    from pathlib import Path

    import torch

    package = str(Path(maaskit.__file__).parent)
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist")}

    def counted(name):
        def read(self):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                calls.append(sys._getframe(1).f_code.co_name)
            return originals[name](self)

        return read

    device = distributed.setup("cpu")
    data = equal_steps_data()
    model = maaskit.build_model("mlp", data.in_shape, data.num_classes)
    for name in originals:
        setattr(torch.Tensor, name, counted(name))
    try:
        history = maaskit.fit(model, data, epochs=epochs, batch_size=16, device=device)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return {"reads": len(calls), "steps": history.last["step"], "where": sorted(set(calls))}


def stop_on_rank_0(at_step: int = 7) -> dict:
    """A callback on rank 0 asks to stop (as a Stop button or early stopping would): every rank stops
    after the same step. Returns the last step of the fastest and the slowest rank."""
    import torch
    import torch.distributed as dist

    class StopAt(maaskit.Callback):
        def on_batch_end(self, run):
            if run.step == at_step:
                run.request_stop()

    from maaskit.diagnostics import GradientMonitor

    device = distributed.setup("cpu")
    data = equal_steps_data()
    model = maaskit.build_model("mlp", data.in_shape, data.num_classes)
    monitor = GradientMonitor(model, every=2)  # a callback: it records on rank 0 only
    history = maaskit.fit(model, data, epochs=5, batch_size=16, device=device, callbacks=[StopAt(), monitor])
    steps = torch.tensor([history.last["step"], -history.last["step"]], dtype=torch.float64)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    return {
        "latest": int(steps[0]),
        "earliest": int(-steps[1]),
        "stopped": history.stopped,
        "records": len(monitor.record),
    }


def resume(directory: str, out: str, epochs: int, stop_after: int | None = None, resume: bool = False) -> dict:
    """2-rank training with a checkpoint each epoch; ``stop_after`` epochs, or resumed from ``directory``."""
    from safetensors.torch import save_file

    class StopAfter(maaskit.Callback):
        def on_epoch_end(self, run):
            if run.epoch == stop_after:
                run.request_stop()

    device = distributed.setup("cpu")
    data = equal_steps_data()
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", data.in_shape, data.num_classes)
    callbacks = [maaskit.Checkpoint(directory), *([StopAfter()] if stop_after else [])]
    history = maaskit.fit(
        model,
        data,
        optimizer="adamw",
        lr=3e-3,
        scheduler="onecycle",
        epochs=epochs,
        batch_size=32,
        augment=True,
        device=device,
        seed=1,
        callbacks=callbacks,
        resume_from=directory if resume else None,
    )
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    return {"epochs": history["epoch"], "steps": history.last["step"]}


def sleep_forever() -> None:
    import time

    distributed.setup("cpu")
    time.sleep(3600)
