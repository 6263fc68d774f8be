"""Training: the config tree, the model inputs (:mod:`.inputs`), the loop (:mod:`.train`)
with its checkpoints, optimiser, validation and metrics log, the encoder pretraining and
feature cache, generation with a trained run, model cards, and where runs live
(:mod:`.runs`).
"""
