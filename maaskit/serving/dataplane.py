"""The data plane: the models being served, their versions and readiness, and the batcher in
front of each. No HTTP here: it raises the domain errors of :mod:`.errors` (the app answers them in
each protocol's shape), and the routers (``rest_v2``, ``rest_v1``, ``rest_openai``) translate their
protocols into calls on this module, as KServe's and MLServer's data planes do.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union, cast

import numpy as np
import torch
from tokenizers import Tokenizer

from ..artifact import MANIFEST, ArtifactError, load_artifact, make_manifest, read_manifest
from ..device import pick_device
from ..explain import MAX_MAGNITUDE
from ..models import MODELS
from ..normalization import Normalization
from .batching import DynamicBatcher
from .config import ServeConfig
from .errors import Conflict, InvalidInput, ModelFailed, ModelNotFound, NotReady, ServingError
from .explainer import ExplainerProcess

if TYPE_CHECKING:
    from ..data import ImageDataset

__all__ = [
    "CLASSIFIER",
    "LANGUAGE_MODEL",
    "ModelRepository",
    "ModelSource",
    "Served",
    "ServedLanguageModel",
    "ServedModel",
]

CLASSIFIER, LANGUAGE_MODEL = "classifier", "language model"  # the kinds of model served

# what can be served: an artifact directory, a model from build_model (with data=), (model, manifest),
# or a language model as (model, tokenizer)
ModelSource = Union[str, Path, torch.nn.Module, tuple[torch.nn.Module, dict], tuple[torch.nn.Module, Tokenizer]]  # noqa: UP007 (3.10 needs Union at run time)

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class ServedModel:
    """One version of one classifier: the network, its manifest, and the batcher in front of it."""

    kind: ClassVar[str] = CLASSIFIER
    name: str
    version: str
    model: torch.nn.Module
    manifest: dict
    device: torch.device
    config: ServeConfig = field(default_factory=ServeConfig)
    thread_setup: Callable[[], None] = field(default=lambda: forward_thread_setup())
    # f(this model, batch size, forward seconds, seconds each request queued) after each pass
    listeners: list[Callable[[ServedModel, int, float, list[float]], None]] = field(default_factory=list)

    def __post_init__(self):
        spec = self.manifest["inputs"][0]
        self.input_name, self.input_shape = spec["name"], spec["shape"]
        self.output_name = self.manifest["outputs"][0]["name"]
        self.classes: list[str] = self.manifest["classes"]
        self.normalization = Normalization.from_manifest(self.manifest["normalization"])
        self.model = self.model.to(self.device).eval()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # the latest forward passes' sizes
        self._explainer = ExplainerProcess(self.model, self.manifest, self.device)
        c = self.config
        self.batcher = DynamicBatcher(
            self._forward,
            max_batch_size=c.max_batch_size,
            max_delay_ms=c.max_delay_ms,
            max_queue=c.max_queue,
            inline=c.inline,
            on_batch=self._seen_batch,
            thread_setup=self.thread_setup,
        )

    def _seen_batch(self, size: int, seconds: float, queued: list[float]) -> None:
        self.batch_sizes.append(size)
        for listener in self.listeners:
            listener(self, size, seconds, queued)

    @torch.inference_mode()
    def _forward(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()

    def prepare(self, array: np.ndarray, datatype: str, name: Any) -> np.ndarray:
        """Check an input against the manifest and make it the model's normalized FP32 batch.
        UINT8 pixels are accepted too and normalized here, as the manifest says."""
        if name != self.input_name:
            raise InvalidInput(f"model {self.name!r} takes one input named {self.input_name!r}, got {name!r:.60}")
        expected = self.input_shape[1:]
        if array.ndim != len(self.input_shape) or list(array.shape[1:]) != expected or array.shape[0] < 1:
            raise InvalidInput(
                f"input {name!r} must have shape [N, {', '.join(map(str, expected))}] with N >= 1, "
                f"got {list(array.shape)}"
            )
        if datatype == "UINT8":
            return self.normalization.to_float(array)
        if datatype != "FP32":
            raise InvalidInput(f"input {name!r} must be FP32 (normalized) or UINT8 (pixels), got {datatype}")
        peak = np.abs(array).max() if array.size else 0.0  # one pass: NaN or infinity anywhere shows here
        if not np.isfinite(peak):
            raise InvalidInput(f"input {name!r} holds values that are not finite numbers (NaN or infinity)")
        if peak > MAX_MAGNITUDE:  # far past any normalized image: it would overflow
            raise InvalidInput(
                f"input {name!r} holds values beyond ±{MAX_MAGNITUDE:g}; a normalized image's are a few units "
                "(send UINT8 pixels to have them normalized here)"
            )
        return np.require(array, np.float32, ["C", "W"])  # binary inputs arrive read-only

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """The logits of a prepared batch, through the batcher; a non-finite output is the model's failure
        (its inputs were checked), never an answer."""
        logits = await self.batcher.submit(x)
        if not np.isfinite(logits).all():
            raise ModelFailed(
                f"model {self.name!r} gave NaN or infinite outputs for this input: its weights or its arithmetic failed"
            )
        return logits

    async def explain(self, x: np.ndarray, method: str, target: int | list[int] | None, **params: Any) -> tuple:
        """Attributions of a prepared batch and the classes explained. In a process of their own
        at the lowest priority (see :mod:`.explainer`), never in the batcher: an explanation
        costs tens of forward passes and must not hold up plain requests, nor share their batches."""
        if target is not None:
            wanted = [target] if isinstance(target, int) else target
            if not isinstance(target, int) and len(wanted) != len(x):
                raise InvalidInput(f"target must be one class or one per instance ({len(x)}), got {len(wanted)}")
            if max(wanted) >= len(self.classes):
                raise InvalidInput(f"target classes are 0 to {len(self.classes) - 1}, got {max(wanted)}")
        try:
            return await self._explainer.explain(x, method, target, params)
        except BrokenProcessPool:
            raise NotReady("the explanation process stopped; try again", retry_after=1) from None

    def close(self) -> None:
        """Stop taking requests; stop the explanation process if one runs."""
        self.batcher.close()
        self._explainer.close()

    def metadata(self, versions: list[str]) -> dict:
        return {
            "name": self.name,
            "versions": versions,
            "platform": "pytorch_maaskit",
            "inputs": self.manifest["inputs"],
            "outputs": self.manifest["outputs"],
            "parameters": {"classes": self.classes},
        }


class ServedLanguageModel:
    """One version of a language model: the model, its tokenizer, and the continuous-batching engine
    in front of it."""

    kind: ClassVar[str] = LANGUAGE_MODEL

    def __init__(self, name: str, model: torch.nn.Module, tokenizer: Any, manifest: dict, device: torch.device,
                 config: ServeConfig, *, version: str = "1", owned: bool = False):  # fmt: skip
        from ..lm.formats.prompts import chat_prompts
        from ..lm.models.base import CausalLM
        from ..lm.runtime.backend import build_engine
        from ..lm.runtime.constrain import Guide

        if not isinstance(model, CausalLM):
            raise TypeError(f"a language model is a maaskit.lm GPT, Llama or Gemma3, got {type(model).__name__}")
        self.name, self.version, self.tokenizer, self.manifest = name, version, tokenizer, manifest
        self.created = int(time.time())
        self.end_of_text: int = manifest["tokenizer"]["end_of_text"]
        # how a conversation becomes its prompt: its chat tokens, its template, or plain lines (lm/formats/prompts.py)
        self.prompts = chat_prompts(tokenizer, manifest)
        # a fine-tuned model has the chat tokens: its turns end with <|end|> and it can call tools
        self.chat = self.prompts.chat
        # a Hugging Face model: the stop tokens its generation config lists
        self.stop_tokens: tuple[int, ...] = tuple(manifest["tokenizer"].get("stop_tokens") or ()) or (
            (self.end_of_text,) if self.chat is None else (self.end_of_text, self.chat.end)
        )
        guide = Guide(tokenizer, model.vocab_size, self.stop_tokens[-1])

        def thread_setup(weights: int) -> Callable[[], None]:
            return partial(forward_thread_setup, config.workers, threads=config.threads, weights=weights)

        self.engine = build_engine(model, device, config.engine(), guide=guide, thread_setup=thread_setup, owned=owned)
        self.slots = self.engine.max_sequences

    @property
    def context(self) -> int:
        return self.engine.context

    def model_object(self) -> dict:
        """OpenAI's description of this model (``GET /v1/models``)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "maaskit"}

    def metadata(self, versions: list[str]) -> dict:
        """V2's model metadata: token ids in, next-token logits out; generation is OpenAI's routes'."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": "pytorch_maaskit_lm",
            "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, self.engine.model.vocab_size]}],
            "parameters": {"context": self.context, "routes": ["/v1/completions", "/v1/chat/completions"]},
        }

    def close(self) -> None:
        self.engine.close()


# a language model whose decode step reads at least this many bytes of weights runs its engine on
# every core (forward_threads): below it, its steps are short and the event loop's work is not small beside them
ALL_CORES_FROM = 32 * 2**20


def forward_threads(processes: int = 1, *, weights: int = 0) -> int:
    """PyTorch threads for a server's forward passes, shared among the server's ``processes``
    (``--workers``): all cores but one, which the event loop needs; all of them for a language model
    whose decode steps read ``weights`` bytes of at least :data:`ALL_CORES_FROM`: a small model's
    pass is short and a second thread costs more than it gives (OpenMP teams collide), while a large
    language model's decode step is long and streaming its tokens takes the event loop little of it
    (``benchmarks/serving.py``, ``benchmarks/open_models.py``; figures: benchmarks/FIGURES.md, "threads")."""
    cores = os.cpu_count() or 2
    return max(1, (cores if weights >= ALL_CORES_FROM else cores - 1) // processes)


def loading_thread_setup() -> None:
    """Run in a server process's main thread before it loads models: one PyTorch thread there, so that
    only the threads that run forward passes have OpenMP teams. Each thread that runs a parallel
    region gets a team of its own, and once teams' threads outnumber the cores, libgomp stops them
    spinning between regions: each of a step's hundred-odd regions then waits for its threads to
    wake. A language model's steps on its engine thread ran 1.4x slower once the main thread had
    loaded a model on two threads (benchmarks/FIGURES.md, "threads")."""
    set_threads(1)


def forward_thread_setup(processes: int = 1, threads: int | None = None, *, weights: int = 0) -> None:
    """Run in each thread that runs forward passes: PyTorch's thread count is per thread (``threads``:
    the server's ``--threads``, else :func:`forward_threads`)."""
    set_threads(threads or forward_threads(processes, weights=weights))


