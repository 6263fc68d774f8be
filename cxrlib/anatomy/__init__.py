"""Anatomy: the lung-heart segmenter, its quality metrics, the layer-wise priors (the
maths in ``priors``, the masks of a manifest's rows in ``manifest_priors``) and their
cache.
"""
