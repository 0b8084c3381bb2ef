"""The ``maaskit`` command line. ``maaskit --version`` and ``maaskit --help`` import no PyTorch."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import Field, fields
from typing import Any

from ._version import __version__
from .lm.models.config import GPTConfig
from .lm.training.recipes import LMRecipe, SFTRecipe
from .recipes import Recipe, default_recipe
from .serving.config import ServeConfig, options


class _Names:
    """The names of a registry (``"data.DATASETS"``), read when argparse first needs them:
    for checking a value or printing help, not when the parser is built."""

    def __init__(self, where: str, *extra: str):
        self.where, self.extra = where, extra

    def _names(self) -> list[str]:
        module, attr = self.where.rsplit(".", 1)
        return [*getattr(importlib.import_module(f".{module}", __package__), attr), *self.extra]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def _doctor(_args) -> int:
    from .doctor import report

    rows = report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _train(args) -> int:
    from .artifact import save_artifact
    from .callbacks import PrintProgress
    from .data import DatasetUnavailableError, load_dataset
    from .device import DeviceNotAvailableError, seed_everything
    from .evaluation import evaluate
    from .models import build_model
    from .train import fit

    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks: torchrun, then us
        from .distributed import RankFailedError, launch

        try:
            launch("maaskit", nproc=args.nproc_per_node, args=_without_nproc(args.argv), timeout=24 * 3600)
        except (ValueError, RankFailedError) as err:
            print(f"maaskit train: {err}", file=sys.stderr)
            return 2
        return 0
    from . import distributed

    device = distributed.setup(args.device)  # under torchrun: join the process group
    main_rank = distributed.is_main()
    try:
        data = load_dataset(args.dataset)
        seed_everything(args.seed)
        model = build_model(args.model, data.in_shape, data.num_classes)
        if main_rank:
            ranks = distributed.world_size()
            print(f"training {args.model} on {data!r}" + (f" with {ranks} ranks" if ranks > 1 else ""), flush=True)
        recipe = Recipe(**{name: getattr(args, name) for name in Recipe.__dataclass_fields__})  # as given
        history = fit(
            model,
            data,
            **recipe.fit_kwargs(),
            device=device,
            seed=args.seed,
            compile=args.compile,
            callbacks=[PrintProgress()],
        )  # (the callbacks run on rank 0 only)
    except (ValueError, DatasetUnavailableError, DeviceNotAvailableError) as err:
        print(f"maaskit train: {err}", file=sys.stderr)
        distributed.teardown(together=False)
        return 2
    distributed.teardown()  # all ranks together
    if not main_rank:
        distributed.leave()
        return 0  # rank 0 evaluates and writes the artifact
    result = evaluate(model, data)
    print(f"test accuracy {result.accuracy:.2%} (loss {result.loss:.4f}) on {len(result.labels)} images")
    metrics = {
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "epochs": len(history.records),
        "wall_time_s": history.last.get("wall_time"),
    }
    out = save_artifact(model, args.out, data, name=f"{args.model}-{data.name}", metrics=metrics)
    print(f"saved to {out}/ (model.safetensors, manifest.json)")
    distributed.leave()
    return 0


def _lm_train(args) -> int:
    from .device import DeviceNotAvailableError
    from .lm.training.pretrain import train_language_model

    shape = GPTConfig(
        vocab_size=args.vocab_size, context=args.context, layers=args.layers, heads=args.heads, width=args.width
    )
    recipe = LMRecipe(model=shape, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    try:
        trained = train_language_model(
            args.corpus, recipe=recipe, device=args.device, seed=args.seed, out=args.out, name=args.name,
            progress=sys.stdout,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, DeviceNotAvailableError) as err:
        print(f"maaskit lm train: {err}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in trained.model.parameters())
    print(f"{params:,} parameters trained on {trained.data!r}")
    print(
        f"saved to {args.out}/ (model.safetensors, tokenizer.json, manifest.json); serve it: maaskit serve {args.out}"
    )
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line again, less --nproc-per-node (the ranks must not launch ranks of their own)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--nproc-per-node":
            skip = True
        elif not word.startswith("--nproc-per-node="):
            out.append(word)
    return out


def _serve(args) -> int:
    from .artifact import ArtifactError
    from .serving.dataplane import LANGUAGE_MODEL, loading_thread_setup
    from .serving.runner import serve_config, serve_workers

    loading_thread_setup()  # this process only serves: its forward passes run on threads of their own

    config = ServeConfig(
        **{f.name: getattr(args, f.name) for f in fields(ServeConfig) if f.name != "token"},
        token=args.token or os.environ.get("MAASKIT_TOKEN"),
    )
    if not args.artifacts and not args.model_repository:
        print("maaskit serve: give artifact directories, or --model-repository DIR", file=sys.stderr)
        return 2
    try:
        if config.workers > 1:
            ready = lambda url: print(f"{config.workers} workers serving at {url}; docs at {url}/docs", flush=True)
            serve_workers(args.artifacts, config, on_ready=ready)
            return 0
        server = serve_config(config, *args.artifacts)
    except (ValueError, ArtifactError, OSError) as err:
        print(f"maaskit serve: {err}", file=sys.stderr)
        return 2
    for m in server.repository.index():
        if server.repository.kind_of(m["name"]) == LANGUAGE_MODEL:
            print(f"serving language model {m['name']}: {server.url}/v1/chat/completions (OpenAI)", flush=True)
        else:
            print(f"serving {m['name']} version {m['version']}: {server.url}/v2/models/{m['name']}/infer", flush=True)
    print(
        f"OpenAPI docs at {server.url}/docs; Ctrl-C or SIGTERM stops after the requests in flight "
        f"(at most {config.drain_seconds:g} s; twice: at once)",
        flush=True,
    )
    server.wait()
    return 0


def _predict(args) -> int:
    import numpy as np

    from .images import read_image
    from .serving.client import Client, EndpointError

    try:
        images = np.stack([read_image(path) for path in args.files])
        with Client(args.url, token=args.token, protocol="v2") as client:
            results = client.predict(args.model, images, top_k=args.top_k)
    except (EndpointError, OSError, ValueError) as err:
        print(f"maaskit predict: {err}", file=sys.stderr)
        return 2
    for path, top in zip(args.files, results):
        print(f"{path}: " + ", ".join(f"{label} {p:.1%}" for label, p in top))
    return 0


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option says its default, once: not where its help says it already, nor when there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    helpful = _Defaults
    parser = argparse.ArgumentParser(
        prog="maaskit", description="Models as a service, from the forward pass to the endpoint."
    )
    parser.add_argument("--version", action="version", version=f"maaskit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="report versions, devices, the widgets extension and the dataset cache")
    doctor.set_defaults(func=_doctor)

    for add in (_add_train, _add_serve, _add_lm, _add_predict):  # one function per command
        add(sub, helpful)
    return parser


def _add_train(sub: Any, helpful: type[argparse.HelpFormatter]) -> None:
    """``maaskit train``: its options default to the recipe of notebooks 04-06."""
    recipe = default_recipe("digits")  # the defaults: maaskit.recipes, shared with the notebooks and the dashboard
    train = sub.add_parser(
        "train",
        help="train a model headless and save it as an artifact",
        formatter_class=helpful,
        description="Train a model, print the test accuracy, and save it to --out.",
    )
    train.add_argument(
        "--dataset", default="digits", choices=_Names("data.DATASETS"), metavar="NAME", help="the dataset: %(choices)s"
    )
    train.add_argument(
        "--model",
        default=recipe.model,
        choices=_Names("models.IMAGE_MODELS"),
        metavar="NAME",
        help="the architecture: %(choices)s",
    )
    train.add_argument("--epochs", type=int, default=recipe.epochs, help="passes over the training split")
    train.add_argument(
        "--optimizer", default=recipe.optimizer, choices=_Names("train.OPTIMIZERS"), metavar="NAME", help="%(choices)s"
    )
    train.add_argument("--lr", type=float, default=recipe.lr, help="learning rate (the peak, under onecycle)")
    train.add_argument("--batch-size", type=int, default=recipe.batch_size, help="images per optimizer step")
    train.add_argument(
        "--scheduler",
        default=recipe.scheduler or "none",
        choices=_Names("train.SCHEDULERS", "none"),
        metavar="NAME",
        help="learning-rate schedule, stepped every batch: %(choices)s",
    )
    train.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=recipe.augment,
        help="random crops of the training images (and flips for cifar10)",
    )
    train.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--seed", type=int, default=0, help="seeds the weights, the shuffle and the augmentation")
    train.add_argument("--out", required=True, help="directory for model.safetensors and manifest.json")
    train.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel ranks on this machine: launches torchrun (or run under torchrun yourself)",
    )
    train.set_defaults(func=_train)


def _add_serve(sub: Any, helpful: type[argparse.HelpFormatter]) -> None:
    """``maaskit serve``: its options default to ServeConfig's."""
    serve = sub.add_parser(
        "serve",
        help="serve artifacts over the V2 (KServe/Triton) and V1 (TF Serving) APIs",
        description="Serve one or more artifact directories until Ctrl-C or SIGTERM (both drain first).",
        formatter_class=helpful,
    )
    serve.add_argument(
        "artifacts",
        nargs="*",
        metavar="DIR",
        help="directories written by maaskit train or maaskit lm train, or Hugging Face model folders (Llama family)",
    )
    for option in options():  # every other option is a ServeConfig field: its default, its help, once
        if option.metadata["cli"]:
            serve.add_argument(f"--{option.name.replace('_', '-')}", **_argument(option))
    serve.set_defaults(func=_serve, **{o.name: o.default for o in options() if not o.metadata["cli"]})


