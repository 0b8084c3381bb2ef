"""The ``maaskit`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _doctor(_args) -> int:
    from .doctor import report

    rows = report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _train(args) -> int:
    from .data import DatasetUnavailableError, load_dataset
    from .device import DeviceNotAvailableError, seed_everything
    from .evaluate import evaluate
    from .models import build_model
    from .serving.artifact import save_artifact
    from .train import PrintProgress, fit

    try:
        data = load_dataset(args.dataset)
        seed_everything(args.seed)
        model = build_model(args.model, data.in_shape, data.num_classes)
        print(f"training {args.model} on {data!r}", flush=True)
        history = fit(model, data, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
                      batch_size=args.batch_size, scheduler=args.scheduler, device=args.device, seed=args.seed,
                      augment=args.augment, compile=args.compile, callbacks=[PrintProgress()])
    except (ValueError, DatasetUnavailableError, DeviceNotAvailableError) as err:
        print(f"maaskit train: {err}", file=sys.stderr)
        return 2
    result = evaluate(model, data)
    print(f"test accuracy {result.accuracy:.2%} (loss {result.loss:.4f}) on {len(result.labels)} images")
    metrics = {"test_accuracy": result.accuracy, "test_loss": result.loss, "epochs": len(history.records),
               "wall_time_s": history.last.get("wall_time")}
    out = save_artifact(model, args.out, classes=data.classes, mean=data.mean, std=data.std,
                        name=f"{args.model}-{data.name}", metrics=metrics)
    print(f"saved to {out}/ (model.safetensors, manifest.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maaskit", description="Models as a service, from the forward pass to the endpoint.")
    parser.add_argument("--version", action="version", version=f"maaskit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="report versions, devices, the widgets extension and the dataset cache")
    doctor.set_defaults(func=_doctor)

    from .data import DATASETS
    from .models import MODELS
    from .train import OPTIMIZERS, SCHEDULERS

    train = sub.add_parser("train", help="train a model headless and save it as an artifact",
                           description="Train a model, print the test accuracy, and save it to --out.")
    train.add_argument("--dataset", default="digits", choices=DATASETS)
    train.add_argument("--model", default="lenet", choices=list(MODELS))
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    train.add_argument("--lr", type=float, default=1e-2)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--scheduler", default="onecycle", choices=[*SCHEDULERS, "none"])
    train.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="directory for model.safetensors and manifest.json")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "scheduler", None) == "none":
        args.scheduler = None
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
