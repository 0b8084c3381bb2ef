"""Making a model: an offline corpus (:mod:`.corpus`), text as training data (:mod:`.data`), what a
training run takes (:mod:`.recipes`, pure data), pre-training (:mod:`.pretrain`), the assistant tasks
(:mod:`.tasks`), supervised fine-tuning (:mod:`.sft`) and the evaluation harness that grades a model
through its API (:mod:`.harness`).

The top of lm's subpackages: it may import from the other three.
"""
