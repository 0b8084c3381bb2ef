"""The model families, one file each: the GPT (:mod:`.gpt`), the Llama family (:mod:`.llama`) and Gemma 3
(:mod:`.gemma3`), what they share (:mod:`.base`, :mod:`.config`), the attention over whatever batch
they are given (:mod:`.attention`, the one module that knows the key/value cache) and the registry that
maps a Hugging Face ``config.json`` to a family (:mod:`.registry`). A new family is one file here and
one line in the registry.

The lowest of lm's subpackages: it imports from none of the others.
"""
