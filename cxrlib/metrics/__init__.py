"""Metrics of generated text: the labeler, clinical / lexical / RadGraph F1, grounding,
intervals. Pure functions of texts and labels; no model.
"""
