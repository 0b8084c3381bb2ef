"""Language models as a service, at teaching scale: a GPT (:mod:`.model`), a byte-level BPE
tokenizer (:mod:`.tokenizer`), an offline corpus (:mod:`.corpus`) and generation with a KV cache
(:mod:`.generate`)."""

from .corpus import load_corpus
from .generate import Generation, generate
from .model import GPT, KVCache
from .tokenizer import ENDOFTEXT, load_tokenizer, train_tokenizer

__all__ = ["ENDOFTEXT", "GPT", "Generation", "KVCache", "generate", "load_corpus", "load_tokenizer", "train_tokenizer"]