def _argument(option: Field) -> dict[str, Any]:
    """argparse's settings for a ServeConfig field: its type from the annotation, its default and help."""
    settings = {k: v for k, v in option.metadata.items() if k != "cli"}
    kind = str(option.type).replace(" | None", "")
    if kind == "bool":  # on/off; an option whose default is None (decided later) takes --no-NAME too
        return {"action": argparse.BooleanOptionalAction if option.default is None else "store_true", **settings}
    return {"type": {"int": int, "float": float, "str": str}[kind], "default": option.default, **settings}


def _lm_finetune(args) -> int:
    from .device import DeviceNotAvailableError
    from .lm.training.sft import finetune

    recipe = SFTRecipe(examples=args.examples, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    try:
        tuned = finetune(args.base, task=args.task, recipe=recipe, device=args.device, seed=args.seed, out=args.out,
                         name=args.name, progress=sys.stdout)  # fmt: skip
    except (ValueError, FileNotFoundError, DeviceNotAvailableError) as err:
        print(f"maaskit lm finetune: {err}", file=sys.stderr)
        return 2
    print(f"fine-tuned on {tuned.data!r}")
    print(f"saved to {args.out}/; serve it: maaskit serve {args.out}, then: maaskit lm eval http://127.0.0.1:8000 "
          f"--model {args.name} --task {args.task}")  # fmt: skip
    return 0


def _lm_eval(args) -> int:
    from .lm.training.harness import evaluate_endpoint

    try:
        report = evaluate_endpoint(args.url, args.api_key, args.model, args.task, n=args.n,
                                   concurrency=args.concurrency, constrained=not args.no_constraints, seed=args.seed,
                                   progress=True)  # fmt: skip
    except ValueError as err:
        print(f"maaskit lm eval: {err}", file=sys.stderr)
        return 2
    print(report)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    return 0


def _add_lm_assistant(lm_sub: Any, helpful: type[argparse.HelpFormatter]) -> None:
    """``maaskit lm finetune``, ``maaskit lm eval`` and ``maaskit lm export``."""
    from .lm.training.tasks import TASKS

    recipe = SFTRecipe()
    tune = lm_sub.add_parser(
        "finetune", help="fine-tune a GPT into an assistant that answers in turns and calls tools",
        formatter_class=helpful,
        description="Add the chat tokens to a trained GPT's tokenizer, fine-tune it on --task's conversations "
        "(the loss on the assistant's tokens only) and save it to --out.",
    )  # fmt: skip
    tune.add_argument("--from", dest="base", metavar="DIR", help="a maaskit lm train directory (default: a new model)")
    tune.add_argument("--task", default="assistant", choices=sorted(TASKS), help="%(choices)s")
    tune.add_argument("--out", required=True, help="directory for the fine-tuned model")
    tune.add_argument("--name", default="assistant", help="the model's name when served")
    for option, value, what in (("examples", recipe.examples, "training conversations"),
                                ("epochs", recipe.epochs, "passes over them"),
                                ("batch-size", recipe.batch_size, "rows per optimizer step")):  # fmt: skip
        tune.add_argument(f"--{option}", type=int, default=value, help=what)
    tune.add_argument("--lr", type=float, default=recipe.lr, help="peak learning rate (AdamW, cosine)")
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    tune.add_argument("--seed", type=int, default=0, help="seeds the examples, the weights' new rows and the batches")
    tune.set_defaults(func=_lm_finetune)
    ev = lm_sub.add_parser(
        "eval", help="grade a model on a task's held-out requests through its OpenAI-compatible API",
        formatter_class=helpful,
        description="Send --task's held-out requests to URL (maaskit serve, vLLM, a hosted API) with the official "
        "openai client, run the tools the model calls, and print exact-match accuracy with a 95%% interval, "
        "schema and tool-call validity, tokens and latency.",
    )  # fmt: skip
    ev.add_argument("url", help="the endpoint, e.g. http://127.0.0.1:8000 (/v1 is added)")
    ev.add_argument("--model", required=True, help="the model's name at the endpoint")
    ev.add_argument("--task", default="assistant", choices=sorted(TASKS), help="%(choices)s")
    ev.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", "none"),
        help='the key to send (default: $OPENAI_API_KEY, else "none")',
    )
    ev.add_argument("-n", type=int, default=300, help="held-out requests")
    ev.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ev.add_argument("--seed", type=int, default=0, help="which held-out requests")
    ev.add_argument("--no-constraints", action="store_true", help="send no response_format (the model on its own)")
    ev.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ev.set_defaults(func=_lm_eval)
    export = lm_sub.add_parser(
        "export", help="write a trained GPT as a Hugging Face folder (transformers, vLLM, TGI load it)",
        formatter_class=helpful,
        description="Write DIR's GPT to OUT in GPT-2's Hugging Face layout: config.json, model.safetensors, "
        "tokenizer.json, tokenizer_config.json with the chat template, generation_config.json with the stop tokens.",
    )  # fmt: skip
    export.add_argument("directory", metavar="DIR", help="a maaskit lm train or lm finetune directory")
    export.add_argument("out", metavar="OUT", help="the folder to write")
    export.set_defaults(func=_lm_export)


