"""Language models as a service, at teaching scale: a GPT's shape (:mod:`.config`) and the model
(:mod:`.model`), a byte-level BPE tokenizer (:mod:`.tokenizer`), an offline corpus (:mod:`.corpus`),
text as training data (:mod:`.data`), generation with a KV cache (:mod:`.generation`), training with
``fit`` (:mod:`.training`), artifacts with their tokenizer (:mod:`.artifact`) and continuous batching
for a server (:mod:`.engine`). From text predictor to assistant: the chat format (:mod:`.chat`),
supervised fine-tuning (:mod:`.sft`) on a checkable task (:mod:`.tasks`), constrained decoding
(:mod:`.constrain`) and an evaluation harness that calls the API (:mod:`.harness`). Open models: the
Llama family written from scratch (:mod:`.llama`), Hugging Face folders loaded from disk (:mod:`.hf`)
and their Jinja chat templates (:mod:`.template`).

Every name is imported on first use, so ``maaskit.lm.config`` (pure data, what the CLI's help reads)
needs no PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names: for type checkers and editors, and read by lazy_exports
    from .artifact import load_language_model, save_language_model
    from .attention import KVCache, SlotCache
    from .chat import ChatFormat, add_chat_tokens
    from .config import GPTConfig, LMRecipe, SFTRecipe
    from .constrain import Guide
    from .corpus import load_corpus
    from .data import TextDataset, TokenLoader
    from .engine import Engine
    from .generation import Generation, generate
    from .harness import EvalReport, evaluate_endpoint
    from .hf import HFModel, load_hf
    from .llama import Llama, LlamaConfig
    from .model import GPT
    from .sft import ChatDataset, finetune
    from .tasks import get_task
    from .template import ChatTemplate
    from .tokenizer import ENDOFTEXT, load_tokenizer, train_tokenizer
    from .training import SampleText, load_or_train, sample_text, train_language_model

__getattr__, __dir__, __all__ = lazy_exports(__name__)
