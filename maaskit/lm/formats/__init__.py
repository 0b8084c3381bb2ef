"""Models and text as files and token ids: the tokenizer (:mod:`.tokenizer`), chat formats
(:mod:`.chat`: maaskit's chat tokens; :mod:`.template`: a Hugging Face Jinja template; :mod:`.text`:
plain lines; :mod:`.prompts`: the one a served model uses), maaskit's language-model artifacts
(:mod:`.artifact`), Hugging Face folders in (:mod:`.hf`) and out (:mod:`.export`).

Imports from :mod:`maaskit.lm.models` only.
"""
