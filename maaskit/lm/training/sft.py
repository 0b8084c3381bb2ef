"""Supervised fine-tuning: from a text predictor to an assistant that answers in turns and calls tools.

Three steps, each small:

1. The tokenizer gains the chat tokens (:func:`maaskit.lm.formats.chat.add_chat_tokens`) and the model's
   embedding grows to match (:func:`grow_vocabulary`; the new rows start at the mean of the old ones,
   so they begin as an "average token" rather than noise).
2. Conversations become training rows (:class:`ChatDataset`): each is encoded with the chat format,
   conversations are packed whole into rows of ``context`` tokens, and every label that is not the
   assistant's own token is :data:`~maaskit.scoring.IGNORE`, so the loss is on the answers only (the
   model is not taught to write the user's questions).
3. ``fit`` trains on them like on any data (the dashboards, checkpoints and data parallelism work),
   and :func:`finetune` saves the artifact with its chat tokens in the tokenizer and the manifest.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from tokenizers import Tokenizer

from ...device import seed_everything
from ...run import Callback, History
from ...scoring import IGNORE, Accuracy, Metric, Perplexity
from ..formats.chat import ChatFormat, add_chat_tokens
from ..formats.tokenizer import ENDOFTEXT
from ..models.gpt import GPT
from .data import SplitLoaders
from .pretrain import fit_with_samples, run_metrics
from .recipes import LMRecipe, SFTRecipe
from .tasks import AssistantTask, Example, get_task

__all__ = ["ChatDataset", "FineTuned", "SFTRecipe", "finetune", "grow_vocabulary"]


def grow_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """A copy of ``model`` whose (tied) token embedding has ``vocab_size`` rows: the old rows kept,
    each new one the mean of the old."""
    old = model.vocab_size
    if vocab_size < old:
        raise ValueError(f"the vocabulary can only grow: {old} tokens, asked for {vocab_size}")
    grown = GPT(model.config.but(vocab_size=vocab_size)).to(next(model.parameters()).device)
    state = dict(model.state_dict())
    weight = state.pop("tokens.weight")
    state.pop("head.weight", None)
    with torch.no_grad():
        grown.tokens.weight[:old] = weight
        grown.tokens.weight[old:] = weight.mean(0)
    grown.load_state_dict(state, strict=False)
    return grown


class ChatLoader:
    """Batches of packed rows, ``(tokens, next tokens)`` with unscored labels set to IGNORE, shuffled
    with a seeded generator for training; each rank takes its own slice of every global batch.

    A batch ends at its last scored label: the positions after it hold padding, add nothing to the
    loss and, attention being causal, change no earlier position; cutting them is exact and saves
    their compute (a row is rarely full: conversations are packed whole)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        seed: int,
        rank: int,
        world_size: int,
    ):
        self.device = device
        self.x, self.y = x.to(device), y.to(device)
        # each row's end, one past its last scored label; on the host, so a batch's end needs no device sync
        scored = y.cpu() != IGNORE
        self.ends = torch.where(scored.any(1), y.shape[1] - scored.flip(1).int().argmax(1), 1)
        self.batch_size, self.shuffle, self.rank, self.world_size = batch_size, shuffle, rank, world_size
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return max(1, len(self.x) // step) if self.world_size > 1 else -(-len(self.x) // step)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        on_device = order.to(self.device)
        step = self.batch_size * self.world_size
        for i in range(len(self)):
            mine = slice(i * step + self.rank * self.batch_size, i * step + (self.rank + 1) * self.batch_size)
            end = int(self.ends[order[mine]].max())
            rows = on_device[mine]
            yield self.x[rows, :end], self.y[rows, :end]


@dataclass(frozen=True)
class ChatDataset(SplitLoaders[ChatLoader]):
    """Conversations as training data for ``fit``: ``train`` and ``val`` rows of token ids (N x
    context) and their labels (IGNORE where the token is not the assistant's)."""

    name: str
    tokenizer: Tokenizer
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    context: int
    tools: list[dict] = field(default_factory=list)

    unit = "tokens"

    @classmethod
    def from_conversations(
        cls,
        conversations: Sequence[tuple[list[dict], Sequence[dict]]],
        tokenizer: Tokenizer,
        *,
        context: int,
        val_fraction: float = 0.05,
        seed: int = 0,
        name: str = "chat",
        assistant_only: bool = True,
    ) -> ChatDataset:
        """Pack ``conversations`` (``(messages, tools offered)`` pairs) into rows of ``context`` tokens;
        the labels are the assistant's tokens only (``assistant_only=False``: every token, as in pre-training)."""
        chat = ChatFormat(tokenizer)
        pad = tokenizer.token_to_id(ENDOFTEXT)
        if pad is None:
            raise ValueError(f"the tokenizer has no {ENDOFTEXT} token (train it with maaskit.lm.train_tokenizer)")
        encoded = [chat.encode(messages, tools, add_generation_prompt=False) for messages, tools in conversations]
        too_long = [i for i, e in enumerate(encoded) if len(e.ids) > context + 1]
        if too_long:
            raise ValueError(
                f"{len(too_long)} conversations are longer than the context ({context} tokens), e.g. number "
                f"{too_long[0]} with {len(encoded[too_long[0]].ids)}: use a model with a longer context"
            )
        random.Random(seed).shuffle(encoded)
        rows: list[tuple[list[int], list[bool]]] = []
        for e in encoded:  # whole conversations, greedily, into rows of context + 1 tokens
            if rows and len(rows[-1][0]) + len(e.ids) <= context + 1:
                rows[-1][0].extend(e.ids)
                rows[-1][1].extend(e.trained)
            else:
                rows.append((list(e.ids), list(e.trained)))
        x = torch.full((len(rows), context + 1), pad, dtype=torch.long)
        y = torch.full((len(rows), context + 1), IGNORE, dtype=torch.long)
        for i, (ids, trained) in enumerate(rows):
            x[i, : len(ids)] = torch.tensor(ids)
            y[i, : len(ids)] = torch.tensor(
                [t if mine or not assistant_only else IGNORE for t, mine in zip(ids, trained)]
            )
        cut = max(1, round(len(rows) * (1 - val_fraction)))
        if cut >= len(rows):
            raise ValueError(f"{len(conversations)} conversations are too few to hold some out for validation")
        inputs, labels = x[:, :-1], y[:, 1:]  # each position predicts the next token
        tools = next((list(t) for _, t in conversations if t), [])
        return cls(name, tokenizer, (inputs[:cut], labels[:cut]), (inputs[cut:], labels[cut:]), context, tools)

    def metrics(self) -> tuple[Metric, ...]:
        """Next-token accuracy and perplexity, both over the assistant's tokens only."""
        return (Accuracy(), Perplexity())

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def scored_fraction(self) -> float:
        """The share of training labels that are the assistant's (the rest are masked out)."""
        labels = self.train[1]
        return float((labels != IGNORE).float().mean())

    # what SampleText asks of data: a prompt's ids, the tokens that end an answer, how to show it
    def prompt_ids(self, prompt: str) -> list[int]:
        return ChatFormat(self.tokenizer).encode([{"role": "user", "content": prompt}], self.tools).ids

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        return (ChatFormat(self.tokenizer).end,)

    def show(self, prompt: str, ids: list[int]) -> str:
        return f"user: {prompt}\nassistant: {self.tokenizer.decode(ids, skip_special_tokens=False)}"

    def _loader(self, data: tuple[torch.Tensor, torch.Tensor], **options: Any) -> ChatLoader:
        return ChatLoader(*data, **options)

    def __repr__(self) -> str:
        rows, context = self.train[0].shape
        return (
            f"ChatDataset({self.name!r}: {rows:,} training rows of {context} tokens, {len(self.val[0]):,} for "
            f"validation; {self.scored_fraction:.0%} of the labels are the assistant's)"
        )


@dataclass
class FineTuned:
    model: GPT
    tokenizer: Tokenizer
    data: ChatDataset
    history: History
    samples: list[tuple[int, str]] = field(default_factory=list)


def finetune(
    base: str | Path | tuple[GPT, Tokenizer] | None = None,
    *,
    task: str | AssistantTask = "assistant",
    recipe: SFTRecipe | None = None,
    device: str = "auto",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    out: str | Path | None = None,
    name: str = "assistant",
    progress: TextIO | None = None,
) -> FineTuned:
    """Fine-tune ``base`` (an artifact directory of ``maaskit lm train``, a ``(model, tokenizer)``
    pair, or None: a fresh model of the default shape, with a tokenizer trained on the default
    corpus) on ``task``'s training conversations; with ``out``, save the assistant there."""
    from ..formats.artifact import load_language_model, save_language_model

    r = recipe or SFTRecipe()
    the_task = get_task(task) if isinstance(task, str) else task
    model, tokenizer, origin = _base(base, load_language_model)
    tokenizer = add_chat_tokens(tokenizer) if not ChatFormat.supports(tokenizer) else tokenizer
    seed_everything(seed)
    model = (
        grow_vocabulary(model, tokenizer.get_vocab_size()) if model.vocab_size < tokenizer.get_vocab_size() else model
    )
    examples = the_task.examples("train", r.examples, seed)
    data = ChatDataset.from_conversations(
        [(e.conversation(), e.tools) for e in examples],
        tokenizer,
        context=model.context,
        seed=seed,
        name=the_task.name,
        assistant_only=r.assistant_only,
    )
    history, sampler = fit_with_samples(
        model,
        data,
        recipe=r,
        prompt=_sample_question(the_task),
        progress=progress,
        callbacks=callbacks,
        device=device,
        seed=seed,
    )
    if out is not None:
        metrics = run_metrics(history, "val_loss", "val_acc", finetuned_from=origin, task=the_task.name)
        save_language_model(model, tokenizer, out, name=name, metrics=metrics)
    return FineTuned(model, tokenizer, data, history, sampler.samples)


def _sample_question(task: AssistantTask) -> str:
    """A held-out question the samples answer as training goes."""
    example: Example = task.examples("test", 2, seed=0)[1]
    return example.question


def _base(base: str | Path | tuple[GPT, Tokenizer] | None, load) -> tuple[GPT, Tokenizer, str]:
    if isinstance(base, tuple):
        model, tokenizer = base
        return model, tokenizer, "a model in memory"
    if base is not None:
        model, tokenizer, _ = load(base)
        return model, tokenizer, str(base)
    from .data import TextDataset

    recipe = LMRecipe()
    tokenizer = TextDataset.from_text(vocab_size=recipe.model.vocab_size, context=recipe.model.context).tokenizer
    return GPT(recipe.model.but(vocab_size=tokenizer.get_vocab_size())), tokenizer, "scratch"
