"""Language models as a service, at teaching scale, in four subpackages, lowest first:

- :mod:`.models`: the model families (a GPT small enough to train on a laptop, the Llama family and
  Gemma 3 written from scratch), the attention that hides the key/value cache, and the registry that
  maps a Hugging Face ``config.json`` to a family;
- :mod:`.runtime` (imports models): the engine that serves many callers at once (a scheduler and a
  model runner over one flat token batch, the prefix cache, sampling, constrained decoding) and the
  backend that prepares a model for the machine;
- :mod:`.formats` (imports models): the tokenizer, chat formats, artifacts and Hugging Face folders;
- :mod:`.training` (imports all three): the corpus and data, pre-training, fine-tuning an assistant on
  a checkable task, and the harness that grades it through the API.

The names below are lm's public ones, each imported on first use, so ``maaskit.lm.models.config`` and
``maaskit.lm.training.recipes`` (pure data, what the CLI's help reads) need no PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names: for type checkers and editors, and read by lazy_exports
    from .formats.artifact import load_language_model, save_language_model
    from .formats.chat import ChatFormat, add_chat_tokens
    from .formats.hf import HFModel, load_hf
    from .formats.template import ChatTemplate
    from .formats.tokenizer import ENDOFTEXT, load_tokenizer, train_tokenizer
    from .models.attention import KVCache, SlotCache
    from .models.config import GPTConfig
    from .models.gpt import GPT
    from .models.llama import Llama, LlamaConfig
    from .runtime.constrain import Guide
    from .runtime.engine import Engine
    from .runtime.generation import Generation, generate
    from .training.corpus import load_corpus
    from .training.data import TextDataset, TokenLoader
    from .training.harness import EvalReport, evaluate_endpoint
    from .training.pretrain import SampleText, load_or_train, sample_text, train_language_model
    from .training.recipes import LMRecipe, SFTRecipe
    from .training.sft import ChatDataset, finetune
    from .training.tasks import get_task

__getattr__, __dir__, __all__ = lazy_exports(__name__)
