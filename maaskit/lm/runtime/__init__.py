"""Running a model for many callers at once: the scheduler (:mod:`.engine`) and the model runner
(:mod:`.runner`) over one flat token batch, the prefix cache (:mod:`.prefix`), the prefill pace
(:mod:`.pace`), sampling (:mod:`.generation`), constrained decoding (:mod:`.constrain`) and the
backend that prepares a model for the machine (:mod:`.backend`, the only place for PyTorch's private
names).

Imports from :mod:`maaskit.lm.models` only.
"""