def set_threads(count: int) -> None:
    """This thread's PyTorch thread count, for good. PyTorch's count is per thread, but a thread's first
    parallel operation sets it to the process's last ``torch.set_num_threads``, from whichever thread: in
    a server, the event loop's thread set 1 after the engine's set 2, the engine's thread ran on one, and
    its compiled graphs were built again for one thread (a 512-token prompt took 1.7x as long;
    benchmarks/FIGURES.md, "threads: a thread's own count"). ``torch.get_num_threads`` makes that first
    setting now; the count set after it stays."""
    torch.get_num_threads()
    torch.set_num_threads(count)


def _is_language_model(source: Any) -> bool:
    """A source the language-model layer reads: a folder of ``maaskit lm train``'s, a Hugging Face model
    folder, or a ``(model, tokenizer)`` pair."""
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], Tokenizer):
        return True
    if not isinstance(source, (str, Path)):
        return False
    from ..lm.formats.artifact import TASK
    from ..lm.formats.hf import is_huggingface_folder

    return is_huggingface_folder(source) or read_manifest(source).get("task") == TASK


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only")
    return name


Served = Union[ServedModel, ServedLanguageModel]  # noqa: UP007 (3.10 needs Union at run time)


class ModelRepository:
    """Every served model, of every kind, in one registry: by name, then version. ``add`` while serving
    puts in a new version without a restart; requests without a version get the highest. A name holds
    models of one kind (a classifier, a language model); each protocol asks for the kind it serves.

    With a ``root`` directory (Triton's model repository: one folder per model, named as the model,
    any folder ``maaskit serve`` takes), ``index`` lists what could be served and ``load``/``unload``
    change what is. A model is not ready while it loads: readiness and inference answer 503 until it is.
    """

    def __init__(
        self, *, device: str | torch.device = "auto", config: ServeConfig | None = None, root: str | Path | None = None
    ):
        self.device = pick_device(device)
        self.config = config or ServeConfig()
        self.thread_setup: Callable[[], None] = partial(
            forward_thread_setup, self.config.workers, threads=self.config.threads
        )
        self.root = Path(root) if root is not None else None
        self._served: dict[str, dict[str, Served]] = {}  # name -> version -> model
        self._loading: set[str] = set()
        self.draining = False  # the server is stopping (see .drain): not ready
        self._lock = threading.Lock()
        self.listeners: list[Callable[[ServedModel, int, float, list[float]], None]] = []  # every pass of every model

    def add(
        self,
        source: ModelSource,
        *,
        name: str | None = None,
        version: str | int | None = None,
        data: ImageDataset | None = None,
    ) -> Served:
        """Serve a folder (a maaskit artifact, a language model's from ``maaskit lm train``, a Hugging Face
        model folder), a ``(model, manifest)`` pair as :func:`load_artifact` returns, a model from
        ``build_model`` with the ``data`` (an ImageDataset) it was trained on, or a language model as a
        ``(model, tokenizer)`` pair. Returns the new version; one of the same number is replaced."""
        return self._put(self._build(source, name, data), version)

    def _build(self, source: ModelSource, name: str | None = None, data: ImageDataset | None = None) -> Served:
        """The served model for ``source``, of its kind (loaded, its engine or batcher ready), not yet listed."""
        if _is_language_model(source):
            return self._language_model(source, name)
        model, manifest = _classifier(source, name, data)
        return ServedModel(_check_name(name or manifest["name"]), "", model, manifest, self.device, self.config,
                           self.thread_setup, self.listeners)  # fmt: skip

    def _put(self, served: Served, version: str | int | None, *, alone: bool = False) -> Served:
        """List ``served`` under its name (``alone``: as the only version); what it replaces is closed."""
        with self._lock:
            versions = self._served.setdefault(served.name, {})
            others = {v.kind for v in versions.values()} - {served.kind}
            if others and not alone:
                served.close()
                raise InvalidInput(
                    f"{served.name!r} is served as a {others.pop()}; give the {served.kind} another name"
                )
            served.version = str(version) if version is not None else str(max(map(int, versions), default=0) + 1)
            replaced = (
                list(versions.values()) if alone else [versions[served.version]] if served.version in versions else []
            )
            if alone:
                versions.clear()
            versions[served.version] = served
        for old in replaced:
            old.close()
        return served

    def _language_model(self, source: ModelSource, name: str | None) -> ServedLanguageModel:
        from ..lm.formats.artifact import language_model_manifest, load_language_model

        if isinstance(source, (str, Path)):
            model, tokenizer, manifest = load_language_model(source, context=self.config.context)
        else:
            model, tokenizer = cast(tuple[Any, Tokenizer], source)
            manifest = language_model_manifest(model, tokenizer, name=name or "gpt")
        return ServedLanguageModel(_check_name(name or manifest["name"]), model, tokenizer, manifest, self.device,
                                   self.config, owned=isinstance(source, (str, Path)))  # fmt: skip

    def get(self, name: str, version: str | None = None, *, kind: str | None = None) -> Served:
        """The model to run (of ``kind``, if given); 404 if there is none by that name or version (or it is
        of another kind), 503 while it loads."""
        versions = self._served.get(name)
        if not versions:
            if name in self._loading:
                raise NotReady(f"model {name!r} is loading; try again shortly", retry_after=1)
            if kind == LANGUAGE_MODEL:  # OpenAI's words for it
                known = ", ".join(self.names(kind)) or "none"
                raise ModelNotFound(f"the model {name!r} does not exist; this server's language models: {known}")
            raise ModelNotFound(f"unknown model {name!r}; this server has: {', '.join(self.names()) or 'none'}")
        if version is not None and version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it has {', '.join(self.versions(name))}")
        served = versions[version if version is not None else max(versions, key=int)]
        if kind is not None and served.kind != kind:
            where = "/v1/completions and /v1/chat/completions" if served.kind == LANGUAGE_MODEL else "V2 and V1"
            raise ModelNotFound(f"{name!r} is a {served.kind}: it answers {where}")
        return served

    def classifier(self, name: str, version: str | None = None) -> ServedModel:
        """The classifier V2 and V1 run (see :meth:`get`)."""
        served = self.get(name, version, kind=CLASSIFIER)
        assert isinstance(served, ServedModel)
        return served

    def language_model(self, name: str) -> ServedLanguageModel:
        """The language model OpenAI's routes run: its highest version (see :meth:`get`)."""
        served = self.get(name, kind=LANGUAGE_MODEL)
        assert isinstance(served, ServedLanguageModel)
        return served

    def names(self, kind: str | None = None) -> list[str]:
        """The names served, of ``kind`` or all."""
        return [n for n, versions in sorted(self._served.items()) if kind is None or self._kind(versions) == kind]

    def classifiers(self) -> dict[str, ServedModel]:
        """Each classifier's highest version, by name (what V2's and V1's documents show)."""
        return {n: self.classifier(n) for n in self.names(CLASSIFIER)}

    def language_models(self) -> dict[str, ServedLanguageModel]:
        """Each language model's highest version, by name (``GET /v1/models``, OpenAI's document)."""
        return {n: self.language_model(n) for n in self.names(LANGUAGE_MODEL)}

    def kind_of(self, name: str) -> str | None:
        versions = self._served.get(name)
        return self._kind(versions) if versions else None

    @staticmethod
    def _kind(versions: dict[str, Served]) -> str:
        return next(iter(versions.values())).kind

    def versions(self, name: str) -> list[str]:
        return sorted(self._served.get(name, {}), key=int)

    @property
    def ready(self) -> bool:
        """Every model asked for is loaded and the server is not stopping (Triton's server readiness)."""
        return not self._loading and not self.draining

    def interrupt(self, reason: str) -> None:
        """End every language model's generation now (the drain's deadline): each stream hears ``reason``."""
        for served in self._all():
            if isinstance(served, ServedLanguageModel):
                served.engine.interrupt(reason)

    def _all(self) -> list[Served]:
        with self._lock:
            return [served for versions in self._served.values() for served in versions.values()]

    def index(self) -> list[dict]:
        """Each model once per version: served (``READY``), loading, and, with a ``root``, what could be
        (``UNAVAILABLE``)."""
        entries = [{"name": n, "version": v, "state": "READY"} for n in self.names() for v in self.versions(n)]
        entries += [{"name": n, "state": "LOADING"} for n in sorted(self._loading - set(self._served))]
        for name in self.available():
            if name not in self._served and name not in self._loading:
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
        return entries

    def available(self) -> list[str]:
        """The folders under ``root`` that can be served (maaskit artifacts, Hugging Face model folders), by name."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _NAME.fullmatch(p.name) and _servable(p))

    async def load(self, name: str) -> None:
        """Load (or reload) ``root/name``, of any kind, without blocking the requests served meanwhile;
        it becomes version 1, and the versions served before are closed."""
        if self.root is None:
            raise InvalidInput("this server has no model repository to load from (serve with model_repository=DIR)")
        if name not in self.available():
            raise ModelNotFound(f"no model {name!r} in the repository; it has: {', '.join(self.available()) or 'none'}")
        with self._lock:
            if name in self._loading:
                raise Conflict(f"model {name!r} is already loading")
            self._loading.add(name)
        try:  # the versions served so far answer until the new one is ready
            try:
                served = await asyncio.to_thread(self._build, self.root / name, name)
            except (ServingError, ArtifactError, OSError, ValueError, KeyError, TypeError) as err:
                raise InvalidInput(f"model {name!r} could not be loaded: {err}") from None
            self._put(served, 1, alone=True)
        finally:
            self._loading.discard(name)

    def _take(self, name: str) -> list[Served]:
        with self._lock:
            return list(self._served.pop(name, {}).values())

    def unload(self, name: str) -> None:
        """Stop serving every version of ``name``, of any kind."""
        gone = self._take(name)
        if not gone:
            raise ModelNotFound(f"model {name!r} is not loaded")
        for served in gone:
            served.close()

    def close(self) -> None:
        """Close every model (their explanation processes and engines stop): the server has stopped."""
        with self._lock:
            served, self._served = self._served, {}
        for versions in served.values():
            for one in versions.values():
                one.close()


def check_source(folder: str | Path) -> None:
    """Say what is wrong with a folder to serve, reading only its description (the manifest, or a Hugging
    Face ``config.json``): no weights loaded, nothing compiled. ``serve_workers`` checks its folders so
    before each worker loads them, so that a typo fails once, at once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder")
    if _is_language_model(folder):
        from ..lm.formats.hf import check_hf, is_huggingface_folder

        if is_huggingface_folder(folder):
            check_hf(folder)
        elif not (folder / "tokenizer.json").is_file():
            raise ArtifactError(f"{folder} is a language model without its tokenizer.json")
        return
    manifest = read_manifest(folder)
    if not manifest:
        raise ArtifactError(f"{folder} is not a maaskit artifact: {MANIFEST} is missing or not JSON")
    architecture = manifest.get("architecture") or {}
    if architecture.get("name") not in MODELS:
        raise ArtifactError(f"{folder}: unknown architecture {architecture.get('name')!r}")


def _servable(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or _is_language_model(folder)


def _classifier(source: ModelSource, name: str | None, data: ImageDataset | None) -> tuple[torch.nn.Module, dict]:
    """``(model, manifest)`` of a classifier to serve, from any source :meth:`ModelRepository.add` takes."""
    if isinstance(source, (str, Path)):
        return load_artifact(source)
    if isinstance(source, torch.nn.Module):
        if data is None:
            raise ValueError("serving a model needs data= (its ImageDataset: class names and normalization)")
        return source, make_manifest(source, data, name=name)
    if (
        isinstance(source, tuple)
        and len(source) == 2
        and isinstance(source[0], torch.nn.Module)
        and isinstance(source[1], dict)
    ):
        return source[0], source[1]
    raise TypeError(
        f"cannot serve a {type(source).__name__}: pass an artifact directory, a model from "
        "maaskit.build_model with data=..., or the (model, manifest) pair load_artifact returns"
    )
