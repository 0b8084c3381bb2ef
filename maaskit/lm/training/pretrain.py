"""Training a GPT with ``fit()``: the default sizes, a callback that samples text as it learns, and
one function that does the whole job (what ``maaskit lm train`` and notebook 07 call).

The defaults (context 128, 2 layers of width 64, a 512-token BPE: about 0.14M parameters) train
on a 2-core CPU in about a minute to a validation perplexity around 25 on the default corpus.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from tokenizers import Tokenizer

from ...callbacks import PrintProgress
from ...device import seed_everything
from ...run import Callback, History, Run
from ...train import fit
from ..models.gpt import GPT
from ..runtime.generation import generate
from .corpus import load_corpus
from .data import TextDataset, TokenData
from .recipes import LMRecipe, SFTRecipe

__all__ = [
    "LMRecipe",
    "SampleText",
    "fit_with_samples",
    "run_metrics",
    "load_or_train",
    "sample_text",
    "train_language_model",
]


def sample_text(
    model: GPT,
    data: TokenData,
    prompt: str = "The ",
    *,
    max_tokens: int = 48,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """What ``model`` writes after ``prompt`` (sampled with a fixed seed, so samples compare over
    time); for a chat dataset (:class:`~maaskit.lm.training.sft.ChatDataset`) the prompt is a user's
    message and the answer is shown with its chat tokens."""
    out = list(
        generate(
            model,
            data.prompt_ids(prompt),
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=40,
            seed=seed,
            stop_tokens=data.stop_tokens,
        )
    )
    return data.show(prompt, out)


class SampleText(Callback):
    """A sample of generated text every ``every`` seconds and at each epoch's end, kept in
    ``samples`` as ``(step, text)``; a dashboard shows the latest, a script prints them."""

    order = 10  # after the Recorder and the dashboard's own drawing

    def __init__(self, prompt: str = "The ", *, every: float = 10.0, file: TextIO | None = None):
        self.prompt, self.every, self.file = prompt, every, file
        self.samples: list[tuple[int, str]] = []
        self._last = 0.0

    def _sample(self, run: Run) -> None:
        assert isinstance(run.data, TokenData) and isinstance(run.model, GPT)
        was_training = run.model.training
        self.samples.append((run.step, sample_text(run.model, run.data, self.prompt)))
        run.model.train(was_training)
        self._last = time.monotonic()
        if self.file is not None:
            print(f"  sample at step {run.step}: {self.samples[-1][1]!r}", file=self.file, flush=True)

    def on_fit_start(self, run: Run) -> None:
        self._last = time.monotonic()

    def on_batch_end(self, run: Run) -> None:
        if time.monotonic() - self._last >= self.every:
            self._sample(run)

    def on_epoch_end(self, run: Run) -> None:
        self._sample(run)


def _with_sampler(
    callbacks: Sequence[Callback], prompt: str, progress: TextIO | None
) -> tuple[SampleText, list[Callback]]:
    """The :class:`SampleText` of ``callbacks`` (a dashboard brings its own: it shows the samples) or a
    new one for ``prompt``, and the callbacks to add to them (the new sampler, progress lines)."""
    found = [getattr(cb, "sampler", None) for cb in callbacks]
    sampler = next((s for s in found if isinstance(s, SampleText)), None)
    extra: list[Callback] = [PrintProgress(progress)] if progress is not None else []
    if sampler is None:
        sampler = SampleText(prompt, file=progress)
        extra.append(sampler)
    return sampler, extra


def fit_with_samples(
    model: GPT,
    data: TokenData,
    *,
    recipe: LMRecipe | SFTRecipe,
    prompt: str,
    progress: TextIO | None,
    callbacks: Sequence[Callback],
    device: str,
    seed: int,
) -> tuple[History, SampleText]:
    """``fit`` a language model as ``recipe`` says, with AdamW and gradient clipping (both pre-training
    and fine-tuning), sampling text after ``prompt`` as it learns; the model ends on the CPU."""
    sampler, extra = _with_sampler(callbacks, prompt, progress)
    history = fit(
        model,
        data,
        optimizer="adamw",
        grad_clip=1.0,
        weight_decay=recipe.weight_decay,
        lr=recipe.lr,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        scheduler=recipe.scheduler,
        device=device,
        seed=seed,
        callbacks=[*callbacks, *extra],
    )
    model.to("cpu")
    return history, sampler


def run_metrics(history: History, *names: str, **extra: object) -> dict[str, object]:
    """What an artifact's manifest records of a run: the last epoch's ``names``, epochs and time."""
    last = history.last
    return {
        **{name: last.get(name) for name in names},
        "epochs": len(history),
        "wall_time_s": last.get("wall_time"),
        **extra,
    }


@dataclass
class TrainedLanguageModel:
    model: GPT
    data: TextDataset
    history: History
    samples: list[tuple[int, str]] = field(default_factory=list)


def train_language_model(
    corpus: str | Path | None = None,
    *,
    recipe: LMRecipe | None = None,
    device: str = "auto",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    out: str | Path | None = None,
    name: str = "gpt",
    text: str | None = None,
    progress: TextIO | None = None,
) -> TrainedLanguageModel:
    """Tokenize ``corpus`` (a UTF-8 file; default: the Python docs bundled with CPython) or ``text``,
    build a GPT of ``recipe``'s sizes and train it with ``fit``; with ``out``, save the model and
    tokenizer there as an artifact. ``progress``: a stream for one line per epoch and text samples."""
    r = recipe or LMRecipe()
    data = TextDataset.from_text(
        text if text is not None else load_corpus(corpus), vocab_size=r.model.vocab_size, context=r.model.context
    )
    if corpus is None and text is None:
        data = TextDataset("python-docs", data.tokenizer, data.train, data.val, data.context)
    seed_everything(seed)
    model = GPT(r.model.but(vocab_size=data.vocab_size))  # the tokenizer may have learned fewer merges
    history, sampler = fit_with_samples(
        model, data, recipe=r, prompt="The ", progress=progress, callbacks=callbacks, device=device, seed=seed
    )
    if out is not None:
        from ..formats.artifact import save_language_model

        metrics = run_metrics(history, "val_loss", "val_perplexity", recipe=asdict(r))
        save_language_model(model, data.tokenizer, out, name=name, metrics=metrics)
    return TrainedLanguageModel(model, data, history, sampler.samples)


def load_or_train(
    path: str | Path, *, recipe: LMRecipe | None = None, seed: int = 0, device: str = "auto", verbose: bool = True
) -> tuple[GPT, Tokenizer, dict]:
    """The language model at ``path`` if one is there; otherwise train ``recipe`` on the default corpus,
    save it there and return it: ``(model, tokenizer, manifest)``. Notebook 10 uses it to pick up
    notebook 07's model, or to make the same one when 07 has not run here."""
    from ..formats.artifact import load_language_model

    if not (Path(path) / "manifest.json").is_file():
        if verbose:
            print(f"{path} not found: training notebook 07's GPT (about a minute on a 2-core CPU)", flush=True)
        train_language_model(recipe=recipe, seed=seed, device=device, out=path)
    model, tokenizer, manifest = load_language_model(path)
    assert isinstance(model, GPT), "maaskit.lm.load_or_train's folders hold maaskit GPTs"
    return model, tokenizer, manifest
