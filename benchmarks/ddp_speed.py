"""Data-parallel training throughput: 1 rank against N ranks, side by side in one run.

Each run is ``maaskit.fit`` under ``torchrun`` (started by ``maaskit.distributed.launch``): LeNet-5 on
CIFAR-shaped synthetic images (nothing downloads), the same global batch for every rank count
(``--batch-size`` per rank times the ranks of the largest run), gloo on CPUs and NCCL on GPUs.
Throughput is images/s over all ranks, the median of the epochs after the first.

    python benchmarks/ddp_speed.py [--nproc 2] [--n 16384] [--epochs 4] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


def ranks_run(n: int, epochs: int, batch_size: int) -> dict:
    """What every rank runs (imported by the ranks, so it lives at the top of this module)."""
    import torch

    import maaskit
    from maaskit import distributed
    from maaskit.data import ImageDataset, Split

    device = distributed.setup("auto")
    gen = torch.Generator().manual_seed(0)

    def split(k: int) -> Split:
        x = torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return Split(x, torch.randint(0, 10, (k,), generator=gen))

    norm = maaskit.Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    data = ImageDataset("cifar10-shaped", split(n), split(512), split(512), tuple(map(str, range(10))), norm)
    maaskit.seed_everything(0)
    model = maaskit.build_model("lenet", data.in_shape, data.num_classes)
    history = maaskit.fit(
        model, data, optimizer="sgd", lr=0.01, epochs=epochs, batch_size=batch_size, device=device, seed=0
    )
    return {
        "images_per_s": statistics.median(history["images_per_s"][1:]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "ranks": distributed.world_size(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel run")
    parser.add_argument("--n", type=int, default=16_384, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank, in the N-rank run")
    args = parser.parse_args()

    from maaskit.distributed import launch

    here = str(Path(__file__).resolve().parent)  # the ranks import ranks_run from this file
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    rows = {}
    for ranks in (1, args.nproc):
        per_rank = args.batch_size * args.nproc // ranks  # the same global batch
        rows[ranks] = launch(
            "ddp_speed:ranks_run",
            nproc=ranks,
            quiet=True,
            timeout=3600,
            kwargs={"n": args.n, "epochs": args.epochs, "batch_size": per_rank},
        ).result
    base = rows[1]["images_per_s"]
    print(
        f"LeNet-5 on 3x32x32, {args.n:,} images, global batch {args.batch_size * args.nproc}, {sys.platform}, "
        f"{os.cpu_count()} cores"
    )
    for ranks, r in rows.items():
        print(
            f"  {ranks} rank(s) on {r['device']:<7} ({r['threads']} threads each)  "
            f"{r['images_per_s']:>10,.0f} img/s   x{r['images_per_s'] / base:.2f}"
        )


if __name__ == "__main__":
    main()
