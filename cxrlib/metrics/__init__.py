"""Metrics of generated text: the labeler, clinical / lexical / RadGraph F1, grounding
(their intervals: :mod:`cxrlib.base.stats`). Pure functions of texts and labels; no model.
"""
