"""How long one epoch of batches takes: maaskit's DeviceLoader against torch's DataLoader.

Both produce the same thing — shuffled, normalized float batches of an MNIST-sized split
(60,000 1x28x28 images, synthetic so nothing downloads) on the target device — and each
batch is consumed by one tiny reduction so that lazy work is really done. Prints the
median of several epochs and the ratio, side by side in one process.

    python benchmarks/data_loading.py [--device auto] [--batch-size 128] [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from maaskit.baseline import PerItemDataset
from maaskit.data import DeviceLoader, Split
from maaskit.device import pick_device
from maaskit.normalization import Normalization

MNIST = Normalization((0.1307,), (0.3081,))  # MNIST's statistics


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(make_batches, device, epochs):
    times = []
    for _ in range(epochs + 1):  # the first epoch warms up (allocations, CUDA context)
        sync(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for xb, yb in make_batches():
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            total += xb[:, 0, 0, 0].sum()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=60_000)
    args = parser.parse_args()
    device = pick_device(args.device)
    gen = torch.Generator().manual_seed(0)
    split = Split(
        torch.randint(0, 256, (args.n, 1, 28, 28), dtype=torch.uint8, generator=gen),
        torch.randint(0, 10, (args.n,), generator=gen),
    )

    device_loader = DeviceLoader(split, MNIST, batch_size=args.batch_size, device=device)
    per_item = DataLoader(
        PerItemDataset(split, MNIST), batch_size=args.batch_size, shuffle=True, pin_memory=device.type == "cuda"
    )
    contestants = {
        "torch DataLoader, per-item transform (baseline)": lambda: per_item,
        "maaskit DeviceLoader": lambda: device_loader,
        "maaskit DeviceLoader + random crop": lambda: DeviceLoader(
            split, MNIST, batch_size=args.batch_size, device=device, crop_padding=3
        ),
    }
    print(
        f"device {device}, {args.n:,} images of 1x28x28, batch {args.batch_size}, "
        f"median of {args.epochs} epochs after one warm-up"
    )
    baseline = None
    for name, make in contestants.items():
        loader = make()
        seconds = epoch_seconds(lambda loader=loader: loader, device, args.epochs)
        baseline = baseline or seconds
        print(
            f"  {name:<48} {seconds * 1000:9.1f} ms/epoch  {args.n / seconds:12,.0f} img/s  x{baseline / seconds:6.1f}"
        )


if __name__ == "__main__":
    main()
