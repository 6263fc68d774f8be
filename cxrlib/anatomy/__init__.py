"""Anatomy: the lung-heart segmenter, its quality metrics, the layer-wise priors and
their cache.
"""