def _lm_export(args) -> int:
    import warnings

    from .artifact import ArtifactError
    from .lm.formats.artifact import load_language_model
    from .lm.formats.export import export_gpt2

    try:
        model, tokenizer, _ = load_language_model(args.directory)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_gpt2(model, tokenizer, args.out)  # type: ignore[arg-type]
    except (ArtifactError, TypeError, OSError) as err:
        print(f"maaskit lm export: {err}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"wrote {args.out}/ (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, "
          f"generation_config.json): transformers' from_pretrained and vllm serve read it")  # fmt: skip
    return 0


def _add_lm(sub: Any, helpful: type[argparse.HelpFormatter]) -> None:
    """``maaskit lm train``, ``finetune``, ``eval`` and ``export``: train's options default to LMRecipe's."""
    lm = sub.add_parser("lm", help="language models: train a small GPT, fine-tune it, evaluate it, export it")
    lm_sub = lm.add_subparsers(dest="lm_command", metavar="COMMAND", help="train, finetune, eval, export")
    lm_train = lm_sub.add_parser(
        "train",
        help="train a GPT on a text and save it with its tokenizer",
        formatter_class=helpful,
        description="Train a byte-level BPE and a small GPT on --corpus (default: the Python docs that ship "
        "with CPython), print progress and text samples, and save both to --out (serve it with maaskit serve).",
    )
    lm_recipe = LMRecipe()
    shape = lm_recipe.model
    lm_train.add_argument("--corpus", metavar="FILE", help="a UTF-8 text file (default: Python's bundled docs)")
    lm_train.add_argument("--out", required=True, help="directory for the weights, tokenizer.json and manifest.json")
    lm_train.add_argument("--name", default="gpt", help="the model's name when served")
    for option, value, what in (
        ("vocab-size", shape.vocab_size, "BPE vocabulary (256 bytes, end-of-text, merges)"),
        ("context", shape.context, "tokens the model sees at once"),
        ("layers", shape.layers, "transformer blocks"),
        ("heads", shape.heads, "attention heads per block"),
        ("width", shape.width, "embedding width"),
        ("epochs", lm_recipe.epochs, "passes over the training tokens"),
        ("batch-size", lm_recipe.batch_size, "windows per optimizer step"),
    ):
        lm_train.add_argument(f"--{option}", type=int, default=value, help=what)
    lm_train.add_argument("--lr", type=float, default=lm_recipe.lr, help="peak learning rate (AdamW, cosine)")
    lm_train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    lm_train.add_argument("--seed", type=int, default=0, help="seeds the weights and the batches")
    lm_train.set_defaults(func=_lm_train)
    _add_lm_assistant(lm_sub, helpful)

    def lm_help(_args: argparse.Namespace) -> int:
        lm.print_help(sys.stderr)
        return 2

    lm.set_defaults(func=lm_help)


def _add_predict(sub: Any, helpful: type[argparse.HelpFormatter]) -> None:
    """``maaskit predict``."""
    predict = sub.add_parser(
        "predict", help="send images to an endpoint and print the top classes", formatter_class=helpful
    )
    predict.add_argument("url", help="the endpoint's base URL, e.g. http://127.0.0.1:8000")
    predict.add_argument("files", nargs="+", metavar="FILE", help="image files or .npy arrays (C x H x W)")
    predict.add_argument("--model", required=True, help="the model's name on the endpoint")
    predict.add_argument("--token", default=None, help="bearer token, if the endpoint wants one")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes to print per image")
    predict.set_defaults(func=_predict)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if getattr(args, "scheduler", None) == "none":
        args.scheduler = None
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
