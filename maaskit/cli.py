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


def _serve(args) -> int:
    import os

    from .serving.artifact import ArtifactError
    from .serving.server import serve

    token = args.token or os.environ.get("MAASKIT_TOKEN")
    try:
        server = serve(*args.artifacts, name=args.name, host=args.host, port=args.port, token=token,
                       allow_insecure=args.allow_insecure, device=args.device, max_batch_size=args.max_batch_size,
                       max_delay_ms=args.max_delay_ms, log_level="info")
    except (ValueError, ArtifactError, OSError) as err:
        print(f"maaskit serve: {err}", file=sys.stderr)
        return 2
    for m in server.repository.index():
        print(f"serving {m['name']} version {m['version']}: {server.url}/v2/models/{m['name']}/infer", flush=True)
    print(f"OpenAPI docs at {server.url}/docs; Ctrl-C stops (requests in flight are finished)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _predict(args) -> int:
    import numpy as np

    from .serving.client import Client, EndpointError

    try:
        images = np.stack([_read_image(path) for path in args.files])
        with Client(args.url, token=args.token, protocol="v2") as client:
            results = client.predict(args.model, images, top_k=args.top_k)
    except (EndpointError, OSError, ValueError) as err:
        print(f"maaskit predict: {err}", file=sys.stderr)
        return 2
    for path, top in zip(args.files, results):
        print(f"{path}: " + ", ".join(f"{label} {p:.1%}" for label, p in top))
    return 0


def _read_image(path: str):
    """An image file (PNG, JPEG, ...) as uint8 C x H x W, or a .npy array as it is."""
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("L") if im.mode in ("L", "LA", "P", "1") else im.convert("RGB"))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


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

    serve = sub.add_parser("serve", help="serve artifacts over the V2 (KServe/Triton) and V1 (TF Serving) APIs",
                           description="Serve one or more artifact directories until Ctrl-C.")
    serve.add_argument("artifacts", nargs="+", metavar="DIR", help="directories written by maaskit train")
    serve.add_argument("--name", help="the model's name (one artifact only; default: from its manifest)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (or set MAASKIT_TOKEN)")
    serve.add_argument("--allow-insecure", action="store_true", help="bind a non-loopback address without a token")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--max-batch-size", type=int, default=32)
    serve.add_argument("--max-delay-ms", type=float, default=5.0)
    serve.set_defaults(func=_serve)

    predict = sub.add_parser("predict", help="send images to an endpoint and print the top classes")
    predict.add_argument("url", help="the endpoint's base URL, e.g. http://127.0.0.1:8000")
    predict.add_argument("files", nargs="+", metavar="FILE", help="image files or .npy arrays (C x H x W)")
    predict.add_argument("--model", required=True)
    predict.add_argument("--token", default=None)
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(func=_predict)
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
