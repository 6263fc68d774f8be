"""Training: the config tree, the trainer, the encoder pretraining and feature cache,
generation with a trained run, model cards, and where runs live (:mod:`.runs`).
"""
