"""Training throughput, side by side in one run: the tutorial loop against maaskit's ``fit()``.

  (a) the PyTorch-tutorial loop: a DataLoader with a per-image transform, fp32, ``loss.item()``
      every step — at batch 4 (the CIFAR-10 tutorial's) and at batch 128;
  (b) ``fit()`` on device-resident data at batch 128 (bf16 autocast and channels-last on CUDA,
      as ``fit`` chooses by default; with ``--variants``, also fp32 and ``torch.compile``);
  (c) the same ``fit()`` with a TrainingDashboard attached as a callback.

The model is LeNet-5 on CIFAR-shaped input (3x32x32, 10 classes; synthetic images, so nothing
downloads). Throughput is the median images/s over the epochs after the first (which warms
up allocators, cuDNN and the compiler). Then (d): LeNet on ``digits`` with ``maaskit train``'s
defaults, for the accuracy-in-time target. Targets: (c)/(b) >= 0.95; on a GPU, (b) >= 5x
(a at batch 128); (d) >= 97% test accuracy in under 20 s on a laptop-class CPU.

    python benchmarks/train_speed.py [--device auto] [--n 20000] [--epochs 4] [--repeats 5] [--variants]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch

from maaskit import Normalization, build_model, default_recipe, evaluate, fit, load_dataset, seed_everything
from maaskit.baseline import fit_images_per_s, tutorial_images_per_s
from maaskit.data import ImageDataset, Split
from maaskit.device import pick_device

CIFAR_LIKE = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # CIFAR-10's statistics, roughly


def cifar_shaped(n: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)

    def split(k):
        return Split(
            torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (k,), generator=gen),
        )

    classes = tuple(str(i) for i in range(10))
    return ImageDataset("cifar10-shaped", split(n), split(max(n // 10, 512)), split(512), classes, CIFAR_LIKE)


def digits_target(device) -> tuple[float, float]:
    """The default recipe (``maaskit train``'s defaults): test accuracy and seconds, loading included."""
    recipe = default_recipe("digits")
    start = time.perf_counter()
    data = load_dataset("digits")
    seed_everything(0)
    model = build_model(recipe.model, data.in_shape, data.num_classes)
    fit(model, data, **recipe.fit_kwargs(), device=device, seed=0)
    accuracy = evaluate(model, data).accuracy
    return accuracy, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=20_000, help="training images per epoch for (b) and (c)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of (b) and (c)")
    parser.add_argument("--variants", action="store_true", help="also fp32 and torch.compile runs of (b)")
    args = parser.parse_args()
    device = pick_device(args.device)
    data = cifar_shaped(args.n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"LeNet-5 on 3x32x32, device {device} ({name}), torch {torch.__version__}")

    rows = {
        "(a) tutorial loop, batch 4": tutorial_images_per_s(
            data, device=device, batch_size=4, max_batches=300, repeats=3
        ),
        "(a) tutorial loop, batch 128": tutorial_images_per_s(
            data, device=device, batch_size=128, max_batches=60, repeats=3
        ),
    }
    from maaskit.widgets import TrainingDashboard  # ipywidgets: only (c) needs it

    def with_dashboard():
        with contextlib.redirect_stdout(io.StringIO()):  # its end-of-run summary
            return fit_images_per_s(data, device=device, epochs=args.epochs, callbacks=[TrainingDashboard(data)])

    # (b) and (c) alternate, so that a slow spell of a shared machine hits both alike
    b_runs, c_runs = [], []
    for _ in range(args.repeats):
        b_runs.append(fit_images_per_s(data, device=device, epochs=args.epochs))
        c_runs.append(with_dashboard())
    rows["(b) fit(), device-resident data, batch 128"] = statistics.median(b_runs)
    if args.variants and device.type == "cuda":  # elsewhere these are off already
        rows["(b) fit(), fp32, contiguous"] = fit_images_per_s(
            data, device=device, epochs=args.epochs, amp=False, channels_last=False
        )
        rows["(b) fit(), torch.compile"] = fit_images_per_s(data, device=device, epochs=args.epochs, compile=True)
    rows["(c) fit() + TrainingDashboard"] = statistics.median(c_runs)

    base = rows["(a) tutorial loop, batch 128"]
    print(f"{'':46} {'img/s':>12} {'vs (a) batch 128':>17}")
    for label, rate in rows.items():
        print(f"{label:46} {rate:12,.0f} {rate / base:16.2f}x")
    b, c = rows["(b) fit(), device-resident data, batch 128"], rows["(c) fit() + TrainingDashboard"]
    print(
        f"(c)/(b) = {c / b:.3f}   (target >= 0.95; medians of {args.repeats} alternating runs, "
        f"(b) {min(b_runs):,.0f}..{max(b_runs):,.0f}, (c) {min(c_runs):,.0f}..{max(c_runs):,.0f} img/s)"
    )
    print(f"(b)/(a, batch 128) = {b / base:.2f}   (target on a GPU >= 5)")

    accuracy, seconds = digits_target(device)
    print(
        f"(d) LeNet on digits, maaskit train defaults: test accuracy {accuracy:.2%} in {seconds:.1f} s "
        "(target >= 97% in < 20 s on CPU)"
    )


if __name__ == "__main__":
    main()
